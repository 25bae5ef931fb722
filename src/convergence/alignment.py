"""Alignment of two models over every layer pair, and its uncertainty for one pair.

    Z = layer_scores(A, B, "mutual_knn", topk=10)    # A [N, La, D], B [N, Lb, D'] -> [La, Lb]
    i, j, best = best_pair(Z)                        # max over layer pairs, as PRH
    X, Y = preprocess(A)[:, i], preprocess(B)[:, j]
    bootstrap_ci(X, Y, "mutual_knn", topk=10)         # (score, low, high)
    permutation_pvalue(X, Y, "mutual_knn", topk=10)   # (score, p_value, null)

``layer_scores`` equals looping ``metrics.score`` over the preprocessed layers, but runs the
metric's per-representation half (kNN indices, centred Gram, SVD basis) once per layer.
Arrays only: no files, no models.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from . import metrics
from .metrics import _kernels, knn
from .metrics._registry import as_matrix, check_pair, real_matrix, to_numpy
from .metrics._scratch import reuse_buffers_in_this_thread, scratch

CLIP_METHODS = ("global", "per_sample_mean")


# ---- preprocessing (explicit, so callers can record it) ---------------------------------


def _as_stack(A, label: str) -> np.ndarray:
    A = to_numpy(A)
    if A.ndim != 3:
        raise ValueError(f"{label} must be 3-D [N, layers, D], got shape {A.shape}")
    if 0 in A.shape:
        raise ValueError(f"{label} is empty (shape {A.shape})")
    return A


def clip_threshold(A, q: float, method: str = "global") -> float:
    """PRH's ``remove_outliers`` threshold over all layers of one model ``[N, L, D]``.

    ``'global'``: the element at index int(q * size) of the sorted |A| (PRH ``exact=True``,
    its ``--precise`` mode); ``'per_sample_mean'``: the q-quantile of |A| within each sample
    (linear interpolation), averaged over samples (PRH's default ``exact=False``).
    """
    A = _as_stack(A, "A")
    if not (np.isscalar(q) and 0 < q <= 1):
        raise ValueError(f"clip_quantile must be in (0, 1], got {q!r}")
    if method not in CLIP_METHODS:
        raise ValueError(f"clip_method={method!r} must be one of {CLIP_METHODS}")
    magnitudes = np.abs(A)
    if not np.isfinite(magnitudes).all():
        raise ValueError("A has non-finite values (NaN or inf)")
    if method == "per_sample_mean":
        per_sample = np.quantile(magnitudes.reshape(A.shape[0], -1).astype(np.float64), q, axis=1)
        return float(per_sample.mean())
    flat = magnitudes.ravel()
    k = min(int(q * flat.size), flat.size - 1)
    return float(np.partition(flat, k)[k])


def preprocess_layer(layer, normalize: bool = True, threshold: float | None = None,
                     label: str = "layer", out: np.ndarray | None = None) -> np.ndarray:
    """One layer ``[N, D]`` in float64: clamp to ±threshold (from ``clip_threshold`` over the
    model's layers), then rows to unit L2 norm (all-zero rows stay zero, as F.normalize).
    One compiled pass; each row's result depends on that row only (``out``: where to write)."""
    x = real_matrix(layer, label)
    if out is None:
        out = np.empty(x.shape)
    elif (not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != np.float64
          or not out.flags.writeable or np.shares_memory(out, x)):
        raise ValueError(f"out must be a writeable float64 array of shape {x.shape}, apart from the layer")
    bad = _kernels.normalize_rows(x, 0.0 if threshold is None else float(threshold),
                                  threshold is not None, normalize, out)
    if bad:
        raise ValueError(f"{label} has {bad} non-finite value(s) (NaN or inf)")
    return out


def preprocess(A, normalize: bool = True, clip_quantile: float | None = None,
               clip_method: str = "global") -> np.ndarray:
    """PRH preprocessing of one model's features ``[N, L, D]`` -> float64 ``[N, L, D]``:
    optional outlier clamp at the ``clip_quantile`` of |A| over all its layers
    (``clip_threshold``), then (``normalize``) each layer's rows L2-normalised."""
    A = _as_stack(A, "A")
    threshold = None if clip_quantile is None else clip_threshold(A, clip_quantile, clip_method)
    layers = [preprocess_layer(A[:, i], normalize, threshold, f"A layer {i}") for i in range(A.shape[1])]
    return np.stack(layers, axis=1)


# ---- all layer pairs -----------------------------------------------------------------------


def layer_scores(A, B, metric: str, normalize: bool = True, clip_quantile: float | None = None,
                 clip_method: str = "global", workers: int | None = None, **params) -> np.ndarray:
    """``[La, Lb]`` scores of ``metric`` between every layer of A ``[N, La, Da]`` and of
    B ``[N, Lb, Db]`` after ``preprocess``. Holds the prepared states of B's layers and one
    of A's per worker (for kNN metrics: ``[N, topk]`` indices, so N = 50,000 fits).

    ``workers`` threads (default: the CPUs this process may use, fewer where their memory
    would pass WORKER_MEMORY) each prepare one layer at a time, B's first, then each of A's
    against all of B's, the cores shared out among their BLAS calls (one each when there are
    as many layers as cores): so the per-layer work that is not BLAS (preprocessing, the kNN
    scan, comparisons) runs in parallel too. Results do not depend on ``workers`` beyond the
    rounding of multi-threaded BLAS (none for the kNN metrics; PWCCA, whose weights hinge on
    nearly equal canonical correlations, can amplify it to ~1e-4).
    """
    spec = metrics.get(metric)
    prepare_params, compare_params = spec.split_params(params)
    A, B = _as_stack(A, "A"), _as_stack(B, "B")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must have the same samples: N={A.shape[0]} != {B.shape[0]}")
    workers = layer_workers(metric, A.shape[0], max(A.shape[2], B.shape[2]), A.shape[1] + B.shape[1], workers)
    thresholds = [None if clip_quantile is None else clip_threshold(stack, clip_quantile, clip_method)
                  for stack in (A, B)]

    def state(stack, i, threshold, label):
        # Preprocessed into a reused buffer when the metric's state keeps no reference to it.
        out = None if spec.state_refers_to_input else scratch("layer", stack[:, i].shape, np.float64)
        layer = preprocess_layer(stack[:, i], normalize, threshold, f"{label} layer {i}", out=out)
        return spec.prepare_one(layer, prepare_params)

    def row(i):
        state_a = state(A, i, thresholds[0], "A")
        return [spec.compare_pair(state_a, b.result(), compare_params) for b in states_b]

    # The cores shared out among the workers' BLAS calls (one each when there are as many
    # workers as cores): more would oversubscribe them.
    limits = (threadpool_limits(max(1, available_cpus() // workers), user_api="blas") if workers > 1
              else contextlib.nullcontext())
    with limits, ThreadPoolExecutor(workers, thread_name_prefix="layer",
                                    initializer=reuse_buffers_in_this_thread) as pool:
        try:
            # B's jobs are queued first, so they all start before any of A's waits on them.
            states_b = [pool.submit(state, B, j, thresholds[1], "B") for j in range(B.shape[1])]
            rows = [pool.submit(row, i) for i in range(A.shape[1])]
            return np.array([r.result() for r in rows], dtype=np.float64)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# Memory the layer workers may take together by default (each holds its layer in float64,
# its float32 copy and a similarity block or Gram matrix).
WORKER_MEMORY = 2 * 2**30


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def layer_workers(metric: str, n: int, d: int, layers: int, workers: int | None = None) -> int:
    """The threads ``layer_scores`` uses for ``layers`` layers of ``n`` samples (widest ``d``):
    ``workers`` if given, else as many as CPUs while their memory stays in WORKER_MEMORY;
    never more than there are layers."""
    if workers is None:
        workers = _default_workers(metrics.get(metric), n, d, available_cpus())
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return int(min(workers, layers))


def _default_workers(spec, n: int, d: int, cpus: int) -> int:
    """As many workers as CPUs while their estimated working memory stays in WORKER_MEMORY."""
    if spec.prepare in (knn.neighbours, knn.neighbour_sets):
        per_worker = 12 * n * d + min(4 * n * n, knn.BLOCK_BYTES)  # float64 + float32 layer, a block
    else:
        per_worker = 8 * n * d + 16 * n * n  # e.g. a Gram matrix and its centred copy
    return int(max(1, min(cpus, WORKER_MEMORY // per_worker)))


def best_pair(matrix) -> tuple[int, int, float]:
    """(layer_a, layer_b, score) of the maximum; the first in row-major order on ties
    (PRH's loop order)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"expected a non-empty 2-D score matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("score matrix has non-finite values")
    i, j = np.unravel_index(int(np.argmax(matrix)), matrix.shape)
    return int(i), int(j), float(matrix[i, j])


# ---- uncertainty for one layer pair ---------------------------------------------------------


class Interval(NamedTuple):
    score: float  # on all samples
    low: float
    high: float


class PermutationTest(NamedTuple):
    score: float
    p_value: float
    null: np.ndarray  # scores under shuffled correspondence


def _setup(X, Y, metric: str, params: dict):
    spec = metrics.get(metric)
    prepare_params, compare_params = spec.split_params(params)
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    check_pair(X, Y)
    return spec, prepare_params, compare_params, X, Y


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def bootstrap_ci(X, Y, metric: str, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                 **params) -> Interval:
    """Interval for one layer pair's score from resampling samples (X, Y as given: pass
    preprocessed layers, e.g. ``preprocess(A)[:, i]``). Seeded and deterministic.

    Rows are drawn *without* replacement, as half-samples (m = N // 2; half-sample
    replication) rather than with replacement: a duplicated row is its own nearest
    neighbour in both representations and lowers the number of distinct samples, which
    pushes kNN, CKA, CCA and Procrustes scores up, so with-replacement percentile intervals
    can miss the score altogether (see tests/test_alignment.py). For a half-sample the
    variance around the full-sample value is sigma^2 (1/m - 1/N) = sigma^2 / N, the
    sampling variance at N; its mean, though, is the metric at N/2 (kNN and CCA levels
    depend on N). So the interval is the score plus the quantiles of the replicates
    centred on their own mean, scaled by sqrt(m / (N - m)) (exactly 1 for even N).
    kNN metrics take each half-sample's neighbours from the full-data ranking (no new
    N x N product); other metrics recompute their per-representation state.
    """
    spec, prepare_params, compare_params, X, Y = _setup(X, Y, metric, params)
    n_boot = _check_count("n_boot", n_boot)
    if not (np.isscalar(ci) and 0 < ci < 1):
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    n = X.shape[0]
    m = n // 2
    if m < 2:
        raise ValueError(f"bootstrap_ci needs N >= 4 samples for half-samples, got N={n}")
    observed = spec.compare_pair(spec.prepare_one(X, prepare_params),
                                 spec.prepare_one(Y, prepare_params), compare_params)
    state_x = spec.subsample_states(X, prepare_params)
    state_y = spec.subsample_states(Y, prepare_params)
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.sort(rng.permutation(n)[:m])
        replicates[b] = spec.compare_pair(state_x(idx), state_y(idx), compare_params)
    deviations = (replicates - replicates.mean()) * np.sqrt(m / (n - m))
    low, high = observed + np.quantile(deviations, [(1 - ci) / 2, (1 + ci) / 2])
    return Interval(observed, float(low), float(high))


def permutation_pvalue(X, Y, metric: str, n_perm: int = 1000, seed: int = 0,
                       **params) -> PermutationTest:
    """One-sided permutation test of "X and Y are aligned beyond chance": the rows of Y are
    shuffled (correspondence broken) ``n_perm`` times; p = (1 + #{null >= observed}) /
    (1 + n_perm). The prepared state of Y is permuted rather than recomputed where the metric
    allows (kNN indices relabelled, Gram matrices re-indexed). Seeded and deterministic."""
    spec, prepare_params, compare_params, X, Y = _setup(X, Y, metric, params)
    n_perm = _check_count("n_perm", n_perm)
    rng = np.random.default_rng(seed)
    state_x = spec.prepare_one(X, prepare_params)
    state_y = spec.prepare_one(Y, prepare_params)
    observed = spec.compare_pair(state_x, state_y, compare_params)
    null = np.empty(n_perm)
    for b in range(n_perm):
        perm = rng.permutation(X.shape[0])
        shuffled = (spec.permute(state_y, perm) if spec.permute is not None
                    else spec.prepare_one(Y[perm], prepare_params))
        null[b] = spec.compare_pair(state_x, shuffled, compare_params)
    p_value = (1 + int((null >= observed).sum())) / (1 + n_perm)
    return PermutationTest(observed, p_value, null)
