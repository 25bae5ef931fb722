"""Nearest-neighbour alignment metrics (PRH): agreement between the kNN graphs of X and Y.

Neighbours are by inner product on the rows as given (PRH L2-normalises first; that is the
caller's preprocessing, see ``convergence.alignment.preprocess``), self excluded.
Each metric is a mean over samples of a per-sample score in [0, 1].

The ranking is the float64 one: row i's neighbours are the other rows j in descending order
of ``pair_similarities`` (X[i] * X[j] summed in float64 by numpy's pairwise summation: one
rounding per pair, whatever the blocking or the threads), ties by ascending index, i.e.
``np.argsort(-sims, axis=1, kind="stable")``. ``knn_indices`` finds it from float32
similarity blocks (BLAS, half the cost of float64) and proves, row by row, that float32
decided it: E_i bounds |float32 value - float64 value| for every j (input rounding and any
summation order in float32, gamma(D + 2) u32, plus the float64 rounding, gamma(D + 1) u64,
times ||x_i|| max_j ||x_j||, plus underflow terms). Among the k + 1 largest float32 values
of a row,

* certified (most rows): neighbours more than 2 E_i apart can never swap, so when all
  k + 1 are, the float32 top k is the float64 top k, in order;
* re-ranked: the k-th and (k + 1)-th are more than 2 E_i apart, so the members are certain;
  each run of values closer than that is put in order by its float64 similarities;
* fallback: the k-th and (k + 1)-th are too close to tell. Every j of the float64 top k (ties
  included) has a float32 value within 2 E_i of the float32 k-th; those candidates are ranked
  by their float64 similarities. When a row has very many (near-ties, duplicates), a float64
  product of that row narrows them first, with its own bound, and rows equal byte for byte
  are computed once.

So the result is always the float64 ranking; ``stats`` (a dict) counts the rows of each kind.
With ``ordered=False`` (the set metrics: mutual, Jaccard, cycle) only the members are made
certain, in no particular order: no re-ranking, and a fallback row ranks in float64 only the
candidates that are not certain members.

When the whole [N, N] float32 matrix fits in ``block_bytes`` (and k < SCAN_WIDTH), its lower
triangle comes from one BLAS ssyrk (half a product) and each row's k + 1 largest from a
compiled scan of it (``_kernels``); otherwise rows are done in blocks of full products and
numpy's argpartition.
"""

from __future__ import annotations

import math

import numpy as np

from . import _kernels
from ._scratch import scratch
from ._registry import check_int, check_not_constant, register

# Similarity rows held at once: the [block, N] float32 block is the only N-sized buffer,
# so memory is O(N * D + block * N) instead of O(N^2).
BLOCK_BYTES = 256 * 2**20
# Gathered row pairs held at once by pair_similarities.
PAIR_BYTES = 16 * 2**20
# Widest (k + 1) the compiled scan takes; wider rankings use blocks and argpartition.
SCAN_WIDTH = 64

_U32, _U64 = 2.0**-24, 2.0**-53  # unit roundoff
# Smallest normal numbers: a bound on the absolute error of underflow, flushed to zero or not.
_TINY32, _TINY64 = 2.0**-126, 2.0**-1022
STAT_KEYS = ("rows", "certified", "reranked", "fallback", "float64", "pairs", "legacy")


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n: |fl(sum of n products) - exact| <= gamma_n sum |products|, any order."""
    return n * u / (1.0 - n * u)


def pair_similarities(X: np.ndarray, rows, cols) -> np.ndarray:
    """float64 ``sum(X[i] * X[j])`` for each pair ``(rows[p], cols[p])``: the similarity that
    defines the neighbour ranking (numpy's pairwise summation over D; the same bits for a
    pair however the pairs are batched)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    out = np.empty(len(rows))
    step = max(1, PAIR_BYTES // (16 * X.shape[1]))
    for a in range(0, len(rows), step):
        products = X[rows[a : a + step]]
        np.multiply(products, X[cols[a : a + step]], out=products)
        np.sum(products, axis=1, out=out[a : a + step])
    return out


class _Ranker:
    """Exact float64 neighbour rankings of the rows of one X from float32 blocks."""

    def __init__(self, X: np.ndarray, block_bytes: int, stats: dict | None):
        self.X = X = np.ascontiguousarray(X, dtype=np.float64)
        self.n, d = X.shape
        self.block_bytes = block_bytes
        self.stats = stats
        if stats is not None:
            for key in STAT_KEYS:
                stats.setdefault(key, 0)
        self._groups = None
        self.X32 = scratch("knn.X32", X.shape, np.float32)
        norms = _kernels.norms_and_float32(X, 1.0, self.X32) * (1 + _gamma(d + 4, _U64))
        top = float(norms.max())
        # Non-finite values, norms whose squares may overflow, or D beyond float32's bound:
        # plain float64 products and torch.topk (ties in arbitrary order).
        self.legacy = not math.isfinite(top) or top > 2.0**500 or (d + 2) * _U32 > 2.0**-6
        if self.legacy:
            return
        # A power of two (exact) keeps float32 away from overflow and underflow.
        scale = 1.0 if top == 0 or 2.0**-60 <= top <= 2.0**60 else 2.0 ** -math.frexp(top)[1]
        if scale != 1.0:
            _kernels.norms_and_float32(X, scale, self.X32)
        slack = 1 + 2.0**-20  # covers the rounding of these bounds themselves
        under32 = _TINY32 * (2 * math.sqrt(d) * scale * top + 2 * d + 2)
        under64 = _TINY64 * (2 * math.sqrt(d) * top + 2 * d + 2)
        # float32 value (scaled) vs float64 pair similarity (times scale^2):
        rel = _gamma(d + 2, _U32) + _gamma(d + 1, _U64)
        self.bound32 = (rel * (scale * norms) * (scale * top) + under32 + scale**2 * under64)
        self.bound32 *= slack
        # a float64 product (any order) vs the float64 pair similarity:
        self.bound64 = (2 * _gamma(d + 1, _U64) * norms * top + 2 * under64) * slack
        # Candidates per row above which a float64 product of the row narrows them first.
        self.narrow_limit = max(64, self.n // 64)

    def count(self, key: str, value: int) -> None:
        if self.stats is not None:
            self.stats[key] += int(value)

    def neighbours(self, topk: int, rows: np.ndarray | None = None, ordered: bool = True) -> np.ndarray:
        """``[len(rows), topk]`` neighbours of ``rows`` (all rows if None); in float64 order
        unless ``ordered`` is False (then the same sets, in no particular order)."""
        n = self.n
        m = n if rows is None else len(rows)
        self.count("rows", m)
        if self.legacy:
            self.count("legacy", m)
            return _knn_float64_topk(self.X, topk, self.block_bytes, rows)
        width = min(topk + 1, n - 1)
        if rows is None and 4 * n * n <= self.block_bytes and width <= SCAN_WIDTH:
            return self._neighbours_full(topk, width, ordered)
        out = np.empty((m, topk), dtype=np.int64)
        block = max(1, min(m, self.block_bytes // (4 * n)))
        buffer = np.empty((block, n), dtype=np.float32)
        for start in range(0, m, block):
            stop = min(m, start + block)
            ids = np.arange(start, stop) if rows is None else rows[start:stop]
            sims = buffer[: stop - start]
            left = self.X32[start:stop] if rows is None else self.X32[ids]
            np.matmul(left, self.X32.T, out=sims)
            sims[np.arange(stop - start), ids] = -np.inf  # self is never its own neighbour
            values, idx = _largest(sims, width)
            out[start:stop] = self._certify(values, idx, ids, topk, ordered, sims.__getitem__)
        return out

    def _neighbours_full(self, k: int, width: int, ordered: bool) -> np.ndarray:
        """All rows from the lower triangle of one ssyrk product and the compiled scan."""
        n = self.n
        G = _kernels.gram_lower(self.X32, out=scratch("knn.gram", (n, n), np.float32))
        values = np.empty((n, width), dtype=np.float32)
        idx = np.empty((n, width), dtype=np.int64)
        _kernels.top_of_lower(G, width, values, idx)

        def full_rows(local: np.ndarray) -> np.ndarray:
            rows = np.empty((len(local), n), dtype=np.float32)
            _kernels.rows_of_lower(G, local, rows)
            return rows

        return self._certify(values.astype(np.float64), idx, np.arange(n), k, ordered, full_rows)

    def _certify(self, values: np.ndarray, idx: np.ndarray, ids: np.ndarray, k: int, ordered: bool,
                 rows_of) -> np.ndarray:
        """Rows ``ids``' top k from their ``width`` largest float32 ``values`` (descending;
        columns ``idx``), made exact as the module docstring says. ``rows_of(local)`` gives
        the float32 similarity rows of ``ids[local]`` (self at -inf) for the fallback."""
        width = values.shape[1]
        twice = 2 * self.bound32[ids]
        apart = (values[:, :-1] - values[:, 1:]) > twice[:, None]  # [b, width - 1]
        members = apart[:, k - 1] if width > k else np.ones(len(ids), dtype=bool)
        out = idx[:, :k].copy()
        fallback = ~members
        if ordered:
            in_order = apart[:, : k - 1].all(axis=1)
            rerank = ~in_order & members
            self.count("certified", np.count_nonzero(in_order & members))
            self.count("reranked", np.count_nonzero(rerank))
            if rerank.any():
                out[rerank] = self._rerank(ids[rerank], idx[rerank, :k], apart[rerank, : k - 1])
        else:
            self.count("certified", np.count_nonzero(members))
        self.count("fallback", np.count_nonzero(fallback))
        if fallback.any():
            local = np.flatnonzero(fallback)
            threshold = _float32_at_most(values[local, k - 1] - twice[local])
            known = None
            if not ordered:
                # For a set, the leading values more than 2 E_i above the (k + 1)-th are
                # members for certain (fewer than k others can beat them): only the rest of
                # the candidates need float64 similarities.
                sure = (values[local, :k] - values[local, k : k + 1]) > twice[local, None]
                known = np.where(sure, idx[local, :k], -1)
            step = max(1, PAIR_BYTES // (5 * self.n))  # a few rows' masks at a time
            for a in range(0, len(local), step):
                part = local[a : a + step]
                candidates = rows_of(part) >= threshold[a : a + step, None]
                part_known = None
                if known is not None:
                    part_known = known[a : a + step]
                    r, p = np.nonzero(part_known >= 0)
                    candidates[r, part_known[r, p]] = False
                out[part] = self._rank_candidates(ids[part], candidates, k, narrow=True, known=part_known)
        return out

    def _rerank(self, ids: np.ndarray, idx: np.ndarray, apart: np.ndarray) -> np.ndarray:
        """Members known: order each run of close float32 values by float64 similarity."""
        run = np.zeros(idx.shape, dtype=np.int64)
        run[:, 1:] = np.cumsum(apart, axis=1)
        close = np.zeros(idx.shape, dtype=bool)
        close[:, 1:] |= ~apart
        close[:, :-1] |= ~apart
        r, p = np.nonzero(close)
        sims = np.zeros(idx.shape)
        sims[r, p] = self.pairs(ids[r], idx[r, p])
        order = np.lexsort((idx, -sims, run), axis=1)
        return np.take_along_axis(idx, order, axis=1)

    def _rank_candidates(self, ids: np.ndarray, candidates: np.ndarray, k: int,
                         narrow: bool, known: np.ndarray | None = None) -> np.ndarray:
        """Top k of each row among its candidates ([rows, N] mask, a superset of the float64
        top k and its ties), by float64 similarity then index. ``known`` [rows, k]: members
        already certain as a prefix of each row (-1 after it), not among the candidates;
        the candidates then fill the remaining slots."""
        counts = np.count_nonzero(candidates, axis=1)
        out = np.empty((len(ids), k), dtype=np.int64)
        many = counts > self.narrow_limit if narrow else np.zeros(len(ids), dtype=bool)
        if many.any():
            out[many] = self._float64_rows(ids[many], k)
        few = np.flatnonzero(~many)
        if few.size:
            r, cols = np.nonzero(candidates[few])
            sims = self.pairs(ids[few][r], cols, dedupe=not narrow)
            order = np.lexsort((cols, -sims, r))
            starts = np.cumsum(counts[few]) - counts[few]
            if known is None:
                out[few] = cols[order][starts[:, None] + np.arange(k)]
            else:
                n_known = np.count_nonzero(known[few] >= 0, axis=1)
                # the float64 top k lies within the known members and the candidates
                assert np.all(counts[few] >= k - n_known) and np.all(n_known < k)
                slots = np.arange(k) - n_known[:, None]
                picked = cols[order][starts[:, None] + np.maximum(slots, 0)]
                out[few] = np.where(slots >= 0, picked, known[few])
        return out

    def _float64_rows(self, ids: np.ndarray, k: int) -> np.ndarray:
        """Rows with very many float32 candidates: a float64 product narrows them."""
        self.count("float64", len(ids))
        out = np.empty((len(ids), k), dtype=np.int64)
        # Ties may make every column a candidate: ~64 bytes each (mask, indices, keys).
        block = max(1, min(len(ids), self.block_bytes // (64 * self.n)))
        for start in range(0, len(ids), block):
            chunk = ids[start : start + block]
            sims = self.X[chunk] @ self.X.T
            sims[np.arange(len(chunk)), chunk] = -np.inf
            kth = np.partition(sims, self.n - k, axis=1)[:, self.n - k]
            threshold = kth - 2 * self.bound64[chunk]
            out[start : start + block] = self._rank_candidates(
                chunk, sims >= threshold[:, None], k, narrow=False
            )
            del sims
        return out

    def pairs(self, rows: np.ndarray, cols: np.ndarray, dedupe: bool = False) -> np.ndarray:
        """pair_similarities, each (row, distinct vector) once when ``dedupe``."""
        if dedupe and len(cols) > self.n:
            first, group = self.groups()
            keys, inverse = np.unique(rows * self.n + first[group[cols]], return_inverse=True)
            self.count("pairs", len(keys))
            return pair_similarities(self.X, keys // self.n, keys % self.n)[inverse]
        self.count("pairs", len(rows))
        return pair_similarities(self.X, rows, cols)

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each group, group of each row) for rows equal byte for byte."""
        if self._groups is None:
            rows = self.X.view(np.dtype((np.void, self.X.dtype.itemsize * self.X.shape[1])))
            _, first, group = np.unique(rows.ravel(), return_index=True, return_inverse=True)
            self._groups = first, group.ravel()
        return self._groups


def _largest(sims: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and columns of each row's ``width`` largest entries, descending (in
    any order among equal values). numpy's argpartition rather than torch.topk: about as
    fast here, and it leaves BLAS's threads alone instead of contending with torch's."""
    b, n = sims.shape
    idx = np.empty((b, width), dtype=np.int64)
    step = max(1, PAIR_BYTES // (8 * n))  # argpartition's [rows, N] index array
    for a in range(0, b, step):
        idx[a : a + step] = np.argpartition(sims[a : a + step], n - width, axis=1)[:, n - width :]
    values = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-values, axis=1)
    values = np.take_along_axis(values, order, axis=1).astype(np.float64)
    return values, np.take_along_axis(idx, order, axis=1)


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value (a threshold that loses no candidate)."""
    rounded = values.astype(np.float32)
    return np.where(rounded.astype(np.float64) > values,
                    np.nextafter(rounded, np.float32(-np.inf)), rounded)


def _knn_float64_topk(X: np.ndarray, topk: int, block_bytes: int, rows=None) -> np.ndarray:
    """float64 products and torch.topk (only for non-finite or overflowing inputs)."""
    import torch  # here only: importing torch costs every pipeline job a second or more

    n = X.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    block = max(1, min(len(rows), block_bytes // (8 * n)))
    out = np.empty((len(rows), topk), dtype=np.int64)
    for start in range(0, len(rows), block):
        chunk = rows[start : start + block]
        sims = X[chunk] @ X.T
        sims[np.arange(len(chunk)), chunk] = -np.inf
        out[start : start + block] = torch.topk(torch.from_numpy(sims), topk, dim=1).indices.numpy()
        del sims
    return out


def knn_indices(X: np.ndarray, topk: int, block_bytes: int = BLOCK_BYTES, *,
                stats: dict | None = None, ordered: bool = True) -> np.ndarray:
    """``[N, topk]`` int64: each row's ``topk`` largest inner products with the other rows,
    in descending order of float64 similarity, ties by index (self excluded): exactly
    ``np.argsort(-sims, axis=1, kind="stable")[:, :topk]`` for the float64 similarities
    ``pair_similarities``, found from float32 blocks of ``block_bytes`` (see the module
    docstring). ``ordered=False``: the same set per row, in an unspecified order.
    ``stats``, if given, is a dict in which the rows of each kind are counted."""
    return _Ranker(X, block_bytes, stats).neighbours(topk, ordered=ordered)


def check_topk(topk, n: int) -> int:
    if n < 2:
        raise ValueError(f"needs at least 2 samples for neighbours, got N={n}")
    if isinstance(topk, (int, np.integer)) and not isinstance(topk, bool) and topk >= n:
        raise ValueError(f"topk={topk} must be < N={n} (each sample has only N-1 others)")
    return check_int("topk", topk, 1, n - 1)


def neighbours(X: np.ndarray, topk: int = 10) -> np.ndarray:
    """``prepare`` of the ranked-list kNN metrics: each row's neighbours in order."""
    topk = check_topk(topk, X.shape[0])
    check_not_constant(X, "every similarity ties, so its neighbours are arbitrary")
    return knn_indices(X, topk)


def neighbour_sets(X: np.ndarray, topk: int = 10) -> np.ndarray:
    """``prepare`` of the set kNN metrics: each row's neighbours, in no particular order."""
    topk = check_topk(topk, X.shape[0])
    check_not_constant(X, "every similarity ties, so its neighbours are arbitrary")
    return knn_indices(X, topk, ordered=False)


def knn_subsampler(X: np.ndarray, topk: int = 10):
    """``subsampler`` for kNN metrics: ``idx -> neighbours(X[idx], topk)`` without a new
    N x N product. A subsample's k nearest are the first k members of the subsample in each
    row's full-data ranking; a ranking of ~4k + 10 holds k of them unless the subsample is
    very sparse, and rows that run short are recomputed exactly. (Exact float64 ties are
    broken by index in X, which is the index order in X[idx] when idx increases, as
    bootstrap_ci draws it.)"""
    topk = check_topk(topk, X.shape[0])
    wide = knn_indices(X, min(X.shape[0] - 1, 4 * topk + 10))

    def state_of(idx: np.ndarray) -> np.ndarray:
        n_sub = len(idx)
        if topk >= n_sub:
            raise ValueError(f"topk={topk} must be < N={n_sub} of the subsample")
        local = np.full(X.shape[0], -1)
        local[idx] = np.arange(n_sub)
        candidates = local[wide[idx]]  # full-data ranking in subsample indices, -1 = absent
        present = candidates >= 0
        first = np.argsort(~present, axis=1, kind="stable")[:, :topk]  # keeps ranking order
        nn = np.take_along_axis(candidates, first, axis=1)
        short = np.flatnonzero(present.sum(axis=1) < topk)
        if short.size:
            nn[short] = knn_indices_of_rows(X[idx], short, topk)
        return nn

    return state_of


def knn_indices_of_rows(X: np.ndarray, rows: np.ndarray, topk: int, *,
                        stats: dict | None = None) -> np.ndarray:
    """``knn_indices(X, topk)[rows]`` computed for those rows only."""
    return _Ranker(X, BLOCK_BYTES, stats).neighbours(topk, np.asarray(rows, dtype=np.intp))


def permute_neighbours(nn: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Neighbours of ``X[perm]`` from those of ``X``: row i of ``X[perm]`` is sample
    ``perm[i]``, and sample ``m`` sits at row ``inverse[m]``. Order is preserved."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return inverse[nn[perm]]


def shared_counts(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """|kNN_X(i) ∩ kNN_Y(i)| per row (indices within a row are distinct)."""
    return _kernels.shared_counts(np.asarray(nn_x, dtype=np.int64), np.asarray(nn_y, dtype=np.int64))


def lcs_lengths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Longest common subsequence length of each row pair; DP vectorised over rows."""
    n, k = a.shape
    prev = np.zeros((n, k + 1), dtype=np.int64)
    for i in range(k):
        cur = np.zeros_like(prev)
        equal = a[:, i : i + 1] == b
        for j in range(k):
            cur[:, j + 1] = np.where(
                equal[:, j], prev[:, j] + 1, np.maximum(prev[:, j + 1], cur[:, j])
            )
        prev = cur
    return prev[:, k]


def edit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Levenshtein distance (unit insert/delete/substitute) of each row pair, over rows."""
    n, k = a.shape
    prev = np.broadcast_to(np.arange(k + 1), (n, k + 1)).copy()
    for i in range(k):
        cur = np.empty_like(prev)
        cur[:, 0] = i + 1
        for j in range(k):
            substitute = prev[:, j] + (a[:, i] != b[:, j])
            cur[:, j + 1] = np.minimum(np.minimum(prev[:, j + 1], cur[:, j]) + 1, substitute)
        prev = cur
    return prev[:, k]


def _set_grid(jaccard: bool):
    """``grid`` of the set metrics (mutual, Jaccard): every layer pair's score with Y's
    samples relabelled, by one compiled pass over the rows (``_kernels.shared_count_grid``)
    instead of a relabelled state and a comparison per layer pair."""

    def grid(states_x: list, states_y: list):
        nx = np.ascontiguousarray(np.stack(states_x, axis=1), dtype=np.int64)  # [N, Lx, k]
        ny = np.ascontiguousarray(np.stack(states_y, axis=1), dtype=np.int64)
        n, _, k = nx.shape
        if ny.shape[0] != n or ny.shape[2] != k:
            raise ValueError(f"neighbour sets of different shapes: {nx.shape} and {ny.shape}")
        scale = 1.0 / n if jaccard else 1.0 / (n * k)

        def scores(perm: np.ndarray) -> np.ndarray:
            out = np.zeros((nx.shape[1], ny.shape[1]))
            _kernels.shared_count_grid(nx, ny, np.ascontiguousarray(perm, dtype=np.int64), jaccard, out)
            return out * scale

        return scores

    return grid


_KNN = dict(prepare=neighbours, per_sample=True, permute=permute_neighbours, subsampler=knn_subsampler,
            state_refers_to_input=False)
_KNN_SETS = {**_KNN, "prepare": neighbour_sets}


@register("mutual_knn", **_KNN_SETS, grid=_set_grid(jaccard=False))
def mutual_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Mean over samples of |kNN_X(i) ∩ kNN_Y(i)| / topk, as PRH.

    Chance (independent representations) ≈ topk / (N - 1); 1 = identical neighbour sets.
    """
    return shared_counts(nn_x, nn_y) / nn_x.shape[1]


@register("jaccard_knn", **_KNN_SETS, grid=_set_grid(jaccard=True))
def jaccard_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Mean over samples of the Jaccard index |kNN_X(i) ∩ kNN_Y(i)| / |kNN_X(i) ∪ kNN_Y(i)|.

    Chance ≈ topk / (2 (N - 1)) (overlaps are mostly 0 or 1 neighbour); 1 = identical sets.
    """
    shared = shared_counts(nn_x, nn_y)
    return shared / (2 * nn_x.shape[1] - shared)


@register("cycle_knn", **_KNN_SETS)
def cycle_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Fraction of samples i for which some Y-neighbour j of i has i among its X-neighbours
    (the cycle i -> kNN_Y -> kNN_X -> i closes), as PRH's ``knn_A[knn_B]``. Not symmetric.

    Chance = 1 - (1 - topk/(N-1))^topk ≈ topk^2 / (N - 1).
    """
    n = nn_x.shape[0]
    returns = nn_x[nn_y] == np.arange(n)[:, None, None]  # [N, k (via Y), k (via X)]
    return returns.any(axis=(1, 2)).astype(np.float64)


@register("lcs_knn", **_KNN)
def lcs_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Mean over samples of LCS(ranked kNN_X(i), ranked kNN_Y(i)) / topk: shared neighbours
    in the same order. In [0, 1] (PRH returns the raw length, i.e. this times topk).

    Chance ≈ topk / (N - 1) (at most mutual_knn, which ignores order).
    """
    return lcs_lengths(nn_x, nn_y) / nn_x.shape[1]


@register("edit_distance_knn", **_KNN)
def edit_distance_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """1 - mean over samples of Levenshtein(ranked kNN_X(i), ranked kNN_Y(i)) / topk, as PRH.

    Chance ≈ 0 (random lists share almost nothing, so distance ≈ topk); 1 = same ranking.
    """
    return 1.0 - edit_distances(nn_x, nn_y) / nn_x.shape[1]
