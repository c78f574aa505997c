"""Scoring spread over Spark executors: the night's users are sharded across Spark tasks.

The driver checks the model directory and embeds the item text, then broadcasts the model files, the
catalogue and its text once; Spark ships a broadcast to each executor once. Each Python worker builds a
`model.score.Scorer` from it the first time it meets it and keeps it for its next shards (Spark reuses Python
workers), so the item side is encoded once per worker, not once per shard. Users travel with the list of
items they have seen, so a shard needs nothing but its own rows. `mapInArrow` hands the shards over as Arrow
batches: no per-row Python. The scored rows are written as Parquet under the run directory and read back
in the order local scoring gives (user id, then rank), so either engine publishes the same table.

The executors must have this package and torch installed (on a cluster: the same image or environment as
the driver); with a local master they are the driver's own Python.
"""

from __future__ import annotations

import io
import logging
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from model.data import FeatureLayout, ItemText, read_features
from model.spec import TaskSpec
from nightrec import schema
from nightrec.config import Config

log = logging.getLogger(__name__)

SEEN_ITEMS = "_seen_item_ids"  # the user's seen items, as one list per user row, while sharded


@dataclass(frozen=True)
class ScoringPayload:
    """What every executor needs, sent once per executor as one broadcast."""

    model_files: dict[str, bytes]  # the model directory, manifest included: checked again where it lands
    items: bytes  # items/ as an Arrow IPC stream
    text: ItemText | None
    scoring: dict[str, Any]  # ScoringConfig as a dict
    device: str  # model.device: an executor on a GPU worker scores on CUDA
    n_users: int  # the night's total: two-stage scoring is decided on it, alike in every shard


_SCORERS: dict[
    str, tuple[Any, int]
] = {}  # run key -> (Scorer, the night's users), per Python worker: one night's model at a time


def _scorer(broadcast, key: str) -> tuple[Any, int]:
    """The worker's Scorer for this scoring run (`key`), built from the broadcast on first use: later shards
    on the same worker do not even unpickle the broadcast again."""
    from model.device import resolve_device
    from model.score import Scorer
    from nightrec.config import ScoringConfig

    if key not in _SCORERS:
        payload: ScoringPayload = broadcast.value
        items = pa.ipc.open_stream(payload.items).read_all()
        with tempfile.TemporaryDirectory(prefix="nightrec-model-") as tmp:
            for name, data in payload.model_files.items():
                (Path(tmp) / name).write_bytes(data)
            scorer = Scorer.build(
                Path(tmp),
                items,
                lambda _layout: payload.text,
                ScoringConfig(**payload.scoring),
                resolve_device(payload.device),
            )
        _SCORERS.clear()
        _SCORERS[key] = scorer, payload.n_users
    return _SCORERS[key]


def seen_pairs(table: pa.Table) -> pa.Table:
    """(user_id, item_id) rows from a shard's per-user `SEEN_ITEMS` lists (a null list: nothing seen)."""
    lists = table.column(SEEN_ITEMS).combine_chunks()
    users = table.column(schema.USER_ID).combine_chunks()
    return pa.table(
        {
            schema.USER_ID: users.take(pc.list_parent_indices(lists)),
            schema.ITEM_ID: pc.list_flatten(lists),
        }
    )


def score_shard(broadcast, key: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One Spark task: score the users of its Arrow batches with the worker's Scorer."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:  # Spark's spark.task.cpus: no more threads than the task was given
        torch.set_num_threads(max(1, int(context.cpus())))
    for batch in batches:  # an empty shard never loads the model
        scorer, n_users = _scorer(broadcast, key)
        table = pa.Table.from_batches([batch])
        scored = scorer.score(table.drop_columns([SEEN_ITEMS]), seen_pairs(table), n_users)
        yield from scored.to_batches()


def output_schema(tasks: tuple[TaskSpec, ...] | list[TaskSpec]) -> str:
    """The scored rows' Spark schema: what `Scorer.score` returns."""
    probabilities = [f"{schema.probability_column(t.name)} double" for t in tasks if t.type != "multiclass"]
    return ", ".join(
        [
            f"{schema.USER_ID} string",
            "rank int",
            f"{schema.ITEM_ID} string",
            "score double",
            *probabilities,
            "model_version string",
        ]
    )


def score_on_spark(spark, model_dir: Path, features_dir: Path, cfg: Config, out_dir: Path) -> pd.DataFrame:
    """Top `cfg.scoring.top_k` unseen items for every user of `users/`, scored by the Spark executors.

    The rows and order of `model.score.score_users`, scores equal up to float rounding (a shard's blocks differ
    from one process's, so an exact tie could in principle break the other way); `out_dir` receives them as
    Parquet (replaced on rerun).
    """
    from pyspark.sql import functions as F

    from model.checkpoint import CHECKED_FILES, MANIFEST_FILE, load_model
    from model.score import local_item_text

    model_dir = Path(model_dir)
    model, meta, _ = load_model(model_dir)  # checks the manifest before anything is sent
    items = read_features(features_dir, schema.ITEMS)
    text = local_item_text(items, cfg)(FeatureLayout.from_dict(meta["layout"]))
    items_ipc = io.BytesIO()
    with pa.ipc.new_stream(items_ipc, items.schema) as writer:
        writer.write_table(items)

    users = spark.read.parquet(str(Path(features_dir) / schema.USERS))
    n_users = users.count()
    payload = ScoringPayload(
        model_files={name: (model_dir / name).read_bytes() for name in (*CHECKED_FILES, MANIFEST_FILE)},
        items=items_ipc.getvalue(),
        text=text,
        scoring=cfg.scoring.model_dump(),
        device=cfg.model.device,
        n_users=n_users,
    )
    shards = cfg.scoring.spark_partitions or spark.sparkContext.defaultParallelism
    log.info("scoring %d users on Spark in %d shards (model %s)", n_users, shards, meta["version"])
    broadcast = spark.sparkContext.broadcast(payload)
    try:
        seen = (
            spark.read.parquet(str(Path(features_dir) / schema.SEEN))
            .groupBy(schema.USER_ID)
            .agg(F.collect_list(schema.ITEM_ID).alias(SEEN_ITEMS))
        )
        sharded = users.join(seen, schema.USER_ID, "left").repartition(shards, schema.USER_ID)
        scored = sharded.mapInArrow(
            partial(score_shard, broadcast, f"{meta['version']}-{uuid.uuid4().hex}"),
            output_schema(model.spec.tasks),
        )
        scored.write.mode("overwrite").parquet(str(out_dir))
        written = spark.read.parquet(str(out_dir)).count()
    finally:
        broadcast.destroy()
    table = read_features(Path(out_dir).parent, Path(out_dir).name)
    if table.num_rows != written:
        raise RuntimeError(
            f"the executors wrote {written} scored rows to {out_dir}, the driver reads {table.num_rows}: "
            "data.workdir must be storage the driver and every executor share (docs/scaling.md)"
        )
    return table.sort_by([(schema.USER_ID, "ascending"), ("rank", "ascending")]).to_pandas()
