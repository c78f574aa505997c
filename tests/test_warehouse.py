"""The warehouse against real DuckDB files: atomic publishes, the latest view, additive schema, readers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.warehouse import RunRecord, Warehouse

REPO = Path(__file__).resolve().parents[1]
D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
GENERATED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


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


def table(wh: Warehouse, sql: str) -> pd.DataFrame:
    return wh.con.execute(sql).df()


@pytest.fixture
def wh(tmp_path):
    with Warehouse(tmp_path / "nested" / "wh.duckdb") as w:
        yield w


def test_publish_creates_tables_and_view_with_readable_rows(wh):
    metrics = {"auc": {"click": 0.71, "purchase": float("nan")}, "loss": np.float32(0.5), "epochs": 3}
    n = wh.publish(D1, recs(), run("r1", D1, metrics=metrics, row_counts={"recs": 4}))

    assert n == 4
    objects = table(wh, "SELECT table_name, table_type FROM information_schema.tables ORDER BY 1")
    assert dict(zip(objects.table_name, objects.table_type, strict=True)) == {
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
    before = table(wh, "SELECT * FROM recommendations ORDER BY run_date, user_id, rank")

    wh.publish(D1, recs(), run("r3", D1))
    after = table(wh, "SELECT * FROM recommendations ORDER BY run_date, user_id, rank")
    pd.testing.assert_frame_equal(after, before)

    assert wh.publish(D1, recs(users=("u3",), k=3, item_prefix="z"), run("r4", D1)) == 3
    d1 = table(wh, "SELECT user_id, item_id FROM recommendations WHERE run_date = DATE '2026-11-20'")
    assert sorted(d1.itertuples(index=False, name=None)) == [("u3", "z1"), ("u3", "z2"), ("u3", "z3")]
    assert len(table(wh, "SELECT * FROM recommendations WHERE run_date = DATE '2026-11-21'")) == 2


def _null_user(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[3, "user_id"] = None
    return frame


def _duplicate_rank(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[3, "rank"] = 1
    return frame


@pytest.mark.parametrize("spoil", [_null_user, _duplicate_rank])
def test_failed_publish_rolls_back_rows_schema_view_and_runs(wh, spoil):
    wh.publish(D1, recs(), run("r1", D1))
    wh.record_run(run("r2", D1))  # the rerun of the same date, logged as running
    rows_before = table(wh, "SELECT * FROM recommendations ORDER BY user_id, rank")
    runs_before = wh.runs()

    # The bad frame also brings a new task: the column added inside the transaction must go too.
    bad = spoil(recs(users=("u1", "u2"), tasks=("click", "purchase"), item_prefix="new"))
    with pytest.raises(duckdb.ConstraintException):
        wh.publish(D1, bad, run("r2", D1))

    rows_after = table(wh, "SELECT * FROM recommendations ORDER BY user_id, rank")
    pd.testing.assert_frame_equal(rows_after, rows_before)
    pd.testing.assert_frame_equal(wh.latest(), rows_before)
    pd.testing.assert_frame_equal(wh.runs(), runs_before)
    assert runs_before.set_index("run_id").status.to_dict() == {"r1": "published", "r2": "running"}


def test_failed_or_running_newer_date_does_not_change_latest(wh):
    wh.publish(D1, recs(), run("r1", D1))
    wh.record_run(run("r2", D2, status="failed", error="validation failed: label rate", metrics={"rows": 0}))
    wh.record_run(run("r3", D3))
    # Rows of a date with no published run (say, a writer still at work): the data table's newest date.
    wh.con.execute(
        "INSERT INTO recommendations (run_date, user_id, rank, item_id) VALUES (?, 'u', 1, 'x')", [D3]
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
    assert table(wh, "SELECT count(*) AS n FROM recommendations").n[0] == 0

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

    cols = table(wh, "SELECT * FROM recommendations LIMIT 0").columns.tolist()
    assert cols[-2:] == ["p_click", "p_purchase"]
    by_date = table(
        wh,
        "SELECT count(p_click) AS c, count(p_purchase) AS p FROM recommendations "
        "GROUP BY run_date ORDER BY run_date",
    )
    assert by_date[["c", "p"]].values.tolist() == [[4, 0], [4, 4], [4, 0]]
    assert "p_purchase" in wh.latest().columns


def test_longest_task_name_is_accepted(wh):
    task = "t" * 40  # the longest name the config accepts; its column p_<task> is longer than that
    assert wh.publish(D1, recs(tasks=(task,)), run("r1", D1)) == 4
    assert f"p_{task}" in wh.latest().columns


@pytest.mark.parametrize("name", ['click" DOUBLE); DROP TABLE runs; --', "Click", "1click", "a-b"])
def test_invalid_task_name_is_rejected_before_any_sql(tmp_path, name):
    path = tmp_path / "wh.duckdb"
    with Warehouse(path) as wh:
        with pytest.raises(ValueError, match="must match"):
            wh.ensure_schema(["click", name])
        frame = recs().assign(**{f"p_{name}": 0.1})
        with pytest.raises(ValueError, match="must match"):
            wh.publish(D1, frame, run("r1", D1))
        assert table(wh, "SELECT * FROM information_schema.tables").empty


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


def test_another_process_reads_read_only_after_the_writer_closed(tmp_path):
    path = tmp_path / "wh.duckdb"
    with Warehouse(path) as wh:
        wh.publish(D1, recs(), run("r1", D1))
    reader = textwrap.dedent(
        f"""
        import duckdb
        from jobs.warehouse import Warehouse
        with Warehouse({str(path)!r}, read_only=True) as wh:
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
        Warehouse(tmp_path / "missing.duckdb", read_only=True)
