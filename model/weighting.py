"""How the per-task losses become one training step (`model.loss_weighting`).

- fixed: the configured task weights.
- uncertainty (Kendall et al., CVPR 2018): a learned log-variance s_t per task,
  L = sum_t c_t (exp(-s_t) L_t + s_t) with c_t = 1/2 for regression and 1 otherwise. Not clamped: s_t
  settles at log L_t, so the effective weight c_t exp(-s_t) follows 1 / L_t. It replaces the configured
  weights.
- gradnorm (Chen et al., ICML 2018): learnable weights w_t (renormalised to sum T before each step) pulled
  so that the gradient norm of w_t L_t on one shared parameter W follows mean_t(G) x r_t^alpha, r_t the
  task's relative inverse training rate (L_t / L_t(0) over its mean). Their gradient is the one of
  sum_t |G_t - target_t| with the target held constant.
- pcgrad (Yu et al., NeurIPS 2020): on the shared parameters, each task's gradient is projected off the
  normal plane of every other task's gradient it conflicts with (negative dot product), the others taken
  in a seeded random order; the projected gradients are summed. Tower parameters get their plain gradient.

A balancer's `state_dict()` is what a resumed run needs to continue exactly (learned weights, GradNorm's first
losses, PCGrad's random order). Its `backward(per_task)` does the backward pass (gradients land in `.grad`, the optimizer steps
afterwards), `parameters()` are its own learnable parameters for the optimizer (with no weight decay: a
decayed log-variance would be pulled towards weight 1), `weights()` the current task weights for the log.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.architectures import MultiTaskModel
from nightrec.config import ModelConfig


class FixedWeights:
    def __init__(self, model: MultiTaskModel):
        self.task_weights = model.task_weights

    def parameters(self) -> list[nn.Parameter]:
        return []

    def weights(self) -> list[float]:
        return self.task_weights.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def backward(self, per_task: torch.Tensor) -> torch.Tensor:
        total = (per_task * self.task_weights).sum()
        total.backward()
        return total.detach()


class UncertaintyWeights:
    def __init__(self, model: MultiTaskModel):
        factor = [0.5 if t.type == "regression" else 1.0 for t in model.spec.tasks]
        self.factor = torch.tensor(factor, device=model.task_weights.device)
        self.log_var = nn.Parameter(torch.zeros(len(factor), device=model.task_weights.device))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_var]

    def weights(self) -> list[float]:
        return (self.factor * torch.exp(-self.log_var.detach())).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"log_var": self.log_var.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_var.copy_(state["log_var"])

    def backward(self, per_task: torch.Tensor) -> torch.Tensor:
        total = (self.factor * (torch.exp(-self.log_var) * per_task + self.log_var)).sum()
        total.backward()
        return total.detach()


class GradNorm:
    def __init__(self, model: MultiTaskModel, alpha: float, layer: str | None):
        name = layer or model.last_shared_layer
        params = dict(model.named_parameters())
        if name not in params:
            raise ValueError(
                f"model.gradnorm_layer {name!r} is not a parameter of the model; known: {sorted(params)}"
            )
        self.shared = params[name]
        self.alpha = alpha
        w = model.task_weights / model.task_weights.sum().clamp(min=1e-12) * len(model.spec.tasks)
        self.w = nn.Parameter(w.clone())
        self.initial: torch.Tensor | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [self.w]

    def _normalised(self) -> torch.Tensor:
        """The weights the next step uses: the optimizer's w, no negatives, renormalised to sum T."""
        w = self.w.detach().clamp(min=0.0)
        return w * (len(w) / w.sum().clamp(min=1e-12))

    def weights(self) -> list[float]:
        return self._normalised().tolist()

    def state_dict(self) -> dict[str, Any]:
        """The weights and the first step's losses: the rates of later steps are measured against them."""
        return {"w": self.w.detach().clone(), "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.initial = state["initial"]

    def backward(self, per_task: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.w.copy_(self._normalised())
        if self.initial is None:
            self.initial = per_task.detach().clamp(min=1e-12)
        norms = torch.stack(
            [
                torch.linalg.vector_norm(
                    torch.autograd.grad(loss, self.shared, retain_graph=True, allow_unused=True)[0]
                )
                if loss.requires_grad
                else per_task.new_zeros(())
                for loss in per_task
            ]
        ).nan_to_num()
        w = self.w.detach()
        g = w * norms
        ratio = per_task.detach() / self.initial
        target = g.mean() * (ratio / ratio.mean().clamp(min=1e-12)) ** self.alpha
        total = (w * per_task).sum()
        total.backward()
        self.w.grad = torch.sign(g - target) * norms  # d/dw_t of sum |w_t norm_t - target_t|
        return total.detach()


def pcgrad_project(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[T, P] task gradients -> [T, P] projected ones: each task's gradient loses its component along every
    other task's (original) gradient it has a negative dot product with, the others in a random order."""
    out = grads.clone()
    n = grads.shape[0]
    for t in range(n):
        for j in torch.randperm(n, generator=generator).tolist():
            if j == t:
                continue
            dot = out[t] @ grads[j]
            if dot < 0:
                out[t] -= dot / (grads[j] @ grads[j]).clamp(min=1e-20) * grads[j]
    return out


class PCGrad:
    def __init__(self, model: MultiTaskModel, seed: int):
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)

    def parameters(self) -> list[nn.Parameter]:
        return []

    def weights(self) -> list[float]:
        return self.model.task_weights.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def backward(self, per_task: torch.Tensor) -> torch.Tensor:
        shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        weighted = per_task * self.model.task_weights
        rows = []
        for loss in weighted:
            grads = (
                torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                if loss.requires_grad
                else [None] * len(shared)
            )
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for g, p in zip(grads, shared, strict=True)
                    ]
                )
            )
        projected = pcgrad_project(torch.stack(rows), self.generator).sum(dim=0)
        total = weighted.sum()
        total.backward()  # the towers' gradients; the shared ones are replaced below
        offset = 0
        for p in shared:
            size = p.numel()
            p.grad = projected[offset : offset + size].view_as(p).to(p.device, p.dtype)
            offset += size
        return total.detach()


Balancer = FixedWeights | UncertaintyWeights | GradNorm | PCGrad


def make_balancer(mc: ModelConfig, model: MultiTaskModel, n_tasks: int) -> Balancer:
    """The balancer of `mc.loss_weighting` for `model` (create it after moving the model to its device)."""
    if n_tasks != len(model.spec.tasks):
        raise ValueError(f"make_balancer: {n_tasks} tasks given, the model has {len(model.spec.tasks)}")
    match mc.loss_weighting:
        case "fixed":
            return FixedWeights(model)
        case "uncertainty":
            return UncertaintyWeights(model)
        case "gradnorm":
            return GradNorm(model, mc.gradnorm_alpha, mc.gradnorm_layer)
        case "pcgrad":
            return PCGrad(model, mc.seed)
    raise ValueError(f"unknown model.loss_weighting {mc.loss_weighting!r}")
