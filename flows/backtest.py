"""The `backtest` flow: replay the nightly run on past dates and judge each night on the days that followed.

Each date is a `nightly` subflow run, exactly as a scheduled night (features, training, champion gate,
scoring, publishing the date's rows), so the backtest judges what the nightly would have published. A date
already published is judged as it stands unless `force` (a night replaces its own rows, so a rerun never
duplicates them). Each night is then judged by the protocol of the evaluation notes
(`model.peers.evaluate_night`) beside the peers on the same judged users; with `single_task`, the same
network is also trained on each binary task alone (same features, same seed) and judged the same way, to
show what the multi-task model gains or loses per task.

The table goes to `<workdir>/backtest/` (or `out`) as backtest.json and backtest.md: one block per date and
the overall figures, the top-K means over every judged (date, user) pair and each AUC pooled over every
judged test event, as the notes compute them.
"""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.nightly import nightly
from flows.store import open_store, published_dates
from model.metrics import roc_auc
from model.peers import NightJudgement, Ranker, evaluate_night, judged_event_types
from nightrec.config import Config, TaskConfig, load_config

TOPK = ("recall", "ndcg", "hit")


def night_rankers(cfg: Config, run_date: date) -> dict[str, Ranker]:
    """The published rows of `run_date` and their model (from the runs table) as the ranker `model`."""
    from model.pair_scores import score_pairs

    with open_store(cfg, read_only=True) as wh:
        recs = wh.recommendations_for(run_date)
    if recs.empty:
        raise ValueError(f"nothing published for {run_date} (`nightrec runs` lists the runs)")
    versions = recs["model_version"].unique()
    if len(versions) != 1:
        raise ValueError(f"the rows of {run_date} come from several models: {sorted(versions)}")
    model_dir = Path(cfg.data.workdir) / "models" / versions[0]
    features = cfg.run_dir(run_date) / "features"
    return {"model": Ranker(recs, lambda pairs: score_pairs(model_dir, features, cfg, pairs))}


def single_task_config(cfg: Config, task_cfg: TaskConfig) -> Config:
    """`cfg` with `task_cfg` as its only task (no ESMM parent) and that task's probability as the score."""
    raw = cfg.model_dump(mode="json")
    raw["tasks"] = [{**task_cfg.model_dump(mode="json"), "parent": None}]
    raw["scoring"]["blend"] = task_cfg.name
    return Config.model_validate(raw)


def single_task_rankers(cfg: Config, run_date: date, show_progress: bool) -> dict[str, Ranker]:
    """The same network trained on each binary task alone, on the night's features: `model[<task> only]`."""
    from model.pair_scores import score_pairs
    from model.score import score_users
    from model.train import train_model

    features = cfg.run_dir(run_date) / "features"
    root = Path(cfg.data.workdir) / "backtest" / "single_task_models"
    out = {}
    for task_cfg in cfg.tasks:
        if task_cfg.type != "binary":
            continue
        one = single_task_config(cfg, task_cfg)
        model_dir = train_model(features, one, run_date, root, show_progress=show_progress).model_dir
        recs = score_users(model_dir, features, one, show_progress=show_progress)
        out[f"model[{task_cfg.name} only]"] = Ranker(
            recs, lambda pairs, d=model_dir, c=one: score_pairs(d, features, c, pairs)
        )
    return out


@task(name="judge-night", cache_policy=NO_CACHE)
def judge_step(
    cfg: Config, run_date: date, single_task: bool, show_progress: bool
) -> tuple[NightJudgement, str]:
    """The night judged beside the peers (and the single-task models), and the version that published it."""
    rankers = night_rankers(cfg, run_date)
    version = str(rankers["model"].recs["model_version"].iloc[0])
    if single_task:
        rankers.update(single_task_rankers(cfg, run_date, show_progress))
    return evaluate_night(cfg, run_date, rankers, peers=cfg.evaluation.peers), version


def overall(nights: list[NightJudgement], k: int) -> dict[str, dict[str, float]]:
    """Top-K metrics averaged over every judged (date, user) pair; coverage and new-item share averaged over
    dates; each AUC pooled over every judged test event of every date."""
    out: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(name for n in nights for name in n.metrics))
    for name in names:
        rows = [n.metrics[name] for n in nights if name in n.metrics]
        entry: dict[str, Any] = {}
        if any("users" in r for r in rows):  # a ranker judged on its top K (the bias peer only gives an AUC)
            users = entry["users"] = sum(r.get("users", 0) for r in rows)
            for m in TOPK:
                key = f"{m}@{k}"
                judged = [(r[key], r["users"]) for r in rows if r.get("users")]
                entry[key] = sum(v * u for v, u in judged) / users if users else math.nan
        for key in ("coverage", "new_item_share"):
            if any(key in r for r in rows):
                values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
                entry[key] = float(np.mean(values)) if values else math.nan
        tasks = dict.fromkeys(t for n in nights for t in n.auc_inputs.get(name, {}))
        for t in tasks:
            parts = [n.auc_inputs[name][t] for n in nights if t in n.auc_inputs.get(name, {})]
            entry[f"auc_{t}"] = roc_auc(
                np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            )
        out[name] = entry
    return out


def _columns(table: dict[str, dict[str, Any]], k: int) -> list[str]:
    present = {c for values in table.values() for c in values}
    fixed = ["users", *(f"{m}@{k}" for m in TOPK), "coverage", "new_item_share"]
    return [c for c in fixed if c in present] + sorted(c for c in present if c.startswith("auc_"))


def _markdown_table(table: dict[str, dict[str, Any]], k: int) -> list[str]:
    columns = _columns(table, k)
    lines = ["| ranker | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in table.items():
        cells = [_cell(values.get(c), c) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(int(value)) if column == "users" else f"{value:.4f}"


def render_markdown(result: dict[str, Any]) -> str:
    """The backtest table as markdown: overall first, then one block per date."""
    k = result["k"]
    lines = [
        f"# Backtest of {result['config']}",
        "",
        f"Run dates: {', '.join(n['run_date'] for n in result['nights'])}. Each night is judged on the "
        f"{result['test_days']} days after it ({', '.join(result['judged_on'])} events); see docs/backtest.md.",
        "",
        "## Overall",
        "",
        "Top-K: mean over every judged (date, user) pair; coverage, new-item share: mean over dates; "
        "AUC: pooled over every judged test event.",
        "",
        *_markdown_table(result["overall"], k),
    ]
    for n in result["nights"]:
        lines += [
            "",
            f"## {n['run_date']} (model {n['model_version']})",
            "",
            *_markdown_table(n["metrics"], k),
        ]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Whole files only: readers never see half a table."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@flow(name="backtest", log_prints=True)
def backtest(
    config_path: str,
    dates: list[date],
    out: str | None = None,
    single_task: bool = False,
    force: bool = False,
    landing: str | None = None,
    workdir: str | None = None,
    warehouse: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Publish each date as the nightly would (unless already published), judge it, write the table."""
    logger = get_run_logger()
    if not dates:
        raise ValueError("a backtest needs at least one run date")
    cfg = load_config(config_path, landing=landing, workdir=workdir, warehouse=warehouse)
    done = set() if force else published_dates(cfg)
    nights, versions = [], {}
    for run_date in sorted(set(dates)):
        if run_date not in done:
            nightly(
                config_path=config_path,
                run_date=run_date,
                landing=landing,
                workdir=workdir,
                warehouse=warehouse,
                show_progress=show_progress,
            )
        else:
            logger.info("%s is already published: judged as it stands", run_date)
        judged, versions[run_date] = judge_step(cfg, run_date, single_task, show_progress)
        nights.append(judged)

    k = cfg.evaluation.k
    result = {
        "config": str(config_path),
        "k": k,
        "test_days": cfg.evaluation.test_days,
        "judged_on": judged_event_types(cfg),
        "overall": overall(nights, k),
        "nights": [
            {"run_date": n.run_date.isoformat(), "model_version": versions[n.run_date], "metrics": n.metrics}
            for n in nights
        ],
    }
    out_dir = Path(out) if out else Path(cfg.data.workdir) / "backtest"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "backtest.json", json.dumps(_json_safe(result), indent=2, allow_nan=False))
    _write(out_dir / "backtest.md", render_markdown(result))
    result["files"] = [str(out_dir / "backtest.json"), str(out_dir / "backtest.md")]
    logger.info("backtest of %d dates written to %s", len(nights), out_dir)
    return result


def _json_safe(value: Any) -> Any:
    """NaN (a metric undefined on the data) as null: NaN is not JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
