"""Judging a published night against what users did next (the backtest protocol of the evaluation notes).

For run date D: the test set is every event of the judged types in [D, D + horizon); a user is judged when
they had an event before D and have a test event; test items never seen before D are dropped (no model can
rank them). Relevance is binary. Metrics at K: Recall@K = hits / |test items|, NDCG@K with the ideal DCG over
min(K, |test items|), Hit@K = share of judged users with a hit; all averaged over judged users.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds


def read_events(landing: str, start: date, end: date, event_types: list[str]) -> pd.DataFrame:
    """(user_id, item_id, ts) of the given types with start <= ts < end, read straight from the landing zone."""
    events = ds.dataset(f"{landing.rstrip('/')}/events", format="parquet", partitioning="hive")
    day = pc.field("dt").cast("date32")
    wanted = (day >= pc.scalar(start)) & (day <= pc.scalar(end)) & pc.field("event_type").isin(event_types)
    table = events.to_table(columns=["user_id", "item_id", "ts"], filter=wanted).to_pandas()
    ts = pd.to_datetime(table["ts"], utc=True)
    keep = (ts >= pd.Timestamp(start, tz="UTC")) & (ts < pd.Timestamp(end, tz="UTC"))
    return table.loc[keep].reset_index(drop=True)


def judged_pairs(history: pd.DataFrame, future: pd.DataFrame) -> pd.DataFrame:
    """Distinct (user, item) test pairs of judged users, restricted to items seen in `history`."""
    known_items = set(history["item_id"])
    known_users = set(history["user_id"])
    pairs = future[["user_id", "item_id"]].drop_duplicates()
    return pairs[pairs["user_id"].isin(known_users) & pairs["item_id"].isin(known_items)].reset_index(
        drop=True
    )


def topk_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Recall@K, NDCG@K, Hit@K over the users of `truth`; a judged user without recommendations scores 0."""
    if truth.empty:
        return {"users": 0, f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan"), f"hit@{k}": float("nan")}
    top = recs[recs["rank"] <= k][["user_id", "item_id", "rank"]]
    hits = top.merge(truth, on=["user_id", "item_id"])
    n_test = truth.groupby("user_id").size()
    dcg = (1.0 / np.log2(hits["rank"].to_numpy() + 1.0)).astype(float)
    dcg_per_user = pd.Series(dcg, index=hits["user_id"].to_numpy()).groupby(level=0).sum()
    hit_count = hits.groupby("user_id").size()
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    ideal = n_test.clip(upper=k).map(lambda n: discounts[n - 1])
    dcg_all = dcg_per_user.reindex(n_test.index, fill_value=0.0)
    hit_all = hit_count.reindex(n_test.index, fill_value=0)
    return {
        "users": int(len(n_test)),
        f"recall@{k}": float((hit_all / n_test).mean()),
        f"ndcg@{k}": float((dcg_all / ideal).mean()),
        f"hit@{k}": float((hit_all > 0).mean()),
    }
