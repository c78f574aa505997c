"""What the bench scripts that read one night share: their command-line arguments, how they write their JSON,
and the model's predictions on the night's validation slice.

Imported by the scripts as a sibling module (`python bench/<script>.py` puts bench/ on the path), so a
script run against another checkout's code through PYTHONPATH still finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch

from model.architectures import MultiTaskModel
from model.checkpoint import load_model
from model.data import TrainingData, load_training_data
from nightrec.config import Config, load_config


def night_parser(
    doc: str | None, *, model_dir: bool = False, run_date: bool = False
) -> argparse.ArgumentParser:
    """A parser with --features and --config (the night's), and --model-dir / --run-date where asked;
    `doc` (the script's docstring) is its description, printed as written."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model_dir:
        parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--config", required=True)
    if run_date:
        parser.add_argument("--run-date", type=date.fromisoformat, required=True)
    return parser


def write_result(path: Path | None, result: dict) -> None:
    """`result` as JSON at `path` (the script's --json; nothing when None), headed by the command line that
    produced it, so every figure can be traced to its command."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), **result}, indent=2))


def validation_predictions(
    args: argparse.Namespace,
) -> tuple[Config, MultiTaskModel, TrainingData, torch.Tensor]:
    """For a parser with --model-dir and --run-date: the night's config, the model, its training data and
    the model's predictions [N, T] on the validation slice, computed in batches of the config's size."""
    cfg = load_config(args.config)
    model, _, _ = load_model(args.model_dir)
    data = load_training_data(args.features, cfg, args.run_date)
    step = cfg.model.batch_size
    with torch.inference_mode():
        predictions = torch.cat(
            [
                model(part.users, part.items).predictions
                for part in (data.val.take(slice(s, s + step)) for s in range(0, len(data.val), step))
            ]
        )
    return cfg, model, data, predictions
