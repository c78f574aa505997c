"""How well a model ranks an ESMM child task where it matters, against each single feature it was given.

The issue-3 bar judges `like` on the test ratings: among the items a user rated, which were liked, i.e. the
conditional p(like | engage). This script asks the same question on a night's validation slice (the last
`model.validation_days` days before the run date, never the test window): over the examples whose parent
label is 1, the ROC AUC of the model's conditional (child / parent probability) beside the AUC of every
numeric user and item feature of the examples alone. A feature that beats the model is one the model
underuses. The same table is repeated for the returning users only (a parent positive before the slice):
the test protocol judges only users with an event before the run date, while most raters of a slice may be
new. Use the held-out model (`<version>.heldout` with refit): the published one has trained on the
slice.

    PYTHONPATH=$PWD python bench/like_conditional.py --model-dir var/nsb/ml1m_c/work/models/20001201-a3e38ec25e.heldout \\
        --features var/nsb/ml1m_c/work/runs/2000-12-01/features --config configs/movielens.toml --run-date 2000-12-01
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from night_args import night_parser, validation_predictions, write_result

from model.data import read_features
from model.metrics import roc_auc
from nightrec import schema as S


def main() -> None:
    parser = night_parser(__doc__, model_dir=True, run_date=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cfg, model, data, preds = validation_predictions(args)
    examples = read_features(args.features, S.EXAMPLES)
    since = pc.cast(
        args.run_date - timedelta(days=cfg.model.validation_days), examples.schema.field(S.DAY).type
    )
    parent_positive = {
        t.parent: pc.equal(examples.column(S.label_column(t.parent)), 1.0) for t in cfg.tasks if t.parent
    }
    earlier = pc.less(examples.column(S.DAY), since)
    returning = {
        parent: pc.unique(examples.filter(pc.and_(positive, earlier)).column(S.USER_ID))
        for parent, positive in parent_positive.items()
    }
    examples = examples.filter(pc.greater_equal(examples.column(S.DAY), since))
    features = [
        field.name
        for field in examples.schema
        if field.name.startswith((S.USER_PREFIX, S.ITEM_PREFIX))
        and (pa.types.is_integer(field.type) or pa.types.is_floating(field.type))
    ]

    names = [t.name for t in model.spec.tasks]
    result: dict[str, dict] = {}
    for task in cfg.tasks:
        if task.parent is None or task.type != "binary":
            continue
        child, parent = names.index(task.name), names.index(task.parent)
        rows = data.val.labels[:, parent] == 1
        labels = data.val.labels[rows, child].numpy()
        conditional = (preds[rows, child] / preds[rows, parent].clamp(min=1e-12)).numpy()
        engaged = examples.filter(pc.equal(examples.column(S.label_column(task.parent)), 1.0))
        if engaged.num_rows != len(labels):
            raise SystemExit(
                f"{engaged.num_rows} parent positives in examples/, {len(labels)} in the tensors"
            )
        feature_labels = engaged.column(S.label_column(task.name)).to_numpy(zero_copy_only=False)
        back = pc.is_in(engaged.column(S.USER_ID), value_set=returning[task.parent]).to_numpy(
            zero_copy_only=False
        )
        result[task.name] = {"parent": task.parent}
        for population, rows in (("all raters", np.ones_like(back)), ("returning raters", back)):
            aucs = {"model p(task | parent)": roc_auc(labels[rows], conditional[rows])}
            for name in features:
                values = engaged.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                aucs[name] = roc_auc(feature_labels[rows], np.nan_to_num(values[rows]))
            result[task.name][population] = {
                "examples": int(rows.sum()),
                "positive_rate": float(labels[rows].mean()),
                "auc": aucs,
            }
            print(
                f"\n{task.name} given {task.parent}, {population}: {int(rows.sum())} validation examples, "
                f"rate {labels[rows].mean():.3f}\n"
            )
            print("| ranker | AUC |\n|---|---:|")
            for ranker, auc in sorted(aucs.items(), key=lambda kv: -kv[1]):
                print(f"| {ranker} | {auc:.4f} |")
    write_result(args.json, {"model_dir": str(args.model_dir), "tasks": result})


if __name__ == "__main__":
    main()
