"""The whole night through a real Prefect flow run: generated logs in, published recommendations out."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.generate import generate

RUN_DATE = date(2026, 11, 1)
TOP_K = 10

CONFIG = """
[data]
landing = "{root}/landing"
workdir = "{root}/work"
warehouse = "{root}/warehouse.duckdb"

[spark]
master = "local[2]"
shuffle_partitions = 2

[features]
lookback_days = 14
windows = [1, 7]
history_length = 10
exposure_event_types = ["impression"]
negatives_per_positive = 0
seen_event_types = ["click", "purchase"]

[validation]
event_types = ["impression", "click", "purchase"]
value_ranges = {{ purchase = [0.0, 10000.0] }}
label_rate_bounds = {{ click = [0.005, 0.8] }}
min_examples = 200

[[tasks]]
name = "click"
label = {{ event_types = ["click"] }}

[[tasks]]
name = "purchase"
label = {{ event_types = ["purchase"] }}
parent = "click"

[model]
embedding_dim = 8
num_experts = 2
expert_hidden = [16]
tower_hidden = [8]
epochs = 2
batch_size = 512
validation_days = 2

[scoring]
top_k = {top_k}
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory, spark, prefect_backend):
    root = tmp_path_factory.mktemp("night")
    generate(root / "landing", users=150, items=60, days=14, seed=3, end_date=RUN_DATE)
    config = root / "config.toml"
    config.write_text(CONFIG.format(root=root, top_k=TOP_K))
    return root, config


def latest(warehouse: Path):
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT * FROM latest_recommendations ORDER BY user_id, rank").df()


def runs(warehouse: Path):
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql("SELECT run_date, status, error FROM runs ORDER BY started_at").df()


def test_nightly_publishes_top_k_for_every_user_and_reruns_idempotently(night):
    from flows.nightly import nightly

    root, config = night
    result = nightly(run_date=RUN_DATE, config_path=str(config), show_progress=False)
    assert result["status"] == "published"
    recs = latest(root / "warehouse.duckdb")

    users = set(pq.read_table(root / "work/runs/2026-11-01/features/users").column("user_id").to_pylist())
    assert set(recs["user_id"]) == users
    per_user = recs.groupby("user_id").size()
    assert (per_user == TOP_K).all()
    assert not recs.duplicated(["user_id", "item_id"]).any()
    assert recs["score"].between(0, 1).all()
    assert (recs["p_purchase"] <= recs["p_click"] + 1e-6).all()  # ESMM: p(click and purchase) <= p(click)

    events = ds.dataset(root / "landing/events", format="parquet", partitioning="hive").to_table().to_pandas()
    seen = events[events["event_type"].isin(["click", "purchase"])]
    seen_pairs = set(zip(seen["user_id"], seen["item_id"], strict=True))
    assert not any(pair in seen_pairs for pair in zip(recs["user_id"], recs["item_id"], strict=True))
    assert (root / "work/runs/2026-11-01/data_docs").is_dir()

    again = nightly(run_date=RUN_DATE, config_path=str(config), show_progress=False)
    assert again["model_version"] == result["model_version"]
    rerun = latest(root / "warehouse.duckdb")
    cols = ["user_id", "rank", "item_id", "score", "p_click", "p_purchase"]
    assert len(rerun) == len(recs)
    assert rerun[cols].equals(recs[cols]), "a rerun of the same date must publish the same rows"


def test_invalid_logs_fail_validation_and_keep_the_published_table(night, tmp_path):
    """Tonight's logs are corrupt: the run fails naming the check, yesterday's rows stay published."""
    from flows.nightly import nightly
    from jobs.validation import ValidationFailed

    root, config = night
    before = latest(root / "warehouse.duckdb")
    assert len(before), "needs the published night of the previous test"

    bad_landing = tmp_path / "landing"
    shutil.copytree(root / "landing", bad_landing)
    part = next((bad_landing / "events").glob("dt=2026-10-31/*.parquet"))
    table = pq.read_table(part)
    types = table.column("event_type").to_pylist()
    types[0] = "clik"
    pq.write_table(table.set_column(table.schema.get_field_index("event_type"), "event_type", [types]), part)

    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_set") as failure:
        nightly(
            run_date=date(2026, 11, 2), config_path=str(config), landing=str(bad_landing), show_progress=False
        )
    assert "clik" in str(failure.value)

    after = latest(root / "warehouse.duckdb")
    assert after.equals(before)
    last = runs(root / "warehouse.duckdb").iloc[-1]
    assert last["status"] == "failed" and "expect_column_values_to_be_in_set" in last["error"]
