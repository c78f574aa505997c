"""The GX gates on real frames: good data passes, each defect fails on exactly its expectation.

Each Spark validation costs a few seconds on a small machine, so one bad frame carries several defects
(each on its own row) and the test asserts the exact set of failed expectations. The recommendations
run on pandas in a fraction of a second, so there each defect gets a frame of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pytest

from jobs.validation import (
    ValidationFailed,
    ValidationReport,
    events_suite,
    features_suite,
    recommendations_suite,
    validate_events,
    validate_examples,
    validate_recommendations,
)
from nightrec.config import Config

WINDOW_START = date(2026, 10, 1)
RUN_DATE = date(2026, 10, 5)
DAY = date(2026, 10, 3)

EVENTS_DDL = "event_id string, user_id string, item_id string, event_type string, value double, ts {ts}"
EXAMPLES_DDL = (
    "user_id string, item_id string, day date, label_click double, label_purchase double, label_dwell double, "
    "u_cnt_1d bigint, u_cnt_7d bigint, i_pop_1d bigint, i_pop_7d bigint, i_age_days int, u_extra double, "
    "u_hist array<string>, i_categories array<string>"
)


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config.model_validate(
        {
            "data": {"landing": "unused", "workdir": "unused", "warehouse": "unused"},
            "features": {
                "windows": [1, 7],
                "exposure_event_types": ["impression"],
                "seen_event_types": ["click", "purchase"],
            },
            "validation": {
                "event_types": ["impression", "click", "purchase"],
                "value_ranges": {"click": [0.0, 100000.0], "purchase": [0.0, 10000.0]},
                "label_rate_bounds": {"click": [0.1, 0.9]},
                "min_examples": 6,
            },
            "tasks": [
                {"name": "click", "label": {"event_types": ["click"]}},
                {"name": "purchase", "label": {"event_types": ["purchase"]}, "parent": "click"},
                {"name": "dwell", "type": "regression", "label": {"event_types": ["click"]}},
            ],
        }
    )


def failed(report: ValidationReport) -> set[tuple[str, str | None, str | None]]:
    return {(f.expectation, f.column, f.condition) for f in report.failures}


def failure(report: ValidationReport, expectation: str, column: str):
    (outcome,) = [f for f in report.failures if f.expectation == expectation and f.column == column]
    return outcome


def test_suites_are_built_from_config_without_a_context(cfg):
    events = events_suite(cfg, WINDOW_START, RUN_DATE)
    value_ranges = [
        e
        for e in events.expectations
        if e.expectation_type == "expect_column_values_to_be_between" and e.column == "value"
    ]
    assert [(e.min_value, e.max_value) for e in value_ranges] == [
        (0.0, 100000.0),
        (0.0, 10000.0),
        (-math.inf, math.inf),  # NaN and +-inf on every event type
    ]
    examples = features_suite(cfg)
    columns = {getattr(e, "column", None) for e in examples.expectations}
    assert {"label_dwell", "u_cnt_1d", "u_cnt_7d", "i_pop_1d", "i_pop_7d", "i_age_days"} <= columns
    # regression labels get type checks only
    dwell = {e.expectation_type for e in examples.expectations if getattr(e, "column", None) == "label_dwell"}
    assert dwell == {"expect_column_to_exist", "expect_column_values_to_be_of_type"}
    with pytest.raises(ValueError, match="empty window"):
        events_suite(cfg, RUN_DATE, RUN_DATE)


def test_good_frames_pass_and_share_one_data_docs_index(spark, cfg, tmp_path):
    # TIMESTAMP_NTZ, as Spark reads Parquet timestamps written without a zone; plus a `dt` partition column.
    events = spark.createDataFrame(
        [
            ("e1", "u1", "i1", "impression", None, datetime(2026, 10, 1, 0, 0), "2026-10-01"),
            ("e2", "u1", "i1", "click", 20000.0, datetime(2026, 10, 2, 9, 30), "2026-10-02"),
            ("e3", "u1", "i1", "purchase", 10000.0, datetime(2026, 10, 4, 23, 59, 59), "2026-10-04"),
            ("e4", "u2", "i2", "impression", None, datetime(2026, 10, 3, 12, 0), "2026-10-03"),
        ],
        EVENTS_DDL.format(ts="timestamp_ntz") + ", dt string",
    )
    examples = spark.createDataFrame(
        [
            ("u1", "i1", DAY, 1.0, 1.0, 12.5, 1, 3, 2, 5, 10, 0.5, ["i9"], ["drama"]),
            ("u1", "i2", DAY, 1.0, 0.0, None, 1, 3, 0, 1, 20, 0.5, ["i9"], []),
            ("u2", "i1", DAY, 0.0, 0.0, None, 0, 0, 2, 5, 10, 0.0, [], ["drama"]),
            ("u2", "i2", DAY, 0.0, 0.0, -3.0, 0, 0, 0, 1, 20, 0.0, [], []),
            ("u3", "i1", DAY, 0.0, 0.0, None, 0, 2, 2, 5, 10, 1.0, None, None),
            ("u1", "i1", date(2026, 10, 4), 1.0, 0.0, 4.0, 2, 4, 3, 6, 11, 0.5, ["i1"], ["drama"]),
        ],
        EXAMPLES_DDL,
    )
    docs = tmp_path / "data_docs"

    events_report = validate_events(events, cfg, WINDOW_START, RUN_DATE, docs)
    examples_report = validate_examples(examples, cfg, docs)

    assert events_report.success and examples_report.success
    assert all(r.success for r in events_report.results + examples_report.results)
    assert events_report.docs_index == examples_report.docs_index == docs.resolve() / "index.html"
    index = examples_report.docs_index.read_text()
    assert "events" in index and "examples" in index  # both validations of the run on one page
    assert not events.is_cached and not examples.is_cached  # GX's persist() is released
    assert "examples suite passed" in examples_report.message()


def test_each_event_defect_fails_its_own_expectation(spark, cfg, tmp_path):
    at = datetime(2026, 10, 2, 10, 0, tzinfo=UTC)
    events = spark.createDataFrame(
        [
            ("ok", "u1", 1, "impression", None, at),
            ("no_user", None, 1, "impression", None, at),
            ("dup", "u1", 2, "impression", None, at),
            ("dup", "u2", 2, "impression", None, at),
            ("typo", "u1", 1, "clik", None, at),
            ("early", "u1", 1, "impression", None, datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC)),
            ("at_run_date", "u1", 1, "impression", None, datetime(2026, 10, 5, 0, 0, tzinfo=UTC)),
            ("big_click", "u1", 1, "click", 20000.0, at),
            ("big_purchase", "u1", 1, "purchase", 20000.0, at),
        ],
        EVENTS_DDL.format(ts="timestamp").replace("item_id string", "item_id bigint"),
    )
    docs = tmp_path / "docs"

    with pytest.raises(ValidationFailed) as caught:
        validate_events(events, cfg, WINDOW_START, RUN_DATE, docs)

    report = caught.value.report
    assert failed(report) == {
        ("expect_column_values_to_be_of_type", "item_id", None),
        ("expect_column_values_to_not_be_null", "user_id", None),
        ("expect_column_values_to_be_unique", "event_id", None),
        ("expect_column_values_to_be_in_set", "event_type", None),
        ("expect_column_values_to_be_between", "ts", None),
        ("expect_column_values_to_be_between", "value", "event_type == purchase"),
    }
    samples = {
        (f.expectation, f.column): {row["event_id"] for row in f.sample} for f in report.failures if f.sample
    }
    assert samples == {
        ("expect_column_values_to_not_be_null", "user_id"): {"no_user"},
        ("expect_column_values_to_be_unique", "event_id"): {"dup"},
        ("expect_column_values_to_be_in_set", "event_type"): {"typo"},
        ("expect_column_values_to_be_between", "ts"): {"early", "at_run_date"},
        # the same value on a click is within the click range: only the purchase is rejected
        ("expect_column_values_to_be_between", "value"): {"big_purchase"},
    }
    assert failure(report, "expect_column_values_to_be_unique", "event_id").unexpected_count == 2
    assert failure(report, "expect_column_values_to_be_in_set", "event_type").element_count == 9
    assert failure(report, "expect_column_values_to_be_of_type", "item_id").observed == "LongType"

    message = str(caught.value)
    assert message.startswith(f"events suite failed 6 of {len(report.results)} expectations (Data Docs: ")
    assert "- expect_column_values_to_be_in_set(event_type): 1 of 9 rows unexpected" in message
    assert "event_id=typo user_id=u1 item_id=1 event_type=clik value=None ts=" in message
    assert "- expect_column_values_to_be_between(value where event_type == purchase): 1 of 1 rows" in message
    assert "event_id=big_purchase" in message and "event_id=big_click" not in message
    assert (
        "- expect_column_values_to_be_of_type(item_id): observed 'LongType', expected type_=StringType"
        in message
    )
    assert report.docs_index is not None and report.docs_index.exists()  # docs are written before the raise


def test_empty_events_fail_the_row_count_only(spark, cfg, tmp_path):
    events = spark.createDataFrame([], EVENTS_DDL.format(ts="timestamp"))

    with pytest.raises(ValidationFailed) as caught:
        validate_events(events, cfg, WINDOW_START, RUN_DATE, tmp_path)

    assert failed(caught.value.report) == {("expect_table_row_count_to_be_between", None, None)}
    assert "- expect_table_row_count_to_be_between(): observed 0, expected min_value=1" in str(caught.value)


def test_each_example_defect_fails_its_own_expectation(spark, cfg, tmp_path):
    rows = [
        ("u1", "i1", DAY, 1.0, 1.0, None, 1, 3, 2, 10, 0.5),
        ("u1", "i1", DAY, 1.0, 0.0, 7.0, 1, 3, 2, 10, 0.5),  # same key as above
        (None, "i2", DAY, 1.0, None, None, 1, 3, 2, 10, 0.5),  # no user, no purchase label
        ("u3", "i3", DAY, 0.0, 1.0, -1.0, 1, 3, 2, 10, 0.5),  # purchase without click (ESMM)
        ("u4", "i4", DAY, 2.0, 0.0, None, 1, None, 2, 10, None),  # click label 2, missing features
    ]
    # i_pop_7d is missing altogether; the click rate (1.0) is above its bound; 5 rows < min_examples 6.
    ddl = (
        "user_id string, item_id string, day date, label_click double, label_purchase double, "
        "label_dwell double, u_cnt_1d bigint, u_cnt_7d bigint, i_pop_1d bigint, i_age_days int, u_extra double"
    )
    examples = spark.createDataFrame(rows, ddl)

    with pytest.raises(ValidationFailed) as caught:
        validate_examples(examples, cfg, tmp_path)

    report = caught.value.report
    assert failed(report) == {
        ("expect_column_values_to_not_be_null", "user_id", None),
        ("expect_compound_columns_to_be_unique", "user_id, item_id, day", None),
        ("expect_column_values_to_not_be_null", "label_purchase", None),
        ("expect_column_values_to_be_in_set", "label_click", None),
        ("expect_column_mean_to_be_between", "label_click", None),
        ("expect_column_pair_values_a_to_be_greater_than_b", "label_click, label_purchase", None),
        ("expect_column_values_to_not_be_null", "u_cnt_7d", None),
        ("expect_column_values_to_not_be_null", "u_extra", None),  # found in the frame, not in the config
        ("expect_column_to_exist", "i_pop_7d", None),
        ("expect_column_values_to_not_be_null", "i_pop_7d", None),
        ("expect_table_row_count_to_be_between", None, None),
    }
    esmm = failure(report, "expect_column_pair_values_a_to_be_greater_than_b", "label_click, label_purchase")
    assert (esmm.unexpected_count, [(r["user_id"], r["item_id"]) for r in esmm.sample]) == (1, [("u3", "i3")])
    assert esmm.sample[0]["label_click"] == 0.0 and esmm.sample[0]["label_purchase"] == 1.0
    assert (
        failure(report, "expect_compound_columns_to_be_unique", "user_id, item_id, day").unexpected_count == 2
    )
    assert failure(report, "expect_column_mean_to_be_between", "label_click").observed == pytest.approx(1.0)
    assert failure(report, "expect_column_values_to_not_be_null", "i_pop_7d").error

    message = str(caught.value)
    assert (
        "- expect_column_pair_values_a_to_be_greater_than_b(label_click, label_purchase) "
        "[ESMM: label_purchase = 1 requires label_click = 1]: 1 of 5 rows unexpected" in message
    )
    assert "user_id=u3 item_id=i3 day=2026-10-03 label_click=0.0 label_purchase=1.0" in message
    assert "- expect_column_values_to_be_in_set(label_click): 1 of 5 rows unexpected" in message
    assert "user_id=u4 item_id=i4 day=2026-10-03 label_click=2.0" in message
    assert "- expect_column_values_to_not_be_null(i_pop_7d): could not be evaluated: " in message


# --- recommendations (pandas) ---------------------------------------------------------------------------

TOP_K = 3
CATALOGUE = 6  # items i1..i6
# u1 has seen i1 (5 unseen: gets K), u2 has seen i1..i4 (2 unseen: gets 2), u3 nothing; u9 is not scored.
SEEN = [("u1", "i1"), ("u1", "i1"), ("u2", "i1"), ("u2", "i2"), ("u2", "i3"), ("u2", "i4"), ("u9", "i5")]
RECS = [  # user, rank, item, score, p_click, p_purchase, p_dwell (regression: any value)
    ("u1", 1, "i2", 0.30, 0.6, 0.5, 40.0),
    ("u1", 2, "i3", 0.20, 0.5, 0.4, 12.5),
    ("u1", 3, "i4", 0.10, 0.5, 0.2, -3.0),
    ("u2", 1, "i6", 0.50, 1.0, 0.5, 0.0),
    ("u2", 2, "i5", 0.00, 0.0, 0.0, 1.0),
    ("u3", 1, "i1", 1.00, 1.0, 1.0, 2.0),
    ("u3", 2, "i2", 0.25, 0.5, 0.5, 2.0),
    ("u3", 3, "i3", 0.25, 0.5, 0.5, 2.0),
]


@pytest.fixture(scope="module")
def rec_cfg(cfg) -> Config:
    return Config.model_validate({**cfg.model_dump(), "scoring": {"top_k": TOP_K}})


def recs_frame(rows=RECS) -> pd.DataFrame:
    """The shape model.score.score_users returns, plus generated_at as the flow adds it."""
    recs = pd.DataFrame(
        rows, columns=["user_id", "rank", "item_id", "score", "p_click", "p_purchase", "p_dwell"]
    ).astype({"rank": "int32"})
    recs["model_version"] = "v1"
    recs["generated_at"] = datetime(2026, 10, 5, 2, 0, tzinfo=UTC)
    return recs


def seen_table() -> pa.Table:
    return pa.table({"user_id": [u for u, _ in SEEN], "item_id": [i for _, i in SEEN]})


def edit(recs: pd.DataFrame, user: str, rank: int, /, **values) -> pd.DataFrame:
    """Set `values` on the user's row of that rank (positional-only: `rank` may be a value to set)."""
    at = (recs["user_id"] == user) & (recs["rank"] == rank)
    assert at.sum() == 1
    for column, value in values.items():
        recs.loc[at, column] = value
    return recs


def test_recommendations_suite_follows_the_blend_and_task_types(rec_cfg):
    def bounds(suite) -> dict[str, tuple]:
        return {
            e.column: (e.min_value, e.max_value)
            for e in suite.expectations
            if e.expectation_type == "expect_column_values_to_be_between"
        }

    default = bounds(recommendations_suite(rec_cfg))
    assert default == {
        "rank": (1, TOP_K),
        "score": (0.0, 1.0),  # the default blend multiplies probabilities
        "p_click": (0.0, 1.0),
        "p_purchase": (0.0, 1.0),
        "p_dwell": (-math.inf, math.inf),  # a regression prediction only has to be finite
    }
    custom = Config.model_validate(
        {**rec_cfg.model_dump(), "scoring": {"top_k": 5, "blend": "click + dwell"}}
    )
    assert bounds(recommendations_suite(custom))["score"] == (-math.inf, math.inf)
    assert bounds(recommendations_suite(custom))["rank"] == (1, 5)


def test_good_recommendations_pass_with_fewer_rows_where_the_catalogue_runs_out(rec_cfg, tmp_path):
    recs = recs_frame()
    docs = tmp_path / "data_docs"

    report = validate_recommendations(recs, seen_table(), CATALOGUE, rec_cfg, docs)

    assert report.success and all(r.success for r in report.results)
    assert report.suite == "recommendations"
    assert "recommendations suite passed" in report.message()
    counts = [r for r in report.results if r.column == "rows, expected_rows"]
    assert [(c.element_count, c.unexpected_count) for c in counts] == [(3, 0)]  # u1, u2, u3: u9 unscored
    assert list(recs.columns) == list(recs_frame().columns)  # the caller's frame is left as it was
    index = report.docs_index.read_text()
    assert report.docs_index == docs.resolve() / "index.html"
    assert "recommendations" in index and "recommendation_counts" in index
    # the seen pairs may come as pandas too (and u2 may have seen more than the catalogue leaves)
    seen = seen_table().to_pandas()
    assert validate_recommendations(recs, seen, CATALOGUE, rec_cfg, docs).success


Defect = Callable[[pd.DataFrame], pd.DataFrame]

DEFECTS: dict[str, tuple[Defect, set[tuple[str, str]], list[str]]] = {
    # name: (defect, failed (expectation, column), lines the message must hold)
    "user_short_of_k": (
        lambda r: r[~((r["user_id"] == "u1") & (r["rank"] == 3))],
        {("expect_column_pair_values_to_be_equal", "rows, expected_rows")},
        [
            "- expect_column_pair_values_to_be_equal(rows, expected_rows) [top_k=3 rows per user, fewer "
            "only where fewer unseen items are left]: 1 of 3 users unexpected",
            "    user_id=u1 rows=2 expected_rows=3",
        ],
    ),
    "duplicate_rank": (
        # three rows within 1..3 with a repeated rank necessarily leave a gap
        lambda r: edit(r, "u3", 3, rank=2),
        {
            ("expect_compound_columns_to_be_unique", "user_id, rank"),
            ("expect_column_pair_values_to_be_equal", "max_rank, rows"),
        },
        [
            "- expect_compound_columns_to_be_unique(user_id, rank): 2 of 8 rows unexpected",
            "    user_id=u3 rank=2 item_id=i2\n    user_id=u3 rank=2 item_id=i3",
            "    user_id=u3 max_rank=2 rows=3",
        ],
    ),
    "duplicate_item": (
        lambda r: edit(r, "u1", 3, item_id="i2"),
        {("expect_compound_columns_to_be_unique", "user_id, item_id")},
        [
            "- expect_compound_columns_to_be_unique(user_id, item_id): 2 of 8 rows unexpected",
            "    user_id=u1 rank=1 item_id=i2\n    user_id=u1 rank=3 item_id=i2",
        ],
    ),
    "score_above_one": (
        lambda r: edit(r, "u3", 1, score=1.5),
        {("expect_column_values_to_be_between", "score")},
        [
            "- expect_column_values_to_be_between(score): 1 of 8 rows unexpected "
            "(expected min_value=0.0, max_value=1.0)",
            "    user_id=u3 rank=1 item_id=i1 score=1.5",
        ],
    ),
    "seen_item": (
        lambda r: edit(r, "u1", 2, item_id="i1"),
        {("expect_column_values_to_be_in_set", "already_seen")},
        [
            "- expect_column_values_to_be_in_set(already_seen) [an item the user already interacted with "
            "(seen/) is never recommended]: 1 of 8 rows unexpected (expected value_set=[False])",
            "    user_id=u1 rank=2 item_id=i1 already_seen=True",
        ],
    ),
    "rank_beyond_k": (
        lambda r: edit(r, "u1", 3, rank=4),
        {
            ("expect_column_values_to_be_between", "rank"),
            ("expect_column_pair_values_to_be_equal", "max_rank, rows"),
        },
        ["    user_id=u1 rank=4 item_id=i4", "    user_id=u1 max_rank=4 rows=3"],
    ),
    "probability_above_one": (
        lambda r: edit(r, "u2", 2, p_purchase=1.25),
        {("expect_column_values_to_be_between", "p_purchase")},
        ["    user_id=u2 rank=2 item_id=i5 p_purchase=1.25"],
    ),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_each_recommendation_defect_fails_its_own_expectation(rec_cfg, tmp_path, name):
    defect, expected, lines = DEFECTS[name]
    recs = defect(recs_frame())

    with pytest.raises(ValidationFailed) as caught:
        validate_recommendations(recs, seen_table(), CATALOGUE, rec_cfg, tmp_path)

    report = caught.value.report
    assert {(f.expectation, f.column) for f in report.failures} == expected
    message = str(caught.value)
    assert message.startswith(f"recommendations suite failed {len(expected)} of {len(report.results)} ")
    for line in lines:
        assert line in message
    assert report.docs_index is not None and report.docs_index.exists()  # docs are written before the raise


def test_a_custom_blend_needs_a_finite_score_only(rec_cfg, tmp_path):
    cfg = Config.model_validate(
        {**rec_cfg.model_dump(), "scoring": {"top_k": TOP_K, "blend": "click + dwell"}}
    )
    recs = recs_frame()
    recs["score"] = recs["p_click"] + recs["p_dwell"]  # 40.6, 13.0, ... -2.5: fine for this blend
    assert validate_recommendations(recs, seen_table(), CATALOGUE, cfg, tmp_path).success

    edit(recs, "u1", 1, score=math.inf)
    edit(recs, "u3", 2, score=math.nan, p_dwell=-math.inf)
    with pytest.raises(ValidationFailed) as caught:
        validate_recommendations(recs, seen_table(), CATALOGUE, cfg, tmp_path)

    report = caught.value.report
    assert {(f.expectation, f.column, f.unexpected_count) for f in report.failures} == {
        ("expect_column_values_to_be_between", "score", 1),  # inf; NaN is a null, not out of range
        ("expect_column_values_to_not_be_null", "score", 1),
        ("expect_column_values_to_be_between", "p_dwell", 1),
    }
    message = str(caught.value)
    assert "    user_id=u1 rank=1 item_id=i2 score=inf" in message
    assert "    user_id=u3 rank=2 item_id=i2 score=nan" in message
    assert "    user_id=u3 rank=2 item_id=i2 p_dwell=-inf" in message


def test_empty_or_malformed_recommendations(rec_cfg, tmp_path):
    with pytest.raises(ValidationFailed) as caught:
        validate_recommendations(recs_frame().iloc[:0], seen_table(), CATALOGUE, rec_cfg, tmp_path)
    assert {f.expectation for f in caught.value.report.failures} == {"expect_table_row_count_to_be_between"}
    assert "- expect_table_row_count_to_be_between(): observed 0, expected min_value=1" in str(caught.value)

    with pytest.raises(ValidationFailed) as caught:  # a task the scored model did not predict
        validate_recommendations(
            recs_frame().drop(columns="p_purchase"), seen_table(), CATALOGUE, rec_cfg, tmp_path
        )
    assert ("expect_column_to_exist", "p_purchase") in {
        (f.expectation, f.column) for f in caught.value.report.failures
    }

    with pytest.raises(ValueError, match="key columns"):
        validate_recommendations(
            recs_frame().drop(columns="rank"), seen_table(), CATALOGUE, rec_cfg, tmp_path
        )


def test_a_multiclass_label_is_a_list_of_categories(spark, cfg, tmp_path):
    genre = {"name": "genre", "type": "multiclass", "label": {"source": "item_categories"}}
    with_genre = Config.model_validate({**cfg.model_dump(), "tasks": [*cfg.model_dump()["tasks"], genre]})
    rows = [
        ("u1", "i1", DAY, 1.0, 1.0, 12.5, 1, 3, 2, 5, 10, 0.5, ["i9"], ["drama"]),
        ("u1", "i2", DAY, 1.0, 0.0, None, 1, 3, 0, 1, 20, 0.5, ["i9"], []),
        ("u2", "i1", DAY, 0.0, 0.0, None, 0, 0, 2, 5, 10, 0.0, [], ["drama"]),
        ("u2", "i2", DAY, 0.0, 0.0, -3.0, 0, 0, 0, 1, 20, 0.0, [], []),
        ("u3", "i1", DAY, 0.0, 0.0, None, 0, 2, 2, 5, 10, 1.0, None, None),
        ("u1", "i1", date(2026, 10, 4), 1.0, 0.0, 4.0, 2, 4, 3, 6, 11, 0.5, ["i1"], ["drama"]),
    ]
    as_list = spark.createDataFrame([(*r, r[-1]) for r in rows], EXAMPLES_DDL + ", label_genre array<string>")
    assert validate_examples(as_list, with_genre, tmp_path / "ok").success

    as_double = spark.createDataFrame([(*r, 1.0) for r in rows], EXAMPLES_DDL + ", label_genre double")
    with pytest.raises(ValidationFailed) as failed_run:
        validate_examples(as_double, with_genre, tmp_path / "bad")
    assert failure(failed_run.value.report, "expect_column_values_to_be_of_type", "label_genre")
