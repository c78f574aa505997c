"""From the feature job's Parquet (see `nightrec.schema`) to tensors, built once and column-wise.

Every conversion here is vectorised over Arrow/numpy buffers: string ids are mapped with
`pyarrow.compute.index_in`, list columns become padded matrices through their flattened values and
lengths. No Python loop runs per example, so a few million examples convert in seconds.

Index 0 of every vocabulary means "unknown or padding": a user or item that appears at scoring time but
was not in the training vocabulary still gets a (neutral) representation instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from nightrec import schema
from nightrec.config import Config, TaskConfig

# Rows per batch when the examples are streamed (load_training_data): a few hundred MB of Arrow at most.
READ_BATCH_ROWS = 262_144


def _dataset(features_dir: Path, name: str) -> ds.Dataset:
    """One dataset of the features directory: a directory of part files (`_SUCCESS` and dot files ignored)."""
    path = Path(features_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the feature job writes the {name!r} dataset there")
    return ds.dataset(path, format="parquet", partitioning="hive")


def _date_day(table: pa.Table) -> pa.Table:
    """`day` as date32: a Spark writer partitioned by day would otherwise hand it back as a string key."""
    if schema.DAY in table.column_names and table.schema.field(schema.DAY).type != pa.date32():
        idx = table.column_names.index(schema.DAY)
        table = table.set_column(idx, schema.DAY, pc.cast(table.column(schema.DAY), pa.date32()))
    return table


def read_features(features_dir: Path, name: str) -> pa.Table:
    """Read one dataset of the features directory whole."""
    return _date_day(_dataset(features_dir, name).to_table())


def read_feature_batches(
    features_dir: Path, name: str, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pa.Table]:
    """One dataset of the features directory, at most `batch_rows` rows at a time: what streams the examples
    instead of holding them as one Arrow table (string ids and id lists take several times the memory of the
    tensors they become)."""
    for batch in _dataset(features_dir, name).to_batches(batch_size=batch_rows):
        yield _date_day(pa.Table.from_batches([batch]))


def require_columns(table: pa.Table | pa.Schema, columns: list[str] | tuple[str, ...], what: str) -> None:
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; present: {names}")


def _as_string(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return values if values.type == pa.string() else pc.cast(values, pa.string())


class Vocabulary:
    """Sorted distinct strings; token k of the list has index k + 1, index 0 is unknown/padding."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self._values = pa.array(tokens, pa.string())

    @classmethod
    def build(cls, *columns: pa.Array | pa.ChunkedArray) -> Self:
        """Sorted so that the same data always gives the same indices (and the same trained weights)."""
        chunks: list[pa.Array] = []
        for column in map(_as_string, columns):
            chunks.extend(column.chunks if isinstance(column, pa.ChunkedArray) else [column])
        distinct = pc.unique(pa.chunked_array(chunks, pa.string())).drop_null()
        return cls(distinct.take(pc.sort_indices(distinct)).to_pylist())

    @property
    def size(self) -> int:
        """Rows of the embedding table: the tokens plus the unknown/padding row."""
        return len(self.tokens) + 1

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int32 indices (0 for unknown or null), int32 to halve the memory of large history matrices."""
        idx = pc.index_in(_as_string(values), value_set=self._values)
        return (pc.fill_null(idx, -1).to_numpy(zero_copy_only=False) + 1).astype(np.int32)


@dataclass(frozen=True)
class Vocabularies:
    users: Vocabulary
    items: Vocabulary
    categories: Vocabulary

    def sizes(self) -> dict[str, int]:
        return {"users": self.users.size, "items": self.items.size, "categories": self.categories.size}

    def to_json(self) -> dict[str, list[str]]:
        return {"users": self.users.tokens, "items": self.items.tokens, "categories": self.categories.tokens}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> Self:
        return cls(Vocabulary(data["users"]), Vocabulary(data["items"]), Vocabulary(data["categories"]))


def _list_label_columns(table_schema: pa.Schema) -> list[str]:
    """The `label_<task>` columns that hold category lists: the labels of multiclass tasks."""
    return [
        name
        for name in table_schema.names
        if name.startswith(schema.LABEL_PREFIX) and pa.types.is_list(table_schema.field(name).type)
    ]


@dataclass(frozen=True)
class FeatureLayout:
    """Which columns feed the model and how they are scaled: saved with the model, reused at scoring.

    Dense values are transformed by sign(x) * log1p(|x|) (log1p for the non-negative counts of the
    contract, still finite for a negative value), then standardised with the training mean and std.
    The item text encoder and its requested size are kept so that scoring embeds titles the same way.
    """

    user_dense: tuple[str, ...]
    item_dense: tuple[str, ...]
    history_length: int
    max_categories: int
    mean: dict[str, float]
    std: dict[str, float]
    text_encoder: str = "none"
    text_dim: int = 0  # the size asked of the encoder (model.text_dim)
    text_width: int = 0  # the width it returned: the input of the model's text projection

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_dense": list(self.user_dense),
            "item_dense": list(self.item_dense),
            "history_length": self.history_length,
            "max_categories": self.max_categories,
            "mean": self.mean,
            "std": self.std,
            "text_encoder": self.text_encoder,
            "text_dim": self.text_dim,
            "text_width": self.text_width,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            user_dense=tuple(data["user_dense"]),
            item_dense=tuple(data["item_dense"]),
            history_length=int(data["history_length"]),
            max_categories=int(data["max_categories"]),
            mean={k: float(v) for k, v in data["mean"].items()},
            std={k: float(v) for k, v in data["std"].items()},
            text_encoder=str(data.get("text_encoder", "none")),  # models from before text features
            text_dim=int(data.get("text_dim", 0)),
            text_width=int(data.get("text_width", 0)),
        )


def dense_columns(table_schema: pa.Schema, prefix: str, exclude: str) -> tuple[str, ...]:
    """The `u_*` / `i_*` feature columns, by the naming convention of the contract; sorted for stability."""
    names = sorted(n for n in table_schema.names if n.startswith(prefix) and n != exclude)
    bad = [
        n
        for n in names
        if not pa.types.is_integer(table_schema.field(n).type)
        and not pa.types.is_floating(table_schema.field(n).type)
    ]
    if bad:
        raise ValueError(
            f"feature columns {bad} must be numeric (schema contract: {prefix}* columns are dense)"
        )
    return tuple(names)


def _log_dense(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """[N, D] float64: nulls and non-finite values count as 0 (no activity), then signed log1p."""
    out = np.zeros((table.num_rows, len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        x = pc.fill_null(pc.cast(table.column(name), pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        out[:, j] = np.sign(x) * np.log1p(np.abs(x))
    return out


@dataclass(frozen=True)
class ItemText:
    """Text embeddings of the `title` of every row of `items/`, looked up by item id."""

    encoder: str
    dim: int
    ids: pa.Array  # item ids, in the order of the rows of `vectors`
    vectors: np.ndarray  # [n_items, D] float32

    def rows_for(self, item_ids: pa.Array | pa.ChunkedArray) -> torch.Tensor:
        """[N, D] embeddings of the given items; zeros for an item that is not in `items/`."""
        rows = pc.fill_null(pc.index_in(_as_string(item_ids), value_set=self.ids), -1).to_numpy(
            zero_copy_only=False
        )
        padded = np.vstack([self.vectors, np.zeros((1, self.vectors.shape[1]), np.float32)])
        return torch.from_numpy(padded[rows])  # -1 picks the zero row


def item_text(items: pa.Table, encoder: str, dim: int, cache_dir: Path) -> ItemText | None:
    """Embed each item's title and description once per night; None when text features are off (`encoder`
    "none"). The encoder caches by text, so only new or changed items cost anything."""
    if encoder == "none":
        return None
    # heavy (sentence encoders): imported only when used
    from model.text_encoder import item_text as join_text
    from model.text_encoder import item_text_embeddings

    require_columns(items, [schema.ITEM_ID, schema.TITLE], "items")
    titles = _as_string(items.column(schema.TITLE)).to_pylist()
    texts = (
        _as_string(items.column(schema.TEXT)).to_pylist()
        if schema.TEXT in items.column_names
        else [None] * items.num_rows
    )
    joined = [join_text(title, text) for title, text in zip(titles, texts, strict=True)]
    vectors = np.asarray(item_text_embeddings(joined, encoder, dim, Path(cache_dir)), dtype=np.float32)
    if vectors.shape[0] != items.num_rows:
        raise ValueError(
            f"text encoder {encoder!r} returned {vectors.shape[0]} rows for {items.num_rows} items"
        )
    return ItemText(encoder, dim, _as_string(items.column(schema.ITEM_ID)).combine_chunks(), vectors)


def text_cache_dir(cfg: Config) -> Path:
    """Where the text encoder keeps what it may reuse between nights: `<workdir>/text-cache`."""
    return Path(cfg.data.workdir) / "text-cache"


class _Moments:
    """Mean and population std per column, merged batch by batch (Chan et al.'s pairwise update), so the
    normalisation statistics need one batch of examples in memory, not all of them."""

    def __init__(self, width: int):
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


class _ExampleScan:
    """One pass over the examples, batch by batch: the distinct ids and categories the vocabularies need,
    the longest category list, and the dense columns' statistics over the training rows (day < cutoff)."""

    def __init__(self, table_schema: pa.Schema, cutoff: np.datetime64):
        self.user_dense = dense_columns(table_schema, schema.USER_PREFIX, schema.HISTORY)
        self.item_dense = dense_columns(table_schema, schema.ITEM_PREFIX, schema.CATEGORIES)
        self.list_labels = _list_label_columns(table_schema)
        self.cutoff = cutoff
        self.users: list[pa.Array] = []
        self.items: list[pa.Array] = []
        self.categories: list[pa.Array] = []
        self.max_categories = 0
        self.moments = _Moments(len(self.user_dense) + len(self.item_dense))

    def add(self, batch: pa.Table) -> None:
        self.users.append(pc.unique(_as_string(batch.column(schema.USER_ID)).combine_chunks()))
        self.items.append(
            pc.unique(
                pa.chunked_array(
                    [
                        _as_string(batch.column(schema.ITEM_ID)).combine_chunks(),
                        _as_string(pc.list_flatten(batch.column(schema.HISTORY))).combine_chunks(),
                    ],
                    pa.string(),
                )
            )
        )
        for column in [schema.CATEGORIES, *self.list_labels]:
            self.categories.append(
                pc.unique(_as_string(pc.list_flatten(batch.column(column))).combine_chunks())
            )
        lengths = pc.max(pc.list_value_length(batch.column(schema.CATEGORIES))).as_py() or 0
        self.max_categories = max(self.max_categories, lengths)
        train = batch.column(schema.DAY).to_numpy() < self.cutoff
        self.moments.add(_log_dense(batch, self.user_dense + self.item_dense)[train])

    def vocabularies(self, users: pa.Table, items: pa.Table) -> Vocabularies:
        """Users and items of the examples and of the run-date tables; history items share the item table.

        Categories also come from the multiclass labels: a user's history may hold an item no longer in
        `items/`, and its categories must still be classes of the target distribution.
        """
        return Vocabularies(
            users=Vocabulary.build(*self.users, users.column(schema.USER_ID)),
            items=Vocabulary.build(
                *self.items, items.column(schema.ITEM_ID), pc.list_flatten(users.column(schema.HISTORY))
            ),
            categories=Vocabulary.build(*self.categories, pc.list_flatten(items.column(schema.CATEGORIES))),
        )

    def layout(self, items: pa.Table, history_length: int, text: ItemText | None) -> FeatureLayout:
        """Feature columns from the examples; normalisation statistics from the training rows only."""
        require_columns(items, [schema.CATEGORIES], "items")
        item_categories = pc.max(pc.list_value_length(items.column(schema.CATEGORIES))).as_py() or 0
        columns = self.user_dense + self.item_dense
        std = self.moments.std()
        std = np.where(std < 1e-6, 1.0, std)  # a constant column stays at 0 instead of dividing by ~0
        return FeatureLayout(
            user_dense=self.user_dense,
            item_dense=self.item_dense,
            history_length=history_length,
            max_categories=max(1, self.max_categories, item_categories),
            mean={c: float(m) for c, m in zip(columns, self.moments.mean, strict=True)},
            std={c: float(s) for c, s in zip(columns, std, strict=True)},
            **(
                {}
                if text is None
                else {"text_encoder": text.encoder, "text_dim": text.dim, "text_width": text.vectors.shape[1]}
            ),
        )


def _normalised_dense(table: pa.Table, columns: tuple[str, ...], layout: FeatureLayout) -> torch.Tensor:
    x = _log_dense(table, columns)
    mean = np.array([layout.mean[c] for c in columns], dtype=np.float64)
    std = np.array([layout.std[c] for c in columns], dtype=np.float64)
    return torch.from_numpy(((x - mean) / std).astype(np.float32)).reshape(table.num_rows, len(columns))


def padded_indices(column: pa.ChunkedArray, vocab: Vocabulary, width: int, keep_last: bool) -> torch.Tensor:
    """A list<string> column as an [N, width] int32 matrix of vocabulary indices, padded with 0.

    Longer lists are cut: `keep_last` keeps the newest entries of a history (newest last in the
    contract), otherwise the first ones. Null lists are empty rows.
    """
    n = len(column)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = vocab.lookup(pc.list_flatten(column))
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(values.size, dtype=np.int64) - np.repeat(starts, lengths)
    if keep_last:
        pos -= np.repeat(np.maximum(lengths - width, 0), lengths)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = (pos >= 0) & (pos < width)
    out = np.zeros((n, width), dtype=np.int32)
    out[rows[keep], pos[keep]] = values[keep]
    return torch.from_numpy(out)


class TensorGroup:
    """Tensors sharing their first dimension, sliced and moved together (batches are index slices)."""

    def apply(self, fn) -> Self:
        def one(value):
            if value is None:  # an optional tensor the data does not have
                return None
            return value.apply(fn) if isinstance(value, TensorGroup) else fn(value)

        return type(self)(**{f.name: one(getattr(self, f.name)) for f in fields(self)})  # type: ignore[arg-type]

    def take(self, index: torch.Tensor | slice) -> Self:
        return self.apply(lambda t: t[index])

    def to(self, device: torch.device | str) -> Self:
        return self.apply(lambda t: t.to(device, non_blocking=True))

    @classmethod
    def cat(cls, groups: list[Self]) -> Self:
        """The rows of `groups` one after the other (groups of the same type, with the same optional parts)."""

        def one(values: list):
            if values[0] is None:
                return None
            if isinstance(values[0], TensorGroup):
                return type(values[0]).cat(values)
            return torch.cat(values)

        kind = type(groups[0])
        return kind(**{f.name: one([getattr(g, f.name) for g in groups]) for f in fields(kind)})  # type: ignore[arg-type]

    def write_rows(self, start: int, part: Self) -> None:
        """Copy the rows of `part` (a group of the same kind and shapes) into this group from row `start` on."""
        for f in fields(self):  # type: ignore[arg-type]
            mine, theirs = getattr(self, f.name), getattr(part, f.name)
            if isinstance(mine, TensorGroup):
                mine.write_rows(start, theirs)
            elif mine is not None:
                mine[start : start + len(theirs)] = theirs

    def __len__(self) -> int:
        first = getattr(self, fields(self)[0].name)  # type: ignore[arg-type]
        return len(first)


@dataclass
class UserTensors(TensorGroup):
    user: torch.Tensor  # [N] int32
    history: torch.Tensor  # [N, L] int32, 0 = padding
    dense: torch.Tensor  # [N, Du] float32, normalised


@dataclass
class ItemTensors(TensorGroup):
    item: torch.Tensor  # [N] int32
    categories: torch.Tensor  # [N, C] int32, 0 = padding
    dense: torch.Tensor  # [N, Di] float32, normalised
    text: torch.Tensor | None = (
        None  # [N, D] float32 item text embedding; None: the model has no text features
    )


@dataclass
class ExampleTensors(TensorGroup):
    users: UserTensors
    items: ItemTensors
    labels: torch.Tensor  # [N, T] float32, 0 where missing (and for multiclass tasks)
    label_mask: torch.Tensor  # [N, T] bool: the example carries this task's label
    class_targets: (
        torch.Tensor
    )  # [N, M, C] float32: target distribution of each multiclass task (0 if masked)


def user_tensors(table: pa.Table, vocab: Vocabularies, layout: FeatureLayout) -> UserTensors:
    require_columns(table, [schema.USER_ID, schema.HISTORY, *layout.user_dense], "user features")
    return UserTensors(
        user=torch.from_numpy(vocab.users.lookup(table.column(schema.USER_ID))),
        history=padded_indices(
            table.column(schema.HISTORY), vocab.items, layout.history_length, keep_last=True
        ),
        dense=_normalised_dense(table, layout.user_dense, layout),
    )


def item_tensors(
    table: pa.Table, vocab: Vocabularies, layout: FeatureLayout, text: ItemText | None = None
) -> ItemTensors:
    """`text` is the item text of the `items/` table; rows of `table` are matched to it by item id."""
    require_columns(table, [schema.ITEM_ID, schema.CATEGORIES, *layout.item_dense], "item features")
    if layout.text_width and text is None:
        raise ValueError(f"the model uses item text ({layout.text_encoder}), but no item text was given")
    return ItemTensors(
        item=torch.from_numpy(vocab.items.lookup(table.column(schema.ITEM_ID))),
        categories=padded_indices(
            table.column(schema.CATEGORIES), vocab.categories, layout.max_categories, keep_last=False
        ),
        dense=_normalised_dense(table, layout.item_dense, layout),
        text=text.rows_for(table.column(schema.ITEM_ID)) if layout.text_width else None,
    )


def label_tensors(table: pa.Table, tasks: list[TaskConfig]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T] labels and mask; a null label (a regression example without the event) is masked out.

    A multiclass task's label is 0 here (its target is in `class_targets`), masked out where its list is
    null or empty.
    """
    columns = [schema.label_column(t.name) for t in tasks]
    require_columns(table, columns, "examples")
    values = np.stack(
        [
            np.where(
                pc.fill_null(pc.list_value_length(table.column(c)), 0).to_numpy(zero_copy_only=False) > 0,
                0.0,
                np.nan,
            )
            if t.type == "multiclass"
            else pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False)
            for t, c in zip(tasks, columns, strict=True)
        ],
        axis=1,
    ).reshape(table.num_rows, len(columns))
    mask = ~np.isnan(values)
    return torch.from_numpy(np.where(mask, values, 0.0).astype(np.float32)), torch.from_numpy(mask)


def category_distribution(column: pa.ChunkedArray, vocab: Vocabulary) -> np.ndarray:
    """[N, C] float32: each row's category counts (repeats count) normalised to sum 1; index 0 stays 0, and
    a row with no known category is all zeros."""
    n = len(column)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    index = vocab.lookup(pc.list_flatten(column)).astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    counts = np.zeros((n, vocab.size), dtype=np.float64)
    np.add.at(counts, (rows, index), 1.0)
    counts[:, 0] = 0.0
    total = counts.sum(axis=1, keepdims=True)
    return (counts / np.where(total > 0, total, 1.0)).astype(np.float32)


def class_target_tensor(
    table: pa.Table, tasks: list[TaskConfig], vocab: Vocabularies
) -> tuple[torch.Tensor, np.ndarray]:
    """([N, M, C] targets of the M multiclass tasks, [N, M] bool rows with a target)."""
    targets = [
        category_distribution(table.column(schema.label_column(t.name)), vocab.categories)
        for t in tasks
        if t.type == "multiclass"
    ]
    out = (
        np.stack(targets, axis=1)
        if targets
        else np.zeros((table.num_rows, 0, vocab.categories.size), np.float32)
    )
    return torch.from_numpy(out), out.sum(axis=2) > 0


def example_tensors(
    table: pa.Table,
    vocab: Vocabularies,
    layout: FeatureLayout,
    tasks: list[TaskConfig],
    text: ItemText | None = None,
) -> ExampleTensors:
    labels, mask = label_tensors(table, tasks)
    targets, has_target = class_target_tensor(table, tasks, vocab)
    multiclass = [t for t, task in enumerate(tasks) if task.type == "multiclass"]
    mask[:, multiclass] &= torch.from_numpy(has_target)  # a list of unknown categories only: no target
    return ExampleTensors(
        users=user_tensors(table, vocab, layout),
        items=item_tensors(table, vocab, layout, text),
        labels=labels,
        label_mask=mask,
        class_targets=targets,
    )


def read_examples_since(features_dir: Path, first_day: date) -> pa.Table:
    """The examples on or after `first_day` (a validation slice), filtered batch by batch so that the
    earlier days are never held in memory."""
    since = pa.scalar(first_day, pa.date32())
    parts = [
        batch.filter(pc.greater_equal(batch.column(schema.DAY), since))
        for batch in read_feature_batches(features_dir, schema.EXAMPLES)
    ]
    return pa.concat_tables(parts) if parts else read_features(features_dir, schema.EXAMPLES)


def split_by_day(days: np.ndarray, run_date: date, validation_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (train, validation): validation is every example on or after the cutoff day.

    A time split, not a random one: the model is used on days after its training data, so it is judged
    on the most recent days it has not seen.
    """
    cutoff = np.datetime64(run_date - timedelta(days=validation_days), "D")
    if days.size and np.isnat(days).any():
        raise ValueError("examples: `day` has nulls; every example must have its day")
    span = f"the examples span {days.min()} .. {days.max()}" if days.size else "there are no examples"
    if days.size and days.max() >= np.datetime64(run_date, "D"):
        # The feature job only emits days before D; anything later would train on the future it is judged on.
        raise ValueError(f"examples on or after the run date {run_date}: {span}; features must end before it")
    is_val = days >= cutoff
    if not is_val.any():
        raise ValueError(
            f"no validation examples: none on or after {cutoff} (run date {run_date}, "
            f"model.validation_days={validation_days}); {span}"
        )
    if is_val.all():
        raise ValueError(
            f"no training examples: none before {cutoff} (run date {run_date}, "
            f"model.validation_days={validation_days}); {span}"
        )
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass(frozen=True)
class TrainingData:
    vocab: Vocabularies
    layout: FeatureLayout
    examples: ExampleTensors  # every example, sorted by (day, user, item): `train` then `val`
    train: ExampleTensors  # a view of the first rows of `examples`
    val: ExampleTensors  # a view of the rest
    first_day: date
    last_day: date


def load_training_data(
    features_dir: Path, cfg: Config, run_date: date, batch_rows: int = READ_BATCH_ROWS
) -> TrainingData:
    """Everything training needs: vocabularies, feature layout, train/validation tensors.

    The examples are streamed twice, `batch_rows` at a time (once for vocabularies and statistics, once into
    tensors allocated up front), so the peak is the compact tensors plus one batch, never the whole Arrow
    table. The rows are then sorted by (day, user, item), in place one tensor at a time: Spark writes part
    files in no fixed row order, and a seed must fix the batches. Sorted by day, the training rows come
    first and both slices are views, not copies.
    """
    examples = _dataset(features_dir, schema.EXAMPLES)
    require_columns(
        examples.schema,
        [schema.USER_ID, schema.ITEM_ID, schema.DAY, schema.HISTORY, schema.CATEGORIES],
        "examples",
    )
    days = _date_day(examples.to_table(columns=[schema.DAY])).column(schema.DAY).to_numpy()
    train_rows, _ = split_by_day(days, run_date, cfg.model.validation_days)
    n_train, n = len(train_rows), len(days)
    first_day, last_day = days.min().astype(object), days.max().astype(object)
    del days, train_rows
    scan = _ExampleScan(
        examples.schema, np.datetime64(run_date - timedelta(days=cfg.model.validation_days), "D")
    )
    for batch in read_feature_batches(features_dir, schema.EXAMPLES, batch_rows):
        scan.add(batch)
    items = read_features(features_dir, schema.ITEMS)
    vocab = scan.vocabularies(read_features(features_dir, schema.USERS), items)
    text = item_text(items, cfg.model.text_encoder, cfg.model.text_dim, text_cache_dir(cfg))
    layout = scan.layout(items, cfg.features.history_length, text)
    del scan, items

    full: ExampleTensors | None = None
    day_parts, start = [], 0
    for batch in read_feature_batches(features_dir, schema.EXAMPLES, batch_rows):
        part = example_tensors(batch, vocab, layout, cfg.tasks, text)
        if full is None:
            full = part.apply(lambda t: t.new_empty((n, *t.shape[1:])))
        full.write_rows(start, part)
        day_parts.append(batch.column(schema.DAY).to_numpy())
        start += len(part)
    if full is None or start != n:
        raise RuntimeError(f"the examples changed while they were read: {n} rows, then {start}")
    order = torch.from_numpy(
        np.lexsort((full.items.item.numpy(), full.users.user.numpy(), np.concatenate(day_parts)))
    )
    full.apply(lambda t: t.copy_(t[order]))  # one tensor's copy at a time, not the whole group's
    return TrainingData(
        vocab=vocab,
        layout=layout,
        examples=full,
        train=full.take(slice(0, n_train)),
        val=full.take(slice(n_train, n)),
        first_day=first_day,
        last_day=last_day,
    )
