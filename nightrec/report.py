"""The per-run report: one self-contained HTML page that says what a night did and whether to trust it.

A person on call opens `<workdir>/runs/<date>/report.html` and reads, top to bottom: which steps ran and how
long they took (and the error, if any), whether the input volume looked like other days, what the data checks
said, how training went, the model's validation metrics, what the published scores look like, how much of
the catalogue was recommended, and a few users' histories next to what they were given.

Everything is read from what a run leaves behind (the warehouse's `runs` and `recommendations`, the model
directory, the run directory, the landing zone), never from the flow's memory, so the report can be built
again for any past date and for a failed run. A section whose inputs do not exist says what is missing; a
section that cannot be built says why, and the others still render: a bad night is when the page matters.

Warehouse reads are aggregated in SQL (histograms, counts per item, a handful of users), so the published
rows are never loaded into memory, and the same SQL runs on DuckDB and PostgreSQL. The page makes no request when opened: plots are inline PNGs, the stylesheet is inline, and
the only links are relative ones to the run's own Data Docs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.warehouse import JSON_FIELDS, RUN_COLUMNS, RunRecord, WarehouseBase, open_warehouse, quote_column
from nightrec import report_plots as plots
from nightrec import schema as S
from nightrec.config import Config

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TITLES = {
    "steps": "Steps",
    "volume": "Input volume",
    "validation": "Data checks",
    "training": "Training",
    "metrics": "Model metrics",
    "scores": "Score distributions",
    "coverage": "Catalogue coverage",
    "users": "Sample users",
}
# The nightly flow's step names (flows/nightly.py `_timed`), in the order they run; step_timings is stored
# as JSON with sorted keys, so the order has to come from here. Unknown steps are listed after these.
FLOW_STEPS = ("validate_events", "features", "validate_features", "train", "score", "publish")
TRAILING_DAYS = 7
NEW_ITEM_DAYS = 7
HISTOGRAM_BINS = 40
TOP_ITEMS = 10
SAMPLE_USERS = 5
SHOWN_RECS = 10
SHOWN_HISTORY = 10
METRIC_ORDER = ("auc", "logloss", "calibration", "rmse", "positive_rate", "n")
# A failed run's error in the runs table: "[<step>] <ExceptionType>: <message>" (flows/nightly.py).
ERROR_STEP = re.compile(r"^\[(\w+)\] ")
VALIDATION_FAILED = "ValidationFailed: "
# The statistics table of a GX 1.x validation page (labels as GX renders them).
GX_EVALUATED, GX_UNSUCCESSFUL = "Evaluated Expectations", "Unsuccessful Expectations"


@dataclass
class Section:
    """What one section shows; `notes` say, in words, what is missing or could not be built."""

    notes: list[str] = field(default_factory=list)


@dataclass
class StepRow:
    name: str
    seconds: float | None
    share: float | None
    state: str  # "ok", "failed" or "not run"


@dataclass
class StepsSection(Section):
    run: RunRecord | None = None
    duration: float | None = None
    rows: list[StepRow] = field(default_factory=list)
    chart: str | None = None


@dataclass
class VolumeSection(Section):
    window_start: date | None = None
    lookback: int = 0
    first_day: date | None = None
    last_found: date | None = None
    last_day: date | None = None
    empty_days: int = 0
    trailing_days: int = TRAILING_DAYS
    rows: list[dict[str, Any]] = field(default_factory=list)
    chart: str | None = None


@dataclass
class ValidationSection(Section):
    failure: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    docs_href: str | None = None


@dataclass
class TrainingSection(Section):
    n_train: int | None = None
    n_val: int | None = None
    validation_from: str | None = None
    best_epoch: int | None = None
    device: str | None = None
    loss_columns: list[str] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    curves: str | None = None
    gates: str | None = None


@dataclass
class MetricsSection(Section):
    val_loss: float | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None  # the champion gate's verdict, as the runs row records it
    comparison: list[dict[str, Any]] = field(default_factory=list)  # per task: candidate and champion figures


@dataclass
class ScoresSection(Section):
    n_rows: int = 0
    versions: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    chart: str | None = None


@dataclass
class CoverageSection(Section):
    rows: list[tuple[str, str, float | int | None, str]] = field(default_factory=list)
    top_items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class UsersSection(Section):
    users: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Sources:
    """Everything a run left behind, opened once; `wh` is None when there is no warehouse to read."""

    cfg: Config
    run_date: date
    run_dir: Path
    out_dir: Path
    wh: WarehouseBase | None
    run: RunRecord | None
    rec_columns: list[str]
    rec_versions: dict[str, int]  # published rows of the date per model version

    @property
    def features(self) -> Path:
        return self.run_dir / "features"

    # Read on first use, so that an unreadable file fails the sections that need it and no others.
    @functools.cached_property
    def model(self) -> tuple[dict[str, Any] | None, str | None]:
        """The run's model meta.json, or None and a note saying why there is none."""
        return _model_meta(self.cfg, self.run)

    @functools.cached_property
    def items(self) -> pd.DataFrame | None:
        """The landing zone's items (id, title, created_at in UTC); None when there are none."""
        return _landing_items(self.cfg.data.landing)

    @property
    def rec_count(self) -> int:
        return sum(self.rec_versions.values())

    def sql(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read of the warehouse; see `_sql`."""
        if self.wh is None:
            raise RuntimeError("there is no warehouse to read")
        return _sql(self.wh, text, params)

    def no_recs_note(self) -> str:
        status = f"latest run: {self.run.status}" if self.run else "no run is recorded"
        return f"No recommendations are published for {self.run_date} ({status})."

    def titles(self, item_ids: list[str]) -> dict[str, str]:
        if self.items is None:
            return {}
        found = self.items[self.items[S.ITEM_ID].isin(item_ids)]
        titles = [b"" if t is None else t for t in found[S.TITLE]]
        return {i: t.decode("utf-8", "replace") for i, t in zip(found[S.ITEM_ID], titles, strict=True)}


# -- entry point ------------------------------------------------------------------------------------------


def render_report(cfg: Config, run_date: date, out_path: Path | None = None) -> Path:
    """Write the report of `run_date` (default `<workdir>/runs/<date>/report.html`) and return its path."""
    started = time.perf_counter()
    run_dir = cfg.run_dir(run_date)
    out = Path(out_path) if out_path is not None else run_dir / REPORT_FILE
    wh, wh_note = _open_warehouse(cfg)
    try:
        src = _sources(cfg, run_date, run_dir, out.parent, wh)
        sections = {name: _build(name, builder, src) for name, builder in BUILDERS.items()}
        if wh_note:
            sections["steps"].notes.insert(0, wh_note)
    finally:
        if wh is not None:
            wh.close()
    html = _template().render(
        run_date=run_date.isoformat(),
        status=src.run.status if src.run else "unknown",
        model_version=src.run.model_version if src.run else None,
        built_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        titles=TITLES,
        sections=sections,
        build_seconds=time.perf_counter() - started,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)  # a reader never sees half a page
    log.info("report for %s written to %s in %.1f s", run_date, out, time.perf_counter() - started)
    return out


def _build(name: str, builder: tuple[type[Section], Callable[[Sources], Section]], src: Sources) -> Section:
    """Build one section; if it breaks, say so in that section and let the others render."""
    kind, build = builder
    try:
        return build(src)
    except Exception as exc:
        log.warning("report section %s could not be built", name, exc_info=True)
        return kind(notes=[f"This section could not be built: {type(exc).__name__}: {exc}"])


def _open_warehouse(cfg: Config) -> tuple[WarehouseBase | None, str | None]:
    """The configured warehouse (DuckDB file or PostgreSQL), read-only: the report never writes to it."""
    try:
        store = open_warehouse(
            cfg.data.warehouse, read_only=True, password_block=cfg.data.warehouse_password_block
        )
    except FileNotFoundError:
        return None, "There is no warehouse yet: nothing was ever recorded."
    except Exception as exc:  # unreachable server, a file locked by a writer: the files still tell a lot
        log.warning("the report could not open the warehouse", exc_info=True)
        return None, f"The warehouse could not be opened: {type(exc).__name__}: {exc}"
    return store, None


def _sql(wh: WarehouseBase, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run a read written once for both backends: `{p}` is a placeholder, `{runs}` and `{recs}` the tables.

    Only the dialect's placeholder and table names (and columns passed through `quote_column`) are formatted
    into the text; every value travels as a parameter. The SQL itself sticks to what DuckDB and PostgreSQL
    both accept.
    """
    d = wh.dialect
    return wh.fetch(text.format(p=d.param, runs=d.table("runs"), recs=d.table("recommendations")), params)


def _sources(cfg: Config, run_date: date, run_dir: Path, out_dir: Path, wh: WarehouseBase | None) -> Sources:
    run, rec_columns, rec_versions = None, [], {}
    if wh is not None:
        run = _latest_run(wh, run_date)
        rec_columns = _table_columns(wh, "recommendations")
        if rec_columns:
            rows = _sql(
                wh,
                "SELECT model_version, count(*) FROM {recs} WHERE run_date = {p} "
                "GROUP BY model_version ORDER BY model_version",
                [run_date],
            )
            rec_versions = {str(version): int(n) for version, n in rows}
    return Sources(
        cfg=cfg,
        run_date=run_date,
        run_dir=run_dir,
        out_dir=out_dir,
        wh=wh,
        run=run,
        rec_columns=rec_columns,
        rec_versions=rec_versions,
    )


def _latest_run(wh: WarehouseBase, run_date: date) -> RunRecord | None:
    """The newest attempt of the date: a rerun's row, not the first try's."""
    if "run_id" not in _table_columns(wh, "runs"):
        return None
    rows = _sql(
        wh,
        f"SELECT {', '.join(RUN_COLUMNS)} FROM {{runs}} WHERE run_date = {{p}} "
        "ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 1",
        [run_date],
    )
    if not rows:
        return None
    values = dict(zip(RUN_COLUMNS, rows[0], strict=True))
    for name in JSON_FIELDS:  # DuckDB returns JSON as text, psycopg as Python objects (JSONB: keys reordered)
        parsed = json.loads(values[name]) if isinstance(values[name], str) else values[name] or {}
        values[name] = dict(sorted(parsed.items()))
    return RunRecord(**values)


def _table_columns(wh: WarehouseBase, table: str) -> list[str]:
    rows = _sql(
        wh,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = {p} AND table_name = {p} "
        "ORDER BY ordinal_position",
        [wh.schema, table],
    )
    return [r[0] for r in rows]


def _model_meta(cfg: Config, run: RunRecord | None) -> tuple[dict[str, Any] | None, str | None]:
    if run is not None and not run.model_version and run.status == "running":
        return None, "This run is still running and has no model yet."
    if run is None or not run.model_version:
        return None, "No model was trained by this run."
    path = Path(cfg.data.workdir) / "models" / run.model_version / "meta.json"
    if not path.exists():
        return None, f"The model directory of {run.model_version} is missing ({path})."
    return json.loads(path.read_text()), None


def _landing_items(landing: str) -> pd.DataFrame | None:
    try:
        table = ds.dataset(f"{landing.rstrip('/')}/items", format="parquet").to_table(
            columns=[S.ITEM_ID, S.TITLE, "created_at"]
        )
    except FileNotFoundError:
        return None
    # Titles stay bytes until shown: a landing zone may hold titles that are not valid UTF-8 (the feature
    # job repairs them; the report reads the landing zone itself and must not fail on them).
    title = table.column_names.index(S.TITLE)
    table = table.set_column(title, S.TITLE, pc.cast(table.column(S.TITLE), pa.binary()))
    items = table.to_pandas()
    items["created_at"] = pd.to_datetime(items["created_at"], utc=True)
    return items


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nightrec", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(num=_num, pct=_pct, when=_when)
    return env.get_template("report.html")


def _num(value: Any, digits: int = 0) -> str:
    """Thousands separators, `digits` decimals, and an em dash for what is not a number."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _relative_href(target: Path, out_dir: Path) -> str:
    """A link the browser resolves next to the report file: no scheme, so it is never a network request."""
    return quote(Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix())


# -- sections ---------------------------------------------------------------------------------------------


def steps_section(src: Sources) -> StepsSection:
    run = src.run
    if run is None:
        return StepsSection(notes=[f"No run of {src.run_date} is recorded in the warehouse."])
    timings = {k: float(v) for k, v in run.step_timings.items() if v is not None}
    order = list(FLOW_STEPS) + sorted(set(timings) - set(FLOW_STEPS))
    failed = _failed_step(run.error) if run.status == "failed" else None
    if failed is not None and failed not in order:
        order.insert(0, failed)  # the flow's own set-up (loading the config, recording the start)
    total = sum(timings.values())
    # publish writes the runs row inside its own transaction, before its timing exists: a published run's
    # untimed steps did run.
    published = run.status == "published"
    rows = [
        StepRow(
            name=name,
            seconds=timings.get(name),
            share=timings[name] / total if name in timings and total > 0 else None,
            state="failed" if name == failed else "ok" if name in timings or published else "not run",
        )
        for name in order
    ]
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    section = StepsSection(run=run, duration=duration, rows=rows)
    section.chart = plots.step_timings([(r.name, r.seconds, r.state) for r in rows])
    if run.status == "running":
        section.notes.append("This run has not finished: the steps not run yet may still run.")
    return section


def _failed_step(error: str | None) -> str | None:
    """The step a failed run names in its error: the flow records `[<step>] <exception>`."""
    match = ERROR_STEP.match(error or "")
    return match.group(1) if match else None


def volume_section(src: Sources) -> VolumeSection:
    cfg, run_date = src.cfg, src.run_date
    lookback = cfg.features.lookback_days
    window_start = run_date - timedelta(days=lookback)
    counts = _event_counts(cfg.data.landing, window_start, run_date)
    section = VolumeSection(
        window_start=window_start, lookback=lookback, last_day=run_date - timedelta(days=1)
    )
    if counts is None:
        section.notes.append(f"No events/ in the landing zone {cfg.data.landing}.")
        return section
    if counts.empty:
        section.notes.append(f"No events in the run's window [{window_start}, {run_date}).")
        return section
    first, last = counts.index.min(), counts.index.max()
    last_day = pd.Timestamp(section.last_day)
    days = pd.date_range(first, max(last, last_day), freq="D")
    daily = counts.reindex(days, fill_value=0)
    trailing = daily.loc[last_day - pd.Timedelta(days=TRAILING_DAYS) : last_day - pd.Timedelta(days=1)]
    section.first_day, section.last_found = first.date(), last.date()
    section.empty_days = int((daily.sum(axis=1) == 0).sum())
    columns = [*daily.columns, "all"] if len(daily.columns) > 1 else list(daily.columns)
    for column in columns:
        series = daily.sum(axis=1) if column == "all" else daily[column]
        mean = float(trailing.sum(axis=1).mean() if column == "all" else trailing[column].mean())  # nan: none
        on_last = int(series.loc[last_day])
        section.rows.append(
            {
                "event_type": column,
                "last_day": on_last,
                "trailing_mean": mean,
                "ratio": on_last / mean if mean > 0 else None,
                "window_total": int(series.sum()),
            }
        )
    all_mean = section.rows[-1]["trailing_mean"]
    section.chart = plots.event_volume(daily, last_day, all_mean if math.isfinite(all_mean) else None)
    if section.rows[-1]["last_day"] == 0:
        section.notes.append(f"There are no events on {section.last_day}, the day this run adds.")
    return section


def _event_counts(landing: str, start: date, end: date) -> pd.DataFrame | None:
    """Events per (day, type) of the partitions dt in [start, end): a day x type frame, or None without data.

    Streams record batches of two columns (dt is the partition value) so a long window stays cheap in memory.
    """
    partitioning = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")
    try:
        events = ds.dataset(f"{landing.rstrip('/')}/events", format="parquet", partitioning=partitioning)
    except FileNotFoundError:
        return None
    wanted = (pc.field("dt") >= start.isoformat()) & (pc.field("dt") < end.isoformat())
    parts = [
        pa.Table.from_batches([batch])
        .group_by(["dt", "event_type"])
        .aggregate([([], "count_all")])
        .to_pandas()
        for batch in events.to_batches(columns=["dt", "event_type"], filter=wanted)
        if batch.num_rows
    ]
    if not parts:
        return pd.DataFrame()
    counts = pd.concat(parts).groupby(["dt", "event_type"])["count_all"].sum().unstack(fill_value=0)
    counts.index = pd.to_datetime(counts.index)
    counts.columns.name = None
    return counts.sort_index()


def validation_section(src: Sources) -> ValidationSection:
    section = ValidationSection()
    error = ERROR_STEP.sub("", src.run.error or "") if src.run else ""
    if error.startswith(VALIDATION_FAILED):
        section.failure = error.removeprefix(VALIDATION_FAILED)
    docs = src.run_dir / "data_docs"
    index = docs / "index.html"
    if index.exists():
        section.docs_href = _relative_href(index, src.out_dir)
    else:
        section.notes.append(f"No Data Docs were written for {src.run_date} ({index} is missing).")
    since = src.run.started_at if src.run else None
    latest: dict[str, tuple[datetime, Path]] = {}
    for page in sorted(docs.glob("validations/*/*/*/*.html")):
        suite, stamp = page.relative_to(docs / "validations").parts[0], page.parent.name
        try:
            validated_at = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
        except ValueError:
            continue  # not a validation result page
        if since is not None and validated_at < since:
            continue  # a page of an earlier run of this date
        if suite not in latest or validated_at > latest[suite][0]:
            latest[suite] = (validated_at, page)
    for suite, (validated_at, page) in sorted(latest.items(), key=lambda kv: kv[1][0]):
        stats = _gx_statistics(page)
        evaluated, unsuccessful = stats.get(GX_EVALUATED), stats.get(GX_UNSUCCESSFUL)
        result = "unknown" if unsuccessful is None else "passed" if unsuccessful == 0 else "failed"
        section.rows.append(
            {
                "suite": suite,
                "validated_at": validated_at,
                "evaluated": evaluated,
                "unsuccessful": unsuccessful,
                "result": result,
                "href": _relative_href(page, src.out_dir),
            }
        )
    if index.exists() and not section.rows:
        section.notes.append("No suite was validated by this run.")
    return section


class _TableCells(HTMLParser):
    """The text of every <td>, in document order: enough to read the statistics table of a GX page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._text is not None:
            self.cells.append(" ".join("".join(self._text).split()))
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def _gx_statistics(page: Path) -> dict[str, int]:
    """{label: count} from a GX validation page's statistics table (label cell, then value cell).

    GX 1.x keeps results in memory (the run uses an ephemeral context): the rendered page is the only
    record a run leaves of what was checked.
    """
    parser = _TableCells()
    parser.feed(page.read_text(encoding="utf-8"))
    found: dict[str, int] = {}
    for label, value in zip(parser.cells, parser.cells[1:], strict=False):
        if label in (GX_EVALUATED, GX_UNSUCCESSFUL) and label not in found and value.isdigit():
            found[label] = int(value)
    return found


def training_section(src: Sources) -> TrainingSection:
    meta, missing = src.model
    if meta is None:
        return TrainingSection(notes=[missing or "No model."])
    history = pd.DataFrame(meta.get("history") or [])
    if history.empty:
        return TrainingSection(notes=[f"The model {meta.get('version')} has no training history."])
    tasks = [t["name"] for t in meta.get("tasks", [])] or src.cfg.task_names()
    best = meta.get("metrics", {}).get("best_epoch")
    loss_columns = [c for t in tasks for c in (f"train_{t}", f"val_{t}")] + ["train_loss", "val_loss"]
    loss_columns = [c for c in loss_columns if c in history]
    window = meta.get("data_window", {})
    section = TrainingSection(
        n_train=meta.get("n_train"),
        n_val=meta.get("n_val"),
        validation_from=window.get("validation_from"),
        best_epoch=best,
        device=meta.get("device"),
        loss_columns=loss_columns,
        epochs=history[["epoch", *loss_columns]].to_dict("records"),
        curves=plots.training_curves(history, tasks, best),
    )
    refit = meta.get("refit")
    if refit:
        section.notes.append(
            f"Refit: after early stopping, the published weights trained again from the start for "
            f"{refit['epochs']} epochs on all {refit['n_examples']:,} examples before the run date. The "
            f"curves and metrics are those of the model early stopping chose, kept as "
            f"{refit.get('heldout', 'its held-out twin')} and judged at the champion gate."
        )
    gate_epoch = best if best in set(history["epoch"]) else int(history["epoch"].iloc[-1])
    gates = history.loc[history["epoch"] == gate_epoch, "gates"].iloc[0] if "gates" in history else None
    if gates:
        section.gates = plots.gate_weights(gates, gate_epoch)
    else:
        section.notes.append("No gate weights were recorded.")
    return section


def metrics_section(src: Sources) -> MetricsSection:
    meta, missing = src.model
    # meta.json when the model directory is there, else what the runs row kept of it.
    metrics = meta.get("metrics") if meta else src.run.metrics if src.run else None
    if not metrics or not metrics.get("tasks"):
        return MetricsSection(notes=[missing or "No metrics were recorded for this run."])
    tasks: dict[str, dict[str, Any]] = metrics["tasks"]
    present = {k for values in tasks.values() for k in values}
    columns = [c for c in METRIC_ORDER if c in present] + sorted(present - set(METRIC_ORDER))
    gate = src.run.metrics.get("champion_gate") if src.run else None
    return MetricsSection(
        val_loss=metrics.get("val_loss"),
        columns=columns,
        rows=[{"task": name, "scores": values} for name, values in tasks.items()],
        gate=gate,
        comparison=_gate_comparison(gate) if gate else [],
    )


def _gate_comparison(gate: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric) of the gate's two models on the same validation slice, then val_loss."""
    new, old = gate.get("candidate_metrics", {}), gate.get("champion_metrics", {})
    rows = [
        {"what": f"{task}.{key}", "candidate": value, "champion": old.get("tasks", {}).get(task, {}).get(key)}
        for task, values in new.get("tasks", {}).items()
        for key, value in values.items()
        if key in ("auc", "logloss", "rmse")
    ]
    return rows + [{"what": "val_loss", "candidate": new.get("val_loss"), "champion": old.get("val_loss")}]


def scores_section(src: Sources) -> ScoresSection:
    if src.rec_count == 0:
        return ScoresSection(notes=[src.no_recs_note()])
    columns = ["score"] + [
        S.probability_column(t) for t in src.cfg.task_names() if S.probability_column(t) in src.rec_columns
    ]
    section = ScoresSection(n_rows=src.rec_count, versions=list(src.rec_versions))
    if src.run and src.run.model_version not in src.rec_versions:
        section.notes.append(
            f"These rows were published by an earlier run of {src.run_date}; the latest run "
            f"({src.run.status}, model {src.run.model_version or '—'}) did not replace them."
        )
    hists = {}
    for column in columns:
        summary, edges, counts = _histogram(src, column)
        section.rows.append({"column": column, **summary})
        if edges is not None:
            hists[column] = (edges, counts)
    if hists:
        section.chart = plots.histograms(hists)
    return section


def _histogram(src: Sources, column: str) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """Summary statistics and equal-width bin counts of one column of the date's rows, computed in SQL."""
    values = (
        f"SELECT {quote_column(column)} AS x FROM {{recs}} "
        f"WHERE run_date = {{p}} AND {quote_column(column)} IS NOT NULL"
    )
    ((n, mean, lo, median, hi),) = src.sql(
        f"SELECT count(x), avg(x), min(x), percentile_cont(0.5) WITHIN GROUP (ORDER BY x), max(x) "
        f"FROM ({values}) v",
        [src.run_date],
    )
    summary = {"n": n, "mean": mean, "min": lo, "median": median, "max": hi}
    if not n:
        return summary, None, None
    width = (hi - lo) / HISTOGRAM_BINS
    if width > 0:
        bins = HISTOGRAM_BINS
    else:  # one value: a single bar around it
        width = max(abs(lo) * 0.01, 1e-6)
        lo, bins = lo - width / 2, 1
    rows = src.sql(
        f"SELECT least(CAST(floor((x - {{p}}) / {{p}}) AS BIGINT), {{p}}) AS bin, count(*) FROM ({values}) v "
        "GROUP BY 1 ORDER BY 1",
        [lo, width, bins - 1, src.run_date],
    )
    counts = np.zeros(bins, dtype=np.int64)
    for b, c in rows:
        counts[int(b)] = c
    return summary, lo + width * np.arange(bins + 1), counts


def coverage_section(src: Sources) -> CoverageSection:
    n_rows = src.rec_count
    if n_rows == 0:
        return CoverageSection(notes=[src.no_recs_note()])
    section = CoverageSection()
    catalogue = _catalogue_size(src)
    if catalogue is None:
        section.notes.append("The catalogue size is unknown: no features/items/ and no landing items.")
    new_items = _new_items(src)
    if new_items is None:
        section.notes.append(
            "Item creation dates are unknown (no landing items/): new items are not counted."
        )
    ((users,),) = src.sql("SELECT count(DISTINCT user_id) FROM {recs} WHERE run_date = {p}", [src.run_date])
    # One row per recommended item: never more than the catalogue, whatever the number of users.
    per_item = pd.DataFrame(
        src.sql(
            "SELECT item_id, count(*), count(DISTINCT user_id) FROM {recs} WHERE run_date = {p} GROUP BY item_id",
            [src.run_date],
        ),
        columns=[S.ITEM_ID, "rows", "users"],
    )
    section.rows = [
        ("published rows", "rows", n_rows, "num"),
        ("users", "users", users, "num"),
        ("distinct items recommended", "distinct_items", len(per_item), "num"),
        ("catalogue size (items scored)", "catalogue", catalogue, "num"),
        ("catalogue coverage", "coverage", len(per_item) / catalogue if catalogue else None, "pct"),
    ]
    if new_items is not None:
        new = per_item[per_item[S.ITEM_ID].isin(new_items)]
        new_since = src.run_date - timedelta(days=NEW_ITEM_DAYS)
        section.rows += [
            (f"new items (created since {new_since})", "new_items", len(new_items), "num"),
            ("new items recommended", "new_items_recommended", len(new), "num"),
            ("share of recommendations that are new items", "new_share", new["rows"].sum() / n_rows, "pct"),
        ]
    top = per_item.sort_values(["users", S.ITEM_ID], ascending=[False, True], kind="stable").head(TOP_ITEMS)
    titles = src.titles(list(top[S.ITEM_ID]))
    section.top_items = [
        {"item_id": item, "title": titles.get(item, ""), "users": n, "share": n / users}
        for item, n in zip(top[S.ITEM_ID], top["users"], strict=True)
    ]
    return section


def _catalogue_size(src: Sources) -> int | None:
    """The items the scorer ranked (features/items/), else the landing items created before the date."""
    items_dir = src.features / S.ITEMS
    if items_dir.is_dir():
        return ds.dataset(items_dir, format="parquet").count_rows()
    if src.items is None:
        return None
    return int((src.items["created_at"] < pd.Timestamp(src.run_date, tz=UTC)).sum())


def _new_items(src: Sources) -> set[str] | None:
    if src.items is None:
        return None
    end = pd.Timestamp(src.run_date, tz=UTC)
    created = src.items["created_at"]
    return set(
        src.items.loc[(created >= end - pd.Timedelta(days=NEW_ITEM_DAYS)) & (created < end), S.ITEM_ID]
    )


def users_section(src: Sources) -> UsersSection:
    if src.rec_count == 0:
        return UsersSection(notes=[src.no_recs_note()])
    # A fixed sample per date (ordered by a hash salted with the date): rebuilding the page shows the same
    # users, and another night shows others. md5 is the same function in DuckDB and PostgreSQL.
    sample = [
        r[0]
        for r in src.sql(
            "SELECT user_id FROM (SELECT DISTINCT user_id FROM {recs} WHERE run_date = {p}) u "
            "ORDER BY md5(user_id || {p}), user_id LIMIT {p}",
            [src.run_date, src.run_date.isoformat(), SAMPLE_USERS],
        )
    ]
    in_sample = ", ".join(["{p}"] * len(sample))
    recs = pd.DataFrame(
        src.sql(
            f"SELECT user_id, rank, item_id, score FROM {{recs}} WHERE run_date = {{p}} "
            f"AND user_id IN ({in_sample}) AND rank <= {{p}} ORDER BY user_id, rank",
            [src.run_date, *sample, SHOWN_RECS],
        ),
        columns=[S.USER_ID, "rank", S.ITEM_ID, "score"],
    )
    history = _histories(src.features / S.USERS, sample)
    section = UsersSection()
    if history is None:
        section.notes.append("The users' histories are not available (no features/users/ for this date).")
    titles = src.titles(list(recs[S.ITEM_ID]) + [i for h in (history or {}).values() for i in h])
    for user in sample:
        mine = recs[recs[S.USER_ID] == user]
        section.users.append(
            {
                "user_id": user,
                "history": [(i, titles.get(i, "")) for i in (history or {}).get(user, [])],
                "recs": [
                    {
                        "rank": r.rank,
                        "item_id": r.item_id,
                        "title": titles.get(r.item_id, ""),
                        "score": r.score,
                    }
                    for r in mine.itertuples()
                ],
            }
        )
    return section


def _histories(users_dir: Path, user_ids: list[str]) -> dict[str, list[str]] | None:
    """The newest SHOWN_HISTORY items of each user as of the run date (u_hist is oldest first)."""
    if not users_dir.is_dir():
        return None
    table = ds.dataset(users_dir, format="parquet").to_table(
        columns=[S.USER_ID, S.HISTORY], filter=pc.field(S.USER_ID).isin(user_ids)
    )
    return {
        user: list(reversed(items or []))[:SHOWN_HISTORY]
        for user, items in zip(table[S.USER_ID].to_pylist(), table[S.HISTORY].to_pylist(), strict=True)
    }


BUILDERS: dict[str, tuple[type[Section], Callable[[Sources], Section]]] = {
    "steps": (StepsSection, steps_section),
    "volume": (VolumeSection, volume_section),
    "validation": (ValidationSection, validation_section),
    "training": (TrainingSection, training_section),
    "metrics": (MetricsSection, metrics_section),
    "scores": (ScoresSection, scores_section),
    "coverage": (CoverageSection, coverage_section),
    "users": (UsersSection, users_section),
}
