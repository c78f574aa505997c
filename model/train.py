"""Train the multi-task model on a run's features, keep the best epoch by validation loss, save it.

Reproducible for a given `cfg.model.seed` on a given machine and device: seeded init, a seeded
(CPU) generator for the batch permutations, deterministic kernels on CPU. The model version is derived
from the config, the data window and the warm-start source, so rerunning a date gives the same version
and replaces it.

Two things make a nightly run cheaper to repeat:
- warm start (`warm_start_from`, see model/warm_start.py): begin from the champion's weights;
- resume: after every epoch the whole training state (weights, optimizer, early-stopping state, RNG
  states) is written to `<model_root>/.resume-<version>.pt` (model.checkpoint.resume_path). A run killed
  at any point and started again with the same inputs continues after the last finished epoch and ends
  with the same weights as an uninterrupted run; the file is deleted when the model directory is written.

The same loop trains data-parallel (model/train_ddp.py): every rank walks the same seeded permutation
and takes its slice of each batch, so the ranks together see the batches a single process would. A
retrieval task's in-batch softmax then draws its negatives from the rank's slice only (batch / world of
them): the same objective with fewer sampled negatives, not the single-process loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from model.architectures import MultiTaskModel, build_model
from model.checkpoint import (
    heldout_version,
    load_resume,
    remove_resume,
    resume_path,
    save_model,
    save_resume,
    trained_before,
)
from model.data import ExampleTensors, TensorGroup, TrainingData, load_training_data
from model.device import precision, resolve_device
from model.metrics import task_metrics
from model.spec import ModelSpec
from model.warm_start import warm_start
from model.weighting import Balancer, make_balancer
from nightrec.config import Config

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    version: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    n_train: int
    n_val: int
    epoch_seconds: list[float]  # wall time of each training pass run in this process (not in the history:
    # the history is part of the reproducible result, timings are not)


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel run (rank `rank` of `world`); the default is the whole run.

    Needs an initialised torch.distributed process group when world > 1.
    """

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's examples of a batch (indices): every `world`-th one, so the ranks split it evenly."""
        return batch[self.rank :: self.world]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value on every rank, in place: decisions (early stopping) must agree across ranks."""
        if self.world > 1:
            dist.broadcast(tensor, src=0)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@dataclass(frozen=True)
class _Evaluation:
    loss: float
    task_losses: list[float]
    gate_mean: list[list[float]] | None  # [T][E]; None for an architecture without gates
    predictions: torch.Tensor  # [N, T] on CPU
    class_probs: torch.Tensor  # [N, M, C] on CPU: the multiclass tasks' predicted distributions


@dataclass
class _Progress:
    """What the epoch loop carries from one epoch to the next; all of it goes into the resume file."""

    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped: bool = False


def model_version(cfg: Config, run_date: date, data: TrainingData, warm_from: str | None = None) -> str:
    """`YYYYMMDD-<hash>`: the hash covers the config, the data window and the warm-start source (the
    champion's version), nothing time-dependent. The `scoring` section is left out: how a trained model is
    applied (top K, blend, engine) does not change the model, so changing it keeps the model's version (a
    rerun retrains the same model under the same name)."""
    payload = {
        "config": cfg.model_dump(mode="json", exclude={"scoring"}),
        "run_date": run_date.isoformat(),
        "first_day": data.first_day.isoformat(),
        "last_day": data.last_day.isoformat(),
        "n_train": len(data.train),
        "n_val": len(data.val),
    }
    if warm_from is not None:
        payload["warm_start"] = warm_from
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return f"{run_date:%Y%m%d}-{digest}"


def _tensors(group: TensorGroup) -> Iterator[torch.Tensor]:
    """Every tensor of the group, nested groups included; optional tensors the data lacks are skipped."""
    for f in fields(group):  # type: ignore[arg-type]
        value = getattr(group, f.name)
        if isinstance(value, TensorGroup):
            yield from _tensors(value)
        elif value is not None:
            yield value


def positives_per_item(data: ExampleTensors, task: int, n_items: int) -> torch.Tensor:
    """[n_items] count of the examples labelled positive for `task`, per item index."""
    positive = data.label_mask[:, task] & (data.labels[:, task] > 0.5)
    return torch.bincount(data.items.item[positive], minlength=n_items)


def _inputs_fingerprint(version: str, data: TrainingData, shard: Shard) -> str:
    """What a resume file must match: the version (config, window) plus the example tensors themselves,
    so data corrected under the same window and counts starts over instead of mixing two datasets."""
    digest = hashlib.sha256(f"{version}|world={shard.world}".encode())
    for group in (data.train, data.val):
        for tensor in _tensors(group):
            digest.update(tensor.contiguous().cpu().numpy())  # the buffer itself: no copy on CPU
    return digest.hexdigest()


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


def autocast(device: torch.device, cpu_bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (model.device.precision), and on CPU too when `model.cpu_bf16` asks for it
    (a gain on CPUs with AMX; elsewhere bf16 matmuls can be slower than float32)."""
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return precision(device)


def _train_epoch(
    model: MultiTaskModel,
    balancer: Balancer,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ExampleTensors,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    cpu_bf16: bool,
    shard: Shard,
    bar_desc: str,
    show_progress: bool,
) -> list[float]:
    """One pass over a seeded permutation; returns the mean loss per task (by example count).

    Every rank draws the same permutation and takes every `world`-th example of each batch, so the ranks
    together process the single-process batches (DistributedDataParallel averages their gradients).
    """
    model.train()
    names = [t.name for t in model.spec.tasks]
    order = torch.randperm(len(data), generator=generator).to(device)
    sums = torch.zeros(len(names), device=device)
    seen = torch.zeros((), device=device)
    starts = range(0, len(data), batch_size)
    bar = tqdm(starts, desc=bar_desc, unit="batch", disable=not show_progress, leave=False)
    for step, start in enumerate(bar):
        batch = data.take(shard.part(order[start : start + batch_size]))
        with autocast(device, cpu_bf16):
            out = forward(batch.users, batch.items)
        _, per_task = model.loss(out, batch.labels, batch.label_mask, batch.class_targets, batch.items.item)
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(per_task)
        optimizer.step()
        sums += per_task.detach() * len(batch)
        seen += len(batch)
        if step % 10 == 0 or step == len(starts) - 1:  # .item() syncs the GPU: not on every step
            bar.set_postfix({n: f"{v:.4f}" for n, v in zip(names, (sums / seen).tolist(), strict=True)})
    shard.sum(sums)
    shard.sum(seen)
    return (sums / seen.clamp(min=1)).tolist()


def early_stopping_sample(val: ExampleTensors, size: int, seed: int) -> ExampleTensors:
    """The validation examples early stopping compares epochs on: at most `size`, drawn once with `seed`.

    Why: evaluating is a third of a training step per example, and a run's validation slice can hold most
    of its examples (ML-1M users 1-2999: 1.0M of 1.32M), so evaluating all of it after every epoch took
    more time than the epochs. Loss differences between epochs are far above a 200k sample's noise; the
    held-out metrics are still computed on the whole slice, once, for the chosen epoch.
    """
    if len(val) <= size:
        return val
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(val), generator=generator)[:size].sort().values
    return val.take(rows.to(val.labels.device))


@torch.inference_mode()
def _evaluate(
    model: MultiTaskModel, data: ExampleTensors, batch_size: int, device: torch.device, cpu_bf16: bool
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
        with autocast(device, cpu_bf16):
            out = model(batch.users, batch.items)
        _, per_task = model.loss(out, batch.labels, batch.label_mask, batch.class_targets, batch.items.item)
        counts = batch.label_mask.sum(dim=0).float()
        loss_sums += per_task * counts
        label_counts += counts
        if out.gate_mean is not None:
            gate_sum = out.gate_mean * len(batch) + (0.0 if gate_sum is None else gate_sum)
        preds.append(out.predictions.cpu())
        class_probs.append(torch.softmax(out.class_logits, dim=-1).cpu())
    task_losses = loss_sums / label_counts.clamp(min=1.0)
    # A retrieval loss depends on which positives share a batch: logged per task, kept out of the figure
    # early stopping compares (as the champion gate's val_loss keeps it out).
    per_example = torch.tensor([t.type != "retrieval" for t in model.spec.tasks], device=task_losses.device)
    if not (model.task_weights * per_example).any():  # nothing but retrieval: its loss is all there is
        per_example = torch.ones_like(per_example)
    return _Evaluation(
        loss=float((task_losses * model.task_weights * per_example).sum()),
        task_losses=task_losses.tolist(),
        gate_mean=None if gate_sum is None else (gate_sum / len(data)).tolist(),
        predictions=torch.cat(preds),
        class_probs=torch.cat(class_probs),
    )


def _resume_state(
    progress: _Progress,
    model: nn.Module,
    balancer: Balancer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "progress": asdict(progress),
        "model": model.state_dict(),
        "balancer": balancer.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore(
    state: dict[str, Any],
    model: nn.Module,
    balancer: Balancer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> _Progress:
    model.load_state_dict(state["model"])
    balancer.load_state_dict(state["balancer"])  # learned task weights live outside the module
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    progress = _Progress(**state["progress"])
    if progress.best_state is not None:
        progress.best_state = {k: v.to(device) for k, v in progress.best_state.items()}
    return progress


def _state_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _start(
    spec: ModelSpec,
    cfg: Config,
    data: TrainingData,
    examples: ExampleTensors,
    warm_from: Path | None,
    device: torch.device,
) -> tuple[MultiTaskModel, Balancer, torch.optim.Optimizer, torch.Generator, dict[str, Any] | None]:
    """A seeded model (warm-started when asked), its loss balancer, optimizer and shuffling generator."""
    mc = cfg.model
    torch.manual_seed(mc.seed)
    model = build_model(spec).to(device)
    warm_summary = warm_start(model, warm_from, data.vocab) if warm_from is not None else None
    if model.retrieval_task is not None:
        model.set_sampling_distribution(positives_per_item(examples, model.retrieval_task, spec.n_items))
    balancer = make_balancer(mc, model, len(cfg.tasks))
    # Fused: one kernel per parameter updates it in one pass over memory. The default loop runs ~10 passes,
    # and the embedding tables' full-size gradients made it over half of a training step (tier M: 116 ->
    # 47 ms per batch of 2048; docs/benchmarks.md).
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters()}, {"params": balancer.parameters(), "weight_decay": 0.0}],
        lr=mc.learning_rate,
        weight_decay=mc.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    # A CPU generator: the same permutations whichever device trains, and on every rank.
    generator = torch.Generator().manual_seed(mc.seed)
    return model, balancer, optimizer, generator, warm_summary


def _refit(
    spec: ModelSpec,
    cfg: Config,
    data: TrainingData,
    warm_from: Path | None,
    device: torch.device,
    epochs: int,
    shard: Shard,
    show_progress: bool,
) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Train again from the same start on train + validation examples for the chosen number of epochs.

    The validation days are the newest behaviour, the peers learn from them and so should the published
    model; early stopping has already used them to choose `epochs`. Not resumable: a rerun after a crash
    resumes the selection (already finished) and refits again.
    """
    mc = cfg.model
    examples = data.examples.to(device)
    model, balancer, optimizer, generator, _ = _start(spec, cfg, data, examples, warm_from, device)
    forward: nn.Module = model
    if shard.world > 1:
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    names = cfg.task_names()
    history = []
    for epoch in range(1, epochs + 1):
        losses = _train_epoch(
            model,
            balancer,
            forward,
            optimizer,
            examples,
            mc.batch_size,
            generator,
            device,
            mc.cpu_bf16,
            shard,
            f"refit {epoch}/{epochs}",
            show_progress and shard.is_main,
        )
        history.append({"epoch": epoch, **{f"train_{n}": v for n, v in zip(names, losses, strict=True)}})
        log.info("refit epoch %d/%d on %d examples: %s", epoch, epochs, len(examples), history[-1])
    summary = {"epochs": epochs, "n_examples": len(examples), "history": history}
    return model, summary


def train_model(
    features_dir: Path,
    cfg: Config,
    run_date: date,
    model_root: Path,
    show_progress: bool = True,
    *,
    warm_start_from: Path | None = None,
    resume: bool = True,
    on_epoch: EpochCallback | None = None,
    shard: Shard = Shard(),
) -> TrainResult:
    """Train on examples before `run_date - validation_days`, validate on the days after, save the best.

    `warm_start_from`: a model directory (the champion) to start from when `model.warm_start` is on.
    `resume`: continue from `<model_root>/.resume-<version>.pt` when a previous run with the same inputs
    left one. `on_epoch`: called with each epoch's history entry once that epoch's state is saved.
    `shard`: this rank of a data-parallel run; rank 0 writes the files, every rank returns the result.
    """
    mc = cfg.model
    device = resolve_device(mc.device)
    data = load_training_data(Path(features_dir), cfg, run_date)
    names = cfg.task_names()
    spec = ModelSpec.from_config(cfg, data.vocab.sizes(), data.layout)
    if warm_start_from is not None and not mc.warm_start:
        log.info("model.warm_start is off: not starting from %s", warm_start_from)
        warm_start_from = None
    if shard.world > 1 and mc.loss_weighting != "fixed":
        # Their learned weights and rewritten gradients live outside DistributedDataParallel's all-reduce:
        # each rank would learn its own task weights and the ranks would drift apart.
        raise ValueError(
            f"model.loss_weighting = {mc.loss_weighting!r} is not supported with several processes; "
            "use fixed weights with torchrun"
        )
    warm_from = None if warm_start_from is None else Path(warm_start_from)
    cutoff = run_date - timedelta(days=mc.validation_days)
    if warm_from is not None and (trained_before(warm_from) or run_date) > cutoff:
        # A refit champion has trained on (part of) this run's validation slice: starting from it would
        # leak that slice into early stopping and into the held-out figures the gate compares.
        log.info("not starting from %s: it has trained on days from %s on (refit)", warm_from.name, cutoff)
        warm_from = None
    version = model_version(cfg, run_date, data, None if warm_from is None else warm_from.name)
    resume_file = resume_path(model_root, version)
    fingerprint = _inputs_fingerprint(version, data, shard)
    log.info(
        "training on %d examples, validating on %d, device %s%s",
        len(data.train),
        len(data.val),
        device,
        f", rank {shard.rank} of {shard.world}" if shard.world > 1 else "",
    )

    with _deterministic_kernels(device):
        model, balancer, optimizer, generator, warm_summary = _start(
            spec, cfg, data, data.train, warm_from, device
        )
        progress = _Progress()
        saved = load_resume(resume_file) if resume else None
        if saved is not None and saved["fingerprint"] != fingerprint:
            log.warning("%s was written for other inputs: starting over", resume_file)
            saved = None
        if saved is not None:
            progress = _restore(saved, model, balancer, optimizer, generator, device)
            log.info("resuming after epoch %d from %s", progress.epoch, resume_file)
        resumed_after = progress.epoch
        forward: nn.Module = model
        if shard.world > 1:
            ids = [torch.cuda.current_device()] if device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        train, val = data.train.to(device), data.val.to(device)
        stopping = early_stopping_sample(val, mc.early_stopping_examples, mc.seed)

        epoch_seconds: list[float] = []
        for epoch in range(progress.epoch + 1, mc.epochs + 1):
            if progress.stopped:
                break
            epoch_start = time.perf_counter()
            train_losses = _train_epoch(
                model,
                balancer,
                forward,
                optimizer,
                train,
                mc.batch_size,
                generator,
                device,
                mc.cpu_bf16,
                shard,
                f"epoch {epoch}/{mc.epochs}",
                show_progress and shard.is_main,
            )
            epoch_seconds.append(time.perf_counter() - epoch_start)
            ev = _evaluate(model, stopping, mc.batch_size, device, mc.cpu_bf16)
            val_loss = float(shard.from_main(torch.tensor([ev.loss], device=device)).item())
            train_loss = sum(t.weight * v for t, v in zip(cfg.tasks, train_losses, strict=True))
            entry = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                **{f"train_{n}": v for n, v in zip(names, train_losses, strict=True)},
                **{f"val_{n}": v for n, v in zip(names, ev.task_losses, strict=True)},
                "gates": None if ev.gate_mean is None else dict(zip(names, ev.gate_mean, strict=True)),
                "task_weights": dict(zip(names, balancer.weights(), strict=True)),
            }
            progress.history.append(entry)
            log.info(
                "epoch %d: train loss %.5f, val loss %.5f, gates %s",
                epoch,
                train_loss,
                val_loss,
                None
                if ev.gate_mean is None
                else {n: [round(g, 3) for g in gates] for n, gates in zip(names, ev.gate_mean, strict=True)},
            )
            progress.epoch = epoch
            if val_loss < progress.best_loss:
                progress.best_loss, progress.best_epoch, progress.bad_epochs = val_loss, epoch, 0
                progress.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                progress.bad_epochs += 1
                if progress.bad_epochs >= mc.patience:
                    log.info("early stop after epoch %d: best epoch %d", epoch, progress.best_epoch)
                    progress.stopped = True
            if shard.is_main:
                save_resume(
                    resume_file, _resume_state(progress, model, balancer, optimizer, generator, fingerprint)
                )
            if on_epoch is not None:
                on_epoch(entry)
        history = progress.history
        if progress.best_state is None:
            raise RuntimeError(
                f"training diverged: the validation loss is not finite ({history[-1]['val_loss']})"
            )
        model.load_state_dict(progress.best_state)
        final = _evaluate(model, val, mc.batch_size, device, mc.cpu_bf16)
        refit = None
        if mc.refit:
            heldout = model
            # What the selection held on the device goes before the refit allocates its own.
            progress.best_state = None
            del optimizer, balancer, forward, train, val, stopping
            model, refit = _refit(
                spec, cfg, data, warm_from, device, progress.best_epoch, shard, show_progress
            )

    metrics = {
        "val_loss": final.loss,
        "best_epoch": progress.best_epoch,
        "tasks": task_metrics(
            {t.name: t.type for t in cfg.tasks},
            final.predictions.numpy(),
            data.val.labels.numpy(),
            data.val.label_mask.numpy(),
            final.class_probs.numpy(),
            data.val.class_targets.numpy(),
        ),
    }
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
        "precision": "bf16" if device.type == "cuda" or mc.cpu_bf16 else "fp32",
        "warm_start": warm_summary,
        "resumed_after_epoch": resumed_after,
        # Refit: this model trained on every example before the run date; `metrics` are the held-out
        # figures of the model early stopping chose, saved beside it as <version>.heldout (the gate's).
        "refit": None if refit is None else {**refit, "heldout": heldout_version(version)},
        "torch_version": torch.__version__,
    }
    if shard.world > 1:
        digests: list[str | None] = [None] * shard.world
        dist.all_gather_object(digests, _state_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks ended with different weights: {digests}")
        meta["distributed"] = {
            "world_size": shard.world,
            "backend": dist.get_backend(),
            "rank_state_sha256": digests,
        }
    model_dir = Path(model_root) / version
    if shard.is_main:
        if refit is not None:
            heldout_meta = {**meta, "refit": None, "heldout_of": version}
            save_model(
                heldout, data.layout, data.vocab, heldout_meta, Path(model_root), heldout_version(version)
            )
        model_dir = save_model(model, data.layout, data.vocab, meta, Path(model_root), version)
        remove_resume(resume_file)
        log.info("model %s written to %s: %s", version, model_dir, json.dumps(metrics["tasks"]))
    shard.barrier()  # the other ranks return once the model directory exists
    return TrainResult(model_dir, version, metrics, history, len(data.train), len(data.val), epoch_seconds)
