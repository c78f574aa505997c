"""The warehouse in PostgreSQL: the same tables, view and rules as the DuckDB file, in one schema.

The target is a libpq URL without a password, with the schema as an extra query parameter:
`postgresql://nightrec@db.internal:5432/analytics?schema=recs&sslmode=require` (default schema `public`).
The password comes from a Prefect Secret block (`password_block`), else NIGHTREC_WAREHOUSE_PASSWORD, else
libpq's own sources (PGPASSWORD, ~/.pgpass). A URL that does carry one still works, but every message and
repr shows the URL through `redact`, and the password is never written to a table.

Why the publish looks the way it does:

- Rows arrive with `COPY ... FROM STDIN` (CSV written by Arrow, in chunks) into a temporary table that
  lives only for the transaction; then DELETE the date, INSERT ... SELECT from the stage, upsert the run row,
  COMMIT. Readers keep seeing the previous rows until the COMMIT (MVCC), and a failure anywhere rolls back
  everything, DDL included.
- `pg_advisory_xact_lock(<schema key>, <run date>)` first: a second publisher of the same date waits until the
  first commits, then replaces its rows, so two sets never interleave. Other dates do not wait.
- DDL only when the catalog says something is missing (ALTER TABLE and CREATE OR REPLACE VIEW take locks that
  would block every reader for the whole publish), serialized by a schema-wide advisory lock because
  concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL. A schema that already exists is not
  created again, so a role with rights on the schema alone (no CREATE on the database) can publish.
- The connection runs in autocommit between transactions, so a reader never sits idle in a transaction
  holding locks that a publisher's ALTER TABLE would wait for.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg.postgres import types as pg_types

from jobs.warehouse import (
    LEADING_COLUMNS,
    MASK,
    RUN_COLUMNS,
    TRAILING_COLUMNS,
    Dialect,
    WarehouseBase,
    quote_column,
    redact,
)
from nightrec.config import check_identifier

PASSWORD_ENV = "NIGHTREC_WAREHOUSE_PASSWORD"
DEFAULT_SCHEMA = "public"
STAGE = "nightrec_stage"
COPY_CHUNK_ROWS = 100_000

_DATE_OID = pg_types["date"].oid
_TIMESTAMPTZ_OID = pg_types["timestamptz"].oid
_TABLE_COLUMNS = ("run_date", *LEADING_COLUMNS, *TRAILING_COLUMNS)

T = TypeVar("T")


def split_schema(url: str) -> tuple[str, str]:
    """Take the `schema` parameter out of the URL (libpq would reject it) and check the name.

    Returns the URL libpq gets and the schema. Other query parameters pass through untouched.
    """
    parts = urlsplit(url)
    kept, schemas = [], []
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        if unquote(key) == "schema":
            schemas.append(unquote(value))
        else:
            kept.append(item)
    if len(schemas) > 1:
        raise ValueError(f"{redact(url)} names more than one schema")
    schema = check_identifier(schemas[0]) if schemas else DEFAULT_SCHEMA
    return urlunsplit(parts._replace(query="&".join(kept))), schema


def resolve_password(password_block: str | None) -> str | None:
    """The password from the named Prefect Secret block, else from NIGHTREC_WAREHOUSE_PASSWORD.

    None leaves it to libpq (the URL, PGPASSWORD, ~/.pgpass).
    """
    if password_block:
        from prefect.blocks.system import Secret

        value = Secret.load(password_block).get()
        if not isinstance(value, str) or not value:
            raise ValueError(f"Secret block {password_block!r} does not hold a password string")
        return value
    return os.environ.get(PASSWORD_ENV) or None


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Mask the secrets in a driver message, in whichever spelling (raw or URL-encoded) they appear."""
    for secret in secrets:
        for spelling in {secret, quote(secret, safe=""), unquote(secret)}:
            text = text.replace(spelling, MASK)
    return text


def _ident(name: str) -> str:
    """Quote a schema name after checking it: nothing unchecked reaches SQL text."""
    return f'"{check_identifier(name)}"'


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _csv_chunks(rows: pa.Table) -> Iterator[bytes]:
    """The rows as CSV for COPY: strings quoted, NULL unquoted-empty (PostgreSQL's CSV reading of both)."""
    options = pacsv.WriteOptions(include_header=False)
    for batch in rows.to_batches(max_chunksize=COPY_CHUNK_ROWS):
        sink = io.BytesIO()
        pacsv.write_csv(batch, sink, options)
        yield sink.getvalue()


class PostgresWarehouse(WarehouseBase):
    """A warehouse schema in a PostgreSQL database (psycopg 3)."""

    def __init__(self, url: str, read_only: bool = False, password_block: str | None = None) -> None:
        conninfo, self.schema = split_schema(url)
        self.target = redact(url)
        self.read_only = read_only
        self.dialect = Dialect(prefix=f"{_ident(self.schema)}.", param="%s", json_type="JSONB")
        # Advisory locks are per database: the schema keeps two warehouses in one database independent.
        self._lock_space = _signed32(zlib.crc32(f"nightrec:{self.schema}".encode()))
        password = resolve_password(password_block)
        secrets = [s for s in (password, urlsplit(url).password) if s]
        try:
            con = psycopg.connect(conninfo, autocommit=True, **({"password": password} if password else {}))
        except psycopg.Error as exc:
            # The driver's message is rewritten and its chain dropped: nothing of it may carry the secret.
            raise ConnectionError(
                f"cannot connect to the warehouse {self.target}: {_scrub(str(exc), secrets)}"
            ) from None
        self._con: psycopg.Connection | None = con
        # Timestamps come back in UTC and naive ones are taken as UTC, as in DuckDB; the schema is first on
        # the search path so `query` and a consumer of `con` can use the table names alone.
        con.execute("SET TIME ZONE 'UTC'")
        con.execute(f"SET search_path TO {_ident(self.schema)}")
        if read_only:
            con.execute("SET default_transaction_read_only = on")

    # -- backend hooks ----------------------------------------------------------------------------------

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """A DataFrame with DuckDB's dtypes for dates and timestamps (datetime64, UTC for TIMESTAMPTZ)."""
        with self.con.cursor() as cur:
            cur.execute(sql, list(params))
            description = cur.description or []
            frame = pd.DataFrame.from_records(cur.fetchall(), columns=[c.name for c in description])
        for column in description:
            if column.type_code == _DATE_OID:
                frame[column.name] = pd.to_datetime(frame[column.name])
            elif column.type_code == _TIMESTAMPTZ_OID:
                frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
        return frame

    def _in_transaction(self, work: Callable[[], T]) -> T:
        with self.con.transaction():
            return work()

    @contextmanager
    def _staged(self, rows: pa.Table) -> Iterator[pa.Table]:
        # COPY must run inside the publish transaction (the stage is dropped at its end): nothing to do here.
        yield rows

    def _lock_date(self, run_date: date) -> None:
        self._execute(
            "SELECT pg_advisory_xact_lock(CAST(%s AS INTEGER), CAST(%s AS INTEGER))",
            [self._lock_space, run_date.toordinal()],
        )

    def _create_schema(self, task_columns: list[str]) -> None:
        if self._schema_is_complete(task_columns):
            return
        self._execute("SELECT pg_advisory_xact_lock(CAST(%s AS INTEGER), 0)", [self._lock_space])
        if not self.fetch("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]):
            self._execute(f"CREATE SCHEMA {_ident(self.schema)}")
        super()._create_schema(task_columns)

    def _schema_is_complete(self, task_columns: list[str]) -> bool:
        """Whether both tables, every column and an up-to-date view exist, read from the catalog."""
        columns: dict[str, set[str]] = defaultdict(set)
        for table, column in self.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
            [self.schema],
        ):
            columns[table].add(column)
        recommendations = columns["recommendations"]
        return (
            columns["runs"] >= set(RUN_COLUMNS)
            and recommendations >= {*_TABLE_COLUMNS, *task_columns}
            and columns["latest_recommendations"] == recommendations
        )

    def _replace_rows(self, run_date: date, source: pa.Table, columns: list[str]) -> int:
        column_list = ", ".join(quote_column(c) for c in columns)
        table = self.dialect.table("recommendations")
        # Same column types as the target, none of its constraints: a bad row fails the INSERT below.
        self._execute(
            f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {column_list} FROM {table} WITH NO DATA"
        )
        with self.con.cursor() as cur:
            with cur.copy(f"COPY pg_temp.{STAGE} ({column_list}) FROM STDIN (FORMAT csv)") as copy:
                for chunk in _csv_chunks(source):
                    copy.write(chunk)
            cur.execute(f"DELETE FROM {table} WHERE run_date = %s", [run_date])
            cur.execute(
                f"INSERT INTO {table} (run_date, {column_list}) "
                f"SELECT CAST(%s AS DATE), {column_list} FROM pg_temp.{STAGE}",
                [run_date],
            )
            return cur.rowcount
