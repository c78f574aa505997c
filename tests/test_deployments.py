"""Deployments: deploy/prefect.yaml as written, on a real Prefect server with a real process worker.

The offline tests read the deployment files and the run-date rule. The server test starts
`prefect server start` on loopback, creates the work pools, runs `prefect deploy --all` from the
repository root, starts a `cpu` process worker and triggers the nightly deployment twice, once through
`run_deployment` (training on the `train` flow through a second deployment) and once through the
`prefect deployment run` command, then reads the published rows from the warehouse.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml

from flows.run_date import day_before, resolve_run_date

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deploy" / "prefect.yaml"
GPU_TEMPLATE = REPO / "deploy" / "gpu-pool-template.json"
BIN = Path(sys.executable).parent


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}


# -- offline -------------------------------------------------------------------------------------------


def test_prefect_yaml_schedule_pools_and_limits():
    found = deployments()
    assert set(found) == {"nightly", "backfill", "train"}

    nightly = found["nightly"]
    [schedule] = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *"
    assert schedule["slug"], "a slug makes a redeploy update the schedule instead of adding one"
    assert "active" not in schedule, "an explicit active: true would re-activate a paused schedule"
    assert schedule["timezone"] == nightly["parameters"]["schedule_timezone"] == "UTC"
    assert "run_date" not in nightly["parameters"], "a scheduled run must derive its date"
    assert nightly["concurrency_limit"] == 1
    assert nightly["work_pool"]["name"] == "cpu"
    assert found["backfill"]["work_pool"]["name"] == "cpu"
    assert found["train"]["work_pool"]["name"] == "gpu"


def test_deployment_entrypoints_and_parameters_match_the_flows():
    from prefect.flows import load_flow_from_entrypoint

    for name, spec in deployments().items():
        flow = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]))
        assert flow.name == name
        accepted = set(flow.parameters.properties)
        assert set(spec["parameters"]) <= accepted, f"{name}: unknown parameters"


def test_gpu_pool_template_requests_a_gpu_and_defines_the_train_job_variables():
    template = json.loads(GPU_TEMPLATE.read_text())
    variables = template["variables"]["properties"]
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert variables["gpu_count"]["default"] == 1
    train_vars = deployments()["train"]["work_pool"]["job_variables"]
    assert set(train_vars) <= set(variables), "job variables the gpu pool does not define are ignored"


@pytest.mark.parametrize(
    ("scheduled", "timezone", "expected"),
    [
        (datetime(2026, 11, 2, 2, 0, tzinfo=UTC), "UTC", date(2026, 11, 1)),  # the example
        (datetime(2026, 11, 2, 0, 0, tzinfo=UTC), "UTC", date(2026, 11, 1)),  # midnight is the new day
        (datetime(2026, 11, 1, 23, 59, tzinfo=UTC), "UTC", date(2026, 10, 31)),
        # 02:00 on Nov 2 in Auckland is 13:00 on Nov 1 in UTC: the schedule's calendar decides.
        (datetime(2026, 11, 1, 13, 0, tzinfo=UTC), "Pacific/Auckland", date(2026, 11, 1)),
        # 02:00 on Nov 2 in Los Angeles is 10:00 UTC on Nov 2.
        (datetime(2026, 11, 2, 10, 0, tzinfo=UTC), "America/Los_Angeles", date(2026, 11, 1)),
    ],
)
def test_run_date_is_the_day_before_the_scheduled_start_in_the_schedule_timezone(
    scheduled, timezone, expected
):
    assert day_before(scheduled, timezone) == expected


def test_run_date_rules_for_explicit_dates_and_naive_times():
    assert resolve_run_date(date(2026, 3, 4), "Pacific/Auckland") == date(2026, 3, 4)
    with pytest.raises(ValueError, match="timezone-aware"):
        day_before(datetime(2026, 11, 2, 2, 0), "UTC")


def test_a_run_without_a_date_publishes_yesterday(prefect_backend):
    """Outside a schedule, 'scheduled start' is the run's creation: the run publishes yesterday (UTC)."""
    from prefect import flow

    @flow
    def which_date() -> date:
        return resolve_run_date(None, "UTC")

    before = datetime.now(UTC)
    assert which_date() in {day_before(before), day_before(datetime.now(UTC))}


def serve_args(**overrides) -> argparse.Namespace:
    values = dict(
        config=str(REPO / "configs" / "demo.toml"),
        cron="30 1 * * *",
        timezone="Europe/Berlin",
        name="nightly-served",
        landing=None,
        workdir="/srv/nightrec/work",
        warehouse=None,
    )
    return argparse.Namespace(**{**values, **overrides})


def test_serve_builds_one_cron_schedule_in_its_timezone():
    from nightrec.cli import serve_deployment

    deployment = serve_deployment(serve_args())
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "30 1 * * *"
    assert schedule.schedule.timezone == "Europe/Berlin"
    assert schedule.slug == "nightly-served-cron"
    assert deployment.parameters["schedule_timezone"] == "Europe/Berlin"
    assert deployment.parameters["workdir"] == "/srv/nightrec/work"
    assert Path(deployment.parameters["config_path"]).is_absolute()
    assert "landing" not in deployment.parameters
    assert deployment.concurrency_limit == 1


def test_serve_refuses_without_a_prefect_server(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nightrec.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = main(["serve", "--config", str(REPO / "configs" / "demo.toml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL" in err and "no scheduler" in err


# -- a real server, a real worker ----------------------------------------------------------------------

SCHEDULED_AT = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)  # -> run_date 2026-11-02
CLI_DATE = date(2026, 11, 3)
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, grace_s: float = 15) -> None:
    """End a process started in its own session, and its children, by its process group."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(grace_s)


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Prefect server on a free loopback port, with its own home; killed at the end."""
    root = tmp_path_factory.mktemp("prefect-server")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "NIGHTREC_HOME": str(REPO),
        "TQDM_DISABLE": "1",
    }
    log = root / "server.log"
    port = url.split(":")[-1].split("/")[0]
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"the server exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"the server did not answer in time:\n{tail(log)}"
            time.sleep(0.5)
        yield url, env, root
    finally:
        stop(process)


@pytest.fixture(scope="module")
def deployed(server) -> tuple[str, dict[str, str]]:
    """The work pools and `prefect deploy --all` from the repository root, as docs/operations.md says."""
    url, env, _ = server
    run_cli(env, "work-pool", "create", "cpu", "--type", "process")
    run_cli(
        env, "work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", str(GPU_TEMPLATE)
    )
    run_cli(env, "deploy", "--prefect-file", str(PREFECT_FILE), "--all")
    return url, env


@pytest.fixture
def worker(deployed, tmp_path) -> Iterator[Path]:
    """A process worker for `cpu`, running flows from the repository root; its log file."""
    _, env = deployed
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "cpu"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        stop(process)


def published(warehouse: Path) -> dict[date, int]:
    """Rows per published date; every date must have K rows for each of its users."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.sql(
            "SELECT run_date, count(*), count(DISTINCT user_id) FROM recommendations GROUP BY run_date"
        ).fetchall()
    assert all(n == 5 * users > 0 for _, n, users in rows), rows
    return {run_date: n for run_date, n, _ in rows}


@pytest.mark.slow
def test_deployed_nightly_runs_from_run_deployment_and_from_the_cli(deployed, worker, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from test_nightly_flow import CONFIG

    from jobs.generate import generate

    url, env = deployed
    generate(tmp_path / "landing", users=150, items=60, days=14, seed=3, end_date=date(2026, 11, 4))
    base = CONFIG.format(root=tmp_path, top_k=5).replace("epochs = 2", "epochs = 1")
    local = tmp_path / "train-here.toml"
    local.write_text(base)
    remote = tmp_path / "train-remotely.toml"
    remote.write_text(base + '\n[orchestration]\ntrain_deployment = "train/train-cpu"\n')
    # The train flow on the cpu pool: the test's stand-in for the gpu pool (same flow, same code).
    run_cli(env, "deploy", "flows/train.py:train", "--name", "train-cpu", "--pool", "cpu")
    warehouse = tmp_path / "warehouse.duckdb"

    with temporary_settings({PREFECT_API_URL: url}):
        # A run "scheduled" for Nov 3 02:00 without a date publishes Nov 2; it trains through the
        # train deployment, on the worker, and reads the model back from the shared run directory.
        run = run_deployment(
            "nightly/nightly",
            parameters={"config_path": str(remote)},
            scheduled_time=SCHEDULED_AT,
            timeout=TIMEOUT_S,
            poll_interval=2,
        )
        assert run.state.is_completed(), f"{run.state}\n{tail(worker)}"
        assert set(published(warehouse)) == {date(2026, 11, 2)}
        result = json.loads((tmp_path / "work/runs/2026-11-02/train_result.json").read_text())
        with get_client(sync_client=True) as client:
            train_run = client.read_flow_run(result["flow_run_id"])
            assert train_run.deployment_id == client.read_deployment_by_name("train/train-cpu").id
            assert train_run.state.is_completed()

    done = run_cli(
        env,
        "deployment",
        "run",
        "nightly/nightly",
        "--param",
        f"config_path={local}",
        "--param",
        f"run_date={CLI_DATE.isoformat()}",
        "--watch",
        "--watch-timeout",
        str(TIMEOUT_S),
        timeout=TIMEOUT_S + 60,
    )
    assert "Completed" in done.stdout, done.stdout + tail(worker)
    assert set(published(warehouse)) == {date(2026, 11, 2), CLI_DATE}


def test_redeploy_keeps_one_schedule_and_a_pause(deployed):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, env = deployed
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("nightly/nightly")
        [schedule] = deployment.schedules
        assert schedule.active and schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "UTC"
        assert deployment.global_concurrency_limit.limit == 1
        client.update_deployment_schedule(deployment.id, schedule.id, active=False)

        run_cli(env, "deploy", "--prefect-file", str(PREFECT_FILE), "--name", "nightly")

        [again] = client.read_deployment_by_name("nightly/nightly").schedules
        assert again.id == schedule.id
        assert not again.active, "a redeploy must not re-activate a paused schedule"


def test_nightrec_serve_registers_its_schedule_and_leaves_it_active_on_shutdown(server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, env, _ = server
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(BIN / "nightrec"),
                "serve",
                "--config",
                str(REPO / "configs/demo.toml"),
                "--cron",
                "15 3 * * *",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 90
            while True:
                found = client.read_deployments()
                served = [d for d in found if d.name == "nightly-served"]
                if served and served[0].schedules:
                    break
                assert process.poll() is None, f"nightrec serve exited:\n{tail(log)}"
                assert time.monotonic() < deadline, f"no served deployment:\n{tail(log)}"
                time.sleep(0.5)
            stop(process)
            [schedule] = client.read_deployment(served[0].id).schedules
            assert schedule.schedule.cron == "15 3 * * *" and schedule.schedule.timezone == "UTC"
            assert schedule.active, "stopping the serving process must not pause the schedule"
    finally:
        stop(process)
