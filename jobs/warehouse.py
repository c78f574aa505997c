"""The warehouse: where a night's top-K recommendations are published and every run is logged.

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

Two backends, one contract. `WarehouseBase` holds everything they share (column checks, the Arrow row types,
JSON handling, the status rules, the DDL and the read queries); `Warehouse` (here) is a DuckDB file and
`PostgresWarehouse` (jobs/warehouse_postgres.py) a schema in a PostgreSQL database. `open_warehouse` picks one
from the configured target, so the flow and the CLI never name a backend.

DuckDB allows one read-write process per file: the nightly flow is the only writer; dashboards and other
processes open the file with `read_only=True`, which works whenever no writer holds it.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from jobs.reliability import fault_point
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
    "rejected_rows",
)
POSTGRES_SCHEMES = ("postgresql", "postgres")
MASK = "***"

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
    rejected_rows: int = 0  # input rows quarantined to <run_dir>/rejected/ (jobs/quarantine.py)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run status {self.status!r} is not one of {STATUSES}")


# -- targets and credentials ------------------------------------------------------------------------------


def is_postgres_url(target: str) -> bool:
    return urlsplit(target).scheme in POSTGRES_SCHEMES


def redact(target: str) -> str:
    """`target` with any password masked, for every message, repr and log line that shows a warehouse URL.

    Covers both places a libpq URL can carry one: `user:password@host` and a `password=` query parameter.
    Anything that is not a URL (a DuckDB path) comes back unchanged.
    """
    parts = urlsplit(target)
    if not parts.scheme or not parts.netloc and not parts.query:
        return target
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    query = "&".join(
        f"{key}={MASK}" if unquote(key) == "password" else item
        for item in parts.query.split("&")
        for key in [item.partition("=")[0]]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def open_warehouse(target: str, read_only: bool = False, password_block: str | None = None) -> WarehouseBase:
    """Open the configured warehouse: a `postgresql://` (or `postgres://`) URL or a DuckDB file path.

    For PostgreSQL the password comes from the Prefect Secret block `password_block` when one is named, else
    from NIGHTREC_WAREHOUSE_PASSWORD, else from libpq itself (PGPASSWORD, ~/.pgpass) or the URL.
    """
    if is_postgres_url(target):
        from jobs.warehouse_postgres import PostgresWarehouse  # psycopg is needed only for this backend

        return PostgresWarehouse(target, read_only=read_only, password_block=password_block)
    if password_block is not None:
        raise ValueError(f"a password block is for a PostgreSQL warehouse, and {target!r} is a DuckDB file")
    return Warehouse(target, read_only=read_only)


# -- the published rows: names and types --------------------------------------------------------------


def quote_column(column: str) -> str:
    """Quote a column whose name (or task name, for p_<task>) passes check_identifier.

    Nothing else reaches SQL text. The task name is checked rather than the column, because the prefix
    may take a valid 40-character task name past the identifier length limit.
    """
    check_identifier(column.removeprefix(PROBABILITY_PREFIX))
    return f'"{column}"'


def task_columns_for(task_names: Sequence[str]) -> list[str]:
    """The p_<task> columns of these tasks, after checking each name is a safe, unique identifier."""
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"task names must be unique: {list(task_names)}")
    return [probability_column(check_identifier(t)) for t in task_names]


def column_names(recs: pa.Table | pd.DataFrame) -> list[str]:
    if isinstance(recs, pa.Table):
        return list(recs.column_names)
    if isinstance(recs, pd.DataFrame):
        return [str(c) for c in recs.columns]
    raise TypeError(f"recommendations must be a pyarrow.Table or pandas.DataFrame, not {type(recs).__name__}")


def check_columns(columns: list[str], declared_tasks: list[str] | None = None) -> list[str]:
    """Return the task columns of a published frame after checking it has exactly the expected columns.

    `declared_tasks` (p_<task> columns) are required when given; otherwise the frame's own p_* columns are
    taken, after checking their task names.
    """
    if len(set(columns)) != len(columns):
        raise ValueError(f"recommendations have duplicate columns: {columns}")
    base = {*LEADING_COLUMNS, *TRAILING_COLUMNS}
    if declared_tasks is not None:
        task_columns = declared_tasks
    else:
        task_columns = [c for c in columns if c not in base and c.startswith(PROBABILITY_PREFIX)]
        task_columns_for([c.removeprefix(PROBABILITY_PREFIX) for c in task_columns])  # validates the names
    expected = base | set(task_columns)
    missing, extra = sorted(expected - set(columns)), sorted(set(columns) - expected)
    if missing or extra:
        raise ValueError(f"recommendations columns do not match: missing {missing}, unexpected {extra}")
    return task_columns


def arrow_schema(task_columns: Sequence[str]) -> pa.Schema:
    """The published row types, shared by every backend and the Parquet output (docs/warehouse.md)."""
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("rank", pa.int32()),
            ("item_id", pa.string()),
            ("score", pa.float64()),
            *[(c, pa.float64()) for c in task_columns],
            ("model_version", pa.string()),
            ("generated_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def published_table(recs: pa.Table | pd.DataFrame, task_columns: Sequence[str]) -> pa.Table:
    """`recs` as Arrow with the contract's column order and types.

    A pandas NaN becomes NULL, a naive `generated_at` is taken as UTC, and every backend and file receives the
    same values: a float32 score or an int64 rank load alike into DuckDB, PostgreSQL and Parquet. Casts are
    safe (a fractional rank or an out-of-range value fails) except that sub-microsecond time is truncated.
    """
    table = recs if isinstance(recs, pa.Table) else pa.Table.from_pandas(recs, preserve_index=False)
    schema = arrow_schema(task_columns)
    arrays = []
    for target in schema:
        column = table.column(target.name)
        options = pc.CastOptions(target.type, allow_time_truncate=pa.types.is_timestamp(target.type))
        arrays.append(column if column.type == target.type else pc.cast(column, options=options))
    return pa.Table.from_arrays(arrays, schema=schema)


def _plain_json(value: Any) -> Any:
    """Make metrics JSON-safe: numpy scalars to Python, NaN/inf to null (both databases' JSON rejects NaN)."""
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


# -- the shared warehouse -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """What differs in the SQL text of the two backends: table qualification, placeholders, the JSON type."""

    prefix: str  # '' or '"<schema>".', built only from a checked identifier
    param: str  # '?' (DuckDB) or '%s' (psycopg)
    json_type: str  # JSON (DuckDB) or JSONB (PostgreSQL)

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"


class WarehouseBase(ABC):
    """The warehouse API and every rule of it; subclasses supply a connection and the backend's bulk load.

    Use as a context manager so the connection (and DuckDB's file lock) is released.
    """

    dialect: Dialect
    target: str  # what reprs and messages show: the path, or the URL with any password masked
    schema: str  # where the tables are: DuckDB's `main`, or the PostgreSQL schema
    read_only: bool
    # Task columns declared by ensure_schema on this connection: publish then insists on exactly these.
    _declared_tasks: list[str] | None = None

    # The DB-API style connection of the backend (duckdb or psycopg); None once closed.
    _con: Any = None

    @property
    def con(self) -> Any:
        if self._con is None:
            raise RuntimeError("the warehouse connection is closed")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, list(params))

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    # -- backend hooks ----------------------------------------------------------------------------------

    @abstractmethod
    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame: ...

    @abstractmethod
    def _in_transaction(self, work: Callable[[], T]) -> T:
        """Run `work` in one transaction: DDL included, so nothing of a failed step is left behind."""

    @abstractmethod
    def _staged(self, rows: pa.Table) -> AbstractContextManager[Any]:
        """Make `rows` available to `_replace_rows`, which gets what this yields."""

    @abstractmethod
    def _replace_rows(self, run_date: date, source: Any, columns: list[str]) -> int:
        """Delete the date's rows and insert the staged ones, inside the caller's transaction."""

    @abstractmethod
    def _lock_date(self, run_date: date) -> None:
        """Keep two publishers of one date from interleaving, until the transaction ends."""

    def _create_schema(self, task_columns: list[str]) -> None:
        """Idempotent DDL; runs inside the caller's transaction so a failed publish also undoes it."""
        for statement in self._schema_statements(task_columns):
            self._execute(statement)

    # -- public API -------------------------------------------------------------------------------------

    def __enter__(self) -> WarehouseBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, read_only={self.read_only})"

    def ensure_schema(self, task_names: list[str]) -> None:
        """Create the tables and view if missing and add a column for each new task (additive only)."""
        columns = task_columns_for(task_names)
        self._in_transaction(lambda: self._create_schema(columns))
        self._declared_tasks = columns

    def record_run(self, run: RunRecord) -> None:
        """Insert or update the run's log row. Never touches recommendations.

        Only `publish` may mark a run published (the view trusts that status to mean "rows committed"), so
        'published' is accepted here only to update a run that publish already marked.
        """

        def write() -> None:
            self._create_schema([])
            if run.status == PUBLISHED:
                rows = self.fetch(
                    f"SELECT status FROM {self.dialect.table('runs')} WHERE run_id = {self.dialect.param}",
                    [run.run_id],
                )
                if not rows or rows[0][0] != PUBLISHED:
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
        task_columns = check_columns(column_names(recs), self._declared_tasks)
        if len(recs) == 0:
            raise ValueError(f"refusing to publish an empty set for {run_date}: it would blank the date out")
        rows = published_table(recs, task_columns)
        published = replace(run, status=PUBLISHED, finished_at=run.finished_at or datetime.now(UTC))

        with self._staged(rows) as source:

            def write() -> int:
                self._lock_date(run_date)
                self._create_schema(task_columns)
                inserted = self._replace_rows(run_date, source, rows.column_names)
                fault_point("publish:after-insert")
                self._upsert_run(published)
                fault_point("publish:before-commit")
                return inserted

            return self._in_transaction(write)

    def published_dates(self) -> list[date]:
        """The dates with a published run, oldest first; none in a warehouse nothing was written to yet."""
        d = self.dialect
        if not self.fetch(
            f"SELECT 1 FROM information_schema.tables WHERE table_schema = {d.param} AND table_name = 'runs'",
            [self.schema],
        ):
            return []
        rows = self.fetch(
            f"SELECT DISTINCT run_date FROM {d.table('runs')} WHERE status = {d.param} ORDER BY run_date",
            [PUBLISHED],
        )
        return [r[0] for r in rows]

    def latest(self, user_id: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """The latest published recommendations, by user then rank; `limit` caps the number of rows."""
        d = self.dialect
        return self._frame(
            f"SELECT * FROM {d.table('latest_recommendations')} "
            f"WHERE (CAST({d.param} AS VARCHAR) IS NULL OR user_id = {d.param}) "
            f"ORDER BY user_id, rank LIMIT {d.param}",
            [user_id, user_id, limit],
        )

    def runs(self, limit: int = 20) -> pd.DataFrame:
        """The most recent runs first, with the JSON columns parsed back into dicts."""
        d = self.dialect
        frame = self._frame(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM {d.table('runs')} "
            f"ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT {d.param}",
            [limit],
        )
        for name in JSON_FIELDS:
            frame[name] = [json.loads(v) if isinstance(v, str) else v for v in frame[name]]
        return frame

    def recommendations_for(self, run_date: date) -> pd.DataFrame:
        """The published rows of one run date (whether or not it is the latest), by user then rank."""
        d = self.dialect
        return self._frame(
            f"SELECT * FROM {d.table('recommendations')} WHERE run_date = {d.param} ORDER BY user_id, rank",
            [run_date],
        )

    def query(self, sql: str) -> pd.DataFrame:
        """Any read of your own, as a DataFrame (for checks and ad-hoc inspection: the tables are unqualified)."""
        return self._frame(sql)

    # -- shared SQL -------------------------------------------------------------------------------------

    def _schema_statements(self, task_columns: list[str]) -> list[str]:
        d = self.dialect
        statuses = ", ".join(f"'{s}'" for s in STATUSES)
        json_columns = ",\n".join(f"{name} {d.json_type}" for name in JSON_FIELDS)
        return [
            f"""
            CREATE TABLE IF NOT EXISTS {d.table("runs")} (
                run_id VARCHAR PRIMARY KEY,
                run_date DATE NOT NULL,
                status VARCHAR NOT NULL CHECK (status IN ({statuses})),
                model_version VARCHAR,
                started_at TIMESTAMPTZ,
                finished_at TIMESTAMPTZ,
                {json_columns},
                error VARCHAR
            )
            """,
            # Added after the first release: ALTER, so a warehouse created before gets it too (NULL there).
            f"ALTER TABLE {d.table('runs')} ADD COLUMN IF NOT EXISTS rejected_rows BIGINT",
            f"""
            CREATE TABLE IF NOT EXISTS {d.table("recommendations")} (
                run_date DATE NOT NULL,
                user_id VARCHAR NOT NULL,
                rank INTEGER NOT NULL CHECK (rank >= 1),
                item_id VARCHAR NOT NULL,
                score DOUBLE PRECISION,
                model_version VARCHAR,
                generated_at TIMESTAMPTZ,
                PRIMARY KEY (run_date, user_id, rank)
            )
            """,
            *[
                f"ALTER TABLE {d.table('recommendations')} ADD COLUMN IF NOT EXISTS {quote_column(c)} DOUBLE PRECISION"
                for c in task_columns
            ],
            f"""
            CREATE OR REPLACE VIEW {d.table("latest_recommendations")} AS
            SELECT * FROM {d.table("recommendations")}
            WHERE run_date = (SELECT max(run_date) FROM {d.table("runs")} WHERE status = '{PUBLISHED}')
            """,
        ]

    def _upsert_run(self, run: RunRecord) -> None:
        d = self.dialect
        values = [_to_json(getattr(run, c)) if c in JSON_FIELDS else getattr(run, c) for c in RUN_COLUMNS]
        placeholders = ", ".join(
            f"CAST({d.param} AS {d.json_type})" if c in JSON_FIELDS else d.param for c in RUN_COLUMNS
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS if c != "run_id")
        self._execute(
            f"INSERT INTO {d.table('runs')} ({', '.join(RUN_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}",
            values,
        )


class Warehouse(WarehouseBase):
    """A DuckDB warehouse file."""

    dialect = Dialect(prefix="", param="?", json_type="JSON")
    schema = "main"

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        if read_only and created:
            raise FileNotFoundError(f"no warehouse at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.target = str(self.path)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(str(self.path), read_only=read_only)
        if created:
            self.path.chmod(0o600)  # it holds every user's recommendations: the owner (and SQL readers) only
        # Naive timestamps are taken as UTC and TIMESTAMPTZ values come back in UTC, whatever the host's zone.
        self._con.execute("SET TimeZone = 'UTC'")

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.con.execute(sql, list(params)).df()

    def _in_transaction(self, work: Callable[[], T]) -> T:
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = work()
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        return result

    def _lock_date(self, run_date: date) -> None:
        """Nothing to do: DuckDB lets one process at a time open the file read-write."""

    @contextmanager
    def _staged(self, rows: pa.Table) -> Iterator[str]:
        # Registered outside the transaction: an aborted transaction refuses every call until the ROLLBACK.
        self.con.register(_INPUT_VIEW, rows)
        try:
            yield _INPUT_VIEW
        finally:
            self.con.unregister(_INPUT_VIEW)

    def _replace_rows(self, run_date: date, source: str, columns: list[str]) -> int:
        column_list = ", ".join(quote_column(c) for c in columns)
        self._execute("DELETE FROM recommendations WHERE run_date = ?", [run_date])
        row = self.con.execute(
            f"INSERT INTO recommendations (run_date, {column_list}) "
            f"SELECT CAST(? AS DATE), {column_list} FROM {source}",
            [run_date],
        ).fetchone()
        return int(row[0]) if row else 0
