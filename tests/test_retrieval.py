"""The retrieval task: a two-tower score trained jointly with in-batch sampled softmax and logQ correction, the
blend functions that combine it with probabilities, and two-stage scoring (retrieval picks, the model ranks).

Training runs on the synthetic features of test_model, with `label_match` = the click label.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pydantic
import pytest
import torch
import torch.nn.functional as F
from test_model import N_ITEMS, RUN_DATE, _write, make_config, make_features

from model.champion import primary_metric
from model.checkpoint import MODEL_FILE, load_model, write_manifest
from model.data import FeatureLayout, item_tensors, read_features, user_tensors
from model.losses import in_batch_softmax
from model.score import Scorer, compile_blend, score_users
from model.spec import TaskSpec
from model.train import train_model
from nightrec import schema
from nightrec.config import Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MATCH = {"name": "match", "type": "retrieval", "label": {"event_types": ["click"]}}
BLEND = "log(click) + match"


def test_in_batch_softmax_is_the_corrected_softmax_over_the_batch_positives() -> None:
    g = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    items_v = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    items = torch.tensor([5, 7, 5, 2])  # rows 0 and 2 share item 5
    log_q = torch.log(torch.tensor([0.1] * 10))
    log_q[5] = math.log(0.4)
    loss = in_batch_softmax(users, items_v, items, log_q, temperature=0.5)

    for row in range(4):
        logits = [
            float(users[row] @ items_v[col]) / 0.5 - float(log_q[items[col]])
            for col in range(4)
            if col == row or items[col] != items[row]  # the row's own item is never its negative
        ]
        own = float(users[row] @ items_v[row]) / 0.5 - float(log_q[items[row]])
        expected = -own + math.log(sum(math.exp(v) for v in logits))
        assert float(loss[row]) == pytest.approx(expected, rel=1e-5)


def test_logq_correction_lowers_the_penalty_of_a_popular_negative() -> None:
    users = torch.eye(2)
    items_v = torch.eye(2)
    items = torch.tensor([0, 1])
    uniform = in_batch_softmax(users, items_v.flip(0), items, torch.log(torch.tensor([0.5, 0.5])), 1.0)
    popular_1 = in_batch_softmax(users, items_v.flip(0), items, torch.log(torch.tensor([0.1, 0.9])), 1.0)
    # Row 0's negative is item 1: being popular, it is sampled often, so each sighting counts for less.
    assert popular_1[0] < uniform[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retrieval")


@pytest.fixture(scope="module")
def features_dir(workdir: Path) -> Path:
    features = make_features(workdir / "features")
    examples = read_features(features, schema.EXAMPLES)
    examples = examples.append_column("label_match", examples.column(schema.label_column("click")))
    shutil.rmtree(features / schema.EXAMPLES)
    _write(features / schema.EXAMPLES, examples)
    return features


def retrieval_config(root: Path, **scoring: object) -> Config:
    cfg = make_config(root, extra_tasks=(MATCH,), history_pooling="din", retrieval_hidden=[16, 8])
    return cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"blend": BLEND, **scoring})})


@pytest.fixture(scope="module")
def trained(features_dir: Path, workdir: Path):
    cfg = retrieval_config(workdir)
    return cfg, train_model(features_dir, cfg, RUN_DATE, workdir / "models", show_progress=False)


def test_the_retrieval_task_trains_jointly_and_ranks_clicks_first(trained) -> None:
    _, result = trained
    history = [h["train_match"] for h in result.history]
    assert history[-1] < history[0], history
    # The logQ correction takes out the items' popularity, which drives half of the synthetic clicks: the
    # score keeps the user's taste (category), well above chance.
    assert result.metrics["tasks"]["match"]["auc"] > 0.6, result.metrics
    assert result.metrics["tasks"]["click"]["auc"] > 0.7, result.metrics


def _pair_scores(model, features: Path, vocab, layout: FeatureLayout) -> tuple[list, np.ndarray, np.ndarray]:
    """(user ids, item ids, [users, items, tasks] predictions) by forward() on every pair."""
    users = read_features(features, schema.USERS).sort_by(schema.USER_ID)
    items = read_features(features, schema.ITEMS).sort_by(schema.ITEM_ID)
    all_items, all_users = item_tensors(items, vocab, layout, None), user_tensors(users, vocab, layout)
    preds = []
    with torch.inference_mode():
        for row in range(users.num_rows):
            pairs = all_users.take(torch.full((items.num_rows,), row, dtype=torch.long))
            preds.append(model(pairs, all_items).predictions.numpy())
    return (
        users.column(schema.USER_ID).to_pylist(),
        np.array(items.column(schema.ITEM_ID).to_pylist()),
        np.stack(preds),
    )


@pytest.mark.parametrize("candidates", [None, 15])
def test_scoring_with_and_without_two_stages_equals_forward_pair_by_pair(
    trained, features_dir: Path, workdir: Path, candidates: int | None
) -> None:
    """Full scoring: the blend's top K over every unseen item. Two stages: the blend's top K over the user's
    `candidates` best unseen items by retrieval score + log q (the model's saved sampling distribution), and
    nothing outside them."""
    cfg, result = trained
    if candidates is not None:
        cfg = retrieval_config(workdir, two_stage_min_pairs=0, retrieval_candidates=candidates)
    recs = score_users(result.model_dir, features_dir, cfg, show_progress=False)
    model, meta, vocab = load_model(result.model_dir)
    users, item_ids, preds = _pair_scores(model, features_dir, vocab, FeatureLayout.from_dict(meta["layout"]))
    click, match = preds[..., 0], preds[..., 2]
    log_q = model.item_log_q[vocab.items.lookup(pa.array(item_ids))].numpy()
    blended = np.log(np.maximum(click, 1e-30)) + match
    seen = read_features(features_dir, schema.SEEN).to_pandas()
    assert "p_match" in recs.columns
    scorer = Scorer.build(
        result.model_dir,
        read_features(features_dir, schema.ITEMS),
        lambda _: None,
        cfg.scoring,
        torch.device("cpu"),
    )
    assert scorer.users_per_block(len(users)) * 3 < len(users)  # several blocks: item terms kept from block 1
    for u, user in list(enumerate(users))[::3]:
        unseen = np.flatnonzero(~np.isin(item_ids, seen.loc[seen.user_id == user, "item_id"].to_numpy()))
        pool = unseen
        if candidates is not None:
            pool = unseen[np.argsort(-(match[u, unseen] + log_q[unseen]), kind="stable")[:candidates]]
        best = pool[np.argsort(-blended[u, pool], kind="stable")[: cfg.scoring.top_k]]
        got = recs.loc[recs.user_id == user].sort_values("rank")
        assert got.item_id.tolist() == item_ids[best].tolist(), user
        assert np.allclose(got.score, blended[u, best], rtol=1e-4, atol=1e-5)
        assert np.allclose(got.p_match, match[u, best], rtol=1e-4, atol=1e-5)


def test_the_model_keeps_the_log_q_of_its_training_positives(trained, features_dir: Path) -> None:
    """Saved with the weights for candidate picking; a model saved before it existed loads with log q = 0."""
    cfg, result = trained
    model, _, vocab = load_model(result.model_dir)
    examples = read_features(features_dir, schema.EXAMPLES).to_pandas()
    cutoff = pd.Timestamp(RUN_DATE) - pd.Timedelta(days=cfg.model.validation_days)
    train = examples[pd.to_datetime(examples[schema.DAY]) < cutoff]
    clicks = train.loc[train[schema.label_column("match")] > 0.5, schema.ITEM_ID].value_counts()
    counts = np.ones(model.spec.n_items)  # one pseudo-count each
    np.add.at(counts, vocab.items.lookup(pa.array(clicks.index.to_numpy())), clicks.to_numpy())
    assert np.allclose(model.item_log_q.numpy(), np.log(counts / counts.sum()), atol=1e-5)

    old = result.model_dir.parent / "before-log-q"
    shutil.copytree(result.model_dir, old)
    state = torch.load(old / MODEL_FILE, weights_only=True)
    del state["item_log_q"]
    torch.save(state, old / MODEL_FILE)
    write_manifest(old)
    assert torch.all(load_model(old)[0].item_log_q == 0)


def test_two_stage_scoring_only_starts_above_its_threshold(
    trained, features_dir: Path, workdir: Path
) -> None:
    cfg, result = trained
    full = score_users(result.model_dir, features_dir, cfg, show_progress=False)
    n_pairs = read_features(features_dir, schema.USERS).num_rows * N_ITEMS
    below = retrieval_config(workdir, two_stage_min_pairs=n_pairs + 1, retrieval_candidates=10)
    assert full.equals(score_users(result.model_dir, features_dir, below, show_progress=False))
    above = retrieval_config(workdir, two_stage_min_pairs=n_pairs, retrieval_candidates=10)
    assert not full.equals(score_users(result.model_dir, features_dir, above, show_progress=False))


def test_blend_functions_log_and_exp() -> None:
    tasks = (TaskSpec("click", "binary", 1.0, None), TaskSpec("match", "retrieval", 1.0, None))
    values = {"click": torch.tensor([0.5, 0.0]), "match": torch.tensor([1.0, 2.0])}
    got = compile_blend("log(click) + match", tasks)(values)
    assert torch.allclose(got, torch.tensor([math.log(0.5) + 1.0, math.log(1e-30) + 2.0]))
    assert torch.allclose(
        compile_blend("click * exp(match)", tasks)(values), torch.tensor([0.5 * math.e, 0.0])
    )
    for expression in ("open(click)", "log(click, 2)", "log(x=click)", "log.__class__", "exp"):
        with pytest.raises(ValueError, match="scoring.blend"):
            compile_blend(expression, tasks)


def _config(tmp_path: Path, tasks: list[dict], **scoring: object) -> Config:
    raw = make_config(tmp_path).model_dump(mode="json")
    raw["tasks"] = [{"name": "click", "label": {"event_types": ["click"]}}, *tasks]
    raw["scoring"].update(scoring)
    return Config.model_validate(raw)


def test_config_rejects_what_retrieval_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="no ESMM parent"):
        _config(tmp_path, [{**MATCH, "parent": "click"}])
    with pytest.raises(pydantic.ValidationError, match="at most one retrieval task"):
        _config(tmp_path, [MATCH, {**MATCH, "name": "match2"}])
    with pytest.raises(pydantic.ValidationError, match="must both be binary"):
        _config(tmp_path, [MATCH, {"name": "buy", "label": {"event_types": ["purchase"]}, "parent": "match"}])
    with pytest.raises(pydantic.ValidationError, match="retrieval_candidates"):
        _config(tmp_path, [MATCH], top_k=20, retrieval_candidates=10)
    assert (
        _config(tmp_path, [], top_k=20, retrieval_candidates=10).scoring.top_k == 20
    )  # no retrieval: unused
    with pytest.raises(pydantic.ValidationError, match="gradnorm"):
        Config.model_validate(
            {**_config(tmp_path, [MATCH]).model_dump(mode="json"), "model": {"loss_weighting": "gradnorm"}}
        )
    with pytest.raises(pydantic.ValidationError, match="needs a parent"):
        _config(
            tmp_path, [{"name": "buy", "label": {"event_types": ["purchase"]}, "parent_loss": "conditional"}]
        )
    cfg = _config(tmp_path, [MATCH]).model_copy()
    cfg.evaluation.primary_metric = "match.auc"
    assert primary_metric(cfg) == "match.auc"


def test_a_conditional_child_is_trained_on_its_parents_positives_only() -> None:
    from model.losses import task_losses

    tasks = (
        TaskSpec("click", "binary", 1.0, None),
        TaskSpec("like", "binary", 1.0, 0, parent_loss="conditional"),
    )
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 5.0], [0.0, 5.0]])  # rows 2, 3: no click, ignored
    preds = torch.sigmoid(logits)
    preds[:, 1] = preds[:, 0] * preds[:, 1]
    mask = torch.ones(4, 2, dtype=torch.bool)
    losses = task_losses(tasks, logits, preds, torch.zeros(4, 0, 1), labels, mask, None)
    expected = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))) / 2
    assert float(losses[1]) == pytest.approx(float(expected), rel=1e-6)
