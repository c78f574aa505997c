"""Bad input on the real stack: generated Parquet in a landing zone, read by Spark, judged by the GX suite.

A few bad rows are quarantined with their reasons and the clean rows go on; more than the configured share,
or a defect of the whole table, fails with the failed checks named. docs/reliability.md is the catalogue.
Each screening costs a few Spark validations, so one landing zone carries every row-level defect (each on
its own row) and the test asserts the reason of each; table-level defects get a zone each.
"""

from __future__ import annotations

import math
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_nightly_flow import CONFIG, edit_partition, set_values

from jobs.generate import generate
from jobs.landing import read_events, read_items
from jobs.quarantine import REASON, clean_events, screen_events
from jobs.reliability import is_complete
from jobs.validation import ValidationFailed
from nightrec.config import load_config

RUN_DATE = date(2026, 11, 1)
LAST_DAY = "2026-10-31"
HOSTILE_USER = "u'; DROP TABLE runs; --$(rm -rf ~)`id`"
# event row -> (values set on that row of the last day's partition, the checks its reason must name)
DEFECTS: dict[int, tuple[dict[str, object], set[str]]] = {
    0: ({"user_id": None}, {"expect_column_values_to_not_be_null(user_id)"}),
    1: ({"item_id": ""}, {"expect_column_value_lengths_to_be_between(item_id)", "(in_catalogue)"}),
    2: ({"event_type": "clik"}, {"expect_column_values_to_be_in_set(event_type)"}),
    3: (
        {"ts": datetime(2026, 11, 5, tzinfo=UTC)},
        {"expect_column_values_to_be_between(ts)", "(partition_day"},
    ),
    4: (
        {"ts": datetime(2026, 9, 1, tzinfo=UTC)},
        {"expect_column_values_to_be_between(ts)", "(partition_day"},
    ),
    5: (
        {"ts": datetime(2026, 10, 25, 12, tzinfo=UTC)},
        {"expect_column_pair_values_to_be_equal(partition_day"},
    ),
    6: ({"value": math.nan}, {"expect_column_values_to_be_between(value)"}),
    7: ({"value": math.inf}, {"expect_column_values_to_be_between(value)"}),
    8: ({"event_type": "purchase", "value": -5.0}, {"(value where event_type == purchase)"}),
    9: ({"item_id": "i-not-in-catalogue"}, {"expect_column_values_to_be_in_set(in_catalogue)"}),
    10: ({"event_id": "conflict"}, {"expect_column_values_to_be_unique(event_id)"}),
    11: ({"event_id": "conflict", "user_id": "u0001"}, {"expect_column_values_to_be_unique(event_id)"}),
}
HOSTILE_ROW, COPIED_ROW = 12, 13


def spoil(table: pa.Table) -> pa.Table:
    """Every row-level defect of DEFECTS, a valid row with a hostile user id, and one identical copy."""
    for column in table.column_names:
        values = {row: edits[column] for row, (edits, _) in DEFECTS.items() if column in edits}
        table = set_values(table, column, values)
    table = set_values(table, "user_id", {HOSTILE_ROW: HOSTILE_USER})
    return pa.concat_tables([table, table.slice(COPIED_ROW, 1)])


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    generate(root / "landing", users=80, items=40, days=10, seed=5, end_date=RUN_DATE)
    return root / "landing"


def config(tmp_path: Path, landing: Path, reliability: str = ""):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(root=tmp_path, top_k=5) + f"\n[reliability]\n{reliability}\n")
    return load_config(path, landing=str(landing))


def screen(spark, cfg, run_dir: Path):
    window_start = date.fromordinal(RUN_DATE.toordinal() - cfg.features.lookback_days)
    events = read_events(spark, cfg.data.landing, window_start, RUN_DATE, with_partition=True)
    items = read_items(spark, cfg.data.landing)
    return screen_events(events, items, cfg, window_start, RUN_DATE, run_dir), events, items, window_start


def test_a_few_bad_rows_are_quarantined_with_their_reasons(spark, landing, tmp_path):
    bad = edit_partition(landing, tmp_path / "landing", LAST_DAY, spoil)
    cfg = config(tmp_path, bad, "max_rejected_share = 0.02")
    run_dir = tmp_path / "run"

    screening, events, items, window_start = screen(spark, cfg, run_dir)

    total = pq.ParquetDataset(bad / "events").read().num_rows
    assert (screening.events, screening.rejected, screening.duplicates) == (total, len(DEFECTS), 1)
    rejected = pq.read_table(run_dir / "rejected").to_pylist()
    assert is_complete(run_dir / "rejected")
    assert stat.S_IMODE((run_dir / "rejected").stat().st_mode) == 0o700
    original = pq.read_table(next((landing / "events").glob(f"dt={LAST_DAY}/*.parquet")))
    reasons = {}
    for row in rejected:
        key = row["event_id"] if row["event_id"] != "conflict" else f"conflict:{row['user_id']}"
        reasons[key] = row[REASON]
    for index, (edits, checks) in DEFECTS.items():
        event_id = edits.get("event_id", original.column("event_id")[index].as_py())
        key = (
            event_id
            if event_id != "conflict"
            else f"conflict:{edits.get('user_id', original['user_id'][index].as_py())}"
        )
        assert all(check in reasons[key] for check in checks), (index, reasons[key])

    clean = clean_events(events, items, cfg, window_start, RUN_DATE)
    kept = clean.select("event_id", "user_id").collect()
    assert len(kept) == total - len(DEFECTS) - 1
    assert len({r.event_id for r in kept}) == len(kept)  # the identical copy once, the conflicting ids gone
    assert "conflict" not in {r.event_id for r in kept}
    assert HOSTILE_USER in {r.user_id for r in kept}  # odd characters are data, not a defect


def test_more_bad_rows_than_the_share_fail_naming_the_checks(spark, landing, tmp_path):
    bad = edit_partition(landing, tmp_path / "landing", LAST_DAY, spoil)
    cfg = config(tmp_path, bad)  # the default share, 0.1%: 12 of ~1560 rows is above it

    with pytest.raises(ValidationFailed) as caught:
        screen(spark, cfg, tmp_path / "run")

    message = str(caught.value)
    assert "12 of 1560 events (0.769%) fail row-level checks, above reliability.max_rejected_share" in message
    assert "- expect_column_values_to_be_in_set(event_type): 1 of 1560 rows unexpected" in message
    assert "event_type=clik" in message
    assert not is_complete(tmp_path / "run" / "rejected")


def _drop_value(table: pa.Table) -> pa.Table:
    return table.drop_columns(["value"])


def _value_as_string(table: pa.Table) -> pa.Table:
    return table.set_column(4, "value", pc.cast(table.column("value"), pa.string()))


def _extra_column(table: pa.Table) -> pa.Table:
    return table.append_column("session_id", pa.array(["s"] * table.num_rows))


TABLE_DEFECTS = {
    # name: (partition(s) edited, edit, config [reliability], the error it must raise (None: passes))
    "missing_column": ("*", _drop_value, "", "missing columns \\['value'\\]"),
    "wrong_type": (
        "*",
        _value_as_string,
        "",
        "expect_column_values_to_be_of_type\\(value\\): observed 'StringType'",
    ),
    "extra_column_is_ignored": ("*", _extra_column, "", None),
    "empty_day": (LAST_DAY, lambda t: t.slice(0, 0), "volume_tolerance = 0.5", "volume suite failed"),
    "volume_spike": (LAST_DAY, lambda t: pa.concat_tables([t] * 4), "volume_tolerance = 0.5", "volume suite"),
    "volume_drop_warns": (
        LAST_DAY,
        lambda t: t.slice(0, t.num_rows // 4),
        'volume_tolerance = 0.5\nvolume_policy = "warn"',
        None,
    ),
}


@pytest.mark.parametrize("name", list(TABLE_DEFECTS))
def test_table_level_defects_fail_the_night_or_are_ignored(spark, landing, tmp_path, name):
    day, edit, reliability, error = TABLE_DEFECTS[name]
    bad = edit_partition(landing, tmp_path / "landing", day, edit)
    cfg = config(tmp_path, bad, reliability)
    if error is None:
        screening = screen(spark, cfg, tmp_path / "run")[0]
        assert screening.rejected == 0 and not screening.needs_cleaning
        if "warn" in reliability:
            assert screening.volume_warning.startswith("volume suite failed 1 of 1 expectations")
        else:
            assert screening.volume_warning is None
        return
    with pytest.raises((ValidationFailed, ValueError), match=error):
        screen(spark, cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "rejected").exists()


def test_a_corrupt_parquet_file_fails_the_read_naming_the_file(spark, landing, tmp_path):
    bad = edit_partition(landing, tmp_path / "landing", LAST_DAY, lambda t: t)
    [part] = (bad / "events").glob(f"dt={LAST_DAY}/*.parquet")
    part.write_bytes(b"PAR1 this is not a Parquet file")
    cfg = config(tmp_path, bad)

    with pytest.raises(Exception, match=part.name) as caught:
        screen(spark, cfg, tmp_path / "run")
    assert not isinstance(caught.value, ValidationFailed)  # a read error, not a data verdict
    assert not (tmp_path / "run" / "rejected").exists()
