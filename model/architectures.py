"""The multi-task architectures over one input encoder (model/inputs.py), chosen by `model.architecture`.

- shared_bottom: one MLP shared by all tasks under per-task towers (the baseline every MTL paper beats).
- mmoe (Ma et al., KDD 2018): shared experts, one softmax gate per task mixing them.
- ple (Tang et al., RecSys 2020): Progressive Layered Extraction. Each level has shared experts and experts of
  each task; a task's gate mixes its own and the shared experts, and on every level but the last a shared gate
  mixes all experts into the input of the next level's shared experts. Task-specific experts of level l > 1
  read their task's output of level l - 1.

MMoE is one PLE-style level with no task experts and no shared gate, so both run the same `ExtractionLevel`.
All experts of a level are one batched computation (weights [E, in, out]: one product over all experts when
they share their input, a batched product otherwise), never a Python loop over experts; gates are one batched
computation too. Every architecture exposes the mean gate weight per task over the experts of its last level
([T, E], for logging); shared bottom has none.

A retrieval task (at most one) does not go through the shared part: it is a two-tower score, a user tower
over the user part (with the history mean-pooled, whatever `history_pooling` says, so that the user vector
does not depend on the candidate) and an item tower over the item part, trained jointly with the other
tasks on the same embeddings. Its score is cosine(user, item) / temperature, so a whole catalogue is scored
with one matrix product per block of users: the first stage of two-stage scoring (model/score.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.data import ItemTensors, UserTensors
from model.dropout import Dropout
from model.inputs import InputEncoder, ItemPart, PairGrid, UserPart
from model.losses import in_batch_softmax, multiclass_tasks, task_losses
from model.spec import ModelSpec


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [N, T] float32: tower outputs (regression: the value; multiclass: the top class's)
    predictions: torch.Tensor  # [N, T]: probability, ESMM joint, regression value, multiclass top-class prob,
    # retrieval score
    gate_mean: torch.Tensor | None  # [T, E] mean gate weight per expert per task (detached); None: no gates
    class_logits: torch.Tensor  # [N, M, C] logits of the M multiclass tasks over the category vocabulary
    user_vectors: torch.Tensor | None = None  # [N, D] normalised retrieval user vectors; None: no retrieval
    item_vectors: torch.Tensor | None = None  # [N, D] normalised retrieval item vectors


class BatchedLinear(nn.Module):
    """`groups` independent Linear layers in one einsum: input [N, in] (shared by all) or [N, groups, in]."""

    def __init__(self, groups: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per group
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor | PairGrid) -> torch.Tensor:
        groups, in_dim, out_dim = self.weight.shape
        if isinstance(x, torch.Tensor) and x.dim() == 3:  # each group its own input
            return torch.einsum("ngi,gio->ngo", x, self.weight) + self.bias
        # One input for all groups: the groups side by side as one [in, groups * out] layer, one product.
        flat = self.weight.permute(1, 0, 2).reshape(in_dim, groups * out_dim)
        if isinstance(x, PairGrid):
            return x.project(flat, self.bias.reshape(-1), self).view(-1, groups, out_dim)
        return torch.addmm(self.bias.reshape(-1), x, flat).view(-1, groups, out_dim)


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, in place where no gradient needs the input (scoring: the expert outputs of a whole grid)."""
    return x.relu_() if not x.requires_grad else torch.relu(x)


def linear(layer: nn.Linear, x: torch.Tensor | PairGrid) -> torch.Tensor:
    """`layer(x)`, also on a factorised PairGrid."""
    return x.project(layer.weight.T, layer.bias, layer) if isinstance(x, PairGrid) else layer(x)


class ExtractionLevel(nn.Module):
    """One level of experts and gates. Experts are ordered [task 0's k, ..., task T-1's k, shared s].

    Input: [N, in] on the first level (everything reads it), else [N, T + 1, in] (each task's output of the
    previous level, then the shared one). Output: [N, T, H] on the last level, else [N, T + 1, H].
    """

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        task_experts: int,
        shared_experts: int,
        hidden: tuple[int, ...],
        dropout: float,
        shared_gate: bool,
    ):
        super().__init__()
        n_experts = n_tasks * task_experts + shared_experts
        shared = list(range(n_tasks * task_experts, n_experts))
        choice = [list(range(t * task_experts, (t + 1) * task_experts)) + shared for t in range(n_tasks)]
        group = [t for t in range(n_tasks) for _ in range(task_experts)] + [n_tasks] * shared_experts
        self.register_buffer("expert_group", torch.tensor(group), persistent=False)
        self.register_buffer("task_choice", torch.tensor(choice), persistent=False)  # [T, k + s]
        widths = (in_dim, *hidden)
        self.experts = nn.ModuleList(
            BatchedLinear(n_experts, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.task_gates = BatchedLinear(n_tasks, in_dim, task_experts + shared_experts)
        self.shared_gate = nn.Linear(in_dim, n_experts) if shared_gate else None
        self.dropout = Dropout(dropout)
        self.n_tasks, self.n_experts = n_tasks, n_experts

    def forward(self, x: torch.Tensor | PairGrid) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, task gates [N, T, E] with zeros for the experts a task does not see)."""
        first = isinstance(x, PairGrid) or x.dim() == 2
        # index_select, not x[:, group]: its backward adds rows (index_add_) instead of an accumulating index_put_
        h = x if first else x.index_select(1, self.expert_group)
        for layer in self.experts:
            h = self.dropout(relu(layer(h)))  # [N, E, H]
        n = h.shape[0]
        chosen = torch.softmax(self.task_gates(x if first else x[:, : self.n_tasks]).float(), dim=-1)
        gates = chosen.new_zeros(n, self.n_tasks, self.n_experts)
        gates.scatter_(2, self.task_choice.expand(n, -1, -1), chosen)
        out = torch.einsum("nte,neh->nth", gates.to(h.dtype), h)
        if self.shared_gate is not None:
            shared = torch.softmax(
                linear(self.shared_gate, x if first else x[:, self.n_tasks]).float(), dim=-1
            )
            out = torch.cat([out, torch.einsum("ne,neh->nh", shared.to(h.dtype), h)[:, None]], dim=1)
        return out, gates


def _mlp(in_dim: int, hidden: tuple[int, ...], dropout: float, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MultiTaskModel(InputEncoder):
    """The input encoder (user part, item part, pair and grid features), a shared part (the architecture),
    one tower per task, the task heads and losses.

    It extends the encoder rather than holding one so that the embedding tables keep their top-level names
    (`user_embedding.weight`, ...): the names warm start carries rows by, also from earlier models.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.spec = spec
        self.multiclass = multiclass_tasks(spec.tasks)
        # The retrieval task's place in `towers` holds an empty module: its score comes from its own towers.
        self.towers = nn.ModuleList(
            nn.Identity()
            if t.type == "retrieval"
            else _mlp(
                spec.expert_hidden[-1],
                spec.tower_hidden,
                spec.dropout,
                spec.n_categories if t.type == "multiclass" else 1,
            )
            for t in spec.tasks
        )
        retrieval = [j for j, t in enumerate(spec.tasks) if t.type == "retrieval"]
        self.retrieval_task = retrieval[0] if retrieval else None
        if self.retrieval_task is not None:
            *hidden, width = spec.retrieval_hidden
            self.user_tower = _mlp(self.user_dim, tuple(hidden), spec.dropout, width)
            self.item_tower = _mlp(self.item_dim, tuple(hidden), spec.dropout, width)
        # Wide & deep (Cheng et al., 2016): per task, a linear term of the dense features added to the logit.
        self.wide = nn.Parameter(torch.zeros(len(self.dense_columns), len(spec.tasks))) if spec.wide else None
        # log of each item's share of the training positives: the logQ correction of the in-batch softmax.
        # Set by the trainer (`set_sampling_distribution`) and saved: two-stage scoring adds it back to the
        # retrieval score when it picks candidates (model/score.py).
        self.register_buffer("item_log_q", torch.zeros(spec.n_items))
        self.register_buffer(
            "task_weights",
            torch.tensor([t.weight for t in spec.tasks], dtype=torch.float32),
            persistent=False,
        )

    def shared(self, x: torch.Tensor | PairGrid) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tower inputs [N, T, H] and the mean task gates [T, E] (None without gates)."""
        raise NotImplementedError

    @property
    def last_shared_layer(self) -> str:
        """Name of the last parameter shared by all tasks: GradNorm's default layer."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Everything but the task towers (the retrieval towers and the per-task wide weights included): the
        parameters whose task gradients can conflict (PCGrad)."""
        own = ("towers.", "user_tower.", "item_tower.", "wide")
        return [p for name, p in self.named_parameters() if not name.startswith(own)]

    def set_sampling_distribution(self, positives_per_item: torch.Tensor) -> None:
        """The logQ correction from the count of training positives of each item index [n_items]."""
        counts = positives_per_item.to(self.item_log_q.device).float() + 1.0  # unseen items: one pseudo-count
        self.item_log_q.copy_(torch.log(counts / counts.sum()))

    def user_vectors(self, user: UserPart) -> torch.Tensor:
        """[B, D] normalised retrieval vectors of the users (history mean-pooled)."""
        static = user.static
        if user.history is not None:
            mask = user.history_mask.unsqueeze(-1).to(user.history.dtype)
            pooled = (user.history * mask).sum(1) / mask.sum(1).clamp(min=1)
            d = self.user_embedding.embedding_dim
            static = torch.cat([static[:, :d], pooled, static[:, d:]], dim=1)
        return F.normalize(self.user_tower(static).float(), dim=-1)

    def item_vectors(self, item: ItemPart) -> torch.Tensor:
        """[I, D] normalised retrieval vectors of the items."""
        return F.normalize(self.item_tower(item.vector).float(), dim=-1)

    def retrieval_scores(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """[B, I] retrieval score of every user against every item, in float32 also under autocast (a bf16
        product would round scores of +-1/temperature and the candidates they pick)."""
        with torch.autocast(user_vectors.device.type, enabled=False):
            return user_vectors.float() @ item_vectors.float().T / self.spec.retrieval_temperature

    def head(self, x: torch.Tensor | PairGrid, retrieval_score: torch.Tensor | None = None) -> ModelOutput:
        """The shared part, towers and task heads on encoded pairs ([N, out_dim] or a PairGrid of N pairs);
        `retrieval_score` [N] is the retrieval task's score of the same pairs (required when the model has
        one)."""
        if self.retrieval_task is not None and retrieval_score is None:
            raise ValueError("this model has a retrieval task: head() needs the pairs' retrieval scores")
        task_in, gate_mean = self.shared(x)
        outs = [
            retrieval_score[:, None].float() if t == self.retrieval_task else tower(task_in[:, t]).float()
            for t, tower in enumerate(self.towers)
        ]
        if self.wide is not None:
            weight = self.wide.new_zeros(self.out_dim, self.wide.shape[1]).index_copy(
                0, self.dense_columns, self.wide
            )
            wide = (
                x.project(weight, None, self.wide) if isinstance(x, PairGrid) else x @ weight
            ).float()  # [N, T]
            outs = [
                out if task.type in ("multiclass", "retrieval") else out + wide[:, t : t + 1]
                for t, (out, task) in enumerate(zip(outs, self.spec.tasks, strict=True))
            ]
        class_logits = (
            torch.stack([outs[t] for t in self.multiclass], dim=1)
            if self.multiclass
            else task_in.new_zeros(task_in.shape[0], 0, self.spec.n_categories, dtype=torch.float32)
        )
        logits, preds = [], []
        for t, task in enumerate(self.spec.tasks):
            if task.type == "multiclass":
                top = outs[t].max(dim=1)
                logits.append(top.values)
                preds.append(torch.softmax(outs[t], dim=1).max(dim=1).values)
                continue
            logits.append(outs[t][:, 0])
            if task.type in ("regression", "retrieval"):
                preds.append(outs[t][:, 0])
            elif task.parent is None:
                preds.append(torch.sigmoid(outs[t][:, 0]))
            else:
                preds.append(preds[task.parent] * torch.sigmoid(outs[t][:, 0]))
        return ModelOutput(torch.stack(logits, dim=1), torch.stack(preds, dim=1), gate_mean, class_logits)

    def forward(self, users: UserTensors, items: ItemTensors) -> ModelOutput:
        user, item = self.user_part(users), self.item_part(items)
        x = self.pair_features(user, item)
        if self.retrieval_task is None:
            return self.head(x)
        u, v = self.user_vectors(user), self.item_vectors(item)
        out = self.head(x, (u * v).sum(dim=1) / self.spec.retrieval_temperature)
        return out._replace(user_vectors=u, item_vectors=v)

    def loss(
        self,
        out: ModelOutput,
        labels: torch.Tensor,
        mask: torch.Tensor,
        class_targets: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total with the configured task weights, per-task losses [T]); class_targets [N, M, C] is required
        when there are multiclass tasks, items [N] (the examples' item indices) with a retrieval task."""
        retrieval = None
        if self.retrieval_task is not None:
            if items is None or out.user_vectors is None or out.item_vectors is None:
                raise ValueError("a retrieval task's loss needs the item indices and the output's vectors")

            def retrieval(rows: torch.Tensor) -> torch.Tensor:
                return in_batch_softmax(
                    out.user_vectors[rows],
                    out.item_vectors[rows],
                    items[rows],
                    self.item_log_q,
                    self.spec.retrieval_temperature,
                )

        losses = task_losses(
            self.spec.tasks,
            out.logits,
            out.predictions,
            out.class_logits,
            labels,
            mask,
            class_targets,
            retrieval,
        )
        return (losses * self.task_weights).sum(), losses


class SharedBottom(MultiTaskModel):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        layers: list[nn.Module] = []
        in_dim = self.out_dim
        for width in spec.expert_hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(), Dropout(spec.dropout)]
            in_dim = width
        self.bottom = nn.Sequential(*layers)

    def shared(self, x: torch.Tensor | PairGrid) -> tuple[torch.Tensor, None]:
        h = self.bottom[1:](linear(self.bottom[0], x))
        return h[:, None, :].expand(-1, len(self.spec.tasks), -1), None

    @property
    def last_shared_layer(self) -> str:
        return f"bottom.{3 * (len(self.spec.expert_hidden) - 1)}.weight"


class MixtureOfExperts(MultiTaskModel):
    """MMoE (one level, shared experts only) and PLE (several levels with task and shared experts)."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        n_tasks, hidden = len(spec.tasks), spec.expert_hidden
        if spec.architecture == "mmoe":
            shape = [(0, spec.num_experts, False)]
        else:
            shape = [
                (spec.ple_task_experts, spec.ple_shared_experts, level < spec.ple_levels - 1)
                for level in range(spec.ple_levels)
            ]
        self.levels = nn.ModuleList(
            ExtractionLevel(
                self.out_dim if level == 0 else hidden[-1], n_tasks, k, s, hidden, spec.dropout, gate
            )
            for level, (k, s, gate) in enumerate(shape)
        )

    def shared(self, x: torch.Tensor | PairGrid) -> tuple[torch.Tensor, torch.Tensor]:
        for level in self.levels:
            x, gates = level(x)
        return x, gates.mean(dim=0).detach()

    @property
    def last_shared_layer(self) -> str:
        return f"levels.{len(self.levels) - 1}.experts.{len(self.spec.expert_hidden) - 1}.weight"


ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MixtureOfExperts,
    "ple": MixtureOfExperts,
}


def build_model(spec: ModelSpec) -> MultiTaskModel:
    """The module of `spec.architecture`, freshly initialised (seed the torch RNG before for a fixed init)."""
    if spec.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {spec.architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[spec.architecture](spec)
