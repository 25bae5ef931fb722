"""Null calibration over the layer search (Gröger, Wen & Brbić 2026, *Revisiting the Platonic
Representation Hypothesis: An Aristotelian View*, Algorithm 2; reference code
``calibrated-similarity``).

The summary of a model pair is an aggregate (the max, as PRH) over all La x Lb layer pairs, so
its null must be maximised the same way: the sample correspondence is broken by one
permutation of B's samples, applied to every layer of B, and the whole grid is scored again.
With K permutations,

* tau = the ceil((1 - alpha)(K + 1))-th smallest of {observed} and the K null aggregates;
* calibrated = clamp((observed - tau) / (s_max - tau), 0, 1), s_max = 1 (every registered
  metric is at most 1): 0 unless the pair beats the null's (1 - alpha) level;
* p = (1 + #{null >= observed}) / (K + 1), floor 1 / (K + 1).

Prepared states are relabelled, never recomputed: kNN indices are mapped through the
permutation (mutual and Jaccard kNN score every layer pair of a permutation in one compiled
pass), Grams are re-indexed (CKA: one matrix product per permutation).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import numpy as np

from convergence.alignment.layers import PreparedPair, prepare_pair
from convergence.alignment.stats import check_count

S_MAX = 1.0  # the largest value of every registered metric
_EPSILON = 1e-12  # the reference's floor on s_max - tau
AGGREGATES = ("max", "mean")


class Calibration(NamedTuple):
    observed: float  # the aggregate over the layer grid
    tau: float  # the null's critical value at level alpha
    calibrated: float  # clamp((observed - tau) / (1 - tau), 0, 1)
    p_value: float  # (1 + #{null >= observed}) / (K + 1)
    null: np.ndarray  # [K] aggregates under permuted correspondence

    @property
    def p_floor(self) -> float:
        """The smallest p-value K permutations can give."""
        return 1.0 / (len(self.null) + 1)


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not (np.isscalar(alpha) and np.isreal(alpha) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1), e.g. 0.05; got {alpha!r}")
    return float(alpha)


def aggregator(agg) -> Callable[[np.ndarray], float]:
    """'max', 'mean' or a callable taking the [La, Lb] score grid to one number."""
    if isinstance(agg, str) and agg in AGGREGATES:
        return np.max if agg == "max" else np.mean
    if callable(agg) and not isinstance(agg, str):
        return agg
    raise ValueError(f"agg must be 'max', 'mean' or a callable of the [La, Lb] score grid; got {agg!r}")


def permutations(n: int, n_perm: int, seed: int) -> np.ndarray:
    """``[n_perm, n]`` seeded permutations of the samples (the same for every pair of a
    dataset with the same seed)."""
    n_perm = check_count("n_perm", n_perm)
    rng = np.random.default_rng([seed, 1])  # a stream apart from the half-samples' (seed)
    return np.stack([rng.permutation(n) for _ in range(n_perm)])


def check_perms(perms, n: int) -> np.ndarray:
    """``perms`` as a [K, N] int64 array whose rows are permutations of 0..N-1, or one clear error."""
    fix = f"perms must be a [K, N] integer array whose rows are permutations of 0..N-1, with N = {n} samples"
    arr = np.asarray(perms)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{fix}; got shape {arr.shape}")
    if arr.shape[1] != n:
        raise ValueError(f"{fix}; got rows of length {arr.shape[1]} (wrong N)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{fix}; got dtype {arr.dtype}")
    bad = np.flatnonzero((np.sort(arr, axis=1) != np.arange(n)).any(axis=1))
    if bad.size:
        raise ValueError(f"{fix}; row {int(bad[0])} is not a permutation ({bad.size} such rows)")
    return np.ascontiguousarray(arr, dtype=np.int64)


def critical_value(observed: float, null: np.ndarray, alpha: float) -> float:
    """tau: the ceil((1 - alpha)(K + 1))-th smallest of {observed} and the null (as the reference)."""
    combined = np.sort(np.concatenate([[observed], null]))
    k = len(null)
    idx = min(max(int(math.ceil((1.0 - alpha) * (k + 1))) - 1, 0), k)
    return float(combined[idx])


def calibrate_pair(pair: PreparedPair, perms: np.ndarray, alpha: float = 0.05, agg="max",
                   progress=None) -> Calibration:
    """``Calibration`` of a prepared pair's layer grid against ``perms`` (checked)."""
    alpha = check_alpha(alpha)
    summary = aggregator(agg)
    perms = check_perms(perms, pair.n)
    observed = float(summary(pair.null_grid(np.arange(pair.n))))
    null = np.empty(len(perms))
    for k, perm in enumerate(perms):
        null[k] = float(summary(pair.null_grid(perm)))
        if progress is not None:
            progress(k + 1)
    if not np.isfinite(null).all() or not np.isfinite(observed):
        raise ValueError(f"the aggregate {agg!r} of the score grid is not finite")
    if math.ceil((1.0 - alpha) * (len(null) + 1)) > len(null):
        warnings.warn(f"{len(null)} permutations are too few for alpha = {alpha}: tau is the largest of the observed "
                      f"and null aggregates, so the calibrated score is 0 whatever the data; use n_perm >= "
                      f"{math.ceil(1 / alpha) - 1}", stacklevel=2)
    tau = critical_value(observed, null, alpha)
    calibrated = min(max((observed - tau) / max(S_MAX - tau, _EPSILON), 0.0), 1.0)
    p_value = (1 + int(np.count_nonzero(null >= observed))) / (len(null) + 1)
    return Calibration(observed, tau, calibrated, p_value, null)


def calibrate_layers(A, B, metric: str, n_perm: int = 200, alpha: float = 0.05, agg="max", seed: int = 0,
                     perms=None, normalize: bool = True, clip_quantile: float | None = None,
                     clip_method: str = "per_sample_mean", **params) -> Calibration:
    """Aggregation-aware null calibration of ``metric`` between every layer of A ``[N, La, D]``
    and of B ``[N, Lb, D']`` (preprocessed as ``layer_scores``): the observed aggregate
    (``agg``: 'max', 'mean' or a callable of the [La, Lb] grid), tau, the calibrated score,
    the p-value and the K null aggregates (see the module docstring).

    ``perms`` [K, N]: explicit permutations of B's samples (then ``n_perm`` and ``seed`` are
    not used); else ``n_perm`` seeded ones. Equals ``calibrated_similarity.calibrate_layers``
    given the same permutations and this metric as ``sim`` (tests/test_calibration.py)."""
    alpha = check_alpha(alpha)
    aggregator(agg)
    if perms is not None:  # checked before the layers are prepared
        perms = check_perms(perms, len(A))
    pair = prepare_pair(A, B, metric, normalize=normalize, clip_quantile=clip_quantile,
                        clip_method=clip_method, **params)
    perms = permutations(pair.n, n_perm, seed) if perms is None else perms
    return calibrate_pair(pair, perms, alpha, agg)
