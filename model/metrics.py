"""Validation metrics, in numpy float64 so that they do not depend on the training device or dtype.

A metric that is undefined on the data (AUC with a single class, calibration with no positives) is
`None` rather than NaN: the metrics go into `meta.json`, and NaN is not valid JSON.
"""

from __future__ import annotations

import numpy as np

LOGLOSS_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney rank statistic, ties counted as one half."""
    labels = np.asarray(labels, dtype=np.float64) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average rank of each group of tied scores: ties then contribute exactly 1/2 per pair.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    mean_rank = last - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities (clipped so that a confident miss stays finite)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean predicted probability over the observed positive rate: 1.0 is calibrated on average."""
    observed = float(np.mean(np.asarray(labels, dtype=np.float64)))
    if observed == 0.0:
        return None
    return float(np.mean(np.asarray(probs, dtype=np.float64)) / observed)


def rmse(targets: np.ndarray, preds: np.ndarray) -> float:
    diff = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def cross_entropy(targets: np.ndarray, probs: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean cross-entropy of predicted distributions [N, C] against target distributions [N, C]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    return float(-np.mean((np.asarray(targets, dtype=np.float64) * np.log(p)).sum(axis=1)))


def top1_accuracy(targets: np.ndarray, probs: np.ndarray) -> float:
    """Share of rows whose most probable class is a most frequent class of the target (ties all count)."""
    targets = np.asarray(targets, dtype=np.float64)
    predicted = np.argmax(probs, axis=1)
    best = targets.max(axis=1)
    return float(np.mean(targets[np.arange(len(targets)), predicted] >= best))


def task_metrics(
    task_types: dict[str, str],
    preds: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    class_probs: np.ndarray | None = None,
    class_targets: np.ndarray | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per-task metrics over the examples that carry that task's label.

    `preds`, `labels`, `mask` are [N, T] with the columns in the order of `task_types`. For an ESMM
    child the prediction is the joint probability, scored against the child's label over all examples:
    the same quantity the model is trained on and the one the blend uses. Multiclass tasks are scored on
    `class_probs` and `class_targets` [N, M, C] (M: the multiclass tasks, in task order). A retrieval task
    gets the AUC of its score: positives against the sampled negatives.
    """
    out: dict[str, dict[str, float | int | None]] = {}
    multiclass = [name for name, kind in task_types.items() if kind == "multiclass"]
    if multiclass and (class_probs is None or class_targets is None):
        raise ValueError(f"multiclass tasks {multiclass} need class_probs and class_targets")
    for t, (name, kind) in enumerate(task_types.items()):
        m = mask[:, t]
        y, p = labels[m, t].astype(np.float64), preds[m, t].astype(np.float64)
        if y.size == 0:
            out[name] = {"n": 0}
        elif kind == "multiclass":
            j = multiclass.index(name)
            target, prob = class_targets[m, j], class_probs[m, j]
            out[name] = {
                "n": int(y.size),
                "cross_entropy": cross_entropy(target, prob),
                "top1_accuracy": top1_accuracy(target, prob),
            }
        elif kind == "binary":
            out[name] = {
                "n": int(y.size),
                "auc": roc_auc(y, p),
                "logloss": log_loss(y, p),
                "calibration": calibration(y, p),
                "positive_rate": float(np.mean(y)),
            }
        elif kind == "retrieval":  # a score, not a probability: only its ranking means something
            out[name] = {"n": int(y.size), "auc": roc_auc(y, p), "positive_rate": float(np.mean(y))}
        else:
            out[name] = {"n": int(y.size), "rmse": rmse(y, p)}
    return out
