"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) with ESMM-style chained tasks.

Input per (user, item): user id embedding, mean of the user's history item embeddings (the item table
is shared with the target item, so history and candidate live in one space), user dense features; item
id embedding, mean of the item's category embeddings, item dense features. The user part and the item
part are built separately so that scoring can encode each user and each item once and only broadcast
the concatenation over the users x items grid.

Experts are one stacked computation (a Linear to E*h, then batched [E, h, h'] weights via einsum), not a
Python loop over experts. Each task has its own softmax gate over the experts and its own tower.

ESMM (Ma et al., SIGIR 2018): a task with a parent predicts p(parent and task) = p(parent) x
p(task | parent) and is trained on the joint against its own label over all examples. This avoids
training the conditional on the (biased, sparse) parent-positive subset, and guarantees that the
child's prediction never exceeds its parent's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Self

import torch
import torch.nn.functional as F
from torch import nn

from model.data import FeatureLayout, ItemTensors, UserTensors
from nightrec.config import Config

# Bounds of the ESMM joint probability before its log: the product of two sigmoids can reach exactly
# 0 or 1 in float32, where BCE would be infinite.
JOINT_EPS = 1e-6


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str  # "binary" | "regression"
    weight: float
    parent: int | None  # index of the ESMM parent task, always an earlier task


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the module: stored in meta.json, so a checkpoint is weights only."""

    n_users: int
    n_items: int
    n_categories: int
    n_user_dense: int
    n_item_dense: int
    embedding_dim: int
    num_experts: int
    expert_hidden: tuple[int, ...]
    tower_hidden: tuple[int, ...]
    dropout: float
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        if not self.expert_hidden:
            raise ValueError("model.expert_hidden needs at least one layer size")

    @classmethod
    def from_config(cls, cfg: Config, vocab_sizes: dict[str, int], layout: FeatureLayout) -> Self:
        names = cfg.task_names()
        return cls(
            n_users=vocab_sizes["users"],
            n_items=vocab_sizes["items"],
            n_categories=vocab_sizes["categories"],
            n_user_dense=len(layout.user_dense),
            n_item_dense=len(layout.item_dense),
            embedding_dim=cfg.model.embedding_dim,
            num_experts=cfg.model.num_experts,
            expert_hidden=tuple(cfg.model.expert_hidden),
            tower_hidden=tuple(cfg.model.tower_hidden),
            dropout=cfg.model.dropout,
            tasks=tuple(
                TaskSpec(t.name, t.type, t.weight, None if t.parent is None else names.index(t.parent))
                for t in cfg.tasks
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        values = dict(data)
        values["expert_hidden"] = tuple(values["expert_hidden"])
        values["tower_hidden"] = tuple(values["tower_hidden"])
        values["tasks"] = tuple(TaskSpec(**t) for t in values["tasks"])
        return cls(**values)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one; asking for CUDA on a machine without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "model.device = 'cuda' but torch sees no CUDA device (cuda.is_available() is False)"
        )
    return torch.device(name)


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); CPU stays float32 for now."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MMoEOutput(NamedTuple):
    logits: torch.Tensor  # [N, T] float32: raw tower outputs (the value itself for regression)
    predictions: torch.Tensor  # [N, T] float32: probability, ESMM joint probability, or regression value
    gate_mean: torch.Tensor  # [T, E] mean gate weight per expert per task (detached, for logging)


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """Small initial vectors; row 0 (unknown/padding) stays zero and gets no gradient."""
    emb = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=0.05)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def _masked_mean(table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    """Mean embedding of the non-padding entries of each row of `index` [N, L]; zeros for an empty row."""
    mask = (index != 0).unsqueeze(-1)
    summed = (table(index) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1)


def _tower(in_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


class MMoE(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        d, n_experts, hidden = spec.embedding_dim, spec.num_experts, spec.expert_hidden
        self.user_embedding = _embedding(spec.n_users, d)
        self.item_embedding = _embedding(spec.n_items, d)
        self.category_embedding = _embedding(spec.n_categories, d)
        self.user_dim = 2 * d + spec.n_user_dense
        self.item_dim = 2 * d + spec.n_item_dense
        in_dim = self.user_dim + self.item_dim

        self.expert_input = nn.Linear(in_dim, n_experts * hidden[0])
        self.expert_weights = nn.ParameterList()
        self.expert_biases = nn.ParameterList()
        for fan_in, fan_out in zip(hidden[:-1], hidden[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, per expert
            self.expert_weights.append(
                nn.Parameter(torch.empty(n_experts, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.expert_biases.append(nn.Parameter(torch.empty(n_experts, fan_out).uniform_(-bound, bound)))
        self.gates = nn.Linear(in_dim, len(spec.tasks) * n_experts)
        self.towers = nn.ModuleList(_tower(hidden[-1], spec.tower_hidden, spec.dropout) for _ in spec.tasks)
        self.dropout = nn.Dropout(spec.dropout)
        self.register_buffer(
            "task_weights",
            torch.tensor([t.weight for t in spec.tasks], dtype=torch.float32),
            persistent=False,
        )

    def user_part(self, users: UserTensors) -> torch.Tensor:
        """[N, user_dim]: id embedding, pooled history, dense features."""
        return torch.cat(
            [
                self.user_embedding(users.user),
                _masked_mean(self.item_embedding, users.history),
                users.dense,
            ],
            dim=1,
        )

    def item_part(self, items: ItemTensors) -> torch.Tensor:
        """[N, item_dim]: id embedding, pooled categories, dense features."""
        return torch.cat(
            [
                self.item_embedding(items.item),
                _masked_mean(self.category_embedding, items.categories),
                items.dense,
            ],
            dim=1,
        )

    def head(self, x: torch.Tensor) -> MMoEOutput:
        """Experts, gates, towers on the concatenated input [N, user_dim + item_dim]."""
        n, n_experts, n_tasks = x.shape[0], self.spec.num_experts, len(self.spec.tasks)
        h = self.dropout(F.relu(self.expert_input(x))).view(n, n_experts, -1)
        for weight, bias in zip(self.expert_weights, self.expert_biases, strict=True):
            h = self.dropout(F.relu(torch.einsum("neh,ehk->nek", h, weight) + bias))
        gates = torch.softmax(self.gates(x).view(n, n_tasks, n_experts).float(), dim=-1)
        mixed = torch.einsum("nte,neh->nth", gates.to(h.dtype), h)
        logits = torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1).float()

        preds: list[torch.Tensor] = []
        for t, task in enumerate(self.spec.tasks):
            if task.type == "regression":
                preds.append(logits[:, t])
            elif task.parent is None:
                preds.append(torch.sigmoid(logits[:, t]))
            else:
                preds.append(preds[task.parent] * torch.sigmoid(logits[:, t]))
        return MMoEOutput(logits, torch.stack(preds, dim=1), gates.mean(dim=0).detach())

    def forward(self, users: UserTensors, items: ItemTensors) -> MMoEOutput:
        return self.head(torch.cat([self.user_part(users), self.item_part(items)], dim=1))

    def loss(
        self, out: MMoEOutput, labels: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted total, per-task losses [T]); each task averages over the examples with its label."""
        per_task = []
        for t, task in enumerate(self.spec.tasks):
            y, m = labels[:, t], mask[:, t].float()
            if task.type == "regression":
                loss = (out.predictions[:, t] - y) ** 2
            elif task.parent is None:
                loss = F.binary_cross_entropy_with_logits(out.logits[:, t], y, reduction="none")
            else:
                p = out.predictions[:, t].clamp(JOINT_EPS, 1.0 - JOINT_EPS)
                loss = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
            per_task.append((loss * m).sum() / m.sum().clamp(min=1.0))
        losses = torch.stack(per_task)
        return (losses * self.task_weights).sum(), losses
