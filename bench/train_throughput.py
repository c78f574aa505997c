"""Training throughput (examples/s) of each architecture, nightrec against torch-rechub, side by side.

Both train on the same tensors (one run's features, loaded once by nightrec's loader), with the same inputs,
widths, batch size and thread count; nightrec through `model.train.train_model` (its epoch time, as recorded
in the model's history), torch-rechub through its `MTLTrainer` and DataLoader (bench/rechub_baseline.py).

    .venv/bin/python bench/train_throughput.py --features var/ml1m/work/runs/2000-12-01/features \\
        --config configs/movielens.toml --run-date 2000-12-01 --json var/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

import torch
from rechub_baseline import rechub_throughput  # bench/ is the script directory: on sys.path

from model.data import load_training_data
from model.train import train_model
from nightrec.config import Config, load_config


def nightrec_throughput(features: Path, cfg: Config, run_date: date, n_train: int) -> dict:
    """Examples/s of nightrec's own training epochs (validation and saving not counted)."""
    with tempfile.TemporaryDirectory() as root:
        result = train_model(features, cfg, run_date, Path(root), show_progress=False, resume=False)
    seconds = result.epoch_seconds
    return {
        "examples": n_train,
        "seconds": seconds,
        "examples_per_s": n_train / (sum(seconds) / len(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="a run's features directory")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-date", type=date.fromisoformat, required=True)
    parser.add_argument("--archs", default="shared_bottom,mmoe,ple")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per model (mean reported)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-rechub", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    model = base.model.model_copy(
        update={
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "patience": args.epochs,
            "device": "cpu",
            # Mean history pooling and no item text: the inputs torch-rechub's models take.
            "history_pooling": "mean",
            "text_encoder": "none",
            "refit": False,  # the training passes are what is timed, once
        }
    )
    # torch-rechub's multi-task models have binary towers only: a retrieval task has no counterpart there.
    tasks = [t for t in base.tasks if t.type != "retrieval"]
    base = base.model_copy(update={"model": model, "tasks": tasks})
    data = load_training_data(args.features, base, args.run_date)
    n_train = len(data.train)
    rows = []
    for arch in args.archs.split(","):
        row: dict = {"architecture": arch, "examples": n_train}
        for precision, bf16 in (("fp32", False), ("bf16", True)):
            mc = base.model.model_copy(update={"architecture": arch, "cpu_bf16": bf16})
            row[f"nightrec_{precision}"] = nightrec_throughput(
                args.features, base.model_copy(update={"model": mc}), args.run_date, n_train
            )["examples_per_s"]
        if not args.no_rechub:
            mc = base.model.model_copy(update={"architecture": arch})
            row["rechub"] = rechub_throughput(
                arch, data.train, data.vocab.sizes(), mc, len(base.tasks), args.epochs
            )["examples_per_s"]
            row["speedup_fp32"] = row["nightrec_fp32"] / row["rechub"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\ntraining throughput, examples/s ({n_train:,} examples, batch {args.batch_size}, {args.threads} threads)"
    )
    print("| architecture | nightrec fp32 | nightrec bf16 | torch-rechub | fp32 speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        rh = f"{r['rechub']:,.0f}" if "rechub" in r else "-"
        up = f"{r['speedup_fp32']:.1f}x" if "speedup_fp32" in r else "-"
        print(
            f"| {r['architecture']} | {r['nightrec_fp32']:,.0f} | {r['nightrec_bf16']:,.0f} | {rh} | {up} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"threads": args.threads, "batch_size": args.batch_size, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
