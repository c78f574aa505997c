"""The DuckDB warehouse: where a night's top-K recommendations are published and every run is logged.

Two tables and one view (docs/warehouse.md is the consumer-facing description):

- `recommendations`: one set of rows per `run_date`, primary key (run_date, user_id, rank), with one
  `p_<task>` column per task ever published. Schema changes are additive: a new task adds a column,
  older rows keep NULL; nothing is renamed or dropped.
- `runs`: one row per run attempt (`run_id`) with its status, metrics, row counts and step timings.
- `latest_recommendations`: the rows of the newest date whose run is recorded as *published*. It reads the
  runs log, never max(run_date) of the data table, so a date whose rows are not committed with a published
  run never becomes "latest".

A publish is one transaction (delete the date's rows, insert the new ones, mark the run published): a failure
anywhere leaves the previous rows, the view and the runs log as they were.

DuckDB allows one read-write process per file: the nightly flow is the only writer; dashboards and other
processes open the file with `read_only=True`, which works whenever no writer holds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from nightrec.config import check_identifier
from nightrec.schema import probability_column

STATUSES = ("running", "published", "failed")
PUBLISHED = "published"

# Columns of a published frame around the task columns; the warehouse adds run_date itself.
LEADING_COLUMNS = ("user_id", "rank", "item_id", "score")
TRAILING_COLUMNS = ("model_version", "generated_at")
JSON_FIELDS = ("metrics", "row_counts", "step_timings")
RUN_COLUMNS = (
    "run_id",
    "run_date",
    "status",
    "model_version",
    "started_at",
    "finished_at",
    *JSON_FIELDS,
    "error",
)

_INPUT_VIEW = "nightrec_publish_input"
PROBABILITY_PREFIX = probability_column("")

T = TypeVar("T")


@dataclass
class RunRecord:
    """One run attempt as logged in `runs`. A rerun of a date is a new run_id (the log keeps both)."""

    run_id: str
    run_date: date
    status: str
    model_version: str | None
    started_at: datetime
    finished_at: datetime | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    row_counts: dict[str, Any] = field(default_factory=dict)
    step_timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run status {self.status!r} is not one of {STATUSES}")


def _quote(column: str) -> str:
    """Quote a column whose name (or task name, for p_<task>) passes check_identifier.

    Nothing else reaches SQL text. The task name is checked rather than the column, because the prefix
    may take a valid 40-character task name past the identifier length limit.
    """
    check_identifier(column.removeprefix(PROBABILITY_PREFIX))
    return f'"{column}"'


def _task_columns(task_names: Sequence[str]) -> list[str]:
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"task names must be unique: {list(task_names)}")
    return [probability_column(check_identifier(t)) for t in task_names]


def _plain_json(value: Any) -> Any:
    """Make metrics JSON-safe: numpy scalars to Python, NaN/inf to null (DuckDB's JSON rejects NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _to_json(value: dict[str, Any]) -> str:
    return json.dumps(_plain_json(value), sort_keys=True)


def _column_names(recs: pa.Table | pd.DataFrame) -> list[str]:
    if isinstance(recs, pa.Table):
        return list(recs.column_names)
    if isinstance(recs, pd.DataFrame):
        return [str(c) for c in recs.columns]
    raise TypeError(f"recommendations must be a pyarrow.Table or pandas.DataFrame, not {type(recs).__name__}")


class Warehouse:
    """A connection to the warehouse file. Use as a context manager so the file lock is released."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no warehouse at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(str(self.path), read_only=read_only)
        # Naive timestamps are taken as UTC and TIMESTAMPTZ values come back in UTC, whatever the host's zone.
        self._con.execute("SET TimeZone = 'UTC'")
        # Task columns declared by ensure_schema on this connection: publish then insists on exactly these.
        self._declared_tasks: list[str] | None = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("the warehouse connection is closed")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------------

    def ensure_schema(self, task_names: list[str]) -> None:
        """Create the tables and view if missing and add a column for each new task (additive only)."""
        columns = _task_columns(task_names)
        self._in_transaction(lambda: self._create_schema(columns))
        self._declared_tasks = columns

    def _create_schema(self, task_columns: list[str]) -> None:
        """Idempotent DDL; runs inside the caller's transaction so a failed publish also undoes it."""
        con = self.con
        con.execute(
            """
            CREATE TABLE IF NOT EXISTS runs (
                run_id VARCHAR PRIMARY KEY,
                run_date DATE NOT NULL,
                status VARCHAR NOT NULL CHECK (status IN ('running', 'published', 'failed')),
                model_version VARCHAR,
                started_at TIMESTAMPTZ,
                finished_at TIMESTAMPTZ,
                metrics JSON,
                row_counts JSON,
                step_timings JSON,
                error VARCHAR
            )
            """
        )
        con.execute(
            """
            CREATE TABLE IF NOT EXISTS recommendations (
                run_date DATE NOT NULL,
                user_id VARCHAR NOT NULL,
                rank INTEGER NOT NULL CHECK (rank >= 1),
                item_id VARCHAR NOT NULL,
                score DOUBLE,
                model_version VARCHAR,
                generated_at TIMESTAMPTZ,
                PRIMARY KEY (run_date, user_id, rank)
            )
            """
        )
        for column in task_columns:
            con.execute(f"ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS {_quote(column)} DOUBLE")
        con.execute(
            f"""
            CREATE OR REPLACE VIEW latest_recommendations AS
            SELECT * FROM recommendations
            WHERE run_date = (SELECT max(run_date) FROM runs WHERE status = '{PUBLISHED}')
            """
        )

    # -- writes ---------------------------------------------------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        """Insert or update the run's log row. Never touches recommendations.

        Only `publish` may mark a run published (the view trusts that status to mean "rows committed"), so
        'published' is accepted here only to update a run that publish already marked.
        """

        def write() -> None:
            self._create_schema([])
            if run.status == PUBLISHED:
                row = self.con.execute("SELECT status FROM runs WHERE run_id = ?", [run.run_id]).fetchone()
                if row is None or row[0] != PUBLISHED:
                    raise ValueError(f"run {run.run_id!r} can only be marked published by Warehouse.publish")
            self._upsert_run(run)

        self._in_transaction(write)

    def publish(self, run_date: date, recs: pa.Table | pd.DataFrame, run: RunRecord) -> int:
        """Replace the rows of `run_date` with `recs` and mark `run` published, all in one transaction.

        `recs` has user_id, rank, item_id, score, p_<task>..., model_version, generated_at: exactly the tasks
        declared by `ensure_schema` on this connection, or, without that call, whichever p_<task> columns it
        has (the missing tables and columns are then created). Returns the number of rows inserted.
        """
        if run.run_date != run_date:
            raise ValueError(f"run {run.run_id!r} is for {run.run_date}, not {run_date}")
        columns = _column_names(recs)
        task_columns = self._check_columns(columns)
        if len(recs) == 0:
            raise ValueError(f"refusing to publish an empty set for {run_date}: it would blank the date out")
        insert_columns = [*LEADING_COLUMNS, *task_columns, *TRAILING_COLUMNS]
        column_list = ", ".join(_quote(c) for c in insert_columns)
        published = replace(run, status=PUBLISHED, finished_at=run.finished_at or datetime.now(UTC))

        def write() -> int:
            self._create_schema(task_columns)
            self.con.execute("DELETE FROM recommendations WHERE run_date = ?", [run_date])
            row = self.con.execute(
                f"INSERT INTO recommendations (run_date, {column_list}) "
                f"SELECT CAST(? AS DATE), {column_list} FROM {_INPUT_VIEW}",
                [run_date],
            ).fetchone()
            self._upsert_run(published)
            return int(row[0]) if row else 0

        # Registered outside the transaction: an aborted transaction refuses every call until the ROLLBACK.
        self.con.register(_INPUT_VIEW, recs)
        try:
            return self._in_transaction(write)
        finally:
            self.con.unregister(_INPUT_VIEW)

    def _check_columns(self, columns: list[str]) -> list[str]:
        """Return the frame's task columns after checking it has exactly the expected columns."""
        if len(set(columns)) != len(columns):
            raise ValueError(f"recommendations have duplicate columns: {columns}")
        base = {*LEADING_COLUMNS, *TRAILING_COLUMNS}
        if self._declared_tasks is not None:
            task_columns = self._declared_tasks
        else:
            task_columns = [c for c in columns if c not in base and c.startswith(PROBABILITY_PREFIX)]
            _task_columns([c.removeprefix(PROBABILITY_PREFIX) for c in task_columns])  # validates the names
        expected = base | set(task_columns)
        missing, extra = sorted(expected - set(columns)), sorted(set(columns) - expected)
        if missing or extra:
            raise ValueError(f"recommendations columns do not match: missing {missing}, unexpected {extra}")
        return task_columns

    def _upsert_run(self, run: RunRecord) -> None:
        values = [getattr(run, c) for c in RUN_COLUMNS]
        for i, name in enumerate(RUN_COLUMNS):
            if name in JSON_FIELDS:
                values[i] = _to_json(values[i])
        updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS if c != "run_id")
        self.con.execute(
            f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}",
            values,
        )

    def _in_transaction(self, work: Callable[[], T]) -> T:
        """Run `work` in one transaction: DDL included, so nothing of a failed step is left behind."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = work()
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        return result

    # -- reads ----------------------------------------------------------------------------------------

    def published_dates(self) -> list[date]:
        rows = self.con.execute(
            "SELECT DISTINCT run_date FROM runs WHERE status = ? ORDER BY run_date", [PUBLISHED]
        ).fetchall()
        return [r[0] for r in rows]

    def latest(self, user_id: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """The latest published recommendations, by user then rank; `limit` caps the number of rows."""
        return self.con.execute(
            "SELECT * FROM latest_recommendations WHERE (? IS NULL OR user_id = ?) "
            "ORDER BY user_id, rank LIMIT ?",
            [user_id, user_id, limit],
        ).df()

    def runs(self, limit: int = 20) -> pd.DataFrame:
        """The most recent runs first, with the JSON columns parsed back into dicts."""
        frame = self.con.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?",
            [limit],
        ).df()
        for name in JSON_FIELDS:
            frame[name] = [json.loads(v) if isinstance(v, str) else v for v in frame[name]]
        return frame
