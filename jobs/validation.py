"""Data quality gates: Great Expectations suites run on the Spark frames before anything is trained.

Two suites guard the pipeline: `events` checks the raw logs read from the landing zone (a bad export must
stop the run before it poisons features), `examples` checks the training examples the feature job built
(the model code trusts their keys, labels and features without looking again).

Both run on the Spark DataFrame itself through a GX checkpoint whose UpdateDataDocsAction writes Data Docs
into the run directory, so every run leaves a browsable record of what was checked. A failure raises
`ValidationFailed` whose text names each failed expectation with its unexpected count and up to five
offending rows: GX filters the frame by its own unexpected condition (`include_unexpected_rows`), so the
rows shown are exactly the rows the expectation rejected.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import great_expectations.expectations as gxe
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
DATASOURCE = "nightrec_spark"
DOCS_SITE = "run_docs"
SAMPLE_ROWS = 5

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
        line = f"{head}: {self.unexpected_count} of {self.element_count} rows unexpected"
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

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def message(self) -> str:
        docs = f" (Data Docs: {self.docs_index})" if self.docs_index else ""
        if self.success:
            return f"{self.suite} suite passed {len(self.results)} expectations{docs}"
        head = f"{self.suite} suite failed {len(self.failures)} of {len(self.results)} expectations{docs}:"
        return "\n".join([head, *(f.describe() for f in self.failures)])


class ValidationFailed(Exception):
    """Raised when a suite fails; str(exc) is the human message; .report holds the details."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.message())
        self.report = report


def events_suite(cfg: Config, window_start: date, run_date: date) -> gx.ExpectationSuite:
    """The raw events of [window_start, run_date): schema, keys, known types, time window, value ranges."""
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
        expectations += [
            gxe.ExpectColumnToExist(column=label),
            gxe.ExpectColumnValuesToBeOfType(column=label, type_="DoubleType"),
        ]
        if task.type != "binary":
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


def validate_events(
    events: DataFrame, cfg: Config, window_start: date, run_date: date, docs_dir: Path
) -> ValidationReport:
    """Run the events suite; return the report, or raise ValidationFailed once the Data Docs are written."""
    suite = events_suite(cfg, window_start, run_date)
    return _validate(events, suite, key_columns=list(EVENT_TYPES), docs_dir=docs_dir)


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

    The Data Docs index lists the validations the context's stores hold: reusing the context for both
    suites of a run puts both on one index page; a new run directory gets a fresh context.
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
    # Uses the active SparkSession at run time; persist=True caches the frame while GX runs its jobs.
    source = ctx.data_sources.add_spark(DATASOURCE)
    for name in (EVENTS, EXAMPLES):
        source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
    return ctx


def _validate(
    df: DataFrame, suite: gx.ExpectationSuite, key_columns: list[str], docs_dir: Path
) -> ValidationReport:
    docs_dir = Path(docs_dir).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        ctx = _context(docs_dir)
        suite = ctx.suites.add_or_update(suite)
        batch = ctx.data_sources.get(DATASOURCE).get_asset(suite.name).get_batch_definition(suite.name)
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
        )
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": SAMPLE_ROWS,
                    "include_unexpected_rows": True,
                },
            )
        )
        was_cached = df.is_cached
        try:
            result = checkpoint.run(batch_parameters={"dataframe": df})
        finally:
            if not was_cached:
                df.unpersist()  # GX persists the batch and never releases it
    (validation,) = result.run_results.values()
    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}  # GX reorders results
    index = docs_dir / "index.html"
    report = ValidationReport(
        suite=suite.name,
        success=bool(validation.success),
        results=[
            _outcome(r, key_columns)
            for r in sorted(validation.results, key=lambda r: order[r.expectation_config.id])
        ],
        docs_index=index if index.exists() else None,
    )
    if not report.success:
        raise ValidationFailed(report)
    return report


def _outcome(result: Any, key_columns: list[str]) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = config.kwargs
    columns = _columns(kwargs)
    found = result.result or {}
    shown = key_columns + [c for c in columns if c not in key_columns]
    condition = kwargs.get("row_condition")
    return ExpectationOutcome(
        expectation=config.type,
        column=", ".join(columns) or None,
        success=bool(result.success),
        unexpected_count=found.get("unexpected_count"),
        element_count=found.get("element_count"),
        sample=[{c: row.get(c) for c in shown if c in row} for row in found.get("unexpected_rows") or []],
        condition=repr(deserialize_row_condition(condition)) if condition else None,
        observed=found.get("observed_value"),
        expected=", ".join(
            f"{k}={v}" for k, v in kwargs.items() if k not in _DOMAIN_KWARGS and v is not None
        ),
        notes=config.notes,
        error=_error(result.exception_info),
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
