"""What a model's retrieval score ranks: its validation AUC beside the item popularity and two corrections.

Two-stage scoring is only as good as the retrieval score's order. On the validation slice of a run's
features (positives of the retrieval task's label against the sampled negatives) this prints the AUC,
pooled over all examples and as the mean of each user's own AUC (what picking a user's candidates needs), of:
the retrieval score; the item's count of training positives alone (popularity); and the score plus and
minus log q, q being each item's share of the training positives (the logQ correction's distribution). A
score that has learned log p(item | user), as an in-batch softmax with logQ correction should, ranks at
least as well as popularity; one closer to the pointwise mutual information log p(item | user) / q(item)
(what the softmax learns without the correction) ranks better once log q is added back.

    python bench/retrieval_auc.py --model-dir var/ml100k/work/models/<version>.heldout \\
        --features var/ml100k/work/runs/1998-03-01/features --config configs/movielens.toml \\
        --run-date 1998-03-01 --json var/bench/retrieval_auc.json

Use the `.heldout` twin of a refit model: the refit one has trained on the validation days. q is the one
the model saved (`item_log_q`): models saved before it was kept hold zeros there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from night_args import night_parser, validation_predictions, write_result

from model.metrics import roc_auc


def main() -> None:
    parser = night_parser(__doc__, model_dir=True, run_date=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    _, model, data, predictions = validation_predictions(args)
    if model.retrieval_task is None:
        parser.error(f"{args.model_dir} has no retrieval task")
    task = model.retrieval_task
    scores = predictions[:, task].numpy()
    mask = data.val.label_mask[:, task].numpy()
    labels = data.val.labels[mask, task].numpy()
    # The log q the model was trained with and saved (its training positives; monotone in their count).
    log_q = model.item_log_q.double().numpy()[data.val.items.item.numpy()[mask]]
    score = scores[mask].astype(np.float64)
    users = data.val.users.user.numpy()[mask]
    rankings = {
        "retrieval score": score,
        "popularity (training positives)": log_q,
        "score + log q": score + log_q,
        "score - log q": score - log_q,
    }
    rows = {
        name: {"pooled": roc_auc(labels, values), "per_user": per_user_auc(users, labels, values)}
        for name, values in rankings.items()
    }
    print(f"validation examples: {len(labels)}, positives: {int(labels.sum())}")
    print("| ranking by | AUC, pooled | AUC, mean over users |\n|---|---:|---:|")
    for name, auc in rows.items():
        print(f"| {name} | {auc['pooled']:.3f} | {auc['per_user']:.3f} |")
    write_result(args.json, {"auc": rows})


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over the users with a positive and a negative of each user's own AUC: what candidate picking
    needs (one user's items against each other). A softmax score is only defined up to a per-user constant,
    which the pooled AUC counts against it."""
    aucs = []
    for user in np.unique(users):
        rows = users == user
        auc = roc_auc(labels[rows], scores[rows])
        if auc is not None:
            aucs.append(auc)
    return float(np.mean(aucs))


if __name__ == "__main__":
    main()
