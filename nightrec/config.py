"""The run configuration: one TOML file declares the data locations, the tasks and the knobs.

Tasks live in configuration, not code, so a team can add a label (say `purchase`) without touching
the model. Every name that later becomes a SQL identifier or a Parquet column is checked here, once,
against a strict pattern: the warehouse code can then quote it without building SQL from unchecked text.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def check_identifier(name: str) -> str:
    """Reject names that could not be used verbatim as a column name."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{name!r} must match {IDENTIFIER.pattern} (lower case letters, digits, underscores)"
        )
    return name


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    landing: str = Field(
        description="Landing zone (local path or any URI Spark reads) with events/, items/, users/."
    )
    workdir: str = Field(description="Per-run directories (features, model, data docs) are created under it.")
    warehouse: str = Field(
        description="Where recommendations are published: a DuckDB file path, or a postgresql:// URL without "
        "a password (the password comes from NIGHTREC_WAREHOUSE_PASSWORD / PGPASSWORD or a Prefect Secret block)."
    )
    warehouse_password_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding the PostgreSQL password."
    )
    parquet_output: str | None = Field(
        None, description="Also write published rows as Parquet partitioned by run_date under this URI."
    )


class SparkConfig(Strict):
    master: str = Field("local[*]", description="Any Spark master URL.")
    driver_memory: str = Field(
        "4g",
        description="Driver JVM memory (in local mode, all of Spark); under spark-submit the submitter's wins.",
    )
    shuffle_partitions: int = Field(
        4, ge=1, description="Partitions of Spark shuffles and the default parallelism: about 2-4 per core."
    )
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark settings, passed verbatim.")


class LabelRule(Strict):
    """Where a task's label comes from: events of the (user, item, day), or the categories of the item or of
    the user's history (the auxiliary multiclass tasks of the seed designs)."""

    source: Literal["events", "item_categories", "user_categories"] = Field(
        "events",
        description="events: the (user, item, day)'s events below; item_categories: the item's categories; "
        "user_categories: the categories of the user's history items as of the example (multiclass tasks only).",
    )
    event_types: list[str] = Field(
        default_factory=list, description="Event types that count for the label (any of them); source events."
    )
    min_value: float | None = Field(
        None, description="Only events with value >= min_value count (e.g. ratings of 4 or more)."
    )
    max_value: float | None = Field(None, description="Only events with value <= max_value count.")


class TaskConfig(Strict):
    name: str = Field(
        description="Lower-case identifier: the label column label_<name>, the published column p_<name>."
    )
    type: Literal["binary", "regression", "multiclass", "retrieval"] = Field(
        "binary",
        description="binary: 1 when the rule matches (BCE); regression: the matching event's value; "
        "multiclass: a distribution over the category vocabulary (cross-entropy), from a categories source; "
        "retrieval: a two-tower score (cosine of user and item vectors / temperature) trained with in-batch "
        "sampled softmax and "
        "logQ correction on the examples where the rule matches; it picks the candidates of two-stage scoring.",
    )
    regression_loss: Literal["mse", "huber"] = Field(
        "mse", description="Loss of a regression task: squared error, or Huber (delta 1) for heavy tails."
    )
    label: LabelRule = Field(description="Which events of a (user, item, day) make the label.")
    weight: float = Field(1.0, ge=0.0, description="Weight of this task's loss in the training objective.")
    parent: str | None = Field(
        None, description="ESMM: p(parent and this) = p(parent) x p(this | parent); loss on the joint."
    )
    parent_loss: Literal["joint", "conditional"] = Field(
        "joint",
        description="With a parent: joint (ESMM) trains p(parent and this) on every example; conditional "
        "trains p(this | parent) on the parent's positives only (what a judgement on the parent's events, "
        "such as the AUC over rated items, asks for). The prediction is the joint either way.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        return check_identifier(v)

    @model_validator(mode="after")
    def _label_fits_type(self) -> TaskConfig:
        from_events = self.label.source == "events"
        if (self.type == "multiclass") == from_events:
            raise ValueError(
                f"task {self.name!r}: a multiclass task takes label.source item_categories or user_categories, "
                "binary and regression tasks take label.source events"
            )
        if from_events and not self.label.event_types:
            raise ValueError(f"task {self.name!r}: label.event_types must name at least one event type")
        if self.type == "retrieval" and self.parent is not None:
            raise ValueError(f"task {self.name!r}: a retrieval task has no ESMM parent")
        if self.parent_loss == "conditional" and self.parent is None:
            raise ValueError(f"task {self.name!r}: parent_loss = 'conditional' needs a parent")
        return self

    @property
    def has_binary_label(self) -> bool:
        """Labelled 1/0 by its rule: binary tasks and the positives of a retrieval task."""
        return self.type in ("binary", "retrieval")


class FeaturesConfig(Strict):
    lookback_days: int = Field(
        90, ge=1, description="Events older than run_date - lookback_days are ignored."
    )
    windows: list[int] = Field(
        default_factory=lambda: [1, 7, 30], description="Activity/popularity windows, days."
    )
    history_length: int = Field(
        20, ge=1, description="Recent items kept per user (strictly before the example's moment)."
    )
    exposure_event_types: list[str] = Field(
        min_length=1, description="Events that make a (user, item, day) a training example."
    )
    user_features_as_of: Literal["moment", "day"] = Field(
        "moment",
        description="moment: an example's user features (history, counts, value stats) take the user's "
        "events before the pair's first event of the day, earlier events of the same session included; "
        "day: only events of earlier days (a user's first day then has no history at all).",
    )
    user_history_gap_minutes: int = Field(
        0,
        ge=0,
        description="Training examples' user features also leave out the user's events of this many minutes "
        "before the moment, so that a history ends some time before the events it is asked to predict, as "
        "it does at scoring (where the judged events come after the run date). Scoring is unchanged.",
    )
    negatives_per_positive: int = Field(
        0, ge=0, description="Sampled items the user had not interacted with as of that day, per exposure."
    )
    seen_event_types: list[str] = Field(
        min_length=1,
        description="Items a user had these events with are never recommended to that user again.",
    )
    value_stats: bool = Field(
        False,
        description="Add the mean and count of the values (e.g. ratings) of the user's and of the item's "
        "earlier events of the seen types as features (u_val_mean, u_val_n, i_val_mean, i_val_n).",
    )
    value_residuals: bool = Field(
        False,
        description="Add the mean and count of the user's earlier values, each less its item's mean value "
        "before that event's day (u_res_mean, u_res_n): how much more the user likes what they pick than "
        "others did, the user term of a user-plus-item bias model (the raw mean u_val_mean also holds the "
        "items' quality).",
    )


class ValidationConfig(Strict):
    event_types: list[str] = Field(min_length=1, description="The known event types; others fail validation.")
    value_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Allowed [min, max] of `value` per event type."
    )
    label_rate_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Allowed [min, max] positive rate per binary task in the examples."
    )
    min_examples: int = Field(
        100, ge=1, description="Fewest training examples a night accepts; fewer fail the features check."
    )


class ModelConfig(Strict):
    architecture: Literal["shared_bottom", "mmoe", "ple"] = Field(
        "mmoe",
        description="shared_bottom: one shared MLP under the task towers; mmoe: multi-gate mixture of experts; "
        "ple: progressive layered extraction (shared and task-specific experts over several levels).",
    )
    embedding_dim: int = Field(16, ge=2, description="Size of the user, item and category embeddings.")
    num_experts: int = Field(4, ge=1, description="MMoE: experts shared by the task towers.")
    ple_levels: int = Field(2, ge=1, description="PLE: extraction levels.")
    ple_shared_experts: int = Field(2, ge=1, description="PLE: shared experts per level.")
    ple_task_experts: int = Field(1, ge=1, description="PLE: experts of each task per level.")
    history_pooling: Literal["mean", "din"] = Field(
        "mean",
        description="How the user's recent items are pooled: mean, or target attention over the candidate (DIN).",
    )
    text_encoder: str = Field(
        "none",
        description="Item text features: none; auto (the packaged MiniLM sentence encoder when installed, else "
        "TF-IDF + SVD, said in the log); tfidf; or the path of a sentence-transformers model directory.",
    )
    text_dim: int = Field(
        64, ge=2, description="Size of the TF-IDF + SVD item text embedding (fallback encoder)."
    )
    loss_weighting: Literal["fixed", "uncertainty", "gradnorm", "pcgrad"] = Field(
        "fixed",
        description="fixed: the task weights; uncertainty: learned log-variances (Kendall et al.); gradnorm: "
        "balances gradient norms on a shared layer (Chen et al.); pcgrad: projects conflicting task gradients.",
    )
    gradnorm_alpha: float = Field(
        1.5, ge=0.0, description="GradNorm: strength of the pull towards equal rates."
    )
    gradnorm_layer: str | None = Field(
        None,
        description="GradNorm: name of the shared parameter whose gradient norms are balanced; default: the "
        "architecture's last shared layer.",
    )
    warm_start: bool = Field(
        True,
        description="Start from the champion's weights where the vocabularies allow (new ids: fresh rows).",
    )
    cpu_bf16: bool = Field(False, description="bf16 autocast on CPU too (fast on CPUs with AMX).")
    wide: bool = Field(
        False,
        description="Wide & deep: add a linear term of the dense features (counts, popularity, age, value "
        "means) to each binary and regression task's logit, a direct path the deep part may not learn.",
    )
    retrieval_hidden: list[int] = Field(
        default_factory=lambda: [64, 32],
        min_length=1,
        description="Retrieval task: layer sizes of the user tower and of the item tower; the last is the "
        "size of the vectors whose inner product is the score.",
    )
    retrieval_temperature: float = Field(
        0.05, gt=0.0, description="Retrieval task: the score is cosine(user, item) / temperature."
    )
    expert_hidden: list[int] = Field(
        default_factory=lambda: [64, 32], description="Hidden layer sizes of each expert."
    )
    tower_hidden: list[int] = Field(
        default_factory=lambda: [16], description="Hidden layer sizes of each task tower."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout in experts and towers.")
    epochs: int = Field(10, ge=1, description="Most training epochs; early stopping may end sooner.")
    batch_size: int = Field(2048, ge=1, description="Training examples per batch.")
    learning_rate: float = Field(2e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-5, ge=0.0, description="AdamW weight decay.")
    patience: int = Field(2, ge=0, description="Epochs without validation improvement before stopping.")
    validation_days: int = Field(
        3, ge=1, description="The last days before the run date form the validation slice."
    )
    early_stopping_examples: int = Field(
        200_000,
        ge=1,
        description="Validation examples that early stopping evaluates after each epoch: a fixed sample of the "
        "validation slice, drawn once with the seed (the whole slice when it is smaller). The held-out metrics "
        "and the champion gate use the whole slice.",
    )
    refit: bool = Field(
        False,
        description="After early stopping has chosen the epoch count on the validation slice, train again "
        "from the same start on every example up to the run date for that many epochs, and publish that model "
        "(the newest days are the most telling; the peers see them too). Held-out figures stay those of the "
        "first model.",
    )
    seed: int = Field(
        42,
        description="Seed of initialisation and shuffling: same data and seed, same model on a given device.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA with bf16 autocast when present, else CPU."
    )


class ScoringConfig(Strict):
    top_k: int = Field(
        50, ge=1, description="Recommendations per user (fewer when the user's unseen catalogue is smaller)."
    )
    blend: str | None = Field(
        None,
        description="Arithmetic over task names, e.g. 'click * purchase ** 0.5'. Default: product of the "
        "binary task probabilities.",
    )
    block_pairs: int = Field(
        32_768,
        ge=1,
        description="User-item pairs scored per block: a block holds block_pairs / (items or candidates per "
        "user) users, at least 1 and at most user_batch_size. It bounds a block's memory whatever the "
        "catalogue size, and about 32k pairs was also the fastest measured: 1.15-1.5x over blocks of 256 "
        "or 64 users (docs/benchmarks.md).",
    )
    user_batch_size: int = Field(
        256, ge=1, description="At most this many users per scoring block (see block_pairs)."
    )
    two_stage_min_pairs: int = Field(
        50_000_000,
        ge=0,
        description="With a retrieval task and at least this many users x items, score in two stages: the "
        "retrieval score picks retrieval_candidates items per user, the full model ranks only those.",
    )
    retrieval_candidates: int = Field(
        500, ge=1, description="Two-stage scoring: candidates per user from the retrieval stage."
    )
    candidate_popularity: float = Field(
        1.0,
        ge=0.0,
        description="Two-stage scoring: candidates are the items of highest retrieval score + this x log q, "
        "q the item's share of the retrieval task's training positives. Trained with the logQ correction, "
        "the score ranks items much like log p(item | user) / q, popularity left out, while the ranking "
        "model keeps it: 1 adds it back (recall of the full top 10 at 500 candidates on MovieLens 1M: 0.58 "
        "-> 0.96); 0 picks by the score alone.",
    )
    engine: Literal["local", "spark"] = Field(
        "local",
        description="local: score in the flow's process; spark: spread users over the Spark executors of "
        "spark.master (the model and catalogue are broadcast once, each executor scores its users' shard).",
    )
    spark_partitions: int | None = Field(
        None,
        ge=1,
        description="engine spark: user shards (Spark tasks); default: the cluster's default parallelism.",
    )


class NotifyConfig(Strict):
    webhook_url: str | None = Field(
        None,
        description="POSTed a JSON message when a run fails (or set NIGHTREC_WEBHOOK_URL; it may hold a token).",
    )


class OrchestrationConfig(Strict):
    train_deployment: str | None = Field(
        None,
        description="'flow/deployment' of the train flow on a GPU work pool; the nightly flow then trains through "
        "run_deployment. Unset: training runs in the nightly flow's own process.",
    )


class EvaluationConfig(Strict):
    """How a night's model is judged: the champion gate before publishing, the backtest after."""

    primary_metric: str = Field(
        "auto",
        pattern=r"^(auto|val_loss|[a-z][a-z0-9_]{0,39}\.(auc|logloss|rmse))$",
        description="What the champion gate compares on the new run's validation slice: auto (the first "
        "binary task's AUC, else val_loss), val_loss, or <task>.auc / <task>.logloss / <task>.rmse.",
    )
    tolerance: float = Field(
        0.002,
        ge=0.0,
        description="The new model replaces the champion unless its primary metric is worse by more than this.",
    )
    peers: bool = Field(True, description="Judge the peers (Pop, ItemKNN, EASE, bias) beside the model.")
    test_days: int = Field(14, ge=1, description="Days after the run date a backtest judges the night on.")
    k: int = Field(10, ge=1, description="Cut-off of the top-K metrics (Recall@K, NDCG@K, Hit@K).")


class ReliabilityConfig(Strict):
    """How much bad input a night tolerates before it fails (docs/reliability.md)."""

    max_rejected_share: float = Field(
        0.001,
        ge=0.0,
        le=1.0,
        description="Largest share of the window's events that may fail a row-level check and be quarantined "
        "to <run_dir>/rejected/ (with the reason per row); more fails the run naming the checks.",
    )
    volume_tolerance: float | None = Field(
        None,
        gt=0.0,
        description="Allowed relative change of the last day's event count against the median of the 7 days "
        "before it (0.5: between half and 1.5 times); unset: no volume check.",
    )
    volume_policy: Literal["fail", "warn"] = Field(
        "fail",
        description="What a day beyond volume_tolerance does: fail the run, or log a warning and go on.",
    )


class Config(Strict):
    data: DataConfig
    spark: SparkConfig = Field(default_factory=SparkConfig)
    features: FeaturesConfig
    validation: ValidationConfig
    tasks: list[TaskConfig] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)

    @model_validator(mode="after")
    def _tasks_consistent(self) -> Config:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        for t in self.tasks:
            if t.parent is not None:
                parent = next((p for p in self.tasks if p.name == t.parent), None)
                if parent is None:
                    raise ValueError(f"task {t.name!r}: parent {t.parent!r} is not a task")
                if parent.type != "binary" or t.type != "binary":
                    raise ValueError(f"task {t.name!r}: ESMM parent and child must both be binary")
                if names.index(t.parent) > names.index(t.name):
                    raise ValueError(f"task {t.name!r}: its parent must be declared before it")
        unknown = (
            {e for t in self.tasks for e in t.label.event_types}
            | set(self.features.exposure_event_types)
            | set(self.features.seen_event_types)
        )
        missing = unknown - set(self.validation.event_types)
        if missing:
            raise ValueError(
                f"event types used but not declared in validation.event_types: {sorted(missing)}"
            )
        retrieval = [t.name for t in self.tasks if t.type == "retrieval"]
        if len(retrieval) > 1:
            raise ValueError(f"at most one retrieval task (it picks the candidates); got {retrieval}")
        if retrieval and self.scoring.retrieval_candidates < self.scoring.top_k:
            raise ValueError(
                f"scoring.retrieval_candidates ({self.scoring.retrieval_candidates}) must be at least "
                f"top_k ({self.scoring.top_k})"
            )
        if retrieval and self.model.loss_weighting == "gradnorm":
            # The retrieval towers bypass the shared layer GradNorm balances: its gradient there is always 0.
            raise ValueError("model.loss_weighting = 'gradnorm' does not apply to a retrieval task")
        return self

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def run_dir(self, run_date: date) -> Path:
        """`<workdir>/runs/<run date>`: features, data docs, report; a rerun of the date reuses it."""
        return Path(self.data.workdir) / "runs" / run_date.isoformat()


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s values, tables merged key by key and everything else replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def read_toml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The TOML file's tables, on top of the file its top-level `extends` names (relative to it), if any.

    Why: a config for another data set is usually its base with a setting or two changed; saying only those
    keeps the difference visible and the rest in one place. Arrays of tables (`[[tasks]]`) replace the base's.
    """
    path = path.resolve()
    if path in _chain:
        raise ValueError(f"`extends` loops back to {path}")
    if _chain and not path.is_file():
        raise ValueError(f"`extends` names {path}, which is not a file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        if not _chain:
            raise
        raise ValueError(f"the base config {path} (from `extends`) is not valid TOML: {exc}") from exc
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ValueError(f"`extends` in {path} must be a file name, not {parent!r}")
    return merged(read_toml(path.parent / parent, (*_chain, path)), raw)


def load_config(path: str | Path, **overrides: str | None) -> Config:
    """Read a TOML config (and the one it `extends`); `landing`, `workdir` and `warehouse` overrides replace
    the [data] entries.

    Relative paths stay relative to the current directory, as with any command line tool.
    """
    raw = read_toml(Path(path))
    data = raw.setdefault("data", {})
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return Config.model_validate(raw)
