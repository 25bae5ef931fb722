"""Nearest-neighbour alignment metrics (PRH): agreement between the kNN graphs of X and Y.

Neighbours are by inner product on the rows as given (PRH L2-normalises first; that is the
caller's preprocessing, see ``convergence.alignment.preprocess``), self excluded.
Each metric is a mean over samples of a per-sample score in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from ._registry import check_int, check_not_constant, register

# Similarity rows held at once: the [block, N] float64 block is the only N-sized buffer,
# so memory is O(N * D + block * N) instead of O(N^2).
BLOCK_BYTES = 256 * 2**20


def knn_indices(X: np.ndarray, topk: int, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """``[N, topk]`` int64: each row's ``topk`` largest inner products with the other rows,
    in descending order of similarity (self excluded), computed in float64 by row blocks."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    block = max(1, min(n, block_bytes // (8 * n)))
    out = np.empty((n, topk), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = X[start:stop] @ X.T  # numpy uses syrk when the block is all of X
        rows = np.arange(stop - start)
        sims[rows, start + rows] = -np.inf  # self is never its own neighbour
        out[start:stop] = torch.topk(torch.from_numpy(sims), topk, dim=1, sorted=True).indices.numpy()
        del sims  # free before the next block is allocated: one block alive at a time
    return out


def check_topk(topk, n: int) -> int:
    if n < 2:
        raise ValueError(f"needs at least 2 samples for neighbours, got N={n}")
    if isinstance(topk, (int, np.integer)) and not isinstance(topk, bool) and topk >= n:
        raise ValueError(f"topk={topk} must be < N={n} (each sample has only N-1 others)")
    return check_int("topk", topk, 1, n - 1)


def neighbours(X: np.ndarray, topk: int = 10) -> np.ndarray:
    """``prepare`` for all kNN metrics."""
    topk = check_topk(topk, X.shape[0])
    check_not_constant(X, "every similarity ties, so its neighbours are arbitrary")
    return knn_indices(X, topk)


def knn_subsampler(X: np.ndarray, topk: int = 10):
    """``subsampler`` for kNN metrics: ``idx -> neighbours(X[idx], topk)`` without a new
    N x N product. A subsample's k nearest are the first k members of the subsample in each
    row's full-data ranking; a ranking of ~4k + 10 holds k of them unless the subsample is
    very sparse, and rows that run short are recomputed exactly."""
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


def knn_indices_of_rows(X: np.ndarray, rows: np.ndarray, topk: int) -> np.ndarray:
    """``knn_indices(X, topk)[rows]`` computed for those rows only."""
    sims = X[rows] @ X.T
    sims[np.arange(len(rows)), rows] = -np.inf
    return torch.topk(torch.from_numpy(sims), topk, dim=1, sorted=True).indices.numpy()


def permute_neighbours(nn: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Neighbours of ``X[perm]`` from those of ``X``: row i of ``X[perm]`` is sample
    ``perm[i]``, and sample ``m`` sits at row ``inverse[m]``. Order is preserved."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return inverse[nn[perm]]


def shared_counts(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """|kNN_X(i) ∩ kNN_Y(i)| per row (indices within a row are distinct)."""
    return (nn_x[:, :, None] == nn_y[:, None, :]).sum(axis=(1, 2))


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


_KNN = dict(prepare=neighbours, per_sample=True, permute=permute_neighbours, subsampler=knn_subsampler)


@register("mutual_knn", **_KNN)
def mutual_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Mean over samples of |kNN_X(i) ∩ kNN_Y(i)| / topk, as PRH.

    Chance (independent representations) ≈ topk / (N - 1); 1 = identical neighbour sets.
    """
    return shared_counts(nn_x, nn_y) / nn_x.shape[1]


@register("jaccard_knn", **_KNN)
def jaccard_knn(nn_x: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Mean over samples of the Jaccard index |kNN_X(i) ∩ kNN_Y(i)| / |kNN_X(i) ∪ kNN_Y(i)|.

    Chance ≈ topk / (2 (N - 1)) (overlaps are mostly 0 or 1 neighbour); 1 = identical sets.
    """
    shared = shared_counts(nn_x, nn_y)
    return shared / (2 * nn_x.shape[1] - shared)


@register("cycle_knn", **_KNN)
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
