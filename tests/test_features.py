"""The Spark feature transformations on tiny frames: exact values, and no future event in any feature or label."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from jobs import features
from nightrec import schema as S
from nightrec.config import Config

EVENT_SCHEMA = (
    "event_id string, user_id string, item_id string, event_type string, value double, ts timestamp"
)
ITEM_SCHEMA = "item_id string, title string, categories array<string>, created_at timestamp"


def cfg(
    negatives: int = 0,
    value_stats: bool = False,
    as_of: str = "moment",
    gap: int = 0,
    residuals: bool = False,
) -> Config:
    return Config.model_validate(
        {
            "data": {"landing": "x", "workdir": "x", "warehouse": "x"},
            "features": {
                "windows": [1, 7],
                "history_length": 3,
                "exposure_event_types": ["impression"],
                "negatives_per_positive": negatives,
                "seen_event_types": ["click", "purchase"],
                "value_stats": value_stats,
                "value_residuals": residuals,
                "user_features_as_of": as_of,
                "user_history_gap_minutes": gap,
            },
            "validation": {"event_types": ["impression", "click", "purchase"]},
            "tasks": [
                {"name": "click", "label": {"event_types": ["click"]}},
                {
                    "name": "purchase",
                    "label": {"event_types": ["purchase"], "min_value": 10.0},
                    "parent": "click",
                },
                {"name": "spend", "type": "regression", "label": {"event_types": ["purchase"]}},
            ],
        }
    )


def ts(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


def frame(spark, rows):
    events = spark.createDataFrame(
        [(f"e{n}", u, i, t, v, stamp) for n, (u, i, t, v, stamp) in enumerate(rows)], EVENT_SCHEMA
    )
    return features.with_day(events)


@pytest.fixture(scope="module")
def items(spark):
    rows = [
        ("i1", "one", ["a"], ts(1, 0)),
        ("i2", "two", ["b", "c"], ts(1, 0)),
        ("i3", "three", None, ts(3, 0)),
        ("i4", "four", ["a"], ts(1, 0)),
        ("i9", "future", ["z"], ts(20, 0)),
    ]
    return spark.createDataFrame(rows, ITEM_SCHEMA)


BASE = [
    ("u1", "i1", "impression", None, ts(2, 9)),
    ("u1", "i1", "click", None, ts(2, 10)),
    ("u1", "i2", "impression", None, ts(2, 11)),
    ("u1", "i2", "click", None, ts(3, 8)),  # a click on another day does not label day 2
    ("u1", "i2", "purchase", 5.0, ts(3, 9)),
    ("u1", "i3", "impression", None, ts(4, 9)),
    ("u1", "i3", "click", None, ts(4, 10)),
    ("u1", "i3", "purchase", 25.0, ts(4, 11)),
    ("u2", "i1", "impression", None, ts(4, 9)),
    ("u2", "i1", "click", None, ts(4, 9)),
]


def as_dict(df, *keys):
    return {tuple(r[k] for k in keys): r.asDict() for r in df.collect()}


def user_keys(spark, *keys):
    """User feature keys: (user, moment) rows."""
    return spark.createDataFrame(list(keys), f"user_id string, {features.AS_OF} timestamp")


def naive(moment: datetime) -> datetime:
    """The moment as Spark gives it back (a naive datetime in the session's UTC)."""
    return moment.replace(tzinfo=None)


def test_labels_come_from_the_examples_own_day(spark):
    ex = as_dict(
        features.exposures(frame(spark, BASE), ["impression"], cfg().tasks), "user_id", "item_id", "day"
    )
    assert set(ex) == {
        ("u1", "i1", date(2026, 10, 2)),
        ("u1", "i2", date(2026, 10, 2)),
        ("u1", "i3", date(2026, 10, 4)),
        ("u2", "i1", date(2026, 10, 4)),
    }
    assert ex[("u1", "i1", date(2026, 10, 2))]["label_click"] == 1.0
    # the moment of an example is the pair's first event of the day
    assert ex[("u1", "i3", date(2026, 10, 4))][features.AS_OF] == naive(ts(4, 9))
    day2_i2 = ex[("u1", "i2", date(2026, 10, 2))]
    assert (day2_i2["label_click"], day2_i2["label_purchase"], day2_i2["label_spend"]) == (0.0, 0.0, None)
    day4 = ex[("u1", "i3", date(2026, 10, 4))]
    assert (day4["label_click"], day4["label_purchase"], day4["label_spend"]) == (1.0, 1.0, 25.0)


def test_point_in_time_values(spark, items):
    events = frame(spark, BASE)
    moments = [ts(4, 0), ts(4, 10), ts(4, 11), ts(2, 9)]
    keys = user_keys(spark, *[("u1", m) for m in moments])
    users = as_dict(features.user_features(events, keys, cfg()), "user_id", features.AS_OF)
    on4 = users[("u1", naive(ts(4, 0)))]
    # day 3 has 2 events (the window of 1 day), days 2-3 have 5 (the window of 7 days); day 4 is not yet
    assert (on4["u_cnt_1d"], on4["u_cnt_7d"]) == (2.0, 5.0)
    # engagement history before day 4, oldest first: click i1 (day 2), then click+purchase of i2 (day 3)
    assert on4["u_hist"] == ["i1", "i2", "i2"]
    # within day 4: at 10:00 the 9:00 impression counts, the 10:00 click does not (strictly before)...
    at10 = users[("u1", naive(ts(4, 10)))]
    assert (at10["u_cnt_1d"], at10["u_hist"]) == (1.0, ["i1", "i2", "i2"])
    # ...and at 11:00 the 10:00 click is the newest item of the history, capped at 3
    at11 = users[("u1", naive(ts(4, 11)))]
    assert (at11["u_cnt_1d"], at11["u_hist"]) == (2.0, ["i2", "i2", "i3"])
    first = users[("u1", naive(ts(2, 9)))]  # the user's first event: nothing before it
    assert (first["u_cnt_1d"], first["u_cnt_7d"], first["u_hist"]) == (0.0, 0.0, [])

    item_keys = spark.createDataFrame(
        [("i1", date(2026, 10, 5)), ("i3", date(2026, 10, 4))], "item_id string, day date"
    )
    it = as_dict(features.item_features(events, items, item_keys, cfg()), "item_id", "day")
    assert (it[("i1", date(2026, 10, 5))]["i_pop_1d"], it[("i1", date(2026, 10, 5))]["i_pop_7d"]) == (
        1.0,
        2.0,
    )
    assert it[("i1", date(2026, 10, 5))]["i_age_days"] == 4.0
    assert it[("i3", date(2026, 10, 4))]["i_pop_7d"] == 0.0  # its own day's clicks are not yet known
    assert it[("i3", date(2026, 10, 4))][S.CATEGORIES] == []


def test_value_stats_are_the_mean_and_count_of_earlier_values(spark, items):
    events = frame(spark, BASE)
    config = cfg(value_stats=True)
    keys = user_keys(spark, ("u1", ts(4, 0)), ("u1", ts(3, 9)), ("u1", ts(4, 12)), ("u2", ts(9, 0)))
    users = as_dict(features.user_features(events, keys, config), "user_id", features.AS_OF)
    stats = lambda user, moment: (  # noqa: E731
        users[(user, naive(moment))]["u_val_mean"],
        users[(user, naive(moment))]["u_val_n"],
    )
    # u1's only valued event before day 4 is the purchase of 5.0 on day 3 at 9:00; at 9:00 itself not yet
    assert stats("u1", ts(4, 0)) == (5.0, 1.0)
    assert stats("u1", ts(3, 9)) == (0.0, 0.0)
    assert stats("u1", ts(4, 12)) == (15.0, 2.0)  # and the purchase of 25.0 at 11:00 the same day
    assert stats("u2", ts(9, 0))[1] == 0.0  # clicks carry no value
    item_keys = spark.createDataFrame(
        [("i2", date(2026, 10, 9)), ("i3", date(2026, 10, 4)), ("i3", date(2026, 10, 5))],
        "item_id string, day date",
    )
    it = as_dict(features.item_features(events, items, item_keys, config), "item_id", "day")
    assert (it[("i2", date(2026, 10, 9))]["i_val_mean"], it[("i2", date(2026, 10, 9))]["i_val_n"]) == (
        5.0,
        1.0,
    )
    assert it[("i3", date(2026, 10, 4))]["i_val_n"] == 0.0  # the purchase of its own day is not yet known
    assert it[("i3", date(2026, 10, 5))]["i_val_mean"] == 25.0


def test_value_residuals_are_values_less_the_item_mean_before_their_day(spark, items):
    rows = BASE + [  # BASE: u1 buys i2 for 5.0 on day 3 at 9:00
        ("u2", "i1", "purchase", 20.0, ts(2, 10)),  # i1 has no earlier value: no residual
        ("u3", "i1", "purchase", 40.0, ts(3, 10)),  # i1's mean before day 3 is 20: residual +20
        ("u3", "i2", "purchase", 10.0, ts(3, 11)),  # i2's day-3 value is not yet known: no residual
        ("u3", "i2", "purchase", 2.0, ts(5, 10)),  # i2's mean before day 5 is (5 + 10) / 2: residual -5.5
    ]
    keys = user_keys(spark, ("u3", ts(3, 10)), ("u3", ts(3, 12)), ("u3", ts(6, 0)), ("u2", ts(6, 0)))
    config = cfg(value_stats=True, residuals=True)
    users = as_dict(features.user_features(frame(spark, rows), keys, config), "user_id", features.AS_OF)
    res = lambda user, moment: (  # noqa: E731
        users[(user, naive(moment))]["u_res_mean"],
        users[(user, naive(moment))]["u_res_n"],
    )
    assert res("u3", ts(3, 10)) == (0.0, 0.0)  # strictly before the moment
    assert res("u3", ts(3, 12)) == (20.0, 1.0)
    assert res("u3", ts(6, 0)) == (7.25, 2.0)
    assert res("u2", ts(6, 0)) == (0.0, 0.0)
    assert users[("u3", naive(ts(6, 0)))]["u_val_mean"] == (40.0 + 10.0 + 2.0) / 3  # the raw mean counts all


def test_history_is_capped_at_the_newest_items(spark):
    rows = [("u1", f"i{n}", "click", None, ts(2 + n // 2, 8 + n)) for n in range(8)]
    keys = user_keys(spark, ("u1", ts(9, 0)))
    hist = features.user_history(frame(spark, rows), keys, ["click"], 3).collect()[0]["u_hist"]
    assert hist == ["i5", "i6", "i7"]


def test_no_future_event_reaches_features_or_labels(spark, items):
    """Adding events after an example's moment changes none of its features, nor labels of earlier days."""
    config = cfg(negatives=1, value_stats=True, residuals=True)
    past = frame(spark, BASE)
    future_rows = BASE + [
        ("u1", "i1", "click", None, ts(4, 23)),  # same day as the day-4 examples, later hour
        ("u1", "i4", "impression", None, ts(5, 9)),
        ("u1", "i4", "click", None, ts(5, 9)),
        ("u1", "i2", "purchase", 50.0, ts(6, 9)),
        ("u2", "i2", "click", None, ts(6, 9)),
    ]
    future = frame(spark, future_rows)
    before = as_dict(features.training_examples(past, items, config), "user_id", "item_id", "day")
    after = as_dict(features.training_examples(future, items, config), "user_id", "item_id", "day")
    feature_cols = [c for c in next(iter(before.values())) if c.startswith(("u_", "i_"))]
    assert feature_cols, "no feature columns found"
    for key, row in before.items():
        assert key in after, key
        assert {c: row[c] for c in feature_cols} == {c: after[key][c] for c in feature_cols}, key
        if key[2] < date(
            2026, 10, 4
        ):  # a later same-day click may change a day-4 label, never an earlier one
            labels = [c for c in row if c.startswith("label_")]
            assert {c: row[c] for c in labels} == {c: after[key][c] for c in labels}, key


@pytest.mark.parametrize(
    ("as_of", "gap", "expected"),
    [
        ("moment", 0, (["i2", "i2", "i4"], 6.0)),
        ("day", 0, (["i1", "i2", "i2"], 5.0)),
        ("moment", 59, (["i2", "i2", "i4"], 6.0)),  # the 8:00 click is 60 minutes before the moment
        ("moment", 60, (["i1", "i2", "i2"], 5.0)),  # ... so a 60-minute gap leaves it out
        ("moment", 24 * 60, (["i1", "i2"], 4.0)),  # a day's gap also leaves out day 3's 9:00 purchase
    ],
)
def test_same_day_events_before_the_moment_reach_user_features_only_as_of_the_moment(
    spark, items, as_of, gap, expected
):
    """u1 clicks i4 at 8:00 on day 4, before the day-4 exposure of i3 at 9:00: part of that example's user
    features as of the moment, left out as of the day, and left out by a history gap of an hour or more."""
    rows = BASE + [("u1", "i4", "click", None, ts(4, 8))]
    config = cfg(value_stats=True, as_of=as_of, gap=gap)
    examples = features.training_examples(frame(spark, rows), items, config)
    example = as_dict(examples, "user_id", "item_id", "day")[("u1", "i3", date(2026, 10, 4))]
    assert (example["u_hist"], example["u_cnt_7d"]) == expected


def test_negatives_are_unseen_available_and_reproducible(spark, items):
    config = cfg(negatives=3)
    events = frame(spark, BASE)
    positives = features.exposures(events, ["impression"], config.tasks)
    draw = lambda: features.sample_negatives(positives, events, items, 3, 7, config.tasks)  # noqa: E731
    negs = draw().collect()
    assert negs, "expected some negatives"
    assert sorted(map(tuple, negs)) == sorted(map(tuple, draw().collect()))
    touched = {(r["user_id"], r["item_id"], r["day"]) for r in events.collect()}
    created = {r["item_id"]: r["created_at"].date() for r in items.collect()}
    moments = {(r["user_id"], r["day"]): set() for r in positives.collect()}
    for r in positives.collect():
        moments[(r["user_id"], r["day"])].add(r[features.AS_OF])
    for r in negs:
        assert r[features.AS_OF] in moments[(r["user_id"], r["day"])], "a negative takes an exposure's moment"
        assert all(not (u == r["user_id"] and i == r["item_id"] and d <= r["day"]) for u, i, d in touched)
        assert created[r["item_id"]] < r["day"], "an item cannot be a negative before it exists"
        assert (r["label_click"], r["label_purchase"], r["label_spend"]) == (0.0, 0.0, None)


def test_scoring_inputs_as_of_the_run_date(spark, items):
    events = frame(spark, BASE)
    users, item_feats, seen = features.scoring_inputs(events, items, cfg(), date(2026, 10, 10))
    assert {r["user_id"] for r in users.collect()} == {"u1", "u2"}
    assert {r["item_id"] for r in item_feats.collect()} == {"i1", "i2", "i3", "i4"}  # i9 is created later
    assert {(r["user_id"], r["item_id"]) for r in seen.collect()} == {
        ("u1", "i1"),
        ("u1", "i2"),
        ("u1", "i3"),
        ("u2", "i1"),
    }
    u1 = as_dict(users, "user_id")[("u1",)]
    assert u1["u_hist"] == ["i2", "i3", "i3"] and u1["u_cnt_7d"] == 5.0  # days 3-9: day 2 is outside


def multiclass_cfg() -> Config:
    """cfg() plus the two category tasks of the seed designs: the item's genre and the user's genre mix."""
    raw = cfg().model_dump()
    raw["tasks"] += [
        {"name": "genre", "type": "multiclass", "label": {"source": "item_categories"}},
        {"name": "taste", "type": "multiclass", "label": {"source": "user_categories"}},
    ]
    return Config.model_validate(raw)


def test_multiclass_labels_are_item_and_history_categories(spark, items):
    rows = BASE + [("u1", "i4", "impression", None, ts(5, 9)), ("u3", "i2", "impression", None, ts(5, 9))]
    examples = features.training_examples(frame(spark, rows), items, multiclass_cfg())
    assert dict(examples.dtypes)["label_genre"] == dict(examples.dtypes)["label_taste"] == "array<string>"
    assert dict(examples.dtypes)["label_click"] == "double"
    ex = as_dict(examples, "user_id", "item_id", "day")
    # the item's own categories; an item without categories gives []
    assert ex[("u1", "i2", date(2026, 10, 2))]["label_genre"] == ["b", "c"]
    assert ex[("u1", "i3", date(2026, 10, 4))]["label_genre"] == []
    # before day 4: clicked i1 (a) on day 2, clicked and bought i2 (b, c) on day 3: repeats kept, history order
    assert ex[("u1", "i3", date(2026, 10, 4))]["label_taste"] == ["a", "b", "c", "b", "c"]
    # before day 5 the history is capped at its newest 3 items (i2, i3, i3) as u_hist is; i3 has no categories
    assert ex[("u1", "i4", date(2026, 10, 5))]["u_hist"] == ["i2", "i3", "i3"]
    assert ex[("u1", "i4", date(2026, 10, 5))]["label_taste"] == ["b", "c"]
    # empty history (u1's first day, u3 only ever had an impression): []
    assert ex[("u1", "i1", date(2026, 10, 2))]["label_taste"] == []
    assert ex[("u3", "i2", date(2026, 10, 5))]["label_taste"] == []


def test_user_categories_label_takes_no_event_of_the_day_or_later(spark, items):
    """A click at the example's moment or later never enters the user's category label."""
    config = multiclass_cfg()
    later = BASE + [
        ("u1", "i4", "click", None, ts(4, 9)),  # at the moment of the day-4 example (u1, i3): not before it
        ("u1", "i4", "purchase", 30.0, ts(6, 9)),
        ("u2", "i2", "click", None, ts(4, 23)),
    ]
    before = as_dict(
        features.training_examples(frame(spark, BASE), items, config), "user_id", "item_id", "day"
    )
    after = as_dict(
        features.training_examples(frame(spark, later), items, config), "user_id", "item_id", "day"
    )
    for key, row in before.items():
        assert (row["label_taste"], row["label_genre"]) == (
            after[key]["label_taste"],
            after[key]["label_genre"],
        )
    assert after[("u2", "i1", date(2026, 10, 4))]["label_taste"] == []


def test_scoring_items_carry_title_and_text(spark, items):
    events = frame(spark, BASE)
    _, no_text, _ = features.scoring_inputs(events, items, cfg(), date(2026, 10, 10))
    assert as_dict(no_text, "item_id")[("i2",)][S.TITLE] == "two"
    assert as_dict(no_text, "item_id")[("i2",)][S.TEXT] is None  # the landing zone has no text column
    described = items.withColumn("text", items["title"].substr(1, 2))
    _, with_text, _ = features.scoring_inputs(events, described, cfg(), date(2026, 10, 10))
    assert {k[0]: r[S.TEXT] for k, r in as_dict(with_text, "item_id").items()} == {
        "i1": "on",
        "i2": "tw",
        "i3": "th",
        "i4": "fo",
    }


def test_write_features_reports_each_output_as_it_is_written(spark, items, tmp_path):
    from jobs.feature_job import write_features

    raw = spark.createDataFrame(
        [(f"e{n}", u, i, t, v, stamp) for n, (u, i, t, v, stamp) in enumerate(BASE)], EVENT_SCHEMA
    )
    lines: list[str] = []
    counts = write_features(raw, items, cfg(), date(2026, 10, 10), tmp_path, progress=lines.append)
    assert [line.split(":")[0] for line in lines] == [f"features {k}/4" for k in range(1, 5)]
    for line, (name, rows) in zip(lines, counts.items(), strict=True):
        assert f": {name} {rows} rows in " in line and line.endswith(" s")
    assert counts[S.ITEMS] == 4 and counts[S.SEEN] == 4
