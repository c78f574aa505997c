"""How much of full scoring's top K two-stage scoring keeps, and what it saves, for a model with a retrieval task.

Scores every user of a run's features twice with the same model: once against every item (the full model on
every pair) and once in two stages (the retrieval score picks N candidates per user, the full model ranks
them), for each N asked. Recall = |two-stage top K & full top K| / |full top K|, averaged over users.

    python bench/retrieval_recall.py --model-dir var/bt1m/work/models/<version> \\
        --features var/bt1m/work/runs/2001-03-01/features --config configs/movielens.toml \\
        --candidates 50,100,200,500 --json var/bench/retrieval_recall.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
from night_args import night_parser

from model.score import score_users
from nightrec.config import Config, load_config


def with_scoring(cfg: Config, **values: object) -> Config:
    return cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update=values)})


def recall(full: pd.DataFrame, staged: pd.DataFrame) -> float:
    """Mean over users of the share of the user's full top-K items that two-stage scoring also returns."""
    truth = full.groupby("user_id")["item_id"].apply(set)
    got = staged.groupby("user_id")["item_id"].apply(set).reindex(truth.index, fill_value=set())
    return float(sum(len(t & g) / len(t) for t, g in zip(truth, got, strict=True)) / len(truth))


def main() -> None:
    parser = night_parser(__doc__, model_dir=True)
    parser.add_argument("--candidates", default="50,100,200,500")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cfg = with_scoring(load_config(args.config), top_k=args.top_k)
    start = time.perf_counter()
    full = score_users(args.model_dir, args.features, with_scoring(cfg, two_stage_min_pairs=2**62), False)
    rows = {"full": {"seconds": time.perf_counter() - start, "recall": 1.0}}
    for n in (int(c) for c in args.candidates.split(",")):
        staged_cfg = with_scoring(cfg, two_stage_min_pairs=0, retrieval_candidates=n)
        start = time.perf_counter()
        staged = score_users(args.model_dir, args.features, staged_cfg, False)
        rows[f"two-stage N={n}"] = {"seconds": time.perf_counter() - start, "recall": recall(full, staged)}
    print(f"users: {full['user_id'].nunique()}, top {args.top_k}")
    print("| scoring | seconds | recall@K of the full top K |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['recall']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"command": " ".join(["python", *sys.argv]), "top_k": args.top_k, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
