"""Scoring spread over Spark executors (a real local Spark session, Python workers included) gives the table
local scoring gives: same users, ranks and items, same scores, with and without two stages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_model import N_ITEMS, RUN_DATE, _write, make_features
from test_retrieval import retrieval_config

from jobs.spark_scoring import SEEN_ITEMS, score_on_spark, seen_pairs
from model.data import read_features
from model.score import score_users
from model.train import train_model
from nightrec import schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = [schema.USER_ID, "rank", schema.ITEM_ID, "model_version"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark-scoring")


@pytest.fixture(scope="module")
def trained(workdir: Path):
    """A DIN model with a retrieval task (so two-stage scoring can be asked for) on the synthetic features."""
    features = make_features(workdir / "features")
    examples = read_features(features, schema.EXAMPLES)
    examples = examples.append_column("label_match", examples.column(schema.label_column("click")))
    shutil.rmtree(features / schema.EXAMPLES)
    _write(features / schema.EXAMPLES, examples)
    cfg = retrieval_config(workdir)
    result = train_model(features, cfg, RUN_DATE, workdir / "models", show_progress=False)
    return features, result.model_dir


def _assert_same_table(spark_recs: pd.DataFrame, local_recs: pd.DataFrame) -> None:
    assert len(spark_recs) == len(local_recs) > 0
    assert list(spark_recs.columns) == list(local_recs.columns)
    pd.testing.assert_frame_equal(
        spark_recs[KEYS].reset_index(drop=True), local_recs[KEYS].reset_index(drop=True)
    )
    for column in [c for c in local_recs.columns if c == "score" or c.startswith("p_")]:
        assert np.allclose(spark_recs[column], local_recs[column], rtol=1e-5, atol=1e-6), column


@pytest.mark.parametrize("two_stage", [False, True])
def test_spark_shards_score_the_same_table_as_one_process(
    spark, trained, workdir: Path, two_stage: bool
) -> None:
    features, model_dir = trained
    n_users = read_features(features, schema.USERS).num_rows
    # Two stages start at exactly the night's user count x items: a shard deciding on its own users would
    # score every item and rank differently.
    threshold = n_users * N_ITEMS if two_stage else n_users * N_ITEMS + 1
    cfg = retrieval_config(
        workdir,
        engine="spark",
        spark_partitions=3,
        two_stage_min_pairs=threshold,
        retrieval_candidates=12,
        user_batch_size=16,
    )
    local = score_users(model_dir, features, cfg, show_progress=False)
    full = score_users(
        model_dir,
        features,
        cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"two_stage_min_pairs": 10**9})}),
        show_progress=False,
    )
    assert local.equals(full) != two_stage  # the threshold really switches the local scorer

    out = workdir / f"scored-{two_stage}"
    recs = score_on_spark(spark, model_dir, features, cfg, out)
    _assert_same_table(recs, local)
    assert len(list(out.glob("*.parquet"))) >= 1
    assert recs.groupby(schema.USER_ID).size().max() == cfg.scoring.top_k
    assert recs[schema.USER_ID].nunique() == n_users

    # A rerun replaces the rows rather than adding to them.
    again = score_on_spark(spark, model_dir, features, cfg, out)
    _assert_same_table(again, local)


def test_seen_lists_become_pairs_and_a_user_without_any_has_none() -> None:
    shard = pa.table(
        {
            schema.USER_ID: ["u1", "u2", "u3"],
            SEEN_ITEMS: pa.array([["a", "b"], None, ["c"]], pa.list_(pa.string())),
        }
    )
    pairs = seen_pairs(shard)
    assert pairs.to_pydict() == {schema.USER_ID: ["u1", "u1", "u3"], schema.ITEM_ID: ["a", "b", "c"]}
