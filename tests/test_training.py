"""Training infrastructure: warm start from a champion, resume after an interruption, bf16 on CPU.

On the small synthetic features of test_model (CPU, one thread, a few seconds per training).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
from test_model import RUN_DATE, _write, make_config, make_features

from model.architectures import build_model
from model.checkpoint import MODEL_FILE, load_resume, load_weights, resume_path
from model.data import load_training_data, read_features
from model.spec import ModelSpec
from model.train import autocast, train_model
from model.warm_start import warm_start
from nightrec import schema
from nightrec.config import Config

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def features_dir(workdir: Path) -> Path:
    return make_features(workdir / "features")


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / MODEL_FILE, weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


# --- warm start ---


def _renamed_users(features_dir: Path, dest: Path) -> Path:
    """The same features with users u000-u009 renamed z000-z009 (new tokens) and users u19x gone."""
    for name in (schema.EXAMPLES, schema.USERS, schema.ITEMS, schema.SEEN):
        table = read_features(features_dir, name)
        if schema.USER_ID in table.column_names:
            ids = table.column(schema.USER_ID)
            table = table.filter(pc.invert(pc.starts_with(ids, "u19")))
            renamed = pc.replace_substring_regex(
                table.column(schema.USER_ID), pattern="^u00", replacement="z00"
            )
            table = table.set_column(table.column_names.index(schema.USER_ID), schema.USER_ID, renamed)
        _write(dest / name, table)
    return dest


@pytest.fixture(scope="module")
def champion(features_dir: Path, workdir: Path):
    cfg = make_config(workdir, epochs=2)
    return train_model(features_dir, cfg, RUN_DATE, workdir / "champion", show_progress=False)


def test_warm_start_carries_embedding_rows_by_token(
    champion, features_dir: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features = _renamed_users(features_dir, workdir / "renamed")
    cfg = make_config(workdir, tower_hidden=[12])  # the towers change shape: they cannot be carried
    data = load_training_data(features, cfg, RUN_DATE)
    torch.manual_seed(7)
    model = build_model(ModelSpec.from_config(cfg, data.vocab.sizes(), data.layout))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="model.warm_start"):
        summary = warm_start(model, champion.model_dir, data.vocab)

    old, _, old_vocab = load_weights(champion.model_dir)
    new = model.state_dict()
    users, old_users = data.vocab.users.tokens, old_vocab.users.tokens
    assert "u005" in old_users and "u005" not in users and "z005" in users and "u195" not in users
    for row, token in enumerate(users, start=1):
        if token in old_users:  # a user known to both keeps its trained vector, at its new row
            assert torch.equal(
                new["user_embedding.weight"][row], old["user_embedding.weight"][old_users.index(token) + 1]
            )
        else:  # a new user keeps its fresh row
            assert token.startswith("z00")
            assert torch.equal(new["user_embedding.weight"][row], fresh["user_embedding.weight"][row])
    shifted = users.index("u050") + 1 != old_users.index("u050") + 1
    assert shifted, "the renaming must move rows, or a copy by position would pass too"
    assert summary["rows"]["users"] == [len(users) - 10, len(users)]
    assert summary["rows"]["items"] == [len(old_vocab.items.tokens)] * 2
    assert torch.equal(new["user_embedding.weight"][0], torch.zeros_like(new["user_embedding.weight"][0]))

    kept = [k for k in new if k.startswith("levels.") and new[k].shape == old[k].shape]
    assert kept and all(torch.equal(new[k], old[k]) for k in kept)  # the experts keep their shapes: copied
    tower_keys = [k for k in new if k.startswith("towers.") and new[k].shape != old[k].shape]
    assert tower_keys and set(tower_keys) <= set(summary["skipped"])
    assert all(torch.equal(new[k], fresh[k]) for k in tower_keys)
    assert f"{tower_keys[0]} skipped: shape" in caplog.text
    assert f"users: {len(users) - 10} of {len(users)} rows carried over by token" in caplog.text


def test_training_from_a_champion_records_the_warm_start(champion, features_dir: Path, workdir: Path) -> None:
    cfg = make_config(workdir, epochs=1)
    warm = train_model(
        features_dir, cfg, RUN_DATE, workdir / "warm", show_progress=False, warm_start_from=champion.model_dir
    )
    cold = train_model(features_dir, cfg, RUN_DATE, workdir / "cold", show_progress=False)
    _, meta, _ = load_weights(warm.model_dir)
    assert meta["warm_start"]["version"] == champion.version
    assert warm.version != cold.version  # the source is part of the version
    # A champion of two epochs plus one more: better than one epoch from scratch.
    assert warm.metrics["val_loss"] < cold.metrics["val_loss"]

    off = cfg.model_copy(update={"model": cfg.model.model_copy(update={"warm_start": False})})
    ignored = train_model(
        features_dir, off, RUN_DATE, workdir / "off", show_progress=False, warm_start_from=champion.model_dir
    )
    assert load_weights(ignored.model_dir)[1]["warm_start"] is None


# --- resume ---


def _resume_config(workdir: Path) -> Config:
    # Dropout on: the resumed run must also restore the RNG state that draws the dropout masks.
    return make_config(workdir, epochs=4, patience=10, dropout=0.2)


@pytest.fixture(scope="module")
def uninterrupted(features_dir: Path, workdir: Path):
    return train_model(
        features_dir, _resume_config(workdir), RUN_DATE, workdir / "whole", show_progress=False
    )


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_after_its_last_epoch(
    uninterrupted, features_dir: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, root = _resume_config(workdir), workdir / "interrupted"

    def stop_after_epoch_2(entry: dict) -> None:
        if entry["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(features_dir, cfg, RUN_DATE, root, show_progress=False, on_epoch=stop_after_epoch_2)
    saved = load_resume(resume_path(root, uninterrupted.version))
    assert saved is not None and saved["progress"]["epoch"] == 2
    assert not (root / uninterrupted.version).exists()

    epochs: list[int] = []
    with caplog.at_level(logging.INFO, logger="model.train"):
        resumed = train_model(
            features_dir,
            cfg,
            RUN_DATE,
            root,
            show_progress=False,
            on_epoch=lambda e: epochs.append(e["epoch"]),
        )
    assert "resuming after epoch 2" in caplog.text
    assert epochs == [3, 4]  # only the epochs that were not finished
    assert resumed.history == uninterrupted.history
    _assert_same_weights(resumed.model_dir, uninterrupted.model_dir)
    assert sorted(p.name for p in root.iterdir()) == [resumed.version]  # the resume file is gone


@pytest.mark.parametrize("weighting", ["uncertainty", "gradnorm", "pcgrad"])
def test_a_resumed_run_keeps_the_loss_weighting_state(
    weighting: str, features_dir: Path, workdir: Path
) -> None:
    """Learned task weights, GradNorm's first losses and PCGrad's random order all travel in the resume file."""
    base = workdir / f"weighting-{weighting}"
    cfg = make_config(base, epochs=3, patience=10, dropout=0.2, loss_weighting=weighting)
    whole = train_model(features_dir, cfg, RUN_DATE, base / "whole", show_progress=False)

    def stop_after_epoch_1(entry: dict) -> None:
        if entry["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(
            features_dir, cfg, RUN_DATE, base / "cut", show_progress=False, on_epoch=stop_after_epoch_1
        )
    resumed = train_model(features_dir, cfg, RUN_DATE, base / "cut", show_progress=False)
    assert resumed.history == whole.history  # task weights included, epoch by epoch
    _assert_same_weights(resumed.model_dir, whole.model_dir)


def test_a_resume_file_for_other_data_is_not_used(
    uninterrupted, features_dir: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, root = _resume_config(workdir), workdir / "other-data"

    def stop(entry: dict) -> None:
        raise _Interrupt

    other = workdir / "other-features"  # the same window and counts, one feature changed
    for name in (schema.EXAMPLES, schema.USERS, schema.ITEMS, schema.SEEN):
        table = read_features(features_dir, name)
        if name == schema.EXAMPLES:
            column = table.column_names.index("u_cnt_7d")
            table = table.set_column(column, "u_cnt_7d", pc.add(table.column("u_cnt_7d"), 1))
        _write(other / name, table)
    with pytest.raises(_Interrupt):
        train_model(other, cfg, RUN_DATE, root, show_progress=False, on_epoch=stop)
    assert resume_path(root, uninterrupted.version).exists()  # same version: only the data differs
    with caplog.at_level(logging.INFO, logger="model.train"):
        result = train_model(features_dir, cfg, RUN_DATE, root, show_progress=False)
    assert "written for other inputs: starting over" in caplog.text
    _assert_same_weights(result.model_dir, uninterrupted.model_dir)


CHILD = """
import sys
from pathlib import Path
from nightrec.config import Config
from model.train import train_model

cfg = Config.model_validate_json(Path(sys.argv[1]).read_text())

def report(entry):
    print(f"epoch {entry['epoch']}", flush=True)
    __import__("time").sleep(600)  # epoch 1 is saved: wait here for the kill, however slow the parent is

train_model(Path(sys.argv[2]), cfg, __import__("datetime").date.fromisoformat(sys.argv[3]), Path(sys.argv[4]),
            show_progress=False, on_epoch=report)
"""


def test_a_killed_training_process_resumes_and_ends_like_an_uninterrupted_run(
    uninterrupted, features_dir: Path, workdir: Path
) -> None:
    cfg, root = _resume_config(workdir), workdir / "killed"
    config_file = workdir / "killed-config.json"
    config_file.write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config_file), str(features_dir), RUN_DATE.isoformat(), str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "epoch 1"
        child.send_signal(signal.SIGKILL)  # after epoch 1 is saved, before epoch 2
    finally:
        if child.poll() is None:  # a failed assertion above must not leave the child sleeping
            child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    saved = load_resume(resume_path(root, uninterrupted.version))
    assert saved is not None and 1 <= saved["progress"]["epoch"] < 4

    resumed = train_model(features_dir, cfg, RUN_DATE, root, show_progress=False)
    assert resumed.history == uninterrupted.history
    _assert_same_weights(resumed.model_dir, uninterrupted.model_dir)
    assert not resume_path(root, uninterrupted.version).exists()


# --- bf16 on CPU ---


def test_cpu_bf16_autocasts_and_training_learns(features_dir: Path, workdir: Path) -> None:
    cpu = torch.device("cpu")
    x = torch.randn(4, 3)
    with autocast(cpu, cpu_bf16=True):
        assert torch.nn.Linear(3, 2)(x).dtype == torch.bfloat16
    with autocast(cpu, cpu_bf16=False):
        assert torch.nn.Linear(3, 2)(x).dtype == torch.float32

    cfg = make_config(workdir, cpu_bf16=True, epochs=4)
    result = train_model(features_dir, cfg, RUN_DATE, workdir / "bf16", show_progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert result.metrics["tasks"]["click"]["auc"] > 0.7, result.metrics
    meta = load_weights(result.model_dir)[1]
    assert meta["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in _weights(result.model_dir).values())  # weights stay fp32


def test_early_stopping_compares_epochs_on_a_fixed_sample_and_reports_on_the_whole_slice(
    features_dir: Path, workdir: Path
) -> None:
    from model.checkpoint import load_model
    from model.train import _evaluate, early_stopping_sample

    probe = load_training_data(features_dir, make_config(workdir), RUN_DATE)
    size = len(probe.val) // 3
    cfg = make_config(workdir, epochs=1, early_stopping_examples=size)
    data = load_training_data(features_dir, cfg, RUN_DATE)
    sample = early_stopping_sample(data.val, size, cfg.model.seed)
    assert len(sample) == size
    assert torch.equal(sample.labels, early_stopping_sample(data.val, size, cfg.model.seed).labels)
    assert not torch.equal(sample.users.user, early_stopping_sample(data.val, size, seed=7).users.user)
    assert early_stopping_sample(data.val, len(data.val), cfg.model.seed) is data.val

    result = train_model(features_dir, cfg, RUN_DATE, workdir / "sampled-stopping", show_progress=False)
    model, _, _ = load_model(result.model_dir)
    cpu = torch.device("cpu")
    on_sample = _evaluate(model, sample, cfg.model.batch_size, cpu, False).loss
    on_slice = _evaluate(model, data.val, cfg.model.batch_size, cpu, False).loss
    assert on_sample != pytest.approx(on_slice, rel=1e-4)  # else the test could not tell them apart
    assert result.history[0]["val_loss"] == pytest.approx(on_sample, rel=1e-5)
    assert result.metrics["val_loss"] == pytest.approx(on_slice, rel=1e-5)
