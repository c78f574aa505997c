"""Data-parallel training across processes, started by torchrun:

    python -m torch.distributed.run --nproc_per_node=2 -m model.train_ddp \\
        --features RUN_DIR/features --config nightrec.toml --run-date 2024-03-15 --out WORKDIR/models

Every rank loads the same features, builds the same seeded model and walks the same seeded batch
permutation, taking its own slice of each batch (model.train.Shard): no per-example sampler, no data
sent between ranks, only DistributedDataParallel's gradient all-reduce. Rank 0 writes the model
directory and the resume file; the ranks' final weights are compared by checksum before it does.

The backend is gloo on CPU and NCCL on CUDA when every local rank has its own GPU; ranks that share a
GPU (NCCL refuses that) fall back to gloo, which reduces CUDA tensors through host memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist

from model.device import resolve_device
from model.train import Shard, train_model
from nightrec.config import Config, load_config


def choose_backend(device: torch.device, local_world_size: int) -> str:
    if device.type == "cuda" and torch.cuda.device_count() >= local_world_size:
        return "nccl"
    return "gloo"


def read_config(path: Path) -> Config:
    """A TOML config as the CLI reads it, or the JSON of a Config a caller already resolved (overrides
    applied), which is what a flow launching torchrun passes on."""
    if path.suffix == ".json":
        return Config.model_validate_json(path.read_text())
    return load_config(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.train_ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="the run's features directory")
    parser.add_argument(
        "--config", type=Path, required=True, help="the nightrec TOML config, or a resolved Config as .json"
    )
    parser.add_argument("--run-date", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    parser.add_argument(
        "--out", type=Path, required=True, help="model root: the model directory goes under it"
    )
    parser.add_argument("--warm-start-from", type=Path, help="the champion's model directory")
    parser.add_argument("--no-resume", action="store_true", help="ignore a resume file of an earlier run")
    parser.add_argument("--backend", choices=["gloo", "nccl"], help="default: see the module docstring")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(asctime)s %(name)s: %(message)s")
    cfg = read_config(args.config)
    device = resolve_device(cfg.model.device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = args.backend or choose_backend(device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    dist.init_process_group(backend)
    try:
        result = train_model(
            args.features,
            cfg,
            args.run_date,
            args.out,
            show_progress=False,
            warm_start_from=args.warm_start_from,
            resume=not args.no_resume,
            shard=Shard(dist.get_rank(), dist.get_world_size()),
        )
        if dist.get_rank() == 0:
            print(
                json.dumps(
                    {"model_dir": str(result.model_dir), "version": result.version, "backend": backend}
                )
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
