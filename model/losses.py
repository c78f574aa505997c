"""Per-task losses, each averaged over the examples that carry the task's label.

- binary: BCE on the logit;
- ESMM child (a binary task with a parent, Ma et al., SIGIR 2018): the task predicts p(parent and task) =
  p(parent) x p(task | parent) and is trained on that joint against its own label over all examples. This
  avoids training the conditional on the (biased, sparse) parent-positive subset, and guarantees that the
  child's prediction never exceeds its parent's;
- regression: squared error, or Huber (delta 1) when heavy tails would let a few values dominate;
- multiclass: cross-entropy against a target distribution over the category vocabulary (the normalised
  category counts of the label), i.e. F.cross_entropy with probability targets.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def task_losses(
    tasks: Sequence[TaskSpec],
    logits: torch.Tensor,
    predictions: torch.Tensor,
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    class_targets: torch.Tensor | None,
) -> torch.Tensor:
    """[T] losses; logits/predictions/labels/mask are [N, T], class_logits and class_targets [N, M, C]."""
    multiclass = multiclass_tasks(tasks)
    if multiclass and class_targets is None:
        raise ValueError(
            f"tasks {[tasks[t].name for t in multiclass]} are multiclass: the loss needs their class targets"
        )
    per_task = []
    for t, task in enumerate(tasks):
        y, m = labels[:, t], mask[:, t].float()
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
        else:
            p = predictions[:, t].clamp(JOINT_EPS, 1.0 - JOINT_EPS)
            loss = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
        per_task.append((loss * m).sum() / m.sum().clamp(min=1.0))
    return torch.stack(per_task)
