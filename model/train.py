"""Train the model on a run's features, keep the best epoch by validation loss, write a model directory.

Reproducible for a given `cfg.model.seed` on a given machine and device: seeded init, a seeded
(CPU) generator for the batch permutations, deterministic kernels on CPU. The model version is derived
from the config and the data window, so rerunning a date gives the same version and replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from model.architectures import MultiTaskModel, build_model
from model.checkpoint import save_model
from model.data import ExampleTensors, TrainingData, load_training_data
from model.device import precision, resolve_device
from model.metrics import task_metrics
from model.spec import ModelSpec
from model.weighting import Balancer, make_balancer
from nightrec.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    version: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    n_train: int
    n_val: int


@dataclass(frozen=True)
class _Evaluation:
    loss: float
    task_losses: list[float]
    gate_mean: list[list[float]] | None  # [T][E]; None for an architecture without gates
    predictions: torch.Tensor  # [N, T] on CPU
    class_probs: torch.Tensor  # [N, M, C] on CPU: the multiclass tasks' predicted distributions


def model_version(cfg: Config, run_date: date, data: TrainingData) -> str:
    """`YYYYMMDD-<hash>`: the hash covers the whole config and the data window, nothing time-dependent."""
    payload = {
        "config": cfg.model_dump(mode="json"),
        "run_date": run_date.isoformat(),
        "first_day": data.first_day.isoformat(),
        "last_day": data.last_day.isoformat(),
        "n_train": len(data.train),
        "n_val": len(data.val),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return f"{run_date:%Y%m%d}-{digest}"


@contextlib.contextmanager
def _deterministic_kernels(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU, restoring the process-wide setting afterwards.

    Not on CUDA: there it needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts and costs throughput.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _train_epoch(
    model: MultiTaskModel,
    balancer: Balancer,
    optimizer: torch.optim.Optimizer,
    data: ExampleTensors,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    bar_desc: str,
    show_progress: bool,
) -> list[float]:
    """One pass over a seeded permutation; returns the mean loss per task (by example count)."""
    model.train()
    names = [t.name for t in model.spec.tasks]
    order = torch.randperm(len(data), generator=generator).to(device)
    sums = torch.zeros(len(names), device=device)
    seen = 0
    starts = range(0, len(data), batch_size)
    bar = tqdm(starts, desc=bar_desc, unit="batch", disable=not show_progress, leave=False)
    for step, start in enumerate(bar):
        batch = data.take(order[start : start + batch_size])
        with precision(device):
            out = model(batch.users, batch.items)
        _, per_task = model.loss(out, batch.labels, batch.label_mask, batch.class_targets)
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(per_task)
        optimizer.step()
        sums += per_task.detach() * len(batch)
        seen += len(batch)
        if step % 10 == 0 or step == len(starts) - 1:  # .item() syncs the GPU: not on every step
            bar.set_postfix({n: f"{v:.4f}" for n, v in zip(names, (sums / seen).tolist(), strict=True)})
    return (sums / max(seen, 1)).tolist()


@torch.inference_mode()
def _evaluate(
    model: MultiTaskModel, data: ExampleTensors, batch_size: int, device: torch.device
) -> _Evaluation:
    """Exact per-task validation losses (each over the examples with that label), predictions, gates."""
    model.eval()
    n_tasks = len(model.spec.tasks)
    loss_sums = torch.zeros(n_tasks, device=device)
    label_counts = torch.zeros(n_tasks, device=device)
    gate_sum: torch.Tensor | None = None
    preds, class_probs = [], []
    for start in range(0, len(data), batch_size):
        batch = data.take(slice(start, start + batch_size))
        with precision(device):
            out = model(batch.users, batch.items)
        _, per_task = model.loss(out, batch.labels, batch.label_mask, batch.class_targets)
        counts = batch.label_mask.sum(dim=0).float()
        loss_sums += per_task * counts
        label_counts += counts
        if out.gate_mean is not None:
            gate_sum = out.gate_mean * len(batch) + (0.0 if gate_sum is None else gate_sum)
        preds.append(out.predictions.cpu())
        class_probs.append(torch.softmax(out.class_logits, dim=-1).cpu())
    task_losses = loss_sums / label_counts.clamp(min=1.0)
    return _Evaluation(
        loss=float((task_losses * model.task_weights).sum()),
        task_losses=task_losses.tolist(),
        gate_mean=None if gate_sum is None else (gate_sum / len(data)).tolist(),
        predictions=torch.cat(preds),
        class_probs=torch.cat(class_probs),
    )


def train_model(
    features_dir: Path, cfg: Config, run_date: date, model_root: Path, show_progress: bool = True
) -> TrainResult:
    """Train on examples before `run_date - validation_days`, validate on the days after, save the best."""
    mc = cfg.model
    device = resolve_device(mc.device)
    data = load_training_data(Path(features_dir), cfg, run_date)
    names = cfg.task_names()
    spec = ModelSpec.from_config(cfg, data.vocab.sizes(), data.layout)
    log.info("training on %d examples, validating on %d, device %s", len(data.train), len(data.val), device)

    with _deterministic_kernels(device):
        torch.manual_seed(mc.seed)
        model = build_model(spec).to(device)
        balancer = make_balancer(mc, model, len(names))
        optimizer = torch.optim.AdamW(
            [{"params": model.parameters()}, {"params": balancer.parameters(), "weight_decay": 0.0}],
            lr=mc.learning_rate,
            weight_decay=mc.weight_decay,
        )
        # A CPU generator: the same permutations whichever device trains.
        generator = torch.Generator().manual_seed(mc.seed)
        train, val = data.train.to(device), data.val.to(device)

        history: list[dict[str, Any]] = []
        best_loss, best_epoch, best_state, bad_epochs = math.inf, 0, None, 0
        for epoch in range(1, mc.epochs + 1):
            train_losses = _train_epoch(
                model,
                balancer,
                optimizer,
                train,
                mc.batch_size,
                generator,
                device,
                f"epoch {epoch}/{mc.epochs}",
                show_progress,
            )
            ev = _evaluate(model, val, mc.batch_size, device)
            train_loss = sum(t.weight * v for t, v in zip(cfg.tasks, train_losses, strict=True))
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": ev.loss,
                    **{f"train_{n}": v for n, v in zip(names, train_losses, strict=True)},
                    **{f"val_{n}": v for n, v in zip(names, ev.task_losses, strict=True)},
                    "gates": None if ev.gate_mean is None else dict(zip(names, ev.gate_mean, strict=True)),
                    "task_weights": dict(zip(names, balancer.weights(), strict=True)),
                }
            )
            log.info(
                "epoch %d: train loss %.5f, val loss %.5f, gates %s",
                epoch,
                train_loss,
                ev.loss,
                None
                if ev.gate_mean is None
                else {n: [round(g, 3) for g in gates] for n, gates in zip(names, ev.gate_mean, strict=True)},
            )
            if ev.loss < best_loss:
                best_loss, best_epoch, bad_epochs = ev.loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= mc.patience:
                    log.info("early stop after epoch %d: best epoch %d", epoch, best_epoch)
                    break
        if best_state is None:
            raise RuntimeError(
                f"training diverged: the validation loss is not finite ({history[-1]['val_loss']})"
            )
        model.load_state_dict(best_state)
        final = _evaluate(model, val, mc.batch_size, device)

    metrics = {
        "val_loss": final.loss,
        "best_epoch": best_epoch,
        "tasks": task_metrics(
            {t.name: t.type for t in cfg.tasks},
            final.predictions.numpy(),
            data.val.labels.numpy(),
            data.val.label_mask.numpy(),
            final.class_probs.numpy(),
            data.val.class_targets.numpy(),
        ),
    }
    version = model_version(cfg, run_date, data)
    meta = {
        "config": cfg.model_dump(mode="json"),
        "run_date": run_date.isoformat(),
        "data_window": {
            "first_day": data.first_day.isoformat(),
            "last_day": data.last_day.isoformat(),
            "validation_from": (run_date - timedelta(days=mc.validation_days)).isoformat(),
            "run_date": run_date.isoformat(),
        },
        "vocab_sizes": data.vocab.sizes(),
        "tasks": [t.model_dump(mode="json") for t in cfg.tasks],
        "metrics": metrics,
        "history": history,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "device": str(device),
        "torch_version": torch.__version__,
    }
    model_dir = save_model(model, data.layout, data.vocab, meta, Path(model_root), version)
    log.info("model %s written to %s: %s", version, model_dir, json.dumps(metrics["tasks"]))
    return TrainResult(model_dir, version, metrics, history, len(data.train), len(data.val))
