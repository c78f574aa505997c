"""The nightly run's Spark session: released after the Spark steps when this run started it, else kept."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO

# Run in a process of its own: the suite's shared session must not be the one that is stopped.
_RELEASE = textwrap.dedent(
    """
    import json, threading
    from pyspark import SparkContext
    from jobs.spark import get_spark, spark_running, spark_steps
    from nightrec.config import SparkConfig

    cfg = SparkConfig(master="local[1]", driver_memory="512m", shuffle_partitions=1)
    counted = []
    with spark_steps(release=True):
        # Built on another thread, as a Prefect task may: the release happens on this one.
        step = threading.Thread(target=lambda: counted.append(get_spark(cfg).range(5).count()))
        step.start()
        step.join()
        rows = counted[0]
        jvm = SparkContext._gateway.proc
    released = not spark_running()
    jvm_exit = jvm.poll()
    again = get_spark(cfg).range(3).count()  # a later night in the same process starts a new JVM
    new_jvm = SparkContext._gateway.proc.pid != jvm.pid
    print(json.dumps(dict(rows=rows, released=released, jvm_exit=jvm_exit, again=again, new_jvm=new_jvm)))
    """
)


def test_a_session_started_in_the_spark_steps_is_stopped_with_its_jvm():
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["rows"] == 5
    assert found["released"] is True
    assert found["jvm_exit"] is not None, "the driver JVM is still running after the Spark steps"
    assert found["again"] == 3 and found["new_jvm"] is True


def test_a_session_that_was_running_before_is_kept(spark):
    from jobs.spark import get_spark, spark_running, spark_steps

    with spark_steps(release=True):
        assert get_spark().range(4).count() == 4
    assert spark_running()
    assert get_spark() is spark
    assert spark.range(2).count() == 2


_JVM_DIES = textwrap.dedent(
    """
    from pyspark import SparkContext
    from jobs.spark import get_spark, spark_steps
    from nightrec.config import SparkConfig

    cfg = SparkConfig(master="local[1]", driver_memory="512m", shuffle_partitions=1)
    try:
        with spark_steps(release=True):
            get_spark(cfg).range(2).count()
            jvm = SparkContext._gateway.proc
            jvm.kill()  # the JVM dies in a step (out of memory, killed)
            jvm.wait()
            raise ValueError("the step's own error")
    except ValueError as exc:
        print("raised:", exc)
    """
)


def test_a_dead_jvm_does_not_hide_the_steps_own_error():
    done = subprocess.run(
        [sys.executable, "-c", _JVM_DIES], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "raised: the step's own error" in done.stdout
