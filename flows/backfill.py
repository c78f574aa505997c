"""The `backfill` flow: run the nightly flow for each date of a range, oldest first.

Each date is a `nightly` subflow run, so the Prefect UI shows the backfill and one run per date. Every
night is idempotent (it replaces its date's rows), which makes a backfill safe to repeat: a date already
published is skipped unless `force`, and a rerun after a failure picks up where the last one stopped.

The backfill stops at the first failure rather than carrying on: later dates would be built on the same
broken input or code, and a gap in the middle of a range is harder to see than a range that ends early.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger

from flows.nightly import nightly
from flows.store import published_dates
from nightrec.config import load_config

PUBLISHED, SKIPPED, FAILED, NOT_RUN = "published", "skipped", "failed", "not run"


@dataclass
class DateOutcome:
    run_date: str
    status: str
    error: str | None = None
    model_version: str | None = None


@dataclass
class BackfillReport:
    start: str
    end: str
    dates: list[DateOutcome] = field(default_factory=list)

    def with_status(self, status: str) -> list[str]:
        return [d.run_date for d in self.dates if d.status == status]

    @property
    def failed(self) -> bool:
        return any(d.status == FAILED for d in self.dates)

    def summary(self) -> str:
        """Human-readable: one line per status that occurred, then the error of the failed date."""
        lines = [f"backfill {self.start} .. {self.end}:"]
        for status in (PUBLISHED, SKIPPED, FAILED, NOT_RUN):
            chosen = self.with_status(status)
            if chosen:
                lines.append(f"  {status:>9}: {len(chosen)} ({', '.join(chosen)})")
        lines += [f"  error on {d.run_date}: {d.error}" for d in self.dates if d.error]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackfillReport:
        return cls(data["start"], data["end"], [DateOutcome(**d) for d in data["dates"]])


class BackfillFailed(Exception):
    """A date failed; `report` says which dates were published, skipped, failed and not run."""

    def __init__(self, report: BackfillReport) -> None:
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        return self.report.summary()


def date_range(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"the range ends ({end}) before it starts ({start})")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


@flow(name="backfill", log_prints=True)
def backfill(
    config_path: str,
    start: date,
    end: date,
    force: bool = False,
    landing: str | None = None,
    workdir: str | None = None,
    warehouse: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Publish every date from `start` to `end` (inclusive) that is not published yet (all with `force`)."""
    logger = get_run_logger()
    dates = date_range(start, end)
    cfg = load_config(config_path, landing=landing, workdir=workdir, warehouse=warehouse)
    done = set() if force else published_dates(cfg)
    report = BackfillReport(start.isoformat(), end.isoformat())
    for i, run_date in enumerate(dates):
        if run_date in done:
            report.dates.append(DateOutcome(run_date.isoformat(), SKIPPED))
            logger.info("%s is already published: skipped", run_date)
            continue
        try:
            result = nightly(
                config_path=config_path,
                run_date=run_date,
                landing=landing,
                workdir=workdir,
                warehouse=warehouse,
                show_progress=show_progress,
            )
        except Exception as exc:
            report.dates.append(DateOutcome(run_date.isoformat(), FAILED, f"{type(exc).__name__}: {exc}"))
            report.dates += [DateOutcome(d.isoformat(), NOT_RUN) for d in dates[i + 1 :]]
            logger.error(report.summary())
            raise BackfillFailed(report) from exc
        report.dates.append(
            DateOutcome(run_date.isoformat(), PUBLISHED, model_version=result["model_version"])
        )
    logger.info(report.summary())
    return report.to_dict()
