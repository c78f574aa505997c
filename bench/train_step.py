"""Milliseconds per training step of nightrec's model on a night's features, and where a step's time goes.

Builds the model, loss balancer and optimizer as training does (`model.train._start`), times `--steps`
steps of the training loop's work (forward, losses, backward, optimizer step) on batches of a seeded
permutation after a few warm-up steps, then prints torch.profiler's table of 20 more. `--adamw` swaps the
optimizer's implementation (the same AdamW, same settings) to compare them on the same batches:

    PYTHONPATH=$PWD python bench/train_step.py --features var/nsbench/tierM/work/runs/2026-11-01/features \\
        --config bench/tier_m.toml --run-date 2026-11-01 --adamw loop
"""

from __future__ import annotations

import time

import torch
from night_args import night_parser
from torch.profiler import ProfilerActivity, profile

from model.data import load_training_data
from model.spec import ModelSpec
from model.train import _start
from nightrec.config import load_config

IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def main() -> None:
    parser = night_parser(__doc__, run_date=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--adamw", choices=sorted(IMPLEMENTATIONS), help="default: as training builds it")
    args = parser.parse_args()

    cfg = load_config(args.config)
    mc = cfg.model
    start = time.perf_counter()
    data = load_training_data(args.features, cfg, args.run_date)
    print(f"loaded {len(data.train)} training examples in {time.perf_counter() - start:.1f} s")
    spec = ModelSpec.from_config(cfg, data.vocab.sizes(), data.layout)
    model, balancer, optimizer, generator, _ = _start(spec, cfg, data, data.train, None, torch.device("cpu"))
    if args.adamw:
        optimizer = torch.optim.AdamW(
            [{"params": model.parameters()}, {"params": balancer.parameters(), "weight_decay": 0.0}],
            lr=mc.learning_rate,
            weight_decay=mc.weight_decay,
            **IMPLEMENTATIONS[args.adamw],
        )
    model.train()
    order = torch.randperm(len(data.train), generator=generator)

    def step(k: int) -> None:
        batch = data.train.take(order[k * mc.batch_size : (k + 1) * mc.batch_size])
        out = model(batch.users, batch.items)
        _, per_task = model.loss(out, batch.labels, batch.label_mask, batch.class_targets, batch.items.item)
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(per_task)
        optimizer.step()

    for k in range(5):
        step(k)
    start = time.perf_counter()
    for k in range(5, 5 + args.steps):
        step(k)
    seconds = (time.perf_counter() - start) / args.steps
    print(f"{seconds * 1000:.1f} ms per step of {mc.batch_size}: {mc.batch_size / seconds:,.0f} examples/s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(5 + args.steps, 25 + args.steps):
            step(k)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
