"""Security: safe loading, SQL built only from checked names, secrets that never show, private files.

The model-directory checks (weights_only loading, the SHA-256 manifest) are tested in test_model.py; the
catalogue in docs/reliability.md lists them with these.
"""

from __future__ import annotations

import ast
import stat
from datetime import date
from pathlib import Path

from test_nightly_flow import CONFIG
from test_warehouse import D1, D2, backend, postgres_url, recs, run  # noqa: F401 (fixtures)
from test_warehouse_postgres import ENCODED, SECRET, assert_masked, role, schema, with_user  # noqa: F401

from jobs.warehouse import open_warehouse
from jobs.warehouse_postgres import PASSWORD_ENV

REPO = Path(__file__).resolve().parents[1]
HOSTILE = [
    "u'; DROP TABLE runs; --",
    'i" OR 1=1 --',
    "$(rm -rf ~) `id` | tee /etc/passwd; \\",
    "placeholders %s %(name)s ? $1 {}",
    "ünïcødé 🙂 " + "x" * 5000,
]


def _torch_load_calls() -> list[tuple[str, int, bool]]:
    """Every torch.load(...) call in the project's code: (file, line, whether weights_only=True is passed)."""
    calls = []
    for path in sorted(REPO.glob("[!.]*/**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((str(path.relative_to(REPO)), node.lineno, safe))
    return calls


def test_every_torch_load_passes_weights_only():
    calls = _torch_load_calls()
    assert any(file == "model/checkpoint.py" for file, _, _ in calls)
    assert [c for c in calls if not c[2]] == []


def test_hostile_ids_are_bound_as_values_and_round_trip(backend):  # noqa: F811
    """Quotes, SQL, shell syntax, placeholders and long unicode in ids are data: stored exactly, run nothing."""
    frame = recs(users=tuple(HOSTILE), k=1)
    frame["item_id"] = list(reversed(HOSTILE))
    with backend.open() as wh:
        assert wh.publish(D1, frame, run("r1", D1)) == len(HOSTILE)
        back = wh.latest()
        assert sorted(zip(back.user_id, back.item_id, strict=True)) == sorted(
            zip(HOSTILE, reversed(HOSTILE), strict=True)
        )
        assert set(wh.latest(user_id=HOSTILE[0]).item_id) == {HOSTILE[-1]}
        assert wh.runs().run_id.tolist() == ["r1"]  # the runs table is still there


def test_a_new_duckdb_warehouse_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "wh.duckdb"
    with open_warehouse(str(path)) as wh:
        wh.publish(D1, recs(), run("r1", D1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _flow_run_texts(flow_run_id) -> list[str]:
    """Every artifact and every log line the Prefect API holds for the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued log lines before reading them back
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [str(a.data) + str(a.description) for a in artifacts] + [log.message for log in logs]


def test_a_failed_run_shows_no_warehouse_password_anywhere(
    spark,
    prefect_backend,
    postgres_url,  # noqa: F811
    schema,  # noqa: F811
    role,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
    capfd,
):
    """The password in the URL and in the environment: the failed run's runs row, artifacts, Prefect logs,
    Python logs and the process output all show the URL masked, never the password."""
    from flows.nightly import nightly

    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    url = with_user(postgres_url, role, password=ENCODED) + f"?schema={schema}"
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.format(root=tmp_path, top_k=5).replace(f'"{tmp_path}/warehouse.duckdb"', f'"{url}"')
    )
    state = nightly(
        run_date=date(2026, 11, 3),
        config_path=str(config),
        landing=str(tmp_path / "no-such-landing"),
        show_progress=False,
        return_state=True,
    )
    assert state.is_failed()

    with open_warehouse(url) as wh:
        runs = wh.runs()
    assert runs.status.tolist() == ["failed"] and "no-such-landing" in runs.error[0]
    texts = _flow_run_texts(state.state_details.flow_run_id)
    assert any("nightly 2026-11-03 failed" in t for t in texts), "the failure artifact is there to check"
    assert any("postgresql://" in t and "***" in t for t in texts), "the warehouse URL is shown, masked"
    out, err = capfd.readouterr()
    assert_masked(runs.to_string(), caplog.text, out, err, *texts)
