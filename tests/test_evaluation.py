"""The top-K metrics of the backtest protocol, checked by hand on small cases."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.evaluation import (
    catalogue_coverage,
    judged_events,
    judged_pairs,
    new_item_share,
    new_items,
    read_events,
    topk_metrics,
    value_rule,
)


def recs(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def pairs(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def test_metrics_by_hand():
    ranked = recs([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "y", 2)])
    truth = pairs([("a", "y"), ("a", "w"), ("b", "q"), ("c", "x")])  # c was judged but got nothing
    m = topk_metrics(ranked, truth, k=2)
    assert m["users"] == 3
    assert m["recall@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    ideal_a = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / ideal_a) / 3)
    assert m["hit@2"] == pytest.approx(1 / 3)


def test_ranks_beyond_k_do_not_count():
    m = topk_metrics(recs([("a", "x", 1), ("a", "y", 2)]), pairs([("a", "y")]), k=1)
    assert m["hit@1"] == 0.0 and m["ndcg@1"] == 0.0


def test_test_set_keeps_judged_users_and_known_items():
    history = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]})
    future = pd.DataFrame({"user_id": ["a", "a", "c", "b"], "item_id": ["y", "new", "x", "y"]})
    assert sorted(map(tuple, judged_pairs(history, future).to_numpy())) == [("a", "y"), ("b", "y")]


def test_coverage_and_new_item_share_count_the_top_k_only():
    ranked = recs([("a", "x", 1), ("a", "n", 2), ("b", "x", 1), ("b", "y", 2)])
    assert catalogue_coverage(ranked, candidates=4, k=1) == pytest.approx(1 / 4)
    assert catalogue_coverage(ranked, candidates=4, k=2) == pytest.approx(3 / 4)
    assert new_item_share(ranked, {"n"}, k=2) == pytest.approx(1 / 4)
    assert new_item_share(ranked, {"n"}, k=1) == 0.0


def test_new_items_are_first_seen_within_the_days_before_d():
    history = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "item_id": ["old", "old", "fresh"],
            "ts": pd.to_datetime(["2026-10-01", "2026-10-30", "2026-10-25"], utc=True),
        }
    )
    assert new_items(history, date(2026, 11, 1), days=14) == {"fresh"}


def test_judged_events_keep_every_rating_and_the_value_rule_labels_them():
    history = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]})
    future = pd.DataFrame(
        {"user_id": ["a", "a", "c", "b"], "item_id": ["y", "y", "x", "new"], "value": [5.0, 3.0, 4.0, 4.0]}
    )
    events = judged_events(history, future)
    assert events[["user_id", "item_id"]].values.tolist() == [["a", "y"], ["a", "y"]]
    assert value_rule(events["value"], 4.0, None).tolist() == [True, False]
    assert value_rule(pd.Series([1.0, 3.0, 5.0]), 2.0, 4.0).tolist() == [False, True, False]


def test_bias_peer_by_hand():
    from model.peers import bias_peer

    history = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "value": [5.0, 3.0, 4.0]})
    mu = 4.0
    b_x, b_y = (1.0 + 0.0) / (2 + 5), -1.0 / (1 + 5)
    b_a = ((5 - mu - b_x) + (3 - mu - b_y)) / (2 + 5)
    pairs = pd.DataFrame({"user_id": ["a", "z"], "item_id": ["x", "q"]})
    assert bias_peer(history, pairs).tolist() == pytest.approx([mu + b_x + b_a, mu])


ML100K = Path("/work/shared/data/movielens-100k")


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not available")
def test_bias_peer_like_auc_matches_the_reference_on_movielens_100k(tmp_path):
    """The evaluation notes' figure: AUC of rating >= 4, pooled over the 11 run dates' judged test ratings."""
    from jobs.movielens import import_movielens
    from model.metrics import roc_auc
    from model.peers import bias_peer

    import_movielens(ML100K, tmp_path / "landing")
    dates = [date(1997, 11, 15) + timedelta(days=14 * i) for i in range(11)]
    events = read_events(
        str(tmp_path / "landing"), date(1970, 1, 1), dates[-1] + timedelta(days=14), ["rating"], True
    )
    ts = pd.to_datetime(events["ts"], utc=True)
    scores, labels = [], []
    for d in dates:
        start, end = pd.Timestamp(d, tz="UTC"), pd.Timestamp(d + timedelta(days=14), tz="UTC")
        history = events[ts < start]
        test = judged_events(history, events[(ts >= start) & (ts < end)])
        scores.append(bias_peer(history, test))
        labels.append(value_rule(test["value"], 4.0, None))
    assert roc_auc(np.concatenate(labels), np.concatenate(scores)) == pytest.approx(0.7453, abs=5e-5)
