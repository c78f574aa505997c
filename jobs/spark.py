"""One SparkSession per process, configured from the run config: local[*] by default, any master by URL."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightrec.config import SparkConfig

log = logging.getLogger(__name__)

warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def get_spark(cfg: SparkConfig | None = None, app_name: str = "nightrec"):
    """Return the active session, or build one.

    Settings that only take effect before the JVM starts (driver memory, log config) are applied here;
    a session already running in the process is reused as is, which is what tests and the flow want.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    cfg = cfg or SparkConfig()
    # Under spark-submit the JVM already runs with the submitter's master and memory: those win.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    scratch = Path(tempfile.gettempdir()) / "nightrec-spark"
    scratch.mkdir(parents=True, exist_ok=True)
    log4j = scratch / "log4j2.properties"
    log4j.write_text(_LOG4J)
    os.environ.setdefault("SPARK_LOCAL_DIRS", str(scratch / "local"))
    local = cfg.master.startswith("local") and not submitted
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (sharded scoring) run this interpreter, with its packages, not whatever
        # `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.default.parallelism", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{log4j}")
    )
    if local:
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config(
            "spark.driver.host", "127.0.0.1"
        )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_running() -> bool:
    """Whether this process has a live SparkContext (one the caller started, or a test's shared session)."""
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def stop_spark() -> None:
    """Stop the session and end the driver JVM that this process launched, handing its memory back.

    `SparkSession.stop()` alone leaves the JVM (the py4j gateway, with the heap it grew to) alive until
    Python exits: in local mode that is all of Spark's memory, gigabytes on a large night. The JVM exits
    when its stdin closes (pyspark's launcher opens that pipe for exactly this); the next `get_spark` then
    launches a fresh one. A JVM this process did not launch (spark-submit's) is left running.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    # The session may have been built on another thread (a Prefect task's): not "active" on this one.
    session = SparkSession.getActiveSession() or SparkSession._instantiatedSession
    if session is not None:
        session.stop()
    elif SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    gateway = SparkContext._gateway
    launched = getattr(gateway, "proc", None)
    if gateway is None or launched is None:
        return
    gateway.shutdown()
    launched.stdin.close()
    launched.wait(timeout=60)
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None


@contextmanager
def spark_steps(release: bool) -> Iterator[None]:
    """A block of steps that use Spark. With `release`, a session started inside the block is stopped at
    its end, JVM included, whether the block succeeds or fails; a session that was already running (a
    test's, a caller's that will use it again) is left as it is.

    Why: the nightly run needs Spark only for its first steps, and in local mode the driver JVM otherwise
    holds its heap through training and scoring (6.2 GiB of a 14.6 GiB peak on the tier-M night).
    """
    started_here = not spark_running()
    try:
        yield
    finally:
        if release and started_here and spark_running():
            try:
                stop_spark()
            except Exception:  # a JVM that died in a step must not replace that step's error with its own
                log.warning("could not stop the Spark session", exc_info=True)
