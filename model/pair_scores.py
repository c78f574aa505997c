"""Per-task probabilities and the blended score of given (user, item) pairs, with a run's model and features.

What `model.score.score_users` computes for every user x item, for chosen pairs only: the same encoders
(`model.data.user_tensors` / `item_tensors` with the model's vocabularies and scaling), the same network and
the same blend (`model.score.compile_blend`). A pair's score therefore equals the published score of that
user's recommendation of the item, up to float rounding. Used by `nightrec score-pairs` and to judge a task's
AUC on the test events of a backtest, which are mostly outside anyone's top K.

A user or item missing from the run's feature tables gets the unknown-row representation: vocabulary index 0,
no history or categories, zero activity counts. The `known` column says whether both ids are in the model's
vocabularies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.checkpoint import load_model
from model.data import FeatureLayout, item_tensors, item_text, read_features, text_cache_dir, user_tensors
from model.device import precision, resolve_device
from model.score import compile_blend
from nightrec import schema
from nightrec.config import Config


def _rows_for(ids: pa.Array, table: pa.Table, key: str) -> pa.Table:
    """`table`'s row for each id, in the order of `ids` (repeats kept); all-null but the id where it has none."""
    rows = pc.index_in(ids, value_set=pc.cast(table.column(key), pa.string()).combine_chunks())
    found = table.take(rows)  # a null index gives an all-null row
    return found.set_column(found.column_names.index(key), key, ids)


def score_pairs(
    model_dir: Path, features_dir: Path, cfg: Config, pairs: pd.DataFrame, batch_size: int = 65536
) -> pd.DataFrame:
    """`pairs` (user_id, item_id, any other columns kept) with p_<task> per task, `score` and `known`."""
    missing = {schema.USER_ID, schema.ITEM_ID} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs: missing columns {sorted(missing)}; present: {list(pairs.columns)}")
    if pairs[[schema.USER_ID, schema.ITEM_ID]].isna().any().any():
        bad = pairs.index[pairs[[schema.USER_ID, schema.ITEM_ID]].isna().any(axis=1)].tolist()[:10]
        raise ValueError(f"pairs: user_id and item_id must not be null (rows {bad})")
    device = resolve_device(cfg.model.device)
    model, meta, vocab = load_model(Path(model_dir), device)
    tasks = model.spec.tasks
    blend = compile_blend(cfg.scoring.blend, tasks)
    layout = FeatureLayout.from_dict(meta["layout"])
    users = _rows_for(
        pa.array(pairs[schema.USER_ID].astype(str)), read_features(features_dir, schema.USERS), schema.USER_ID
    )
    all_items = read_features(features_dir, schema.ITEMS)
    items = _rows_for(pa.array(pairs[schema.ITEM_ID].astype(str)), all_items, schema.ITEM_ID)
    text = item_text(all_items, layout.text_encoder, layout.text_dim, text_cache_dir(cfg))
    user_t, item_t = user_tensors(users, vocab, layout), item_tensors(items, vocab, layout, text)
    preds, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            part = slice(start, start + batch_size)
            with precision(device):
                p = model(user_t.take(part).to(device), item_t.take(part).to(device)).predictions.float()
            preds.append(p.cpu())
            score = blend({t.name: p[:, j] for j, t in enumerate(tasks)}).float().expand(len(p))
            scores.append(score.cpu())
    p_all = torch.cat(preds).double().numpy() if preds else np.empty((0, len(tasks)))
    out = pairs.copy()
    for j, t in enumerate(tasks):
        if t.type != "multiclass":  # as in the published table: a distribution is not one column
            out[schema.probability_column(t.name)] = p_all[:, j]
    out["score"] = torch.cat(scores).double().numpy() if scores else np.empty(0)
    out["known"] = (user_t.user.numpy() > 0) & (item_t.item.numpy() > 0)
    out["model_version"] = meta["version"]
    return out
