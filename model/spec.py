"""What a trained model is: sizes, architecture, tasks; stored in meta.json so a checkpoint is weights only.

Any architecture is rebuilt from its `ModelSpec` alone (`model.architectures.build_model`), so a model
directory written by one night is loaded by the scorer, the report or the next night's warm start without
the config that trained it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Self

from model.data import FeatureLayout
from nightrec.config import Config


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str  # "binary" | "regression" | "multiclass" | "retrieval"
    weight: float
    parent: int | None  # index of the ESMM parent task, always an earlier task
    regression_loss: str = "mse"  # "mse" | "huber"; regression tasks only
    parent_loss: str = "joint"  # "joint" (ESMM) | "conditional"; tasks with a parent only


@dataclass(frozen=True)
class ModelSpec:
    n_users: int
    n_items: int
    n_categories: int  # rows of the category table; also the classes of a multiclass task (index 0 unused)
    n_user_dense: int
    n_item_dense: int
    embedding_dim: int
    num_experts: int
    expert_hidden: tuple[int, ...]
    tower_hidden: tuple[int, ...]
    dropout: float
    tasks: tuple[TaskSpec, ...]
    architecture: str = "mmoe"  # "shared_bottom" | "mmoe" | "ple"
    ple_levels: int = 2
    ple_shared_experts: int = 2
    ple_task_experts: int = 1
    history_pooling: str = "mean"  # "mean" | "din"
    n_text: int = 0  # width of the item text embedding fed to the item part; 0 = no text features
    retrieval_hidden: tuple[int, ...] = (64, 32)  # user and item tower widths of a retrieval task
    retrieval_temperature: float = 0.05
    wide: bool = False  # a linear term of the dense features added to each task's logit

    def __post_init__(self) -> None:
        if not self.expert_hidden:
            raise ValueError("model.expert_hidden needs at least one layer size")

    @classmethod
    def from_config(cls, cfg: Config, vocab_sizes: dict[str, int], layout: FeatureLayout) -> Self:
        names = cfg.task_names()
        mc = cfg.model
        return cls(
            n_users=vocab_sizes["users"],
            n_items=vocab_sizes["items"],
            n_categories=vocab_sizes["categories"],
            n_user_dense=len(layout.user_dense),
            n_item_dense=len(layout.item_dense),
            embedding_dim=mc.embedding_dim,
            num_experts=mc.num_experts,
            expert_hidden=tuple(mc.expert_hidden),
            tower_hidden=tuple(mc.tower_hidden),
            dropout=mc.dropout,
            tasks=tuple(
                TaskSpec(
                    t.name,
                    t.type,
                    t.weight,
                    None if t.parent is None else names.index(t.parent),
                    t.regression_loss,
                    t.parent_loss,
                )
                for t in cfg.tasks
            ),
            architecture=mc.architecture,
            ple_levels=mc.ple_levels,
            ple_shared_experts=mc.ple_shared_experts,
            ple_task_experts=mc.ple_task_experts,
            history_pooling=mc.history_pooling,
            n_text=layout.text_width,
            retrieval_hidden=tuple(mc.retrieval_hidden),
            retrieval_temperature=mc.retrieval_temperature,
            wide=mc.wide,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        values = dict(data)
        values["expert_hidden"] = tuple(values["expert_hidden"])
        values["tower_hidden"] = tuple(values["tower_hidden"])
        if "retrieval_hidden" in values:
            values["retrieval_hidden"] = tuple(values["retrieval_hidden"])
        values["tasks"] = tuple(TaskSpec(**t) for t in values["tasks"])
        return cls(**values)
