"""`nightrec backfill`: one nightly run per date, in order, skipping what is published, stopping at a failure."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest
from test_nightly_flow import CONFIG

from flows.backfill import date_range
from jobs.generate import generate
from nightrec.cli import main

FIRST, SECOND = date(2026, 11, 2), date(2026, 11, 3)


@pytest.fixture(scope="module")
def landing(tmp_path_factory, spark, prefect_backend):
    root = tmp_path_factory.mktemp("backfill")
    generate(root / "landing", users=150, items=60, days=14, seed=3, end_date=date(2026, 11, 4))
    config = root / "config.toml"
    text = CONFIG.format(root=root, top_k=5).replace("epochs = 2", "epochs = 1")
    config.write_text(text.replace("[spark]", f'parquet_output = "{root}/parquet"\n\n[spark]'))
    return root, config


def published_runs(root) -> list[tuple[date, str]]:
    """(run_date, run_id) of every published run, oldest first."""
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(
            "SELECT run_date, run_id FROM runs WHERE status = 'published' ORDER BY finished_at"
        ).fetchall()


def row_counts(root) -> dict[date, int]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return dict(con.sql("SELECT run_date, count(*) FROM recommendations GROUP BY run_date").fetchall())


def backfill(config, *extra: str) -> int:
    return main(
        ["backfill", "--start", str(FIRST), "--end", str(SECOND), "--config", str(config), "--quiet", *extra]
    )


def test_backfill_publishes_in_order_then_skips_then_forces(landing, capsys):
    root, config = landing

    assert backfill(config) == 0
    first = published_runs(root)
    assert [d for d, _ in first] == [FIRST, SECOND], "one run per date, oldest first"
    assert "published: 2 (2026-11-02, 2026-11-03)" in capsys.readouterr().out
    parts = sorted(p.parent.name for p in (root / "parquet").glob("*/*.parquet"))
    assert parts == ["run_date=2026-11-02", "run_date=2026-11-03"], (
        "each night also writes its Parquet partition"
    )

    assert main(["runs", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count("published") == 2

    assert backfill(config) == 0
    assert published_runs(root) == first, "published dates are skipped"
    assert "skipped: 2 (2026-11-02, 2026-11-03)" in capsys.readouterr().out

    before = row_counts(root)
    assert main(["backfill", "--start", str(SECOND), "--end", str(SECOND), "--config", str(config), "--force",
                 "--quiet"]) == 0  # fmt: skip
    again = published_runs(root)
    assert again[:2] == first and [d for d, _ in again[2:]] == [SECOND], "--force runs the date again"
    assert row_counts(root) == before, "a rerun replaces the date's rows, never adds to them"


def test_backfill_stops_at_the_first_failure_and_says_what_happened(landing, tmp_path, capsys):
    """Without a landing zone the first date fails: the next one is not attempted."""
    _, config = landing
    code = main(
        ["backfill", "--start", "2026-10-30", "--end", "2026-10-31", "--config", str(config), "--quiet",
         "--landing", str(tmp_path / "missing"), "--warehouse", str(tmp_path / "wh.duckdb")]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "failed: 1 (2026-10-30)" in err and "not run: 1 (2026-10-31)" in err
    assert "error on 2026-10-30:" in err and "missing" in err
    assert "published:" not in err, "nothing was published"


def test_backfill_rejects_a_reversed_range(capsys):
    assert main(["backfill", "--start", "2026-11-03", "--end", "2026-11-01", "--config", "x.toml"]) == 2
    assert "before --start" in capsys.readouterr().err


def test_date_range_is_inclusive_and_ordered():
    assert date_range(FIRST, SECOND) == [FIRST, SECOND]
    assert date_range(FIRST, FIRST) == [FIRST]
    with pytest.raises(ValueError, match="before it starts"):
        date_range(SECOND, FIRST)
