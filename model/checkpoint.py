"""The versioned model directory: `model.pt` (state_dict only), `meta.json`, `vocab.json`, `manifest.json`;
and the resume file a training run keeps beside it until the directory is written.

The weights file holds tensors and nothing else, and is read with `torch.load(weights_only=True)`:
a model directory is data, and loading one must never run code from a pickle. Everything needed to
rebuild the module (sizes, tasks, feature layout) is plain JSON next to it. `manifest.json` holds the
SHA-256 of the other three files and is checked before anything is read, so a file changed or swapped
after training (a bad copy, a truncated sync, a tampered weights file) is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import torch

from model.architectures import MultiTaskModel, build_model
from model.data import FeatureLayout, Vocabularies
from model.spec import ModelSpec

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
CHECKED_FILES = (MODEL_FILE, META_FILE, VOCAB_FILE)


class ModelIntegrityError(RuntimeError):
    """A model directory whose files do not match its manifest."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path) -> None:
    """Record the checksum of every file of the model directory."""
    sums = {name: _sha256(Path(model_dir) / name) for name in CHECKED_FILES}
    (Path(model_dir) / MANIFEST_FILE).write_text(json.dumps({"sha256": sums}, indent=2, sort_keys=True))


def verify_manifest(model_dir: Path) -> None:
    """Raise ModelIntegrityError unless every file matches the checksum recorded at save time."""
    model_dir = Path(model_dir)
    manifest = model_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise ModelIntegrityError(f"{model_dir}: no {MANIFEST_FILE}; refusing to load an unverified model")
    expected = json.loads(manifest.read_text()).get("sha256", {})
    for name in CHECKED_FILES:
        path = model_dir / name
        if not path.is_file() or _sha256(path) != expected.get(name):
            raise ModelIntegrityError(
                f"{model_dir}: {name} does not match its checksum in {MANIFEST_FILE}; refusing to load it"
            )


def save_model(
    model: MultiTaskModel,
    layout: FeatureLayout,
    vocab: Vocabularies,
    meta: dict[str, Any],
    model_root: Path,
    version: str,
) -> Path:
    """Write `model_root/<version>/` and return it.

    Files go to a hidden temporary directory under `model_root` first and the directory is renamed into
    place, so a crash leaves either no model directory or a complete one, never half of one. A rerun
    with the same version replaces the previous directory.
    """
    model_root = Path(model_root)
    model_root.mkdir(parents=True, exist_ok=True)
    final = model_root / version
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published model directory is readable like any other
    try:
        state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        full_meta = {
            **meta,
            "version": version,
            "model_spec": model.spec.to_dict(),
            "layout": layout.to_dict(),
        }
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        (tmp / VOCAB_FILE).write_text(json.dumps(vocab.to_json()))
        write_manifest(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{version}.old-", dir=model_root))
            final.rename(old / version)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_weights(
    model_dir: Path, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Vocabularies]:
    """The verified state_dict, meta.json and vocabularies of a model directory, without building a module.

    The manifest is verified first (ModelIntegrityError). A weights file containing anything but tensors
    and plain containers is refused by torch (`pickle.UnpicklingError`) even where its manifest was rewritten
    to match. Warm start reads a champion this way, so it works whatever module the champion was.
    """
    model_dir = Path(model_dir)
    verify_manifest(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    vocab = Vocabularies.from_json(json.loads((model_dir / VOCAB_FILE).read_text()))
    state = torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True)
    return state, meta, vocab


def load_model(
    model_dir: Path, device: torch.device | str = "cpu"
) -> tuple[MultiTaskModel, dict[str, Any], Vocabularies]:
    """Rebuild the module from meta.json and load the weights (see `load_weights`), in eval mode.

    A state_dict that does not match the module exactly fails.
    """
    state, meta, vocab = load_weights(model_dir, device)
    model = build_model(ModelSpec.from_dict(meta["model_spec"]))
    # Models saved before the sampling distribution was kept: log q = 0, candidates by the score alone.
    state.setdefault("item_log_q", model.item_log_q.to(device))
    model.load_state_dict(state)
    return model.to(device).eval(), meta, vocab


def resume_path(model_root: Path, version: str) -> Path:
    """`<model_root>/.resume-<version>.pt`: hidden, beside the model directories, one per training input.

    The version hashes the config and the data window, so a rerun with the same inputs finds the file of
    the run it continues and a run with other inputs never picks up a foreign one.
    """
    return Path(model_root) / f".resume-{version}.pt"


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically: a kill during the write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_resume(path: Path) -> dict[str, Any] | None:
    """The saved resume state (tensors and plain containers only), or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_resume(path: Path) -> None:
    """Delete the resume file (and a temporary left by a kill mid-write) once training has finished."""
    path = Path(path)
    for stale in (path, path.with_name(path.name + ".tmp")):
        stale.unlink(missing_ok=True)


def heldout_version(version: str) -> str:
    """The directory name of a refit model's held-out twin: the model early stopping chose."""
    return f"{version}.heldout"


def trained_before(model_dir: Path) -> date | None:
    """The first day a model has not trained on: the day after its last example when refit (every example of
    its features), else its validation cutoff. None when the model's meta.json cannot be read."""
    try:
        meta = json.loads((Path(model_dir) / META_FILE).read_text())
        window = meta["data_window"]
        if meta.get("refit"):
            return date.fromisoformat(window["last_day"]) + timedelta(days=1)
        return date.fromisoformat(window["validation_from"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
