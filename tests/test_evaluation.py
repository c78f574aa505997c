"""The top-K metrics of the backtest protocol, checked by hand on small cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from model.evaluation import judged_pairs, topk_metrics


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
