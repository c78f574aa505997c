"""Score every user against every item and keep each user's top K unseen items.

Users go in blocks of about `cfg.scoring.block_pairs` user-item pairs (at most `user_batch_size` users); a
block is one batch of block x all items. Each user and each item is encoded once (embeddings, pooling) and
only the concatenation is broadcast over the grid, so the cost per block is the expert/tower MLP on block x
items rows. With DIN history pooling the user's history embeddings are looked up once per block and only the
attention runs per pair, batched over the grid. Peak memory is about block_pairs x max(experts x
expert_hidden[0], history_length x 32) x 4 bytes; blocks of about 32k pairs were also the fastest measured
(docs/benchmarks.md, "Blocks of pairs").

With a retrieval task and a large catalogue (users x items >= `scoring.two_stage_min_pairs`) scoring has two
stages: the retrieval score (one matrix product per block) plus `scoring.candidate_popularity` x log q (the
item's share of the retrieval task's training positives, which the logQ-corrected score leaves out) picks
`scoring.retrieval_candidates` unseen items per user, and the full model scores and blends only those, so
the per-pair network runs on N instead of all items per user. Below the threshold every item is scored by
the full model and the retrieval score is one more column the blend may use.

Multiclass tasks (category distributions) rank nothing: they get no p_<task> column and the blend cannot
name them.

The ranking score is `cfg.scoring.blend`, an arithmetic expression over task names. It comes from a
config file, so it is parsed with `ast` and only numbers, task names, + - * / **, unary minus and the
functions log and exp are accepted: no `eval` of configuration text. log is taken of max(x, 1e-30), so a
probability that underflows to 0 gives a very low score rather than -inf, and exp of min(x, 80), so a large
retrieval score cannot overflow to inf. A retrieval task's value is a
logit-like score: `log(engage) + match` multiplies the probability by exp(match).
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from model.architectures import MultiTaskModel
from model.checkpoint import load_model
from model.data import (
    FeatureLayout,
    ItemText,
    Vocabularies,
    item_tensors,
    item_text,
    read_features,
    text_cache_dir,
    user_tensors,
)
from model.device import precision, resolve_device
from model.inputs import ItemPart
from model.spec import TaskSpec
from nightrec import schema
from nightrec.config import Config, ScoringConfig

log = logging.getLogger(__name__)

Blend = Callable[[dict[str, torch.Tensor]], torch.Tensor]

_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "log": lambda x: torch.log(x.clamp(min=1e-30)),
    "exp": lambda x: torch.exp(x.clamp(max=80.0)),  # e^80 ~ 5e34: large, still finite in float32
}

_BINARY_OPS: dict[type[ast.operator], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    ast.Add: torch.add,
    ast.Sub: torch.sub,
    ast.Mult: torch.mul,
    ast.Div: torch.div,
    ast.Pow: torch.pow,
}


def compile_blend(expression: str | None, tasks: Sequence[TaskSpec]) -> Blend:
    """Validate the blend expression once and return a function of {task name: prediction tensor}.

    `None` means the product of the binary tasks' predictions: with ESMM children (joint probabilities)
    that is a probability-like score in [0, 1].
    """
    names = [t.name for t in tasks if t.type != "multiclass"]
    if expression is None:
        binary = [t.name for t in tasks if t.type == "binary"]
        if not binary:
            raise ValueError("scoring.blend must be set when no task is binary (the default multiplies them)")
        expression = " * ".join(binary)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"scoring.blend {expression!r} is not a valid expression: {exc.msg}") from None
    _check(tree.body, names, expression)
    return lambda values: _evaluate(tree.body, values)


def _check(node: ast.expr, names: list[str], expression: str) -> None:
    match node:
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY_OPS:
            _check(left, names, expression)
            _check(right, names, expression)
        case ast.UnaryOp(op=ast.USub() | ast.UAdd(), operand=operand):
            _check(operand, names, expression)
        case ast.Call(func=ast.Name(id=function), args=[argument], keywords=[]) if function in _FUNCTIONS:
            _check(argument, names, expression)
        case ast.Constant(value=value) if type(value) in (int, float):  # not bool, complex or str
            try:
                finite = math.isfinite(float(value))
            except OverflowError:
                finite = False
            if not finite:
                raise ValueError(f"scoring.blend {expression!r}: the constant {value} is not a finite number")
        case ast.Name(id=name):
            if name not in names:
                raise ValueError(
                    f"scoring.blend {expression!r}: {name!r} is not a binary, regression or retrieval task; "
                    f"those are: {names}"
                )
        case _:
            raise ValueError(
                f"scoring.blend {expression!r}: {type(node).__name__} is not allowed; use task names, "
                "numbers, + - * / **, parentheses, log() and exp()"
            )


def _evaluate(node: ast.expr, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Only the node types `_check` accepted reach here; constants become tensors, so no Python-number
    arithmetic (think 10 ** 10 ** 10) is ever carried out."""
    if isinstance(node, ast.BinOp):
        return _BINARY_OPS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](_evaluate(node.args[0], values))
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=torch.float32)
    assert isinstance(node, ast.Name)
    return values[node.id]


def _require_unique_ids(table: pa.Table, column: str, what: str) -> None:
    ids = table.column(column)
    if ids.null_count or pc.count_distinct(ids).as_py() != len(ids):
        raise ValueError(f"{what}: {column} must be non-null and unique (one row per {column})")


def _seen_pairs(seen: pa.Table, users: pa.Table, items: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(user row, item row) positions in the users/items tables, sorted by user row.

    Rows, not vocabulary indices: all unknown items share vocabulary index 0, but each is its own row.
    """
    user_rows = pc.index_in(
        seen.column(schema.USER_ID), value_set=users.column(schema.USER_ID).combine_chunks()
    )
    item_rows = pc.index_in(
        seen.column(schema.ITEM_ID), value_set=items.column(schema.ITEM_ID).combine_chunks()
    )
    u = pc.fill_null(user_rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    i = pc.fill_null(item_rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    known = (u >= 0) & (i >= 0)
    u, i = u[known], i[known]
    order = np.argsort(u, kind="stable")
    return u[order], i[order]


@dataclass
class Scorer:
    """Everything scoring needs besides the users: the model and the catalogue, encoded once.

    Built once per process: once for local scoring, once per Spark Python worker when scoring is spread
    over executors (jobs/spark_scoring.py), so the item side is never recomputed per user block.
    """

    model: MultiTaskModel
    version: str
    vocab: Vocabularies
    layout: FeatureLayout
    scoring: ScoringConfig
    device: torch.device
    items: pa.Table  # sorted by item id: ties rank by this order
    item_part: ItemPart
    item_vectors: torch.Tensor | None
    # [items]: `candidate_popularity` x log q, added to the retrieval score when picking candidates
    candidate_bias: torch.Tensor | None
    blend: Blend  # compiled once, not per scored batch

    @classmethod
    def build(
        cls,
        model_dir: Path,
        items: pa.Table,
        text: Callable[[FeatureLayout], ItemText | None],
        scoring: ScoringConfig,
        device: torch.device,
    ) -> Scorer:
        """`text` gives the item text for the model's layout (None when the model reads no text)."""
        model, meta, vocab = load_model(Path(model_dir), device)
        layout = FeatureLayout.from_dict(meta["layout"])
        items = items.sort_by(schema.ITEM_ID)
        _require_unique_ids(items, schema.ITEM_ID, "items")
        with torch.inference_mode(), precision(device):
            tensors = item_tensors(items, vocab, layout, text(layout)).to(device)
            item_part = model.item_part(tensors)
            vectors = None if model.retrieval_task is None else model.item_vectors(item_part)
        # Items the model never saw (index 0) get the log q of one pseudo-count: the least popular.
        bias = (
            scoring.candidate_popularity * model.item_log_q[tensors.item.long()]
            if vectors is not None
            else None
        )
        blend = compile_blend(scoring.blend, model.spec.tasks)
        return cls(
            model, meta["version"], vocab, layout, scoring, device, items, item_part, vectors, bias, blend
        )

    def two_stage(self, n_users: int) -> bool:
        """Decided on the whole night's user count, so every shard of a sharded run decides alike."""
        n_items = self.items.num_rows
        return (
            self.model.retrieval_task is not None
            and n_users * n_items >= self.scoring.two_stage_min_pairs
            and self.scoring.retrieval_candidates < n_items
        )

    def users_per_block(self, n_users: int) -> int:
        """About `block_pairs` pairs per block: items or candidates per user decide how many users that is."""
        per_user = self.scoring.retrieval_candidates if self.two_stage(n_users) else self.items.num_rows
        return max(1, min(self.scoring.user_batch_size, self.scoring.block_pairs // per_user))

    def score(self, users: pa.Table, seen: pa.Table, n_users: int, show_progress: bool = False) -> pa.Table:
        """Top `top_k` unseen items of each user of `users` (one row per user id); `seen` holds (user_id,
        item_id) pairs, and pairs of other users are ignored. `n_users` is the night's total user count.

        Columns: user_id, rank (1..K), item_id, score, p_<task> per task, model_version; rows by user in
        user-id order, then by rank.
        """
        model, tasks, device = self.model, self.model.spec.tasks, self.device
        published = [j for j, t in enumerate(tasks) if t.type != "multiclass"]
        users = users.sort_by(schema.USER_ID)
        _require_unique_ids(users, schema.USER_ID, "users")
        all_users = user_tensors(users, self.vocab, self.layout)
        seen_user, seen_item = _seen_pairs(seen, users, self.items)
        n_items, k, block_size = self.items.num_rows, self.scoring.top_k, self.users_per_block(n_users)
        n_candidates = self.scoring.retrieval_candidates
        two_stage = self.two_stage(n_users)
        # The rows of all blocks go into arrays allocated once (at most top_k rows per user): kept as many
        # small arrays, they would sit between the blocks' large temporaries on the heap, which could then no
        # longer be reused or returned (tier M: 1.3 GB more resident memory per 40,000 users).
        capacity = users.num_rows * k
        result = {
            "user": np.empty(capacity, np.int64),
            "rank": np.empty(capacity, np.int32),
            "item": np.empty(capacity, np.int64),
            "score": np.empty(capacity, np.float64),
            "preds": np.empty((capacity, len(published)), np.float64),
        }
        filled = 0
        item_terms: dict = {}  # each first layer's item term, computed on the first block (PairGrid)
        with torch.inference_mode():
            bar = tqdm(total=users.num_rows, unit="user", desc="scoring", disable=not show_progress)
            for start in range(0, users.num_rows, block_size):
                block = all_users.take(slice(start, start + block_size)).to(device)
                b = len(block)
                lo, hi = np.searchsorted(seen_user, [start, start + b])
                is_seen = torch.zeros(b, n_items, dtype=torch.bool)
                is_seen[torch.from_numpy(seen_user[lo:hi] - start), torch.from_numpy(seen_item[lo:hi])] = True
                is_seen = is_seen.to(device)

                candidates = None  # [b, N] item rows in two-stage scoring; None: every item
                with precision(device):
                    user = model.user_part(block)
                    match = None
                    if self.item_vectors is not None:
                        match = model.retrieval_scores(
                            model.user_vectors(user), self.item_vectors
                        )  # [b, n_items]
                    if two_stage:
                        # The N best unseen items by retrieval score + popularity, in item order (ties then
                        # rank by position): sorted afterwards, so topk need not sort them by score.
                        picked = (
                            (match + self.candidate_bias)
                            .masked_fill_(is_seen, float("-inf"))
                            .topk(n_candidates, dim=1, sorted=False)
                            .indices
                        )
                        candidates = picked.sort(dim=1).values
                        features = model.candidate_features(user, self.item_part, candidates, item_terms)
                        match = match.gather(1, candidates)
                        is_seen = is_seen.gather(1, candidates)
                    else:
                        features = model.grid_features(user, self.item_part, item_terms)
                    out = model.head(features, None if match is None else match.reshape(-1))
                width = n_items if candidates is None else n_candidates
                preds = out.predictions.float().view(b, width, len(tasks))[..., published]
                scores = self.blend({tasks[j].name: preds[..., c] for c, j in enumerate(published)}).float()
                scores = scores.expand(b, width)
                if torch.isnan(scores).any():
                    raise ValueError(f"scoring.blend {self.scoring.blend!r} gives NaN for some predictions")

                # Stable descending sort: equal scores keep the item order. Seen items are skipped by
                # counting only unseen ones, so a -inf score can never be confused with "seen".
                order = torch.sort(scores, dim=1, descending=True, stable=True).indices
                unseen = ~is_seen.gather(1, order)
                rank = unseen.cumsum(dim=1)
                row, pos = (unseen & (rank <= k)).nonzero(as_tuple=True)  # row-major: by user, then rank
                column = order[row, pos]
                item = column if candidates is None else candidates[row, column]
                rows = slice(filled, filled + len(row))
                result["user"][rows] = (row + start).cpu().numpy()
                result["rank"][rows] = rank[row, pos].cpu().numpy()
                result["item"][rows] = item.cpu().numpy()
                result["score"][rows] = scores[row, column].double().cpu().numpy()
                result["preds"][rows] = preds[row, column].double().cpu().numpy()
                filled += len(row)
                bar.update(b)
            bar.close()

        got = {name: values[:filled] for name, values in result.items()}
        return pa.table(
            {
                schema.USER_ID: pc.cast(
                    users.column(schema.USER_ID).take(pa.array(got["user"])), pa.string()
                ),
                "rank": pa.array(got["rank"], pa.int32()),
                schema.ITEM_ID: pc.cast(
                    self.items.column(schema.ITEM_ID).take(pa.array(got["item"])), pa.string()
                ),
                "score": pa.array(got["score"], pa.float64()),
                **{
                    schema.probability_column(tasks[j].name): pa.array(got["preds"][:, c], pa.float64())
                    for c, j in enumerate(published)
                },
                "model_version": pa.repeat(pa.scalar(self.version, pa.string()), filled),
            }
        )


def local_item_text(items: pa.Table, cfg: Config) -> Callable[[FeatureLayout], ItemText | None]:
    """The item text of `items` for a model's layout, embedded with this machine's text cache."""
    return lambda layout: item_text(items, layout.text_encoder, layout.text_dim, text_cache_dir(cfg))


def score_users(model_dir: Path, features_dir: Path, cfg: Config, show_progress: bool = True) -> pd.DataFrame:
    """Top `cfg.scoring.top_k` unseen items for every user of `users/`, in this process.

    Columns: user_id, rank (1..K), item_id, score, p_<task> per task, model_version. A user has fewer
    than K rows only when fewer than K items are left once the seen ones are removed. Equal scores are
    ranked by the item's position in `items/`, so the output is deterministic.
    """
    # Sorted by id: Spark's part files have no fixed row order, and ties are broken by item position.
    items = read_features(features_dir, schema.ITEMS)
    scorer = Scorer.build(
        model_dir, items, local_item_text(items, cfg), cfg.scoring, resolve_device(cfg.model.device)
    )
    users = read_features(features_dir, schema.USERS)
    n_users, n_items = users.num_rows, items.num_rows
    if scorer.two_stage(n_users):
        retrieval = scorer.model.spec.tasks[scorer.model.retrieval_task]
        log.info(
            "two-stage scoring: %d users x %d items; the retrieval task %r picks %d candidates per user",
            n_users,
            n_items,
            retrieval.name,
            cfg.scoring.retrieval_candidates,
        )
    seen = read_features(features_dir, schema.SEEN)
    return scorer.score(users, seen, n_users, show_progress).to_pandas()
