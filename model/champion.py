"""The champion gate: a newly trained model replaces the published one only if it is not worse on the same data.

The champion of run date D is the model that published the newest date before D, as the warehouse `runs` table
records it (`model_version` of the latest published run with run_date < D), loaded from
`<workdir>/models/<version>`. The runs table is already the one record of what was published, so no second
"champion" file can disagree with it; and "before D" keeps the gate point-in-time: a rerun or a backtest of an
old date never compares with (or falls back to) a model trained on later data.

Both models are scored by the same code on the same examples: the new run's validation slice (its last
`model.validation_days` days), each model through its own vocabularies and feature scaling. A figure the
new model's training loop reported is never compared with one computed another way.

With `model.refit` a published model has also trained on its validation slice, so its figures on that slice
would not be held out: a refit candidate and a refit champion are each judged through their held-out twin
(`<version>.heldout`, the model early stopping chose), which have not seen the slice. A refit champion whose
twin is gone is judged, with the candidate, only on the slice's days after the last one it trained on.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import META_FILE, heldout_version, load_model, trained_before
from model.data import (
    FeatureLayout,
    example_tensors,
    item_text,
    read_examples_since,
    read_features,
    text_cache_dir,
)
from model.metrics import log_loss, task_metrics
from nightrec import schema
from nightrec.config import Config

LOWER_IS_BETTER = ("val_loss", "logloss", "rmse")


@dataclass(frozen=True)
class Verdict:
    """What the gate decided and why: recorded in the runs row, the nightly-summary artifact and the report."""

    promoted: bool  # True: the new model publishes (and becomes the champion); False: the champion publishes
    reason: str
    metric: str
    tolerance: float
    candidate_version: str
    champion_version: str | None = None
    candidate_value: float | None = None
    champion_value: float | None = None
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] = field(default_factory=dict)
    judged_from: str | None = (
        None  # the first validation day judged, when a refit champion saw the earlier ones
    )
    # The model directories whose figures these are: a refit model's held-out twin (`<version>.heldout`)
    # stands for it, so a reader can tell the figure is not the published weights'.
    candidate_judged: str | None = None
    champion_judged: str | None = None

    @property
    def published_version(self) -> str:
        return (
            self.candidate_version
            if self.promoted or self.champion_version is None
            else self.champion_version
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "published_version": self.published_version}


def primary_metric(cfg: Config) -> str:
    """`val_loss` or `<task>.<metric>`; `auto` is the first binary task's AUC (val_loss when none is binary)."""
    name = cfg.evaluation.primary_metric
    if name != "auto":
        task, _, figure = name.partition(".")
        if name == "val_loss":
            return name
        types = {t.name: t.type for t in cfg.tasks}
        if task not in types:
            raise ValueError(
                f"evaluation.primary_metric {name!r}: {task!r} is not a task; tasks: {cfg.task_names()}"
            )
        # A figure the task does not have would be undefined for both models and promote every candidate.
        needed = {"rmse": ("regression",), "auc": ("binary", "retrieval")}.get(figure, ("binary",))
        if types[task] not in needed:
            raise ValueError(
                f"evaluation.primary_metric {name!r}: {figure} needs a {' or '.join(needed)} task, "
                f"{task!r} is {types[task]}"
            )
        return name
    binary = [t.name for t in cfg.tasks if t.type == "binary"]
    return f"{binary[0]}.auc" if binary else "val_loss"


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """The named figure of `validation_metrics`' result; None where it is undefined on the data."""
    if name == "val_loss":
        value = metrics.get("val_loss")
    else:
        task, _, key = name.partition(".")
        value = metrics.get("tasks", {}).get(task, {}).get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def validation_metrics(
    model_dir: Path, features_dir: Path, cfg: Config, run_date: date, from_day: date | None = None
) -> dict[str, Any]:
    """The model of `model_dir` on the validation slice of the run's features: per-task metrics and val_loss.

    `from_day`: only the slice's days on or after it (the days a refit champion has not trained on).

    val_loss is the task-weighted sum of the per-task losses computed from the predictions (log loss for
    binary tasks, squared error for regression, cross-entropy for multiclass), so it does not depend on how a model computes its own loss.
    Raises ValueError when the model's tasks are not the config's (the labels would not match).
    """
    model, meta, vocab = load_model(Path(model_dir), "cpu")
    tasks = [t.name for t in model.spec.tasks]
    if tasks != cfg.task_names():
        raise ValueError(f"the model's tasks {tasks} are not the config's {cfg.task_names()}")
    cutoff = run_date - timedelta(days=cfg.model.validation_days)
    first_day = cutoff if from_day is None else max(cutoff, from_day)
    val = read_examples_since(features_dir, first_day)
    if not val.num_rows:
        raise NoValidationExamples(f"no validation examples on or after {first_day}")
    layout = FeatureLayout.from_dict(meta["layout"])
    # Each model reads item text through its own encoder settings (the encoder's cache is shared).
    text = item_text(
        read_features(features_dir, schema.ITEMS), layout.text_encoder, layout.text_dim, text_cache_dir(cfg)
    )
    data = example_tensors(val, vocab, layout, cfg.tasks, text)
    preds, class_probs = [], []
    with torch.inference_mode():
        for start in range(0, len(data), cfg.model.batch_size):
            batch = data.take(slice(start, start + cfg.model.batch_size))
            out = model(batch.users, batch.items)
            preds.append(out.predictions.float())
            class_probs.append(torch.softmax(out.class_logits.float(), dim=-1))
    p, y, mask = torch.cat(preds).numpy(), data.labels.numpy(), data.label_mask.numpy()
    per_task = task_metrics(
        {t.name: t.type for t in cfg.tasks},
        p,
        y,
        mask,
        torch.cat(class_probs).numpy(),
        data.class_targets.numpy(),
    )
    loss = 0.0
    for j, task in enumerate(cfg.tasks):
        m = mask[:, j]
        if not m.any() or task.type == "retrieval":
            # A retrieval loss depends on which positives share a batch: no per-example loss to compare.
            continue
        if task.type == "binary":
            task_loss = log_loss(y[m, j], p[m, j])
        elif task.type == "multiclass":
            task_loss = float(per_task[task.name]["cross_entropy"])
        else:
            task_loss = float(np.mean((p[m, j].astype(np.float64) - y[m, j]) ** 2))
        loss += task.weight * task_loss
    return {"val_loss": loss, "n_val": len(data), "tasks": per_task}


def champion_before(store: Any, run_date: date) -> str | None:
    """The model_version that published the newest date before `run_date`, from the warehouse runs table."""
    d = store.dialect
    if not store.fetch(
        f"SELECT 1 FROM information_schema.tables WHERE table_schema = {d.param} AND table_name = 'runs'",
        [store.schema],
    ):
        return None
    rows = store.fetch(
        f"SELECT model_version FROM {d.table('runs')} WHERE status = 'published' AND run_date < {d.param} "
        "AND model_version IS NOT NULL ORDER BY run_date DESC, finished_at DESC NULLS LAST LIMIT 1",
        [run_date],
    )
    return rows[0][0] if rows else None


def published_version(store: Any, run_date: date) -> str | None:
    """The model_version of the newest published run of `run_date`, from the warehouse runs table."""
    d = store.dialect
    rows = store.fetch(
        f"SELECT model_version FROM {d.table('runs')} WHERE status = 'published' AND run_date = {d.param} "
        "ORDER BY finished_at DESC NULLS LAST LIMIT 1",
        [run_date],
    )
    return rows[0][0] if rows else None


class NoValidationExamples(ValueError):
    """The slice to judge on holds no examples."""


def _judged_dir(model_dir: Path) -> Path:
    """The held-out twin of a refit model where it exists, else the model itself."""
    twin = model_dir.parent / heldout_version(model_dir.name)
    return twin if (_meta(model_dir) or {}).get("refit") and twin.is_dir() else model_dir


def _meta(model_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(model_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _better_or_close(candidate: float, champion: float, metric: str, tolerance: float) -> bool:
    if metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER:
        return candidate <= champion + tolerance
    return candidate >= champion - tolerance


def judge(
    cfg: Config,
    run_date: date,
    features_dir: Path,
    candidate_dir: Path,
    candidate_version: str,
    champion_version: str | None,
    model_root: Path,
) -> Verdict:
    """Promote the candidate unless the champion is better on the same validation slice beyond the tolerance.

    No champion, the champion's own version (a rerun of its date), or a champion that cannot be scored here
    (its directory is gone or fails its checksum, its tasks or features differ) promotes the candidate, with the
    reason said: a gate that cannot compare must not pin an old model forever.
    """
    metric, tolerance = primary_metric(cfg), cfg.evaluation.tolerance
    base = {"metric": metric, "tolerance": tolerance, "candidate_version": candidate_version}
    # A refit model has trained on its own validation slice: its held-out twin (the model early stopping
    # chose) stands for it, for the candidate and for a refit champion alike, so both are judged as models
    # that have not seen the slice. Only a refit champion without its twin is judged on the days after the
    # ones it trained on.
    judged_candidate = _judged_dir(Path(candidate_dir))
    judged_champion = None if champion_version is None else _judged_dir(model_root / champion_version)
    base["candidate_judged"] = judged_candidate.name
    from_day = None
    if judged_champion is not None and champion_version != candidate_version:
        champion_from = trained_before(judged_champion)
        if champion_from is not None and champion_from > run_date - timedelta(days=cfg.model.validation_days):
            from_day = champion_from
            base["judged_from"] = from_day.isoformat()
    try:
        candidate = validation_metrics(judged_candidate, features_dir, cfg, run_date, from_day)
    except NoValidationExamples as exc:
        return Verdict(True, f"cannot compare: {exc}, the days the champion has not trained on", **base)
    new = metric_value(candidate, metric)
    base.update(candidate_metrics=candidate, candidate_value=new, champion_version=champion_version)
    if champion_version is None:
        return Verdict(True, "first model: no earlier published run", **base)
    if champion_version == candidate_version:
        return Verdict(
            True, "the candidate is the champion itself (a rerun of the same data and config)", **base
        )
    try:
        champion = validation_metrics(judged_champion, features_dir, cfg, run_date, from_day)
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, pickle.UnpicklingError) as exc:
        return Verdict(True, f"the champion {champion_version} cannot be scored here: {exc}", **base)
    old = metric_value(champion, metric)
    base.update(champion_metrics=champion, champion_value=old, champion_judged=judged_champion.name)
    if old is None:
        return Verdict(True, f"the champion's {metric} is undefined on this validation slice", **base)
    if new is None:
        return Verdict(False, f"the candidate's {metric} is undefined on this validation slice", **base)
    if _better_or_close(new, old, metric, tolerance):
        return Verdict(
            True, f"{metric} {new:.4f} vs champion {old:.4f}: within tolerance {tolerance} or better", **base
        )
    return Verdict(
        False,
        f"{metric} {new:.4f} is worse than the champion's {old:.4f} beyond tolerance {tolerance}",
        **base,
    )
