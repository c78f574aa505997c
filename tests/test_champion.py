"""The champion gate through real nightly flow runs: a worse model never replaces the published one."""

from __future__ import annotations

import json
from datetime import date, timedelta

import duckdb
import pytest
from test_nightly_flow import CONFIG

from flows.nightly import _gate_lines
from jobs.generate import generate
from model.champion import metric_value, primary_metric
from nightrec.config import Config

FIRST = date(2026, 11, 1)
# Judged on the validation loss: initial weights (p about 0.5 everywhere) are far worse than a trained model,
# which at least learns the base rates; an AUC on this tiny synthetic slice would be too noisy to order them.
GATE = '\n[evaluation]\nprimary_metric = "val_loss"\n'
# The untrained candidate starts from scratch: warm-started from a trained champion it would equal it.
UNTRAINED = {"epochs = 2": "epochs = 1\nlearning_rate = 1e-9\nwarm_start = false"}
TRAINED = {"epochs = 2": "epochs = 20\nlearning_rate = 0.02\npatience = 3"}


@pytest.fixture(scope="module")
def landing(tmp_path_factory, spark, prefect_backend):
    root = tmp_path_factory.mktemp("champion")
    generate(root / "landing", users=150, items=60, days=16, seed=3, end_date=FIRST + timedelta(days=2))
    return root


def night(root, run_date: date, edits: dict[str, str]) -> dict:
    from flows.nightly import nightly

    text = CONFIG.format(root=root, top_k=5) + GATE
    for old, new in edits.items():
        text = text.replace(old, new)
    config = root / f"config-{run_date}.toml"
    config.write_text(text)
    return nightly(run_date=run_date, config_path=str(config), show_progress=False)


def published(root, run_date: date) -> tuple[set[str], dict]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        versions = {
            v
            for (v,) in con.execute(
                "SELECT DISTINCT model_version FROM recommendations WHERE run_date = ?", [run_date]
            ).fetchall()
        }
        [(metrics,)] = con.execute(
            "SELECT metrics FROM runs WHERE run_date = ? AND status = 'published' ORDER BY finished_at DESC LIMIT 1",
            [run_date],
        ).fetchall()
    import json

    return versions, json.loads(metrics)


def summary_artifact(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["nightly-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    return artifact.data


def test_first_night_promotes_a_better_model_replaces_a_worse_one_is_kept_out(landing):
    root = landing
    first = night(root, FIRST, UNTRAINED)
    gate = first["metrics"]["champion_gate"]
    assert gate["promoted"] and gate["champion_version"] is None and "first model" in gate["reason"]
    assert published(root, FIRST)[0] == {first["model_version"]}

    second = night(root, FIRST + timedelta(days=1), TRAINED)
    gate = second["metrics"]["champion_gate"]
    assert gate["champion_version"] == first["model_version"]
    assert gate["promoted"], gate["reason"]
    assert gate["candidate_value"] < gate["champion_value"] - 0.002  # the trained model is clearly better
    assert second["model_version"] == gate["candidate_version"]
    meta = json.loads((root / "work" / "models" / second["model_version"] / "meta.json").read_text())
    assert meta["warm_start"]["version"] == first["model_version"]  # trained on from the champion's weights
    assert published(root, FIRST + timedelta(days=1))[0] == {second["model_version"]}

    third_date = FIRST + timedelta(days=2)
    third = night(root, third_date, UNTRAINED)
    gate = third["metrics"]["champion_gate"]
    assert not gate["promoted"]
    assert gate["champion_version"] == second["model_version"]
    assert gate["candidate_value"] > gate["champion_value"] + 0.002
    assert "worse than the champion" in gate["reason"]
    # The champion scored tonight's features: its rows are published under its version, and recorded so.
    versions, metrics = published(root, third_date)
    assert versions == {second["model_version"]} == {third["model_version"]}
    assert metrics["champion_gate"]["candidate_version"] != second["model_version"]
    assert not metrics["champion_gate"]["promoted"]
    # Both figures were computed on the same validation examples.
    assert gate["candidate_metrics"]["n_val"] == gate["champion_metrics"]["n_val"] > 0
    text = summary_artifact(third["run_id"])
    assert "## Champion gate" in text and f"kept the champion `{second['model_version']}`" in text


def test_primary_metric_defaults_to_the_first_binary_tasks_auc(tmp_path):
    import tomllib

    raw = tomllib.loads(CONFIG.format(root=tmp_path, top_k=5))
    assert primary_metric(Config.model_validate(raw)) == "click.auc"
    raw["evaluation"] = {"primary_metric": "val_loss"}
    assert primary_metric(Config.model_validate(raw)) == "val_loss"
    raw["evaluation"] = {"primary_metric": "clik.auc"}
    with pytest.raises(ValueError, match="'clik' is not a task"):
        primary_metric(Config.model_validate(raw))
    metrics = {"val_loss": 0.3, "tasks": {"click": {"auc": None, "rmse": 1.5}}}
    assert metric_value(metrics, "val_loss") == 0.3 and metric_value(metrics, "click.auc") is None


def test_the_summary_names_the_held_out_twin_that_was_judged():
    gate = {
        "promoted": False,
        "reason": "engage.auc 0.8000 is worse than the champion's 0.8100 beyond tolerance 0.002",
        "metric": "engage.auc",
        "candidate_version": "v2",
        "candidate_value": 0.8,
        "candidate_judged": "v2.heldout",
        "champion_version": "v1",
        "champion_value": 0.81,
        "champion_judged": "v1",
        "judged_from": "2024-03-14",
    }
    text = "\n".join(_gate_lines(gate))
    assert "| candidate `v2` (judged as `v2.heldout`) | 0.8000 |" in text
    assert "| champion `v1` | 0.8100 |" in text  # a twinless champion: judged as itself
    assert "from 2024-03-14 on" in text
    assert "judged as" not in "\n".join(_gate_lines({**gate, "candidate_judged": None, "judged_from": None}))
