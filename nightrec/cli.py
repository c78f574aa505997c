"""The `nightrec` command line: make data, run a night or a range of nights, read what was published.

It behaves like the tools people already script around: human output by default, `--json` for one JSON
document on stdout, `--quiet` for no progress bars or log lines, one line on stderr for an error (with a
hint), the traceback only with `--debug`, and exit codes that say what happened (EPILOG). Heavy libraries
(Spark, torch, Prefect) are imported inside the commands that need them, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from nightrec.config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 3

DESCRIPTION = """\
Nightly batch recommendations: make data, run a night or a range of nights,
read what was published."""

EPILOG = """\
exit codes:
  0  success; for run and backfill: published
  1  the command failed; a failed run publishes nothing (`nightrec runs` and
     the run's report.html say why)
  2  bad usage: an unknown option, a bad date, a missing or invalid config
  3  the input failed validation: the failed expectations are printed and
     nothing was published

--quiet and --debug go before or after the command; --json is on run,
backfill, backtest, evaluate, recs, runs, generate and import.

docs: docs/getting-started.md   a first run, then your own data
      docs/configuration.md     every config key
      docs/operations.md        schedules, workers, backfills
      docs/warehouse.md         the published tables
`nightrec COMMAND --help` lists the options of a command."""


class CliError(Exception):
    """A failure the command line states in one line (no traceback unless --debug), with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: the message and where the help is, not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _MainHelp(argparse.RawDescriptionHelpFormatter):
    """The epilog as written, and every command's description on its own line, config-docs included.

    argparse measures the option strings but not the indented command names, so it would put the longest
    command name on a line of its own: reserve its width (argparse's private `_action_max_length`).
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24)
        self._action_max_length = len("    config-docs")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _timezone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"not an IANA timezone (like UTC or Europe/Berlin): {text!r}"
        ) from exc
    return text


def one_line(exc: BaseException, limit: int = 400) -> str:
    """`Type: first line of the message`: Spark and Java errors carry whole stack traces in their text."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(lines) > 1 or len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- config -------------------------------------------------------------------------------------------------


def load(path: str, **overrides: str | None) -> Config:
    """The config, or a CliError (exit 2) naming the file and the key at fault."""
    import tomllib

    from pydantic import ValidationError

    from nightrec.config import load_config

    if not Path(path).is_file():
        raise CliError(f"no config at {path} (the configs/ folder has examples)", EXIT_USAGE)
    try:
        return load_config(path, **overrides)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config {path} is not valid TOML: {exc}", EXIT_USAGE) from exc
    except ValidationError as exc:
        problems = "; ".join(_config_problem(e) for e in exc.errors())
        raise CliError(
            f"config {path}: {problems} (docs/configuration.md lists every key)", EXIT_USAGE
        ) from exc
    except (OSError, ValueError) as exc:  # an `extends` that is missing or loops
        raise CliError(f"config {path}: {exc}", EXIT_USAGE) from exc


def _config_problem(error: Any) -> str:
    """One pydantic error as `tasks.1.parent: message`; a rule across fields has no location."""
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


# -- output -------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value of a DataFrame row or a result dict, as JSON has it: dates as ISO text, NaN/NaT as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy scalar or array
        return _plain(value.tolist())
    import pandas as pd

    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, NaT, pd.NA
        return None
    if isinstance(value, date):  # datetime and pandas.Timestamp too
        return value.isoformat()
    return value


def print_json(document: Any) -> None:
    """The one JSON document of a `--json` command: nothing else goes to stdout."""
    print(json.dumps(_plain(document), indent=2, allow_nan=False))


def _as_date(value: Any) -> Any:
    return value.date() if isinstance(value, datetime) else value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as JSON has them; `run_date` as a date (DuckDB hands DATE columns to pandas as timestamps)."""
    if "run_date" in frame:
        frame = frame.assign(run_date=[_as_date(d) for d in frame["run_date"]])
    return [_plain(row) for row in frame.to_dict("records")]


# -- Prefect's console ----------------------------------------------------------------------------------------


def _prefect_settings() -> None:
    """Prefect settings for a command-line run: no telemetry, enough time for a cold embedded server."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


class _EngineFailures(logging.Filter):
    """Prefect's engine logs a failed task or flow at ERROR with its whole traceback. The command line states
    the same failure in one line, so the console drops those records; the Prefect API (and UI) still gets them,
    and `--debug` keeps them on the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.module in ("flow_engine", "task_engine"))


_ENGINE_FAILURES = _EngineFailures()


def prefect_console(quiet: bool, debug: bool) -> None:
    """Set Prefect's console handler for this process: `quiet` hides INFO lines (Prefect's, and those of the
    libraries logging through it), no `debug` hides the engine's failure tracebacks.

    Only the console handler changes, never the log levels, so the runs' logs in Prefect stay complete. The
    setting holds for the rest of the process, not just the command: the embedded server logs its "Stopping"
    line at interpreter exit, after the command has returned.
    """
    _prefect_settings()
    import prefect.main  # noqa: F401  (configures Prefect's logging, which is adjusted below)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            if quiet:
                handler.setLevel(max(handler.level, logging.WARNING))
            if debug:
                handler.removeFilter(_ENGINE_FAILURES)
            else:
                handler.addFilter(_ENGINE_FAILURES)


# -- data commands -------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from jobs.generate import generate

    kwargs = {"end_date": args.end_date} if args.end_date else {}
    summary = generate(Path(args.out), args.users, args.items, args.days, args.seed, **kwargs)
    if args.json:
        print_json(summary)
        return EXIT_OK
    events = summary["events"]
    per_type = ", ".join(f"{n} {kind}" for kind, n in events.items())
    print(
        f"wrote {args.out}: {sum(events.values())} events ({per_type}) of {summary['users']} users on "
        f"{summary['items']} items ({summary['new_items']} new), {summary['first_day']} .. {summary['last_day']}"
    )
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from jobs.movielens import import_movielens

    summary = import_movielens(
        Path(args.source), Path(args.out), Path(args.ratings) if args.ratings else None
    )
    if args.json:
        print_json(summary)
        return EXIT_OK
    print(
        f"wrote {args.out}: {summary['events']} rating events of {summary['users']} users on "
        f"{summary['items']} items (MovieLens {summary['format'].upper()}), {summary['first_day']} .. {summary['last_day']}"
    )
    return EXIT_OK


# -- run, backfill ---------------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {"landing": args.landing, "workdir": args.workdir, "warehouse": args.warehouse}


def _yesterday() -> date:
    """What the flow publishes without a date (flows/run_date.py): the day before now, in UTC."""
    from flows.run_date import day_before

    return day_before(datetime.now(UTC))


def failed_step(cfg: Config, run_date: date, since: datetime) -> str | None:
    """The step at which the run of `run_date` started after `since` failed, as the runs table records it.

    The table is the record every run writes, whoever started it; None where it cannot be read (a failure
    before the run was recorded, an unreachable warehouse).
    """
    from flows.store import open_store

    try:
        with open_store(cfg, read_only=True) as wh:
            runs = wh.runs(limit=20)
    except Exception:
        return None
    for row in runs.to_dict("records"):
        started = row["started_at"]
        if (
            _as_date(row["run_date"]) == run_date
            and row["status"] == "failed"
            and started is not None
            and started >= since
        ):
            found = re.match(r"\[(\w+)\]", row["error"] or "")
            return found.group(1) if found else None
    return None


def _recs_command(args: argparse.Namespace) -> str:
    parts = ["nightrec recs", "--config", args.config]
    if args.warehouse:
        parts += ["--warehouse", args.warehouse]
    return " ".join(parts)


def run_summary(result: dict[str, Any], cfg: Config, seconds: float, next_command: str) -> str:
    """What a person wants after a night: what was published, how good the model looked, where to look."""
    rows = result["row_counts"]
    lines = [
        f"published {result['run_date']}: {rows.get('recommendations')} rows, top {cfg.scoring.top_k} for "
        f"{rows.get('users')} users; model {result['model_version']} ({seconds:.0f} s)"
    ]
    for task, metrics in result["metrics"].get("tasks", {}).items():
        shown = ", ".join(
            f"{k} {metrics[k]:.3f}" for k in ("auc", "logloss", "rmse") if metrics.get(k) is not None
        )
        lines.append(
            f"  {task:<10} {shown or 'no labelled validation examples'} (validation, n={metrics['n']})"
        )
    gate = result["metrics"].get("champion_gate")
    if gate:
        verdict = "new model published" if gate["promoted"] else f"kept champion {gate['champion_version']}"
        lines.append(f"  champion   {verdict}: {gate['reason']}")
    lines += [
        f"  report     {Path(result['run_dir']) / 'report.html'}",
        f"  warehouse  {result['warehouse']} (view latest_recommendations)",
        f"  next       {next_command}",
    ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load(args.config, **_overrides(args))
    run_date = args.date or _yesterday()
    started, clock = datetime.now(UTC), time.perf_counter()
    prefect_console(args.quiet, args.debug)
    from flows.nightly import nightly
    from jobs.validation import ValidationFailed

    try:
        result = nightly(
            run_date=run_date, config_path=args.config, show_progress=not args.quiet, **_overrides(args)
        )
    except Exception as exc:  # the flow has recorded the failure in the runs table
        if args.debug and not isinstance(exc, ValidationFailed):
            raise
        step = failed_step(cfg, run_date, started)
        if args.json:
            print_json({"run_date": run_date, "status": "failed", "step": step, "error": one_line(exc)})
        at = f" at step {step}" if step else ""
        if isinstance(exc, ValidationFailed):
            report = cfg.run_dir(run_date) / "report.html"
            print(
                f"nightrec: validation failed{at}, nothing published (report: {report})\n{exc}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        print(
            f"nightrec: run failed{at}: {one_line(exc)} (nothing published; --debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print_json(result)
    else:
        print(run_summary(result, cfg, time.perf_counter() - clock, _recs_command(args)))
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.end < args.start:
        raise CliError(f"--end {args.end} is before --start {args.start}", EXIT_USAGE)
    load(args.config, **_overrides(args))
    prefect_console(args.quiet, args.debug)
    from flows.backfill import BackfillFailed, BackfillReport, backfill

    try:
        result = backfill(
            config_path=args.config,
            start=args.start,
            end=args.end,
            force=args.force,
            show_progress=not args.quiet,
            **_overrides(args),
        )
    except BackfillFailed as exc:
        if args.json:
            print_json(exc.report.to_dict())
        print(f"nightrec: backfill stopped at a failed date\n{exc.report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(result)
    else:
        print(BackfillReport.from_dict(result).summary())
    return EXIT_OK


# -- serve ------------------------------------------------------------------------------------------------------

SERVE_NEEDS_SERVER = """nightrec serve: no Prefect server is configured (PREFECT_API_URL is unset).
Prefect's embedded server runs no scheduler, so a schedule served against it would never fire.
Start a server and point at it, then serve again:
    prefect server start                      # in another terminal, or as a service
    export PREFECT_API_URL=http://127.0.0.1:4200/api
Or use the workers' path instead: see docs/operations.md."""


def _api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def serve_deployment(args: argparse.Namespace):
    """The nightly deployment that `nightrec serve` runs: one cron schedule, one run at a time."""
    from prefect.schedules import Cron

    from flows.nightly import nightly

    parameters = {
        "config_path": str(Path(args.config).resolve()),
        "show_progress": False,
        "schedule_timezone": args.timezone,
    }
    for key in ("landing", "workdir", "warehouse"):
        if getattr(args, key):
            parameters[key] = getattr(args, key)
    return nightly.to_deployment(
        name=args.name,
        schedules=[Cron(args.cron, timezone=args.timezone, slug=f"{args.name}-cron")],
        parameters=parameters,
        concurrency_limit=1,
        description="nightrec nightly run, served by `nightrec serve`",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    load(args.config, **_overrides(args))
    _prefect_settings()
    if not _api_url():
        print(SERVE_NEEDS_SERVER, file=sys.stderr)
        return EXIT_USAGE
    from prefect import serve

    # pause_on_shutdown=False: stopping this process (a restart, a deploy) must not pause the schedule.
    serve(serve_deployment(args), pause_on_shutdown=False, limit=1)
    return EXIT_OK


# -- reading what was published ------------------------------------------------------------------------------


def _warehouse(args: argparse.Namespace):
    """The warehouse to read: --warehouse, else the config's; the config also names a password block."""
    from jobs.warehouse import is_postgres_url, open_warehouse

    target, block = args.warehouse, None
    if target is None or Path(args.config).is_file():
        data = load(args.config).data
        target, block = target or data.warehouse, data.warehouse_password_block
    if not is_postgres_url(target):
        if not Path(target).exists():
            raise CliError(f"no warehouse at {target} (run `nightrec run` first)")
        block = None  # a DuckDB file given with --warehouse: the config's PostgreSQL block does not apply
    return open_warehouse(target, read_only=True, password_block=block)


def cmd_recs(args: argparse.Namespace) -> int:
    with _warehouse(args) as wh:
        frame = wh.latest(user_id=args.user, limit=args.limit)
    if args.json:
        print_json(_records(frame))
    elif len(frame):
        first = _records(frame.head(1))[0]
        print(f"published {first['run_date']} by model {first['model_version']}")
        cols = ["user_id", "rank", "item_id", "score", *(c for c in frame if c.startswith("p_"))]
        print(frame[cols].to_string(index=False))
    else:
        print(f"no published recommendations for {args.user or 'anyone'}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    with _warehouse(args) as wh:
        frame = wh.runs(limit=args.limit)
    if args.json:
        print_json(_records(frame))
        return EXIT_OK
    cols = [
        c for c in ("run_date", "status", "model_version", "started_at", "finished_at", "error") if c in frame
    ]
    print(frame[cols].to_string(index=False))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from nightrec.report import render_report

    cfg = load(args.config, workdir=args.workdir, warehouse=args.warehouse)
    print(render_report(cfg, args.date, Path(args.out) if args.out else None))
    return EXIT_OK


def _print_table(table: dict[str, dict[str, Any]], k: int) -> None:
    """Rankers by rows: top-K metrics, coverage, new-item share, then any AUC (n/a where undefined)."""
    columns = [f"recall@{k}", f"ndcg@{k}", f"hit@{k}", "coverage", "new_item_share"]
    columns += sorted({c for values in table.values() for c in values if c.startswith("auc_")})
    width = max(len(name) for name in table) + 2
    print(f"{'':{width}}{'users':>7}" + "".join(f"{c:>16}" for c in columns))
    for name, values in table.items():
        cells = [values.get(c) for c in columns]
        shown = "".join(f"{'n/a':>16}" if v is None or v != v else f"{v:>16.4f}" for v in cells)
        print(f"{name:{width}}{values.get('users', 0):>7}" + shown)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Judge one published date on the days after it, beside the peers, by the backtest protocol."""
    from flows.backtest import night_rankers
    from model.peers import evaluate_night, judged_event_types

    cfg = load(args.config, landing=args.landing, workdir=args.workdir, warehouse=args.warehouse)
    if not is_reachable(cfg):
        raise CliError(f"no warehouse at {cfg.data.warehouse} (run `nightrec run` first)")
    try:
        rankers = night_rankers(cfg, args.date)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    k, horizon = args.k or cfg.evaluation.k, args.horizon or cfg.evaluation.test_days
    result = evaluate_night(cfg, args.date, rankers, peers=cfg.evaluation.peers, k=k, horizon_days=horizon)
    types = judged_event_types(cfg)
    if args.json:
        print_json({"run_date": args.date, "judged_on": types, **result.metrics})
        return EXIT_OK
    print(f"{args.date}: judged on {', '.join(types)} events of the {horizon} days after")
    _print_table(result.metrics, k)
    return EXIT_OK


def is_reachable(cfg: Config) -> bool:
    """A PostgreSQL warehouse is assumed there; a DuckDB one must exist as a file."""
    from jobs.warehouse import is_postgres_url

    return is_postgres_url(cfg.data.warehouse) or Path(cfg.data.warehouse).exists()


def _backtest_dates(args: argparse.Namespace) -> list[date]:
    """--dates D1,D2,... or --start/--end/--every Nd (every N days from start, end included if on the step)."""
    from datetime import timedelta

    if args.dates:
        if args.start or args.end:
            raise CliError("give --dates or --start/--end, not both", EXIT_USAGE)
        try:
            return sorted({date.fromisoformat(d.strip()) for d in args.dates.split(",") if d.strip()})
        except ValueError as exc:
            raise CliError(f"--dates: {exc} (YYYY-MM-DD,YYYY-MM-DD,...)", EXIT_USAGE) from exc
    if not (args.start and args.end):
        raise CliError("give --dates D1,D2,... or --start D --end D [--every 14d]", EXIT_USAGE)
    if args.end < args.start:
        raise CliError(f"--end {args.end} is before --start {args.start}", EXIT_USAGE)
    found = re.fullmatch(r"(\d+)d", args.every)
    if not found or int(found.group(1)) < 1:
        raise CliError(f"--every {args.every!r}: a number of days like 14d", EXIT_USAGE)
    step, days = int(found.group(1)), (args.end - args.start).days
    return [args.start + timedelta(days=i) for i in range(0, days + 1, step)]


def cmd_backtest(args: argparse.Namespace) -> int:
    dates = _backtest_dates(args)
    load(args.config, **_overrides(args))
    prefect_console(args.quiet, args.debug)
    from flows.backtest import backtest, render_markdown

    result = backtest(
        config_path=args.config,
        dates=dates,
        out=args.out,
        single_task=args.single_task,
        force=args.force,
        show_progress=not args.quiet,
        **_overrides(args),
    )
    if args.json:
        print_json(result)
        return EXIT_OK
    print(render_markdown(result))
    print(f"written: {', '.join(result['files'])}")
    return EXIT_OK


def _read_pairs(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise CliError(f"no input at {path}", EXIT_USAGE)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    return pd.read_parquet(path)


def cmd_score_pairs(args: argparse.Namespace) -> int:
    """Score given (user, item) pairs with the model that published a date, on that run's features."""
    from model.champion import published_version
    from model.pair_scores import score_pairs

    cfg = load(args.config, workdir=args.workdir, warehouse=args.warehouse)
    if not is_reachable(cfg):
        raise CliError(f"no warehouse at {cfg.data.warehouse} (run `nightrec run` first)")
    from flows.store import open_store

    with open_store(cfg, read_only=True) as wh:
        run_date = args.date or max(wh.published_dates(), default=None)
        version = published_version(wh, run_date) if run_date else None
    if version is None:
        raise CliError(f"nothing published{f' for {args.date}' if args.date else ''} (`nightrec runs`)")
    pairs = _read_pairs(Path(args.input))
    try:
        scored = score_pairs(
            Path(cfg.data.workdir) / "models" / version, cfg.run_dir(run_date) / "features", cfg, pairs
        )
    except ValueError as exc:
        raise CliError(f"{args.input}: {exc}", EXIT_INVALID) from exc
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".csv":
        scored.to_csv(tmp, index=False)
    else:
        scored.to_parquet(tmp, index=False)
    tmp.replace(out)
    unknown = int((~scored["known"]).sum())
    if not args.quiet:
        print(
            f"scored {len(scored)} pairs with model {version} of {run_date} into {out}"
            + (f"; {unknown} with an unknown user or item (known = false)" if unknown else "")
        )
    return EXIT_OK


def cmd_config_docs(args: argparse.Namespace) -> int:
    from nightrec.config_docs import render, undocumented

    path, text = Path(args.out), render()
    if args.check:
        if not path.is_file() or path.read_text() != text:
            raise CliError(f"{path} is stale: regenerate it with `nightrec config-docs` and commit it")
        if not args.quiet:
            print(f"{path} is up to date")
        return EXIT_OK
    path.write_text(text)
    if not args.quiet:
        print(f"wrote {path}")
        missing = undocumented()
        if missing:
            print(f"{len(missing)} keys have no description in nightrec/config.py: {', '.join(missing)}")
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------------------------------


def _flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """--quiet and --debug, valid before or after the command: `nightrec --debug run` = `nightrec run --debug`.

    The command's copies default to SUPPRESS, so an absent flag after the command keeps the value before it.
    """
    parser.add_argument(
        "--quiet", "-q", action="store_true", default=default, help="no progress bars or log lines"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show the traceback of a failure"
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")


def _config_option(parser: argparse.ArgumentParser, *overrides: str, default: str | None = None) -> None:
    if default is None:
        parser.add_argument(
            "--config", required=True, help="TOML config (see configs/, docs/configuration.md)"
        )
    else:
        parser.add_argument("--config", default=default, help=f"TOML config (default: {default})")
    for key in overrides:
        parser.add_argument(f"--{key}", help=f"override [data] {key}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nightrec",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_MainHelp,
    )
    _flags(parser, False)
    flags = Parser(add_help=False)
    _flags(flags, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           parents=[flags])  # fmt: skip
        p.set_defaults(func=func)
        return p

    gen = command("generate", "write synthetic interaction logs to a landing zone", cmd_generate)
    gen.add_argument("--out", required=True, help="landing directory to (re)write")
    gen.add_argument("--users", type=int, default=2000, help="default 2000")
    gen.add_argument("--items", type=int, default=500, help="default 500")
    gen.add_argument("--days", type=int, default=30, help="days of logs before --end-date (default 30)")
    gen.add_argument("--seed", type=int, default=7, help="the same seed writes the same logs (default 7)")
    gen.add_argument("--end-date", type=_date, help="first day after the logs (default 2026-11-01)")
    _json_flag(gen)

    imp = command("import", "convert a public data set into a landing zone", cmd_import)
    imp.add_argument("dataset", choices=["movielens"])
    imp.add_argument("--source", required=True, help="MovieLens 100K or 1M directory")
    imp.add_argument("--out", required=True, help="landing directory to (re)write")
    imp.add_argument("--ratings", help="ratings file if not in --source (may be gzipped)")
    _json_flag(imp)

    run = command("run", "run the nightly flow for one date: train, score, publish", cmd_run)
    run.add_argument("--date", type=_date, help="run date (default: yesterday, UTC, as a scheduled run)")
    _config_option(run, "landing", "workdir", "warehouse")
    _json_flag(run)

    fill = command("backfill", "run the nightly flow for each date of a range, in order", cmd_backfill)
    fill.add_argument("--start", type=_date, required=True, help="first run date")
    fill.add_argument("--end", type=_date, required=True, help="last run date (inclusive)")
    fill.add_argument("--force", action="store_true", help="rerun dates that are already published")
    _config_option(fill, "landing", "workdir", "warehouse")
    _json_flag(fill)

    srv = command("serve", "run the nightly schedule here (needs a Prefect server)", cmd_serve)
    _config_option(srv, "landing", "workdir", "warehouse")
    srv.add_argument("--cron", default="0 2 * * *", help="cron expression (default: 02:00 every day)")
    srv.add_argument("--timezone", type=_timezone, default="UTC", help="the cron's timezone (default: UTC)")
    srv.add_argument("--name", default="nightly-served", help="deployment name (default: nightly-served)")

    recs = command("recs", "print a user's latest published recommendations", cmd_recs)
    recs.add_argument("user", nargs="?", help="a user_id (default: the first rows of all users)")
    runs = command("runs", "print the most recent runs, newest first", cmd_runs)
    for p in (recs, runs):
        _config_option(p, default="configs/demo.toml")
        p.add_argument("--warehouse", help="DuckDB file or PostgreSQL URL (default: the config's)")
        p.add_argument("--limit", type=int, default=10, help="rows to print (default 10)")
        _json_flag(p)

    rep = command("report", "render a run's HTML report (every run also writes it)", cmd_report)
    rep.add_argument("--date", type=_date, required=True, help="run date")
    _config_option(rep, "workdir", "warehouse")
    rep.add_argument("--out", help="HTML file to write (default: <workdir>/runs/<date>/report.html)")

    ev = command("evaluate", "judge a published date on the days after it, beside peers", cmd_evaluate)
    ev.add_argument("--date", type=_date, required=True, help="a published run date")
    _config_option(ev, "landing", "workdir")
    ev.add_argument("--warehouse", help="DuckDB file or PostgreSQL URL (default: the config's)")
    ev.add_argument("--k", type=int, help="cut-off of the top-K metrics (default: evaluation.k)")
    ev.add_argument(
        "--horizon", type=int, help="days after the run date to judge on (default: evaluation.test_days)"
    )
    _json_flag(ev)

    bt = command("backtest", "replay past nights and judge each beside the peers", cmd_backtest)
    bt.add_argument("--dates", help="run dates, comma-separated: 1998-01-10,1998-01-24")
    bt.add_argument("--start", type=_date, help="first run date (with --end)")
    bt.add_argument("--end", type=_date, help="last run date, included when on the step")
    bt.add_argument("--every", default="14d", help="step between --start and --end (default 14d)")
    bt.add_argument("--out", help="folder for backtest.json and backtest.md (default: <workdir>/backtest)")
    bt.add_argument("--single-task", action="store_true", help="also train and judge each task alone")
    bt.add_argument("--force", action="store_true", help="rerun dates that are already published")
    _config_option(bt, "landing", "workdir", "warehouse")
    _json_flag(bt)

    sp = command("score-pairs", "score given (user, item) pairs with a published model", cmd_score_pairs)
    sp.add_argument("--input", required=True, help="Parquet or CSV (.csv) with user_id, item_id")
    sp.add_argument("--output", required=True, help="Parquet, or CSV when it ends in .csv")
    sp.add_argument(
        "--date", type=_date, help="the published date whose model and features to use (default: latest)"
    )
    _config_option(sp, "workdir", "warehouse")

    docs = command("config-docs", "write docs/configuration.md from the config model", cmd_config_docs)
    docs.add_argument(
        "--check", action="store_true", help="only check that the file is current (exit 1 if not)"
    )
    docs.add_argument("--out", default="docs/configuration.md", help="default: docs/configuration.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader stopped reading (`nightrec runs --json | head`): not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush cannot fail again
        return EXIT_OK
    except CliError as exc:
        if args.debug:
            raise
        print(f"nightrec: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.debug:
            raise
        print(f"nightrec {args.command}: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
