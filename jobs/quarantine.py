"""Quarantine: a night survives a few bad input rows, and fails on many.

The events suite (jobs/validation.py) is the judge. When it passes, nothing happens here. When it fails
on row-level expectations only (a null id, an unknown event type, a value out of range or not finite, a
`ts` outside the window, an event in another date's partition, an item missing from the catalogue, one
event_id on differing rows), the rows that fail are set aside, with the checks each failed, as Parquet
under `<run_dir>/rejected/`, and the run goes on with the others, as long as they are at most
`reliability.max_rejected_share` of the window. Above that, or when a table-level check fails (a missing
column, a wrong type, no rows), the run fails with the suite's message: the failed checks and sample rows.

Identical copies of one event (a re-delivered file) are one event: kept once, counted, not rejected.

Which rows fail is read off the suite itself: each row-level expectation translates to the Spark condition
of its failing rows (`violation`), so the rules live in one place. The clean rows are then run through the
suite again, so that any disagreement between the two readings fails the run rather than passing bad rows.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.expectations.row_conditions import deserialize_row_condition
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.landing import EVENT_COLUMNS
from jobs.reliability import mark_complete, private_dir
from jobs.validation import (
    ValidationFailed,
    ValidationReport,
    check_volume,
    checked_events,
    events_suite_for,
    run_events_suite,
)
from nightrec.config import Config

REASON = "reason"
REJECTED_DIR = "rejected"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Screening:
    """What screening the window's events found: rows read, rows set aside, identical copies dropped."""

    events: int
    rejected: int = 0
    duplicates: int = 0
    volume_warning: str | None = None

    @property
    def needs_cleaning(self) -> bool:
        """Whether the feature step must drop rows (`clean_events`) rather than take the events as read."""
        return bool(self.rejected or self.duplicates)


def _row_condition(kwargs: dict[str, Any]) -> Column:
    condition = kwargs.get("row_condition")
    if not condition:
        return F.lit(True)
    parsed = deserialize_row_condition(condition)
    if getattr(parsed, "operator", None) != "==":
        raise NotImplementedError(f"row condition {parsed!r}: only `==` conditions are translated")
    return F.col(parsed.column.name) == F.lit(parsed.parameter)


def violation(expectation: gx.expectations.Expectation) -> Column | None:
    """The Spark condition true on exactly the rows that fail `expectation`; None if it is not row-level."""
    kwargs = expectation.configuration.kwargs
    kind = expectation.expectation_type
    if kind == "expect_column_values_to_not_be_null":
        return F.col(kwargs["column"]).isNull()
    if kind == "expect_column_pair_values_to_be_equal":
        a, b = F.col(kwargs["column_A"]), F.col(kwargs["column_B"])
        return a.isNotNull() & b.isNotNull() & (a != b)
    column = F.col(kwargs.get("column", ""))
    present = column.isNotNull() & _row_condition(kwargs)  # GX skips nulls in these, as here
    if kind == "expect_column_value_lengths_to_be_between":
        return present & ~F.length(column).between(
            kwargs.get("min_value") or 0, kwargs.get("max_value") or 2**31
        )
    if kind == "expect_column_values_to_be_in_set":
        return present & ~column.isin(list(kwargs["value_set"]))
    if kind == "expect_column_values_to_be_unique":
        return present & (F.count(F.lit(1)).over(Window.partitionBy(column)) > 1)
    if kind == "expect_column_values_to_be_between":
        inside = F.lit(True)
        if kwargs.get("min_value") is not None:
            low = F.lit(kwargs["min_value"])
            inside &= column > low if kwargs.get("strict_min") else column >= low
        if kwargs.get("max_value") is not None:
            high = F.lit(kwargs["max_value"])
            inside &= column < high if kwargs.get("strict_max") else column <= high
        return present & ~inside
    return None


def _label(expectation: gx.expectations.Expectation) -> str:
    kwargs = expectation.configuration.kwargs
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    where = (
        f" where {deserialize_row_condition(kwargs['row_condition'])!r}"
        if kwargs.get("row_condition")
        else ""
    )
    return f"{expectation.expectation_type}({', '.join(columns)}{where})"


def _with_reasons(checked: DataFrame, expectations: list[gx.expectations.Expectation]) -> DataFrame:
    """`checked` with `reason`: the failed checks of each row joined by '; ', '' on a clean row."""
    reasons = [
        F.when(condition, F.lit(_label(e))) for e in expectations if (condition := violation(e)) is not None
    ]
    return checked.withColumn(REASON, F.concat_ws("; ", *reasons) if reasons else F.lit(""))


def _split(checked: DataFrame, cfg: Config, window_start: date, run_date: date) -> DataFrame:
    """The events without identical copies, each with its `reason` ('' when it passes every row check)."""
    suite = events_suite_for(checked, cfg, window_start, run_date)
    return _with_reasons(checked.dropDuplicates(EVENT_COLUMNS), list(suite.expectations))


def clean_events(
    events: DataFrame, items: DataFrame | None, cfg: Config, window_start: date, run_date: date
) -> DataFrame:
    """The events a screening let through: identical copies once, no row that failed a row-level check.

    `events` and `items` as `screen_events` got them (the `dt` column included): the result is the same.
    """
    split = _split(checked_events(events, items), cfg, window_start, run_date)
    return split.where(F.col(REASON) == "").select(*EVENT_COLUMNS)


def screen_events(
    events: DataFrame,
    items: DataFrame | None,
    cfg: Config,
    window_start: date,
    run_date: date,
    run_dir: Path,
) -> Screening:
    """Check the window's events; quarantine a small share of bad rows or raise ValidationFailed.

    `events` as `landing.read_events(..., with_partition=True)` reads them. Data Docs go to
    `<run_dir>/data_docs`, rejected rows to `<run_dir>/rejected/` (owner-only: they hold user ids).
    """
    docs_dir, rejected_dir = Path(run_dir) / "data_docs", Path(run_dir) / REJECTED_DIR
    shutil.rmtree(rejected_dir, ignore_errors=True)  # a rerun's rejects replace the last run's, or none
    checked = checked_events(events, items).cache()
    try:
        per_day = checked.groupBy(F.to_date("ts")).count().collect()  # a null ts counts under None
        total, daily = sum(n for _, n in per_day), {day: n for day, n in per_day if day is not None}
        volume_warning = _check_volume(daily, cfg, run_date, docs_dir)
        report = run_events_suite(checked, cfg, window_start, run_date, docs_dir)
        if report.success:
            return Screening(events=total, volume_warning=volume_warning)
        suite = events_suite_for(checked, cfg, window_start, run_date)
        row_level = {_label(e) for e in suite.expectations if violation(e) is not None}
        if any(_outcome_label(f) not in row_level for f in report.failures):
            raise ValidationFailed(report)  # a table-level defect: no row to set aside fixes it
        split = _split(checked, cfg, window_start, run_date).cache()
        try:
            kept = split.count()
            rejected = split.where(F.col(REASON) != "").select(*EVENT_COLUMNS, REASON)
            n_rejected = rejected.count()
            limit = cfg.reliability.max_rejected_share
            if n_rejected > limit * total:
                report.note = (
                    f"{n_rejected} of {total} events ({n_rejected / total:.3%}) fail row-level checks, above "
                    f"reliability.max_rejected_share = {limit:.3%}: the run stops instead of quarantining them"
                )
                raise ValidationFailed(report)
            if n_rejected:
                rejected.write.mode("overwrite").parquet(str(rejected_dir))
                private_dir(rejected_dir)  # Spark's overwrite recreates the directory: restrict it after
                mark_complete(rejected_dir, {"rows": n_rejected, "events": total})
            clean = split.where(F.col(REASON) == "").drop(REASON)
            recheck = run_events_suite(clean, cfg, window_start, run_date, docs_dir)
            if not recheck.success:
                raise ValidationFailed(recheck)
        finally:
            split.unpersist()
        logger.warning(
            "quarantined %d of %d events to %s; dropped %d identical copies",
            n_rejected,
            total,
            rejected_dir,
            total - kept,
        )
        return Screening(
            events=total, rejected=n_rejected, duplicates=total - kept, volume_warning=volume_warning
        )
    finally:
        checked.unpersist()


def _outcome_label(outcome: Any) -> str:
    """The `_label` of the expectation behind a failed outcome (the same text, built from the report)."""
    where = f" where {outcome.condition}" if outcome.condition else ""
    return f"{outcome.expectation}({outcome.column or ''}{where})"


def _check_volume(daily: dict[date, int], cfg: Config, run_date: date, docs_dir: Path) -> str | None:
    """Apply the volume policy: raise on `fail`, return the warning on `warn`, None when within bounds."""
    report: ValidationReport | None = check_volume(daily, cfg, run_date, docs_dir)
    if report is None or report.success:
        return None
    if cfg.reliability.volume_policy == "fail":
        raise ValidationFailed(report)
    logger.warning("%s", report.message())
    return report.message()
