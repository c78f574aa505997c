"""The versioned model directory: `model.pt` (state_dict only), `meta.json`, `vocab.json`.

The weights file holds tensors and nothing else, and is read with `torch.load(weights_only=True)`:
a model directory is data, and loading one must never run code from a pickle. Everything needed to
rebuild the module (sizes, tasks, feature layout) is plain JSON next to it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.data import FeatureLayout, Vocabularies
from model.mmoe import MMoE, ModelSpec

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
VOCAB_FILE = "vocab.json"


def save_model(
    model: MMoE,
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


def load_model(
    model_dir: Path, device: torch.device | str = "cpu"
) -> tuple[MMoE, dict[str, Any], Vocabularies]:
    """Rebuild the module from meta.json and load the weights (tensors only), in eval mode.

    A weights file containing anything but tensors and plain containers is refused by torch
    (`pickle.UnpicklingError`), and a state_dict that does not match the module exactly fails too.
    """
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    vocab = Vocabularies.from_json(json.loads((model_dir / VOCAB_FILE).read_text()))
    model = MMoE(ModelSpec.from_dict(meta["model_spec"]))
    state = torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta, vocab
