"""Unit matching from Pearson correlations: top-K partners, mutual best buddies, Hungarian.

At scale only `TopKPartners` (K partners per unit, both directions) is kept, never the full
`[Da, Db]` matrix: `pearson_topk` streams column blocks of B and merges top-K as it goes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from .correlation import PearsonResult, pearson
from .sources import ColumnView, shape_of

NO_PARTNER = -1
# Default memory for one block of float64 co-moments in `pearson_topk`.
DEFAULT_BLOCK_BYTES = 256 * 2**20


@dataclass
class TopKPartners:
    """The K best partners of every unit, in both directions, sorted best first.

    `a_index [Da, k]` / `a_r [Da, k]`: units of B ranked for each unit of A (and `b_index`/`b_r`
    the units of A for each unit of B). Ranked by r, or by |r| when `absolute`; stored r keeps
    its sign. Constant units neither have nor are partners: their slots hold index -1, r 0.0.
    `max_abs_r` is the largest |r| over the whole (unmasked) matrix, kept for null comparisons.
    """

    a_index: np.ndarray
    a_r: np.ndarray
    b_index: np.ndarray
    b_r: np.ndarray
    const_a: np.ndarray
    const_b: np.ndarray
    max_abs_r: float
    absolute: bool = False

    @property
    def k(self) -> int:
        return self.a_index.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.const_a), len(self.const_b)

    def transpose(self) -> "TopKPartners":
        """The same partners seen from B (B becomes the first model)."""
        return TopKPartners(
            self.b_index, self.b_r, self.a_index, self.a_r, self.const_b, self.const_a, self.max_abs_r, self.absolute
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain arrays and scalars (e.g. for `np.savez`); `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TopKPartners":
        fields = {key: np.asarray(data[key]) for key in ("a_index", "a_r", "b_index", "b_r", "const_a", "const_b")}
        return cls(**fields, max_abs_r=float(data["max_abs_r"]), absolute=bool(data["absolute"]))


@dataclass
class Matches:
    """Matched unit pairs: unit `a[m]` of A with unit `b[m]` of B at correlation `r[m]`, best first."""

    a: np.ndarray
    b: np.ndarray
    r: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def pairs(self) -> set[tuple[int, int]]:
        return set(zip(self.a.tolist(), self.b.tolist()))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"unit_a": self.a, "unit_b": self.b, "r": self.r})


def topk_partners(r: PearsonResult | np.ndarray, k: int, absolute: bool = False) -> TopKPartners:
    """Top-`k` partners per unit in both directions of a dense correlation matrix.

    `r`: a `PearsonResult` (its constant units are excluded) or a plain `[Da, Db]` array.
    `absolute`: rank by |r| (sign-agnostic units, e.g. residual-stream dimensions).
    """
    _check_k(k)
    dense, const_a, const_b = _dense_parts(r)
    values = np.ascontiguousarray(dense, dtype=np.result_type(dense.dtype, np.float32))
    scores = _ranking_scores(torch.from_numpy(values), const_a, const_b, absolute)
    a_index, a_r = _top(scores, dense, k)
    b_index, b_r = _top(scores, dense, k, dim=0)
    return TopKPartners(a_index, a_r, b_index, b_r, const_a, const_b, _max_abs(dense, const_a, const_b), absolute)


def as_partners(x: TopKPartners | PearsonResult | np.ndarray, k: int, absolute: bool = False) -> TopKPartners:
    """`x` as `TopKPartners` with at least `k` partners ranked by r (or |r| if `absolute`)."""
    if not isinstance(x, TopKPartners):
        return topk_partners(x, k, absolute)
    if x.absolute != absolute:
        raise ValueError(f"partners were ranked with absolute={x.absolute}, but absolute={absolute} was asked")
    if x.k < k:
        raise ValueError(f"matching needs top-{k} partners, only {x.k} were kept")
    return x


def pearson_topk(
    a: Any,
    b: Any,
    k: int,
    absolute: bool = False,
    block_size: int | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    **pearson_kw,
) -> TopKPartners:
    """Top-`k` Pearson partners of every unit without ever holding the full `[Da, Db]` matrix.

    B's units are processed in column blocks (`block_size`, by default as many as fit in
    `max_block_bytes` of float64 co-moments); each block is one streaming pass over the rows of A
    and of that block of B. B-side top-k is final per block; A-side top-k is merged across blocks.
    Cost: ceil(Db / block_size) reads of A. Same result as `topk_partners(pearson(a, b), k)`;
    `pearson_kw` (chunk_size, gemm_dtype, ...) are passed to `pearson`.
    """
    _check_k(k)
    _, dim_a = shape_of(a, "A")
    _, dim_b = shape_of(b, "B")
    # ~32 bytes per entry of a block: float64 co-moments and r, the float32 GEMM output and scores.
    block = block_size or max(1, min(dim_b, max_block_bytes // (32 * dim_a)))
    a_side = _RunningTopK(dim_a, k)
    b_index, b_r, const_b, max_abs = [], [], [], 0.0
    for start in range(0, dim_b, block):
        columns = ColumnView(b, slice(start, start + block))
        part = pearson(a, columns, **pearson_kw)
        scores = _ranking_scores(torch.from_numpy(part.r), part.const_a, part.const_b, absolute)
        a_side.add(scores, part.r, offset=start)
        index, values = _top(scores, part.r, k, dim=0)  # each block holds every A unit: B's top-k is final
        b_index.append(index)
        b_r.append(values)
        const_b.append(part.const_b)
        max_abs = max(max_abs, _max_abs(part.r, part.const_a, part.const_b))
    a_index, a_r = a_side.result()
    b_index, b_r, const_b = np.concatenate(b_index), np.concatenate(b_r), np.concatenate(const_b)
    return TopKPartners(a_index, a_r, b_index, b_r, part.const_a, const_b, max_abs, absolute)


class _RunningTopK:
    """Per-row top-k over column blocks that arrive one at a time (global column indices)."""

    def __init__(self, rows: int, k: int):
        self.k = k
        self.scores = torch.full((rows, 0), -torch.inf)
        self.index = torch.empty((rows, 0), dtype=torch.int64)
        self.r = torch.empty((rows, 0))

    def add(self, scores: torch.Tensor, r: np.ndarray, offset: int) -> None:
        # The block's own top-k first, then a merge of 2k candidates per row: never a copy of the block.
        best, pick = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)
        values = torch.from_numpy(np.asarray(r)).gather(1, pick).float()
        scores = torch.cat([self.scores, best], dim=1)
        index = torch.cat([self.index, pick + offset], dim=1)
        values = torch.cat([self.r, values], dim=1)
        self.scores, keep = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)
        self.index, self.r = index.gather(1, keep), values.gather(1, keep)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        empty = torch.isinf(self.scores)
        index = torch.where(empty, NO_PARTNER, self.index).numpy()
        values = torch.where(empty, 0.0, self.r).numpy()
        return _pad(index, values, self.k)


def mutual_matches(
    x: TopKPartners | PearsonResult | np.ndarray, k: int = 1, k_back: int | None = None, absolute: bool = False
) -> Matches:
    """Mutual matches: j in i's top-`k` and i in j's top-`k_back` (default `k_back = k`).

    `k = 1` is strict mutual best buddies (i's best is j and j's best is i); `k > 1` relaxed.
    `k=1, k_back=5` is the Rosetta Neurons reference's criterion (anchor's best, reciprocated in
    the partner's top 5). A dense input is ranked first with `topk_partners(x, k, absolute)`;
    a `TopKPartners` input must have been ranked the same way (`absolute`) and kept enough partners.
    """
    k_back = k if k_back is None else k_back
    _check_k(k)
    _check_k(k_back)
    partners = as_partners(x, max(k, k_back), absolute)
    forward = partners.a_index[:, :k]
    has_partner = forward >= 0
    back = partners.b_index[np.where(has_partner, forward, 0), :k_back]
    units_a = np.arange(len(forward))[:, None, None]
    mutual = has_partner & (back == units_a).any(axis=-1)
    rows, slots = np.nonzero(mutual)
    return _sorted_matches(rows, forward[rows, slots], partners.a_r[rows, slots], partners.absolute)


def hungarian(r: PearsonResult | np.ndarray, absolute: bool = False) -> Matches:
    """One-to-one matching maximising the summed r (or |r|), as in convergent-learning work.

    Matches min(Da, Db) pairs with scipy's `linear_sum_assignment`; constant units have r = 0 in
    a `PearsonResult` and are dropped from the output.
    """
    dense, const_a, const_b = _dense_parts(r)
    weights = np.abs(dense) if absolute else dense
    rows, cols = linear_sum_assignment(np.asarray(weights, dtype=np.float64), maximize=True)
    keep = ~const_a[rows] & ~const_b[cols]
    rows, cols = rows[keep], cols[keep]
    return _sorted_matches(rows, cols, dense[rows, cols], absolute)


def _check_k(k: int) -> None:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _dense_parts(r: PearsonResult | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(r, PearsonResult):
        return r.r, r.const_a, r.const_b
    dense = np.asarray(r)
    if dense.ndim != 2:
        raise ValueError(f"expected a [Da, Db] correlation matrix, got shape {dense.shape}")
    if not np.isfinite(dense).all():
        raise ValueError("correlation matrix contains NaN or inf; use pearson(), which masks constant units")
    return dense, np.zeros(dense.shape[0], bool), np.zeros(dense.shape[1], bool)


def _ranking_scores(r: torch.Tensor, const_a: np.ndarray, const_b: np.ndarray, absolute: bool) -> torch.Tensor:
    """What top-k ranks by: r or |r|, with constant units at -inf so they are never chosen (r itself,
    uncopied, when it is ranked by sign and no unit is constant)."""
    const_a, const_b = np.asarray(const_a, bool), np.asarray(const_b, bool)
    if not absolute and not const_a.any() and not const_b.any():
        return r
    scores = r.abs() if absolute else r.clone()
    scores[torch.from_numpy(const_a)] = -torch.inf
    scores[:, torch.from_numpy(const_b)] = -torch.inf
    return scores


def _top(scores: torch.Tensor, r: np.ndarray, k: int, dim: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row (`dim=1`) or of each column (`dim=0`, returned as rows: `[columns, k]`);
    slots that only found -inf (constant units) become index -1, r 0."""
    kk = min(k, scores.shape[dim])
    best, index = torch.topk(scores, kk, dim=dim)
    values = np.take_along_axis(np.asarray(r), index.numpy(), axis=dim)
    if dim == 0:
        best, index, values = best.T, index.T, values.T
    empty = torch.isinf(best).numpy()
    index = np.where(empty, NO_PARTNER, index.numpy())
    values = np.where(empty, 0.0, values).astype(np.float32)
    return _pad(index, values, k)


def _pad(index: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to k columns when a model has fewer than k units."""
    missing = k - index.shape[1]
    if missing <= 0:
        return index, values.astype(np.float32)
    index = np.pad(index, ((0, 0), (0, missing)), constant_values=NO_PARTNER)
    values = np.pad(values, ((0, 0), (0, missing)), constant_values=0.0)
    return index, values.astype(np.float32)


def _max_abs(dense, const_a: np.ndarray, const_b: np.ndarray) -> float:
    """max |r| over non-constant units (one threaded reduction; a masked copy only when units are constant)."""
    values = torch.as_tensor(np.asarray(dense))
    const_a, const_b = np.asarray(const_a, bool), np.asarray(const_b, bool)
    if const_a.any() or const_b.any():
        values = values[torch.from_numpy(~const_a)][:, torch.from_numpy(~const_b)]
    if not values.numel():
        return 0.0
    low, high = torch.aminmax(values)
    return float(max(-low, high))


def _sorted_matches(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, absolute: bool) -> Matches:
    order = np.argsort(-(np.abs(values) if absolute else values), kind="stable")
    rows, cols, values = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(values, np.float32)
    return Matches(a=rows[order], b=cols[order], r=values[order])
