"""Reading the landing zone: the raw events, items and users that a nightly run starts from."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "value", "ts"]


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def read_events(
    spark: SparkSession, landing: str, window_start: date, run_date: date, with_partition: bool = False
) -> DataFrame:
    """Events of the partitions dt in [window_start, run_date), columns as in the input contract.

    Only the partition filter is applied here, so that partitions are pruned; whether every `ts` really lies
    inside the window is a validation check, not a silent filter: a mislabelled partition must be seen.
    `with_partition` keeps `dt` for that check (jobs/validation.py). Columns beyond the contract's are
    dropped: an export that adds one changes nothing downstream.
    """
    events = spark.read.parquet(_join(landing, "events"))
    missing = [c for c in EVENT_COLUMNS + ["dt"] if c not in events.columns]
    if missing:
        raise ValueError(
            f"{_join(landing, 'events')}: missing columns {missing} (expected {EVENT_COLUMNS}, dt=)"
        )
    dt = F.col("dt").cast("date")
    columns = EVENT_COLUMNS + (["dt"] if with_partition else [])
    return events.where((dt >= F.lit(window_start)) & (dt < F.lit(run_date))).select(*columns)


def read_items(spark: SparkSession, landing: str) -> DataFrame:
    items = spark.read.parquet(_join(landing, "items"))
    missing = [c for c in ("item_id", "title", "categories", "created_at") if c not in items.columns]
    if missing:
        raise ValueError(f"{_join(landing, 'items')}: missing columns {missing}")
    return items
