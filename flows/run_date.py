"""Which date a run publishes when nobody names one: the day before its scheduled start.

A run for date D reads only the events before D. A run scheduled for 2026-11-02 02:00 therefore publishes
run_date 2026-11-01 from the events up to 2026-10-31: its input days closed more than a day before the
run starts, so late-arriving events have landed and a rerun or a backfill of that date later reads exactly
the same data (docs/operations.md has the full reasoning).

The date is taken from the flow run's *scheduled* start, not the clock: a run the worker picks up hours
late, or a retry, still publishes the date of its schedule slot. A manual run without a date is
"scheduled" for the moment it was created, so it publishes yesterday. The calendar is the schedule's
timezone, because "the day before 02:00 on Nov 2" depends on where that 02:00 is.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


def day_before(scheduled_start: datetime, timezone: str = "UTC") -> date:
    """The calendar day before `scheduled_start`, read in `timezone` (an IANA name)."""
    if scheduled_start.tzinfo is None:
        raise ValueError("scheduled_start must be timezone-aware (Prefect gives UTC times)")
    return scheduled_start.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def resolve_run_date(run_date: date | None, timezone: str = "UTC") -> date:
    """`run_date` if given; else the day before the current flow run's scheduled start.

    Outside a flow run Prefect's runtime answers "now", which gives the same rule for a plain call.
    """
    if run_date is not None:
        return run_date
    from prefect.runtime import flow_run

    return day_before(flow_run.scheduled_start_time, timezone)
