"""The `nightrec` command line: make data, run a night or a range of nights, serve the schedule.

Exit codes: 0 success (published), 1 the run failed, 2 bad usage, 3 the input failed validation.
Heavy libraries (Spark, torch, Prefect) are imported inside the commands that need them, so `--help` and
the data commands answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EXIT_FAILED, EXIT_USAGE, EXIT_INVALID = 1, 2, 3


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


def _quiet_defaults() -> None:
    """Prefect settings for a command-line run: no telemetry, enough time for a cold embedded server."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def cmd_generate(args: argparse.Namespace) -> int:
    from jobs.generate import generate

    kwargs = {"end_date": args.end_date} if args.end_date else {}
    summary = generate(Path(args.out), args.users, args.items, args.days, args.seed, **kwargs)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from jobs.movielens import import_movielens

    summary = import_movielens(
        Path(args.source), Path(args.out), Path(args.ratings) if args.ratings else None
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_defaults()
    from flows.nightly import nightly
    from jobs.validation import ValidationFailed

    try:
        result = nightly(
            run_date=args.date,
            config_path=args.config,
            landing=args.landing,
            workdir=args.workdir,
            warehouse=args.warehouse,
            show_progress=not args.quiet,
        )
    except ValidationFailed as exc:
        print(f"nightrec: validation failed, nothing published\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:  # the flow has recorded the failure in the runs table
        if args.debug:
            raise
        print(f"nightrec: run failed, nothing published: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.end < args.start:
        print(f"nightrec: --end {args.end} is before --start {args.start}", file=sys.stderr)
        return EXIT_USAGE
    _quiet_defaults()
    from flows.backfill import BackfillFailed, BackfillReport, backfill

    try:
        result = backfill(
            config_path=args.config,
            start=args.start,
            end=args.end,
            force=args.force,
            landing=args.landing,
            workdir=args.workdir,
            warehouse=args.warehouse,
            show_progress=not args.quiet,
        )
    except BackfillFailed as exc:
        print(f"nightrec: backfill stopped at a failed date\n{exc.report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # before any date ran: a bad config, an unreadable warehouse
        if args.debug:
            raise
        print(f"nightrec: backfill failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(BackfillReport.from_dict(result).summary())
    return 0


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
    if not Path(args.config).is_file():
        print(f"nightrec serve: no config at {args.config}", file=sys.stderr)
        return EXIT_USAGE
    if not _api_url():
        print(SERVE_NEEDS_SERVER, file=sys.stderr)
        return EXIT_USAGE
    from prefect import serve

    # pause_on_shutdown=False: stopping this process (a restart, a deploy) must not pause the schedule.
    serve(serve_deployment(args), pause_on_shutdown=False, limit=1)
    return 0


def _warehouse(args: argparse.Namespace):
    """The warehouse to read: --warehouse, else the config's; the config also names a password block."""
    from jobs.warehouse import is_postgres_url, open_warehouse
    from nightrec.config import load_config

    target, block = args.warehouse, None
    if target is None or Path(args.config).is_file():
        data = load_config(args.config).data
        target, block = target or data.warehouse, data.warehouse_password_block
    if not is_postgres_url(target):
        if not Path(target).exists():
            raise SystemExit(f"nightrec: no warehouse at {target} (run `nightrec run` first)")
        block = None  # a DuckDB file given with --warehouse: the config's PostgreSQL block does not apply
    return open_warehouse(target, read_only=True, password_block=block)


def cmd_recs(args: argparse.Namespace) -> int:
    with _warehouse(args) as wh:
        frame = wh.latest(user_id=args.user, limit=args.limit)
    print(
        frame.to_string(index=False)
        if len(frame)
        else f"no published recommendations for {args.user or 'anyone'}"
    )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _warehouse(args) as wh:
        frame = wh.runs(limit=args.limit)
    cols = [
        c for c in ("run_date", "status", "model_version", "started_at", "finished_at", "error") if c in frame
    ]
    print(frame[cols].to_string(index=False))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nightrec.config import load_config
    from nightrec.report import render_report

    cfg = load_config(args.config, workdir=args.workdir, warehouse=args.warehouse)
    print(render_report(cfg, args.date, Path(args.out) if args.out else None))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Judge one published date on the days after it, beside the peers, by the backtest protocol."""
    from model.peers import evaluate_night
    from nightrec.config import load_config

    cfg = load_config(args.config, landing=args.landing)
    with _warehouse(args) as wh:
        published = wh.recommendations_for(args.date)
    if published.empty:
        print(f"nightrec: nothing published for {args.date}", file=sys.stderr)
        return EXIT_FAILED
    types = sorted({t for task in cfg.tasks if task.parent is None for t in task.label.event_types})
    result = evaluate_night(
        cfg.data.landing, published, args.date, types, cfg.features.lookback_days, args.k, args.horizon
    )
    if args.json:
        print(json.dumps({"run_date": args.date.isoformat(), "judged_on": types, **result}, indent=2))
        return 0
    print(f"{args.date}: judged on {', '.join(types)} events of the {args.horizon} days after")
    print(
        f"{'':10}{'users':>7}"
        + "".join(f"{m:>11}" for m in (f"recall@{args.k}", f"ndcg@{args.k}", f"hit@{args.k}"))
    )
    for name, metrics in result.items():
        values = [metrics[f"{m}@{args.k}"] for m in ("recall", "ndcg", "hit")]
        print(f"{name:10}{metrics['users']:>7}" + "".join(f"{v:>11.4f}" for v in values))
    return 0


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML config (see configs/)")
    parser.add_argument("--landing", help="override [data] landing")
    parser.add_argument("--workdir", help="override [data] workdir")
    parser.add_argument("--warehouse", help="override [data] warehouse")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="write synthetic interaction logs to a landing zone")
    gen.add_argument("--out", required=True, help="landing directory to (re)write")
    gen.add_argument("--users", type=int, default=2000)
    gen.add_argument("--items", type=int, default=500)
    gen.add_argument("--days", type=int, default=30)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--end-date", type=_date, help="first day after the logs (default 2026-11-01)")
    gen.set_defaults(func=cmd_generate)

    imp = sub.add_parser("import", help="convert a public data set into a landing zone")
    imp.add_argument("dataset", choices=["movielens"])
    imp.add_argument("--source", required=True, help="MovieLens 100K or 1M directory")
    imp.add_argument("--out", required=True, help="landing directory to (re)write")
    imp.add_argument("--ratings", help="ratings file if not in --source (may be gzipped)")
    imp.set_defaults(func=cmd_import)

    run = sub.add_parser("run", help="run the nightly flow for one date")
    run.add_argument("--date", type=_date, help="run date (default: yesterday, UTC, as a scheduled run)")
    _run_options(run)
    run.set_defaults(func=cmd_run)

    fill = sub.add_parser("backfill", help="run the nightly flow for each date of a range, in order")
    fill.add_argument("--start", type=_date, required=True, help="first run date")
    fill.add_argument("--end", type=_date, required=True, help="last run date (inclusive)")
    fill.add_argument("--force", action="store_true", help="rerun dates that are already published")
    _run_options(fill)
    fill.set_defaults(func=cmd_backfill)

    srv = sub.add_parser("serve", help="run the nightly schedule from this process (needs a Prefect server)")
    srv.add_argument("--config", required=True, help="TOML config (see configs/)")
    srv.add_argument("--cron", default="0 2 * * *", help="cron expression (default: 02:00 every day)")
    srv.add_argument("--timezone", type=_timezone, default="UTC", help="the cron's timezone (default: UTC)")
    srv.add_argument("--name", default="nightly-served", help="deployment name (default: nightly-served)")
    srv.add_argument("--landing", help="override [data] landing")
    srv.add_argument("--workdir", help="override [data] workdir")
    srv.add_argument("--warehouse", help="override [data] warehouse")
    srv.set_defaults(func=cmd_serve)

    rep = sub.add_parser("report", help="render a run's HTML report (also written by every run)")
    rep.add_argument("--date", type=_date, required=True, help="run date")
    rep.add_argument("--config", required=True, help="TOML config (see configs/)")
    rep.add_argument("--workdir", help="override [data] workdir")
    rep.add_argument("--warehouse", help="override [data] warehouse")
    rep.add_argument("--out", help="HTML file to write (default: <workdir>/runs/<date>/report.html)")
    rep.set_defaults(func=cmd_report)

    ev = sub.add_parser("evaluate", help="judge a published date on the days after it, beside the peers")
    ev.add_argument("--date", type=_date, required=True, help="a published run date")
    ev.add_argument("--config", required=True, help="TOML config (see configs/)")
    ev.add_argument("--landing", help="override [data] landing")
    ev.add_argument("--warehouse", help="DuckDB file or PostgreSQL URL (default: the config's)")
    ev.add_argument("--k", type=int, default=10, help="cut-off of the top-K metrics (default 10)")
    ev.add_argument(
        "--horizon", type=int, default=14, help="days after the run date to judge on (default 14)"
    )
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=cmd_evaluate)

    for name, func, help_text in (
        ("recs", cmd_recs, "print a user's latest published recommendations"),
        ("runs", cmd_runs, "print the most recent runs"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "recs":
            p.add_argument("user", nargs="?", help="a user_id (default: a sample of all users' rows)")
        p.add_argument("--config", default="configs/demo.toml")
        p.add_argument("--warehouse", help="DuckDB file or PostgreSQL URL (default: the config's)")
        p.add_argument("--limit", type=int, default=10)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
