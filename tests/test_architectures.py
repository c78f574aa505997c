"""The architectures (shared bottom, MMoE, PLE), DIN pooling, item text, multiclass tasks and loss weighting.

Training runs on the synthetic features of test_model (CPU, one thread, a few seconds per model).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from test_model import RUN_DATE, _write, make_config, make_features

from model.architectures import ModelOutput, build_model
from model.checkpoint import load_model
from model.data import (
    FeatureLayout,
    ItemTensors,
    UserTensors,
    Vocabulary,
    category_distribution,
    item_tensors,
    item_text,
    load_training_data,
    read_features,
    text_cache_dir,
    user_tensors,
)
from model.inputs import TargetAttention
from model.losses import soft_cross_entropy
from model.score import score_users
from model.spec import ModelSpec, TaskSpec
from model.train import train_model
from model.weighting import make_balancer, pcgrad_project
from nightrec import schema
from nightrec.config import Config, ModelConfig

TEXT_WIDTH = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def add_category_labels(features: Path) -> Path:
    """label_genre: the item's categories; label_taste: the categories of the user's history items, repeats
    kept (users without history have an empty list)."""
    examples = read_features(features, schema.EXAMPLES)
    items = read_features(features, schema.ITEMS)
    cats = dict(
        zip(
            items.column(schema.ITEM_ID).to_pylist(), items.column(schema.CATEGORIES).to_pylist(), strict=True
        )
    )
    taste = [[c for i in hist for c in cats[i]] for hist in examples.column(schema.HISTORY).to_pylist()]
    str_list = pa.list_(pa.string())
    examples = examples.append_column("label_genre", examples.column(schema.CATEGORIES).cast(str_list))
    examples = examples.append_column("label_taste", pa.array(taste, str_list))
    shutil.rmtree(features / schema.EXAMPLES)
    _write(features / schema.EXAMPLES, examples)
    return features


MULTICLASS_TASKS = (
    {"name": "genre", "type": "multiclass", "label": {"source": "item_categories"}, "weight": 0.5},
    {"name": "taste", "type": "multiclass", "label": {"source": "user_categories"}, "weight": 0.5},
)

VARIANTS = {
    "shared_bottom": {"architecture": "shared_bottom"},
    "mmoe": {"architecture": "mmoe"},
    "ple": {"architecture": "ple", "ple_levels": 2, "ple_shared_experts": 2, "ple_task_experts": 1},
    "ple_din_text": {
        "architecture": "ple",
        "history_pooling": "din",
        "text_encoder": "tfidf",
        "text_dim": 6,
    },
    "mmoe_din_uncertainty": {
        "architecture": "mmoe",
        "history_pooling": "din",
        "loss_weighting": "uncertainty",
        "wide": True,
    },
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("architectures")


@pytest.fixture(scope="module")
def features_dir(workdir: Path) -> Path:
    return add_category_labels(make_features(workdir / "features"))


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained(request, features_dir: Path, workdir: Path):
    cfg = make_config(workdir / request.param, epochs=4, **VARIANTS[request.param])
    result = train_model(features_dir, cfg, RUN_DATE, workdir / request.param / "models", show_progress=False)
    return request.param, cfg, result


def test_each_architecture_learns_and_logs_gates_and_weights(trained) -> None:
    name, cfg, result = trained
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert result.metrics["tasks"]["click"]["auc"] > 0.7, result.metrics
    model, meta, _ = load_model(result.model_dir)
    assert meta["model_spec"]["architecture"] == cfg.model.architecture
    assert meta["history"] == result.history
    n_experts = {"shared_bottom": None, "mmoe": 3, "ple": 2 * 1 + 2}.get(cfg.model.architecture)
    for epoch in result.history:
        assert set(epoch["task_weights"]) == {"click", "purchase"}
        if n_experts is None:
            assert epoch["gates"] is None
        else:
            for weights in epoch["gates"].values():
                assert len(weights) == n_experts and sum(weights) == pytest.approx(1.0, rel=1e-5)
    if cfg.model.loss_weighting == "uncertainty":  # the learned weights move away from their start at 1
        assert result.history[-1]["task_weights"] != {"click": 1.0, "purchase": 1.0}
    else:
        assert result.history[-1]["task_weights"] == {"click": 1.0, "purchase": 1.0}


def _pairwise_top_k(model, features: Path, cfg: Config, vocab, layout: FeatureLayout, k: int) -> dict:
    """Top-K per user by calling forward() on every (user, item) pair of the user, one user at a time."""
    users = read_features(features, schema.USERS).sort_by(schema.USER_ID)
    items = read_features(features, schema.ITEMS).sort_by(schema.ITEM_ID)
    seen = read_features(features, schema.SEEN).to_pandas()
    text = item_text(items, layout.text_encoder, layout.text_dim, text_cache_dir(cfg))
    all_items = item_tensors(items, vocab, layout, text)
    all_users = user_tensors(users, vocab, layout)
    item_ids = np.array(items.column(schema.ITEM_ID).to_pylist())
    out = {}
    for row, user in enumerate(users.column(schema.USER_ID).to_pylist()[:40]):
        pairs = all_users.take(torch.full((len(item_ids),), row, dtype=torch.long))
        with torch.inference_mode():
            preds = model(pairs, all_items).predictions
        score = (preds[:, 0] * preds[:, 1]).numpy()
        unseen = ~np.isin(item_ids, seen.loc[seen.user_id == user, "item_id"].to_numpy())
        order = np.argsort(-score[unseen], kind="stable")[:k]
        out[user] = (item_ids[unseen][order].tolist(), score[unseen][order])
    return out


def test_scorer_matches_forward_pair_by_pair(trained, features_dir: Path) -> None:
    _, cfg, result = trained
    recs = score_users(result.model_dir, features_dir, cfg, show_progress=False)
    model, meta, vocab = load_model(result.model_dir)
    layout = FeatureLayout.from_dict(meta["layout"])
    expected = _pairwise_top_k(model, features_dir, cfg, vocab, layout, cfg.scoring.top_k)
    for user, (items, scores) in expected.items():
        got = recs.loc[recs.user_id == user].sort_values("rank")
        assert got.item_id.tolist() == items, user
        assert np.allclose(got.score.to_numpy(), scores, rtol=1e-5, atol=1e-7)


def _spec(architecture: str, pooling: str = "mean", tasks: tuple[TaskSpec, ...] | None = None) -> ModelSpec:
    return ModelSpec(
        n_users=30,
        n_items=20,
        n_categories=5,
        n_user_dense=2,
        n_item_dense=3,
        embedding_dim=4,
        num_experts=3,
        expert_hidden=(8, 6),
        tower_hidden=(4,),
        dropout=0.0,
        tasks=tasks
        or (
            TaskSpec("click", "binary", 1.0, None),
            TaskSpec("purchase", "binary", 1.0, 0),
            TaskSpec("repeat", "binary", 0.5, 1),
            TaskSpec("spend", "regression", 0.1, None, "huber"),
            TaskSpec("genre", "multiclass", 0.2, None),
        ),
        architecture=architecture,
        ple_levels=3,
        ple_shared_experts=2,
        ple_task_experts=2,
        history_pooling=pooling,
    )


def _batch(n: int, seed: int = 0) -> tuple[UserTensors, ItemTensors]:
    g = torch.Generator().manual_seed(seed)
    users = UserTensors(
        torch.randint(0, 30, (n,), generator=g),
        torch.randint(0, 20, (n, 5), generator=g),
        torch.randn(n, 2, generator=g) * 3,
    )
    items = ItemTensors(
        torch.randint(0, 20, (n,), generator=g),
        torch.randint(0, 5, (n, 2), generator=g),
        torch.randn(n, 3, generator=g) * 3,
    )
    return users, items


@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
@pytest.mark.parametrize("pooling", ["mean", "din"])
def test_outputs_shapes_gates_and_esmm_chain(architecture: str, pooling: str) -> None:
    torch.manual_seed(0)
    spec = _spec(architecture, pooling)
    model = build_model(spec).eval()
    n = 300
    with torch.inference_mode():
        out = model(*_batch(n))
    assert out.logits.shape == out.predictions.shape == (n, 5)
    assert out.class_logits.shape == (n, 1, 5)
    p = out.predictions
    assert (p[:, 1] <= p[:, 0]).all() and (p[:, 2] <= p[:, 1]).all()
    assert ((p[:, :3] >= 0) & (p[:, :3] <= 1)).all()
    if architecture == "shared_bottom":
        assert out.gate_mean is None
        return
    n_experts = 3 if architecture == "mmoe" else 5 * 2 + 2
    assert out.gate_mean.shape == (5, n_experts)
    assert torch.allclose(out.gate_mean.sum(dim=1), torch.ones(5))
    if architecture == "ple":  # a task's gate never weighs another task's experts
        for t in range(5):
            others = [e for e in range(10) if e // 2 != t]
            assert (out.gate_mean[t, others] == 0).all() and (
                out.gate_mean[t, [2 * t, 2 * t + 1, 10, 11]] > 0
            ).all()


@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
def test_last_shared_layer_names_a_parameter_every_task_reaches(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(architecture))
    layer = dict(model.named_parameters())[model.last_shared_layer]
    out = model(*_batch(64))
    for t in range(4):
        (grad,) = torch.autograd.grad(out.predictions[:, t].sum(), layer, retain_graph=True)
        assert grad.abs().sum() > 0, t


def test_multiclass_target_is_a_distribution_and_the_loss_is_cross_entropy() -> None:
    vocab = Vocabulary.build(pa.array(["a", "b", "c", "d"]))
    column = pa.chunked_array([pa.array([["a", "b", "b"], [], None, ["zzz"], ["c"]], pa.list_(pa.string()))])
    dist = category_distribution(column, vocab)
    assert dist.shape == (5, 5)
    assert dist[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0, 0.0])
    assert dist[[1, 2, 3]].sum() == 0  # empty, null, unknown only: no target (masked out by the caller)
    assert dist[[0, 4]].sum(axis=1) == pytest.approx([1.0, 1.0])

    logits = torch.randn(5, 5)
    target = torch.from_numpy(dist)
    assert torch.allclose(
        soft_cross_entropy(logits, target), F.cross_entropy(logits, target, reduction="none")
    )

    torch.manual_seed(0)
    spec = _spec("mmoe")
    model = build_model(spec)
    out = model(*_batch(5))
    labels, mask = torch.zeros(5, 5), torch.zeros(5, 5, dtype=torch.bool)
    mask[:, 4] = torch.tensor([True, False, False, False, True])
    _, per_task = model.loss(out, labels, mask, target[:, None, :])
    expected = F.cross_entropy(out.class_logits[[0, 4], 0], target[[0, 4]])
    assert per_task[4].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="class targets"):
        model.loss(out, labels, mask)


def test_din_attention_ignores_padded_slots_and_is_the_mlp_over_the_concatenation() -> None:
    torch.manual_seed(0)
    att = TargetAttention(4, hidden=8)
    history = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    target = torch.randn(3, 2, 4)
    pooled = att(history, mask, target)
    changed = history.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    assert torch.equal(att(changed, mask, target), pooled)
    assert (pooled[2] == 0).all()  # no history at all: zeros, like mean pooling

    h, t = history[0, :2], target[0, 1]  # the reference: the MLP over [h, t, h - t, h * t] per history item
    concat = torch.cat([h, t.expand(2, 4), h - t, h * t], dim=1)
    weights = 1.0 + att.out(torch.relu(att.first(concat))).squeeze(-1)
    assert torch.allclose(pooled[0, 1], (weights[:, None] * h).sum(0) / 2, atol=1e-6)


def test_din_model_output_does_not_depend_on_padded_history() -> None:
    torch.manual_seed(0)
    model = build_model(_spec("ple", "din")).eval()
    users, items = _batch(50)
    users.history[:, 3:] = 0
    items.item.clamp_(min=1)  # index 0 is also the unknown candidate item: keep it out of the batch
    before = model(users, items).predictions
    model.item_embedding.weight.data[0] = 7.0  # the padding row: masked out, so nothing changes
    assert torch.allclose(model(users, items).predictions, before, atol=1e-6)


def _weighting_model(loss_weighting: str, **extra) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    tasks = (TaskSpec("a", "binary", 1.0, None), TaskSpec("b", "regression", 1.0, None))
    model = build_model(_spec("mmoe", tasks=tasks))
    mc = ModelConfig(loss_weighting=loss_weighting, **extra)
    return model, make_balancer(mc, model, 2)


def test_uncertainty_weights_follow_the_losses() -> None:
    _, balancer = _weighting_model("uncertainty")
    assert balancer.weights() == [1.0, 0.5]  # regression: 1/2 exp(-s)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    losses = torch.tensor([0.2, 3.0])
    for _ in range(600):
        optimizer.zero_grad()
        balancer.backward(losses)
        optimizer.step()
    a, b = balancer.weights()
    assert a == pytest.approx(1 / 0.2, rel=0.05) and b == pytest.approx(0.5 / 3.0, rel=0.05)  # s_t -> log L_t


def _task_grad_norms(model, balancer, per_task_fn) -> list[float]:
    layer = dict(model.named_parameters())[model.last_shared_layer]
    per_task = per_task_fn()
    w = balancer.weights()
    return [
        w[t] * torch.autograd.grad(per_task[t], layer, retain_graph=True)[0].norm().item() for t in range(2)
    ]


def test_gradnorm_moves_weights_towards_equal_gradient_norms() -> None:
    model, balancer = _weighting_model("gradnorm", gradnorm_alpha=1.5)
    users, items = _batch(128)
    labels = torch.rand(128, 2).round()

    def per_task() -> torch.Tensor:  # task b's gradient is 20x larger: the weights must even that out
        out: ModelOutput = model(users, items)
        return model.loss(out, labels, torch.ones(128, 2, dtype=torch.bool))[1] * torch.tensor([1.0, 20.0])

    before = _task_grad_norms(model, balancer, per_task)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.02)  # only the task weights move here
    for _ in range(60):
        optimizer.zero_grad()
        model.zero_grad()
        balancer.backward(per_task())
        optimizer.step()
    after = _task_grad_norms(model, balancer, per_task)
    a, b = balancer.weights()
    assert a + b == pytest.approx(2.0) and a > 1.0 > b
    assert after[1] / after[0] < 0.5 * before[1] / before[0]


def test_gradnorm_rejects_an_unknown_layer() -> None:
    with pytest.raises(ValueError, match="gradnorm_layer 'nope'"):
        _weighting_model("gradnorm", gradnorm_layer="nope")


def test_pcgrad_projection_removes_conflicts() -> None:
    g = torch.Generator().manual_seed(0)
    grads = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]])
    projected = pcgrad_project(grads, g)
    assert projected[0] @ grads[1] >= -1e-6 and projected[1] @ grads[0] >= -1e-6
    agreeing = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.equal(pcgrad_project(agreeing, g), agreeing)
    for seed in range(20):  # random pairs, conflicting or not
        pair = torch.randn(2, 50, generator=torch.Generator().manual_seed(seed))
        out = pcgrad_project(pair, g)
        assert out[0] @ pair[1] >= -1e-5 and out[1] @ pair[0] >= -1e-5


def test_pcgrad_on_opposite_task_gradients_leaves_shared_parameters_still() -> None:
    model, balancer = _weighting_model("pcgrad")
    out = model(*_batch(64))
    signal = out.predictions[:, 0].mean()
    balancer.backward(torch.stack([2.0 * signal, -signal]))  # g_b = -g_a / 2: a full conflict
    shared = [p.grad for p in model.shared_parameters() if p.grad is not None]
    # Zero up to float rounding (the projections cancel g_a exactly only in exact arithmetic)
    assert shared and all(g.abs().max() < 1e-8 for g in shared)
    model.zero_grad()  # plain summing would have moved them along g_a / 2
    signal = model(*_batch(64)).predictions[:, 0].mean()
    make_balancer(ModelConfig(), model, 2).backward(torch.stack([2.0 * signal, -signal]))
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.shared_parameters() if p.grad is not None)


def test_multiclass_tasks_train_and_are_not_published(features_dir: Path, workdir: Path) -> None:
    cfg = make_config(
        workdir / "multiclass", extra_tasks=MULTICLASS_TASKS, epochs=3, loss_weighting="gradnorm"
    )
    data = load_training_data(features_dir, cfg, RUN_DATE)
    targets, mask = data.train.class_targets, data.train.label_mask
    assert targets.shape[1:] == (2, data.vocab.categories.size)
    assert torch.allclose(targets[mask[:, 2], 0].sum(dim=1), torch.tensor(1.0))
    assert torch.allclose(targets[mask[:, 3], 1].sum(dim=1), torch.tensor(1.0))
    assert (targets[~mask[:, 3], 1] == 0).all() and (~mask[:, 3]).any()  # users without history
    assert (targets[..., 0] == 0).all()

    result = train_model(features_dir, cfg, RUN_DATE, workdir / "multiclass" / "models", show_progress=False)
    genre = result.metrics["tasks"]["genre"]
    assert genre["top1_accuracy"] > 0.5 and genre["cross_entropy"] < np.log(5)
    assert result.history[-1]["val_genre"] < result.history[0]["val_genre"]
    assert result.history[-1]["task_weights"] != result.history[0]["task_weights"]
    assert sum(result.history[-1]["task_weights"].values()) == pytest.approx(4.0, rel=1e-4)
    recs = score_users(result.model_dir, features_dir, cfg, show_progress=False)
    assert [c for c in recs.columns if c.startswith("p_")] == ["p_click", "p_purchase"]
    blend_genre = cfg.model_copy(
        update={"scoring": cfg.scoring.model_copy(update={"blend": "click * genre"})}
    )
    with pytest.raises(ValueError, match="'genre' is not a binary, regression or retrieval task"):
        score_users(result.model_dir, features_dir, blend_genre, show_progress=False)


def test_item_text_is_looked_up_by_item_id(tmp_path: Path) -> None:
    items = pa.table({schema.ITEM_ID: ["b", "a"], schema.TITLE: ["Heat", None]})
    text = item_text(items, "tfidf", TEXT_WIDTH, tmp_path)
    assert text.vectors.shape == (2, TEXT_WIDTH) and text.vectors[1].sum() == 0  # a null title: ""
    rows = text.rows_for(pa.array(["a", "b", "gone", "b"]))
    assert torch.equal(rows[1], torch.from_numpy(text.vectors[0])) and torch.equal(rows[3], rows[1])
    assert (rows[2] == 0).all() and torch.equal(rows[0], torch.from_numpy(text.vectors[1]))
    assert item_text(items, "none", TEXT_WIDTH, tmp_path) is None

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(_spec("mmoe"), n_text=TEXT_WIDTH)).eval()
    users, items_t = _batch(20)
    items_t.text = torch.zeros(20, TEXT_WIDTH)
    before = model(users, items_t).predictions
    items_t.text = torch.ones(20, TEXT_WIDTH)
    assert not torch.allclose(model(users, items_t).predictions, before)  # the title reaches the towers
    items_t.text = None
    with pytest.raises(ValueError, match="no text"):
        model(users, items_t)


def test_din_grid_scoring_equals_one_pair_per_row_and_runs_under_bf16_autocast() -> None:
    """The scoring grid folds DIN's whole first layer into one product per user (40 items: more than the
    attention's hidden width, so the grid path); it must give forward()'s predictions pair by pair, and run
    under bf16 autocast, where the pooled-history product cannot use its in-place form."""
    torch.manual_seed(0)
    model = build_model(_spec("mmoe", "din")).eval()
    users, items = _batch(40)
    block = users.take(slice(0, 4))
    with torch.inference_mode():
        grid = model.head(model.grid_features(model.user_part(block), model.item_part(items)), None)
        for u in range(4):
            pairs = block.take(torch.full((40,), u, dtype=torch.long))
            assert torch.allclose(
                grid.predictions[u * 40 : (u + 1) * 40], model(pairs, items).predictions, atol=1e-5
            )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.head(model.grid_features(model.user_part(block), model.item_part(items)), None)
    assert torch.allclose(low.predictions.float(), grid.predictions, atol=0.05)
