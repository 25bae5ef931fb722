"""Uncertainty of one layer pair's score: half-sample bootstrap intervals (and their replicates,
for paired differences between pairs) and permutation p-values.

    X, Y = preprocess(A)[:, i], preprocess(B)[:, j]
    bootstrap_ci(X, Y, "mutual_knn", topk=10)         # (score, low, high)
    permutation_pvalue(X, Y, "mutual_knn", topk=10)   # (score, p_value, null)

The same routines serve the pair stage, which passes the states it prepared once
(``PreparedPair``) instead of layers.
"""

from __future__ import annotations

import hashlib
from typing import Callable, NamedTuple

import numpy as np

from convergence import metrics
from convergence.metrics._registry import Metric, as_matrix, check_pair


class Interval(NamedTuple):
    score: float  # on all samples
    low: float
    high: float


class PermutationTest(NamedTuple):
    score: float
    p_value: float
    null: np.ndarray  # scores under shuffled correspondence


def check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_level(name: str, value) -> float:
    if isinstance(value, bool) or not (np.isscalar(value) and np.isreal(value) and 0 < value < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


# ---- half-samples ------------------------------------------------------------------------------


def half_samples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n // 2]`` sorted row indices, each a half-sample drawn without replacement.
    The same (n, n_boot, seed) give the same half-samples: every pair of a dataset is
    resampled alike, so differences between pairs get paired replicates."""
    n_boot = check_count("n_boot", n_boot)
    m = n // 2
    if m < 2:
        raise ValueError(f"the bootstrap needs N >= 4 samples for half-samples, got N={n}")
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.permutation(n)[:m]) for _ in range(n_boot)])


def halves_digest(halves: np.ndarray) -> str:
    """A short fingerprint of a set of half-samples (to check that two pairs shared them)."""
    return hashlib.sha256(np.ascontiguousarray(halves, dtype=np.int64).tobytes()).hexdigest()[:16]


def replicate_scores(spec: Metric, state_of_x: Callable, state_of_y: Callable, compare_params: dict,
                     halves: np.ndarray) -> np.ndarray:
    """The score on each half-sample (rows ``halves[b]`` of both representations)."""
    return np.array([spec.compare_pair(state_of_x(idx), state_of_y(idx), compare_params) for idx in halves])


def _spread_scale(n: int, m: int) -> float:
    # A half-sample's variance around the full-sample value is sigma^2 (1/m - 1/N): scaled
    # by sqrt(m / (N - m)) it is the sampling variance at N (exactly 1 for even N).
    return float(np.sqrt(m / (n - m)))


def deviations(replicates: np.ndarray, n: int) -> np.ndarray:
    """Replicates centred on their own mean and scaled to the spread at N samples (the mean
    of half-samples is the statistic at N/2, whose level differs for kNN and CCA metrics)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    return (replicates - replicates.mean()) * _spread_scale(n, n // 2)


def interval_of(estimate: float, replicates: np.ndarray, n: int, ci: float = 0.95) -> tuple[float, float]:
    """(low, high): the estimate plus the central ``ci`` quantiles of ``deviations``."""
    ci = check_level("ci", ci)
    low, high = estimate + np.quantile(deviations(replicates, n), [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def bootstrap_p(estimate: float, replicates: np.ndarray, n: int) -> float:
    """Two-sided p-value of "the statistic is 0", by inverting the interval: the share of
    deviations at least as far from 0 as the estimate, (1 + #{|dev| >= |estimate|}) / (B + 1).
    Floor 1 / (B + 1)."""
    dev = deviations(replicates, n)
    return float((1 + np.count_nonzero(np.abs(dev) >= abs(estimate))) / (len(dev) + 1))


# ---- one layer pair ------------------------------------------------------------------------------


def _setup(X, Y, metric: str, params: dict):
    spec = metrics.get(metric)
    prepare_params, compare_params = spec.split_params(params)
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    check_pair(X, Y)
    return spec, prepare_params, compare_params, X, Y


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
    N x N product); CKA takes a block of the full centred Gram; other metrics recompute
    their per-representation state.
    """
    spec, prepare_params, compare_params, X, Y = _setup(X, Y, metric, params)
    ci = check_level("ci", ci)
    n = X.shape[0]
    halves = half_samples(n, n_boot, seed)
    state_x, state_y = spec.prepare_one(X, prepare_params), spec.prepare_one(Y, prepare_params)
    observed = spec.compare_pair(state_x, state_y, compare_params)
    replicates = replicate_scores(spec, spec.state_subsampler(state_x, lambda: X, prepare_params),
                                  spec.state_subsampler(state_y, lambda: Y, prepare_params), compare_params, halves)
    return Interval(observed, *interval_of(observed, replicates, n, ci))


def permutation_pvalue(X, Y, metric: str, n_perm: int = 1000, seed: int = 0,
                       **params) -> PermutationTest:
    """One-sided permutation test of "X and Y are aligned beyond chance" for one layer pair:
    the rows of Y are shuffled (correspondence broken) ``n_perm`` times; p = (1 + #{null >=
    observed}) / (1 + n_perm) (floor 1 / (1 + n_perm)). The prepared state of Y is permuted
    rather than recomputed where the metric allows (kNN indices relabelled, Gram matrices
    re-indexed). Seeded and deterministic. For the best of several layer pairs use
    ``calibrate_layers``, whose null repeats the search."""
    spec, prepare_params, compare_params, X, Y = _setup(X, Y, metric, params)
    n_perm = check_count("n_perm", n_perm)
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
