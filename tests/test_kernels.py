"""Tests of the compiled loops behind kNN and preprocessing (convergence.metrics._kernels),
each against a plain numpy computation, on generic data and on ties."""

from __future__ import annotations

import numpy as np
import pytest

from convergence.metrics import _kernels as K


def symmetric_from_lower(G):
    """The full symmetric matrix whose strict lower triangle is G's, -inf on the diagonal."""
    S = np.tril(G, -1).astype(np.float64)
    S = S + S.T
    np.fill_diagonal(S, -np.inf)
    return S


def lower_with_garbage(X32):
    """gram_lower into a buffer whose upper triangle holds NaN: the kernels must not read it."""
    n = len(X32)
    out = np.full((n, n), np.nan, dtype=np.float32)
    return K.gram_lower(X32, out=out)


@pytest.mark.parametrize("n, d", [(1, 3), (2, 1), (57, 9), (400, 130)])
def test_gram_lower_is_the_lower_triangle_of_the_product(n, d):
    X = np.random.default_rng(n).standard_normal((n, d)).astype(np.float32)
    G = lower_with_garbage(X)
    exact = X.astype(np.float64) @ X.T.astype(np.float64)
    lower = np.tril_indices(n)
    # float32 sums of d products: within d * 2^-24 * |x||y| of the exact value
    norms = np.linalg.norm(X.astype(np.float64), axis=1)
    bound = (d + 2) * 2.0**-24 * np.outer(norms, norms)
    assert np.all(np.abs(G[lower] - exact[lower]) <= bound[lower])
    assert np.isnan(G[np.triu_indices(n, 1)]).all()  # upper triangle untouched
    with pytest.raises(ValueError, match="float32"):
        K.gram_lower(X.astype(np.float64))


def rows_to_rank(kind, n, d, seed):
    rng = np.random.default_rng(seed)
    if kind == "generic":
        return rng.standard_normal((n, d)).astype(np.float32)
    if kind == "ties":  # small integers: many exactly equal similarities
        return rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    return np.ones((n, d), dtype=np.float32)  # every similarity equal


@pytest.mark.parametrize("kind", ["generic", "ties", "equal"])
@pytest.mark.parametrize("n, width", [(2, 1), (5, 4), (17, 11), (100, 11), (700, 11), (300, 40), (1200, 1)])
def test_top_of_lower_gives_each_rows_largest_values(kind, n, width):
    if width >= n:
        pytest.skip("width < N")
    G = lower_with_garbage(rows_to_rank(kind, n, 6, seed=n + width))
    S = symmetric_from_lower(G)
    vals = np.empty((n, width), dtype=np.float32)
    idx = np.empty((n, width), dtype=np.int64)
    K.top_of_lower(G, width, vals, idx)
    assert np.array_equal(vals, -np.sort(-S, axis=1)[:, :width])  # the width largest, descending
    assert np.array_equal(S[np.arange(n)[:, None], idx], vals)  # at the columns given
    assert all(len(set(row)) == width for row in idx.tolist())  # distinct columns
    assert not (idx == np.arange(n)[:, None]).any()  # never the row itself


def test_rows_of_lower_rebuilds_full_rows():
    G = lower_with_garbage(rows_to_rank("generic", 90, 5, seed=3))
    rows = np.array([0, 1, 44, 89])
    out = np.empty((len(rows), 90), dtype=np.float32)
    K.rows_of_lower(G, rows, out)
    assert np.array_equal(out, symmetric_from_lower(G)[rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_rows_equals_numpy(dtype):
    rng = np.random.default_rng(4)
    stack = (rng.standard_normal((40, 3, 77)) * 10.0 ** rng.uniform(-3, 3, (40, 1, 1))).astype(dtype)
    stack[7, 1] = 0.0
    x = stack[:, 1]  # strided rows, as layer_scores passes them
    out = np.empty(x.shape)
    assert K.normalize_rows(x, 0.0, False, True, out) == 0
    ref = x.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref / np.where(norms > 0, norms, 1), rtol=1e-15, atol=0)
    assert np.all(out[7] == 0.0)
    # clipping first, then normalising; and each row depends on that row only
    t = float(np.quantile(np.abs(ref), 0.8))
    K.normalize_rows(x, t, True, True, out)
    clipped = np.clip(ref, -t, t)
    cn = np.linalg.norm(clipped, axis=1, keepdims=True)
    np.testing.assert_allclose(out, clipped / np.where(cn > 0, cn, 1), rtol=1e-15, atol=0)
    some = np.empty((5, 77))
    K.normalize_rows(np.ascontiguousarray(x[10:15]), t, True, True, some)
    assert np.array_equal(some, out[10:15])
    K.normalize_rows(x, t, True, False, out)
    assert np.array_equal(out, clipped)


def test_normalize_rows_counts_non_finite_values():
    x = np.ones((4, 5))
    x[1, 2], x[3, 0], x[3, 4] = np.nan, np.inf, -np.inf
    assert K.normalize_rows(x, 0.0, False, True, np.empty(x.shape)) == 3


def test_norms_and_float32():
    X = np.random.default_rng(5).standard_normal((30, 19)) * 1e3
    out = np.empty(X.shape, dtype=np.float32)
    norms = K.norms_and_float32(X, 0.25, out)
    np.testing.assert_allclose(norms, np.linalg.norm(X, axis=1), rtol=1e-15)
    assert np.array_equal(out, (X * 0.25).astype(np.float32))


def test_shared_counts_equal_set_intersections():
    rng = np.random.default_rng(6)
    a = np.stack([rng.permutation(50)[:7] for _ in range(200)])
    b = np.stack([rng.permutation(50)[:7] for _ in range(200)])
    expected = [len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())]
    assert K.shared_counts(a, b).tolist() == expected
