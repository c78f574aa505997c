"""torch-rechub's multi-task models trained the way its README trains them, on nightrec's own tensors.

The baseline of bench/train_throughput.py: the same examples, the same inputs (user id, item id, the user's
history pooled by mean over the shared item table, the item's categories pooled by mean, the dense features),
the same embedding size, expert and tower widths and batch size, trained by torch-rechub's `MTLTrainer` from a
`torch.utils.data.DataLoader` over its `TorchDataset` (shuffle on, no workers: its DataGenerator's default).

torch-rechub is not a dependency of nightrec: it is installed into a side folder only for this benchmark,
`pip install --no-deps --target .bench-site torch-rechub==0.9.0` (its own needs, torch, numpy, pandas,
scikit-learn and tqdm, are in nightrec's environment already).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

SITE = Path(__file__).resolve().parent.parent / ".bench-site"


def import_rechub():
    """torch-rechub from .bench-site, or a clear instruction to put it there."""
    if SITE.exists() and str(SITE) not in sys.path:
        sys.path.append(str(SITE))
    try:
        import torch_rechub  # noqa: F401
    except ImportError:
        raise SystemExit(
            "torch-rechub is not installed for the benchmark: "
            "pip install --no-deps --target .bench-site torch-rechub==0.9.0"
        ) from None
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import TorchDataset

    return {
        "DenseFeature": DenseFeature,
        "SequenceFeature": SequenceFeature,
        "SparseFeature": SparseFeature,
        "MMOE": MMOE,
        "PLE": PLE,
        "SharedBottom": SharedBottom,
        "MTLTrainer": MTLTrainer,
        "TorchDataset": TorchDataset,
    }


def rechub_inputs(train, vocab_sizes: dict[str, int], dim: int, rh: dict):
    """(features, x dict of numpy arrays, y [N, T]) for torch-rechub from nightrec's ExampleTensors."""
    users, items = train.users, train.items
    features = [
        rh["SparseFeature"]("user", vocab_sizes["users"], embed_dim=dim, padding_idx=0),
        rh["SparseFeature"]("item", vocab_sizes["items"], embed_dim=dim, padding_idx=0),
        rh["SequenceFeature"](
            "history", vocab_sizes["items"], embed_dim=dim, pooling="mean", shared_with="item", padding_idx=0
        ),
        rh["SequenceFeature"](
            "categories", vocab_sizes["categories"], embed_dim=dim, pooling="mean", padding_idx=0
        ),
    ]
    x = {
        "user": users.user.numpy().astype(np.int64),
        "item": items.item.numpy().astype(np.int64),
        "history": users.history.numpy().astype(np.int64),
        "categories": items.categories.numpy().astype(np.int64),
    }
    dense = torch.cat([users.dense, items.dense], dim=1).numpy()
    for j in range(dense.shape[1]):
        features.append(rh["DenseFeature"](f"dense_{j}"))
        x[f"dense_{j}"] = dense[:, j]
    return features, x, train.labels.numpy()


def rechub_model(arch: str, features, n_tasks: int, mc, rh: dict) -> torch.nn.Module:
    """The torch-rechub model of `arch` with nightrec's widths (experts, towers, dropout)."""
    task_types = ["classification"] * n_tasks
    expert = {"dims": list(mc.expert_hidden), "dropout": mc.dropout}
    towers = [{"dims": list(mc.tower_hidden), "dropout": mc.dropout} for _ in range(n_tasks)]
    if arch == "mmoe":
        return rh["MMOE"](features, task_types, mc.num_experts, expert, towers)
    if arch == "ple":
        return rh["PLE"](
            features, task_types, mc.ple_levels, mc.ple_task_experts, mc.ple_shared_experts, expert, towers
        )
    if arch == "shared_bottom":
        return rh["SharedBottom"](features, task_types, expert, towers)
    raise ValueError(f"no torch-rechub model for {arch!r}")


def rechub_throughput(arch: str, train, vocab_sizes: dict[str, int], mc, n_tasks: int, epochs: int) -> dict:
    """Examples/s of torch-rechub's MTLTrainer.train_one_epoch (DataLoader included), the mean over epochs."""
    rh = import_rechub()
    from torch.utils.data import DataLoader

    torch.manual_seed(mc.seed)
    features, x, y = rechub_inputs(train, vocab_sizes, mc.embedding_dim, rh)
    model = rechub_model(arch, features, n_tasks, mc, rh)
    loader = DataLoader(rh["TorchDataset"](x, y), batch_size=mc.batch_size, shuffle=True, num_workers=0)
    trainer = rh["MTLTrainer"](
        model,
        task_types=["classification"] * n_tasks,
        optimizer_params={"lr": mc.learning_rate, "weight_decay": mc.weight_decay},
        n_epoch=1,
        device="cpu",
        model_path=str(Path("/tmp")),
    )
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train_one_epoch(loader)
        seconds.append(time.perf_counter() - start)
    return {"examples": len(y), "seconds": seconds, "examples_per_s": len(y) / (sum(seconds) / len(seconds))}
