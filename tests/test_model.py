"""The model package on a small synthetic features directory that follows nightrec.schema.

Clicks depend on a hidden user-category affinity and an item quality, purchases only happen after a
click: there is something to learn, and the ESMM child implies its parent. CPU only, seconds.
"""

from __future__ import annotations

import math
import pickle
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from model.architectures import build_model
from model.champion import judge, trained_before, validation_metrics
from model.checkpoint import (
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILE,
    ModelIntegrityError,
    heldout_version,
    load_model,
    save_model,
    write_manifest,
)
from model.data import (
    FeatureLayout,
    ItemTensors,
    UserTensors,
    Vocabulary,
    load_training_data,
    padded_indices,
    read_features,
    split_by_day,
)
from model.metrics import roc_auc, task_metrics
from model.score import compile_blend, score_users
from model.spec import ModelSpec, TaskSpec
from model.train import train_model
from nightrec import schema
from nightrec.config import Config

RUN_DATE = date(2024, 3, 15)
N_USERS, N_ITEMS, N_CATEGORIES = 200, 50, 4
HEAVY_USER = "u_heavy"  # has seen all but 5 items
HEAVY_UNSEEN = 5


def _write(path: Path, table: pa.Table) -> None:
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")


def make_features(root: Path, seed: int = 0, examples_per_user: int = 50, n_days: int = 10) -> Path:
    """A features dir per nightrec.schema: examples/, users/, items/, seen/."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{k:03d}" for k in range(N_USERS)]
    item_ids = [f"i{k:02d}" for k in range(N_ITEMS)]
    preference = rng.integers(0, N_CATEGORIES, N_USERS)
    category = rng.integers(0, N_CATEGORIES, N_ITEMS)
    quality = rng.normal(0.0, 1.0, N_ITEMS)
    item_categories = [[f"c{c}"] + (["all"] if k % 2 else []) for k, c in enumerate(category)]
    by_category = [np.flatnonzero(category == c) for c in range(N_CATEGORIES)]
    history = [  # recent items from the preferred category; every 10th user has no history
        [item_ids[i] for i in rng.choice(by_category[p], size=min(6, len(by_category[p])), replace=False)]
        if u % 10
        else []
        for u, p in enumerate(preference)
    ]
    u_cnt_7d = np.array([len(h) for h in history]) + rng.poisson(2, N_USERS)
    u_cnt_28d = u_cnt_7d * 3 + rng.poisson(5, N_USERS)
    i_pop_7d = np.round(np.exp(quality + 2.0)).astype(np.int64)
    i_age_days = rng.integers(0, 400, N_ITEMS)

    n = N_USERS * examples_per_user
    eu = np.repeat(np.arange(N_USERS), examples_per_user)
    ei = rng.integers(0, N_ITEMS, n)
    day = np.array([RUN_DATE - timedelta(days=int(d)) for d in rng.integers(1, n_days + 1, n)])
    logit = 2.5 * (category[ei] == preference[eu]) + quality[ei] - 1.5
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    purchase = click & (rng.random(n) < 1.0 / (1.0 + np.exp(-(quality[ei] - 0.5))))
    spend = np.where(purchase, np.round(rng.gamma(2.0, 10.0, n), 2), np.nan)

    str_list = pa.list_(pa.string())
    examples = pa.table(
        {
            schema.USER_ID: pa.array([user_ids[u] for u in eu]),
            schema.ITEM_ID: pa.array([item_ids[i] for i in ei]),
            schema.DAY: pa.array(day, pa.date32()),
            schema.label_column("click"): pa.array(click.astype(np.float64)),
            schema.label_column("purchase"): pa.array(purchase.astype(np.float64)),
            schema.label_column("spend"): pa.array(spend, from_pandas=True),  # null unless purchased
            "u_cnt_7d": pa.array(u_cnt_7d[eu]),
            "u_cnt_28d": pa.array(u_cnt_28d[eu]),
            schema.HISTORY: pa.array([history[u] for u in eu], str_list),
            "i_pop_7d": pa.array(i_pop_7d[ei]),
            schema.ITEM_AGE: pa.array(i_age_days[ei]),
            schema.CATEGORIES: pa.array([item_categories[i] for i in ei], str_list),
        }
    )
    users = pa.table(
        {
            schema.USER_ID: pa.array([*user_ids, HEAVY_USER]),
            "u_cnt_7d": pa.array([*u_cnt_7d, 40]),
            "u_cnt_28d": pa.array([*u_cnt_28d, 100]),
            schema.HISTORY: pa.array([*history, item_ids[-6:]], str_list),
        }
    )
    items = pa.table(
        {
            schema.ITEM_ID: pa.array(item_ids),
            schema.TITLE: pa.array([f"Item {k}" for k in range(N_ITEMS)]),
            "i_pop_7d": pa.array(i_pop_7d),
            schema.ITEM_AGE: pa.array(i_age_days),
            schema.CATEGORIES: pa.array(item_categories, str_list),
        }
    )
    clicked = sorted({(user_ids[u], item_ids[i]) for u, i in zip(eu[click], ei[click], strict=True)})
    heavy = [(HEAVY_USER, i) for i in item_ids[: N_ITEMS - HEAVY_UNSEEN]]
    seen = pa.table(
        {
            schema.USER_ID: pa.array([u for u, _ in clicked + heavy]),
            schema.ITEM_ID: pa.array([i for _, i in clicked + heavy]),
        }
    )
    for name, table in [
        (schema.EXAMPLES, examples),
        (schema.USERS, users),
        (schema.ITEMS, items),
        (schema.SEEN, seen),
    ]:
        _write(root / name, table)
    return root


def make_config(root: Path, *, extra_tasks: tuple[dict, ...] = (), **model: object) -> Config:
    return Config.model_validate(
        {
            "data": {
                "landing": str(root / "landing"),
                "workdir": str(root / "work"),
                "warehouse": str(root / "w.db"),
            },
            "features": {
                "history_length": 8,
                "exposure_event_types": ["impression"],
                "seen_event_types": ["click"],
            },
            "validation": {"event_types": ["impression", "click", "purchase"]},
            "tasks": [
                {"name": "click", "label": {"event_types": ["click"]}},
                {"name": "purchase", "label": {"event_types": ["purchase"]}, "parent": "click"},
                *extra_tasks,
            ],
            "model": {
                "embedding_dim": 8,
                "num_experts": 3,
                "expert_hidden": [32, 16],
                "tower_hidden": [8],
                "dropout": 0.0,
                "epochs": 8,
                "batch_size": 128,
                "learning_rate": 0.01,
                "patience": 2,
                "validation_days": 3,
                "device": "cpu",
                **model,
            },
            "scoring": {"top_k": 10, "user_batch_size": 64},
        }
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model")


@pytest.fixture(scope="module")
def features_dir(workdir: Path) -> Path:
    return make_features(workdir / "features")


@pytest.fixture(scope="module")
def cfg(workdir: Path) -> Config:
    return make_config(workdir)


@pytest.fixture(scope="module")
def trained(features_dir: Path, cfg: Config, workdir: Path):
    return train_model(features_dir, cfg, RUN_DATE, workdir / "models", show_progress=False)


def test_split_by_day_keeps_validation_after_the_cutoff() -> None:
    days = np.array([RUN_DATE - timedelta(days=d) for d in range(1, 11)], dtype="datetime64[D]")
    train, val = split_by_day(days, RUN_DATE, validation_days=3)
    cutoff = np.datetime64(RUN_DATE - timedelta(days=3), "D")
    assert (days[val] >= cutoff).all() and len(val) == 3
    assert (days[train] < cutoff).all() and len(train) == 7
    with pytest.raises(ValueError, match="no validation examples"):
        split_by_day(days[days < cutoff], RUN_DATE, validation_days=3)
    with pytest.raises(ValueError, match="no training examples"):
        split_by_day(days[days >= cutoff], RUN_DATE, validation_days=3)
    leaked = np.append(days, np.datetime64(RUN_DATE, "D"))
    with pytest.raises(ValueError, match="on or after the run date"):
        split_by_day(leaked, RUN_DATE, validation_days=3)


def test_streamed_loading_is_the_one_batch_load_sorted_by_day_user_item(
    features_dir: Path, cfg: Config, tmp_path: Path
) -> None:
    """Examples in shuffled part files, streamed 97 rows at a time, give the tensors of a single batch, in
    (day, user, item) order, with statistics over the training rows, and train/val as views of one copy."""
    examples = read_features(features_dir, schema.EXAMPLES)
    keys = [schema.DAY, schema.USER_ID, schema.ITEM_ID]
    frame = examples.to_pandas().drop_duplicates(keys).sample(frac=1.0, random_state=3)
    dest = tmp_path / "features"
    for name in (schema.USERS, schema.ITEMS, schema.SEEN):
        shutil.copytree(features_dir / name, dest / name)
    (dest / schema.EXAMPLES).mkdir(parents=True)
    for k, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        table = pa.Table.from_pandas(frame.iloc[part], schema=examples.schema, preserve_index=False)
        pq.write_table(table, dest / schema.EXAMPLES / f"part-{k:05d}.parquet")

    whole = load_training_data(dest, cfg, RUN_DATE, batch_rows=10**9)
    streamed = load_training_data(dest, cfg, RUN_DATE, batch_rows=97)

    assert streamed.vocab.to_json() == whole.vocab.to_json()
    for a, b in zip(_leaves(streamed.examples), _leaves(whole.examples), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-5) if a.is_floating_point() else torch.equal(a, b)

    expected = frame.sort_values(keys)
    users, items = streamed.vocab.users.tokens, streamed.vocab.items.tokens
    assert [users[i - 1] for i in streamed.examples.users.user.tolist()] == expected[schema.USER_ID].tolist()
    assert [items[i - 1] for i in streamed.examples.items.item.tolist()] == expected[schema.ITEM_ID].tolist()
    cutoff = RUN_DATE - timedelta(days=cfg.model.validation_days)
    train = expected[expected[schema.DAY] < cutoff]
    assert len(streamed.train) == len(train) and len(streamed.val) == len(expected) - len(train)
    for column in ("u_cnt_7d", "i_pop_7d"):
        x = np.log1p(train[column].to_numpy(np.float64))
        assert streamed.layout.mean[column] == pytest.approx(x.mean(), rel=1e-12)
        assert streamed.layout.std[column] == pytest.approx(x.std(), rel=1e-12)

    storage = streamed.examples.users.history.untyped_storage().data_ptr()
    assert streamed.train.users.history.untyped_storage().data_ptr() == storage
    assert streamed.val.users.history.untyped_storage().data_ptr() == storage


def _leaves(group) -> list[torch.Tensor]:
    out = []
    for name in vars(group):
        value = getattr(group, name)
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif value is not None:
            out.extend(_leaves(value))
    return out


def test_padded_lists_keep_newest_history_and_first_categories() -> None:
    vocab = Vocabulary.build(pa.array(["a", "b", "c"]))
    column = pa.chunked_array([pa.array([["a", "b", "c"], [], None, ["zzz", "a"]], pa.list_(pa.string()))])
    newest = padded_indices(column, vocab, width=2, keep_last=True)
    first = padded_indices(column, vocab, width=2, keep_last=False)
    assert newest.tolist() == [[2, 3], [0, 0], [0, 0], [0, 1]]  # unknown "zzz" -> 0, like padding
    assert first.tolist() == [[1, 2], [0, 0], [0, 0], [0, 1]]


def test_training_learns_and_writes_a_complete_model_dir(trained, features_dir: Path, cfg: Config) -> None:
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < 0.9 * losses[0]
    click, purchase = trained.metrics["tasks"]["click"], trained.metrics["tasks"]["purchase"]
    assert click["auc"] > 0.72, click  # 0.82 for the true logits, 0.70 from item quality alone
    assert purchase["auc"] > 0.7, purchase
    assert 0.7 < click["calibration"] < 1.3, click

    examples = read_features(features_dir, schema.EXAMPLES)
    cutoff = RUN_DATE - timedelta(days=cfg.model.validation_days)
    n_val = int(pc.sum(pc.greater_equal(examples.column(schema.DAY), pa.scalar(cutoff, pa.date32()))).as_py())
    assert (trained.n_train, trained.n_val) == (examples.num_rows - n_val, n_val)

    assert trained.version.startswith("20240315-")
    assert trained.model_dir.name == trained.version
    assert sorted(p.name for p in trained.model_dir.parent.iterdir()) == [
        trained.version
    ]  # no temp dirs left
    _, meta, vocab = load_model(trained.model_dir)
    assert meta["metrics"] == trained.metrics and meta["history"] == trained.history
    assert meta["data_window"]["last_day"] == "2024-03-14" and meta["run_date"] == "2024-03-15"
    assert meta["layout"]["user_dense"] == ["u_cnt_28d", "u_cnt_7d"]
    assert meta["layout"]["item_dense"] == ["i_age_days", "i_pop_7d"]
    assert (
        meta["vocab_sizes"] == vocab.sizes() == {"users": N_USERS + 2, "items": N_ITEMS + 1, "categories": 6}
    )


def test_training_is_deterministic_for_a_seed(
    trained, features_dir: Path, cfg: Config, tmp_path: Path
) -> None:
    again = train_model(features_dir, cfg, RUN_DATE, tmp_path, show_progress=False)
    assert again.version == trained.version
    assert again.metrics == trained.metrics
    assert again.history == trained.history
    first = torch.load(trained.model_dir / MODEL_FILE, weights_only=True)
    second = torch.load(again.model_dir / MODEL_FILE, weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_refit_trains_again_on_every_day_and_keeps_the_chosen_model_as_its_held_out_twin(
    trained, features_dir: Path, workdir: Path, tmp_path: Path
) -> None:
    cfg = make_config(workdir, refit=True)
    refit = train_model(features_dir, cfg, RUN_DATE, tmp_path, show_progress=False)
    _, meta, _ = load_model(refit.model_dir)
    best = trained.metrics["best_epoch"]
    assert meta["refit"]["epochs"] == best and len(meta["refit"]["history"]) == best
    assert meta["refit"]["n_examples"] == trained.n_train + trained.n_val
    # The held-out twin is the model early stopping chose: the same weights as training without refit.
    heldout_dir = tmp_path / heldout_version(refit.version)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([refit.version, heldout_dir.name])
    twin = torch.load(heldout_dir / MODEL_FILE, weights_only=True)
    chosen = torch.load(trained.model_dir / MODEL_FILE, weights_only=True)
    assert all(torch.equal(twin[k], chosen[k]) for k in chosen)
    assert refit.metrics == trained.metrics  # the held-out figures are the chosen model's
    published = torch.load(refit.model_dir / MODEL_FILE, weights_only=True)
    assert not all(torch.equal(published[k], chosen[k]) for k in chosen)


def _features_before(features_dir: Path, day: date, out: Path) -> Path:
    """A copy of the features whose examples end the day before `day`: the features of run date `day`."""
    shutil.copytree(features_dir, out)
    examples = read_features(features_dir, schema.EXAMPLES)
    keep = pc.less(examples.column(schema.DAY), pa.scalar(day, pa.date32()))
    shutil.rmtree(out / schema.EXAMPLES)
    (out / schema.EXAMPLES).mkdir()
    pq.write_table(examples.filter(keep), out / schema.EXAMPLES / "part-0.parquet")
    return out


def test_the_gate_judges_refit_models_by_their_held_out_twins(
    features_dir: Path, workdir: Path, tmp_path: Path
) -> None:
    cfg = make_config(workdir, refit=True, epochs=2)
    yesterday = RUN_DATE - timedelta(days=1)
    old_features = _features_before(features_dir, yesterday, tmp_path / "features-yesterday")
    root = tmp_path / "models"
    champion = train_model(old_features, cfg, yesterday, root, show_progress=False)
    assert trained_before(champion.model_dir) == yesterday
    # Asked to warm-start from a refit champion that trained on its validation days, it starts fresh.
    candidate = train_model(
        features_dir, cfg, RUN_DATE, root, show_progress=False, warm_start_from=champion.model_dir
    )
    assert load_model(candidate.model_dir)[1]["warm_start"] is None

    def twin(version: str) -> Path:
        return root / heldout_version(version)

    verdict = judge(
        cfg, RUN_DATE, features_dir, candidate.model_dir, candidate.version, champion.version, root
    )
    assert verdict.judged_from is None  # neither twin has seen any of the three validation days
    assert load_model(candidate.model_dir)[1]["refit"]["heldout"] == heldout_version(candidate.version)
    assert verdict.candidate_judged == heldout_version(candidate.version)
    assert verdict.champion_judged == heldout_version(champion.version)
    assert verdict.candidate_metrics == validation_metrics(
        twin(candidate.version), features_dir, cfg, RUN_DATE
    )
    assert verdict.champion_metrics == validation_metrics(twin(champion.version), features_dir, cfg, RUN_DATE)

    # Without its twin, the refit champion is judged (with the candidate's twin) only on the day it has not seen.
    shutil.rmtree(twin(champion.version))
    verdict = judge(
        cfg, RUN_DATE, features_dir, candidate.model_dir, candidate.version, champion.version, root
    )
    assert verdict.judged_from == yesterday.isoformat()
    assert verdict.champion_judged == champion.version
    last_day = validation_metrics(champion.model_dir, features_dir, cfg, RUN_DATE, yesterday)
    assert verdict.champion_metrics == last_day
    assert verdict.candidate_metrics == validation_metrics(
        twin(candidate.version), features_dir, cfg, RUN_DATE, yesterday
    )
    assert last_day["n_val"] == verdict.candidate_metrics["n_val"]
    assert 0 < last_day["n_val"] < candidate.n_val  # one of the three validation days


def test_loaded_model_reproduces_the_validation_metrics(trained, features_dir: Path, cfg: Config) -> None:
    model, meta, _ = load_model(trained.model_dir)
    data = load_training_data(features_dir, cfg, RUN_DATE)
    assert FeatureLayout.from_dict(meta["layout"]) == data.layout
    with torch.inference_mode():
        preds = model(data.val.users, data.val.items).predictions
    metrics = task_metrics(
        {"click": "binary", "purchase": "binary"},
        preds.numpy(),
        data.val.labels.numpy(),
        data.val.label_mask.numpy(),
    )
    assert metrics.keys() == trained.metrics["tasks"].keys()
    for task, values in metrics.items():
        assert values == pytest.approx(trained.metrics["tasks"][task])


def test_save_and_load_give_identical_predictions(
    trained, features_dir: Path, cfg: Config, tmp_path: Path
) -> None:
    model, meta, vocab = load_model(trained.model_dir)
    layout = FeatureLayout.from_dict(meta["layout"])
    copy_dir = save_model(model, layout, vocab, {"note": "copy"}, tmp_path, "copy")
    reloaded, copy_meta, copy_vocab = load_model(copy_dir)
    assert copy_meta["model_spec"] == meta["model_spec"] and copy_vocab.to_json() == vocab.to_json()
    val = load_training_data(features_dir, cfg, RUN_DATE).val
    with torch.inference_mode():
        a = model(val.users, val.items)
        b = reloaded(val.users, val.items)
    assert torch.equal(a.predictions, b.predictions)


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "payload"


class _Payload:
    """An object whose unpickling would run code: what weights_only=True must refuse."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_checkpoint_with_a_pickled_object_is_refused(trained, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(trained.model_dir, tampered)
    state = torch.load(tampered / MODEL_FILE, weights_only=True)
    torch.save({**state, "extra": _Payload()}, tampered / MODEL_FILE)
    write_manifest(tampered)  # an attacker who can rewrite the manifest too: weights_only must still refuse
    with pytest.raises(pickle.UnpicklingError):
        load_model(tampered)
    assert _UNPICKLED == []


@pytest.mark.parametrize("changed", [MODEL_FILE, META_FILE, MANIFEST_FILE])
def test_a_model_directory_that_does_not_match_its_manifest_is_refused(
    trained, tmp_path: Path, changed
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(trained.model_dir, tampered)
    load_model(tampered)  # the copy itself is intact
    if changed == MANIFEST_FILE:
        (tampered / MANIFEST_FILE).unlink()
    else:
        with (tampered / changed).open("ab") as f:
            f.write(b" ")
    with pytest.raises(ModelIntegrityError, match=MANIFEST_FILE):
        load_model(tampered)


def _random_model(seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    torch.manual_seed(seed)
    spec = ModelSpec(
        n_users=30,
        n_items=20,
        n_categories=5,
        n_user_dense=2,
        n_item_dense=3,
        embedding_dim=4,
        num_experts=3,
        expert_hidden=(8, 6, 4),
        tower_hidden=(4,),
        dropout=0.0,
        tasks=(
            TaskSpec("click", "binary", 1.0, None),
            TaskSpec("purchase", "binary", 1.0, 0),
            TaskSpec("repeat", "binary", 0.5, 1),  # a chain: p(click, purchase, repeat)
            TaskSpec("spend", "regression", 0.1, None),
        ),
    )
    return build_model(spec).eval(), spec


def test_esmm_child_never_exceeds_its_parent(trained, features_dir: Path, cfg: Config) -> None:
    model, _, _ = load_model(trained.model_dir)
    val = load_training_data(features_dir, cfg, RUN_DATE).val
    with torch.inference_mode():
        preds = model(val.users, val.items).predictions
    assert (preds[:, 1] <= preds[:, 0]).all()

    rand, _ = _random_model()
    n = 500
    users = UserTensors(torch.randint(0, 30, (n,)), torch.randint(0, 20, (n, 5)), torch.randn(n, 2) * 5)
    items = ItemTensors(torch.randint(0, 20, (n,)), torch.randint(0, 5, (n, 2)), torch.randn(n, 3) * 5)
    with torch.inference_mode():
        p = rand(users, items).predictions
    assert (p[:, 1] <= p[:, 0]).all() and (p[:, 2] <= p[:, 1]).all()
    assert ((p[:, :3] >= 0) & (p[:, :3] <= 1)).all()


def test_gate_weights_sum_to_one_per_task(trained) -> None:
    rand, spec = _random_model()
    n = 64
    users = UserTensors(torch.randint(0, 30, (n,)), torch.randint(0, 20, (n, 5)), torch.randn(n, 2))
    items = ItemTensors(torch.randint(0, 20, (n,)), torch.randint(0, 5, (n, 2)), torch.randn(n, 3))
    gates = rand(users, items).gate_mean
    assert gates.shape == (len(spec.tasks), spec.num_experts)
    assert torch.allclose(gates.sum(dim=1), torch.ones(len(spec.tasks)))
    for epoch in trained.history:
        for weights in epoch["gates"].values():
            assert len(weights) == 3 and math.isclose(sum(weights), 1.0, rel_tol=1e-5)


def _scoring_dir(features_dir: Path, dest: Path) -> Path:
    """The training features plus a user and an item the model has never seen."""
    shutil.copytree(features_dir, dest)
    users, items = read_features(dest, schema.USERS), read_features(dest, schema.ITEMS)
    new_user = pa.table(
        {
            schema.USER_ID: ["u_new"],
            "u_cnt_7d": pa.array([3], users.schema.field("u_cnt_7d").type),
            "u_cnt_28d": pa.array([9], users.schema.field("u_cnt_28d").type),
            schema.HISTORY: pa.array([["i01", "never-seen-item"]], pa.list_(pa.string())),
        }
    )
    new_item = pa.table(
        {
            schema.ITEM_ID: ["i_new"],
            schema.TITLE: ["New item"],
            "i_pop_7d": pa.array([0], items.schema.field("i_pop_7d").type),
            schema.ITEM_AGE: pa.array([0], items.schema.field(schema.ITEM_AGE).type),
            schema.CATEGORIES: pa.array([["c_new"]], pa.list_(pa.string())),
        }
    )
    for name, table in [
        (schema.USERS, pa.concat_tables([users, new_user])),
        (schema.ITEMS, pa.concat_tables([items, new_item])),
    ]:
        shutil.rmtree(dest / name)
        _write(dest / name, table)
    return dest


@pytest.mark.parametrize("top_k", [10, 100])
def test_scoring_returns_top_k_unseen_items_per_user(
    trained, features_dir: Path, cfg: Config, tmp_path: Path, top_k: int
) -> None:
    scoring = _scoring_dir(features_dir, tmp_path / "features")
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"top_k": top_k})})
    recs = score_users(trained.model_dir, scoring, cfg, show_progress=False)

    assert list(recs.columns) == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "p_click",
        "p_purchase",
        "model_version",
    ]
    users = read_features(scoring, schema.USERS).column(schema.USER_ID).to_pylist()
    n_items = N_ITEMS + 1
    seen = read_features(scoring, schema.SEEN).to_pandas()
    n_seen = seen.groupby(schema.USER_ID).size().reindex(users, fill_value=0)
    expected = np.minimum(top_k, n_items - n_seen)
    assert recs.groupby("user_id").size().reindex(users, fill_value=0).tolist() == expected.tolist()
    assert recs.loc[recs.user_id == HEAVY_USER].shape[0] == min(top_k, HEAVY_UNSEEN + 1)  # + the new item
    assert not recs.duplicated(["user_id", "item_id"]).any()
    assert (recs.groupby("user_id")["rank"].apply(lambda r: r.tolist() == list(range(1, len(r) + 1)))).all()
    assert recs.merge(seen, on=["user_id", "item_id"]).empty
    assert recs.score.between(0.0, 1.0).all()
    assert (recs.groupby("user_id")["score"].diff().dropna() <= 0).all()
    assert np.allclose(recs.score, recs.p_click * recs.p_purchase, rtol=1e-5)
    assert (recs.p_purchase <= recs.p_click).all()
    assert (recs.model_version == trained.version).all()
    if top_k >= n_items:  # every unseen item is listed, the unknown item included
        assert (recs.item_id == "i_new").sum() == len(users) - seen.loc[seen.item_id == "i_new"].shape[0]
    assert (recs.user_id == "u_new").sum() == min(top_k, n_items)
    pd.testing.assert_frame_equal(recs, score_users(trained.model_dir, scoring, cfg, show_progress=False))


def test_scoring_ranks_ties_by_item_order(trained, features_dir: Path, cfg: Config) -> None:
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"blend": "click * 0 + 1"})})
    recs = score_users(trained.model_dir, features_dir, cfg, show_progress=False)
    assert (recs.score == 1.0).all()
    first = recs.loc[recs.user_id == HEAVY_USER, "item_id"].tolist()
    assert first == [f"i{k:02d}" for k in range(N_ITEMS - HEAVY_UNSEEN, N_ITEMS)]


TASKS = (TaskSpec("click", "binary", 1.0, None), TaskSpec("purchase", "binary", 1.0, 0))


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "click.real",
        "click if purchase else 0",
        "click[0]",
        "(lambda: click)()",
        "True * click",
        "click * views",
        "click // 2",
        "1e999 * click",
        "click; purchase",
        "",
    ],
)
def test_blend_parser_rejects_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError, match="scoring.blend"):
        compile_blend(expression, TASKS)


def test_blend_parser_evaluates_arithmetic_over_tasks() -> None:
    values = {"click": torch.tensor([0.25, 0.5]), "purchase": torch.tensor([0.04, 0.16])}
    assert torch.allclose(compile_blend("click * purchase ** 0.5", TASKS)(values), torch.tensor([0.05, 0.2]))
    assert torch.allclose(compile_blend("-(click - 1) / 2", TASKS)(values), torch.tensor([0.375, 0.25]))
    assert torch.allclose(compile_blend(None, TASKS)(values), values["click"] * values["purchase"])
    with pytest.raises(ValueError, match="no task is binary"):
        compile_blend(None, (TaskSpec("spend", "regression", 1.0, None),))


def test_regression_task_with_null_labels(features_dir: Path, workdir: Path) -> None:
    spend = {"name": "spend", "type": "regression", "label": {"event_types": ["purchase"]}, "weight": 0.001}
    cfg = make_config(workdir, extra_tasks=(spend,), epochs=2)
    result = train_model(features_dir, cfg, RUN_DATE, workdir / "models-spend", show_progress=False)
    labels = read_features(features_dir, schema.EXAMPLES).column(schema.label_column("spend"))
    assert 0 < result.metrics["tasks"]["spend"]["n"] < result.n_val  # only the examples with a value
    assert result.metrics["tasks"]["spend"]["n"] < len(labels) - labels.null_count
    assert math.isfinite(result.metrics["tasks"]["spend"]["rmse"])
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)


def test_roc_auc_counts_ties_as_half() -> None:
    assert roc_auc(np.array([0, 1]), np.array([0.3, 0.3])) == 0.5
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None
