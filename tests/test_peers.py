"""The peers on cases small enough to check by hand, and EASE's lambda choice kept off the test window."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.evaluation import judged_pairs, read_events, topk_metrics
from model.peers import (
    COLUMNS,
    EASE_LAMBDAS,
    choose_ease_lambda,
    ease_peer,
    ease_sweep,
    ease_weights,
    given_parent,
    itemknn_peer,
    pop_peer,
)

D = date(2026, 3, 1)
OLD = datetime(2026, 1, 10, tzinfo=UTC)


def events(rows: list[tuple[str, str, datetime]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def baskets(spec: dict[str, str], when: datetime = OLD) -> list[tuple[str, str, datetime]]:
    """{"u1": "xy"} -> u1 had events on items x and y at `when`."""
    return [(user, item, when) for user, items in spec.items() for item in items]


def items_of(recs: pd.DataFrame, user: str) -> list[str]:
    return recs[recs["user_id"] == user].sort_values("rank")["item_id"].tolist()


def test_pop_orders_by_recent_counts_and_skips_seen():
    recent = datetime(2026, 2, 20, tzinfo=UTC)
    history = events(
        baskets({"a": "x", "b": "x", "c": "xy", "d": "y", "e": "z"}, recent)
        + baskets({"f": "o", "g": "o", "h": "o"}, datetime(2025, 10, 1, tzinfo=UTC))
    )
    recs = pop_peer(history, ["a", "new"], D, k=4, days=30)
    assert list(recs.columns) == COLUMNS
    # a saw x; "o" is the most rated overall but only before the 30 days, so it comes last with score 0
    assert items_of(recs, "a") == ["y", "z", "o"]
    assert items_of(recs, "new") == ["x", "y", "z", "o"]
    assert recs[recs["user_id"] == "new"]["score"].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_pop_ignores_events_at_or_after_the_run_date():
    later = [("c", "y", datetime(2026, 3, 1, tzinfo=UTC)), ("d", "y", datetime(2026, 3, 2, tzinfo=UTC))]
    recs = pop_peer(events([("a", "x", OLD), ("b", "y", OLD), *later]), ["z"], D, k=5)
    assert items_of(recs, "z") == ["x", "y"] and recs["score"].tolist() == [1.0, 1.0]  # y would lead with 3


def test_itemknn_recommends_the_co_consumed_item():
    history = events(baskets({"a": "xy", "b": "xy", "c": "xz", "u": "x"}))
    recs = itemknn_peer(history, ["u"], k=2)
    assert items_of(recs, "u") == ["y", "z"]
    # x is held by 4 users, y by 2 and shares 2 of them, z by 1 and shares 1
    assert recs["score"].tolist() == pytest.approx([2 / math.sqrt(4 * 2), 1 / math.sqrt(4 * 1)])


def test_itemknn_pruning_keeps_only_close_neighbours():
    history = events(baskets({"a": "xy", "b": "xy", "c": "xz", "u": "x"}))
    recs = itemknn_peer(history, ["u"], k=2, neighbours=1)
    assert items_of(recs, "u") == ["y", "z"]
    assert recs["score"].tolist() == pytest.approx([2 / math.sqrt(4 * 2), 0.0])  # z is not x's neighbour


def test_ease_weights_have_zero_diagonal_and_match_column_ridge_regressions():
    rng = np.random.default_rng(7)
    x = (rng.random((40, 6)) < 0.4).astype(float)
    lam = 3.0
    b = ease_weights(x.T @ x, lam)
    assert np.all(np.diag(b) == 0.0)
    # With diag(B) = 0 the objective splits by column: column j is the ridge regression of item j on the others.
    for j in range(6):
        others = [i for i in range(6) if i != j]
        xo = x[:, others]
        ridge = np.linalg.solve(xo.T @ xo + lam * np.eye(5), xo.T @ x[:, j])
        assert b[others, j] == pytest.approx(ridge)


def test_ease_sweep_scores_like_the_closed_form_for_every_lambda():
    rng = np.random.default_rng(11)
    history = events([(f"u{u}", f"i{i}", OLD) for u in range(50) for i in range(15) if rng.random() < 0.3])
    users = [f"u{u}" for u in range(10)]
    sweep = ease_sweep(history, users, k=5, lambdas=(0.5, 20.0))
    for lam, recs in sweep.items():
        direct = ease_peer(history, users, k=5, lam=lam)
        assert recs[["user_id", "item_id", "rank"]].equals(direct[["user_id", "item_id", "rank"]])
        assert recs["score"].to_numpy() == pytest.approx(direct["score"].to_numpy())


def test_ease_recovers_an_obvious_co_occurrence():
    history = events(baskets({"a": "xy", "b": "xy", "c": "xy", "d": "z", "e": "zw", "u": "x"}))
    assert items_of(ease_peer(history, ["u"], k=1, lam=1.0), "u") == ["y"]


@pytest.mark.parametrize(
    "peer",
    [
        lambda h, users, k: pop_peer(h, users, D, k),
        lambda h, users, k: itemknn_peer(h, users, k),
        lambda h, users, k: ease_peer(h, users, k, lam=10.0),
        lambda h, users, k: ease_sweep(h, users, k, lambdas=(10.0,))[10.0],
    ],
    ids=["pop", "itemknn", "ease", "ease_sweep"],
)
def test_peers_never_recommend_seen_items_and_fill_k_when_they_can(peer):
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{i}", OLD) for u in range(30) for i in range(12) if rng.random() < 0.3]
    rows += [("greedy", f"i{i}", OLD) for i in range(10)]  # 12 candidates, 10 seen: only 2 left
    history = events(rows)
    users = ["u0", "u1", "u2", "greedy", "stranger"]
    recs = peer(history, users, 5)
    seen = set(zip(history["user_id"], history["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    sizes = recs.groupby("user_id").size()
    assert sizes["greedy"] == 2
    for user in ["u0", "u1", "u2", "stranger"]:
        assert sizes[user] == 5
        assert (
            items_of(recs, user)
            == recs[recs["user_id"] == user]
            .sort_values("score", ascending=False, kind="stable")["item_id"]
            .tolist()
        )
    assert set(recs["item_id"]) <= set(history["item_id"])  # candidates: items seen before D
    assert recs.groupby("user_id")["rank"].apply(lambda r: r.tolist() == list(range(1, len(r) + 1))).all()


def lambda_case() -> pd.DataFrame:
    """A night where validation rewards a small lambda and the test window a large one.

    `hit` and `twin` are always consumed together and, in 4 baskets, with `a`; `niche` goes with `a` only
    (2 baskets). A user holding `a` gets `niche` first from a small lambda (the regression explains `hit`
    and `twin` by each other, leaving `a` little credit for them) and `hit` or `twin` first from a large one
    (close to raw co-counts, 4 > 2). `v` takes `niche` in the 14 days before D, `w` takes `hit` and `twin`
    in the 14 days after.
    """
    rows = baskets({f"aht{n}": ["a", "hit", "twin"] for n in range(4)})
    rows += baskets({f"an{n}": ["a", "niche"] for n in range(2)})
    rows += baskets({f"ht{n}": ["hit", "twin"] for n in range(5)})
    rows += baskets({"v": ["a"], "w": ["a"]})
    rows += [
        ("v", "niche", datetime(2026, 2, 20, tzinfo=UTC)),
        ("w", "hit", datetime(2026, 3, 5, tzinfo=UTC)),
        ("w", "twin", datetime(2026, 3, 5, tzinfo=UTC)),
    ]
    return events(rows)


def test_lambda_is_chosen_on_the_days_before_d_not_on_the_test_window():
    history = lambda_case()
    lambdas = (0.1, 1000.0)
    choice = choose_ease_lambda(history, D, lambdas, k=1)
    assert (choice.val_start, choice.val_end, choice.val_users) == (D - timedelta(days=14), D, 1)
    assert choice.lam == 0.1 and choice.ndcg == {0.1: 1.0, 1000.0: 0.0}

    # The optimistic choice, made on the test window, is the other one.
    ts = pd.to_datetime(history["ts"], utc=True)
    before, after = history[ts < pd.Timestamp(D, tz="UTC")], history[ts >= pd.Timestamp(D, tz="UTC")]
    truth = judged_pairs(before, after)
    on_test = {
        lam: topk_metrics(r, truth, 1)["ndcg@1"] for lam, r in ease_sweep(before, ["w"], 1, lambdas).items()
    }
    assert on_test == {0.1: 0.0, 1000.0: 1.0}

    # Events from D on make no difference, even when the caller hands them over.
    assert choose_ease_lambda(before, D, lambdas, k=1) == choice


def test_lambda_falls_back_to_default_without_a_validation_user():
    history = events(baskets({"a": "xy", "b": "xz"}))  # nothing in the 14 days before D
    choice = choose_ease_lambda(history, D, default=250.0)
    assert choice.lam == 250.0 and choice.val_users == 0 and set(choice.ndcg) == set(EASE_LAMBDAS)


ML100K = Path("/work/shared/data/movielens-100k")


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not available")
def test_peers_on_one_movielens_night(tmp_path):
    """One run date of the backtest (1998-03-07, 60 judged users), figures from bench/peers_backtest.py."""
    from jobs.movielens import import_movielens

    import_movielens(ML100K, tmp_path / "landing")
    run_date = date(1998, 3, 7)
    history = read_events(str(tmp_path / "landing"), date(1970, 1, 1), run_date, ["rating"])
    future = read_events(str(tmp_path / "landing"), run_date, run_date + timedelta(days=14), ["rating"])
    truth = judged_pairs(history, future)
    users = sorted(truth["user_id"].unique())
    assert len(users) == 60
    ndcg = {
        "pop": topk_metrics(pop_peer(history, users, run_date), truth)["ndcg@10"],
        "itemknn": topk_metrics(itemknn_peer(history, users), truth)["ndcg@10"],
        "ease": topk_metrics(ease_peer(history, users, lam=250.0), truth)["ndcg@10"],
    }
    assert ndcg == pytest.approx({"pop": 0.1618, "itemknn": 0.1000, "ease": 0.1405}, abs=5e-5)


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not available")
def test_evaluate_night_judges_a_ranker_and_the_peers_on_the_same_users(tmp_path):
    """The night of 1998-03-07 through `evaluate_night` with the MovieLens config: the peers' figures of the
    test above, and a ranker made of the Pop rows and the bias peer's values judged exactly like them."""
    from jobs.movielens import import_movielens
    from model.metrics import roc_auc
    from model.peers import Ranker, bias_peer, evaluate_night
    from nightrec.config import load_config

    landing = tmp_path / "landing"
    import_movielens(ML100K, landing)
    cfg = load_config(Path(__file__).parents[1] / "configs/movielens.toml", landing=str(landing))
    run_date = date(1998, 3, 7)
    history = read_events(str(landing), date(1970, 1, 1), run_date, ["rating"], with_value=True)
    pop = pop_peer(history, sorted(history["user_id"].unique()), run_date)
    ranker = Ranker(pop, lambda pairs: pairs.assign(p_like=bias_peer(history, pairs)))

    night = evaluate_night(cfg, run_date, {"model": ranker})
    assert {name: m["users"] for name, m in night.metrics.items() if "users" in m} == dict.fromkeys(
        ["model", "pop", "itemknn", "ease"], 60
    )
    assert (
        night.metrics["model"]["ndcg@10"]
        == night.metrics["pop"]["ndcg@10"]
        == pytest.approx(0.1618, abs=5e-5)
    )
    assert night.metrics["itemknn"]["ndcg@10"] == pytest.approx(0.1000, abs=5e-5)
    assert night.metrics["model"]["auc_like"] == night.metrics["bias"]["auc_like"]
    labels, scores = night.auc_inputs["bias"]["like"]
    assert len(labels) > 60 and roc_auc(labels, scores) == night.metrics["bias"]["auc_like"]
    for name in ("model", "pop", "itemknn", "ease"):
        assert 0.0 < night.metrics[name]["coverage"] <= 1.0
        assert 0.0 <= night.metrics[name]["new_item_share"] <= 1.0


def test_an_esmm_child_is_judged_on_rated_items_by_its_conditional_probability():
    from nightrec.config import TaskConfig

    like = TaskConfig.model_validate(
        {"name": "like", "label": {"event_types": ["rating"], "min_value": 4.0}, "parent": "engage"}
    )
    # Two rated items: the first is rarely rated but loved when it is (joint 0.09 of 0.1), the second often
    # rated and liked half the time (joint 0.4 of 0.8). Among rated items the first is the likelier like.
    frame = pd.DataFrame({"p_engage": [0.1, 0.8], "p_like": [0.09, 0.4]})
    assert given_parent(frame, like) == pytest.approx([0.9, 0.5])
    single = frame.drop(columns="p_engage")  # a single-task model has no parent: its own probability
    assert given_parent(single, like) == pytest.approx([0.09, 0.4])
