"""Every layer of two models, preprocessed and prepared once: the scores of all layer pairs and
the states that every statistic reads.

    Z = layer_scores(A, B, "mutual_knn", topk=10)          # A [N, La, D], B [N, Lb, D'] -> [La, Lb]
                                                           # (or lists of [N, D_l] layers of any widths)
    pair = prepare_pair(A, B, "mutual_knn", topk=10)       # the same, keeping every layer's state
    pair.matrix, pair.null_grid(perm), pair.subsampler("a", i)

``layer_scores`` equals looping ``metrics.score`` over the preprocessed layers, but runs the
metric's per-representation half (kNN indices, centred Gram, SVD basis) once per layer.
Arrays only: no files, no models.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from convergence import metrics
from convergence.metrics import _kernels, knn
from convergence.metrics._registry import Metric, real_matrix, to_numpy
from convergence.metrics._scratch import reuse_buffers_in_this_thread, scratch

# PRH's two outlier thresholds (platonic-rep metrics.remove_outliers): the per-sample quantile
# averaged over samples (exact=False, what its measure_alignment CLI runs by default) and the
# order statistic over all values (exact=True, its --precise flag).
CLIP_METHODS = ("per_sample_mean", "global")


# ---- preprocessing (explicit, so callers can record it) ---------------------------------


class LayerStack:
    """One model's layers over the same N samples: a ``[N, L, D]`` array, or a sequence of ``L``
    arrays ``[N, D_l]`` whose widths differ (CNN stages, the pixel baseline's scales). ``stack[i]``
    is layer ``i`` ``[N, D_i]`` (a view where it can be)."""

    def __init__(self, layers: list[np.ndarray]):
        self.layers = layers

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.layers[i]

    @property
    def n(self) -> int:
        return self.layers[0].shape[0]

    @property
    def widths(self) -> list[int]:
        return [x.shape[1] for x in self.layers]

    def magnitudes(self) -> np.ndarray:
        """|values| of every layer side by side, ``[N, sum of widths]`` (each sample's row)."""
        return np.concatenate([np.abs(x) for x in self.layers], axis=1)


def _as_stack(A, label: str) -> LayerStack:
    """A ``[N, L, D]`` array or a list of ``[N, D_l]`` layers -> ``LayerStack`` (validated)."""
    if isinstance(A, LayerStack):
        return A
    if isinstance(A, (list, tuple)):
        if not A:
            raise ValueError(f"{label} has no layers")
        layers = [to_numpy(x) for x in A]
        for i, x in enumerate(layers):
            if x.ndim != 2 or 0 in x.shape:
                raise ValueError(f"{label} layer {i} must be a non-empty 2-D [N, D] array, got shape {x.shape}")
        if len({x.shape[0] for x in layers}) != 1:
            raise ValueError(f"{label}'s layers have different numbers of samples: {[x.shape[0] for x in layers]}")
        return LayerStack(layers)
    A = to_numpy(A)
    if A.ndim != 3:
        raise ValueError(f"{label} must be 3-D [N, layers, D] (or a list of [N, D] layers), got shape {A.shape}")
    if 0 in A.shape:
        raise ValueError(f"{label} is empty (shape {A.shape})")
    return LayerStack([A[:, i] for i in range(A.shape[1])])


def clip_threshold(A, q: float, method: str = "per_sample_mean") -> float:
    """PRH's ``remove_outliers`` threshold over all layers of one model ``[N, L, D]`` (or a list
    of layers of different widths: each sample's values are those of all its layers).

    ``'global'``: the element at index int(q * size) of the sorted |A| (PRH ``exact=True``,
    its ``--precise`` mode); ``'per_sample_mean'``: the q-quantile of |A| within each sample
    (linear interpolation), averaged over samples (PRH's default ``exact=False``).
    """
    A = _as_stack(A, "A")
    if not (np.isscalar(q) and 0 < q <= 1):
        raise ValueError(f"clip_quantile must be in (0, 1], got {q!r}")
    if method not in CLIP_METHODS:
        raise ValueError(f"clip_method={method!r} must be one of {CLIP_METHODS}")
    magnitudes = A.magnitudes()
    if not np.isfinite(magnitudes).all():
        raise ValueError("A has non-finite values (NaN or inf)")
    if method == "per_sample_mean":
        per_sample = np.quantile(magnitudes.astype(np.float64), q, axis=1)
        return float(per_sample.mean())
    flat = magnitudes.ravel()
    k = min(int(q * flat.size), flat.size - 1)
    return float(np.partition(flat, k)[k])


def model_clip_threshold(A, q: float | None, method: str = "per_sample_mean") -> float | None:
    """The clamp one model's layers get: ``clip_threshold``, or None (no clamp) when ``q`` is None or
    the threshold is 0. A zero threshold means more than a 1 − q share of the values are exactly 0
    (sparse features: a bag of words, counts), and clamping at 0 would erase the representation;
    PRH's outlier removal targets massive activations, which such features do not have.
    ``pair_result`` records which side was left unclipped (``preprocessing.unclipped``)."""
    if q is None:
        return None
    threshold = clip_threshold(A, q, method)
    return threshold if threshold > 0 else None


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
               clip_method: str = "per_sample_mean") -> np.ndarray:
    """PRH preprocessing of one model's features ``[N, L, D]`` -> float64 ``[N, L, D]``:
    optional outlier clamp at the ``clip_quantile`` of |A| over all its layers
    (``model_clip_threshold``: none where that quantile is 0), then (``normalize``) each layer's rows L2-normalised. Layers of
    different widths (a list) come back as a list."""
    ragged = isinstance(A, (list, tuple, LayerStack))
    A = _as_stack(A, "A")
    threshold = model_clip_threshold(A, clip_quantile, clip_method)
    layers = [preprocess_layer(A[i], normalize, threshold, f"A layer {i}") for i in range(len(A))]
    return layers if ragged else np.stack(layers, axis=1)


# ---- all layer pairs -----------------------------------------------------------------------


class PreparedPair:
    """Two models' layers prepared once for one metric: ``matrix`` [La, Lb] holds every layer
    pair's score, ``states_a`` / ``states_b`` each layer's prepared state (kNN indices, a
    centred Gram, ...), which the statistics read instead of preparing the layers again."""

    def __init__(self, spec: Metric, prepare_params: dict, compare_params: dict, A: np.ndarray,
                 B: np.ndarray, normalize: bool, thresholds: tuple, states_a: list, states_b: list,
                 matrix: np.ndarray):
        self.spec, self.prepare_params, self.compare_params = spec, prepare_params, compare_params
        self.stacks = {"a": A, "b": B}
        self.normalize, self.thresholds = normalize, dict(zip("ab", thresholds))
        self.states = {"a": states_a, "b": states_b}
        self.matrix = matrix
        self._grid = None
        self._subsamplers = {}

    @property
    def metric(self) -> str:
        return self.spec.name

    @property
    def n(self) -> int:
        return self.stacks["a"].n

    def layer(self, side: str, k: int) -> np.ndarray:
        """Layer ``k`` of model ``side`` ('a' or 'b') preprocessed as for the scores, float64
        [N, D] (computed again from the stored activations: one O(N D) pass)."""
        return preprocess_layer(self.stacks[side][k], self.normalize, self.thresholds[side],
                                f"{side.upper()} layer {k}")

    def subsampler(self, side: str, k: int):
        """``idx -> state of the layer's rows idx``: from the prepared state where the metric
        can (a centred Gram's block), else from the preprocessed layer (made once per layer)."""
        if (side, k) not in self._subsamplers:
            self._subsamplers[side, k] = self.spec.state_subsampler(
                self.states[side][k], lambda: self.layer(side, k), self.prepare_params)
        return self._subsamplers[side, k]

    def null_grid(self, perm: np.ndarray) -> np.ndarray:
        """[La, Lb] scores of every layer pair with B's samples relabelled by ``perm`` (the
        identity gives the observed scores, computed the same way)."""
        if self._grid is None:
            self._grid = self.spec.null_grid(self.states["a"], self.states["b"], self.compare_params)
        return self._grid(perm)


def _prepare_layers(A, B, metric: str, normalize: bool, clip_quantile: float | None, clip_method: str,
                    workers: int | None, keep: bool, params: dict) -> PreparedPair:
    spec = metrics.get(metric)
    prepare_params, compare_params = spec.split_params(params)
    A, B = _as_stack(A, "A"), _as_stack(B, "B")
    if A.n != B.n:
        raise ValueError(f"A and B must have the same samples: N={A.n} != {B.n}")
    workers = layer_workers(metric, A.n, max(A.widths + B.widths), len(A) + len(B), workers)
    thresholds = tuple(model_clip_threshold(stack, clip_quantile, clip_method) for stack in (A, B))

    def state(stack, i, threshold, label):
        # Preprocessed into a reused buffer when the metric's state keeps no reference to it.
        out = None if spec.state_refers_to_input else scratch("layer", stack[i].shape, np.float64)
        layer = preprocess_layer(stack[i], normalize, threshold, f"{label} layer {i}", out=out)
        return spec.prepare_one(layer, prepare_params)

    def row(i):
        state_a = state(A, i, thresholds[0], "A")
        scores = [spec.compare_pair(state_a, b.result(), compare_params) for b in states_b]
        return scores, (state_a if keep else None)

    # The cores shared out among the workers' BLAS calls (one each when there are as many
    # workers as cores): more would oversubscribe them.
    limits = (threadpool_limits(max(1, available_cpus() // workers), user_api="blas") if workers > 1
              else contextlib.nullcontext())
    with limits, ThreadPoolExecutor(workers, thread_name_prefix="layer",
                                    initializer=reuse_buffers_in_this_thread) as pool:
        try:
            # B's jobs are queued first, so they all start before any of A's waits on them.
            states_b = [pool.submit(state, B, j, thresholds[1], "B") for j in range(len(B))]
            rows = [r.result() for r in [pool.submit(row, i) for i in range(len(A))]]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    matrix = np.array([scores for scores, _ in rows], dtype=np.float64)
    return PreparedPair(spec, prepare_params, compare_params, A, B, normalize, thresholds,
                        [s for _, s in rows] if keep else [], [b.result() for b in states_b], matrix)


def layer_scores(A, B, metric: str, normalize: bool = True, clip_quantile: float | None = None,
                 clip_method: str = "per_sample_mean", workers: int | None = None, **params) -> np.ndarray:
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
    return _prepare_layers(A, B, metric, normalize, clip_quantile, clip_method, workers, False, params).matrix


def prepare_pair(A, B, metric: str, normalize: bool = True, clip_quantile: float | None = None,
                 clip_method: str = "per_sample_mean", workers: int | None = None, **params) -> PreparedPair:
    """``layer_scores``, keeping every layer's prepared state of both models (for the
    statistics: calibration, bootstrap, N-sweep). Memory: all layers' states at once (for
    CKA an N x N Gram per layer; for kNN metrics [N, topk] indices)."""
    return _prepare_layers(A, B, metric, normalize, clip_quantile, clip_method, workers, True, params)


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


# Scores this close to the maximum (relative) are the same score: a mean of the same shared-neighbour
# counts summed in another order differs in its last bits, which must not pick the layer pair.
TIE_TOLERANCE = 1e-12


def best_pair(matrix) -> tuple[int, int, float]:
    """(layer_a, layer_b, score) of the maximum; the first in row-major order on ties (PRH's loop
    order), scores within TIE_TOLERANCE (relative) of the maximum counting as tied."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"expected a non-empty 2-D score matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("score matrix has non-finite values")
    top = matrix.max()
    first = int(np.flatnonzero(matrix.ravel() >= top - TIE_TOLERANCE * max(1.0, abs(top)))[0])
    i, j = np.unravel_index(first, matrix.shape)
    return int(i), int(j), float(matrix[i, j])
