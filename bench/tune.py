"""Compare model configurations on validation nights, beside the peers: the tuning loop of docs/backtest.md.

Each variant is the base config with a few settings overridden (a TOML file of tables, one per variant, each
holding partial sections: `[mmoe_wide.model] expert_hidden = [256, 64]`). For every date, every variant is
trained on that night's features (the nightly must have run for the date in `--workdir`: `nightrec backtest`
on the tuning dates does it), scores every user, and is judged with the protocol of the evaluation notes
beside Pop, ItemKNN and EASE. Variants that differ only in [scoring] share one trained model.

Tune only on dates whose test window ends before the first date you report (the hygiene of the notes):
the tuning dates are validation slices, the backtest dates are the test.

    python bench/tune.py --config configs/movielens.toml --landing var/ml100k/landing \\
        --workdir var/tune100k/work --dates 1997-10-18,1997-11-01 --variants bench/variants.toml \\
        --json var/tune100k/variants.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tomllib
from datetime import date
from pathlib import Path

from flows.backtest import _json_safe, _markdown_table, overall
from model.pair_scores import score_pairs
from model.peers import Ranker, evaluate_night
from model.score import score_users
from model.train import train_model
from nightrec.config import Config, load_config, merged


def variant_configs(base: Config, path: Path | None) -> dict[str, Config]:
    """`base` as "base" plus one validated config per table of the variants file."""
    raw = base.model_dump(mode="json")
    variants = tomllib.loads(path.read_text()) if path else {}
    labels = {t.name: t.label for t in base.tasks}
    configs = {"base": base}
    for name, override in variants.items():
        # Every variant trains on the nights' features as the base config built them (features, labels) and
        # is judged by the base config's evaluation: overrides of those would silently not apply.
        fixed = sorted(set(override) & {"data", "spark", "features", "validation", "evaluation"})
        if fixed:
            raise SystemExit(f"variant {name!r} overrides {fixed}: these come from the base config")
        configs[name] = Config.model_validate(merged(raw, override))
        if any(labels.get(t.name) != t.label for t in configs[name].tasks):
            raise SystemExit(f"variant {name!r}: a task label differs from the base config's (or is new)")
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--landing")
    parser.add_argument("--workdir")
    parser.add_argument("--dates", required=True, help="comma-separated validation run dates")
    parser.add_argument("--variants", type=Path, help="TOML file: one table of overrides per variant")
    parser.add_argument("--only", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = load_config(args.config, landing=args.landing, workdir=args.workdir)
    configs = variant_configs(base, args.variants)
    if args.only:
        configs = {n: c for n, c in configs.items() if n in args.only.split(",")}
    dates = [date.fromisoformat(d) for d in args.dates.split(",")]
    root = Path(base.data.workdir) / "tune" / "models"
    nights = []
    for run_date in dates:
        features = base.run_dir(run_date) / "features"
        if not features.exists():
            raise SystemExit(
                f"{features} is missing: run the nightly (or nightrec backtest) for {run_date} first"
            )
        trained: dict[str, Path] = {}
        rankers = {}
        for name, cfg in configs.items():
            key = json.dumps(
                {k: v for k, v in cfg.model_dump(mode="json").items() if k != "scoring"}, sort_keys=True
            )
            if key not in trained:
                trained[key] = train_model(features, cfg, run_date, root, show_progress=False).model_dir
            model_dir = trained[key]
            recs = score_users(model_dir, features, cfg, show_progress=False)
            rankers[name] = Ranker(
                recs, lambda pairs, d=model_dir, c=cfg, f=features: score_pairs(d, f, c, pairs)
            )
            print(f"{run_date} {name}: trained and scored", flush=True)
        night = evaluate_night(base, run_date, rankers, peers=True)
        nights.append(night)
        print(f"\n## {run_date}\n" + "\n".join(_markdown_table(night.metrics, base.evaluation.k)), flush=True)
    table = overall(nights, base.evaluation.k)
    print("\n## overall\n" + "\n".join(_markdown_table(table, base.evaluation.k)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_safe({"dates": args.dates, "overall": table}), indent=2))


if __name__ == "__main__":
    main()
