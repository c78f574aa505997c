"""Scoring in one process against scoring spread over Spark executors, on the same model and features.

Times `model.score.score_users` (engine local) and `jobs.spark_scoring.score_on_spark` (engine spark, once per
shard count) on a published night's model, checks that every engine gives the same rows (same users, ranks
and items; scores within 1e-5), and prints and writes the table. The Spark session is started before the
clock runs (its start is reported apart), as in the nightly, where the feature steps have already started it.

    python bench/score_engines.py --model-dir var/nsbench/ml1m/work/models/<version> \\
        --features var/nsbench/ml1m/work/runs/2000-12-01/features --config configs/movielens.toml \\
        --shards 2,4 --json var/bench/score_engines.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from night_args import night_parser

from jobs.spark import get_spark
from jobs.spark_scoring import score_on_spark
from model.score import score_users
from nightrec import schema
from nightrec.config import load_config

KEYS = [schema.USER_ID, "rank", schema.ITEM_ID]


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Same users, ranks and items in the same order, and every score within 1e-5."""
    if len(a) != len(b) or not a[KEYS].reset_index(drop=True).equals(b[KEYS].reset_index(drop=True)):
        return False
    numeric = [c for c in a.columns if c == "score" or c.startswith("p_")]
    return bool(np.allclose(a[numeric], b[numeric], rtol=1e-5, atol=1e-6))


def main() -> None:
    parser = night_parser(__doc__, model_dir=True)
    parser.add_argument("--shards", default="2,4", help="Spark shard counts to time, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cfg = load_config(args.config)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    local = score_users(args.model_dir, args.features, cfg, show_progress=False)
    local_s = time.perf_counter() - start
    n_users = local[schema.USER_ID].nunique()
    rows.append({"engine": "local", "shards": 1, "seconds": local_s, "same_rows": True})

    start = time.perf_counter()
    spark = get_spark(cfg.spark)
    spark_start_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="nightrec-score-engines-") as tmp:
        for shards in [int(s) for s in args.shards.split(",")]:
            sharded = cfg.model_copy(
                update={
                    "scoring": cfg.scoring.model_copy(update={"engine": "spark", "spark_partitions": shards})
                }
            )
            start = time.perf_counter()
            recs = score_on_spark(
                spark, args.model_dir, args.features, sharded, Path(tmp) / f"scored-{shards}"
            )
            seconds = time.perf_counter() - start
            rows.append(
                {"engine": "spark", "shards": shards, "seconds": seconds, "same_rows": same_rows(recs, local)}
            )

    print(f"{n_users} users, {len(local)} rows; Spark session start {spark_start_s:.1f} s (not in the table)")
    print(f"{'engine':<8}{'shards':>8}{'seconds':>10}{'users/s':>10}  same rows as local")
    for row in rows:
        rate = n_users / row["seconds"]
        print(f"{row['engine']:<8}{row['shards']:>8}{row['seconds']:>10.1f}{rate:>10.1f}  {row['same_rows']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model_dir": str(args.model_dir),
                    "features": str(args.features),
                    "users": n_users,
                    "rows": len(local),
                    "spark_start_seconds": spark_start_s,
                    "spark_master": cfg.spark.master,
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "results": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
