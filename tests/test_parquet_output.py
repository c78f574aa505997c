"""The Parquet output on the local filesystem: layout, types, atomic replacement on rerun, and readers."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_warehouse import D1, D2, recs

from jobs.parquet_output import write_parquet_output

PARTITIONING = ds.partitioning(pa.schema([("run_date", pa.date32())]), flavor="hive")


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def read_pyarrow(root: Path) -> pd.DataFrame:
    """Read every partition; the schema is unified across files, since a later night may add a task column."""
    dataset = ds.dataset(root, format="parquet", partitioning=PARTITIONING)
    schema = pa.unify_schemas([dataset.schema, *(f.physical_schema for f in dataset.get_fragments())])
    table = ds.dataset(root, schema=schema, format="parquet", partitioning=PARTITIONING).to_table()
    return table.to_pandas().sort_values(["run_date", "user_id", "rank"], ignore_index=True)


def test_partitions_hold_the_published_rows_and_read_back_with_hive_partitioning(tmp_path):
    root = tmp_path / "out"
    assert write_parquet_output(recs(item_prefix="a"), D1, str(root)) == str(root / "run_date=2026-11-20")
    write_parquet_output(recs(users=("u9",), tasks=("click", "buy"), item_prefix="b"), D2, str(root))

    assert files(root) == ["run_date=2026-11-20/part-0.parquet", "run_date=2026-11-21/part-0.parquet"]
    schema = pq.read_schema(root / "run_date=2026-11-21" / "part-0.parquet")
    assert schema.metadata is None  # no pandas index metadata: a clean, reader-neutral file
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_id", "string"), ("rank", "int32"), ("item_id", "string"), ("score", "double"),
        ("p_click", "double"), ("p_buy", "double"), ("model_version", "string"),
        ("generated_at", "timestamp[us, tz=UTC]"),
    ]  # fmt: skip

    arrow = read_pyarrow(root)
    assert arrow[["run_date", "user_id", "rank", "item_id"]].values.tolist() == [
        [date(2026, 11, 20), "u1", 1, "a1"], [date(2026, 11, 20), "u1", 2, "a2"],
        [date(2026, 11, 20), "u2", 1, "a1"], [date(2026, 11, 20), "u2", 2, "a2"],
        [date(2026, 11, 21), "u9", 1, "b1"], [date(2026, 11, 21), "u9", 2, "b2"],
    ]  # fmt: skip
    assert arrow.p_buy.isna().tolist() == [True] * 4 + [False] * 2  # a task added later: NULL before

    con = duckdb.connect()
    glob = str(root / "*" / "*.parquet")
    rows = con.execute(
        "SELECT run_date, count(*), count(p_buy), min(generated_at) FROM read_parquet(?, hive_partitioning = true, "
        "union_by_name = true) GROUP BY run_date ORDER BY run_date",
        [glob],
    ).fetchall()
    assert [r[:3] for r in rows] == [(D1, 4, 0), (D2, 2, 2)]  # run_date comes back as a DATE
    assert rows[0][3] == recs().generated_at[0]


def test_rerun_replaces_the_partition_with_the_same_files_and_no_duplicates(tmp_path):
    root = tmp_path / "out"
    write_parquet_output(recs(item_prefix="a"), D1, str(root))
    write_parquet_output(recs(users=("u9",)), D2, str(root))
    before_files, before_rows = files(root), read_pyarrow(root)

    write_parquet_output(recs(item_prefix="a"), D1, str(root))  # the same night again
    assert files(root) == before_files
    pd.testing.assert_frame_equal(read_pyarrow(root), before_rows)

    # A rerun with other rows replaces the date's rows, leaves the other date, and sweeps out a stray file
    # an older layout left in the partition; a writer's hidden temporary file is left to its writer.
    stray = root / "run_date=2026-11-20" / "part-00001-old.parquet"
    pq.write_table(pa.table({"user_id": ["ghost"]}), stray)
    hidden = root / "run_date=2026-11-20" / ".part-0.parquet.deadbeef.tmp"
    hidden.write_bytes(b"half a file")
    write_parquet_output(recs(users=("u3",), k=3, item_prefix="z"), D1, str(root))

    after = read_pyarrow(root)
    assert after[after.run_date == D1][["user_id", "item_id"]].values.tolist() == [
        ["u3", "z1"], ["u3", "z2"], ["u3", "z3"]
    ]  # fmt: skip
    pd.testing.assert_frame_equal(
        after[after.run_date == D2].reset_index(drop=True),
        before_rows[before_rows.run_date == D2].reset_index(drop=True),
    )
    assert not stray.exists() and hidden.exists()


def test_uri_forms_and_value_normalisation(tmp_path, monkeypatch):
    frame = recs()
    frame["generated_at"] = datetime(2026, 11, 22, 3, 0)  # naive: taken as UTC, as in the warehouse
    frame["rank"] = frame["rank"].astype("int64")
    write_parquet_output(frame, D1, (tmp_path / "a").as_uri())  # file:// URI

    monkeypatch.chdir(tmp_path)
    write_parquet_output(frame, D1, "b")  # a relative path
    for root in (tmp_path / "a", tmp_path / "b"):
        table = pq.read_table(root / "run_date=2026-11-20" / "part-0.parquet")
        assert table.schema.field("rank").type == pa.int32()
        assert table.column("generated_at")[0].as_py() == recs().generated_at[0]


def test_bad_frames_are_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "out"
    with pytest.raises(ValueError, match="empty"):
        write_parquet_output(recs().iloc[:0], D1, str(root))
    with pytest.raises(ValueError, match=r"missing \['score'\]"):
        write_parquet_output(recs().drop(columns="score"), D1, str(root))
    with pytest.raises(ValueError, match="must match"):
        write_parquet_output(recs(tasks=("Bad",)), D1, str(root))
    assert not root.exists()
