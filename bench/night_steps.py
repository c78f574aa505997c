"""The whole nightly run, per step: wall time, CPU time and peak memory (the process and all it starts).

Runs the real `nightly` flow in this process, as flows/backtest.py does, on a fresh workdir and warehouse
(the script refuses to start if either already exists: remove them yourself, it never deletes anything).
A run that fails, or is stopped (`--max-seconds`, Ctrl-C, SIGTERM), still writes the figures of the steps
it reached, and the script then exits non-zero.

    python bench/night_steps.py --config configs/movielens.toml --landing var/ml1m/landing \\
        --date 2000-12-01 --workdir /tmp/nsbench/ml1m/work --warehouse /tmp/nsbench/ml1m/wh.duckdb \\
        --json var/bench/night_ml1m.json --label "ML-1M users 1-2999"

Wall time: each step's seconds are the flow's own `step_timings` (flows/nightly.py `_timed`); the total is
the script's clock around the `nightly(...)` call, so it also holds Prefect's start (the ephemeral API server
when PREFECT_API_URL is unset), the runs-table writes, the champion lookup and the report. "overhead" is
the total minus the steps. Spark starts on first use, inside validate-events, so its start is in that step.

Memory: a background thread samples, every 0.1 s, the resident set (VmRSS, read from /proc/<pid>/statm) of
this process and of all its descendants (found from the parent pids in /proc/*/stat every 0.5 s): the Spark
JVM, its Python workers and Prefect's ephemeral server are children. The sum over processes counts the
pages they share more than once, so it is an upper bound. Each sample is given to the step whose window
holds it; the windows are the start and end times that Prefect recorded for the flow run's task runs. The
Python process's own peak (getrusage ru_maxrss) is reported too, and the CPU seconds the tree used per
step (utime + stime from /proc/<pid>/stat): on a shared machine the wall time depends on the other work,
the CPU time much less, and CPU time / cores bounds what the step needs on an idle machine. Linux only:
psutil is not a dependency, so the process tree, its memory and its CPU time are read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

# (key in the nightly's step_timings, name of the Prefect task that runs it), in the flow's order.
STEPS = [
    ("validate_events", "validate-events"),
    ("features", "build-features"),
    ("validate_features", "validate-features"),
    ("train", "train"),
    ("champion_gate", "champion-gate"),
    ("score", "score"),
    ("validate_recommendations", "validate-recommendations"),
    ("publish", "publish"),
    ("parquet_output", "parquet-output"),
]
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024  # KiB per MiB


# -- /proc ---------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident set of `pid` in KiB (statm's second field, the figure VmRSS shows); None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time `pid` has used (fields 14 and 15 of /proc/<pid>/stat); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from the parent pid of every process (field 4 of /proc/<pid>/stat)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def component(pid: int, root: int) -> str:
    """What a process of the tree is: this Python process, the Spark JVM, Spark's Python workers, Prefect's
    server, or other."""
    if pid == root:
        return "python"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if os.path.basename(cmd.split(" ", 1)[0]) == "java":
        return "jvm"
    if "pyspark" in cmd:  # pyspark.daemon and its workers (the launcher scripts exec into the JVM)
        return "spark_python"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "prefect_server"
    return "other"


def mem_total_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class Sample:
    t: float  # time.time()
    total_kib: int
    by_component: dict[str, int]
    cpu_by_component: dict[str, float]  # CPU seconds used so far, processes that ended included


@dataclass
class Sampler:
    """Samples the process tree's resident memory every `interval` seconds in a daemon thread.

    The tree (and what each process is) is read again every `tree_every` seconds only: a scan of /proc is
    the costly part, and the processes of a run live long (a child is missed for at most that long).
    """

    interval: float = 0.1
    tree_every: float = 0.5
    root: int = field(default_factory=os.getpid)
    samples: list[Sample] = field(default_factory=list)
    cpu_seconds: float = 0.0
    _kinds: dict[int, str] = field(default_factory=dict)
    _cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # last seen, per process
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def refresh(self) -> None:
        # Classified anew each time: a launcher script's pid becomes the JVM's when it execs java.
        self._kinds = {pid: component(pid, self.root) for pid in process_tree(self.root)}

    def sample(self) -> Sample:
        by: dict[str, int] = {}
        for pid, kind in self._kinds.items():
            kib, cpu = rss_kib(pid), cpu_seconds(pid)
            if kib is not None:
                by[kind] = by.get(kind, 0) + kib
            if cpu is not None:
                self._cpu[pid] = (kind, cpu)
        cpu_by: dict[str, float] = {}
        for kind, cpu in self._cpu.values():
            cpu_by[kind] = cpu_by.get(kind, 0.0) + cpu
        return Sample(time.time(), sum(by.values()), by, cpu_by)

    def _run(self) -> None:
        cpu0, refreshed = time.thread_time(), 0.0
        while not self._stop.is_set():
            if time.monotonic() - refreshed >= self.tree_every:
                self.refresh()
                refreshed = time.monotonic()
            self.samples.append(self.sample())
            self._stop.wait(self.interval)
        self.refresh()
        self.samples.append(self.sample())
        self.cpu_seconds = time.thread_time() - cpu0

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


# -- step windows and figures --------------------------------------------------------------------------------


def find_flow_run(workdir: str) -> str | None:
    """The id of the newest `nightly` flow run given `workdir`: a run that failed or was stopped returns no
    result to read it from (the workdir is fresh, so the match is this script's run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return next((str(r.id) for r in runs if r.parameters.get("workdir") == workdir), None)


def task_windows(
    flow_run_id: str, wanted: set[str], ended: float, wait_s: float = 60.0
) -> dict[str, tuple[float, float]]:
    """(start, end) as Unix times of the flow run's task runs, by task name; a task run without an end (the
    run was stopped in it) ends at `ended`.

    Prefect records task-run states from events, which may land a moment after the flow returns: read again
    until every wanted task has both times, or `wait_s` has passed.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=flow_filter)
        windows, complete = {}, set()
        for run in runs:
            name = run.name.rsplit("-", 1)[0]  # task runs are named "<task name>-<n>"
            if run.start_time is not None:
                end = run.end_time.timestamp() if run.end_time is not None else ended
                windows[name] = (run.start_time.timestamp(), min(end, ended))
                if run.end_time is not None:
                    complete.add(name)
        if wanted <= complete or time.monotonic() > deadline:
            return windows
        time.sleep(1.0)


def peaks(samples: list[Sample]) -> dict[str, Any]:
    """Peak of the tree and of each component over `samples`, in MiB."""
    kinds = sorted({k for s in samples for k in s.by_component})
    return {
        "peak_mib": round(max(s.total_kib for s in samples) / MIB, 1),
        "peak_mib_by_component": {
            k: round(max(s.by_component.get(k, 0) for s in samples) / MIB, 1) for k in kinds
        },
        "samples": len(samples),
    }


def cpu_used(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """CPU seconds the tree used between the samples nearest `start` and `end`, in all and per component:
    more than the wall time means more than one core was busy for the run."""
    first = min(samples, key=lambda s: abs(s.t - start))
    last = min(samples, key=lambda s: abs(s.t - end))
    by = {
        k: round(v - first.cpu_by_component.get(k, 0.0), 1) for k, v in sorted(last.cpu_by_component.items())
    }
    return {"cpu_seconds": round(sum(by.values()), 1), "cpu_seconds_by_component": by}


def in_window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    """The samples taken inside [start, end]; for a window shorter than the sampling interval, the samples on
    either side of it (an upper bound)."""
    inside = [s for s in samples if start <= s.t <= end]
    if inside:
        return inside
    before = [s for s in samples if s.t < start][-1:]
    after = [s for s in samples if s.t > end][:1]
    return before + after


def step_figures(
    timings: dict[str, float], samples: list[Sample], windows: dict[str, tuple[float, float]], t0: float
) -> list[dict[str, Any]]:
    """One row per step that ran: its seconds as the flow timed them (Prefect's window where the flow did
    not get to record them, e.g. the step a stopped run was in) and the peaks of the samples in its window."""
    rows = []
    for key, task_name in STEPS:
        window = windows.get(task_name)
        if key not in timings and window is None:
            continue
        row: dict[str, Any] = {"step": key, "task": task_name}
        if key in timings:
            row["seconds"] = timings[key]
        else:
            row["seconds"], row["seconds_from"] = round(window[1] - window[0], 2), "prefect task run"
        if window is None:
            row["peak_mib"] = None  # Prefect did not record the task run's times: no memory figure
        else:
            row["window_s"] = [round(window[0] - t0, 2), round(window[1] - t0, 2)]
            row["prefect_seconds"] = round(window[1] - window[0], 2)
            row.update(peaks(in_window(samples, *window)))
            row.update(cpu_used(samples, *window))
        rows.append(row)
    return rows


def outside_steps(samples: list[Sample], windows: dict[str, tuple[float, float]]) -> list[Sample]:
    return [s for s in samples if not any(a <= s.t <= b for a, b in windows.values())]


def overhead_parts(windows: dict[str, tuple[float, float]], t0: float, wall: float) -> dict[str, Any]:
    """Where the time outside the steps went: before the first, between them (largest gap named), after the
    last (from the task runs' windows, so Prefect's own per-task cost counts as a gap)."""
    if not windows:
        return {}
    spans = sorted(windows.items(), key=lambda kv: kv[1][0])
    gaps = [(b[0], b[1][0] - a[1][1]) for a, b in zip(spans, spans[1:], strict=False)]
    widest = max(gaps, key=lambda g: g[1]) if gaps else (None, 0.0)
    return {
        "before_first_step_s": round(spans[0][1][0] - t0, 2),
        "between_steps_s": round(sum(g for _, g in gaps), 2),
        "widest_gap": {"before": widest[0], "seconds": round(widest[1], 2)},
        "after_last_step_s": round(t0 + wall - spans[-1][1][1], 2),
    }


def first_seen(samples: list[Sample], kind: str, t0: float) -> float | None:
    return next((round(s.t - t0, 2) for s in samples if kind in s.by_component), None)


# -- output --------------------------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def markdown(report: dict[str, Any]) -> str:
    status = report["status"]
    if status != "published":
        status += f" in step {report['steps'][-1]['step']}" if report["steps"] else " before the first step"
    lines = [
        f"{report['label']}: nightly for {report['date']}, {status} ({report['command']})",
        "",
        "| step | seconds | CPU s (tree) | peak MiB (tree) | Python MiB | JVM MiB | Prefect server MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, seconds: float, fig: dict[str, Any]) -> str:
        comp = fig.get("peak_mib_by_component", {})
        return (
            f"| {name} | {seconds:.1f} | {_cpu(fig.get('cpu_seconds'))} | {_mib(fig.get('peak_mib'))} "
            f"| {_mib(comp.get('python'))} "
            f"| {_mib(comp.get('jvm'))} | {_mib(comp.get('prefect_server'))} |"
        )

    for step in report["steps"]:
        lines.append(row(step["step"], step["seconds"], step))
    totals = report["totals"]
    lines.append(row("overhead (outside the steps)", totals["overhead_seconds"], totals["outside_steps"]))
    lines.append(row("**whole run**", totals["wall_seconds"], totals))
    parts = totals["overhead_parts"]
    lines += ["", f"steps {totals['steps_seconds']:.1f} s + overhead {totals['overhead_seconds']:.1f} s"]
    if parts:
        lines[-1] += (
            f": {parts['before_first_step_s']:.1f} s before the first step (Prefect start, flow run, runs row), "
            f"{parts['between_steps_s']:.1f} s between steps (widest {parts['widest_gap']['seconds']:.1f} s, "
            f"before {parts['widest_gap']['before']}), {parts['after_last_step_s']:.1f} s after the last "
            "(runs row, report, artifacts)"
        )
    lines += [
        f"Spark JVM first seen {totals['jvm_first_seen_s']} s after the call; Python's own peak (ru_maxrss) "
        f"{totals['python_ru_maxrss_mib']:,.0f} MiB; rows {report['row_counts']}",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "mem_total_gib": round(mem_total_kib() / MIB / MIB, 1),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            sys.exit(f"night_steps: {path} exists; the benchmark runs on a fresh workdir and warehouse")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The workdir and the warehouse must not exist yet: the script refuses to start otherwise "
        "and never deletes anything.",
    )
    parser.add_argument("--config", required=True, help="run config (TOML)")
    parser.add_argument("--landing", required=True, help="landing zone to read (never written)")
    parser.add_argument("--date", type=date.fromisoformat, required=True, help="run date, YYYY-MM-DD")
    parser.add_argument("--workdir", type=Path, required=True, help="fresh work directory (must not exist)")
    parser.add_argument("--warehouse", type=Path, required=True, help="fresh DuckDB file (must not exist)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--label", help="name of the measurement (default: the landing directory)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop the run (SIGINT) after this long and report the steps it reached (default: no limit)",
    )
    parser.add_argument("--interval", type=float, default=0.1, help="memory sampling period, s (default 0.1)")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("night_steps: Linux only (process memory is read from /proc)")
    refuse_existing(args.workdir, args.warehouse)

    # As `nightrec run` sets them: no telemetry, enough time for a cold embedded server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from flows.nightly import nightly
    from nightrec.config import load_config

    config = load_config(
        args.config, landing=args.landing, workdir=str(args.workdir), warehouse=str(args.warehouse)
    )
    command = shlex.join(["python", *sys.argv])
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped run still writes what it measured
    stopper, fired = None, threading.Event()

    def stop() -> None:
        fired.set()
        os.kill(os.getpid(), signal.SIGINT)

    if args.max_seconds:
        stopper = threading.Timer(args.max_seconds, stop)
        stopper.daemon = True
    load_before = os.getloadavg()
    t0 = time.time()
    result: dict[str, Any] | None = None
    error = None
    with Sampler(interval=args.interval) as sampler:
        start = time.perf_counter()
        if stopper:
            stopper.start()
        try:
            result = nightly(
                config_path=args.config,
                run_date=args.date,
                landing=args.landing,
                workdir=str(args.workdir),
                warehouse=str(args.warehouse),
                show_progress=False,
            )
        except BaseException as exc:  # noqa: BLE001 - a failed or stopped run is reported, then re-raised
            error = exc
        finally:
            if stopper:
                stopper.cancel()
        wall = time.perf_counter() - start
    load_after = os.getloadavg()
    samples = sampler.samples

    if result is not None:
        status, run_id, timings = result["status"], result["run_id"], result["step_timings"]
    else:
        # Spark may turn the interrupt into its own error: the timer's flag says whether it was a stop.
        stopped = fired.is_set() or isinstance(error, KeyboardInterrupt)
        status = "stopped" if stopped else "failed"
        run_id, timings = find_flow_run(str(args.workdir)), {}
        print(f"night_steps: the run {status} after {wall:.0f} s: {error!r}", file=sys.stderr)
    wanted = {t for k, t in STEPS if k in timings}
    windows = task_windows(run_id, wanted, t0 + wall, 60.0 if result else 5.0) if run_id else {}
    steps = step_figures(timings, samples, windows, t0)
    steps_seconds = sum(step["seconds"] for step in steps)
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:], strict=False)]
    report = {
        "label": args.label or Path(args.landing).name,
        "command": command,
        "cwd": os.getcwd(),
        "git_commit": git_commit(),
        "config": {"path": args.config, "resolved": config.model_dump(mode="json")},
        "landing": args.landing,
        "date": args.date.isoformat(),
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "status": status,
        "error": None if error is None else repr(error),
        "model_version": result["model_version"] if result else None,
        "row_counts": result["row_counts"] if result else {},
        "rows_published": result["row_counts"].get("recommendations") if result else None,
        "steps": steps,
        "totals": {
            "wall_seconds": round(wall, 2),
            "steps_seconds": round(steps_seconds, 2),
            "overhead_seconds": round(wall - steps_seconds, 2),
            "overhead_parts": overhead_parts(windows, t0, wall),
            **peaks(samples),
            **cpu_used(samples, samples[0].t, samples[-1].t),
            "outside_steps": peaks(outside_steps(samples, windows) or samples[:1]),
            "python_ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB, 1),
            "jvm_first_seen_s": first_seen(samples, "jvm", t0),
        },
        "sampling": {
            "interval_s": args.interval,
            "samples": len(samples),
            "largest_gap_s": round(max(gaps), 3) if gaps else None,
            "sampler_cpu_seconds": round(sampler.cpu_seconds, 2),
        },
        "timeline": [
            [round(s.t - t0, 2), round(s.total_kib / MIB, 1)] for s in samples[:: max(1, len(samples) // 600)]
        ],
    }
    steps_cpu = sum(step.get("cpu_seconds") or 0.0 for step in steps)
    report["totals"]["outside_steps"]["cpu_seconds"] = round(report["totals"]["cpu_seconds"] - steps_cpu, 1)
    table = markdown(report)
    print("\n" + table)
    report["markdown"] = table
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.json}")
    if error is not None:
        sys.exit(f"night_steps: the nightly run {status}: {error!r}")


if __name__ == "__main__":
    main()
