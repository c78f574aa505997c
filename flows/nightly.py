"""The `nightly` Prefect flow: landing zone -> features -> validation -> training -> scoring -> publish.

The flow only orchestrates: each task calls one function of jobs/ or model/ and hands paths, not data, to
the next, so any step can be rerun or inspected from the run directory. A run of date D reads only events
before D, and what it publishes for D replaces D's rows in one transaction. Without a date a run publishes
the day before its scheduled start (flows/run_date.py).

A failed run leaves three traces, each written even if another cannot be: the flow run ends Failed with
the original exception, the runs row is 'failed' with the step and the error, and a `nightly-failure`
artifact says the same; a webhook is notified when one is configured (flows/notify.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.notify import failure_message, post_json, webhook_url
from flows.run_date import resolve_run_date
from flows.store import open_store
from flows.train import TrainedModel, train_in_process, train_remotely
from jobs.reliability import run_lock
from jobs.spark import spark_steps
from jobs.warehouse import redact
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
        run_dir = cfg.run_dir(run_date)
        return cls(run_dir, run_dir / "features", run_dir / "data_docs", Path(cfg.data.workdir) / "models")


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
    rejected_rows: int = 0
    step: str = "start"  # the step running now; after a failure, the one that failed


def _window_inputs(cfg: Config, run_date: date):
    """The window's events (with their `dt` partition, for the checks) and the items, as Spark frames."""
    from jobs.feature_job import Window
    from jobs.landing import read_events, read_items
    from jobs.spark import get_spark

    spark, window = get_spark(cfg.spark), Window.for_run(cfg, run_date)
    events = read_events(spark, cfg.data.landing, window.start, run_date, with_partition=True)
    return window, events, read_items(spark, cfg.data.landing)


@task(name="validate-events", cache_policy=NO_CACHE)
def validate_events_step(cfg: Config, run_date: date, paths: RunPaths):
    """Check the window's raw events before anything is computed from them; quarantine a few bad rows."""
    from jobs.quarantine import screen_events

    window, events, items = _window_inputs(cfg, run_date)
    return screen_events(events, items, cfg, window.start, run_date, paths.run_dir)


@task(name="build-features", cache_policy=NO_CACHE)
def build_features_step(cfg: Config, run_date: date, paths: RunPaths, needs_cleaning: bool) -> dict[str, int]:
    """The features of the screened events; the directory counts as written only once its marker is."""
    from jobs.feature_job import write_features
    from jobs.landing import EVENT_COLUMNS
    from jobs.quarantine import clean_events
    from jobs.reliability import clear_complete, mark_complete

    clear_complete(paths.features)
    window, events, items = _window_inputs(cfg, run_date)
    if needs_cleaning:
        events = clean_events(events, items, cfg, window.start, run_date)
    counts = write_features(events.select(*EVENT_COLUMNS), items, cfg, run_date, paths.features)
    mark_complete(paths.features, counts)
    return counts


@task(name="validate-features", cache_policy=NO_CACHE)
def validate_features_step(cfg: Config, paths: RunPaths) -> None:
    from jobs.reliability import require_complete
    from jobs.spark import get_spark
    from jobs.validation import validate_examples
    from nightrec import schema as S

    require_complete(paths.features, "build-features")
    examples = get_spark(cfg.spark).read.parquet(str(paths.features / S.EXAMPLES))
    validate_examples(examples, cfg, paths.data_docs)


@task(name="train", cache_policy=NO_CACHE)
def train_step(
    cfg: Config,
    run_date: date,
    config_path: str,
    workdir: str | None,
    show_progress: bool,
    champion: str | None,
) -> TrainedModel:
    """On the `train` deployment's (GPU) workers when the config names one, else in this process.

    Training starts from the champion's weights when `model.warm_start` is on (the trainer gets its version).
    """
    warm_from = champion if cfg.model.warm_start else None
    deployment = cfg.orchestration.train_deployment
    if deployment:
        return train_remotely(deployment, config_path, run_date, workdir, cfg, warm_from)
    return train_in_process(cfg, run_date, show_progress, flow_run_id=flow_run.get_id(), warm_from=warm_from)


def find_champion(cfg: Config, run_date: date) -> str | None:
    """The model of the newest published date before this one: looked up once per night, so that warm
    start and the gate always name the same champion."""
    from model.champion import champion_before

    with open_store(cfg, read_only=True) as wh:
        return champion_before(wh, run_date)


@task(name="champion-gate", cache_policy=NO_CACHE)
def champion_gate_step(
    cfg: Config, run_date: date, trained: TrainedModel, paths: RunPaths, champion: str | None
):
    """The new model against the champion on the same validation slice."""
    from model.champion import judge

    return judge(
        cfg, run_date, paths.features, Path(trained.model_dir), trained.version, champion, paths.models
    )


@task(name="score", cache_policy=NO_CACHE)
def score_step(cfg: Config, model_dir: Path, paths: RunPaths, show_progress: bool):
    from jobs.reliability import require_complete
    from model.score import score_users

    require_complete(paths.features, "build-features")
    if cfg.scoring.engine == "spark":
        from jobs.spark import get_spark
        from jobs.spark_scoring import score_on_spark

        recs = score_on_spark(get_spark(cfg.spark), model_dir, paths.features, cfg, paths.run_dir / "scored")
    else:
        recs = score_users(model_dir, paths.features, cfg, show_progress=show_progress)
    recs["generated_at"] = datetime.now(UTC)
    return recs


@task(name="validate-recommendations", cache_policy=NO_CACHE)
def validate_recommendations_step(cfg: Config, recs, paths: RunPaths) -> None:
    """The scored rows against the run's seen pairs and catalogue, before anything is published."""
    from jobs.validation import validate_recommendations
    from model.data import read_features
    from nightrec import schema as S

    seen = read_features(paths.features, S.SEEN).select([S.USER_ID, S.ITEM_ID])
    catalogue_size = read_features(paths.features, S.ITEMS).num_rows
    validate_recommendations(recs, seen, catalogue_size, cfg, paths.data_docs)


@task(name="publish", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def publish_step(cfg: Config, run_date: date, recs, outcome: RunOutcome) -> int:
    """Replace the run date's rows and mark the run published, in one warehouse transaction."""
    with open_store(cfg) as wh:
        wh.ensure_schema(cfg.task_names())
        return wh.publish(run_date, recs, _record(outcome, "published"))


@task(name="parquet-output", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def parquet_output_step(recs, run_date: date, uri: str) -> str:
    """The published rows as the date's Parquet partition: after the warehouse, its source of truth."""
    from jobs.parquet_output import write_parquet_output

    return write_parquet_output(recs, run_date, uri)


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
        rejected_rows=outcome.rejected_rows,
    )


def _save_run(cfg: Config, outcome: RunOutcome, status: str) -> None:
    with open_store(cfg) as wh:
        wh.ensure_schema(cfg.task_names())
        wh.record_run(_record(outcome, status))


def _timed(outcome: RunOutcome, step: str, call: Callable[[], T]) -> T:
    outcome.step = step
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
        f"- warehouse: `{redact(cfg.data.warehouse)}`",
    ]
    return "\n".join(lines + _gate_lines(outcome.metrics.get("champion_gate")) + _timings_lines(outcome))


def _gate_lines(gate: dict[str, Any] | None) -> list[str]:
    """The champion verdict and the compared figure, for the nightly-summary artifact."""
    if not gate:
        return []
    kept = "promoted" if gate["promoted"] else f"kept the champion `{gate['champion_version']}`"
    lines = ["", "## Champion gate", "", f"- verdict: **{kept}**: {gate['reason']}"]
    if gate.get("judged_from"):
        lines += [
            f"- judged on the validation days from {gate['judged_from']} on (the champion trained on the earlier ones)"
        ]
    lines += ["", f"| {gate['metric']} | value |", "|---|---|"]
    lines += [
        f"| candidate {_judged(gate['candidate_version'], gate.get('candidate_judged'))} | "
        f"{_figure(gate['candidate_value'])} |"
    ]
    if gate["champion_version"]:
        lines += [
            f"| champion {_judged(gate['champion_version'], gate.get('champion_judged'))} | "
            f"{_figure(gate['champion_value'])} |"
        ]
    return lines


def _judged(version: str, judged: str | None) -> str:
    """`version`, and the held-out twin that stood for it at the gate where one did."""
    return f"`{version}`" if judged in (None, version) else f"`{version}` (judged as `{judged}`)"


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _timings_lines(outcome: RunOutcome) -> list[str]:
    lines = ["", "## Step timings (s)", "", "| step | seconds |", "|---|---|"]
    return lines + [f"| {k} | {v} |" for k, v in outcome.step_timings.items()]


def _metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"task": task_name, **values} for task_name, values in metrics.get("tasks", {}).items()]


def _failure_markdown(outcome: RunOutcome, cfg: Config | None) -> str:
    lines = [
        f"# nightrec run {outcome.run_date} failed at step `{outcome.step}`",
        "",
        f"- flow run: `{outcome.run_id}`",
        f"- warehouse: `{redact(cfg.data.warehouse) if cfg else 'unknown: the config did not load'}`",
        "- nothing was published for this date; the previous recommendations stay in place",
        "",
        "## Error",
        "",
        "```",
        outcome.error or "",
        "```",
    ]
    return "\n".join(lines + (_timings_lines(outcome) if outcome.step_timings else []))


def _publish_report(cfg: Config, run_date: date) -> None:
    """Render the run's HTML report and link it from a Prefect artifact; a report never fails a run."""
    from nightrec.report import render_report

    logger = get_run_logger()
    try:
        path = render_report(cfg, run_date).resolve()
        create_link_artifact(
            link=path.as_uri(), link_text=f"report {run_date}", key="nightly-report", description="Run report"
        )
    except Exception as report_exc:
        logger.error("could not render the run report: %r", report_exc)


def _report_failure(cfg: Config | None, outcome: RunOutcome, exc: BaseException) -> None:
    """Record the failure everywhere it should show. Each part is guarded: none may hide `exc`."""
    logger = get_run_logger()
    outcome.status = "failed"
    outcome.error = f"[{outcome.step}] {type(exc).__name__}: {exc}"
    if cfg is not None:
        try:
            _save_run(cfg, outcome, "failed")
        except Exception as record_exc:
            logger.error("could not record the failed run in the warehouse: %r", record_exc)
    try:
        create_markdown_artifact(
            _failure_markdown(outcome, cfg),
            key="nightly-failure",
            description=f"nightly {outcome.run_date} failed at {outcome.step}",
        )
    except Exception as artifact_exc:
        logger.error("could not create the failure artifact: %r", artifact_exc)
    if cfg is not None:
        _publish_report(cfg, outcome.run_date)
    url = webhook_url(cfg.notify.webhook_url if cfg is not None else None)
    if url:
        message = failure_message(
            run_date=outcome.run_date.isoformat(),
            step=outcome.step,
            error=f"{type(exc).__name__}: {exc}",
            flow_run_id=outcome.run_id,
            flow_run_name=flow_run.get_name(),
        )
        sent = post_json(url, message)
        logger.info("failure notification %s", "sent" if sent else "could not be sent")


@flow(name="nightly", log_prints=True)
def nightly(
    config_path: str,
    run_date: date | None = None,
    landing: str | None = None,
    workdir: str | None = None,
    warehouse: str | None = None,
    show_progress: bool = True,
    schedule_timezone: str = "UTC",
) -> dict[str, Any]:
    """Publish the top-K recommendations for `run_date` from the events before it.

    Without `run_date`: the day before the run's scheduled start in `schedule_timezone` (the timezone of
    the deployment's schedule), so a run scheduled for Nov 2 02:00 publishes Nov 1.
    """
    logger = get_run_logger()
    run_date = resolve_run_date(run_date, schedule_timezone)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    outcome = RunOutcome(run_id=run_id, run_date=run_date, status="running", step="load_config")
    cfg: Config | None = None
    lock = ExitStack()
    try:
        cfg = load_config(config_path, landing=landing, workdir=workdir, warehouse=warehouse)
        paths = RunPaths.for_run(cfg, run_date)
        outcome.step = "lock"
        lock.enter_context(run_lock(paths.run_dir))  # a second run of the date is refused, never interleaved
        outcome.step = "record_start"
        _save_run(cfg, outcome, "running")
        # Spark's part of the night ends here unless it also scores: a session this run started is then
        # stopped, so its JVM's memory is free for training and scoring.
        with spark_steps(release=cfg.scoring.engine != "spark"):
            screening = _timed(outcome, "validate_events", lambda: validate_events_step(cfg, run_date, paths))
            outcome.rejected_rows = screening.rejected
            if screening.volume_warning:  # reliability.volume_policy = "warn": in the run's log, not fatal
                logger.warning("%s", screening.volume_warning)
            outcome.row_counts.update(
                events=screening.events, rejected=screening.rejected, duplicates=screening.duplicates
            )
            outcome.row_counts.update(
                _timed(
                    outcome,
                    "features",
                    lambda: build_features_step(cfg, run_date, paths, screening.needs_cleaning),
                )
            )
            _timed(outcome, "validate_features", lambda: validate_features_step(cfg, paths))
        champion = find_champion(cfg, run_date)
        trained = _timed(
            outcome,
            "train",
            lambda: train_step(cfg, run_date, config_path, workdir, show_progress, champion),
        )
        verdict = _timed(
            outcome, "champion_gate", lambda: champion_gate_step(cfg, run_date, trained, paths, champion)
        )
        outcome.model_version = verdict.published_version
        # The runs row describes the model that published: the candidate's figures stay in the verdict.
        published = trained.metrics if verdict.promoted else verdict.champion_metrics
        outcome.metrics = {**published, "champion_gate": verdict.to_dict()}
        model_dir = Path(trained.model_dir) if verdict.promoted else paths.models / verdict.published_version
        recs = _timed(outcome, "score", lambda: score_step(cfg, model_dir, paths, show_progress))
        outcome.row_counts["recommendations"] = len(recs)
        _timed(outcome, "validate_recommendations", lambda: validate_recommendations_step(cfg, recs, paths))
        outcome.status = "published"
        _timed(outcome, "publish", lambda: publish_step(cfg, run_date, recs, outcome))
        if cfg.data.parquet_output:
            # A failure here marks the run failed: `latest_recommendations` then keeps showing the previous
            # date, which is also what the Parquet readers still see. A rerun of the date repairs both.
            _timed(
                outcome,
                "parquet_output",
                lambda: parquet_output_step(recs, run_date, cfg.data.parquet_output),
            )
        # The runs row was written inside the publish transaction, before its own timing existed.
        _save_run(cfg, outcome, "published")
    except Exception as exc:
        _report_failure(cfg, outcome, exc)
        raise
    finally:
        lock.close()
    _publish_report(cfg, run_date)
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
        "warehouse": redact(cfg.data.warehouse),
        "run_dir": str(paths.run_dir),
    }
