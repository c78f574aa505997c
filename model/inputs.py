"""The input side of every architecture: embeddings, history pooling, item text; a user part and an item part.

Input per (user, item): user id embedding, pooled history item embeddings (the item table is shared with
the target item, so history and candidate live in one space), user dense features; item id embedding, mean
of the item's category embeddings, item dense features, and a projection of the item's text embedding when
the model has text features. The user part and the item part are built separately so that scoring encodes
each user and each item once and only combines them per pair.

History pooling is a mean, or DIN target attention (Zhou et al., KDD 2018): a weight per history item from
an MLP over [h, t, h - t, h * t] with the candidate t. As in DIN there is no softmax: the weights are not
forced to sum to one, so the pooled vector also says how much of the history is relevant. We use
1 + MLP(...) averaged over the real history items, which starts out as mean pooling and keeps the scale of
the pooled vector independent of the history length. With DIN the user part depends on the candidate, so
`UserPart` carries the history embeddings and the pooling happens per pair (`pair_features`, `grid_features`).

Scoring never builds the [pairs, width] input: `grid_features` returns a `PairGrid`, whose first linear layer
is computed per user and per item and only summed per pair.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

import torch
from torch import nn

from model.data import ItemTensors, UserTensors
from model.spec import ModelSpec

DIN_HIDDEN = 32  # width of the attention MLP


def embedding_table(rows: int, dim: int) -> nn.Embedding:
    """Small initial vectors; row 0 (unknown/padding) stays zero and gets no gradient."""
    emb = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=0.05)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def masked_mean(table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    """Mean embedding of the non-padding entries of each row of `index` [N, L]; zeros for an empty row."""
    mask = (index != 0).unsqueeze(-1)
    summed = (table(index) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1)


class UserPart(NamedTuple):
    static: torch.Tensor  # [B, Du]: everything that does not depend on the candidate
    history: torch.Tensor | None  # [B, L, d] history item embeddings (DIN only)
    history_mask: torch.Tensor | None  # [B, L] bool, True for a real history item (DIN only)


class ItemPart(NamedTuple):
    vector: torch.Tensor  # [I, Di]
    target: torch.Tensor  # [I, d]: the candidate's id embedding, the query of DIN attention


class TargetAttention(nn.Module):
    """DIN activation unit. The first layer over the concatenation [h, t, h - t, h * t] is one nn.Linear, but
    it is applied in its decomposed form h (Wh + Wd) + t (Wt - Wd) + (h * t) Wp: for one target per row
    (training) the terms are added; for a grid of B users x I items all of them, bias included, go into one
    [I, d + 1] x [d + 1, L x H] product per user (see `forward`)."""

    def __init__(self, dim: int, hidden: int = DIN_HIDDEN):
        super().__init__()
        self.first = nn.Linear(4 * dim, hidden)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """history [B, L, d], mask [B, L], target [B or 1, I, d] -> pooled history [B, I, d].

        Padded slots get weight exactly zero, so whatever they hold changes nothing.
        """
        b, length, d = history.shape
        w_h, w_t, w_d, w_p = self.first.weight.split(d, dim=1)  # each [H, d]
        per_user = history @ (w_h + w_d).T  # [B, L, H]
        hidden = w_p.shape[0]
        if target.shape[1] > hidden:
            # A grid (many candidates per user). The whole first layer is one product per user:
            # [t, 1] x [[diag(h) W_p + (W_t - W_d)], [h (W_h + W_d) + bias]] for each history slot, i.e.
            # one [I, d + 1] x [d + 1, L * H] matrix product, with no [B, I, L, d] tensor and no per-pair
            # additions. Not for one target per row (training, pairs): there the per-user matrix would be
            # H times the history itself.
            per_slot = history[..., None] * w_p.T + (w_t - w_d).T  # [B, L, d, H]
            constant = (per_user + self.first.bias)[:, :, None, :]  # [B, L, 1, H]: the target's "1" column
            weights = torch.cat([per_slot, constant], dim=2).permute(0, 2, 1, 3).reshape(b, d + 1, -1)
            ones = target.new_ones(target.shape[0], target.shape[1], 1)
            first = torch.cat([target, ones], dim=2).expand(b, -1, -1) @ weights  # [B, I, L * H]
            first = first.view(b, target.shape[1], length, hidden)
            # In place where nothing needs the pre-activation for a gradient (scoring): the largest tensor
            # of scoring is then written once instead of twice.
            hidden = first.relu_() if not first.requires_grad else self.act(first)
        else:
            per_item = target @ (w_t - w_d).T + self.first.bias  # [B, I, H]
            product = (history[:, None, :, :] * target[:, :, None, :]) @ w_p.T  # [B, I, L, H]
            hidden = self.act(per_user[:, None] + per_item[:, :, None] + product)
        weights = (1.0 + self.out(hidden).squeeze(-1)) * mask[:, None, :]  # [B, I, L]
        pooled = torch.einsum("bil,bld->bid", weights.to(history.dtype), history)
        return pooled / mask.sum(dim=1).clamp(min=1)[:, None, None].to(pooled.dtype)


class InputEncoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = spec.embedding_dim
        self.user_embedding = embedding_table(spec.n_users, d)
        self.item_embedding = embedding_table(spec.n_items, d)
        self.category_embedding = embedding_table(spec.n_categories, d)
        self.attention = TargetAttention(d) if spec.history_pooling == "din" else None
        self.text_projection = nn.Linear(spec.n_text, d) if spec.n_text else None
        self.user_dim = 2 * d + spec.n_user_dense
        self.item_dim = 2 * d + spec.n_item_dense + (d if spec.n_text else 0)
        self.out_dim = self.user_dim + self.item_dim
        # Where the dense features sit among the pair columns (see pair_features): the "wide" inputs.
        self.register_buffer(
            "dense_columns",
            torch.cat(
                [
                    torch.arange(2 * d, self.user_dim),
                    torch.arange(self.user_dim + 2 * d, self.user_dim + 2 * d + spec.n_item_dense),
                ]
            ),
            persistent=False,
        )

    def user_part(self, users: UserTensors) -> UserPart:
        own = [self.user_embedding(users.user), users.dense]
        if self.attention is None:
            return UserPart(
                torch.cat([own[0], masked_mean(self.item_embedding, users.history), own[1]], 1), None, None
            )
        return UserPart(torch.cat(own, dim=1), self.item_embedding(users.history), users.history != 0)

    def item_part(self, items: ItemTensors) -> ItemPart:
        target = self.item_embedding(items.item)
        parts = [target, masked_mean(self.category_embedding, items.categories), items.dense]
        if self.text_projection is not None:
            if items.text is None:
                raise ValueError("this model has item text features, but the item tensors carry no text")
            parts.append(self.text_projection(items.text))
        return ItemPart(torch.cat(parts, dim=1), target)

    def pair_features(self, user: UserPart, item: ItemPart) -> torch.Tensor:
        """[N, out_dim] for N (user, item) pairs, row k pairing user k with item k."""
        static = user.static
        if self.attention is not None:
            pooled = self.attention(user.history, user.history_mask, item.target[:, None, :])[:, 0]
            d = self.user_embedding.embedding_dim
            static = torch.cat([static[:, :d], pooled, static[:, d:]], dim=1)
        return torch.cat([static, item.vector], dim=1)

    def grid_features(self, user: UserPart, item: ItemPart, item_terms: dict | None = None) -> PairGrid:
        """Every user of a block against every item, as a factorised `PairGrid` (B x I pairs, user-major).

        `item_terms`: see `PairGrid`; for a caller that scores the same items block after block."""
        return self._grid(user, item, None, item_terms)

    def candidate_features(
        self, user: UserPart, item: ItemPart, candidates: torch.Tensor, item_terms: dict | None = None
    ) -> PairGrid:
        """Each user of a block against its own N candidates (item rows [B, N]), as a `PairGrid`."""
        return self._grid(user, item, candidates, item_terms)

    def _grid(
        self, user: UserPart, item: ItemPart, candidates: torch.Tensor | None, item_terms: dict | None
    ) -> PairGrid:
        pooled = None
        if self.attention is not None:
            targets = item.target[None] if candidates is None else item.target[candidates]
            pooled = self.attention(user.history, user.history_mask, targets)  # [B, N, d]
        # With DIN the pooled history sits right after the user id embedding (see pair_features).
        return PairGrid(
            user.static,
            pooled,
            item.vector,
            candidates,
            self.user_embedding.embedding_dim,
            self.user_dim,
            item_terms,
        )


class PairGrid:
    """The pair inputs of B users x N items without materialising the [B * N, out_dim] concatenation.

    Its columns are those of `InputEncoder.pair_features`: the user part (with DIN, the pooled history at
    columns d..2d), then the item part. A linear layer on them splits into a user term, an item term and,
    with DIN, a pooled-history term: `project` computes the first two once per user and once per item and
    only adds them per pair, so the first layer of the network costs an addition per pair instead of a
    product over the full width (with DIN, a product over the pooled d columns remains).

    `item_terms`, when given, keeps each layer's item term (keyed by the `key` of `project`) for the next
    grids over the same items: scoring in blocks then computes it once per run instead of once per block,
    which in two-stage scoring (N candidates of a large catalogue) would cost more than the block itself.
    Only for fixed weights and items without autograd (the terms are kept, not recomputed).
    """

    def __init__(
        self,
        user: torch.Tensor,
        pooled: torch.Tensor | None,
        items: torch.Tensor,
        candidates: torch.Tensor | None,
        pooled_at: int,
        user_dim: int,
        item_terms: dict | None = None,
    ):
        self.user, self.pooled, self.items = user, pooled, items  # [B, Du], [B, N, d] | None, [I, Di]
        self.item_terms = item_terms
        self.candidates = candidates  # [B, N] item rows of each user's pairs; None: every item
        self.pooled_at, self.user_dim = pooled_at, user_dim
        self.b = user.shape[0]
        self.n = items.shape[0] if candidates is None else candidates.shape[1]

    def project(self, weight: torch.Tensor, bias: torch.Tensor | None, key: Hashable) -> torch.Tensor:
        """[B * N, out] = pair_features @ weight + bias, for weight [in, out]; `key` names the layer (its
        module) in `item_terms`."""
        if self.pooled is None:
            user_w = weight[: self.user_dim]
        else:
            d, at = self.pooled.shape[-1], self.pooled_at
            user_w = torch.cat([weight[:at], weight[at + d : self.user_dim]])
        per_item = None if self.item_terms is None else self.item_terms.get(key)
        if per_item is None:
            per_item = self.items @ weight[self.user_dim :]  # [I, out]: once per item
            if bias is not None:
                per_item = per_item + bias  # once per item, not once per pair
            if self.item_terms is not None:
                self.item_terms[key] = per_item
        user_term = (self.user @ user_w)[:, None, :]
        # The one per-pair addition of the first layer; for candidates in place on their gathered rows.
        if self.candidates is None:
            out = (user_term + per_item[None]).reshape(self.b * self.n, -1)
        else:
            out = per_item.index_select(0, self.candidates.reshape(-1)).view(self.b, self.n, -1)
            out = out.add_(user_term).view(self.b * self.n, -1)
        if self.pooled is not None:  # + pooled @ W in the product's own accumulation, not as another pass
            pooled_w = weight[self.pooled_at : self.pooled_at + self.pooled.shape[-1]]
            pooled = self.pooled.reshape(self.b * self.n, -1)
            # In place without autograd (out= rather than addmm_, which FlopCounterMode does not count), and
            # only with one dtype throughout: autocast (bf16 on CUDA) casts the plain call, not the out= form.
            in_place = not out.requires_grad and out.dtype == pooled.dtype == pooled_w.dtype
            out = torch.addmm(out, pooled, pooled_w, **({"out": out} if in_place else {}))
        return out
