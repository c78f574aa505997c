"""`nightrec backtest` and `nightrec score-pairs` on tiny synthetic logs, through real nightly flow runs."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import date, timedelta

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
from test_nightly_flow import CONFIG

from jobs.generate import generate
from nightrec.cli import main

DATES = [date(2026, 11, 1), date(2026, 11, 3)]
TEST_DAYS, LOOKBACK = 2, 14


@pytest.fixture(scope="module")
def backtested(tmp_path_factory, spark, prefect_backend):
    root = tmp_path_factory.mktemp("backtest")
    generate(root / "landing", users=150, items=60, days=16, seed=5, end_date=DATES[-1] + timedelta(days=2))
    config = root / "config.toml"
    # The nights also run the value features, a retrieval task and two-stage scoring end to end.
    text = (
        CONFIG.format(root=root, top_k=10)
        .replace("epochs = 2", "epochs = 1")
        .replace(
            'seen_event_types = ["click", "purchase"]',
            'seen_event_types = ["click", "purchase"]\nvalue_stats = true',
        )
    )
    text += "two_stage_min_pairs = 0\nretrieval_candidates = 20\n"
    text += '\n[[tasks]]\nname = "match"\ntype = "retrieval"\nlabel = { event_types = ["click"] }\n'
    config.write_text(text + f"\n[evaluation]\ntest_days = {TEST_DAYS}\n")
    argv = ["backtest", "--config", str(config), "--dates", ",".join(map(str, DATES)), "--quiet", "--json"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # a module fixture has no capsys
        assert main(argv) == 0
    return root, config, argv, json.loads(printed.getvalue())


def judged_users(root, run_date: date) -> int:
    """The protocol by hand: a click before D (in the lookback) and a click in [D, D + test days) on an item
    clicked before D."""
    events = ds.dataset(root / "landing/events", format="parquet", partitioning="hive").to_table().to_pandas()
    clicks = events[events["event_type"] == "click"]
    ts = pd.to_datetime(clicks["ts"], utc=True)
    d = pd.Timestamp(run_date, tz="UTC")
    before = clicks[(ts >= d - pd.Timedelta(days=LOOKBACK)) & (ts < d)]
    after = clicks[(ts >= d) & (ts < d + pd.Timedelta(days=TEST_DAYS))]
    after = after[
        after["user_id"].isin(set(before["user_id"])) & after["item_id"].isin(set(before["item_id"]))
    ]
    return after["user_id"].nunique()


def test_a_two_date_backtest_writes_the_table_by_the_protocol(backtested):
    root, _, _, result = backtested
    written = json.loads((root / "work/backtest/backtest.json").read_text())
    assert written["overall"] == result["overall"]
    assert [n["run_date"] for n in written["nights"]] == [d.isoformat() for d in DATES]
    markdown = (root / "work/backtest/backtest.md").read_text()
    assert "## Overall" in markdown and all(f"## {d}" in markdown for d in DATES)

    total = 0
    for night, run_date in zip(written["nights"], DATES, strict=True):
        assert set(night["metrics"]) == {"model", "pop", "itemknn", "ease"}
        users = judged_users(root, run_date)
        assert users > 0
        assert {m["users"] for m in night["metrics"].values()} == {users}
        for metrics in night["metrics"].values():
            assert 0.0 <= metrics["ndcg@10"] <= metrics["hit@10"] <= 1.0
            assert 0.0 < metrics["coverage"] <= 1.0 and 0.0 <= metrics["new_item_share"] <= 1.0
        total += users
    overall = written["overall"]["model"]
    assert overall["users"] == total
    per_date = [(n["metrics"]["model"]["ndcg@10"], n["metrics"]["model"]["users"]) for n in written["nights"]]
    assert overall["ndcg@10"] == pytest.approx(sum(v * u for v, u in per_date) / total)
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        versions = dict(
            con.execute("SELECT run_date, model_version FROM runs WHERE status = 'published'").fetchall()
        )
    assert [n["model_version"] for n in written["nights"]] == [versions[d] for d in DATES]
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        match = con.execute(
            "SELECT count(*), count(p_match), count(DISTINCT p_match) FROM recommendations"
        ).fetchone()
    assert match[0] == match[1] > 0 and match[2] > 1, (
        "the retrieval score is published beside the probabilities"
    )


def test_a_rerun_gives_the_same_table_and_no_duplicate_rows(backtested, capsys):
    root, _, argv, _ = backtested
    capsys.readouterr()
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        before = con.execute("SELECT run_date, count(*) FROM recommendations GROUP BY run_date").fetchall()
    first = json.loads((root / "work/backtest/backtest.json").read_text())
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["overall"] == first["overall"] and again["nights"] == first["nights"]
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        after = con.execute("SELECT run_date, count(*) FROM recommendations GROUP BY run_date").fetchall()
        published = con.execute("SELECT count(*) FROM runs WHERE status = 'published'").fetchone()[0]
    assert sorted(after) == sorted(before) and published == len(DATES)


def test_score_pairs_gives_the_published_scores_and_flags_unknown_ids(backtested, tmp_path, capsys):
    root, config, _, _ = backtested
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        recs = con.execute(
            "SELECT user_id, item_id, score, p_click, p_purchase FROM recommendations WHERE run_date = ? "
            "ORDER BY user_id, rank LIMIT 25",
            [DATES[0]],
        ).df()
    pairs = pd.concat(
        [recs[["user_id", "item_id"]], pd.DataFrame({"user_id": ["nobody"], "item_id": [recs["item_id"][0]]})]
    )
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    argv = ["score-pairs", "--config", str(config), "--input", str(tmp_path / "pairs.csv")]
    assert main([*argv, "--output", str(tmp_path / "out.parquet"), "--date", str(DATES[0])]) == 0
    assert "1 with an unknown user or item" in capsys.readouterr().out
    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert scored["known"].tolist() == [True] * len(recs) + [False]
    for column in ("score", "p_click", "p_purchase"):
        assert scored[column][: len(recs)].to_numpy() == pytest.approx(recs[column].to_numpy(), abs=1e-6)

    assert main([*argv, "--output", str(tmp_path / "latest.csv")]) == 0, "default: the latest published date"
    latest = pd.read_csv(tmp_path / "latest.csv", dtype={"user_id": str, "item_id": str})
    assert len(latest) == len(pairs) and latest["model_version"].nunique() == 1


def test_single_task_models_are_judged_beside_the_multi_task_one(backtested, tmp_path, capsys):
    root, _, argv, first = backtested
    capsys.readouterr()
    assert main([*argv, "--single-task", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == [str(tmp_path / "backtest.json"), str(tmp_path / "backtest.md")]
    for night, before in zip(result["nights"], first["nights"], strict=True):
        assert set(night["metrics"]) == {
            "model",
            "pop",
            "itemknn",
            "ease",
            "model[click only]",
            "model[purchase only]",
        }
        assert night["metrics"]["model"] == before["metrics"]["model"], (
            "the published night is judged as it was"
        )
        assert {m["users"] for m in night["metrics"].values()} == {before["metrics"]["model"]["users"]}
    assert "| model[click only] |" in (tmp_path / "backtest.md").read_text()
