"""How much of full scoring's top K two-stage scoring keeps, and what it saves, for a model with a retrieval task.

Scores the users of a run's features (all, or the first N by id) with the same model: once against every
item (the full model on every pair) and in two stages (the retrieval score plus `candidate_popularity` x
log q picks N candidates per user, the full model ranks them), for each N and popularity weight asked.
Recall = |two-stage top K & full top K| / |full top K|, averaged over users.

    python bench/retrieval_recall.py --model-dir var/bt1m/work/models/<version> \\
        --features var/bt1m/work/runs/2001-03-01/features --config configs/movielens.toml \\
        --candidates 50,100,200,500 --popularity 0,1 --json var/bench/retrieval_recall.json
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from night_args import night_parser, write_result

from model.data import read_features
from model.device import resolve_device
from model.score import Scorer, local_item_text
from nightrec import schema
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
    parser.add_argument(
        "--popularity", default="1", help="scoring.candidate_popularity values to compare, e.g. 0,1"
    )
    parser.add_argument("--users", type=int, help="only the first N users by id (default: all)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cfg = with_scoring(load_config(args.config), top_k=args.top_k)
    items = read_features(args.features, schema.ITEMS)
    all_users = read_features(args.features, schema.USERS).sort_by(schema.USER_ID)
    users = all_users if args.users is None else all_users.slice(0, args.users)
    seen = read_features(args.features, schema.SEEN)

    def score(**scoring: object) -> tuple[pd.DataFrame, float]:
        """This night's users scored with the config's scoring section changed by `scoring`, and seconds."""
        run_cfg = with_scoring(cfg, **scoring)
        scorer = Scorer.build(
            args.model_dir,
            items,
            local_item_text(items, run_cfg),
            run_cfg.scoring,
            resolve_device(run_cfg.model.device),
        )
        start = time.perf_counter()
        recs = scorer.score(users, seen, all_users.num_rows).to_pandas()
        return recs, time.perf_counter() - start

    full, seconds = score(two_stage_min_pairs=2**62)
    rows = {"full": {"seconds": seconds, "recall": 1.0}}
    for popularity in (float(p) for p in args.popularity.split(",")):
        for n in (int(c) for c in args.candidates.split(",")):
            staged, seconds = score(
                two_stage_min_pairs=0, retrieval_candidates=n, candidate_popularity=popularity
            )
            rows[f"two-stage N={n}, popularity {popularity:g}"] = {
                "seconds": seconds,
                "recall": recall(full, staged),
            }
    print(f"users: {users.num_rows} of {all_users.num_rows}, items: {items.num_rows}, top {args.top_k}")
    print("| scoring | seconds | recall@K of the full top K |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['recall']:.3f} |")
    write_result(args.json, {"top_k": args.top_k, "rows": rows})


if __name__ == "__main__":
    main()
