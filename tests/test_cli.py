"""The command line a person (or a script) meets: help, one-line errors, exit codes, --json, the config reference.

Fast on purpose: no Spark, no Prefect run. A real DuckDB warehouse written by jobs.warehouse stands in for a
published night; the runs that need the whole flow are in test_nightly_flow.py and test_backfill.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from pydantic import BaseModel

from jobs.warehouse import RunRecord, Warehouse
from nightrec import config as config_module
from nightrec.cli import CliError, _EngineFailures, build_parser, failed_step, load, main, one_line
from nightrec.config_docs import render

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "configuration.md"
D1, D2 = date(2026, 11, 1), date(2026, 11, 2)
STARTED = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)

CONFIG = """
[data]
landing = "{root}/landing"
workdir = "{root}/work"
warehouse = "{root}/warehouse.duckdb"

[features]
exposure_event_types = ["impression"]
seen_event_types = ["click"]

[validation]
event_types = ["impression", "click", "purchase"]

[[tasks]]
name = "click"
label = {{ event_types = ["click"] }}

[[tasks]]
name = "purchase"
label = {{ event_types = ["purchase"] }}
parent = "{parent}"
"""


def write_config(root: Path, parent: str = "click", extra: str = "") -> Path:
    path = root / "config.toml"
    path.write_text(CONFIG.format(root=root, parent=parent) + extra)
    return path


def one_error_line(capsys) -> str:
    """stderr of the last command, asserted to be exactly one line, with nothing on stdout."""
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- help and parsing ---------------------------------------------------------------------------------------


def commands() -> dict[str, str]:
    """Every command and its one-line description, as declared to argparse."""
    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_help_lists_every_command_with_its_description_then_exit_codes_and_docs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert {"run", "backfill", "generate", "import", "recs", "runs", "serve", "report", "evaluate",
            "config-docs"} <= set(commands())  # fmt: skip
    for name, help_text in commands().items():
        assert re.search(rf"^ +{re.escape(name)} +{re.escape(help_text)}$", out, re.M), name
    epilog = out[out.index("exit codes:") :]
    for code, meaning in ((0, "success"), (1, "failed"), (2, "bad usage"), (3, "failed validation")):
        assert re.search(rf"^  {code}  .*{meaning}", epilog, re.M), code
    assert "docs/getting-started.md" in epilog and "docs/configuration.md" in epilog
    assert max(len(line) for line in out.splitlines()) <= 80, "fits a terminal"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    assert f"usage: nightrec {name}" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--debug", "--quiet"])
def test_debug_and_quiet_go_before_or_after_the_command(flag):
    parse = build_parser().parse_args
    attr = flag.removeprefix("--")
    assert getattr(parse([flag, "runs"]), attr) is True
    assert getattr(parse(["runs", flag]), attr) is True
    assert getattr(parse(["runs"]), attr) is False


def test_a_bad_date_is_one_line_and_exit_2(capsys):
    assert main(["run", "--date", "2026-13-01", "--config", "configs/demo.toml"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("nightrec run: argument --date") and "'2026-13-01'" in line
    assert "--help" in line, "says where to look"


def test_an_unknown_option_is_one_line_and_exit_2(capsys):
    assert main(["runs", "--colour"]) == 2
    assert "--colour" in one_error_line(capsys)


# -- config errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["backfill", "--start", "2026-11-01", "--end", "2026-11-02"],
        ["serve"],
        ["report", "--date", "2026-11-01"],
        ["evaluate", "--date", "2026-11-01"],
        ["runs"],
        ["recs", "u1"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_missing_config_is_one_line_with_a_hint_and_exit_2(argv, tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main([*argv, "--config", str(missing)]) == 2
    assert one_error_line(capsys) == f"nightrec: no config at {missing} (the configs/ folder has examples)"


@pytest.mark.parametrize(
    "parent, extra, expected",
    [
        ("clik", "", "task 'purchase': parent 'clik' is not a task"),
        ("click", 'parnet = "click"\n', "tasks.1.parnet: Extra inputs are not permitted"),
        ("click", "\n[model]\ndropout = 1.5\n", "model.dropout: Input should be less than 1"),
        ("click", "[spark\n", "is not valid TOML"),
    ],
    ids=["unknown parent", "misspelt key", "out of bounds", "not toml"],
)
def test_an_invalid_config_names_the_key_in_one_line_and_exit_2(parent, extra, expected, tmp_path, capsys):
    path = write_config(tmp_path, parent, extra)
    assert main(["run", "--config", str(path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"nightrec: config {path}") and expected in line, line


def test_a_config_extends_its_base_with_tables_merged_key_by_key():
    base = config_module.load_config("configs/movielens.toml")
    derived = config_module.load_config("configs/movielens-1m.toml")
    changed = {"user_features_as_of", "value_residuals"}
    assert base.features.model_dump(include=changed) == {
        "user_features_as_of": "moment",
        "value_residuals": True,
    }
    assert derived.features.model_dump(include=changed) == {
        "user_features_as_of": "day",
        "value_residuals": False,
    }
    assert derived.features.model_dump(exclude=changed) == base.features.model_dump(exclude=changed)
    assert derived.data.workdir != base.data.workdir  # its own [data] table, key by key
    assert derived.model_dump(exclude={"features", "data"}) == base.model_dump(exclude={"features", "data"})


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.toml": 'extends = "a.toml"'}, "`extends` loops back to"),
        ({"a.toml": 'extends = "b.toml"', "b.toml": 'extends = "a.toml"'}, "`extends` loops back to"),
        ({"a.toml": 'extends = "missing.toml"'}, "missing.toml, which is not a file"),
        ({"a.toml": "extends = 1"}, "must be a file name, not 1"),
        ({"a.toml": 'extends = "b.toml"', "b.toml": "[spark\n"}, "b.toml (from `extends`) is not valid TOML"),
    ],
    ids=["itself", "two-file loop", "missing", "not a name", "base not toml"],
)
def test_an_extends_that_loops_or_is_missing_is_one_line_and_exit_2(files, expected, tmp_path, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    path = tmp_path / "a.toml"
    assert main(["run", "--config", str(path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"nightrec: config {path}: ") and expected in line, line


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(CliError, match="no config at"):
        main(["--debug", "run", "--config", str(tmp_path / "nope.toml")])


# -- output for scripts --------------------------------------------------------------------------------------


def test_generate_json_prints_one_json_document_only(tmp_path, capsys):
    argv = ["generate", "--out", str(tmp_path / "landing"), "--users", "40", "--items", "15", "--days", "3"]
    assert main([*argv, "--json"]) == 0
    out, _ = capsys.readouterr()
    summary = json.loads(out)
    assert summary["users"] == 40 and summary["items"] == 15
    assert set(summary["events"]) == {"impression", "click", "purchase"}

    assert main(argv) == 0
    human = capsys.readouterr().out.strip()
    assert len(human.splitlines()) == 1 and "40 users" in human and str(tmp_path / "landing") in human


def recs_frame(users: list[str], k: int, model: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"user_id": u, "rank": r, "item_id": f"i{r}", "score": 1.0 / r, "p_click": 0.5 / r,
             "p_purchase": 0.1 / r, "model_version": model, "generated_at": STARTED}
            for u in users
            for r in range(1, k + 1)
        ]
    )  # fmt: skip


@pytest.fixture
def warehouse(tmp_path) -> Path:
    """Two published nights and a failed rerun of the second, in a real DuckDB warehouse."""
    config = write_config(tmp_path)
    with Warehouse(tmp_path / "warehouse.duckdb") as wh:
        wh.ensure_schema(["click", "purchase"])
        for i, (day, model) in enumerate(((D1, "m1"), (D2, "m2"))):
            run = RunRecord(f"r{i}", day, "running", model, STARTED + timedelta(hours=i))
            wh.publish(day, recs_frame(["u1", "u2"], 3, model), run)
        error = "[validate_events] ValidationFailed: events suite failed 1 of 12 expectations"
        failed = RunRecord("r2", D2, "failed", None, STARTED + timedelta(hours=5), error=error)
        wh.record_run(failed)
    return config


def test_runs_json_is_the_runs_table_newest_first(warehouse, capsys):
    assert main(["runs", "--config", str(warehouse), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["run_date"], r["status"]) for r in runs] == [
        ("r2", "2026-11-02", "failed"),
        ("r1", "2026-11-02", "published"),
        ("r0", "2026-11-01", "published"),
    ]
    assert runs[0]["error"].startswith("[validate_events]") and runs[0]["model_version"] is None
    assert datetime.fromisoformat(runs[1]["started_at"]) == STARTED + timedelta(hours=1)
    assert isinstance(runs[1]["metrics"], dict), "JSON columns come back as objects, not text"


def test_recs_json_is_the_latest_published_night(warehouse, capsys):
    assert main(["recs", "u1", "--config", str(warehouse), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["rank"], r["item_id"]) for r in rows] == [(1, "i1"), (2, "i2"), (3, "i3")]
    assert {r["model_version"] for r in rows} == {"m2"} and {r["run_date"] for r in rows} == {"2026-11-02"}
    assert rows[0]["p_click"] == 0.5

    assert main(["recs", "u1", "--config", str(warehouse)]) == 0
    assert "i3" in capsys.readouterr().out, "a table by default"
    assert main(["recs", "nobody", "--config", str(warehouse), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_reading_a_warehouse_that_is_not_there_says_so(tmp_path, capsys):
    assert main(["runs", "--config", str(write_config(tmp_path))]) == 1
    line = one_error_line(capsys)
    assert "no warehouse at" in line and "nightrec run" in line


def test_a_failed_run_is_reported_with_its_step_from_the_runs_table(warehouse):
    cfg = load(str(warehouse))
    assert failed_step(cfg, D2, STARTED) == "validate_events"
    assert failed_step(cfg, D2, STARTED + timedelta(hours=6)) is None, "an older failure is not this run's"
    assert failed_step(cfg, D1, STARTED) is None, "D1 did not fail"


def test_one_line_keeps_the_first_line_of_a_long_error():
    error = RuntimeError(
        "An error occurred while calling o42.parquet.\n: java.lang.OutOfMemoryError\n\tat ..."
    )
    assert one_line(error) == "RuntimeError: An error occurred while calling o42.parquet. …"
    assert one_line(KeyError()) == "KeyError"


def test_the_console_drops_the_engines_failure_records_only():
    def record(level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, path, 1, "Task run failed", None, None)

    keep = _EngineFailures().filter
    assert not keep(record(logging.ERROR, "/site-packages/prefect/task_engine.py"))
    assert not keep(record(logging.ERROR, "/site-packages/prefect/flow_engine.py"))
    assert keep(record(logging.INFO, "/site-packages/prefect/task_engine.py")), "retries and states stay"
    assert keep(record(logging.ERROR, "/work/flows/nightly.py")), "the flow's own errors stay"


# -- the configuration reference -----------------------------------------------------------------------------


def config_models() -> list[type[BaseModel]]:
    """Every model nightrec/config.py defines, found independently of the generator's own walk."""
    return [
        m
        for _, m in inspect.getmembers(config_module, inspect.isclass)
        if issubclass(m, BaseModel) and m.__module__ == config_module.__name__ and m.model_fields
    ]


def test_the_committed_configuration_reference_is_current():
    assert DOCS.read_text() == render(), "run `nightrec config-docs` and commit docs/configuration.md"


def test_the_reference_documents_every_key_of_every_model():
    text = render()
    headings = re.findall(r"^## `(.+)`$", text, re.M)
    for name in config_module.Config.model_fields:
        assert f"[{name}]" in headings or f"[[{name}]]" in headings, name
    for model in config_models():
        if model is config_module.Config:
            continue
        for name, info in model.model_fields.items():
            row = f"| `{name}` |"
            assert row in text, f"{model.__name__}.{name}"
            if info.description:
                assert info.description.replace("|", "\\|") in text, f"{model.__name__}.{name}"
    assert '| `type` | one of "binary", "regression", "multiclass", "retrieval" | `"binary"` |' in text, (
        "Literal choices"
    )
    assert "| `dropout` | float, ≥ 0.0, < 1.0 | `0.1` |" in text, "bounds"
    assert "| `event_types` | array of strings, at least 1 entry | required |" in text
    assert "## `tasks.label`" in text, "nested models get their own section"


def test_config_docs_check_passes_on_the_committed_file_and_fails_on_a_stale_one(tmp_path, capsys):
    assert main(["config-docs", "--check", "--out", str(DOCS)]) == 0
    assert "up to date" in capsys.readouterr().out

    stale = tmp_path / "configuration.md"
    stale.write_text(DOCS.read_text().replace("Any Spark master URL.", "Any master."))
    assert main(["config-docs", "--check", "--out", str(stale)]) == 1
    assert "stale" in one_error_line(capsys)

    assert main(["config-docs", "--out", str(stale), "--quiet"]) == 0
    assert stale.read_text() == render()
