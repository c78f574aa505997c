"""Per-task losses, each averaged over the examples that carry the task's label.

- binary: BCE on the logit;
- ESMM child (a binary task with a parent, Ma et al., SIGIR 2018): the task predicts p(parent and task) =
  p(parent) x p(task | parent) and is trained on that joint against its own label over all examples. This
  avoids training the conditional on the (biased, sparse) parent-positive subset, and guarantees that the
  child's prediction never exceeds its parent's. With `parent_loss = "conditional"` the child's own logit,
  p(child | parent), is trained with BCE on the parent's positives only;
- regression: squared error, or Huber (delta 1) when heavy tails would let a few values dominate;
- multiclass: cross-entropy against a target distribution over the category vocabulary (the normalised
  category counts of the label), i.e. F.cross_entropy with probability targets;
- retrieval: in-batch sampled softmax (Yi et al., RecSys 2019): each positive (user, item) of the batch
  against the other positives' items as negatives. Popular items turn up as negatives more often than
  a full softmax would weigh them, so each negative's logit is corrected by minus the log of its sampling
  probability (logQ correction); an item that is also the row's own positive is not its negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from model.spec import TaskSpec

# Bounds of the ESMM joint probability before its log: the product of two sigmoids can reach exactly
# 0 or 1 in float32, where BCE would be infinite.
JOINT_EPS = 1e-6
HUBER_DELTA = 1.0


def multiclass_tasks(tasks: Sequence[TaskSpec]) -> list[int]:
    """Indices of the multiclass tasks: their order is the second axis of the class targets and logits."""
    return [t for t, task in enumerate(tasks) if task.type == "multiclass"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N] cross-entropy of logits [N, C] against distributions [N, C] (rows of masked examples may be 0)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def in_batch_softmax(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """[P] loss of each positive pair: user_vectors, item_vectors [P, D] (normalised), items [P] their item
    indices, log_q [n_items] the log sampling probability of each item as a positive."""
    logits = (user_vectors.float() @ item_vectors.float().T) / temperature - log_q[items][None, :]
    same = items[:, None] == items[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(items), device=logits.device), reduction="none")


def task_losses(
    tasks: Sequence[TaskSpec],
    logits: torch.Tensor,
    predictions: torch.Tensor,
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    class_targets: torch.Tensor | None,
    retrieval: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """[T] losses; logits/predictions/labels/mask are [N, T], class_logits and class_targets [N, M, C].

    `retrieval`: for a retrieval task, the [P] in-batch softmax losses of the rows selected by a bool mask [N]
    (the model holds the user and item vectors it needs)."""
    multiclass = multiclass_tasks(tasks)
    if multiclass and class_targets is None:
        raise ValueError(
            f"tasks {[tasks[t].name for t in multiclass]} are multiclass: the loss needs their class targets"
        )
    per_task = []
    for t, task in enumerate(tasks):
        y, m = labels[:, t], mask[:, t].float()
        if task.type == "retrieval":
            if retrieval is None:
                raise ValueError(f"task {task.name!r} is a retrieval task: the loss needs its vectors")
            positive = (m > 0) & (y > 0.5)
            per_task.append(retrieval(positive).sum() / positive.sum().clamp(min=1))
            continue
        if task.type == "multiclass":
            j = multiclass.index(t)
            loss = soft_cross_entropy(class_logits[:, j], class_targets[:, j])
        elif task.type == "regression":
            if task.regression_loss == "huber":
                loss = F.huber_loss(predictions[:, t], y, reduction="none", delta=HUBER_DELTA)
            else:
                loss = (predictions[:, t] - y) ** 2
        elif task.parent is None:
            loss = F.binary_cross_entropy_with_logits(logits[:, t], y, reduction="none")
        elif task.parent_loss == "conditional":
            m = m * labels[:, task.parent] * mask[:, task.parent].float()  # the parent's positives only
            loss = F.binary_cross_entropy_with_logits(logits[:, t], y, reduction="none")
        else:
            p = predictions[:, t].clamp(JOINT_EPS, 1.0 - JOINT_EPS)
            loss = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
        per_task.append((loss * m).sum() / m.sum().clamp(min=1.0))
    return torch.stack(per_task)
