"""Fault injection: a subprocess killed with SIGKILL at a chosen point (NIGHTREC_FAULT, jobs/reliability.py).

SIGKILL runs no `finally`, no `atexit`, no rollback: what is left is what a crashed node leaves. Each test
checks that readers still see the previous complete state and that the retry finishes the work exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_warehouse import D1, D2, backend, postgres_url, recs, run  # noqa: F401 (fixtures)

from jobs.reliability import FAULT_ENV, RunLocked, clear_complete, is_complete, mark_complete, run_lock

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this tree's modules (and the tests' helpers) importable."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PUBLISH_D2 = """
    from test_warehouse import D2, recs, run
    from jobs.warehouse import open_warehouse
    with open_warehouse({target!r}) as wh:
        print(wh.publish(D2, recs(users=("n1", "n2", "n3"), item_prefix="new"), run("r2", D2)))
"""


@pytest.mark.parametrize("point", ["publish:after-insert", "publish:before-commit"])
def test_killed_during_publish_keeps_the_previous_run_and_the_retry_publishes_once(backend, point):  # noqa: F811
    with backend.open() as wh:
        wh.publish(D1, recs(), run("r1", D1))
        before = wh.latest()

    killed = run_python(PUBLISH_D2.format(target=backend.target), fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with backend.open(read_only=True) as wh:
        assert wh.latest().equals(before)  # the previous run, complete
        assert wh.published_dates() == [D1]
        assert wh.recommendations_for(D2).empty
        assert "r2" not in set(wh.runs().run_id)

    retry = run_python(PUBLISH_D2.format(target=backend.target))
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.split() == ["6"]
    with backend.open(read_only=True) as wh:
        latest = wh.latest()
        assert sorted(zip(latest.user_id, latest["rank"], strict=True)) == [
            (u, r) for u in ("n1", "n2", "n3") for r in (1, 2)
        ]
        assert wh.runs().set_index("run_id").status.to_dict() == {"r1": "published", "r2": "published"}
        assert len(wh.recommendations_for(D1)) == len(before)  # the older date is kept as it was


TRAIN = """
    import json
    from datetime import date
    from pathlib import Path
    from test_model import make_config
    from jobs.reliability import fault_point
    from model.train import train_model
    root = Path({root!r})
    cfg = make_config(root, epochs=4, patience=10)
    result = train_model(
        root / "features", cfg, date.fromisoformat({run_date!r}), root / "models", show_progress=False,
        on_epoch=lambda entry: fault_point(f"train:after-epoch-{{entry['epoch']}}"),
    )
    print(json.dumps(json.loads((result.model_dir / "meta.json").read_text())["resumed_after_epoch"]))
"""


def test_training_killed_after_an_epoch_resumes_from_its_checkpoint(tmp_path):
    from test_model import RUN_DATE, make_features

    make_features(tmp_path / "features")
    code = TRAIN.format(root=str(tmp_path), run_date=RUN_DATE.isoformat())
    killed = run_python(code, fault="train:after-epoch-2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((tmp_path / "models").glob(".resume-*.pt")), "the killed run leaves its per-epoch state"

    retry = run_python(code)
    assert retry.returncode == 0, retry.stderr
    assert json.loads(retry.stdout.split()[-1]) == 2  # it went on after epoch 2, not from zero
    assert not list((tmp_path / "models").glob(".resume-*.pt"))


HOLD_LOCK = """
    import sys, time
    from jobs.reliability import run_lock
    with run_lock({run_dir!r}):
        print("locked", flush=True)
        time.sleep(120)
"""


def test_a_second_run_of_a_date_is_refused_while_one_holds_it_and_a_killed_holder_frees_it(tmp_path):
    run_dir = tmp_path / "runs" / "2026-11-01"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_LOCK.format(run_dir=str(run_dir)))],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match="locked by another run of this date"), run_lock(run_dir):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing anything itself
        holder.wait(timeout=30)
    with run_lock(run_dir):  # the kernel released the lock with the process
        assert oct(run_dir.stat().st_mode & 0o777) == oct(0o700)


def test_a_step_output_counts_as_complete_only_once_marked(tmp_path):
    """The features step clears the marker, writes, then marks: a kill in between leaves no marker."""
    out = tmp_path / "features"
    out.mkdir()
    mark_complete(out, {"examples": 3})
    assert is_complete(out)
    clear_complete(out)  # a rerun starts: what is there is no longer a finished output
    (out / "part-0.parquet").write_bytes(b"half")
    assert not is_complete(out)
    mark_complete(out, {"examples": 4})
    assert json.loads((out / "_NIGHTREC_COMPLETE").read_text()) == {"examples": 4}
