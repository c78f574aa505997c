"""The `nightly` Prefect flow: landing zone -> features -> validation -> training -> scoring -> publish.

The flow only orchestrates: each task calls one function of jobs/ or model/ and hands paths, not data, to
the next, so any step can be rerun or inspected from the run directory. A run of date D reads only events
before D, and what it publishes for D replaces D's rows in one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from nightrec.config import Config, load_config

T = TypeVar("T")


@dataclass
class RunPaths:
    """Where one run date's files live: rerunning a date reuses (and overwrites) its directory."""

    run_dir: Path
    features: Path
    data_docs: Path
    models: Path

    @classmethod
    def for_run(cls, cfg: Config, run_date: date) -> RunPaths:
        work = Path(cfg.data.workdir)
        run_dir = work / "runs" / run_date.isoformat()
        return cls(run_dir, run_dir / "features", run_dir / "data_docs", work / "models")


@dataclass
class RunOutcome:
    run_id: str
    run_date: date
    status: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    model_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    step_timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@task(name="validate-events", cache_policy=NO_CACHE)
def validate_events_step(cfg: Config, run_date: date, paths: RunPaths) -> int:
    """Read the window's raw events and check them before anything is computed from them."""
    from jobs.feature_job import Window, load_inputs
    from jobs.spark import get_spark
    from jobs.validation import validate_events

    window = Window.for_run(cfg, run_date)
    events, _ = load_inputs(get_spark(cfg.spark), cfg, window)
    validate_events(events, cfg, window.start, window.run_date, paths.data_docs)
    return events.count()


@task(name="build-features", cache_policy=NO_CACHE)
def build_features_step(cfg: Config, run_date: date, paths: RunPaths) -> dict[str, int]:
    from jobs.feature_job import Window, load_inputs, write_features
    from jobs.spark import get_spark

    events, items = load_inputs(get_spark(cfg.spark), cfg, Window.for_run(cfg, run_date))
    return write_features(events, items, cfg, run_date, paths.features)


@task(name="validate-features", cache_policy=NO_CACHE)
def validate_features_step(cfg: Config, paths: RunPaths) -> None:
    from jobs.spark import get_spark
    from jobs.validation import validate_examples
    from nightrec import schema as S

    examples = get_spark(cfg.spark).read.parquet(str(paths.features / S.EXAMPLES))
    validate_examples(examples, cfg, paths.data_docs)


@task(name="train", cache_policy=NO_CACHE)
def train_step(cfg: Config, run_date: date, paths: RunPaths, show_progress: bool):
    from model.train import train_model

    return train_model(paths.features, cfg, run_date, paths.models, show_progress=show_progress)


@task(name="score", cache_policy=NO_CACHE)
def score_step(cfg: Config, model_dir: Path, paths: RunPaths, show_progress: bool):
    from model.score import score_users

    recs = score_users(model_dir, paths.features, cfg, show_progress=show_progress)
    recs["generated_at"] = datetime.now(UTC)
    return recs


@task(name="publish", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def publish_step(cfg: Config, run_date: date, recs, outcome: RunOutcome) -> int:
    """Replace the run date's rows and mark the run published, in one warehouse transaction."""
    from jobs.warehouse import Warehouse

    with Warehouse(cfg.data.warehouse) as wh:
        wh.ensure_schema(cfg.task_names())
        return wh.publish(run_date, recs, _record(outcome, "published"))


def _record(outcome: RunOutcome, status: str):
    from jobs.warehouse import RunRecord

    return RunRecord(
        run_id=outcome.run_id,
        run_date=outcome.run_date,
        status=status,
        model_version=outcome.model_version,
        started_at=outcome.started_at,
        finished_at=None if status == "running" else datetime.now(UTC),
        metrics=outcome.metrics,
        row_counts=outcome.row_counts,
        step_timings=outcome.step_timings,
        error=outcome.error,
    )


def _save_run(cfg: Config, outcome: RunOutcome, status: str) -> None:
    from jobs.warehouse import Warehouse

    with Warehouse(cfg.data.warehouse) as wh:
        wh.ensure_schema(cfg.task_names())
        wh.record_run(_record(outcome, status))


def _timed(outcome: RunOutcome, step: str, call: Callable[[], T]) -> T:
    start = time.perf_counter()
    try:
        return call()
    finally:
        outcome.step_timings[step] = round(time.perf_counter() - start, 2)


def _summary_markdown(outcome: RunOutcome, cfg: Config) -> str:
    lines = [
        f"# nightrec run {outcome.run_date} — {outcome.status}",
        "",
        f"- model version: `{outcome.model_version}`",
        f"- rows: {outcome.row_counts}",
        f"- warehouse: `{cfg.data.warehouse}`",
    ]
    if outcome.error:
        lines += ["", "## Error", "", "```", outcome.error, "```"]
    lines += ["", "## Step timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in outcome.step_timings.items()]
    return "\n".join(lines)


def _metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"task": task_name, **values} for task_name, values in metrics.get("tasks", {}).items()]


@flow(name="nightly", log_prints=True)
def nightly(
    config_path: str,
    run_date: date | None = None,
    landing: str | None = None,
    workdir: str | None = None,
    warehouse: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Publish the top-K recommendations for `run_date` (default: today, UTC) from the events before it."""
    logger = get_run_logger()
    run_date = run_date or datetime.now(UTC).date()
    cfg = load_config(config_path, landing=landing, workdir=workdir, warehouse=warehouse)
    paths = RunPaths.for_run(cfg, run_date)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    outcome = RunOutcome(run_id=run_id, run_date=run_date, status="running")
    _save_run(cfg, outcome, "running")
    try:
        outcome.row_counts["events"] = _timed(
            outcome, "validate_events", lambda: validate_events_step(cfg, run_date, paths)
        )
        outcome.row_counts.update(
            _timed(outcome, "features", lambda: build_features_step(cfg, run_date, paths))
        )
        _timed(outcome, "validate_features", lambda: validate_features_step(cfg, paths))
        trained = _timed(outcome, "train", lambda: train_step(cfg, run_date, paths, show_progress))
        outcome.model_version, outcome.metrics = trained.version, trained.metrics
        recs = _timed(outcome, "score", lambda: score_step(cfg, trained.model_dir, paths, show_progress))
        outcome.row_counts["recommendations"] = len(recs)
        outcome.status = "published"
        _timed(outcome, "publish", lambda: publish_step(cfg, run_date, recs, outcome))
    except Exception as exc:
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        _save_run(cfg, outcome, "failed")
        create_markdown_artifact(
            _summary_markdown(outcome, cfg), key="nightly-summary", description="Failed run"
        )
        raise
    create_table_artifact(
        _metrics_rows(outcome.metrics), key="nightly-metrics", description="Validation metrics"
    )
    create_markdown_artifact(
        _summary_markdown(outcome, cfg), key="nightly-summary", description="Nightly run"
    )
    logger.info(
        "published %s rows for %s (model %s)",
        outcome.row_counts["recommendations"],
        run_date,
        outcome.model_version,
    )
    return {
        "run_id": outcome.run_id,
        "run_date": run_date.isoformat(),
        "status": outcome.status,
        "model_version": outcome.model_version,
        "metrics": outcome.metrics,
        "row_counts": outcome.row_counts,
        "step_timings": outcome.step_timings,
        "warehouse": cfg.data.warehouse,
        "run_dir": str(paths.run_dir),
    }
