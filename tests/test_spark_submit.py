"""The feature job submitted with spark-submit, as a cluster would run it (here on a local master)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from jobs.generate import generate
from nightrec import schema as S

REPO = Path(__file__).resolve().parents[1]


def test_feature_job_runs_under_spark_submit(tmp_path):
    generate(tmp_path / "landing", users=40, items=20, days=5, seed=1, end_date=date(2026, 11, 1))
    config = (REPO / "configs/demo.toml").read_text().replace("min_examples = 1000", "min_examples = 10")
    (tmp_path / "config.toml").write_text(config)
    out = tmp_path / "features"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         str(REPO / "jobs/feature_job.py"), "--config", str(tmp_path / "config.toml"),
         "--date", "2026-11-01", "--landing", str(tmp_path / "landing"), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    examples = pq.read_table(out / S.EXAMPLES)
    assert examples.num_rows > 0
    assert max(examples.column(S.DAY).to_pylist()) < date(2026, 11, 1)
    assert pq.read_table(out / S.USERS).num_rows > 0 and pq.read_table(out / S.ITEMS).num_rows > 0
    assert "master=local[1]" in done.stdout, "spark-submit's master must win over the config's"
