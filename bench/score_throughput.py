"""Scoring throughput (user-item pairs per second) against the machine's matmul rate as the ceiling.

For each architecture a model is trained briefly on a run's features (1 epoch: the weights do not change
the cost), then `model.score.score_users` scores every user against every item, as the nightly does. The
FLOPs a pair needs are counted by torch's FlopCounterMode on one scoring block (matrix products only:
element-wise work is not counted, so the ratio flatters nobody), and compared with the measured rate of a
large fp32 torch.mm on the same threads.

    python bench/score_throughput.py --features var/ml1m/work/runs/2000-12-01/features \\
        --config configs/movielens.toml --run-date 2000-12-01 --json var/bench/score_throughput.json
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from night_args import night_parser, write_result
from torch.utils.flop_counter import FlopCounterMode

from model.checkpoint import load_model
from model.data import FeatureLayout, item_tensors, item_text, read_features, text_cache_dir, user_tensors
from model.score import score_users
from model.train import train_model
from nightrec import schema
from nightrec.config import Config, load_config


def matmul_rate(threads: int, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of fp32 torch.mm on a large square product and on a scoring-shaped one."""
    torch.set_num_threads(threads)
    out = {}
    for name, (m, k, n) in {
        "square_4096": (4096, 4096, 4096),
        "tall_65536x256x512": (65536, 256, 512),
    }.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)  # warm-up
        best = min(_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(repeats))
        out[name] = 2.0 * m * k * n / best / 1e9
    return out


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def flops_per_pair(model_dir: Path, features: Path, cfg: Config) -> float:
    """Matrix-product FLOPs of scoring one block of users against the catalogue, per pair."""
    model, meta, vocab = load_model(model_dir)
    layout = FeatureLayout.from_dict(meta["layout"])
    users = read_features(features, schema.USERS).sort_by(schema.USER_ID)
    items = read_features(features, schema.ITEMS).sort_by(schema.ITEM_ID)
    text = item_text(items, layout.text_encoder, layout.text_dim, text_cache_dir(cfg))
    item_t = item_tensors(items, vocab, layout, text)
    block = user_tensors(users, vocab, layout).take(slice(0, cfg.scoring.user_batch_size))
    with torch.inference_mode():
        item_part = model.item_part(item_t)
        vectors = None if model.retrieval_task is None else model.item_vectors(item_part)
        counter = FlopCounterMode(display=False)
        with counter:
            user = model.user_part(block)
            match = None
            if vectors is not None:
                match = model.retrieval_scores(model.user_vectors(user), vectors).reshape(-1)
            model.head(model.grid_features(user, item_part), match)
    return counter.get_total_flops() / (len(block) * items.num_rows)


def bench_architecture(cfg: Config, features: Path, run_date: date, root: Path) -> dict[str, Any]:
    model_dir = train_model(features, cfg, run_date, root, show_progress=False).model_dir
    n_users = read_features(features, schema.USERS).num_rows
    n_items = read_features(features, schema.ITEMS).num_rows
    score_users(model_dir, features, cfg, show_progress=False)  # warm-up: caches, allocator
    seconds = _timed(lambda: score_users(model_dir, features, cfg, show_progress=False))
    pairs = n_users * n_items
    flops = flops_per_pair(model_dir, features, cfg)
    return {
        "users": n_users,
        "items": n_items,
        "seconds": seconds,
        "pairs_per_s": pairs / seconds,
        "flops_per_pair": flops,
        "gflops_per_s": flops * pairs / seconds / 1e9,
    }


def variant(cfg: Config, architecture: str) -> Config:
    raw = cfg.model_dump(mode="json")
    raw["model"].update({"architecture": architecture, "epochs": 1, "refit": False, "device": "cpu"})
    # One stage always: the FLOPs counted are those of every user x item pair (bench/retrieval_recall.py
    # measures two-stage scoring).
    raw["scoring"]["two_stage_min_pairs"] = 2**62
    return Config.model_validate(raw)


def main() -> None:
    parser = night_parser(__doc__, run_date=True)
    parser.add_argument("--architectures", default="shared_bottom,mmoe,ple")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    ceiling = matmul_rate(args.threads)
    best = max(ceiling.values())
    print(
        f"fp32 torch.mm, {args.threads} threads: "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in ceiling.items())
    )
    base = load_config(args.config)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.architectures.split(","):
            rows[arch] = bench_architecture(variant(base, arch), args.features, args.run_date, Path(tmp))
            rows[arch]["share_of_ceiling"] = rows[arch]["gflops_per_s"] / best
    print("\n| architecture | pairs | seconds | pairs/s | MFLOP/pair | GFLOP/s | share of ceiling |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arch, r in rows.items():
        print(
            f"| {arch} | {r['users'] * r['items']:,} | {r['seconds']:.1f} | {r['pairs_per_s']:,.0f} | "
            f"{r['flops_per_pair'] / 1e6:.3f} | {r['gflops_per_s']:.1f} | {r['share_of_ceiling']:.0%} |"
        )
    write_result(
        args.json,
        {
            "machine": {
                "cpus": os.cpu_count(),
                "threads": args.threads,
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "config": args.config,
            "history_pooling": base.model.history_pooling,
            "matmul_gflops": ceiling,
            "architectures": rows,
        },
    )


if __name__ == "__main__":
    main()
