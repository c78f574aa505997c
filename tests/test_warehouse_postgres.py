"""PostgreSQL-only behaviour, against a real server: URL and schema handling, credentials that never leak,
read-only connections, separate schemas, and concurrent publishers of one date.

The backend-neutral contract (atomic publish, view, reruns, additive columns) is in test_warehouse.py, which
runs it on both backends; the server fixture and the frame builders come from there.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")

from test_warehouse import D1, D2, recs, require_postgres, run, scratch_schema  # noqa: E402

from jobs.warehouse import open_warehouse, redact  # noqa: E402
from jobs.warehouse_postgres import PASSWORD_ENV, PostgresWarehouse, split_schema  # noqa: E402

SECRET = "s3cr@t:pa/ss w0rd"  # characters that must be URL-encoded, to catch a mask that misses a spelling
ENCODED = "s3cr%40t%3Apa%2Fss%20w0rd"


def with_user(admin_url: str, user: str, password: str | None = None, database: str | None = None) -> str:
    parts = urlsplit(admin_url)
    login = f"{user}:{password}" if password else user
    return urlunsplit(
        parts._replace(netloc=f"{login}@{parts.netloc.rpartition('@')[2]}", path=database or parts.path)
    )


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return require_postgres()


@pytest.fixture
def schema(postgres_url) -> Iterator[str]:
    with scratch_schema(postgres_url) as name:
        yield name


@pytest.fixture
def role(postgres_url, schema) -> Iterator[str]:
    """A login role with a password that owns `schema` and has no right to create schemas in the database."""
    name = f"nightrec_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
        con.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION {name}')
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        con.execute(f"DROP ROLE {name}")


def assert_masked(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and ENCODED not in text, text


# -- URLs, schema names, redaction (no server needed) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://u:{ENCODED}@db:5432/wh?schema=recs", "postgresql://u:***@db:5432/wh?schema=recs"),
        ("postgres://u:pw@h1:5432,h2:5433/wh", "postgres://u:***@h1:5432,h2:5433/wh"),
        ("postgresql://db/wh?sslmode=require&password=pw", "postgresql://db/wh?sslmode=require&password=***"),
        ("postgresql://u@db/wh?schema=recs", "postgresql://u@db/wh?schema=recs"),
        ("var/demo/warehouse.duckdb", "var/demo/warehouse.duckdb"),
    ],
)
def test_redact_masks_every_password(url, shown):
    assert redact(url) == shown


def test_schema_parameter_is_taken_out_of_the_url_and_checked():
    assert split_schema("postgresql://u@db/wh?sslmode=require&schema=recs&connect_timeout=5") == (
        "postgresql://u@db/wh?sslmode=require&connect_timeout=5",
        "recs",
    )
    assert split_schema("postgresql://u@db/wh") == ("postgresql://u@db/wh", "public")


@pytest.mark.parametrize(
    "query",
    ["schema=Recs", "schema=a%3Bdrop%20schema%20public", 'schema="x"', "schema=", "schema=a&schema=b"],
)
def test_invalid_schema_is_rejected_before_connecting(query):
    # Port 1 answers nothing: reaching the connect step would raise ConnectionError instead.
    with pytest.raises(ValueError, match="must match|more than one schema"):
        open_warehouse(f"postgresql://u:{ENCODED}@127.0.0.1:1/wh?{query}")


# -- credentials --------------------------------------------------------------------------------------------


def test_password_from_the_environment_is_used_and_never_shown(postgres_url, schema, role, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with open_warehouse(with_user(postgres_url, role) + f"?schema={schema}") as wh:
        assert isinstance(wh, PostgresWarehouse)
        # Trust auth on loopback accepts any password, so check that libpq was given this one.
        assert (wh.con.info.user, wh.con.info.password) == (role, SECRET)
        wh.publish(D1, recs(), run("r1", D1))  # the role owns the schema, cannot create one: no CREATE SCHEMA
        assert wh.published_dates() == [D1]
        assert_masked(repr(wh), wh.target, wh.runs().to_string())

    with pytest.raises(ConnectionError) as failed:
        open_warehouse(with_user(postgres_url, role, database="/no_such_database"))
    assert "no_such_database" in str(failed.value)
    assert_masked(str(failed.value), "".join(traceback.format_exception(failed.value)))


def test_password_in_the_url_is_accepted_and_masked_everywhere(postgres_url, schema, role):
    url = with_user(postgres_url, role, password=ENCODED) + f"?schema={schema}"
    with open_warehouse(url) as wh:
        assert wh.con.info.password == SECRET
        wh.publish(D1, recs(), run("r1", D1))
        assert_masked(repr(wh), wh.target)
        assert "***" in repr(wh)

    with pytest.raises(ConnectionError) as failed:
        open_warehouse(with_user(postgres_url, role, password=ENCODED, database="/no_such_database"))
    assert "postgresql://" in str(failed.value)  # the URL is shown, its password is not
    assert_masked(str(failed.value), "".join(traceback.format_exception(failed.value)))


def test_password_from_a_prefect_secret_block_wins_over_the_environment(
    postgres_url, schema, role, monkeypatch, prefect_backend
):
    from prefect.blocks.system import Secret

    block = f"nightrec-test-{uuid.uuid4().hex[:8]}"
    Secret(value=SECRET).save(block)
    monkeypatch.setenv(PASSWORD_ENV, "not-this-one")
    with open_warehouse(with_user(postgres_url, role) + f"?schema={schema}", password_block=block) as wh:
        assert wh.con.info.password == SECRET
        assert_masked(repr(wh))


# -- connections and schemas ----------------------------------------------------------------------------------


def test_read_only_connection_reads_and_refuses_writes(postgres_url, schema):
    url = f"{postgres_url}?schema={schema}"
    with open_warehouse(url) as writer:
        writer.publish(D1, recs(), run("r1", D1))
    with open_warehouse(url, read_only=True) as reader:
        assert len(reader.latest()) == 4 and reader.published_dates() == [D1]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.record_run(run("r2", D2))
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.publish(D2, recs(), run("r2", D2))
    with open_warehouse(url) as writer:
        assert writer.runs().run_id.tolist() == ["r1"]


def test_schemas_are_separate_warehouses(postgres_url):
    with (
        scratch_schema(postgres_url) as first,
        scratch_schema(postgres_url) as second,
        open_warehouse(f"{postgres_url}?schema={first}") as a,
        open_warehouse(f"{postgres_url}?schema={second}") as b,
    ):
        a.publish(D1, recs(item_prefix="a"), run("r1", D1))
        assert b.published_dates() == []  # nothing there yet, and nothing leaked into it
        b.publish(D2, recs(item_prefix="b"), run("r1", D2))  # the same run id in another schema
        assert set(a.latest().item_id) == {"a1", "a2"} and set(b.latest().item_id) == {"b1", "b2"}
        assert a.published_dates() == [D1] and b.published_dates() == [D2]


# -- concurrency ----------------------------------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def test_concurrent_publishes_of_one_date_never_interleave(postgres_url, schema):
    """Two publishers of D1 overlap for certain: the second waits for the first, then replaces its rows.

    Without the date lock, the second's DELETE would miss the first's uncommitted rows and both sets would
    end up in D1. To make the overlap certain, a third session holds the runs table so the first publisher
    stops, rows inserted, just before it marks its run; the second starts while the first is stopped there.
    """
    url = f"{postgres_url}?schema={schema}"
    with open_warehouse(url) as setup:
        setup.publish(D1, recs(users=("u0",)), run("r0", D1))
    first, second, reader = open_warehouse(url), open_warehouse(url), open_warehouse(url, read_only=True)
    errors: list[BaseException] = []

    def publish(wh, users, run_id) -> threading.Thread:
        def target() -> None:
            try:
                wh.publish(D1, recs(users=users), run(run_id, D1))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    def waiting(wh) -> bool:
        rows = reader.con.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", [wh.con.info.backend_pid]
        ).fetchone()
        return rows[0] > 0

    blocker = psycopg.connect(postgres_url)
    try:
        blocker.execute(f'LOCK TABLE "{schema}".runs IN EXCLUSIVE MODE')  # readers pass, writers wait
        threads = [publish(first, ("a1", "a2"), "ra")]
        _wait_until(lambda: waiting(first), "the first publisher waits to mark its run")
        threads.append(publish(second, ("b1",), "rb"))
        _wait_until(lambda: waiting(second), "the second publisher waits for the first")
        # Meanwhile readers see the committed rows, without waiting.
        assert reader.latest()[["user_id", "rank"]].values.tolist() == [["u0", 1], ["u0", 2]]
    finally:
        blocker.rollback()
        blocker.close()
    for thread in threads:
        thread.join(timeout=30)
    for wh in (first, second):
        wh.close()
    assert not errors, errors

    rows = reader.query("SELECT user_id, rank FROM recommendations WHERE run_date = DATE '2026-11-20'")
    assert sorted(rows.itertuples(index=False, name=None)) == [("b1", 1), ("b1", 2)]
    assert reader.runs().set_index("run_id").status.to_dict() == {
        "r0": "published",
        "ra": "published",
        "rb": "published",
    }
    reader.close()
