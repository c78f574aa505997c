"""The synthetic landing zone: contract, determinism, funnel logic and the structure a model should learn."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.generate import generate

USERS, ITEMS, DAYS, SEED = 300, 100, 14, 11
END = date(2026, 11, 1)
TS = pa.timestamp("us", tz="UTC")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "landing"
    return out, generate(out, USERS, ITEMS, DAYS, SEED, end_date=END)


@pytest.fixture(scope="module")
def tables(landing) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    out, _ = landing
    events = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pandas()
    items = pq.read_table(out / "items").to_pandas()
    users = pq.read_table(out / "users").to_pandas()
    return events, items, users


def test_same_seed_same_bytes_other_seed_differs(tmp_path, landing):
    out, _ = landing
    again = tmp_path / "again"
    generate(again, USERS, ITEMS, DAYS, SEED, end_date=END)
    assert digests(again) == digests(out)
    other = tmp_path / "other"
    generate(other, USERS, ITEMS, DAYS, SEED + 1, end_date=END)
    assert digests(other) != digests(out)


def test_rerun_replaces_the_whole_zone(tmp_path):
    out = tmp_path / "landing"
    generate(out, 50, 20, 3, 1, end_date=END)
    (out / "events" / "dt=1999-01-01").mkdir()  # a stale partition must not survive
    (out / "users" / "part-1.parquet").write_bytes(b"stale")
    (tmp_path / ".landing.staging" / "events").mkdir(parents=True)  # what a crashed run leaves
    generate(out, 50, 20, 3, 1, end_date=END)
    generate(tmp_path / "fresh", 50, 20, 3, 1, end_date=END)
    assert digests(out) == digests(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "landing"]  # no staging left behind


def test_refuses_to_replace_a_directory_that_is_not_a_landing_zone(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "warehouse.duckdb").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"not a landing zone .*warehouse\.duckdb"):
        generate(out, 50, 20, 3, 1, end_date=END)
    assert [p.name for p in out.iterdir()] == ["warehouse.duckdb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_schema_is_the_landing_contract(landing):
    out, _ = landing
    parts = sorted((out / "events").glob("dt=*/*.parquet"))
    assert parts and all(p.name == "part-0.parquet" for p in parts)
    expected_events = pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("value", pa.float64()),
            ("ts", TS),
        ]
    )
    for part in parts:
        assert pq.read_schema(part).remove_metadata() == expected_events  # dt lives in the path only
    expected_items = pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("categories", pa.list_(pa.string())),
            ("text", pa.string()),
            ("created_at", TS),
        ]
    )
    assert pq.read_schema(out / "items" / "part-0.parquet").remove_metadata() == expected_items
    users = pq.read_schema(out / "users" / "part-0.parquet")
    assert users.field("user_id").type == pa.string()
    assert users.field("segment").type == pa.string()
    assert pa.types.is_integer(users.field("signup_days").type)


def test_events_ids_days_and_values(landing, tables):
    _, summary = landing
    events, items, users = tables
    assert events["event_id"].is_unique
    assert events["event_id"].str.fullmatch(r"e\d{9}").all()
    assert set(events["event_type"]) == {"impression", "click", "purchase"}
    assert summary["events"] == events["event_type"].value_counts().to_dict()
    days = events["ts"].dt.strftime("%Y-%m-%d")
    assert (days == events["dt"].astype(str)).all()
    assert (summary["first_day"], summary["last_day"]) == ("2026-10-18", "2026-10-31")
    assert days.min() >= summary["first_day"] and days.max() == summary["last_day"]
    assert set(events["user_id"]) <= set(users["user_id"]) and len(users) == USERS
    assert set(events["item_id"]) <= set(items["item_id"]) and len(items) == ITEMS
    by_type = events.groupby("event_type")["value"]
    assert by_type.get_group("impression").isna().all()
    assert (by_type.get_group("click") > 0).all()
    assert by_type.get_group("purchase").between(0, 10_000).all()


def test_impressions_only_of_items_created_before_that_day(tables):
    events, items, _ = tables
    shown = events.merge(items[["item_id", "created_at"]], on="item_id")
    assert (shown["created_at"] < shown["ts"].dt.floor("D")).all()


def test_every_click_follows_an_impression_and_every_purchase_a_click(tables):
    events, _, _ = tables
    key = ["user_id", "item_id", "dt"]
    by_type = {t: g.set_index(key)["ts"] for t, g in events.groupby("event_type")}
    assert by_type["impression"].index.is_unique  # one impression per (user, item, day)
    for later, earlier in (("click", "impression"), ("purchase", "click")):
        assert by_type[later].index.is_unique
        before = by_type[earlier].reindex(by_type[later].index)
        assert before.notna().all(), f"{later} without a {earlier}"
        assert (before < by_type[later]).all()


def test_funnel_rates_in_target_ranges(landing):
    _, summary = landing
    counts = summary["events"]
    assert 0.05 <= counts["click"] / counts["impression"] <= 0.20
    assert 0.05 <= counts["purchase"] / counts["click"] <= 0.30


def test_new_items_appear_and_get_shown(landing, tables):
    _, summary = landing
    events, items, _ = tables
    start = pd.Timestamp(summary["first_day"], tz="UTC")
    new = items.loc[items["created_at"] >= start, "item_id"]
    assert summary["new_items"] == len(new) == round(0.3 * ITEMS)
    assert events["item_id"].isin(new).any()
    assert (items["categories"].map(len).between(1, 2)).all()
    assert items["title"].str.split().map(len).between(2, 4).all()


def test_users_are_inactive_before_signing_up(landing, tables):
    _, summary = landing
    events, _, users = tables
    signup = pd.Timestamp(END, tz="UTC") - pd.to_timedelta(
        users.set_index("user_id")["signup_days"], unit="D"
    )
    assert (users["signup_days"] < DAYS).any()
    assert (events["ts"] >= signup.reindex(events["user_id"]).to_numpy()).all()


def test_users_click_their_favourite_topic_more(tables):
    """Taste is latent; the most shown topic estimates it (what is shown does not depend on clicks)."""
    events, items, _ = tables
    topic = items.set_index("item_id")["categories"].str[0]
    events = events.assign(topic=topic.reindex(events["item_id"]).to_numpy())
    shown = events[events["event_type"] == "impression"]
    favourite = shown.groupby("user_id")["topic"].agg(lambda t: t.value_counts().sort_index().idxmax())
    clicks = events.loc[events["event_type"] == "click", ["user_id", "item_id", "dt"]].assign(clicked=1.0)
    shown = shown.merge(clicks, on=["user_id", "item_id", "dt"], how="left").fillna({"clicked": 0.0})
    on_favourite = shown["topic"].to_numpy() == favourite.reindex(shown["user_id"]).to_numpy()
    ctr_favourite = shown.loc[on_favourite, "clicked"].mean()
    ctr_other = shown.loc[~on_favourite, "clicked"].mean()
    assert ctr_favourite > 2 * ctr_other


def test_rejects_empty_sizes(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        generate(tmp_path / "x", 0, 10, 3, 1)
    assert not (tmp_path / "x").exists()
