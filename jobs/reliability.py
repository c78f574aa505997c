"""Small primitives that keep a night safe to kill and to rerun (docs/reliability.md).

- `fault_point(name)`: the fault-injection hook. With NIGHTREC_FAULT set to `name` the process kills itself
  with SIGKILL right there (no cleanup, no finally, no atexit: what a crashed node or an OOM kill does), so a
  test can prove that a kill at that point loses nothing. Unset, it is one dictionary lookup.
- `run_lock(run_dir)`: one run of a date at a time on this machine. The deployment's concurrency limit
  serialises scheduled runs; this also refuses a manual or a second backfill run of the same date, which
  would otherwise overwrite the first run's features and model while it reads them.
- `mark_complete` / `is_complete` / `clear_complete`: a step's output directory counts as finished only once
  its marker is written, after everything in it; a run clears the marker before it rewrites the directory.
  A run killed half-way therefore leaves output that no later reader takes for complete.
- `private_dir`: directories holding user data (run directories, rejected rows) readable by the owner only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FAULT_ENV = "NIGHTREC_FAULT"
LOCK_FILE = ".run.lock"
COMPLETE_MARKER = "_NIGHTREC_COMPLETE"


def fault_point(name: str) -> None:
    """SIGKILL this process when NIGHTREC_FAULT names this point (tests only; see docs/reliability.md)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class RunLocked(RuntimeError):
    """Another process is running the same date."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` for the block, or raise RunLocked at once.

    An flock, so the kernel releases it when the holder dies, even by SIGKILL: a killed run never leaves a
    stale lock behind for its retry.
    """
    run_dir = private_dir(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{run_dir} is locked by another run of this date; wait for it to finish (or fail)"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing and make it readable by its owner only."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def clear_complete(output: Path) -> None:
    """Say `output` is being rewritten: remove its completion marker if it has one."""
    (Path(output) / COMPLETE_MARKER).unlink(missing_ok=True)


def mark_complete(output: Path, summary: dict[str, Any] | None = None) -> None:
    """Mark `output` finished; call after the last file in it is written. The summary is kept in the marker."""
    marker = Path(output) / COMPLETE_MARKER
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(summary or {}, sort_keys=True))
    tmp.replace(marker)  # atomic: a reader sees no marker or a whole one


def is_complete(output: Path) -> bool:
    return (Path(output) / COMPLETE_MARKER).is_file()


def require_complete(output: Path, step: str) -> None:
    """Raise unless `output` carries its completion marker (written by `step`)."""
    if not is_complete(output):
        raise RuntimeError(
            f"{output} has no {COMPLETE_MARKER} marker: the {step} step did not finish there; rerun the date"
        )
