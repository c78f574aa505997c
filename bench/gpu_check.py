"""One short check of training on a GPU machine: bf16 against fp32 per architecture, and two DDP ranks.

Run through bench/gpu_check.sh. It needs only torch, numpy, pyarrow, tqdm and pydantic (no Spark, Prefect
or DuckDB): the feature tables are synthetic, built here with pyarrow after nightrec.schema, with a
learnable signal (clicks follow a hidden user-category affinity and an item quality, purchases follow
clicks). For each architecture it trains with bf16 autocast and in fp32 and reports steady-state
throughput (train examples per second over the epochs after the first, validation included) and the
final validation loss; then it trains with torchrun on two processes and checks that the ranks agree.

    bench/gpu_check.sh                       # on the GPU machine: medium tables, CUDA, under 4 minutes
    bench/gpu_check.sh --device cpu --tiny   # here: the same code paths in about a minute

The table goes to stdout; the figures go to $OUT/gpu_check.json when OUT is set (or --json PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import typing
from datetime import date
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model.checkpoint import load_weights
from model.train import train_model
from nightrec import schema
from nightrec.config import Config, ModelConfig

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = date(2024, 3, 15)
SIZES = {  # users, items, categories, examples, epochs, batch size
    "tiny": (500, 100, 8, 20_000, 2, 512),
    "medium": (50_000, 5_000, 40, 1_000_000, 4, 8192),
}


def _lists(values: np.ndarray, lengths: np.ndarray, names: pa.Array) -> pa.ListArray:
    """list<string> column from flat indices into `names` and per-row lengths (no per-row Python)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(values)))


def write_features(root: Path, n_users: int, n_items: int, n_categories: int, n_examples: int) -> Path:
    """examples/, users/, items/ after nightrec.schema, on ten days before RUN_DATE; seeded."""
    rng = np.random.default_rng(0)
    user_names = pa.array([f"u{k}" for k in range(n_users)])
    item_names = pa.array([f"i{k}" for k in range(n_items)])
    category_names = pa.array([f"c{k}" for k in range(n_categories)])
    preference = rng.integers(0, n_categories, n_users)
    category = rng.integers(0, n_categories, n_items)
    quality = rng.normal(0.0, 1.0, n_items)

    second = np.arange(n_items) % 2 == 1  # every other item has a second category
    both = np.stack([category, (category + 1) % n_categories], axis=1)
    keep = np.stack([np.ones(n_items, dtype=bool), second], axis=1)
    item_categories = _lists(both[keep], 1 + second.astype(np.int64), category_names)

    history_length = 8
    by_category = np.argsort(category, kind="stable")
    starts = np.searchsorted(category[by_category], np.arange(n_categories))
    counts = np.bincount(category, minlength=n_categories)
    picks = rng.integers(0, np.maximum(counts[preference], 1)[:, None], (n_users, history_length))
    history_items = by_category[np.minimum(starts[preference][:, None] + picks, n_items - 1)]
    history = _lists(history_items.ravel(), np.full(n_users, history_length), item_names)
    u_cnt = rng.poisson(5, n_users) + history_length
    i_pop = np.round(np.exp(quality + 2.0)).astype(np.int64)
    i_age = rng.integers(0, 400, n_items)

    eu = rng.integers(0, n_users, n_examples)
    ei = rng.integers(0, n_items, n_examples)
    day = (np.datetime64(RUN_DATE) - rng.integers(1, 11, n_examples)).astype("datetime64[D]")
    logit = 2.5 * (category[ei] == preference[eu]) + quality[ei] - 1.5
    click = rng.random(n_examples) < 1.0 / (1.0 + np.exp(-logit))
    purchase = click & (rng.random(n_examples) < 1.0 / (1.0 + np.exp(-(quality[ei] - 0.5))))
    tables = {
        schema.EXAMPLES: pa.table(
            {
                schema.USER_ID: user_names.take(pa.array(eu)),
                schema.ITEM_ID: item_names.take(pa.array(ei)),
                schema.DAY: pa.array(day, pa.date32()),
                schema.label_column("click"): click.astype(np.float64),
                schema.label_column("purchase"): purchase.astype(np.float64),
                "u_cnt_7d": u_cnt[eu],
                schema.HISTORY: history.take(pa.array(eu)),
                "i_pop_7d": i_pop[ei],
                schema.ITEM_AGE: i_age[ei],
                schema.CATEGORIES: item_categories.take(pa.array(ei)),
            }
        ),
        schema.USERS: pa.table({schema.USER_ID: user_names, "u_cnt_7d": u_cnt, schema.HISTORY: history}),
        schema.ITEMS: pa.table(
            {
                schema.ITEM_ID: item_names,
                schema.TITLE: pa.array([f"Item {k}" for k in range(n_items)]),
                "i_pop_7d": i_pop,
                schema.ITEM_AGE: i_age,
                schema.CATEGORIES: item_categories,
            }
        ),
    }
    for name, table in tables.items():
        (root / name).mkdir(parents=True)
        pq.write_table(table, root / name / "part-00000.parquet")
    return root


def make_config(workdir: Path, device: str, epochs: int, batch_size: int, **model: Any) -> Config:
    return Config.model_validate(
        {
            "data": {
                "landing": str(workdir / "landing"),
                "workdir": str(workdir),
                "warehouse": str(workdir / "w.db"),
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
            ],
            "model": {
                "device": device,
                "epochs": epochs,
                "patience": epochs,  # every epoch runs: the throughput is measured over the same work
                "batch_size": batch_size,
                **model,
            },
        }
    )


def architectures() -> list[str]:
    """Every architecture the config offers."""
    return list(typing.get_args(ModelConfig.model_fields["architecture"].annotation))


@contextlib.contextmanager
def fp32_on_cuda(enabled: bool):
    """Training autocasts to bf16 on CUDA whatever the config (model.train.autocast); the fp32 baseline
    needs it off, which no config field offers, so the bench swaps the context for a no-op."""
    if not enabled:
        yield
        return
    with mock.patch("model.train.autocast", lambda device, cpu_bf16: contextlib.nullcontext()):
        yield


def train_once(features: Path, cfg: Config, out: Path, fp32: bool) -> dict[str, Any]:
    """One training run: steady-state throughput from the epoch timestamps, final validation loss."""
    stamps: list[float] = []
    start = time.perf_counter()
    with fp32_on_cuda(fp32):
        result = train_model(
            features,
            cfg,
            RUN_DATE,
            out,
            show_progress=False,
            resume=False,
            on_epoch=lambda _: stamps.append(time.perf_counter()),
        )
    steady = np.diff(stamps) if len(stamps) > 1 else np.array([stamps[0] - start])
    return {
        "train_examples_per_s": result.n_train / float(steady.mean()),
        "epoch_s": float(steady.mean()),
        "first_epoch_end_s": stamps[0] - start,  # data loading, warm-up and one epoch
        "val_loss": result.metrics["val_loss"],
        "click_auc": result.metrics["tasks"]["click"]["auc"],
        "n_train": result.n_train,
        "wall_s": time.perf_counter() - start,
        "model_dir": str(result.model_dir),
    }


def ddp_run(features: Path, cfg: Config, out: Path, nproc: int) -> dict[str, Any]:
    """torchrun with `nproc` ranks on this machine (model.train_ddp); the ranks' weight checksums."""
    config_file = out / "ddp-config.json"
    out.mkdir(parents=True, exist_ok=True)
    config_file.write_text(cfg.model_dump_json())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "model.train_ddp",
        "--features",
        str(features),
        "--config",
        str(config_file),
        "--run-date",
        RUN_DATE.isoformat(),
        "--out",
        str(out / "ddp"),
        "--no-resume",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"ok": False, "wall_s": wall, "error": done.stderr[-4000:]}
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    meta = load_weights(Path(printed["model_dir"]))[1]
    digests = meta["distributed"]["rank_state_sha256"]
    return {
        "ok": len(digests) == nproc and len(set(digests)) == 1,
        "backend": printed["backend"],
        "ranks": len(digests),
        "ranks_agree": len(set(digests)) == 1,
        "val_loss": meta["metrics"]["val_loss"],
        "click_auc": meta["metrics"]["tasks"]["click"]["auc"],
        "wall_s": wall,
    }


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0], "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["cpu_threads"] = torch.get_num_threads()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small tables: a check that the code runs")
    parser.add_argument("--nproc", type=int, default=2, help="DDP ranks (0: skip the DDP run)")
    parser.add_argument("--json", type=Path, help="default: $OUT/gpu_check.json when OUT is set")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda but torch sees no CUDA device; use --device cpu --tiny to try the code here"
        )
    n_users, n_items, n_categories, n_examples, epochs, batch_size = SIZES["tiny" if args.tiny else "medium"]
    report: dict[str, Any] = {"environment": environment(args.device), "runs": [], "ddp": None}
    print(json.dumps(report["environment"]))

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        features = write_features(work / "features", n_users, n_items, n_categories, n_examples)
        report["features"] = {
            "examples": n_examples,
            "users": n_users,
            "items": n_items,
            "write_s": time.perf_counter() - start,
        }
        for arch in architectures():
            for precision in ("bf16", "fp32"):
                cfg = make_config(
                    work, args.device, epochs, batch_size, architecture=arch, cpu_bf16=precision == "bf16"
                )
                run = train_once(
                    features,
                    cfg,
                    work / f"models-{arch}-{precision}",
                    fp32=args.device == "cuda" and precision == "fp32",
                )
                report["runs"].append({"architecture": arch, "precision": precision, **run})
                print(
                    f"{arch:>13} {precision}: {run['train_examples_per_s']:>12,.0f} ex/s  "
                    f"val loss {run['val_loss']:.4f}  ({run['wall_s']:.1f} s)",
                    flush=True,
                )
        if args.nproc > 0:
            cfg = make_config(work, args.device, epochs, batch_size, architecture="mmoe", cpu_bf16=True)
            report["ddp"] = ddp_run(features, cfg, work / "ddp", args.nproc)

    print(
        f"\n{'architecture':>13} {'precision':>9} {'train ex/s':>12} {'epoch s':>8} {'val loss':>9} "
        f"{'click AUC':>9} {'wall s':>7}"
    )
    for r in report["runs"]:
        print(
            f"{r['architecture']:>13} {r['precision']:>9} {r['train_examples_per_s']:>12,.0f} "
            f"{r['epoch_s']:>8.2f} {r['val_loss']:>9.4f} {r['click_auc']:>9.4f} {r['wall_s']:>7.1f}"
        )
    ddp = report["ddp"]
    if ddp is not None:
        if ddp["ok"]:
            print(
                f"DDP: {ddp['ranks']} ranks on {ddp['backend']}, weights agree: {ddp['ranks_agree']}, "
                f"val loss {ddp['val_loss']:.4f}, click AUC {ddp['click_auc']:.4f}, {ddp['wall_s']:.1f} s"
            )
        else:
            print(f"DDP FAILED after {ddp['wall_s']:.1f} s:\n{ddp.get('error', 'ranks disagree')}")
    target = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2))
        print(f"written {target}")
    return 0 if ddp is None or ddp["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
