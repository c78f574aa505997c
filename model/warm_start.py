"""Warm start: begin a night's training from the champion's weights instead of from a random init.

The vocabularies change every night (new users, new items), so embedding tables are not copied as
blocks: each row is carried by its token, from the champion's index of that token to tonight's. A token
the champion never saw keeps its freshly initialised row. Every other parameter is copied when its name
and shape match, and skipped with a log line when they do not (a changed layer size, another
architecture), so a warm start never fails a run that a cold start would have completed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from model.checkpoint import load_weights
from model.data import Vocabularies

log = logging.getLogger(__name__)

# Which vocabulary indexes the rows of each embedding table (state_dict name -> Vocabularies field).
# An architecture that adds an id-indexed table must name it here, or its rows are copied by position.
EMBEDDING_VOCABULARIES = {
    "user_embedding.weight": "users",
    "item_embedding.weight": "items",
    "category_embedding.weight": "categories",
}


def carried_rows(old: Any, new: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows in the new table, rows in the old table) of the tokens both vocabularies hold.

    Row k + 1 holds token k in both (row 0 is unknown/padding and is never carried).
    """
    old_index = old.lookup(pa.array(new.tokens, pa.string())).astype(np.int64)
    known = np.flatnonzero(old_index > 0)
    return torch.from_numpy(known + 1), torch.from_numpy(old_index[known])


def warm_start(model: nn.Module, source: Path, vocab: Vocabularies) -> dict[str, Any]:
    """Copy what fits of the model directory `source` into `model` (in place); returns a summary for meta.json.

    The champion's directory is verified against its manifest before anything is read.
    """
    old_state, old_meta, old_vocab = load_weights(source)
    copied, skipped = 0, []
    rows: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, param in model.state_dict().items():  # shares storage with the module: copies land in it
            old = old_state.get(name)
            table = EMBEDDING_VOCABULARIES.get(name)
            if old is None:
                skipped.append(name)
                log.info("warm start: %s is new (not in the champion), initialised fresh", name)
            elif table is not None and old.shape[1:] == param.shape[1:]:
                new_rows, old_rows = carried_rows(getattr(old_vocab, table), getattr(vocab, table))
                param[new_rows] = old[old_rows].to(param.dtype)
                rows[table] = [len(new_rows), param.shape[0] - 1]
                copied += 1
                log.info(
                    "warm start: %s: %d of %d rows carried over by token, %d new rows fresh",
                    table,
                    len(new_rows),
                    param.shape[0] - 1,
                    param.shape[0] - 1 - len(new_rows),
                )
            elif old.shape == param.shape:
                param.copy_(old)
                copied += 1
            else:
                skipped.append(name)
                log.info(
                    "warm start: %s skipped: shape %s in the champion, %s now",
                    name,
                    tuple(old.shape),
                    tuple(param.shape),
                )
    log.info(
        "warm start from %s (version %s): %d tensors copied, %d skipped",
        source,
        old_meta.get("version"),
        copied,
        len(skipped),
    )
    return {
        "from": str(source),
        "version": old_meta.get("version"),
        "copied": copied,
        "skipped": skipped,
        "rows": rows,
    }
