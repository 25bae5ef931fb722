"""Tests of the calibrated null over the layer search: equal to the reference implementation
(calibrated-similarity, Gröger et al.) on shared permutations, relabelled states equal recomputed
scores for every metric, a pure-noise pair calibrates to 0 with uniform p, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from convergence import metrics
from convergence.alignment import calibrate_layers, prepare_pair, preprocess
from convergence.alignment.calibration import check_perms, critical_value, permutations

SMALL_PARAMS = {"svcca": {"cca_dim": 4}, "cknna": {"topk": 8}, "mutual_knn": {"topk": 5}}


def model_pair(n=80, la=3, lb=2, da=12, db=10, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 5))
    A = np.stack([signal * z @ rng.standard_normal((5, da)) + 2 * rng.standard_normal((n, da)) for _ in range(la)], 1)
    B = np.stack([signal * z @ rng.standard_normal((5, db)) + 2 * rng.standard_normal((n, db)) for _ in range(lb)], 1)
    return A.astype(np.float32), B.astype(np.float32)


def reference(A, B, metric, perms, agg, params):
    """calibrated_similarity.calibrate_layers with our metric (float64) as sim, on the same perms."""
    from calibrated_similarity import calibrate_layers as reference_calibrate

    pa, pb = preprocess(A), preprocess(B)
    order = iter(perms)
    calibrated, p, tau = reference_calibrate(
        [torch.from_numpy(pa[:, i]) for i in range(pa.shape[1])],
        [torch.from_numpy(pb[:, j]) for j in range(pb.shape[1])],
        lambda X, Y: metrics.score(metric, X.numpy(), Y.numpy(), **params),
        agg=agg, K=len(perms), perm_fn=lambda n, device: torch.from_numpy(next(order)))
    return float(calibrated), float(p), float(tau)


@pytest.mark.parametrize("metric", ["mutual_knn", "jaccard_knn", "cka", "unbiased_cka", "svcca"])
@pytest.mark.parametrize("agg", ["max", "mean", "callable"])
@pytest.mark.parametrize("signal", [0.35, 1.0])  # near the null (p in the middle) and beyond it (calibrated > 0)
def test_equals_the_reference_on_shared_permutations(metric, agg, signal):
    A, B = model_pair(signal=signal, seed=1)
    perms = permutations(80, 30, seed=4)
    params = SMALL_PARAMS.get(metric, {})
    agg = (lambda S: S[0].max()) if agg == "callable" else agg  # works on numpy and torch grids
    ours = calibrate_layers(A, B, metric, perms=perms, agg=agg, **params)
    ref_calibrated, ref_p, ref_tau = reference(A, B, metric, perms, agg, params)
    # The reference holds scores in float32: 1e-6 is its rounding, not ours.
    assert ours.calibrated == pytest.approx(ref_calibrated, abs=1e-6)
    assert ours.tau == pytest.approx(ref_tau, abs=1e-6)
    assert ours.p_value == pytest.approx(ref_p, abs=1e-6)
    assert len(ours.null) == 30 and ours.p_floor == pytest.approx(1 / 31)


@pytest.mark.parametrize("metric", ["mutual_knn", "cka"])
def test_the_reference_cases_are_not_trivial(metric):
    # The comparison above must see a p that is neither the floor nor 1, and a calibrated score > 0.
    perms = permutations(80, 30, seed=4)
    weak = calibrate_layers(*model_pair(signal=0.35, seed=1), metric, perms=perms, **SMALL_PARAMS.get(metric, {}))
    strong = calibrate_layers(*model_pair(signal=1.0, seed=1), metric, perms=perms, **SMALL_PARAMS.get(metric, {}))
    assert 1 / 31 < weak.p_value < 1 and 0 < strong.calibrated < 1


@pytest.mark.parametrize("name", metrics.available())
@pytest.mark.parametrize("shape", [(3, 2), (2, 3)])  # the side with fewer layers is relabelled
def test_null_grid_equals_scores_of_permuted_layers(name, shape):
    la, lb = shape
    A, B = model_pair(n=50, la=la, lb=lb)
    params = SMALL_PARAMS.get(name, {})
    pair = prepare_pair(A, B, name, **params)
    perm = np.random.default_rng(3).permutation(50)
    pa, pb = preprocess(A), preprocess(B)
    loop = np.array([[metrics.score(name, pa[:, i], pb[perm, j], **params) for j in range(lb)] for i in range(la)])
    np.testing.assert_allclose(pair.null_grid(perm), loop, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pair.null_grid(np.arange(50)), pair.matrix, rtol=0, atol=1e-12)


def test_tau_and_p_by_hand():
    # K = 9 null values 0.1 .. 0.9 and observed 0.85: tau is the ceil(0.95 * 10) = 10th smallest of
    # the 10 values (0.9); p = (1 + #{null >= 0.85}) / 10 = 0.2.
    null = np.arange(1, 10) / 10
    assert critical_value(0.85, null, 0.05) == 0.9
    assert critical_value(0.85, null, 0.5) == 0.5  # ceil(5) = 5th smallest
    A, B = model_pair()
    pair = prepare_pair(A, B, "cka")
    perms = permutations(80, 9, seed=2)
    from convergence.alignment.calibration import calibrate_pair

    cal = calibrate_pair(pair, perms, alpha=0.2)
    grids = np.array([pair.null_grid(p).max() for p in perms])
    assert np.array_equal(cal.null, grids)
    combined = np.sort(np.append(grids, pair.matrix.max()))
    assert cal.tau == combined[7]  # ceil(0.8 * 10) = 8th smallest
    assert cal.calibrated == pytest.approx(max(0.0, (cal.observed - cal.tau) / (1 - cal.tau)))


@pytest.mark.parametrize("metric", ["mutual_knn", "cka"])
def test_pure_noise_pair_calibrates_to_zero_with_uniform_p(metric):
    # Independent noise for A and B, fresh for every seed: under this null the calibrated score is 0
    # unless the observed max beats the null's (1 - alpha) level, which happens with probability
    # about alpha; and the permutation p-value is uniform on {1/100, ..., 1}.
    seeds = 60
    calibrated, p = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        A = rng.standard_normal((120, 3, 16)).astype(np.float32)
        B = rng.standard_normal((120, 2, 12)).astype(np.float32)
        cal = calibrate_layers(A, B, metric, n_perm=99, seed=seed, **SMALL_PARAMS.get(metric, {}))
        calibrated.append(cal.calibrated)
        p.append(cal.p_value)
    calibrated, p = np.array(calibrated), np.array(p)
    # P(calibrated > 0) <= alpha = 0.05: at most 9 of 60 (3 binomial SDs above 3).
    assert np.count_nonzero(calibrated > 0) <= 9 and np.median(calibrated) == 0.0
    assert scipy_stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.3 < p.mean() < 0.7 and np.count_nonzero(p <= 0.05) <= 9


def test_errors_are_clear():
    A, B = model_pair(n=40)
    for alpha in (0, 1, 1.5, -0.1, True, "0.05"):
        with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
            calibrate_layers(A, B, "cka", n_perm=5, alpha=alpha)
    for agg in ("median", 3, None):
        with pytest.raises(ValueError, match="agg must be 'max', 'mean' or a callable"):
            calibrate_layers(A, B, "cka", n_perm=5, agg=agg)
    good = permutations(40, 4, seed=0)
    bad = {
        "got shape \\(40,\\)": good[0],
        "rows of length 39 \\(wrong N\\)": good[:, :39],
        "row 2 is not a permutation": np.vstack([good[:2], np.zeros((1, 40), dtype=int), good[3:]]),
        "got dtype float64": good.astype(float),
        "got shape \\(0, 40\\)": good[:0],
    }
    for message, perms in bad.items():
        with pytest.raises(ValueError, match="perms must be a \\[K, N\\] integer array.*N = 40 samples.*" + message):
            calibrate_layers(A, B, "cka", perms=perms)
    with pytest.raises(ValueError, match="n_perm must be a positive integer"):
        calibrate_layers(A, B, "cka", n_perm=0)
    with pytest.warns(UserWarning, match="10 permutations are too few for alpha = 0.05.*use n_perm >= 19"):
        assert calibrate_layers(*model_pair(signal=3.0), "cka", n_perm=10).calibrated == 0.0
    assert check_perms(good.astype(np.int32), 40).dtype == np.int64
