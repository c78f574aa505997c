"""Backtest the peers (Pop, ItemKNN, EASE) on a MovieLens landing zone, against the reference figures.

The evaluation notes give the peers' NDCG@10 from an independent implementation; reproducing them checks our
evaluator (`model.evaluation`) and our peers (`model.peers`) before any model is compared with them.

    .venv/bin/nightrec import movielens --source /work/shared/data/movielens-100k --out var/ml100k/landing
    .venv/bin/python bench/peers_backtest.py --dataset ml100k --landing var/ml100k/landing --json var/ml100k/peers.json

The like task (rating >= 4) is judged too: the user-plus-item bias peer's AUC pooled over every judged test rating.

EASE is reported twice: with lambda chosen on the 14 days before each D (what a nightly run can do) and with
lambda chosen on each date's test window ("optimistic"), which is how the reference EASE figure was made.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, timedelta

import numpy as np
import pandas as pd

from model.evaluation import judged_events, judged_pairs, read_events, topk_metrics, value_rule
from model.metrics import roc_auc
from model.peers import EASE_LAMBDAS, bias_peer, choose_ease_lambda, ease_sweep, itemknn_peer, pop_peer

RUN_DATES = {
    "ml100k": [date(1997, 11, 15) + timedelta(days=14 * i) for i in range(11)],
    "ml1m": [
        date(2000, 11, 10),
        date(2000, 11, 20),
        date(2000, 12, 1),
        date(2000, 12, 10),
        date(2000, 12, 20),
        date(2001, 1, 1),
        date(2001, 2, 1),
        date(2001, 3, 1),
    ],
}
# NDCG@10 and judged (date, user) pairs from the evaluation notes.
REFERENCE = {
    "ml100k": {
        "pairs": 659,
        "pop": 0.1169,
        "itemknn": 0.1041,
        "ease_optimistic": 0.1272,
        "like_auc_bias": 0.7453,
    },
    "ml1m": {
        "pairs": 1511,
        "pop": 0.1317,
        "itemknn": 0.1356,
        "ease_optimistic": 0.1372,
        "like_auc_bias": 0.7897,
    },
}
PEERS = ["pop", "itemknn", "ease", "ease_optimistic"]
EPOCH = date(1970, 1, 1)  # MovieLens ratings are Unix timestamps: nothing lies before


def night(
    events: pd.DataFrame, run_date: date, k: int, horizon: int, pop_days: int, neighbours: int | None
) -> list[dict]:
    """One run date: every peer's metrics on the judged users, with the lambdas EASE used."""
    ts = pd.to_datetime(events["ts"], utc=True)
    start, end = pd.Timestamp(run_date, tz="UTC"), pd.Timestamp(run_date + timedelta(days=horizon), tz="UTC")
    history = events[ts < start]
    truth = judged_pairs(history, events[(ts >= start) & (ts < end)])
    users = sorted(truth["user_id"].unique())

    choice = choose_ease_lambda(history, run_date, EASE_LAMBDAS, k)
    sweep = {lam: topk_metrics(recs, truth, k) for lam, recs in ease_sweep(history, users, k).items()}
    best = max(EASE_LAMBDAS, key=lambda lam: sweep[lam][f"ndcg@{k}"])
    found = {
        "pop": (topk_metrics(pop_peer(history, users, run_date, k, pop_days), truth, k), None),
        "itemknn": (topk_metrics(itemknn_peer(history, users, k, neighbours), truth, k), None),
        "ease": (sweep[choice.lam], choice.lam),
        "ease_optimistic": (sweep[best], best),
    }
    return [
        {"date": run_date.isoformat(), "peer": peer, **metrics, "lambda": lam}
        for peer, (metrics, lam) in found.items()
    ]


def like_auc(events: pd.DataFrame, dates: list[date], horizon: int) -> float | None:
    """The bias peer's AUC of rating >= 4, pooled over every judged test rating of every date."""
    ts = pd.to_datetime(events["ts"], utc=True)
    labels, scores = [], []
    for d in dates:
        start, end = pd.Timestamp(d, tz="UTC"), pd.Timestamp(d + timedelta(days=horizon), tz="UTC")
        history = events[ts < start]
        test = judged_events(history, events[(ts >= start) & (ts < end)])
        labels.append(value_rule(test["value"], 4.0, None))
        scores.append(bias_peer(history, test))
    return roc_auc(np.concatenate(labels), np.concatenate(scores))


def pooled(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Mean over all judged (date, user) pairs: the per-date means weighted by their users."""
    cols = [f"recall@{k}", f"ndcg@{k}", f"hit@{k}"]
    weighted = rows[cols].fillna(0.0).mul(rows["users"], axis=0).groupby(rows["peer"]).sum()
    users = rows.groupby("peer")["users"].sum()
    out = weighted.div(users, axis=0)
    out.insert(0, "users", users)
    return out.loc[PEERS]


def render(rows: pd.DataFrame, means: pd.DataFrame, reference: dict | None) -> str:
    """Plain-text tables: every (date, peer), then the means with the reference NDCG and the gap to it."""
    per_date = rows.set_index(["date", "peer"])
    per_date["lambda"] = per_date["lambda"].map(lambda lam: "" if pd.isna(lam) else f"{lam:g}")
    lines = ["Per run date", per_date.to_string(float_format="%.4f"), ""]
    table = means.copy()
    if reference is not None:
        ndcg = [c for c in table.columns if c.startswith("ndcg@")][0]
        table["reference"] = [reference.get(p, float("nan")) for p in table.index]
        table["gap"] = table[ndcg] - table["reference"]
    lines += ["Mean over judged (date, user) pairs", table.to_string(float_format="%.4f", na_rep="")]
    if reference is not None:
        lines.append(f"judged pairs: {int(means['users'].iloc[0])} (reference {reference['pairs']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", required=True, help="landing zone made by `nightrec import movielens`")
    parser.add_argument(
        "--dataset", choices=sorted(RUN_DATES), required=True, help="picks run dates, reference"
    )
    parser.add_argument("--dates", nargs="+", type=date.fromisoformat, help="other run dates")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=14, help="test window in days")
    parser.add_argument("--pop-days", type=int, default=90)
    parser.add_argument("--knn-neighbours", type=int, help="prune ItemKNN to this many neighbours per item")
    parser.add_argument("--json", help="write per-date rows and means here")
    parser.epilog = "The reference figures are shown only with the notes' dates and default settings."
    args = parser.parse_args(argv)

    dates = args.dates or RUN_DATES[args.dataset]
    as_reference = (args.k, args.horizon, args.pop_days, args.knn_neighbours) == (10, 14, 90, None)
    reference = REFERENCE[args.dataset] if as_reference and not args.dates else None
    started = time.perf_counter()
    events = read_events(args.landing, EPOCH, max(dates) + timedelta(days=args.horizon), ["rating"], True)
    rows = pd.DataFrame(
        [
            row
            for d in dates
            for row in night(events, d, args.k, args.horizon, args.pop_days, args.knn_neighbours)
        ]
    )
    means = pooled(rows, args.k)
    auc = like_auc(events, dates, args.horizon)
    seconds = time.perf_counter() - started
    print(render(rows, means, reference))
    shown = f" (reference {reference['like_auc_bias']})" if reference else ""
    print(f"like (rating >= 4): bias peer AUC {auc:.4f}{shown}")
    print(f"{len(dates)} run dates in {seconds:.1f} s")
    if args.json:
        report = {
            "landing": args.landing,
            "dataset": args.dataset,
            "k": args.k,
            "horizon_days": args.horizon,
            "pop_days": args.pop_days,
            "knn_neighbours": args.knn_neighbours,
            "seconds": round(seconds, 1),
            "per_date": rows.astype(object).where(rows.notna(), None).to_dict(orient="records"),
            "mean": means.reset_index().to_dict(orient="records"),
            "like_auc_bias": auc,
            "reference": reference,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
