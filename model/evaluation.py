"""Judging a published night against what users did next (the backtest protocol of the evaluation notes).

For run date D: the test set is every event of the judged types in [D, D + horizon); a user is judged when
they had an event before D and have a test event; test items never seen before D are dropped (no model can
rank them). Relevance is binary. Metrics at K: Recall@K = hits / |test items|, NDCG@K with the ideal DCG over
min(K, |test items|), Hit@K = share of judged users with a hit; all averaged over judged users.
Beside them: catalogue coverage and the share of recommended rows on new items (first seen within the days
before D), which say whether a ranking is more than the popular items; and, for a task whose label is a rule on
the event's value (MovieLens "like": rating >= 4), the AUC of its probability over the judged test events.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds


def read_events(
    landing: str, start: date, end: date, event_types: list[str], with_value: bool = False
) -> pd.DataFrame:
    """(user_id, item_id, ts[, event_type, value]) of the given types with start <= ts < end, from the landing."""
    events = ds.dataset(f"{landing.rstrip('/')}/events", format="parquet", partitioning="hive")
    day = pc.field("dt").cast("date32")
    wanted = (day >= pc.scalar(start)) & (day <= pc.scalar(end)) & pc.field("event_type").isin(event_types)
    columns = ["user_id", "item_id", "ts", *(["event_type", "value"] if with_value else [])]
    table = events.to_table(columns=columns, filter=wanted).to_pandas()
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


def catalogue_coverage(recs: pd.DataFrame, candidates: int, k: int = 10) -> float:
    """Share of the candidate items that appear in at least one user's top K."""
    return (
        float(recs.loc[recs["rank"] <= k, "item_id"].nunique() / candidates) if candidates else float("nan")
    )


def new_items(history: pd.DataFrame, run_date: date, days: int = 14) -> set[str]:
    """Items whose first event in `history` lies within the `days` before D: new to the catalogue."""
    first = pd.to_datetime(history["ts"], utc=True).groupby(history["item_id"]).min()
    return set(first.index[first >= pd.Timestamp(run_date - timedelta(days=days), tz="UTC")])


def new_item_share(recs: pd.DataFrame, new: set[str], k: int = 10) -> float:
    """Share of the top-K rows that recommend a new item."""
    top = recs.loc[recs["rank"] <= k, "item_id"]
    return float(top.isin(new).mean()) if len(top) else float("nan")


def judged_events(history: pd.DataFrame, future: pd.DataFrame) -> pd.DataFrame:
    """Every test event (not deduplicated: each rating counts) of judged users on items seen before D."""
    keep = future["user_id"].isin(set(history["user_id"])) & future["item_id"].isin(set(history["item_id"]))
    return future[keep].reset_index(drop=True)


def value_rule(values: pd.Series, min_value: float | None, max_value: float | None) -> np.ndarray:
    """The label a task's value rule gives each event (rating >= 4 for MovieLens "like")."""
    v = values.astype(float)
    label = np.ones(len(v), dtype=bool)
    if min_value is not None:
        label &= (v >= min_value).to_numpy()
    if max_value is not None:
        label &= (v <= max_value).to_numpy()
    return label
