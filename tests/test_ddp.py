"""Data-parallel training: two CPU processes on gloo, started by torchrun, on the tiny synthetic features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_model import RUN_DATE, make_config, make_features

from model.checkpoint import load_weights
from model.train import Shard, train_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_gloo_ranks_agree_and_match_a_single_process(tmp_path: Path) -> None:
    features = make_features(tmp_path / "features")
    cfg = make_config(tmp_path, epochs=3, patience=10)
    config_file = tmp_path / "config.json"
    config_file.write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "model.train_ddp",
        "--features",
        str(features),
        "--config",
        str(config_file),
        "--run-date",
        RUN_DATE.isoformat(),
        "--out",
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["backend"] == "gloo"

    ddp_dir = Path(printed["model_dir"])
    _, meta, _ = load_weights(ddp_dir)
    distributed = meta["distributed"]
    assert distributed["world_size"] == 2 and distributed["backend"] == "gloo"
    assert len(distributed["rank_state_sha256"]) == 2
    assert len(set(distributed["rank_state_sha256"])) == 1  # both ranks ended with the same weights
    assert "rank 1" in done.stderr and "rank 0" in done.stderr  # two processes really trained
    assert not (tmp_path / "ddp" / f".resume-{ddp_dir.name}.pt").exists()

    single = train_model(features, cfg, RUN_DATE, tmp_path / "single", show_progress=False)
    assert single.version == ddp_dir.name  # same inputs, same version
    # Each rank takes half of every batch and DDP averages the gradients: the first epoch is the
    # single-process one up to float rounding. Rounding differences then grow through AdamW (a ReLU
    # network at lr 0.01), so by the end the runs are close in quality, not in every weight.
    first, single_first = meta["history"][0], single.history[0]
    assert first["train_loss"] == pytest.approx(single_first["train_loss"], rel=1e-4)
    assert first["val_loss"] == pytest.approx(single_first["val_loss"], rel=1e-4)
    assert meta["metrics"]["val_loss"] == pytest.approx(single.metrics["val_loss"], rel=0.01)
    for task in ("click", "purchase"):
        assert meta["metrics"]["tasks"][task]["auc"] == pytest.approx(
            single.metrics["tasks"][task]["auc"], abs=0.01
        )


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_batch_into_disjoint_even_parts(world: int) -> None:
    batch = torch.randperm(100)[:37]
    parts = [Shard(rank, world).part(batch) for rank in range(world)]
    assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())  # every example once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
