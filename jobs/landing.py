"""Reading the landing zone: the raw events, items and users that a nightly run starts from."""

from __future__ import annotations

import logging
import operator
from datetime import date
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, NullType, StringType

from nightrec import schema as S

log = logging.getLogger(__name__)

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "value", "ts"]
TEXT_COLUMNS = (S.TITLE, S.TEXT)  # free text of an item: `text` (a description) is optional


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
    """The catalogue, its `title` (and `text`, when present) made valid UTF-8 strings: see `valid_text`."""
    where = _join(landing, "items")
    items = spark.read.parquet(where)
    missing = [c for c in ("item_id", "title", "categories", "created_at") if c not in items.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}")
    return valid_text(items, where)


def valid_text(items: DataFrame, where: str) -> DataFrame:
    """`items` with each text column (STRING or BINARY) as a valid UTF-8 string: bytes that are not UTF-8
    become U+FFFD, and how many items that touched is logged with a few of their ids.

    Replaced rather than rejected: a title describes an item, it identifies nothing, and one byte of latin-1
    in it is no reason to lose the item (its events would then be quarantined as off-catalogue) or the
    night. Done here, at the read, because nothing later can: a Parquet STRING is UTF-8 by the format, but
    neither writers nor Spark check it, and the first reader that does (pyarrow, in training and scoring)
    would fail with a message naming no item. A column of any other type fails here, naming it.
    """
    present = [c for c in TEXT_COLUMNS if c in items.columns]
    types = {c: items.schema[c].dataType for c in present}
    wrong = {
        c: t.simpleString() for c, t in types.items() if not isinstance(t, StringType | BinaryType | NullType)
    }
    if wrong:
        raise ValueError(f"{where}: text columns {wrong} must be string (UTF-8) or binary")
    raw = {c: F.col(c).cast("string") for c in present}  # binary to string keeps the bytes, checks nothing
    invalid = reduce(operator.or_, [~F.coalesce(F.is_valid_utf8(r), F.lit(True)) for r in raw.values()])
    found = items.where(invalid).select(S.ITEM_ID).limit(5).collect()
    if found:
        count = items.where(invalid).count()
        log.warning(
            "%s: %d items have a %s that is not valid UTF-8; the invalid bytes are replaced by U+FFFD "
            "(items %s%s)",
            where,
            count,
            " or ".join(present),
            ", ".join(repr(r[S.ITEM_ID]) for r in found),
            ", ..." if count > len(found) else "",
        )
    return items.withColumns({c: F.make_valid_utf8(r) for c, r in raw.items()})
