"""The whole night through a real Prefect flow run: generated logs in, published recommendations out."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Callable
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
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


def edit_partition(landing: Path, copy: Path, day: str, edit: Callable[[pa.Table], pa.Table]) -> Path:
    """A copy of the landing zone whose events/dt=`day` partition files (`*`: all) are replaced by `edit`."""
    shutil.copytree(landing, copy)
    for part in (copy / "events").glob(f"dt={day}/*.parquet"):
        pq.write_table(edit(pq.read_table(part)), part)
    return copy


def set_values(table: pa.Table, column: str, values: dict[int, object]) -> pa.Table:
    """`table` with `column` set to `values[i]` on row i (the other rows as they were)."""
    cells = table.column(column).to_pylist()
    for i, value in values.items():
        cells[i] = value
    field = table.schema.field(column)
    return table.set_column(table.schema.get_field_index(column), field, pa.array(cells, field.type))


def corrupt_landing(landing: Path, copy: Path, rows: int | None = None) -> Path:
    """A copy of the landing zone whose 2026-10-31 partition has the unknown event type "clik" on its first
    `rows` rows; on all of them by default, far more than any share of bad rows a night quarantines."""

    def misspell(table: pa.Table) -> pa.Table:
        return set_values(table, "event_type", dict.fromkeys(range(rows or table.num_rows), "clik"))

    return edit_partition(landing, copy, "2026-10-31", misspell)


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

    # Scoring spread over Spark executors publishes the same table (same model, same rows).
    sharded_config = root / "config-spark-scoring.toml"
    sharded_config.write_text(
        config.read_text().replace("[scoring]\n", '[scoring]\nengine = "spark"\nspark_partitions = 3\n')
    )
    sharded = nightly(run_date=RUN_DATE, config_path=str(sharded_config), show_progress=False)
    assert sharded["status"] == "published"
    assert sharded["model_version"] == result["model_version"]
    on_spark = latest(root / "warehouse.duckdb")
    keys = ["user_id", "rank", "item_id", "model_version"]
    assert on_spark[keys].equals(recs[keys])
    assert np.allclose(on_spark[cols[3:]], recs[cols[3:]], rtol=1e-5, atol=1e-6)
    assert (root / "work/runs/2026-11-01/scored").is_dir()


def test_invalid_logs_fail_validation_and_keep_the_published_table(night, tmp_path):
    """Tonight's logs are corrupt: the run fails naming the check, yesterday's rows stay published."""
    from flows.nightly import nightly
    from jobs.validation import ValidationFailed

    root, config = night
    before = latest(root / "warehouse.duckdb")
    assert len(before), "needs the published night of the previous test"

    bad_landing = corrupt_landing(root / "landing", tmp_path / "landing")

    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_set") as failure:
        nightly(
            run_date=date(2026, 11, 2), config_path=str(config), landing=str(bad_landing), show_progress=False
        )
    assert "clik" in str(failure.value)
    assert "fail row-level checks, above reliability.max_rejected_share = 0.100%" in str(failure.value)
    assert not (root / "work/runs/2026-11-02/features/_NIGHTREC_COMPLETE").exists()

    after = latest(root / "warehouse.duckdb")
    assert after.equals(before)
    last = runs(root / "warehouse.duckdb").iloc[-1]
    assert last["status"] == "failed" and "expect_column_values_to_be_in_set" in last["error"]


def test_a_bad_row_is_quarantined_and_the_night_publishes_the_rest(night, tmp_path):
    """One unknown event type in ~5000 events: set aside with its reason, counted in runs, the night goes on."""
    from flows.nightly import nightly

    root, config = night
    bad_landing = corrupt_landing(root / "landing", tmp_path / "landing", rows=1)
    result = nightly(
        run_date=date(2026, 11, 2), config_path=str(config), landing=str(bad_landing), show_progress=False
    )

    assert result["status"] == "published" and result["row_counts"]["rejected"] == 1
    [rejected] = pq.read_table(root / "work/runs/2026-11-02/rejected").to_pylist()
    assert rejected["event_type"] == "clik"
    assert rejected["reason"] == "expect_column_values_to_be_in_set(event_type)"
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        assert con.sql(
            "SELECT rejected_rows FROM runs WHERE run_id = ?", params=[result["run_id"]]
        ).fetchall() == [(1,)]
    assert str(latest(root / "warehouse.duckdb")["run_date"].iloc[0]).startswith("2026-11-02")


class Webhook:
    """A tiny HTTP endpoint on loopback that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/nightrec?token=s3cr3t-t0ken"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def failure_artifacts(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["nightly-failure"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )


def test_a_failed_run_is_failed_everywhere_and_notifies_the_webhook(night, tmp_path, caplog):
    """No landing zone: the flow run fails at validate_events, and the runs row, an artifact and the
    webhook all say so; the webhook's token shows up nowhere."""
    from flows.nightly import nightly

    root, config = night
    with Webhook() as hook:
        broken = tmp_path / "config.toml"
        broken.write_text(config.read_text() + f'\n[notify]\nwebhook_url = "{hook.url}"\n')
        state = nightly(
            run_date=date(2026, 11, 3),
            config_path=str(broken),
            landing=str(tmp_path / "no-such-landing"),
            show_progress=False,
            return_state=True,
        )
    assert state.is_failed()

    [(path, message)] = hook.received
    assert path == "/hooks/nightrec?token=s3cr3t-t0ken"
    assert message["step"] == "validate_events" and message["run_date"] == "2026-11-03"
    assert "no-such-landing" in message["error"]
    assert message["flow_run_id"] == str(state.state_details.flow_run_id)

    last = runs(root / "warehouse.duckdb").iloc[-1]
    assert last["status"] == "failed" and str(last["run_date"]).startswith("2026-11-03")
    assert last["error"].startswith("[validate_events] ")

    [artifact] = failure_artifacts(state.state_details.flow_run_id)
    assert "`validate_events`" in artifact.data and "no-such-landing" in artifact.data
    assert not any("s3cr3t" in text for text in (artifact.data, last["error"], caplog.text))


def test_a_failing_webhook_does_not_mask_the_error(night, tmp_path, monkeypatch):
    from flows.nightly import nightly

    _, config = night
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("NIGHTREC_WEBHOOK_URL", f"http://127.0.0.1:{closed}/hook")
    with pytest.raises(Exception, match="no-such-landing") as failure:
        nightly(
            run_date=date(2026, 11, 3),
            config_path=str(config),
            landing=str(tmp_path / "no-such-landing"),
            show_progress=False,
        )
    assert "URLError" not in type(failure.value).__name__


def test_evaluate_judges_a_published_night_beside_the_peers(night, capsys):
    """`nightrec evaluate` on an earlier published night, judged on the days the landing zone has after it."""
    from flows.nightly import nightly
    from nightrec.cli import main

    root, config = night
    earlier = date(2026, 10, 29)
    nightly(run_date=earlier, config_path=str(config), show_progress=False)
    assert (root / "work/runs/2026-10-29/report.html").is_file(), "every run writes its report"

    capsys.readouterr()
    assert (
        main(["evaluate", "--date", earlier.isoformat(), "--config", str(config), "--horizon", "3", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["judged_on"] == ["click"]
    assert set(result) >= {"model", "pop", "itemknn", "ease"}
    judged = result["model"]["users"]
    assert judged > 0 and all(result[peer]["users"] == judged for peer in ("pop", "itemknn", "ease"))
    for peer in ("model", "pop", "itemknn", "ease"):
        assert 0.0 <= result[peer]["ndcg@10"] <= 1.0 and 0.0 <= result[peer]["hit@10"] <= 1.0
