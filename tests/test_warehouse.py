"""The warehouse contract, run against both backends: a real DuckDB file and a real PostgreSQL schema.

Atomic publishes, the latest view, idempotent reruns, additive schema, name checks and exact round trips hold
for both, so each test here takes the `backend` fixture and runs twice. The PostgreSQL server is the one at
127.0.0.1:5432 (or $NIGHTREC_TEST_POSTGRES_URL), else a throwaway one started from Debian's packages; the
PostgreSQL runs are skipped, with the reason, when neither is available. Each PostgreSQL test gets its own
schema, dropped afterwards. PostgreSQL-only behaviour (credentials, concurrency) is in
test_warehouse_postgres.py, which takes the server and the frame builders from here.
"""

from __future__ import annotations

import atexit
import functools
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.warehouse import RunRecord, Warehouse, WarehouseBase, open_warehouse

REPO = Path(__file__).resolve().parents[1]
D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
GENERATED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
POSTGRES_URL_ENV = "NIGHTREC_TEST_POSTGRES_URL"


def recs(users=("u1", "u2"), k=2, tasks=("click",), item_prefix="i", model="m1") -> pd.DataFrame:
    rows = []
    for u in users:
        for rank in range(1, k + 1):
            row = {"user_id": u, "rank": rank, "item_id": f"{item_prefix}{rank}", "score": 1.0 / rank}
            row.update({f"p_{t}": 0.5 / rank for t in tasks})
            row.update({"model_version": model, "generated_at": GENERATED})
            rows.append(row)
    return pd.DataFrame(rows)


def run(run_id: str, day: date, status: str = "running", **kw) -> RunRecord:
    return RunRecord(run_id, day, status, "m1", datetime(2026, 11, 22, 2, 0, tzinfo=UTC), **kw)


# -- a PostgreSQL server for the tests ---------------------------------------------------------------------


def _answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_postgres() -> tuple[str | None, str]:
    """Start a throwaway server on a free loopback port from Debian's packages: (admin URL, or a reason)."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not initdbs:
        return None, "no PostgreSQL server answers at 127.0.0.1:5432 and none is installed to start one"
    bindir = Path(initdbs[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="nightrec-pg-"))
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no postgres user to run initdb as"
        os.chown(home, account.pw_uid, account.pw_gid)
        user = "postgres"
    data, port = home / "data", _free_port()
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        for command in (
            [bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            [bindir / "pg_ctl", "-D", data, "-l", home / "log", "-o", options, "-w", "start"],
        ):
            subprocess.run(command, user=user, check=True, capture_output=True, text=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(home, ignore_errors=True)
        return None, f"could not start a PostgreSQL server from {bindir}: {getattr(exc, 'stderr', '') or exc}"
    stop = [bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"]
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    atexit.register(subprocess.run, stop, user=user, capture_output=True, timeout=60)
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as con:
        con.execute("CREATE DATABASE test")
    return f"postgresql://postgres@127.0.0.1:{port}/test", ""


@functools.cache
def _find_postgres() -> tuple[str | None, str]:
    if os.environ.get(POSTGRES_URL_ENV):
        url = os.environ[POSTGRES_URL_ENV]
        return (url, "") if _answers(url) else (None, f"{POSTGRES_URL_ENV} is set but nothing answers there")
    for user in ("postgres", pwd.getpwuid(os.getuid()).pw_name):
        url = f"postgresql://{user}@127.0.0.1:5432/test"
        if _answers(url):
            return url, ""
    return _start_postgres()


def require_postgres() -> str:
    """An admin URL (superuser, database `test`) of a PostgreSQL server, or the calling test is skipped."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    url, reason = _find_postgres()
    if url is None:
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return require_postgres()


@contextmanager
def scratch_schema(admin_url: str) -> Iterator[str]:
    """A unique schema name, dropped with everything in it afterwards."""
    import psycopg

    name = f"nightrec_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# -- the two backends ------------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    target: str
    integrity_error: type[Exception]

    def open(self, **kw) -> WarehouseBase:
        return open_warehouse(self.target, **kw)


@pytest.fixture(params=["duckdb", "postgres"])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "duckdb":
        yield Backend("duckdb", str(tmp_path / "nested" / "wh.duckdb"), duckdb.ConstraintException)
        return
    admin = request.getfixturevalue("postgres_url")
    import psycopg

    with scratch_schema(admin) as schema:
        yield Backend("postgres", f"{admin}?schema={schema}", psycopg.errors.IntegrityError)


@pytest.fixture
def wh(backend) -> Iterator[WarehouseBase]:
    with backend.open() as w:
        yield w


def tables(wh: WarehouseBase) -> dict[str, str]:
    frame = wh.query(
        f"SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = '{wh.schema}'"
    )
    return dict(zip(frame.table_name, frame.table_type, strict=True))


# -- the contract ----------------------------------------------------------------------------------------


def test_publish_creates_tables_and_view_with_readable_rows(wh):
    assert wh.published_dates() == []  # an empty warehouse answers, before any table exists
    metrics = {"auc": {"click": 0.71, "purchase": float("nan")}, "loss": np.float32(0.5), "epochs": 3}
    n = wh.publish(D1, recs(), run("r1", D1, metrics=metrics, row_counts={"recs": 4}))

    assert n == 4
    assert tables(wh) == {
        "latest_recommendations": "VIEW",
        "recommendations": "BASE TABLE",
        "runs": "BASE TABLE",
    }
    latest = wh.latest()
    assert list(latest.columns) == [
        "run_date", "user_id", "rank", "item_id", "score", "model_version", "generated_at", "p_click"
    ]  # fmt: skip
    assert latest[["user_id", "rank", "item_id"]].values.tolist() == [
        ["u1", 1, "i1"], ["u1", 2, "i2"], ["u2", 1, "i1"], ["u2", 2, "i2"]
    ]  # fmt: skip
    assert latest.p_click.tolist() == [0.5, 0.25, 0.5, 0.25]
    assert set(latest.run_date.dt.date) == {D1}
    assert (latest.generated_at == pd.Timestamp(GENERATED)).all()
    assert wh.latest(user_id="u2", limit=1)[["user_id", "rank"]].values.tolist() == [["u2", 1]]

    runs = wh.runs()
    assert runs.run_id.tolist() == ["r1"] and runs.status.tolist() == ["published"]
    assert runs.finished_at.notna().all()  # publish stamps the finish when the caller did not
    assert runs.metrics[0] == {"auc": {"click": 0.71, "purchase": None}, "loss": 0.5, "epochs": 3}
    assert runs.row_counts[0] == {"recs": 4}
    assert wh.published_dates() == [D1]


def test_values_round_trip_exactly(wh):
    """Awkward strings, NULL versus empty, float edges and naive timestamps survive the bulk load unchanged."""
    users = ["a,b", 'q"uote', "new\nline", "back\\slash", "ünï😀", " pad ", "NULL", "\\N"]
    frame = pd.DataFrame(
        {
            "user_id": users,
            "rank": np.arange(1, len(users) + 1, dtype=np.int64),
            "item_id": ["i"] * len(users),
            "score": np.array([0.1, 1e-300, -2.5, np.inf, 1 / 3, 0.0, 7.0, np.nan], dtype=np.float64),
            "p_click": np.array([0.1] * len(users), dtype=np.float32),  # widened as DuckDB would
            "model_version": ["", None, "m", "m", "m", "m", "m", "m"],
            "generated_at": [datetime(2026, 11, 22, 3, 0, 0, 123456)] * len(users),  # naive: taken as UTC
        }
    )
    wh.publish(D1, frame, run("r1", D1))

    back = wh.query("SELECT * FROM recommendations ORDER BY rank")
    assert back.user_id.tolist() == users
    assert back.score.tolist()[:7] == [0.1, 1e-300, -2.5, np.inf, 1 / 3, 0.0, 7.0]
    assert pd.isna(back.score.iloc[7])  # a pandas NaN is a missing value: NULL
    assert back.p_click.tolist() == [float(np.float32(0.1))] * len(users)
    assert back.model_version.tolist()[:2] == ["", None]
    assert (back.generated_at == pd.Timestamp("2026-11-22 03:00:00.123456", tz="UTC")).all()


def test_latest_is_the_newest_published_date_not_the_last_written(wh):
    wh.publish(D1, recs(item_prefix="a"), run("r1", D1))
    wh.publish(D2, pa.Table.from_pandas(recs(item_prefix="b")), run("r2", D2))  # Arrow works too
    assert set(wh.latest().item_id) == {"b1", "b2"}

    wh.publish(D1, recs(item_prefix="c"), run("r1-backfill", D1))  # a backfill of an older date
    assert set(wh.latest().run_date.dt.date) == {D2}
    assert wh.published_dates() == [D1, D2]


def test_rerun_with_same_rows_is_idempotent_and_different_rows_replace(wh):
    wh.publish(D1, recs(), run("r1", D1))
    wh.publish(D2, recs(users=("u9",)), run("r2", D2))
    everything = "SELECT * FROM recommendations ORDER BY run_date, user_id, rank"
    before = wh.query(everything)

    wh.publish(D1, recs(), run("r3", D1))
    pd.testing.assert_frame_equal(wh.query(everything), before)

    assert wh.publish(D1, recs(users=("u3",), k=3, item_prefix="z"), run("r4", D1)) == 3
    d1 = wh.query("SELECT user_id, item_id FROM recommendations WHERE run_date = DATE '2026-11-20'")
    assert sorted(d1.itertuples(index=False, name=None)) == [("u3", "z1"), ("u3", "z2"), ("u3", "z3")]
    assert len(wh.query("SELECT * FROM recommendations WHERE run_date = DATE '2026-11-21'")) == 2


def _null_user(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[3, "user_id"] = None
    return frame


def _duplicate_rank(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[3, "rank"] = 1
    return frame


@pytest.mark.parametrize("spoil", [_null_user, _duplicate_rank])
def test_failed_publish_rolls_back_rows_schema_view_and_runs(wh, backend, spoil):
    wh.publish(D1, recs(), run("r1", D1))
    wh.record_run(run("r2", D1))  # the rerun of the same date, logged as running
    rows_before = wh.query("SELECT * FROM recommendations ORDER BY user_id, rank")
    runs_before = wh.runs()

    # The bad frame also brings a new task: the column added inside the transaction must go too. The
    # INSERT fails after the DELETE of the date's rows: the rollback must bring them back.
    bad = spoil(recs(users=("u1", "u2"), tasks=("click", "purchase"), item_prefix="new"))
    with pytest.raises(backend.integrity_error):
        wh.publish(D1, bad, run("r2", D1))

    rows_after = wh.query("SELECT * FROM recommendations ORDER BY user_id, rank")
    pd.testing.assert_frame_equal(rows_after, rows_before)
    pd.testing.assert_frame_equal(wh.latest(), rows_before)
    pd.testing.assert_frame_equal(wh.runs(), runs_before)
    assert runs_before.set_index("run_id").status.to_dict() == {"r1": "published", "r2": "running"}
    assert wh.publish(D1, recs(item_prefix="ok"), run("r2", D1)) == 4  # the connection is usable again


def test_failed_or_running_newer_date_does_not_change_latest(wh):
    wh.publish(D1, recs(), run("r1", D1))
    wh.record_run(run("r2", D2, status="failed", error="validation failed: label rate", metrics={"rows": 0}))
    wh.record_run(run("r3", D3))
    # Rows of a date with no published run (say, a writer still at work): the data table's newest date.
    wh.con.execute(
        "INSERT INTO recommendations (run_date, user_id, rank, item_id) VALUES (DATE '2026-11-22', 'u', 1, 'x')"
    )

    assert set(wh.latest().run_date.dt.date) == {D1}
    assert wh.published_dates() == [D1]
    statuses = wh.runs().set_index("run_id").status.to_dict()
    assert statuses == {"r1": "published", "r2": "failed", "r3": "running"}


def test_record_run_upserts_and_only_publish_marks_published(wh):
    wh.record_run(run("r1", D1))
    wh.record_run(run("r1", D1, status="failed", error="boom", step_timings={"features": 1.5}))
    runs = wh.runs()
    assert runs[["run_id", "status", "error"]].values.tolist() == [["r1", "failed", "boom"]]
    assert runs.step_timings[0] == {"features": 1.5}
    assert wh.query("SELECT count(*) AS n FROM recommendations").n[0] == 0

    with pytest.raises(ValueError, match="only be marked published by Warehouse.publish"):
        wh.record_run(run("r1", D1, status="published"))
    wh.publish(D1, recs(), run("r1", D1))
    wh.record_run(run("r1", D1, status="published", step_timings={"publish": 0.2}))  # metadata update
    assert wh.runs().step_timings[0] == {"publish": 0.2}
    with pytest.raises(ValueError, match="status 'done'"):
        run("r9", D1, status="done")


def test_new_task_column_is_additive(wh):
    wh.publish(D1, recs(tasks=("click",)), run("r1", D1))
    wh.publish(D2, recs(tasks=("click", "purchase")), run("r2", D2))
    wh.publish(D3, recs(tasks=("click",)), run("r3", D3))  # a task dropped later: its column stays, NULL

    cols = wh.query("SELECT * FROM recommendations LIMIT 0").columns.tolist()
    assert cols[-2:] == ["p_click", "p_purchase"]
    by_date = wh.query(
        "SELECT count(p_click) AS c, count(p_purchase) AS p FROM recommendations "
        "GROUP BY run_date ORDER BY run_date"
    )
    assert by_date[["c", "p"]].values.tolist() == [[4, 0], [4, 4], [4, 0]]
    assert wh.latest().columns.tolist()[-2:] == ["p_click", "p_purchase"]


def test_longest_task_name_is_accepted(wh):
    task = "t" * 40  # the longest name the config accepts; its column p_<task> is longer than that
    assert wh.publish(D1, recs(tasks=(task,)), run("r1", D1)) == 4
    assert f"p_{task}" in wh.latest().columns


@pytest.mark.parametrize("name", ['click" DOUBLE); DROP TABLE runs; --', "Click", "1click", "a-b"])
def test_invalid_task_name_is_rejected_before_any_sql(backend, name):
    with backend.open() as wh:
        with pytest.raises(ValueError, match="must match"):
            wh.ensure_schema(["click", name])
        frame = recs().assign(**{f"p_{name}": 0.1})
        with pytest.raises(ValueError, match="must match"):
            wh.publish(D1, frame, run("r1", D1))
        assert tables(wh) == {}


def test_frame_must_have_exactly_the_expected_columns(wh):
    with pytest.raises(ValueError, match=r"missing \['score'\], unexpected \['extra'\]"):
        wh.publish(D1, recs().drop(columns="score").assign(extra=1), run("r1", D1))
    wh.ensure_schema(["click", "purchase"])  # declared tasks: the frame must carry every one of them
    with pytest.raises(ValueError, match=r"missing \['p_purchase'\], unexpected \[\]"):
        wh.publish(D1, recs(tasks=("click",)), run("r1", D1))
    with pytest.raises(ValueError, match="is for 2026-11-21"):
        wh.publish(D1, recs(tasks=("click", "purchase")), run("r1", D2))
    with pytest.raises(ValueError, match="empty"):
        wh.publish(D1, recs(tasks=("click", "purchase")).iloc[:0], run("r1", D1))
    assert wh.published_dates() == []


# -- DuckDB only ------------------------------------------------------------------------------------------


def test_another_process_reads_read_only_after_the_writer_closed(tmp_path):
    path = tmp_path / "wh.duckdb"
    with open_warehouse(str(path)) as wh:
        assert isinstance(wh, Warehouse)
        wh.publish(D1, recs(), run("r1", D1))
    reader = textwrap.dedent(
        f"""
        import duckdb
        from jobs.warehouse import open_warehouse
        with open_warehouse({str(path)!r}, read_only=True) as wh:
            print(len(wh.latest()), wh.published_dates()[0], wh.runs().status[0])
            try:
                wh.con.execute("DELETE FROM recommendations")
            except duckdb.Error as e:
                print("write refused:", type(e).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", reader], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["4 2026-11-20 published", "write refused: InvalidInputException"]

    with pytest.raises(FileNotFoundError):
        open_warehouse(str(tmp_path / "missing.duckdb"), read_only=True)
    with pytest.raises(ValueError, match="password block is for a PostgreSQL warehouse"):
        open_warehouse(str(path), password_block="warehouse-password")
