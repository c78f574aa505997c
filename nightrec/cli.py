"""The `nightrec` command line: make data, run a night, look at what was published.

Exit codes: 0 success (published), 1 the run failed, 2 bad usage, 3 the input failed validation.
Heavy libraries (Spark, torch, Prefect) are imported inside the commands that need them, so `--help` and
the data commands answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path

EXIT_FAILED, EXIT_USAGE, EXIT_INVALID = 1, 2, 3


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


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


def _warehouse(args: argparse.Namespace):
    from jobs.warehouse import Warehouse
    from nightrec.config import load_config

    path = args.warehouse or load_config(args.config).data.warehouse
    if not Path(path).exists():
        raise SystemExit(f"nightrec: no warehouse at {path} (run `nightrec run` first)")
    return Warehouse(path, read_only=True)


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
    run.add_argument(
        "--date", type=_date, default=datetime.now(UTC).date(), help="run date (default: today, UTC)"
    )
    run.add_argument("--config", required=True, help="TOML config (see configs/)")
    run.add_argument("--landing", help="override [data] landing")
    run.add_argument("--workdir", help="override [data] workdir")
    run.add_argument("--warehouse", help="override [data] warehouse")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    run.set_defaults(func=cmd_run)

    for name, func, help_text in (
        ("recs", cmd_recs, "print a user's latest published recommendations"),
        ("runs", cmd_runs, "print the most recent runs"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "recs":
            p.add_argument("user", nargs="?", help="a user_id (default: a sample of all users' rows)")
        p.add_argument("--config", default="configs/demo.toml")
        p.add_argument("--warehouse", help="DuckDB file (default: the config's)")
        p.add_argument("--limit", type=int, default=10)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
