"""The feature step of a nightly run: landing zone in, the run directory's feature Parquet out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from jobs import features, landing
from nightrec import schema as S
from nightrec.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """The events a run may use: [start, run_date)."""

    start: date
    run_date: date

    @classmethod
    def for_run(cls, cfg: Config, run_date: date) -> Window:
        return cls(run_date - timedelta(days=cfg.features.lookback_days), run_date)


def load_inputs(spark: SparkSession, cfg: Config, window: Window) -> tuple[DataFrame, DataFrame]:
    events = landing.read_events(spark, cfg.data.landing, window.start, window.run_date)
    items = landing.read_items(spark, cfg.data.landing)
    return events, items


def write_features(
    events: DataFrame,
    items: DataFrame,
    cfg: Config,
    run_date: date,
    out_dir: Path,
    progress: Callable[[str], None] = log.info,
) -> dict[str, int]:
    """Build examples and the scoring inputs from validated events; write them under `out_dir`.

    The explicit `ts < run_date` filter repeats what validation already guarantees, because leakage is the
    one mistake a recommender cannot see in its own metrics. Each output is one Spark job, described as such
    in the Spark UI, and `progress` gets one line per output with its rows and seconds (the examples take
    most of the time), so a long feature step shows where it is.
    """
    from pyspark.sql import functions as F

    usable = features.with_day(events.where(F.col("ts") < F.lit(run_date).cast("timestamp"))).cache()
    # Cached: every feature of the examples starts from these pairs (ML-1M: examples in 16-23 s, not 37-46).
    labelled = features.labelled_pairs(usable, items, cfg).cache()
    context = usable.sparkSession.sparkContext
    try:
        outputs = {
            S.EXAMPLES: features.with_example_features(labelled, usable, items, cfg),
        }
        users, item_feats, seen = features.scoring_inputs(usable, items, cfg, run_date)
        outputs.update({S.USERS: users, S.ITEMS: item_feats, S.SEEN: seen})
        counts = {}
        for step, (name, frame) in enumerate(outputs.items(), start=1):
            started = time.perf_counter()
            context.setJobDescription(f"nightrec features {run_date}: {name}")
            path = str(out_dir / name)
            frame.write.mode("overwrite").parquet(path)
            counts[name] = frame.sparkSession.read.parquet(path).count()
            progress(
                f"features {step}/{len(outputs)}: {name} {counts[name]} rows in "
                f"{time.perf_counter() - started:.1f} s"
            )
        return counts
    finally:
        context.setJobDescription(None)
        labelled.unpersist()
        usable.unpersist()


def main(argv: list[str] | None = None) -> int:
    """Entry point for `spark-submit jobs/feature_job.py`: the feature step alone, on any Spark cluster.

    The master and executor settings come from spark-submit (or the config's [spark] section when run with
    plain python); validation runs first, as in the nightly flow, so a cluster never builds on bad input.
    """
    import argparse

    from jobs.spark import get_spark
    from jobs.validation import validate_events
    from nightrec.config import load_config

    parser = argparse.ArgumentParser(prog="feature_job", description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--date", required=True, type=date.fromisoformat)
    parser.add_argument("--out", required=True, help="features directory to write")
    parser.add_argument("--landing", help="override [data] landing")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, landing=args.landing)
    window = Window.for_run(cfg, args.date)
    spark = get_spark(cfg.spark, app_name="nightrec-features")
    events, items = load_inputs(spark, cfg, window)
    out = Path(args.out)
    validate_events(events, cfg, window.start, window.run_date, out.parent / "data_docs")
    counts = write_features(events, items, cfg, args.date, out, progress=lambda line: print(line, flush=True))
    print(f"master={spark.sparkContext.master}", *(f"{name}={n}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
