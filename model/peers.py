"""The peer recommenders the model is judged against: Pop, ItemKNN and EASE on the binary user x item matrix.

Each peer sees only a history of events before the run date D (ItemKNN and EASE trust the caller to cut it;
Pop and the lambda choice, which know D, drop later events themselves), ranks every item seen in that
history (the evaluation protocol's candidates) and leaves out each user's seen items. They are deliberately
plain, closed-form and vectorised: they are yardsticks, and a yardstick that needs tuning or a training loop
would be a second model to debug. Every peer returns the same frame, (user_id, item_id, rank,
score) with rank 1..K, so `model.evaluation.topk_metrics` judges them exactly as it judges published rows.
Ties are broken by item id (sorted as text), so a backtest is reproducible to the last digit (EASE's lambda
sweep up to rounding, see `ease_sweep`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

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
from model.metrics import roc_auc
from nightrec.config import Config, TaskConfig
from nightrec.schema import probability_column

COLUMNS = ["user_id", "item_id", "rank", "score"]
EPOCH = date(1970, 1, 1)  # before any event: "first seen" looks at the whole landing zone
# The grid of the evaluation notes: EASE's lambda is picked from it per run date.
EASE_LAMBDAS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)


@dataclass(frozen=True)
class _Matrix:
    """The binary user x item matrix of a history; its columns are the candidate items."""

    users: pd.Index
    items: pd.Index
    x: np.ndarray  # float32, 1.0 where the user has any event on the item

    @classmethod
    def of(cls, history: pd.DataFrame) -> _Matrix:
        users = pd.Index(np.sort(history["user_id"].unique()))
        items = pd.Index(np.sort(history["item_id"].unique()))
        x = np.zeros((len(users), len(items)), dtype=np.float32)
        x[users.get_indexer(history["user_id"]), items.get_indexer(history["item_id"])] = 1.0
        return cls(users, items, x)

    def rows(self, users: Sequence[str]) -> np.ndarray:
        """The rows of `users`, all zero for a user without history (nothing seen, nothing to go on)."""
        idx = self.users.get_indexer(pd.Index(users))
        out = np.zeros((len(users), len(self.items)), dtype=np.float32)
        out[idx >= 0] = self.x[idx[idx >= 0]]
        return out

    def gram(self) -> np.ndarray:
        """X^T X in float64; computed in float32 (fast BLAS), exact because co-counts stay below 2^24."""
        return (self.x.T @ self.x).astype(np.float64)


def _top_unseen(
    scores: np.ndarray, seen: np.ndarray, users: Sequence[str], items: pd.Index, k: int
) -> pd.DataFrame:
    """The K best unseen items per row of `scores`; fewer only when fewer unseen candidates exist.

    A stable sort over the whole row (not argpartition) keeps ties in item order, whatever K.
    """
    masked = np.where(seen > 0, -np.inf, scores)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(masked, order, axis=1)
    keep = np.isfinite(top).ravel()
    width = order.shape[1]
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users, dtype=object), width)[keep],
            "item_id": items.to_numpy()[order].ravel()[keep],
            "rank": np.tile(np.arange(1, width + 1), len(users))[keep],
            "score": top.ravel()[keep],
        },
        columns=COLUMNS,
    )


def pop_peer(
    history: pd.DataFrame, users: Sequence[str], run_date: date, k: int = 10, days: int = 90
) -> pd.DataFrame:
    """Pop: items by event count over the `days` before D; older candidates follow with score 0."""
    ts = pd.to_datetime(history["ts"], utc=True)
    before = ts < pd.Timestamp(run_date, tz="UTC")
    m = _Matrix.of(history[before])
    recent = history[before & (ts >= pd.Timestamp(run_date - timedelta(days=days), tz="UTC"))]
    counts = recent.groupby("item_id").size().reindex(m.items, fill_value=0).to_numpy(dtype=np.float64)
    seen = m.rows(users)
    return _top_unseen(np.broadcast_to(counts, seen.shape), seen, users, m.items, k)


def cosine_similarity(x: np.ndarray, neighbours: int | None = None) -> np.ndarray:
    """Item-item cosine of a binary matrix, self-similarity zeroed.

    With `neighbours`, each item keeps only its `neighbours` most similar items (row-wise pruning, as in
    classic ItemKNN): a user's item then votes only for its close neighbours.
    """
    gram = (x.T @ x).astype(np.float64)
    norms = np.sqrt(np.diag(gram))
    norms[norms == 0] = 1.0
    sim = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    if neighbours is not None and neighbours < sim.shape[1]:
        drop = np.argsort(-sim, axis=1, kind="stable")[:, neighbours:]
        np.put_along_axis(sim, drop, 0.0, axis=1)
    return sim


def itemknn_peer(
    history: pd.DataFrame, users: Sequence[str], k: int = 10, neighbours: int | None = None
) -> pd.DataFrame:
    """ItemKNN: score(u, j) = sum of cosine(i, j) over the user's items i (history before D)."""
    m = _Matrix.of(history)
    seen = m.rows(users)
    return _top_unseen(seen @ cosine_similarity(m.x, neighbours), seen, users, m.items, k)


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P / diag(P) column-wise with P = (X^T X + lam I)^-1; diag(B) = 0 exactly."""
    p = np.linalg.inv(gram + lam * np.eye(gram.shape[0]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def ease_sweep(
    history: pd.DataFrame, users: Sequence[str], k: int = 10, lambdas: Sequence[float] = EASE_LAMBDAS
) -> dict[float, pd.DataFrame]:
    """EASE's top-K for each lambda from one eigendecomposition of X^T X = V diag(e) V^T.

    A lambda grid costs one `eigh` (about two inverses) instead of one inverse per lambda: with
    w = 1 / (e + lambda), P = V diag(w) V^T, so diag(P) and the judged users' X_u P are cheap per lambda,
    and X_u B = X_u - X_u P / diag(P) is the same score as X_u @ `ease_weights` (diag(B) = 0 included), up
    to rounding: exact ties of the closed form may come out in either order here.
    """
    m = _Matrix.of(history)
    e, v = np.linalg.eigh(m.gram())
    seen = m.rows(users).astype(np.float64)
    seen_v, v_squared = seen @ v, v * v
    out = {}
    for lam in lambdas:
        w = 1.0 / (e + lam)
        scores = seen - ((seen_v * w) @ v.T) / (v_squared @ w)[None, :]
        out[lam] = _top_unseen(scores, seen, users, m.items, k)
    return out


def ease_peer(history: pd.DataFrame, users: Sequence[str], k: int = 10, lam: float = 500.0) -> pd.DataFrame:
    """EASE with a fixed lambda on the history before D (one inverse: cheaper than `ease_sweep` for one)."""
    m = _Matrix.of(history)
    seen = m.rows(users).astype(np.float64)
    return _top_unseen(seen @ ease_weights(m.gram(), lam), seen, users, m.items, k)


def bias_peer(history: pd.DataFrame, pairs: pd.DataFrame, shrinkage: float = 5.0) -> np.ndarray:
    """Predicted value of each (user, item) pair: global mean + shrunk item bias + shrunk user bias.

    The yardstick of a value task (MovieLens "like"): b_i = sum(r - mu) / (n_i + shrinkage) over the item's
    events, then b_u = sum(r - mu - b_i) / (n_u + shrinkage) over the user's; an unseen user or item adds 0.
    `history` holds (user_id, item_id, value) of the events before D.
    """
    value = history["value"].astype(float)
    mu = float(value.mean())
    item = (value - mu).groupby(history["item_id"]).agg(["sum", "count"])
    b_item = item["sum"] / (item["count"] + shrinkage)
    residual = value - mu - history["item_id"].map(b_item).to_numpy()
    user = residual.groupby(history["user_id"]).agg(["sum", "count"])
    b_user = user["sum"] / (user["count"] + shrinkage)
    return (
        mu
        + pairs["item_id"].map(b_item).fillna(0.0).to_numpy()
        + pairs["user_id"].map(b_user).fillna(0.0).to_numpy()
    )


@dataclass(frozen=True)
class LambdaChoice:
    """EASE's lambda for a run date, chosen on [val_start, val_end) with the model fitted before val_start."""

    lam: float
    ndcg: dict[float, float]
    val_start: date
    val_end: date
    val_users: int


def choose_ease_lambda(
    history: pd.DataFrame,
    run_date: date,
    lambdas: Sequence[float] = EASE_LAMBDAS,
    k: int = 10,
    val_days: int = 14,
    default: float = 500.0,
) -> LambdaChoice:
    """Pick lambda by NDCG@K on the last `val_days` before D, the model fitted on what came before them.

    The validation slice mimics a night: fit before D - val_days, judge on [D - val_days, D) with the same
    protocol (judged users, known items). Events at or after D are dropped here even if the caller passed
    them, so the test window can never leak into the choice. Ties go to the first lambda of the grid;
    a slice without any judged user keeps `default`.
    """
    val_start = run_date - timedelta(days=val_days)
    ts = pd.to_datetime(history["ts"], utc=True)
    fit = history[ts < pd.Timestamp(val_start, tz="UTC")]
    val = history[(ts >= pd.Timestamp(val_start, tz="UTC")) & (ts < pd.Timestamp(run_date, tz="UTC"))]
    truth = judged_pairs(fit, val)
    users = sorted(truth["user_id"].unique())
    if not users:
        return LambdaChoice(default, {lam: math.nan for lam in lambdas}, val_start, run_date, 0)
    ndcg = {
        lam: topk_metrics(recs, truth, k)[f"ndcg@{k}"]
        for lam, recs in ease_sweep(fit, users, k, lambdas).items()
    }
    best = lambdas[int(np.argmax([ndcg[lam] for lam in lambdas]))]
    return LambdaChoice(best, ndcg, val_start, run_date, len(users))


PairScorer = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Ranker:
    """A ranking to judge beside the peers: its top-K rows and, for the value tasks' AUC, a pair scorer
    (`model.pair_scores.score_pairs` bound to a model) that adds p_<task> to a frame of (user_id, item_id)."""

    recs: pd.DataFrame
    score_pairs: PairScorer | None = None


@dataclass
class NightJudgement:
    """Every ranker's metrics on one run date, and the (labels, scores) behind each AUC, for pooling."""

    run_date: date
    metrics: dict[str, dict[str, float]]
    auc_inputs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def value_tasks(cfg: Config) -> dict[str, TaskConfig]:
    """Binary tasks whose label is a rule on the event's value (MovieLens like: rating >= 4): judged by AUC."""
    return {
        t.name: t
        for t in cfg.tasks
        if t.type == "binary"
        and t.label.source == "events"
        and (t.label.min_value is not None or t.label.max_value is not None)
    }


def given_parent(frame: pd.DataFrame, task: TaskConfig) -> np.ndarray:
    """The score a value task is judged by on test events: p(task | parent) for an ESMM child.

    Every judged test event is an event of the parent's kind (the rating happened), so the question is
    whether the user liked what they rated: the conditional, not the joint p(rated and liked), which mostly
    ranks how likely a rating is at all. A model without the parent (a single-task model) gives its own p.
    """
    p = frame[probability_column(task.name)].to_numpy(dtype=np.float64)
    parent = None if task.parent is None else probability_column(task.parent)
    if parent is None or parent not in frame:
        return p
    return p / np.clip(frame[parent].to_numpy(dtype=np.float64), 1e-12, None)


def judged_event_types(cfg: Config) -> list[str]:
    """The top-level tasks' events: the engagement a ranking is judged on (every such event counts). A
    retrieval task only picks candidates: its events do not define what a hit is."""
    return sorted(
        {e for t in cfg.tasks if t.parent is None and t.type != "retrieval" for e in t.label.event_types}
    )


def evaluate_night(
    cfg: Config,
    run_date: date,
    rankers: dict[str, Ranker],
    peers: bool = True,
    k: int | None = None,
    horizon_days: int | None = None,
    new_item_days: int = 14,
) -> NightJudgement:
    """The rankers (the published night, ...) and the peers, judged on the same users over the days after D.

    Top-K metrics, catalogue coverage and new-item share over the judged users' top K; for each value task,
    the AUC of the ranker's p(task), conditional on its ESMM parent (the bias peer's predicted value), over
    the judged users' test events of the task's types. EASE's lambda is chosen on the 14 days before the run date, never on the judged window.
    """
    k = k or cfg.evaluation.k
    horizon_days = horizon_days or cfg.evaluation.test_days
    types = judged_event_types(cfg)
    tasks = value_tasks(cfg)
    every_type = sorted(set(types) | {e for t in tasks.values() for e in t.label.event_types})
    landing = cfg.data.landing
    start = run_date - timedelta(days=cfg.features.lookback_days)
    all_history = read_events(landing, start, run_date, every_type, with_value=True)
    all_future = read_events(landing, run_date, run_date + timedelta(days=horizon_days), every_type, True)
    history = all_history.loc[all_history["event_type"].isin(types)]
    future = all_future.loc[all_future["event_type"].isin(types)]
    truth = judged_pairs(history, future)
    users = sorted(truth["user_id"].unique())
    candidates = history["item_id"].nunique()
    # First seen over the whole landing zone, not just the lookback: with a short lookback every item would
    # look new.
    new = new_items(read_events(landing, EPOCH, run_date, types), run_date, new_item_days)

    recs = {name: ranker.recs for name, ranker in rankers.items()}
    if peers:
        lam = choose_ease_lambda(history, run_date).lam
        recs["pop"] = pop_peer(history, users, run_date, k)
        recs["itemknn"] = itemknn_peer(history, users, k)
        recs["ease"] = ease_peer(history, users, k, lam=lam)
    metrics: dict[str, dict[str, float]] = {}
    for name, ranked in recs.items():
        judged = ranked[ranked["user_id"].isin(users)]
        metrics[name] = {
            **topk_metrics(ranked, truth, k),
            "coverage": catalogue_coverage(judged, candidates, k),
            "new_item_share": new_item_share(judged, new, k),
        }

    auc_inputs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for task_name, task in tasks.items():
        events = judged_events(
            history, all_future.loc[all_future["event_type"].isin(task.label.event_types)]
        ).reset_index(drop=True)
        labels = value_rule(events["value"], task.label.min_value, task.label.max_value)
        scored = {}
        for name, ranker in rankers.items():
            frame = ranker.score_pairs(events[["user_id", "item_id"]]) if ranker.score_pairs else None
            if frame is not None and probability_column(task_name) in frame:  # a single-task model has one
                scored[name] = given_parent(frame, task)
        if peers:
            task_history = all_history.loc[all_history["event_type"].isin(task.label.event_types)]
            scored["bias"] = bias_peer(task_history, events)
        for name, scores in scored.items():
            auc_inputs.setdefault(name, {})[task_name] = (labels, scores)
            metrics.setdefault(name, {})[f"auc_{task_name}"] = roc_auc(labels, scores)
    return NightJudgement(run_date, metrics, auc_inputs)
