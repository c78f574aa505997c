"""The `train` flow: the training step alone, deployable on a GPU work pool.

The nightly flow builds the features on CPU workers (Spark) and, when `[orchestration] train_deployment`
names this flow's deployment, asks a GPU worker to train through `run_deployment`. Nothing large travels
through Prefect: both flows read and write the same run directory on shared storage (the config's
`workdir`, mounted at the same path on every worker), and this flow writes a small JSON result there,
`<workdir>/runs/<run date>/train_result.json`, which names the model directory it wrote.

The result is read from that file rather than from Prefect's result storage, which lives on the worker
that ran the flow and is not shared. It carries the flow run id, so a caller never mistakes the result
of an earlier run for the one it triggered.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from nightrec.config import Config, load_config

log = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"


@dataclass(frozen=True)
class TrainedModel:
    """What scoring and the runs log need from a training run: JSON-safe, written beside the features."""

    model_dir: str
    version: str
    metrics: dict[str, Any]
    run_date: str
    n_train: int
    n_val: int
    flow_run_id: str | None = None
    device: str | None = None

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)  # readers never see half a file
        return path

    @classmethod
    def read(cls, run_dir: Path) -> TrainedModel:
        return cls(**json.loads((Path(run_dir) / RESULT_FILE).read_text()))


def train_in_process(
    cfg: Config,
    run_date: date,
    show_progress: bool,
    flow_run_id: str | None = None,
    warm_from: str | None = None,
) -> TrainedModel:
    """Train on `<run dir>/features`, save under `<workdir>/models/`, write the JSON result.

    `warm_from` is the champion's model version: training starts from its weights where the shapes and
    vocabularies allow. A champion whose directory is gone (pruned, another workdir) is no reason to fail
    the night: training then starts from scratch, said in the log.
    """
    from model.train import train_model

    run_dir = cfg.run_dir(run_date)
    models = Path(cfg.data.workdir) / "models"
    warm_dir = None if warm_from is None else models / warm_from
    if warm_dir is not None and not warm_dir.is_dir():
        log.warning("champion %s has no model directory under %s: training from scratch", warm_from, models)
        warm_dir = None
    result = train_model(
        run_dir / "features", cfg, run_date, models, show_progress=show_progress, warm_start_from=warm_dir
    )
    meta = json.loads((result.model_dir / "meta.json").read_text())
    trained = TrainedModel(
        model_dir=str(result.model_dir),
        version=result.version,
        metrics=result.metrics,
        run_date=run_date.isoformat(),
        n_train=result.n_train,
        n_val=result.n_val,
        flow_run_id=flow_run_id,
        device=meta.get("device"),
    )
    trained.write(run_dir)
    return trained


@flow(name="train", log_prints=True)
def train(
    config_path: str,
    run_date: date,
    workdir: str | None = None,
    show_progress: bool = False,
    warm_from: str | None = None,
) -> dict[str, Any]:
    """Train the model for `run_date` from the features already in its run directory (and from the
    champion's weights, `warm_from` naming its version)."""
    cfg = load_config(config_path, workdir=workdir)
    run_id = str(flow_run.get_id() or uuid.uuid4())
    trained = train_in_process(cfg, run_date, show_progress, flow_run_id=run_id, warm_from=warm_from)
    get_run_logger().info("model %s trained on %s for %s", trained.version, trained.device, run_date)
    return asdict(trained)


def train_remotely(
    deployment: str,
    config_path: str,
    run_date: date,
    workdir: str | None,
    cfg: Config,
    warm_from: str | None = None,
) -> TrainedModel:
    """Run the `train` deployment, wait for it, and return the result it wrote to the run directory."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        name=deployment,
        parameters={
            "config_path": config_path,
            "run_date": run_date.isoformat(),
            "workdir": workdir,
            "show_progress": False,
            "warm_from": warm_from,
        },
        timeout=None,
    )
    state = run.state
    if state is None or not state.is_completed():
        ended = f"{state.name}: {state.message}" if state is not None else "without a state"
        raise RuntimeError(f"training deployment {deployment!r} (flow run {run.name}) ended {ended}")
    trained = TrainedModel.read(cfg.run_dir(run_date))
    if trained.flow_run_id != str(run.id):
        raise RuntimeError(
            f"{RESULT_FILE} in {cfg.run_dir(run_date)} was written by flow run {trained.flow_run_id}, "
            f"not by the training run {run.id}: is the workdir shared between the workers?"
        )
    return trained
