"""Data quality gates: Great Expectations suites run before anything is trained or published.

Three suites guard the pipeline: `events` checks the raw logs read from the landing zone (a bad export must
stop the run before it poisons features), `examples` checks the training examples the feature job built
(the model code trusts their keys, labels and features without looking again), and `recommendations`
checks the scored top-K rows before they replace a date in the warehouse (readers take whatever is there).

The first two run on the Spark DataFrame itself, the last on the scorer's pandas frame (small, already in
memory: no reason to start Spark for it). Each runs through a GX checkpoint whose UpdateDataDocsAction
writes Data Docs into the run directory, so every run leaves a browsable record of what was checked. A
failure raises `ValidationFailed` whose text names each failed expectation with its unexpected count and
up to five offending rows: GX filters the frame by its own unexpected condition (`include_unexpected_rows`),
so the rows shown are exactly the rows the expectation rejected.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column, deserialize_row_condition

from nightrec import schema
from nightrec.config import Config

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext
    from pyspark.sql import DataFrame

EVENTS = "events"
EXAMPLES = "examples"
RECOMMENDATIONS = "recommendations"
# The per-user row counts of the recommendations: a frame of its own, so a failure lists users, not rows.
RECOMMENDATION_COUNTS = "recommendation_counts"
SPARK_DATASOURCE = "nightrec_spark"
PANDAS_DATASOURCE = "nightrec_pandas"
DOCS_SITE = "run_docs"
SAMPLE_ROWS = 5

# Columns of the recommendations frame (model.score.score_users plus generated_at), besides p_<task>.
RANK = "rank"
SCORE = "score"
MODEL_VERSION = "model_version"
GENERATED_AT = "generated_at"
RECOMMENDATION_KEYS = (schema.USER_ID, RANK, schema.ITEM_ID)
_PAIR = [schema.USER_ID, schema.ITEM_ID]  # the columns of `seen/`
# Derived columns the checks look at: True where the user already interacted with the item (`seen/`) ...
ALREADY_SEEN = "already_seen"
# ... and, per user: rows, highest rank, and rows expected (top_k, or the unseen catalogue if smaller).
ROWS = "rows"
MAX_RANK = "max_rank"
EXPECTED_ROWS = "expected_rows"

# Spark type names as GX resolves them (attributes of pyspark.sql.types). Parquet timestamps written
# without a time zone are read as TIMESTAMP_NTZ, with one as TIMESTAMP: both are a valid `ts`.
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "event_id": ("StringType",),
    "user_id": ("StringType",),
    "item_id": ("StringType",),
    "event_type": ("StringType",),
    "value": ("DoubleType",),
    "ts": ("TimestampType", "TimestampNTZType"),
}
EXAMPLE_KEYS = (schema.USER_ID, schema.ITEM_ID, schema.DAY)
# Derived columns of the events check: the `dt` partition a row was read from against the UTC day of its
# `ts` (a partition holding another date's events), and whether its item is in the catalogue (`items/`).
PARTITION_DAY = "partition_day"
EVENT_DAY = "event_day"
IN_CATALOGUE = "in_catalogue"
DERIVED_EVENT_COLUMNS = (PARTITION_DAY, EVENT_DAY, IN_CATALOGUE)
VOLUME = "volume"
VOLUME_BASELINE_DAYS = 7
_NUMERIC_SPARK_TYPES = ("byte", "short", "int", "bigint", "float", "double", "decimal")

# Expectation kwargs that say *where* an expectation looks rather than what it expects.
_DOMAIN_KWARGS = {
    "column",
    "column_list",
    "column_A",
    "column_B",
    "row_condition",
    "condition_parser",
    "ignore_row_if",
    "batch_id",
}


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, reduced to what a person needs to act on it."""

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)
    condition: str | None = None
    observed: Any = None
    expected: str = ""
    notes: str | None = None
    error: str | None = None
    unit: str = "rows"  # what one row of the validated frame is: the per-user counts frame has "users"

    def describe(self) -> str:
        """One line (plus sample rows) saying what failed, on how many rows, and which rows."""
        target = self.column or ""
        if self.condition:
            target += f" where {self.condition}"
        head = f"- {self.expectation}({target})"
        if self.notes:
            head += f" [{self.notes}]"
        if self.error:
            return f"{head}: could not be evaluated: {self.error}"
        if self.unexpected_count is None:
            parts = [f"observed {self.observed!r}"] if self.observed is not None else []
            parts += [f"expected {self.expected}"] if self.expected else []
            return f"{head}: {', '.join(parts) or 'failed'}"
        line = f"{head}: {self.unexpected_count} of {self.element_count} {self.unit} unexpected"
        if self.expected:
            line += f" (expected {self.expected})"
        if not self.sample:
            return line
        rows = "\n".join("    " + " ".join(f"{k}={v}" for k, v in row.items()) for row in self.sample)
        return f"{line}; sample rows:\n{rows}"


@dataclass
class ValidationReport:
    suite: str
    success: bool
    results: list[ExpectationOutcome]
    docs_index: Path | None
    note: str | None = None  # said before the failures: why they fail the run (say, a threshold)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def message(self) -> str:
        docs = f" (Data Docs: {self.docs_index})" if self.docs_index else ""
        if self.success:
            return f"{self.suite} suite passed {len(self.results)} expectations{docs}"
        head = f"{self.suite} suite failed {len(self.failures)} of {len(self.results)} expectations{docs}:"
        return "\n".join([head, *([self.note] if self.note else []), *(f.describe() for f in self.failures)])


class ValidationFailed(Exception):
    """Raised when a suite fails; str(exc) is the human message; .report holds the details."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.message())
        self.report = report


def events_suite(
    cfg: Config,
    window_start: date,
    run_date: date,
    partition_check: bool = False,
    catalogue_check: bool = False,
) -> gx.ExpectationSuite:
    """The raw events of [window_start, run_date): schema, keys, known types, time window, value ranges.

    With `partition_check` each row's `dt` partition must be the day of its `ts`, with `catalogue_check` its
    item must be in the catalogue: both on the derived columns `checked_events` adds.
    """
    if window_start >= run_date:
        raise ValueError(f"empty window: window_start {window_start} is not before run_date {run_date}")
    expectations: list[gxe.Expectation] = []
    for column, types in EVENT_TYPES.items():
        expectations.append(gxe.ExpectColumnToExist(column=column))
        if len(types) == 1:
            expectations.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_=types[0]))
        else:
            expectations.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=list(types)))
    for column in ("event_id", "user_id", "item_id", "event_type", "ts"):
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in ("event_id", "user_id", "item_id"):  # an empty id is as missing as a null one
        expectations.append(gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1))
    expectations += [
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(cfg.validation.event_types)),
        # Time-zone aware bounds: Spark compares them as instants, whatever the driver's local zone.
        gxe.ExpectColumnValuesToBeBetween(
            column="ts",
            min_value=datetime.combine(window_start, time(), tzinfo=UTC),
            max_value=datetime.combine(run_date, time(), tzinfo=UTC),
            strict_max=True,
        ),
    ]
    for event_type, (low, high) in sorted(cfg.validation.value_ranges.items()):
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="value",
                min_value=low,
                max_value=high,
                row_condition=Column("event_type") == event_type,
            )
        )
    # NaN and +-inf on every event type, ranged or not (a NaN passes no range, but not every type has one).
    expectations.append(_finite("value"))
    if partition_check:
        expectations.append(
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=PARTITION_DAY,
                column_B=EVENT_DAY,
                ignore_row_if="either_value_is_missing",  # a null ts is the not-null check's business
                notes="an event lies in the dt= partition of its own UTC day",
            )
        )
    if catalogue_check:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=IN_CATALOGUE,
                value_set=[True],
                notes="the event's item is in items/",
            )
        )
    expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    # Passing the list to the constructor keeps this pure: add_expectation() needs a live data context.
    return gx.ExpectationSuite(name=EVENTS, expectations=expectations)


def default_numeric_features(cfg: Config) -> list[str]:
    """The dense feature columns the feature-job contract (nightrec.schema) promises for this config."""
    windows = cfg.features.windows
    return [
        *(schema.user_count_column(w) for w in windows),
        *(schema.item_pop_column(w) for w in windows),
        schema.ITEM_AGE,
        *(
            (schema.USER_VALUE_MEAN, schema.USER_VALUE_COUNT, schema.ITEM_VALUE_MEAN, schema.ITEM_VALUE_COUNT)
            if cfg.features.value_stats
            else ()
        ),
        *((schema.USER_RESIDUAL_MEAN, schema.USER_RESIDUAL_COUNT) if cfg.features.value_residuals else ()),
    ]


def features_suite(cfg: Config, numeric_features: list[str] | None = None) -> gx.ExpectationSuite:
    """The training examples: unique non-null keys, well-formed labels, ESMM consistency, dense features.

    `numeric_features` defaults to the columns the config implies; `validate_examples` adds any other
    numeric `u_*`/`i_*` column the frame carries, so a feature added later is checked too.
    """
    expectations: list[gxe.Expectation] = []
    for column, spark_type in zip(EXAMPLE_KEYS, ("StringType", "StringType", "DateType"), strict=True):
        expectations += [
            gxe.ExpectColumnToExist(column=column),
            gxe.ExpectColumnValuesToBeOfType(column=column, type_=spark_type),
            gxe.ExpectColumnValuesToNotBeNull(column=column),
        ]
    expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(EXAMPLE_KEYS)))
    for task in cfg.tasks:
        label = schema.label_column(task.name)
        # A multiclass label is the list of categories the target distribution is built from.
        label_type = "ArrayType" if task.type == "multiclass" else "DoubleType"
        expectations += [
            gxe.ExpectColumnToExist(column=label),
            gxe.ExpectColumnValuesToBeOfType(column=label, type_=label_type),
        ]
        if not task.has_binary_label:
            continue  # a regression label is null where the example had no such event, any value otherwise
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=label),
            gxe.ExpectColumnValuesToBeInSet(column=label, value_set=[0, 1]),
        ]
        bounds = cfg.validation.label_rate_bounds.get(task.name)
        if bounds is not None:
            expectations.append(
                gxe.ExpectColumnMeanToBeBetween(column=label, min_value=bounds[0], max_value=bounds[1])
            )
        if task.parent is not None:
            parent = schema.label_column(task.parent)
            # Labels are 0/1, so "child implies parent" is exactly parent >= child on every row.
            expectations.append(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=parent,
                    column_B=label,
                    or_equal=True,
                    ignore_row_if="either_value_is_missing",  # nulls are the not-null checks' business
                    notes=f"ESMM: {label} = 1 requires {parent} = 1",
                )
            )
    for column in numeric_features if numeric_features is not None else default_numeric_features(cfg):
        expectations += [
            gxe.ExpectColumnToExist(column=column),
            gxe.ExpectColumnValuesToNotBeNull(column=column),
        ]
    expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=cfg.validation.min_examples))
    return gx.ExpectationSuite(name=EXAMPLES, expectations=expectations)


def recommendations_suite(cfg: Config) -> gx.ExpectationSuite:
    """The scored rows: keys, ranks within top_k, score and probability ranges, nothing already seen.

    Runs on the scorer's frame plus the `already_seen` flag (see `validate_recommendations`). With the
    default blend (the product of the binary task probabilities) the score is a probability too; a custom
    blend can be any real number, so it only has to be finite.
    """
    k = cfg.scoring.top_k
    probabilities = [(schema.probability_column(t.name), t.type) for t in cfg.tasks]
    expectations: list[gxe.Expectation] = []
    for column in (*RECOMMENDATION_KEYS, SCORE, *(c for c, _ in probabilities), MODEL_VERSION, GENERATED_AT):
        expectations += [
            gxe.ExpectColumnToExist(column=column),
            gxe.ExpectColumnValuesToNotBeNull(column=column),  # NaN counts as null on pandas
        ]
    expectations += [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[schema.USER_ID, schema.ITEM_ID]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[schema.USER_ID, RANK]),
        gxe.ExpectColumnValuesToBeBetween(column=RANK, min_value=1, max_value=k),
        _probability(SCORE) if cfg.scoring.blend is None else _finite(SCORE),
        *(_probability(column) if kind == "binary" else _finite(column) for column, kind in probabilities),
        gxe.ExpectColumnValuesToBeInSet(
            column=ALREADY_SEEN,
            value_set=[False],
            notes="an item the user already interacted with (seen/) is never recommended",
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    return gx.ExpectationSuite(name=RECOMMENDATIONS, expectations=expectations)


def recommendation_counts_suite(cfg: Config) -> gx.ExpectationSuite:
    """Per user: exactly the expected number of rows, ranked 1..n without gaps.

    Runs on `recommendation_counts`: uniqueness and the 1..top_k range are checked on the rows, so
    "max rank = rows" there means the ranks are exactly 1..rows.
    """
    return gx.ExpectationSuite(
        name=RECOMMENDATION_COUNTS,
        expectations=[
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=ROWS,
                column_B=EXPECTED_ROWS,
                notes=f"top_k={cfg.scoring.top_k} rows per user, fewer only where fewer unseen items are left",
            ),
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=MAX_RANK, column_B=ROWS, notes="ranks run 1..rows without gaps"
            ),
        ],
    )


def _probability(column: str) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0.0, max_value=1.0)


def _finite(column: str) -> gxe.Expectation:
    # Strict infinite bounds reject exactly +-inf; NaN is null to GX and left to the not-null check.
    return gxe.ExpectColumnValuesToBeBetween(
        column=column, min_value=-math.inf, max_value=math.inf, strict_min=True, strict_max=True
    )


def validate_recommendations(
    recs: pd.DataFrame, seen: pa.Table | pd.DataFrame, catalogue_size: int, cfg: Config, docs_dir: Path
) -> ValidationReport:
    """Check the scored rows before they are published; return the report or raise ValidationFailed.

    `recs` is `model.score.score_users`' frame plus `generated_at`; `seen` the (user_id, item_id) pairs of
    the features' `seen/` dataset; `catalogue_size` the number of items scored (rows of `items/`). Two
    validations (the rows, the per-user counts) land in the run's Data Docs and make one report.
    """
    missing = [c for c in RECOMMENDATION_KEYS if c not in recs.columns]
    if missing:  # the derived columns need them: this is a caller's bug, not a data defect
        raise ValueError(f"recommendations lack the key columns {missing}")
    pairs = _distinct_pairs(seen)
    rows = _run(_flag_seen(recs, pairs), recommendations_suite(cfg), list(RECOMMENDATION_KEYS), docs_dir)
    counts = _run(
        _recommendation_counts(recs, pairs, catalogue_size, cfg.scoring.top_k),
        recommendation_counts_suite(cfg),
        [schema.USER_ID],
        docs_dir,
        unit="users",
    )
    report = ValidationReport(
        suite=RECOMMENDATIONS,
        success=rows.success and counts.success,
        results=rows.results + counts.results,
        docs_index=counts.docs_index,
    )
    if not report.success:
        raise ValidationFailed(report)
    return report


def _distinct_pairs(seen: pa.Table | pd.DataFrame) -> pa.Table:
    """Distinct (user_id, item_id) string pairs. Kept in Arrow: `seen/` is far larger than the top-K rows."""
    table = seen if isinstance(seen, pa.Table) else pa.Table.from_pandas(seen[_PAIR], preserve_index=False)
    keys = pa.table({c: pc.cast(table.column(c), pa.string()) for c in _PAIR})
    return keys.group_by(_PAIR).aggregate([])


def _flag_seen(recs: pd.DataFrame, pairs: pa.Table) -> pd.DataFrame:
    """A copy of `recs` with `already_seen`: whether its (user_id, item_id) pair is in `pairs`."""
    keys = pa.table(
        {
            **{c: pc.cast(pa.array(recs[c], from_pandas=True), pa.string()) for c in _PAIR},
            "_row": np.arange(len(recs)),
        }
    )
    hits = pairs.append_column(ALREADY_SEEN, pa.array(np.ones(pairs.num_rows, dtype=bool)))
    joined = keys.join(hits, keys=_PAIR, join_type="left outer")  # pairs are distinct: one row per rec
    flag = np.zeros(len(recs), dtype=bool)
    flag[joined.column("_row").to_numpy()] = pc.fill_null(joined.column(ALREADY_SEEN), False).to_numpy()
    return recs.assign(**{ALREADY_SEEN: flag})


def _recommendation_counts(
    recs: pd.DataFrame, pairs: pa.Table, catalogue_size: int, top_k: int
) -> pd.DataFrame:
    """One row per user of `recs`: user_id, rows, max_rank, expected_rows.

    expected_rows = min(top_k, catalogue_size - the user's seen items): the scorer ranks every catalogue
    item the user has not seen and keeps the best top_k. This assumes every seen item is in the catalogue,
    as when every event's item is in `items/`; a seen item outside it would lower the expected count of a
    user who has seen almost all of it, and fail the check.
    """
    per_user = recs.groupby(schema.USER_ID, sort=True).agg(**{ROWS: (RANK, "size"), MAX_RANK: (RANK, "max")})
    seen_items = (
        pairs.group_by(schema.USER_ID)
        .aggregate([(schema.ITEM_ID, "count")])
        .to_pandas()
        .set_index(schema.USER_ID)
    )
    seen_count = seen_items[f"{schema.ITEM_ID}_count"].reindex(per_user.index, fill_value=0)
    per_user[EXPECTED_ROWS] = (catalogue_size - seen_count).clip(lower=0, upper=top_k)
    return per_user.reset_index()


def checked_events(events: DataFrame, items: DataFrame | None = None) -> DataFrame:
    """`events` plus the derived columns the events suite checks where it can.

    `partition_day`/`event_day` when the frame still has its `dt` partition column, `in_catalogue` when
    the items are given. The pipeline itself goes on with `events`: these columns exist for the checks.
    """
    from pyspark.sql import functions as F

    if "dt" in events.columns:
        events = events.withColumns(
            {PARTITION_DAY: F.col("dt").cast("date"), EVENT_DAY: F.to_date("ts")}
        ).drop("dt")
    if items is not None:
        known = items.select(schema.ITEM_ID).distinct().withColumn(IN_CATALOGUE, F.lit(True))
        events = events.join(known, schema.ITEM_ID, "left").withColumn(
            IN_CATALOGUE, F.coalesce(F.col(IN_CATALOGUE), F.lit(False))
        )
    return events


def events_suite_for(
    checked: DataFrame, cfg: Config, window_start: date, run_date: date
) -> gx.ExpectationSuite:
    """The events suite with the derived-column checks that `checked` (from `checked_events`) allows."""
    return events_suite(
        cfg,
        window_start,
        run_date,
        partition_check=PARTITION_DAY in checked.columns,
        catalogue_check=IN_CATALOGUE in checked.columns,
    )


def run_events_suite(
    checked: DataFrame, cfg: Config, window_start: date, run_date: date, docs_dir: Path
) -> ValidationReport:
    """The events suite on `checked` (from `checked_events`), reported but not raised: the caller decides."""
    return _run(checked, events_suite_for(checked, cfg, window_start, run_date), list(EVENT_TYPES), docs_dir)


def validate_events(
    events: DataFrame,
    cfg: Config,
    window_start: date,
    run_date: date,
    docs_dir: Path,
    items: DataFrame | None = None,
) -> ValidationReport:
    """Run the events suite; return the report, or raise ValidationFailed once the Data Docs are written.

    A `dt` column (the partition, see landing.read_events) adds the partition check, `items` the catalogue
    check. jobs/quarantine.py runs the same suite and sets a small share of failing rows aside instead.
    """
    report = run_events_suite(checked_events(events, items), cfg, window_start, run_date, docs_dir)
    if not report.success:
        raise ValidationFailed(report)
    return report


def volume_suite(cfg: Config, baseline: float) -> gx.ExpectationSuite:
    """The last day's event count within `volume_tolerance` of `baseline` (the median of the days before)."""
    tolerance = cfg.reliability.volume_tolerance
    if tolerance is None:
        raise ValueError("volume_suite needs reliability.volume_tolerance")
    return gx.ExpectationSuite(
        name=VOLUME,
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="events",
                min_value=baseline * max(0.0, 1.0 - tolerance),
                max_value=baseline * (1.0 + tolerance),
                notes=f"the last day against the median {baseline:g} of the {VOLUME_BASELINE_DAYS} days "
                f"before it, tolerance {tolerance:g} ({cfg.reliability.volume_policy} when beyond)",
            )
        ],
    )


def check_volume(
    daily: dict[date, int], cfg: Config, run_date: date, docs_dir: Path
) -> ValidationReport | None:
    """Check the last day's count (run_date - 1) against the days before; None when there is nothing to check.

    `daily` maps a day to its event count; a day missing from it had none, so an empty last day fails
    (a drop of 100%). Days before it without events are left out of the baseline: a quiet first week of a
    new landing zone is not a baseline.
    """
    if cfg.reliability.volume_tolerance is None:
        return None
    last = date.fromordinal(run_date.toordinal() - 1)
    before = [
        daily[d]
        for offset in range(1, VOLUME_BASELINE_DAYS + 1)
        if daily.get(d := date.fromordinal(last.toordinal() - offset), 0) > 0
    ]
    if not before:
        return None
    frame = pd.DataFrame({"day": [last.isoformat()], "events": [daily.get(last, 0)]})
    return _run(frame, volume_suite(cfg, float(np.median(before))), ["day"], docs_dir)


def validate_examples(examples: DataFrame, cfg: Config, docs_dir: Path) -> ValidationReport:
    """Run the examples suite; return the report, or raise ValidationFailed once the Data Docs are written."""
    found = [
        name
        for name, spark_type in examples.dtypes
        if name.startswith((schema.USER_PREFIX, schema.ITEM_PREFIX))
        and spark_type.startswith(_NUMERIC_SPARK_TYPES)
    ]
    expected = default_numeric_features(cfg)
    suite = features_suite(cfg, expected + sorted(set(found) - set(expected)))
    return _validate(examples, suite, key_columns=list(EXAMPLE_KEYS), docs_dir=docs_dir)


# GX contexts are not thread-safe, and the flow may run tasks on threads.
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _context(docs_dir: Path) -> AbstractDataContext:
    """One in-memory context per docs directory (the last one used).

    The Data Docs index lists the validations the context's stores hold: reusing the context for all
    suites of a run puts them on one index page; a new run directory gets a fresh context.
    """
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.add_data_docs_site(
        DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    return ctx


def _batch_definition(ctx: AbstractDataContext, name: str, spark: bool) -> Any:
    """The whole-frame batch definition `name`, adding its datasource and asset on first use.

    Lazily, because adding the Spark datasource starts a SparkSession (it uses the active one, so the
    flow's own settings hold): a pandas-only validation must not pay for that.
    """
    source_name = SPARK_DATASOURCE if spark else PANDAS_DATASOURCE
    if source_name not in ctx.data_sources.all():
        # Spark: persist=True (the default) caches the frame while GX runs its jobs; _run releases it.
        (ctx.data_sources.add_spark if spark else ctx.data_sources.add_pandas)(source_name)
    source = ctx.data_sources.get(source_name)
    if name not in source.get_asset_names():
        source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
    return source.get_asset(name).get_batch_definition(name)


def _validate(
    df: DataFrame, suite: gx.ExpectationSuite, key_columns: list[str], docs_dir: Path
) -> ValidationReport:
    report = _run(df, suite, key_columns, docs_dir)
    if not report.success:
        raise ValidationFailed(report)
    return report


def _run(
    df: DataFrame | pd.DataFrame,
    suite: gx.ExpectationSuite,
    key_columns: list[str],
    docs_dir: Path,
    unit: str = "rows",
    rows: bool = False,
) -> ValidationReport:
    """Run one suite on a Spark or pandas frame through a checkpoint that updates the Data Docs.

    The failing rows (`rows`) are collected only when something fails, in a second run of the suite: asking
    for them costs a query per expectation even when there are none (on Spark, 107 jobs instead of 62 for
    the ML-1M examples suite, 15 s instead of 8). A clean night pays one run; a bad one gets its rows named.
    """
    docs_dir = Path(docs_dir).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    spark = not isinstance(df, pd.DataFrame)
    with _LOCK:
        ctx = _context(docs_dir)
        suite = ctx.suites.add_or_update(suite)
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(
                name=suite.name, data=_batch_definition(ctx, suite.name, spark), suite=suite
            )
        )
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": SAMPLE_ROWS,
                    "include_unexpected_rows": rows,
                },
            )
        )
        release = spark and not df.is_cached  # GX persists a Spark batch and never releases it
        try:
            result = checkpoint.run(batch_parameters={"dataframe": df})
        finally:
            if release:
                df.unpersist()
    (validation,) = result.run_results.values()
    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}  # GX reorders results
    index = docs_dir / "index.html"
    if not validation.success and not rows:
        return _run(df, suite, key_columns, docs_dir, unit, rows=True)
    return ValidationReport(
        suite=suite.name,
        success=bool(validation.success),
        results=[
            _outcome(r, key_columns, unit)
            for r in sorted(validation.results, key=lambda r: order[r.expectation_config.id])
        ],
        docs_index=index if index.exists() else None,
    )


def _outcome(result: Any, key_columns: list[str], unit: str) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = config.kwargs
    columns = _columns(kwargs)
    found = result.result or {}
    shown = key_columns + [c for c in columns if c not in key_columns]
    condition = kwargs.get("row_condition")
    rows = found.get("unexpected_rows")
    if isinstance(rows, pd.DataFrame):  # pandas batches give a frame, Spark ones a list of dicts
        rows = rows.to_dict("records")
    return ExpectationOutcome(
        expectation=config.type,
        column=", ".join(columns) or None,
        success=bool(result.success),
        unexpected_count=found.get("unexpected_count"),
        element_count=found.get("element_count"),
        sample=[{c: row.get(c) for c in shown if c in row} for row in rows or []],
        condition=repr(deserialize_row_condition(condition)) if condition else None,
        observed=found.get("observed_value"),
        expected=", ".join(
            f"{k}={v}" for k, v in kwargs.items() if k not in _DOMAIN_KWARGS and v is not None
        ),
        notes=config.notes,
        error=_error(result.exception_info),
        unit=unit,
    )


def _columns(kwargs: dict[str, Any]) -> list[str]:
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return []


def _error(info: dict[str, Any] | None) -> str | None:
    """The exception message, whether GX reports it flat or per failed metric."""
    if not info:
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for nested in info.values():
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return str(nested.get("exception_message"))
    return None
