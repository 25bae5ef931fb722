"""Tests of convergence.alignment: preprocessing, all-layer-pair scores (equal to the per-pair
loop for every metric), best pair, resampling intervals and permutation tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convergence import metrics
from convergence.alignment import (
    best_pair,
    bootstrap_ci,
    clip_threshold,
    layer_scores,
    model_clip_threshold,
    permutation_pvalue,
    preprocess,
    preprocess_layer,
)
from convergence.metrics.knn import knn_subsampler, neighbours

SMALL_PARAMS = {"svcca": {"cca_dim": 4}, "cknna": {"topk": 8}}


def model_pair(n=60, la=3, lb=2, da=12, db=10, seed=0):
    """Layer stacks [N, L, D] of two 'models' driven by one latent, with outlier values."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 5))
    A = np.stack([z @ rng.standard_normal((5, da)) + rng.standard_normal((n, da)) for _ in range(la)], axis=1)
    B = np.stack([z @ rng.standard_normal((5, db)) + rng.standard_normal((n, db)) for _ in range(lb)], axis=1)
    A[0, 0, 0] = 40.0  # an outlier for clipping to act on
    return A.astype(np.float32), B.astype(np.float32)


# ---- preprocessing ---------------------------------------------------------------------------------


def test_sparse_features_are_not_clamped_to_zero():
    """A bag of words: most counts are 0, so the per-sample 0.95 quantile of |A| is 0 and PRH's clamp
    would zero every value (a constant representation). Such a model is left unclipped; a dense one is not."""
    rng = np.random.default_rng(0)
    words = ((rng.random((40, 1, 200)) < 0.01) * rng.integers(1, 4, (40, 1, 200))).astype(np.float32)
    words[:, 0, 0] = 1.0  # no all-zero row
    assert clip_threshold(words, 0.95) == 0.0
    assert model_clip_threshold(words, 0.95) is None and model_clip_threshold(words, None) is None
    assert np.array_equal(preprocess(words, clip_quantile=0.95), preprocess(words))
    A, B = model_pair(n=40)
    assert model_clip_threshold(B, 0.95) == clip_threshold(B, 0.95) > 0
    scores = layer_scores(words, B, "cka", clip_quantile=0.95)
    by_hand = layer_scores(preprocess(words), preprocess(B, clip_quantile=0.95), "cka", normalize=False)
    assert np.allclose(scores, by_hand, rtol=0, atol=1e-12) and np.all(scores > 0)


def test_preprocess_normalises_rows_per_layer_in_float64():
    A, _ = model_pair()
    out = preprocess(A)
    assert out.dtype == np.float64 and out.shape == A.shape
    assert np.allclose(np.linalg.norm(out, axis=2), 1.0, atol=1e-12)
    assert np.array_equal(preprocess(A, normalize=False), A.astype(np.float64))


def test_clip_threshold_global_is_the_prh_exact_order_statistic():
    A, _ = model_pair()
    q = 0.95
    # PRH remove_outliers(exact=True): sort |feats| over all layers, take index int(q * numel)
    expected = torch.from_numpy(A).view(-1).abs().sort().values[int(q * A.size)].item()
    assert clip_threshold(A, q, method="global") == expected


def test_clip_threshold_per_sample_mean_is_prh_default():
    A, _ = model_pair()
    q = 0.95
    # PRH remove_outliers(exact=False): per-sample quantile over (layer, neuron), averaged
    expected = torch.quantile(torch.from_numpy(A).abs().flatten(start_dim=1).double(), q, dim=1).mean().item()
    assert clip_threshold(A, q, method="per_sample_mean") == pytest.approx(expected, rel=1e-12)
    assert clip_threshold(A, q) == clip_threshold(A, q, method="per_sample_mean")  # the default, as PRH's


def test_preprocess_clips_then_normalises():
    A, _ = model_pair()
    t = clip_threshold(A, 0.9)
    clipped = np.clip(A.astype(np.float64), -t, t)
    expected = clipped / np.linalg.norm(clipped, axis=2, keepdims=True)
    assert np.allclose(preprocess(A, clip_quantile=0.9), expected, atol=1e-14)
    assert np.abs(preprocess(A, normalize=False, clip_quantile=0.9)).max() == pytest.approx(t)


def test_preprocess_keeps_zero_rows_and_leaves_input_alone():
    A, _ = model_pair()
    A[5, 1] = 0.0
    before = A.copy()
    out = preprocess(A, clip_quantile=0.95)
    assert np.array_equal(A, before)
    assert np.all(out[5, 1] == 0.0)


def test_preprocess_rejects_bad_options():
    A, _ = model_pair()
    with pytest.raises(ValueError, match="clip_quantile"):
        preprocess(A, clip_quantile=1.5)
    with pytest.raises(ValueError, match="clip_method"):
        preprocess(A, clip_quantile=0.9, clip_method="approx")
    with pytest.raises(ValueError, match="3-D"):
        preprocess(A[:, 0])


# ---- all layer pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", metrics.available())
def test_layer_scores_equal_the_per_pair_loop(name):
    A, B = model_pair()
    params = SMALL_PARAMS.get(name, {})
    got = layer_scores(A, B, name, **params)
    pa, pb = preprocess(A), preprocess(B)
    loop = np.array([[metrics.score(name, pa[:, i], pb[:, j], **params) for j in range(B.shape[1])]
                     for i in range(A.shape[1])])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, loop, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mutual_knn", "cka", "svcca", "rsa"])
@pytest.mark.parametrize("clip_method", ["per_sample_mean", "global"])
def test_layers_of_different_widths_equal_the_loop_and_ignore_padding(name, clip_method):
    """CNN stages have different widths: layers given as a list are scored on their own columns, with
    the clipping threshold over exactly their values (hand computation), never over zero padding."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 4))
    widths = [5, 9, 6]
    layers = [(z @ rng.standard_normal((4, w)) + rng.standard_normal((50, w))).astype(np.float32) for w in widths]
    layers[1][0, 0] = 30.0
    _, B = model_pair(n=50)
    params = SMALL_PARAMS.get(name, {})
    got = layer_scores(layers, B, name, clip_quantile=0.9, clip_method=clip_method, **params)
    values = np.abs(np.concatenate(layers, axis=1)).astype(np.float64)
    threshold = (np.quantile(values, 0.9, axis=1).mean() if clip_method == "per_sample_mean"
                 else np.sort(values.ravel())[int(0.9 * values.size)])
    assert clip_threshold(layers, 0.9, clip_method) == pytest.approx(threshold, rel=1e-12)
    pb = preprocess(B, clip_quantile=0.9, clip_method=clip_method)
    loop = np.array([[metrics.score(name, preprocess_layer(x, True, threshold), pb[:, j], **params)
                      for j in range(B.shape[1])] for x in layers])
    np.testing.assert_allclose(got, loop, rtol=0, atol=1e-10)
    padded = np.zeros((50, 3, 9), np.float32)
    for k, x in enumerate(layers):
        padded[:, k, : x.shape[1]] = x
    assert clip_threshold(padded, 0.9, clip_method) != pytest.approx(threshold)  # padding would move it


@pytest.mark.parametrize("name", ["mutual_knn", "cka"])
def test_layer_scores_preprocessing_options_match_the_loop(name):
    A, B = model_pair(seed=1)
    options = dict(normalize=False, clip_quantile=0.9, clip_method="per_sample_mean")
    got = layer_scores(A, B, name, **options)
    pa = preprocess(A, **options)
    pb = preprocess(B, **options)
    loop = np.array([[metrics.score(name, pa[:, i], pb[:, j]) for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(got, loop, rtol=0, atol=1e-12)
    assert not np.allclose(got, layer_scores(A, B, name))  # the options do act


def test_layer_scores_accepts_torch_and_matches_prh_style_loop():
    A, B = model_pair(n=80)
    got = layer_scores(torch.from_numpy(A), torch.from_numpy(B), "mutual_knn", topk=5)
    # PRH compute_score: F.normalize each layer, dense argsort per pair
    fa = torch.nn.functional.normalize(torch.from_numpy(A).double(), dim=-1)
    fb = torch.nn.functional.normalize(torch.from_numpy(B).double(), dim=-1)

    def knn(f):
        s = f @ f.T
        return s.fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :5]

    for i in range(3):
        for j in range(2):
            ka, kb = knn(fa[:, i]), knn(fb[:, j])
            shared = [len(set(a) & set(b)) / 5 for a, b in zip(ka.tolist(), kb.tolist())]
            assert got[i, j] == pytest.approx(np.mean(shared), abs=1e-15)


@pytest.mark.parametrize("name", metrics.available())
def test_layer_scores_do_not_depend_on_workers(name):
    A, B = model_pair(n=70, la=4, lb=3)
    params = SMALL_PARAMS.get(name, {})
    one = layer_scores(A, B, name, workers=1, **params)
    for workers in (2, 5):
        np.testing.assert_array_equal(layer_scores(A, B, name, workers=workers, **params), one)


def test_default_workers_fit_their_memory():
    from convergence.alignment.layers import WORKER_MEMORY, _default_workers

    knn, cka = metrics.get("mutual_knn"), metrics.get("cka")
    assert _default_workers(knn, 1024, 768, cpus=16) == 16
    big = _default_workers(knn, 50_000, 768, cpus=16)
    assert big == 2 and big * (12 * 50_000 * 768 + 256 * 2**20) <= WORKER_MEMORY
    assert _default_workers(cka, 20_000, 768, cpus=16) == 1
    assert _default_workers(cka, 2_000, 768, cpus=4) == 4


def test_preprocess_layer_checks_out():
    A, _ = model_pair(n=20)
    layer = A[:, 0].astype(np.float64)
    for out in (np.empty((19, 12)), np.empty((20, 12), dtype=np.float32), layer):
        with pytest.raises(ValueError, match="out must be a writeable float64 array of shape"):
            preprocess_layer(layer, out=out)
    out = np.empty((20, 12))
    assert preprocess_layer(layer, out=out) is out and np.array_equal(out, preprocess_layer(layer))


def test_preprocess_layer_rows_depend_on_their_row_only():
    A, _ = model_pair(n=50)
    full = preprocess_layer(A[:, 1], True, 0.8)
    assert np.array_equal(preprocess_layer(np.ascontiguousarray(A[7:19, 1]), True, 0.8), full[7:19])
    assert np.array_equal(preprocess_layer(torch.from_numpy(A[:, 1]), True, 0.8), full)
    assert np.array_equal(preprocess_layer(A[:, 1].astype(np.float16).astype(np.int64), False),
                          A[:, 1].astype(np.float16).astype(np.int64).astype(np.float64))


def test_layer_scores_errors():
    A, B = model_pair()
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            layer_scores(A, B, "cka", workers=workers)
    with pytest.raises(ValueError, match="same samples"):
        layer_scores(A, B[:-1], "cka")
    with pytest.raises(ValueError, match="unknown metric"):
        layer_scores(A, B, "nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        layer_scores(A, B, "cka", topk=3)
    bad = A.copy()
    bad[2, 1, 3] = np.nan
    with pytest.raises(ValueError, match="A layer 1 has 1 non-finite"):
        layer_scores(bad, B, "cka")


# ---- best pair -----------------------------------------------------------------------------------


def test_best_pair_is_the_max_first_on_ties():
    m = np.array([[0.1, 0.5, 0.2], [0.5, 0.3, 0.0]])
    assert best_pair(m) == (0, 1, 0.5)
    assert best_pair(-np.ones((2, 2))) == (0, 0, -1.0)  # PRH would report no pair here
    # Equal means summed in another order differ in their last bits: still a tie, the first wins.
    assert best_pair(np.array([[0.1, 0.3], [0.1 + 0.2, 0.0]]))[:2] == (0, 1)
    assert 0.1 + 0.2 > 0.3 and best_pair(np.array([[0.1 + 0.2, 0.3]]))[:2] == (0, 0)
    assert best_pair(np.array([[0.3, 0.3 + 1e-9]]))[:2] == (0, 1)
    with pytest.raises(ValueError, match="non-finite"):
        best_pair(np.array([[np.nan, 1.0]]))


# ---- resampling intervals --------------------------------------------------------------------------


def aligned_pair(n=200, seed=2):
    A, B = model_pair(n=n, la=1, lb=1, seed=seed)
    return preprocess(A)[:, 0], preprocess(B)[:, 0]


def test_knn_subsample_neighbours_equal_recomputation():
    X, _ = aligned_pair()
    rng = np.random.default_rng(0)
    state_of = knn_subsampler(X, topk=5)
    for size in (100, 40, 8):  # small subsamples force the exact fallback for short rows
        idx = np.sort(rng.permutation(len(X))[:size])
        assert np.array_equal(state_of(idx), neighbours(X[idx], topk=5))


@pytest.mark.parametrize("name", metrics.available())
def test_bootstrap_is_deterministic_and_equals_the_half_sample_formula(name):
    X, Y = aligned_pair(n=81)  # odd N: the scale sqrt(m / (N - m)) is not 1
    params = SMALL_PARAMS.get(name, {})
    first = bootstrap_ci(X, Y, name, n_boot=12, seed=3, **params)
    assert first == bootstrap_ci(X, Y, name, n_boot=12, seed=3, **params)
    assert first.score == metrics.score(name, X, Y, **params)
    # Independently: the same seeded half-samples scored from scratch, centred, scaled, quantiles.
    rng = np.random.default_rng(3)
    halves = [np.sort(rng.permutation(81)[:40]) for _ in range(12)]
    reps = np.array([metrics.score(name, X[i], Y[i], **params) for i in halves])
    low, high = first.score + np.quantile((reps - reps.mean()) * np.sqrt(40 / 41), [0.025, 0.975])
    assert (first.low, first.high) == pytest.approx((low, high), abs=1e-12)


def _population(n, seed, noise=2.0):
    """Two representations of one latent (fixed maps, fresh samples per seed)."""
    maps = np.random.default_rng(99)
    W1, W2 = maps.standard_normal((4, 24)), maps.standard_normal((4, 16))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4))
    return z @ W1 + noise * rng.standard_normal((n, 24)), z @ W2 + noise * rng.standard_normal((n, 16))


@pytest.mark.parametrize("name,params", [("mutual_knn", {"topk": 5}), ("cka", {}), ("svcca", {"cca_dim": 3})])
def test_bootstrap_interval_covers_the_population_value(name, params):
    # The population value at this N: the mean score over 300 independent samples (its standard
    # error is ~1/17 of the spread of one score, small next to the interval). The 95% half-sample
    # interval of each of 120 further independent samples should cover it 95% of the time; the band
    # [0.87, 1.0] is 0.95 minus 4 binomial SDs at 120 draws (sd 0.02), as an interval that is too
    # narrow (coverage below ~0.87) fails here, and 1.0 is allowed (a conservative interval).
    n = 120
    truth = np.mean([metrics.score(name, *_population(n, 10_000 + s), **params) for s in range(300)])
    covered = 0
    for seed in range(120):
        ci = bootstrap_ci(*_population(n, seed), name, n_boot=60, seed=seed, **params)
        covered += ci.low <= truth <= ci.high
    assert 0.87 <= covered / 120 <= 1.0, covered / 120


def test_bootstrap_width_tracks_the_sampling_spread():
    # The spread of mutual_knn over fresh samples of the same population, against the
    # interval from one sample: half-sampling should be in the right range.
    rng = np.random.default_rng(4)
    W1, W2 = rng.standard_normal((6, 30)), rng.standard_normal((6, 30))

    def draw(n=300):
        z = rng.standard_normal((n, 6))
        return z @ W1 + 1.5 * rng.standard_normal((n, 30)), z @ W2 + 1.5 * rng.standard_normal((n, 30))

    fresh = [metrics.score("mutual_knn", *draw()) for _ in range(40)]
    true_width = np.quantile(fresh, 0.975) - np.quantile(fresh, 0.025)
    interval = bootstrap_ci(*draw(), "mutual_knn", n_boot=300, seed=0)
    assert 0.5 * true_width < interval.high - interval.low < 2.0 * true_width


def test_with_replacement_would_be_biased_which_half_sampling_avoids():
    # Why no duplicates: a copied row is its own nearest neighbour in both representations,
    # so with-replacement replicates of mutual_knn sit far above the score.
    X, Y = aligned_pair(n=200)
    rng = np.random.default_rng(5)
    observed = metrics.score("mutual_knn", X, Y)
    with_replacement = [metrics.score("mutual_knn", X[i], Y[i]) for i in rng.integers(0, 200, (20, 200))]
    assert np.quantile(with_replacement, 0.025) > observed
    interval = bootstrap_ci(X, Y, "mutual_knn", n_boot=100)
    # The half-sample interval's upper end stays below most with-replacement replicates.
    assert interval.high < np.median(with_replacement)


def test_bootstrap_errors():
    X, Y = aligned_pair(n=40)
    with pytest.raises(ValueError, match="ci must be"):
        bootstrap_ci(X, Y, "cka", ci=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(X, Y, "cka", n_boot=0)
    with pytest.raises(ValueError, match=r"'mutual_knn'.*topk=25 must be < N=20"):
        bootstrap_ci(X, Y, "mutual_knn", topk=25, n_boot=5)


# ---- permutation tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m for m in metrics.available() if metrics.get(m).permute is not None])
def test_permuted_state_equals_recomputed_state(name):
    X, Y = aligned_pair(n=50)
    spec = metrics.get(name)
    params = SMALL_PARAMS.get(name, {})
    prepare_params, compare_params = spec.split_params(params)
    perm = np.random.default_rng(6).permutation(50)
    shuffled = spec.permute(spec.prepare_one(Y, prepare_params), perm)
    got = spec.compare_pair(spec.prepare_one(X, prepare_params), shuffled, compare_params)
    assert got == pytest.approx(metrics.score(name, X, Y[perm], **params), abs=1e-12)


def test_permutation_pvalue_aligned_and_independent():
    X, Y = aligned_pair(n=150)
    aligned = permutation_pvalue(X, Y, "mutual_knn", n_perm=99, seed=1)
    assert aligned.p_value == pytest.approx(1 / 100)
    assert aligned.null.shape == (99,)
    assert aligned.null.mean() == pytest.approx(10 / 149, abs=0.02)  # chance topk/(N-1)

    rng = np.random.default_rng(7)
    independent = permutation_pvalue(X, rng.standard_normal(Y.shape), "mutual_knn", n_perm=99, seed=1)
    assert independent.p_value > 0.05
    p = (1 + (independent.null >= independent.score).sum()) / 100
    assert independent.p_value == p


def test_permutation_pvalue_is_seeded():
    X, Y = aligned_pair(n=60)
    a = permutation_pvalue(X, Y, "cka", n_perm=20, seed=2)
    b = permutation_pvalue(X, Y, "cka", n_perm=20, seed=2)
    c = permutation_pvalue(X, Y, "cka", n_perm=20, seed=3)
    assert np.array_equal(a.null, b.null) and not np.array_equal(a.null, c.null)
    with pytest.raises(ValueError, match="n_perm"):
        permutation_pvalue(X, Y, "cka", n_perm=-1)
