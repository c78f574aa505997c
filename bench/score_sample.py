"""Scoring speed of one trained model on the first N users of a night, for comparing two versions of the code.

`Scorer.score` on the N users (in user-id order) with the night's whole user count, so one or two stages
are decided as the night decides them; the model and the catalogue are prepared once, outside the clock.
Prints users/s and pairs/s (pairs: users x candidates in two stages, users x items otherwise) per repeat.
For an A/B, run this script against each version's code, alternating, on an otherwise idle machine (the
script comes from this checkout, the code from PYTHONPATH):

    git worktree add /tmp/before <commit>
    for run in 1 2 3; do for side in /tmp/before $PWD; do
        PYTHONPATH=$side python $PWD/bench/score_sample.py --model-dir $M --features $F \\
            --config bench/tier_m.toml --users 4096
    done; done
"""

from __future__ import annotations

import time

import torch
from night_args import night_parser

from model.data import read_features
from model.device import resolve_device
from model.score import Scorer, local_item_text
from nightrec import schema
from nightrec.config import load_config


def main() -> None:
    parser = night_parser(__doc__, model_dir=True)
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    cfg = load_config(args.config)
    items = read_features(args.features, schema.ITEMS)
    scorer = Scorer.build(
        args.model_dir, items, local_item_text(items, cfg), cfg.scoring, resolve_device(cfg.model.device)
    )
    all_users = read_features(args.features, schema.USERS)
    users = all_users.sort_by(schema.USER_ID).slice(0, args.users)
    seen = read_features(args.features, schema.SEEN)
    two_stage = scorer.two_stage(all_users.num_rows)
    per_user = cfg.scoring.retrieval_candidates if two_stage else items.num_rows
    print(
        f"{users.num_rows} users, {'two stages' if two_stage else 'one stage'}, "
        f"blocks of {scorer.users_per_block(all_users.num_rows)} users, {torch.get_num_threads()} threads"
    )
    for _ in range(args.repeats):
        start = time.perf_counter()
        scorer.score(users, seen, all_users.num_rows)
        seconds = time.perf_counter() - start
        print(
            f"{seconds:.2f} s: {users.num_rows / seconds:,.0f} users/s, "
            f"{users.num_rows * per_user / seconds:,.0f} pairs/s"
        )


if __name__ == "__main__":
    main()
