"""Tests of convergence.metrics: hand-worked values, independent computations, known values
(Kornblith et al.), invariances, chance levels, numerical stability, errors, and equality with
an independent re-implementation of the PRH reference semantics (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch

from convergence import metrics
from convergence.metrics import knn_indices, score
from convergence.metrics.kernel import kernel_matrix

ALL = [
    "mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "jaccard_knn", "cknna",
    "cka", "unbiased_cka", "svcca", "pwcca", "procrustes", "rsa",
]
KNN = ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "jaccard_knn"]


def related(n=120, dx=24, dy=20, rank=6, noise=1.0, seed=0, normalize=True):
    """Two representations of the same n samples sharing a rank-`rank` latent."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank))
    X = z @ rng.standard_normal((rank, dx)) + noise * rng.standard_normal((n, dx))
    Y = z @ rng.standard_normal((rank, dy)) + noise * rng.standard_normal((n, dy))
    if normalize:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    return X, Y


# ---- registry and API ----------------------------------------------------------------------


def test_available_lists_every_metric():
    assert metrics.available() == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_metric_documents_what_it_measures_and_chance(name):
    doc = metrics.get(name).doc
    assert len(doc) > 60 and "chance" in doc.lower()
    assert "Parameters (defaults)" in getattr(metrics, name).__doc__


def test_public_function_equals_score():
    X, Y = related()
    assert metrics.mutual_knn(X, Y, topk=5) == score("mutual_knn", X, Y, topk=5)


def test_defaults_are_recordable():
    assert metrics.defaults("mutual_knn") == {"topk": 10}
    assert metrics.defaults("svcca") == {"cca_dim": 10}
    assert set(metrics.defaults("cka")) == {
        "kernel_metric", "rbf_sigma", "rbf_threshold", "unbiased", "dtype"
    }


def test_unknown_metric_lists_available_names():
    with pytest.raises(ValueError, match=r"unknown metric 'mutual_nn'.*available: cka, cknna"):
        score("mutual_nn", np.eye(3), np.eye(3))


def test_unknown_parameter_names_metric_and_param():
    X, Y = related()
    with pytest.raises(ValueError, match=r"'mutual_knn'.*unknown parameter.*\bk\b.*topk=10"):
        score("mutual_knn", X, Y, k=10)


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="registered twice"):
        metrics.register("cka")(lambda a, b: 0.0)


# ---- input validation: clear errors, never a silent NaN ---------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_nan_input_is_rejected(name):
    X, Y = related(n=20)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        score(name, X, Y)


@pytest.mark.parametrize("name", ALL)
def test_mismatched_rows_are_rejected(name):
    X, Y = related(n=20)
    with pytest.raises(ValueError, match="same number of rows"):
        score(name, X, Y[:-1])


@pytest.mark.parametrize("name", ALL)
def test_empty_input_is_rejected(name):
    with pytest.raises(ValueError, match="empty"):
        score(name, np.zeros((0, 4)), np.zeros((0, 4)))


def test_inf_and_wrong_rank_are_rejected():
    X, Y = related(n=20)
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        score("cka", X, Y)
    with pytest.raises(ValueError, match="2-D"):
        score("cka", np.ones(5), np.ones(5))


@pytest.mark.parametrize("name", KNN)
def test_topk_not_below_n_is_rejected(name):
    X, Y = related(n=10)
    with pytest.raises(ValueError, match=rf"'{name}'.*topk=10 must be < N=10"):
        score(name, X, Y, topk=10)
    with pytest.raises(ValueError, match="topk=0"):
        score(name, X, Y, topk=0)
    with pytest.raises(ValueError, match="integer"):
        score(name, X, Y, topk=2.5)


@pytest.mark.parametrize("name", ALL)
def test_constant_representation_is_an_explained_error(name):
    X, _ = related(n=20)
    constant = np.tile(np.arange(5.0), (20, 1))  # every sample the same vector
    with pytest.raises(ValueError, match=rf"'{name}'.*(constant|rank|all pairwise)"):
        score(name, X, constant, **({"cca_dim": 2} if name == "svcca" else {}))


def test_bad_kernel_parameters_are_rejected():
    X, Y = related(n=20)
    with pytest.raises(ValueError, match="kernel_metric='cosine'"):
        score("cka", X, Y, kernel_metric="cosine")
    with pytest.raises(ValueError, match="only to kernel_metric='rbf'"):
        score("cka", X, Y, rbf_sigma=1.0)
    with pytest.raises(ValueError, match="not both"):
        score("cka", X, Y, kernel_metric="rbf", rbf_sigma=1.0, rbf_threshold=0.5)
    with pytest.raises(ValueError, match="positive"):
        score("cka", X, Y, kernel_metric="rbf", rbf_sigma=-1.0)
    with pytest.raises(ValueError, match="at least 4 samples"):
        score("unbiased_cka", X[:3], Y[:3])
    with pytest.raises(ValueError, match="cca_dim=30"):
        score("svcca", X, Y, cca_dim=30)
    with pytest.raises(ValueError, match="topk=1"):
        score("cknna", X, Y, topk=1)


def test_torch_inputs_including_bfloat16_are_accepted():
    X, Y = related()
    expected = score("cka", X, Y)
    assert score("cka", torch.from_numpy(X), torch.from_numpy(Y)) == pytest.approx(expected, abs=1e-12)
    low = score("cka", torch.from_numpy(X).bfloat16(), torch.from_numpy(Y).bfloat16())
    assert low == pytest.approx(expected, abs=2e-2)  # inputs rounded to bf16, math in float64


# ---- hand-worked examples -----------------------------------------------------------------------


def on_circle(degrees):
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# Unit vectors at these angles: inner product = cos(angle difference), so the nearest
# neighbours are the smallest angular gaps. topk = 2, self excluded:
#   X = [0, 10, 25, 45, 90] deg:  0:[1,2]  1:[0,2]  2:[1,3]  3:[2,1]  4:[3,2]
#       (e.g. point 2 at 25 deg: gaps 25, 15, 20, 65 -> 1 (15) then 3 (20))
#   Y = [0, 40, 52, 60, 95] deg:  0:[1,2]  1:[2,3]  2:[3,1]  3:[2,1]  4:[3,2]
#       (e.g. point 2 at 52 deg: gaps 52, 12, 8, 43 -> 3 (8) then 1 (12))
ANGLES_X = on_circle([0, 10, 25, 45, 90])
ANGLES_Y = on_circle([0, 40, 52, 60, 95])


def test_hand_knn_lists():
    assert knn_indices(ANGLES_X, 2).tolist() == [[1, 2], [0, 2], [1, 3], [2, 1], [3, 2]]
    assert knn_indices(ANGLES_Y, 2).tolist() == [[1, 2], [2, 3], [3, 1], [2, 1], [3, 2]]


@pytest.mark.parametrize(
    "name, expected",
    [
        # shared per row: 2, 1 ({2}), 2, 2, 2 -> (1 + .5 + 1 + 1 + 1) / 5
        ("mutual_knn", 0.9),
        # |∩|/|∪| per row: 1, 1/3 ({0,2} vs {2,3}), 1, 1, 1 -> (4 + 1/3) / 5
        ("jaccard_knn", 13 / 15),
        # LCS of ordered lists: [1,2]/[1,2] 2; [0,2]/[2,3] 1; [1,3]/[3,1] 1; 2; 2 -> 8/5, / k=2
        ("lcs_knn", 0.8),
        # Levenshtein: 0; [0,2]->[2,3] 2; [1,3]->[3,1] 2; 0; 0 -> mean 0.8; 1 - 0.8/2
        ("edit_distance_knn", 0.6),
        # i -> Y-neighbour j -> is i in X-neighbours of j?  0: j=1 has 0 (yes);
        # 1: j=2 has 1 (yes); 2: j=3 has 2 (yes); 3: j=2 has 3 (yes);
        # 4: j=3 [2,1], j=2 [1,3] (no)  -> 4/5
        ("cycle_knn", 0.8),
    ],
)
def test_hand_knn_metrics(name, expected):
    assert score(name, ANGLES_X, ANGLES_Y, topk=2) == pytest.approx(expected, abs=1e-15)


def test_hand_cycle_knn_is_not_symmetric():
    # Roles swapped: 0: Y-nbrs of X-nbrs 1 [2,3], 2 [3,1] -> no; 1: X-nbr 0 has Y-nbrs [1,2]
    # -> yes; 2: X-nbr 1 has [2,3] -> yes; 3: X-nbr 2 has [3,1] -> yes; 4: [2,1],[3,1] -> no.
    assert score("cycle_knn", ANGLES_Y, ANGLES_X, topk=2) == pytest.approx(0.6, abs=1e-15)


# One feature each: x = 1,2,3,4 and y = 1,3,2,4 (2 and 3 swapped).
X1 = np.array([[1.0], [2.0], [3.0], [4.0]])
Y1 = np.array([[1.0], [3.0], [2.0], [4.0]])


def test_hand_linear_cka_is_squared_pearson_for_one_feature():
    # Centred: x = (-1.5,-.5,.5,1.5), y = (-1.5,.5,-.5,1.5); x.y = 2.25-.25-.25+2.25 = 4,
    # |x|^2 = |y|^2 = 5, so r = 0.8 and with HKH = x x': <Kc,Lc> / |Kc||Lc| = (x.y)^2/(|x|^2|y|^2)
    assert score("cka", X1, Y1) == pytest.approx(0.64, abs=1e-15)


def test_hand_unbiased_cka():
    # Work with a = 2x - 5 = (-3,-1,1,3) (U-centring ignores shifts, CKA ignores scale).
    # K = a a' with zero diagonal: K01=3 K02=-3 K03=-9 K12=-1 K13=-3 K23=3.
    # Row sums r = (-9,-1,-1,-9), total -20. U_ij = K_ij - r_i/2 - r_j/2 + (-20)/6:
    #   U01 = 3 + 4.5 + .5 - 10/3 = 14/3, U02 = -4/3, U03 = -10/3 (and U23=U01, U13=U02, U12=U03;
    #   for N = 4 zero row sums force that pattern), so U(K) ~ (7, -2, -5) on (01, 02, 03).
    # b = (-3,1,-1,3): L01=-3 L02=3 L03=-9, same row sums, so U(L) ~ (-2, 7, -5).
    # Unbiased CKA = (7*-2 + -2*7 + -5*-5) / (49 + 4 + 25) = -3/78 = -1/26.
    assert score("unbiased_cka", X1, Y1) == pytest.approx(-1 / 26, abs=1e-14)


def test_hand_cknna():
    # Raw kernels K_ij = x_i x_j, L_ij = y_i y_j; topk=2 by kernel value, diagonal excluded:
    #   K rows -> {2,3} {2,3} {1,3} {1,2};   L rows -> {1,3} {2,3} {1,3} {1,2}.
    # Song's formula on masked M: [sum M.M' + (sum M)(sum M')/6 - 2 colsum(M).rowsum(M')/2] / 4.
    #   K-masked rows (0,0,3,4) (0,0,6,8) (0,6,0,12) (0,8,12,0): trace term 2(36+64+144)=488,
    #   sum 59, colsum.rowsum = (0,14,21,24).(7,14,18,20) = 1054 -> (488 + 3481/6 - 1054)/4
    #   = 85/24. L-masked is the same with 1 and 2 relabelled -> 85/24.
    #   Both masks: rows {3} {2,3} {1,3} {1,2}; K part (0,0,0,4) (0,0,6,8) (0,6,0,12) (0,8,12,0),
    #   L part (0,0,0,4) (0,0,6,12) (0,6,0,8) (0,12,8,0): trace term 36+96+36+96+96+96 = 456,
    #   sums 56 and 56, colsum(K).rowsum(L) = (0,14,18,24).(4,18,14,20) = 984
    #   -> (456 + 3136/6 - 984)/4 = -4/3.   CKNNA = (-4/3) / (85/24) = -32/85.
    assert score("cknna", X1, Y1, topk=2) == pytest.approx(-32 / 85, abs=1e-12)


def test_hand_cknna_full_kernel_is_unbiased_cka():
    # topk=None keeps every off-diagonal pair: the masked kernel is the whole kernel.
    assert score("cknna", X1, Y1) == pytest.approx(-1 / 26, abs=1e-12)


def test_hand_svcca_procrustes_pwcca_one_feature():
    # One direction each: the only canonical correlation is |r| = 0.8, and for one feature
    # Procrustes = |x.y| / (|x||y|) = 4/5 on centred data.
    duplicated = np.hstack([X1, X1])  # two identical neurons: one standardised direction
    assert score("svcca", duplicated, Y1, cca_dim=1) == pytest.approx(0.8, abs=1e-12)
    assert score("procrustes", X1, Y1) == pytest.approx(0.8, abs=1e-14)
    assert score("pwcca", X1, Y1) == pytest.approx(0.8, abs=1e-14)


# Centred, mutually orthogonal columns of norm 2 on N = 4 samples.
A4 = np.array([1.0, 1, -1, -1])
B4 = np.array([1.0, -1, 1, -1])
C4 = np.array([1.0, -1, -1, 1])


def test_hand_pwcca_weights_by_projection():
    # X = [3a, b], Y = [a, c]: canonical pairs (a, a) with rho 1 and (b, c) with rho 0.
    # Weights on X (ranks tie -> X): variate a/2 carries |<a/2, 3a>| + |<a/2, b>| = 6,
    # variate b/2 carries 0 + |<b/2, b>| = 2 -> (6*1 + 2*0)/8 = 0.75. Weighted on Y instead
    # (arguments swapped): a/2 -> 2, c/2 -> 2 -> 0.5.
    X = np.stack([3 * A4, B4], axis=1)
    Y = np.stack([A4, C4], axis=1)
    assert score("pwcca", X, Y) == pytest.approx(0.75, abs=1e-12)
    assert score("pwcca", Y, X) == pytest.approx(0.5, abs=1e-12)


def test_hand_procrustes_two_features():
    # X = [a, b], Y = [a, c]: X'Y = [[4, 0], [0, 0]], nuclear norm 4, |X|_F = |Y|_F = sqrt(8)
    # -> 4 / 8 = 0.5.
    X = np.stack([A4, B4], axis=1)
    Y = np.stack([A4, C4], axis=1)
    assert score("procrustes", X, Y) == pytest.approx(0.5, abs=1e-14)


def test_hand_rsa_euclidean():
    # x = 0,1,3: distances (01, 02, 12) = 1, 3, 2 -> ranks 1, 3, 2
    # y = 0,2,3: distances 2, 3, 1 -> ranks 2, 3, 1
    # Pearson of ranks: centred (-1, 1, 0) and (0, 1, -1): 1 / (sqrt2 sqrt2) = 0.5
    x = np.array([[0.0], [1.0], [3.0]])
    y = np.array([[0.0], [2.0], [3.0]])
    assert score("rsa", x, y, rdm="euclidean") == pytest.approx(0.5, abs=1e-14)


def test_hand_rsa_correlation():
    # Samples (rows) s0 = 1,2,3  s1 = 3,2,1  s2 = 1,3,2: r01 = -1, r02 = 0.5, r12 = -0.5
    # -> 1 - r = (2, 0.5, 1.5) -> ranks (3, 1, 2). Y swaps samples 1 and 2: distances
    # (0.5, 2, 1.5) -> ranks (1, 3, 2). Centred (1,-1,0) vs (-1,1,0) -> Spearman -1.
    X = np.array([[1.0, 2, 3], [3, 2, 1], [1, 3, 2]])
    Y = X[[0, 2, 1]]
    assert score("rsa", X, Y) == pytest.approx(-1.0, abs=1e-14)


# ---- known values: Kornblith et al. (2019) CKA notebook -------------------------------------------


def kornblith_data():
    # Same RNG call order as the notebook: X first, then the noise added to it.
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = X + np.random.randn(100, 10)
    return X, Y


def test_kornblith_known_values():
    X, Y = kornblith_data()
    assert round(score("cka", X, Y), 5) == 0.55761
    assert round(score("unbiased_cka", X, Y), 5) == 0.51346
    assert round(score("cka", X, Y, kernel_metric="rbf", rbf_threshold=0.5), 5) == 0.65483


# ---- independent numpy / scipy computations -------------------------------------------------------


def test_linear_cka_equals_feature_space_formula():
    X, Y = related(normalize=False)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expected = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert score("cka", X, Y) == pytest.approx(expected, rel=1e-12)


def test_rbf_cka_with_absolute_sigma_matches_direct_computation():
    X, Y = related()
    sigma = 0.8
    H = np.eye(len(X)) - 1.0 / len(X)

    def rbf(Z):
        sq = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(Z, "sqeuclidean"))
        return np.exp(-sq / (2 * sigma**2))

    K, L = H @ rbf(X) @ H, H @ rbf(Y) @ H
    expected = np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))
    assert score("cka", X, Y, kernel_metric="rbf", rbf_sigma=sigma) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean", "cosine"])
def test_rsa_equals_scipy_spearman_of_pdist(rdm):
    X, Y = related(n=60)
    expected = scipy.stats.spearmanr(
        scipy.spatial.distance.pdist(X, rdm), scipy.spatial.distance.pdist(Y, rdm)
    ).statistic
    assert score("rsa", X, Y, rdm=rdm) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("dy", [20, 200])  # D < N and D > N (rotated into an N-dim basis)
def test_procrustes_equals_scipy_orthogonal_procrustes(dy):
    X, Y = related(n=80, dx=30, dy=dy)
    Xn = X - X.mean(0)
    Yn = Y - Y.mean(0)
    Xn, Yn = Xn / np.linalg.norm(Xn), Yn / np.linalg.norm(Yn)
    width = max(Xn.shape[1], Yn.shape[1])  # zero-pad to equal widths (changes no distance)
    Xn, Yn = (np.hstack([Z, np.zeros((len(Z), width - Z.shape[1]))]) for Z in (Xn, Yn))
    R, _ = scipy.linalg.orthogonal_procrustes(Xn, Yn)
    residual = np.linalg.norm(Xn @ R - Yn) ** 2  # = 2 - 2 * similarity
    assert score("procrustes", X, Y) == pytest.approx(1 - residual / 2, abs=1e-10)


def cca_correlations_by_whitening(A, B):
    """Canonical correlations from Caa^-1/2 Cab Cbb^-1/2, and the correlation of each
    variate pair measured directly (as the reference does with np.corrcoef)."""
    A, B = A - A.mean(0), B - B.mean(0)

    def inv_sqrt(C):
        w, V = np.linalg.eigh(C)
        return V @ np.diag(w**-0.5) @ V.T

    Wa, Wb = inv_sqrt(A.T @ A), inv_sqrt(B.T @ B)
    U, rho, Vt = np.linalg.svd(Wa @ A.T @ B @ Wb)
    k = len(rho)
    variates_a, variates_b = A @ Wa @ U[:, :k], B @ Wb @ Vt.T[:, :k]
    measured = [np.corrcoef(variates_a[:, i], variates_b[:, i])[0, 1] for i in range(k)]
    return rho, np.array(measured)


def pwcca_by_whitening(X, Y):
    """PWCCA as Morcos et al.'s code: canonical variates of the side with fewer neurons,
    weights = sum over its neurons of |<orthonormalised variate, neuron>|."""
    if Y.shape[1] < X.shape[1]:
        X, Y = Y, X
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    w, V = np.linalg.eigh(Xc.T @ Xc)
    Wx = V @ np.diag(w**-0.5) @ V.T
    w, V = np.linalg.eigh(Yc.T @ Yc)
    Wy = V @ np.diag(w**-0.5) @ V.T
    U, rho, _ = np.linalg.svd(Wx @ Xc.T @ Yc @ Wy)
    directions = Xc @ Wx @ U[:, : len(rho)]
    P, _ = np.linalg.qr(directions)
    weights = np.abs(P.T @ Xc).sum(axis=1)
    return float(np.sum(weights / weights.sum() * rho))


def test_pwcca_equals_whitening_computation():
    X, Y = related(n=150, dx=12, dy=9)
    assert score("pwcca", X, Y) == pytest.approx(pwcca_by_whitening(X, Y), abs=1e-10)
    assert score("pwcca", Y, X) == pytest.approx(pwcca_by_whitening(Y, X), abs=1e-10)


def test_knn_blocks_equal_one_full_sort():
    X, _ = related(n=97)
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    assert np.array_equal(knn_indices(X, 7), expected)
    assert np.array_equal(knn_indices(X, 7, block_bytes=8 * 97 * 5), expected)  # 10-row blocks
    assert np.array_equal(knn_indices(X, 7, block_bytes=1), expected)  # 1-row blocks


# knn_indices ranks by float64 similarity (pair_similarities: X[i] * X[j] summed by numpy,
# ties by index) but computes float32 products and proves per row that float32 decided; rows
# it cannot prove are re-ranked or recomputed in float64. These tests check that the result
# is the plain float64 ranking wherever float32 cannot tell, and that the fallback ran.


def float64_ranking(X, k):
    """Reference: every similarity as pair_similarities computes it, full stable sort."""
    sims = np.stack([(X * X[i]).sum(axis=1) for i in range(len(X))])
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def gemm_ranking(X, k):
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def knn_with_stats(X, k, **kwargs):
    stats = {}
    nn = knn_indices(X, k, stats=stats, **kwargs)
    check_sets(X, k, nn)
    return nn, stats


def check_sets(X, k, nn):
    """ordered=False (the set metrics' path) gives each row's members of the float64 top k,
    on the full-matrix path and on 1-row blocks; those with certain order keep it."""
    for block_bytes in ({}, {"block_bytes": 1}):
        stats = {}
        sets = knn_indices(X, k, ordered=False, stats=stats, **block_bytes)
        assert sets.shape == nn.shape and sets.dtype == nn.dtype
        assert np.array_equal(np.sort(sets, axis=1), np.sort(nn, axis=1))
        assert stats["reranked"] == 0 and stats["certified"] + stats["fallback"] == len(X)


def test_pair_similarities_do_not_depend_on_batching():
    from convergence.metrics.knn import pair_similarities

    X = np.random.default_rng(5).standard_normal((60, 301))  # odd D: rows at mixed alignments
    rows, cols = np.divmod(np.arange(60 * 60), 60)
    batched = pair_similarities(X, rows, cols)
    shifted = np.empty(X.size + 1)[1:].reshape(X.shape)
    shifted[:] = X  # same values 8 bytes further on
    single = [pair_similarities(shifted, [i], [j])[0] for i, j in zip(rows[::37], cols[::37])]
    assert np.array_equal(batched[::37], single)
    assert np.array_equal(batched[::37], [np.sum(X[i] * X[j]) for i, j in zip(rows[::37], cols[::37])])
    assert np.array_equal(batched.reshape(60, 60), np.stack([(X * X[i]).sum(axis=1) for i in range(60)]))
    assert np.array_equal(batched.reshape(60, 60), batched.reshape(60, 60).T)


@pytest.mark.parametrize("n, d, k", [(300, 64, 10), (200, 384, 5), (150, 24, 1), (12, 8, 11), (200, 16, 70)])
def test_knn_float32_path_equals_float64_argsort(n, d, k):
    X = np.random.default_rng(n + d).standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    nn, stats = knn_with_stats(X, k)
    assert np.array_equal(nn, gemm_ranking(X, k))
    assert np.array_equal(nn, float64_ranking(X, k))
    assert stats["rows"] == n and stats["legacy"] == 0
    assert stats["certified"] + stats["reranked"] + stats["fallback"] == n
    assert stats["certified"] > n // 2  # float32 alone decides most rows of generic data
    assert np.array_equal(knn_indices(X, k, block_bytes=4 * n * 7), nn)  # 7-row blocks


def test_knn_near_duplicates_fall_back_to_float64():
    # Clusters of 6 rows equal up to 1e-10 (and some exactly equal): float32 cannot order a
    # row's cluster mates, nor tell which of them is 3rd and which 4th.
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 48))
    X = np.repeat(base, 6, axis=0) + 1e-10 * rng.standard_normal((180, 48))
    X[::6] = X[1::6]  # exact duplicates: float64 ties, broken by index
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X[rng.permutation(len(X))]
    for k in (3, 5, 8):
        nn, stats = knn_with_stats(X, k)
        assert np.array_equal(nn, float64_ranking(X, k))
        assert stats["certified"] == 0  # no row's order is certain in float32
        assert stats["fallback"] > 0 if k != 5 else stats["reranked"] == len(X)  # 5 mates
        assert np.array_equal(knn_indices(X, k, block_bytes=1), nn)


def test_knn_exact_ties_are_broken_by_index():
    # Integer rows: float32 and float64 similarities are exact integers, with many ties.
    X = np.random.default_rng(2).integers(-2, 3, size=(240, 16)).astype(np.float64)
    X = X[np.abs(X).sum(axis=1) > 0]
    for k in (1, 4, 10):
        nn, stats = knn_with_stats(X, k)
        assert np.array_equal(nn, gemm_ranking(X, k))
        assert np.array_equal(nn, float64_ranking(X, k))
        assert stats["fallback"] > 0 and (k == 1 or stats["reranked"] > 0)


def test_knn_rows_at_equal_distances_use_float64_rows():
    # A star: spoke j is cos(t) e_0 + sin(t) e_j, so every spoke is at exactly cos(t) from
    # the hub and cos(t)^2 from every other spoke: more tied candidates per row than
    # narrow_limit, which sends them through float64 products; plus 150 identical rows.
    spokes = 90
    theta = 0.7
    X = np.zeros((1 + spokes + 150, spokes + 2))
    X[0, 0] = 1.0
    X[1 : 1 + spokes, 0] = np.cos(theta)
    X[np.arange(1, 1 + spokes), np.arange(1, 1 + spokes)] = np.sin(theta)
    X[1 + spokes :] = np.random.default_rng(3).standard_normal(spokes + 2)
    X[1 + spokes :: 2, -1] += 1e-3  # two groups of 75 identical rows
    X = X[np.random.default_rng(4).permutation(len(X))]
    for k in (3, 12):
        nn, stats = knn_with_stats(X, k)
        assert np.array_equal(nn, gemm_ranking(X, k))
        assert np.array_equal(nn, float64_ranking(X, k))
        assert stats["float64"] > 0


@pytest.mark.parametrize("scale", [1.0, 1e40, 1e-40])
def test_knn_unnormalised_rows_with_large_norms(scale):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((250, 40)) * 10.0 ** rng.uniform(-3, 3, size=(250, 1)) * scale
    nn, stats = knn_with_stats(X, 6)
    assert np.array_equal(nn, float64_ranking(X, 6))
    assert np.array_equal(nn, gemm_ranking(X, 6))
    assert stats["legacy"] == 0 and stats["certified"] > 0


def test_knn_indices_of_rows_equal_the_full_ranking():
    from convergence.metrics.knn import knn_indices_of_rows

    X = np.random.default_rng(7).integers(-1, 2, size=(90, 10)).astype(np.float64)
    rows = np.array([0, 5, 17, 42, 89])
    assert np.array_equal(knn_indices_of_rows(X, rows, 4), knn_indices(X, 4)[rows])


# ---- invariances ------------------------------------------------------------------------------

# metric (+ params) -> (orthogonal map, isotropic scale, translation)
INVARIANCES = {
    ("mutual_knn", ()): (True, True, False),
    ("cycle_knn", ()): (True, True, False),
    ("lcs_knn", ()): (True, True, False),
    ("edit_distance_knn", ()): (True, True, False),
    ("jaccard_knn", ()): (True, True, False),
    ("cknna", (("topk", 10),)): (True, True, False),
    ("cka", ()): (True, True, True),
    ("cka", (("kernel_metric", "rbf"), ("rbf_threshold", 0.5))): (True, True, True),
    ("cka", (("kernel_metric", "rbf"), ("rbf_sigma", 1.0))): (True, False, True),
    ("unbiased_cka", ()): (True, True, True),
    ("svcca", (("cca_dim", 5),)): (False, True, True),
    ("pwcca", ()): (True, True, True),
    ("procrustes", ()): (True, True, True),
    ("rsa", ()): (False, True, False),
    ("rsa", (("rdm", "euclidean"),)): (True, True, True),
}


def transforms(D, seed=3):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    shift = 2.0 * rng.standard_normal(D)
    return {
        "orthogonal": lambda Z: Z @ Q,
        "scale": lambda Z: 3.7 * Z,
        "translation": lambda Z: Z + shift,
    }


@pytest.mark.parametrize("key", list(INVARIANCES), ids=lambda k: k[0] + "".join(f"-{v}" for _, v in k[1]))
def test_invariances(key):
    name, params = key[0], dict(key[1])
    X, Y = related(n=100, dx=16, dy=16, noise=0.7, seed=4)
    base = score(name, X, Y, **params)
    for (kind, fn), invariant in zip(transforms(16).items(), INVARIANCES[key]):
        moved = score(name, X, fn(Y), **params)
        if invariant:
            assert moved == pytest.approx(base, abs=1e-9), kind
        else:
            assert abs(moved - base) > 1e-4, kind


def test_svcca_is_invariant_to_neuron_permutation_and_scaling():
    X, Y = related()
    rng = np.random.default_rng(5)
    moved = Y[:, rng.permutation(Y.shape[1])] * rng.uniform(0.5, 3.0, Y.shape[1])
    assert score("svcca", X, moved, cca_dim=5) == pytest.approx(score("svcca", X, Y, cca_dim=5), abs=1e-10)


def test_cka_is_not_invariant_to_an_invertible_linear_map():
    X, Y = related(n=100, dx=16, dy=16, seed=6)
    M = np.random.default_rng(7).standard_normal((16, 16))
    assert np.linalg.cond(M) < 1e4  # invertible
    assert abs(score("cka", X, Y @ M) - score("cka", X, Y)) > 1e-3
    # ...while CCA-based PWCCA is (invertible maps keep the column space)
    assert score("pwcca", X, Y @ M) == pytest.approx(score("pwcca", X, Y), abs=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_identical_representations_score_one(name):
    X, _ = related()
    params = {"cca_dim": 5} if name == "svcca" else {}
    assert score(name, X, X.copy(), **params) == pytest.approx(1.0, abs=1e-9)


# ---- chance levels -------------------------------------------------------------------------------


def test_mutual_knn_chance_is_topk_over_n_minus_1():
    rng = np.random.default_rng(8)
    N, k = 1000, 10
    X, Y = rng.standard_normal((N, 64)), rng.standard_normal((N, 64))
    # per-sample overlap ~ Binomial(k, k/(N-1)) / k: sd of the mean ≈ sqrt(p/k/N) ≈ 1e-3
    assert score("mutual_knn", X, Y, topk=k) == pytest.approx(k / (N - 1), abs=4e-3)
    p = k / (N - 1)
    assert score("cycle_knn", X, Y, topk=k) == pytest.approx(1 - (1 - p) ** k, abs=0.04)
    assert score("unbiased_cka", X, Y) == pytest.approx(0.0, abs=5e-3)
    assert score("rsa", X, Y) == pytest.approx(0.0, abs=5e-3)


# ---- our fixes over the reference ------------------------------------------------------------------


def reference_unbiased_hsic(K, L):
    """The reference's formula on raw Gram matrices (1'K~L~1 as colsum . rowsum: same value,
    without the N^3 product)."""
    m = K.shape[0]
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    cross = Kt.sum(0) @ Lt.sum(1)
    value = (Kt * Lt.T).sum() + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * cross / (m - 2)
    return value / (m * (m - 3))


@pytest.mark.parametrize("offset", [30.0, 1000.0])
def test_unbiased_cka_float32_is_stable_on_uncentred_features(offset):
    # A large common offset, as activations with outlier dimensions have. At 30 the
    # reference's raw-Gram formula is already off by > 1e-3 in float32; at 1000 even
    # U-centring a raw float32 Gram loses ~1e-3, which is why features are centred first.
    rng = np.random.default_rng(9)
    N = 4000
    z = rng.standard_normal((N, 8))
    X = z @ rng.standard_normal((8, 64)) + rng.standard_normal((N, 64)) + offset
    Y = z @ rng.standard_normal((8, 48)) + rng.standard_normal((N, 48)) + offset
    exact = score("unbiased_cka", X, Y)
    ours32 = score("unbiased_cka", X.astype(np.float32), Y.astype(np.float32), dtype="float32")
    assert ours32 == pytest.approx(exact, abs=1e-6)

    A, B = torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    K, L = A @ A.T, B @ B.T
    hsic = reference_unbiased_hsic
    reference32 = (hsic(K, L) / torch.sqrt(hsic(K, K) * hsic(L, L))).item()
    assert not np.isfinite(reference32) or abs(reference32 - exact) > 1e-3  # cancellation


def test_lcs_knn_is_in_unit_interval():
    X, Y = related()
    assert score("lcs_knn", X, X, topk=7) == 1.0
    assert 0.0 <= score("lcs_knn", X, Y, topk=7) <= 1.0


def test_cknna_full_kernel_equals_cka_variants():
    X, Y = related()
    assert score("cknna", X, Y, topk=None) == pytest.approx(score("unbiased_cka", X, Y), abs=1e-10)
    assert score("cknna", X, Y, topk=None, unbiased=False) == pytest.approx(score("cka", X, Y), abs=1e-10)


def test_svcca_is_deterministic_where_the_randomised_reference_is_not():
    X, Y = related(n=200, dx=40, dy=40, rank=20, noise=2.0)
    values = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        np.random.seed(seed)
        values.append(score("svcca", X, Y))
    assert values[0] == values[1]
    # The reference's torch.svd_lowrank subspace depends on the RNG on such a flat spectrum.
    lowrank = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        U1 = torch.svd_lowrank(torch.from_numpy(prh_standardise(X)), q=10)[0].numpy()
        U2 = torch.svd_lowrank(torch.from_numpy(prh_standardise(Y)), q=10)[0].numpy()
        lowrank.append(cca_correlations_by_whitening(U1, U2)[0].mean())
    assert abs(lowrank[0] - lowrank[1]) > 1e-6


def test_cka_float32_option_matches_float64():
    X, Y = related()
    for name in ("cka", "unbiased_cka"):
        assert score(name, X, Y, dtype="float32") == pytest.approx(score(name, X, Y), abs=1e-5)
    K = kernel_matrix(X.astype(np.float32), dtype="float32")
    assert K.dtype == np.float32


# ---- equality with the PRH reference semantics -----------------------------------------------------
# An independent re-implementation (torch, float64) of what minyoungg/platonic-rep metrics.py
# computes, written from reading it: dense N x N similarity, full descending sort per row,
# masks, Song's unbiased HSIC on raw Grams, trace(K H L H). Deliberate differences: the
# reference adds 1e-6 to CKA/CKNNA denominators (omitted here and in our metrics), uses
# torch.svd_lowrank + sklearn's iterative CCA + 1e-10 noise for SVCCA (exact SVD and CCA
# here), and returns lcs_knn without dividing by topk.


def prh_knn(f, k):
    sims = f @ f.T
    sims.fill_diagonal_(float("-inf"))
    return torch.sort(sims, dim=1, descending=True).indices[:, :k]


def prh_mutual_knn(A, B, k):
    n = A.shape[0]
    rows = torch.arange(n).unsqueeze(1)
    mask_a, mask_b = torch.zeros(n, n, dtype=A.dtype), torch.zeros(n, n, dtype=A.dtype)
    mask_a[rows, prh_knn(A, k)] = 1.0
    mask_b[rows, prh_knn(B, k)] = 1.0
    return ((mask_a * mask_b).sum(1) / k).mean().item()


def prh_cycle_knn(A, B, k):
    via = prh_knn(A, k)[prh_knn(B, k)]  # [N, k, k]
    n = A.shape[0]
    return (via == torch.arange(n).view(-1, 1, 1)).reshape(n, -1).any(1).double().mean().item()


def python_lcs(x, y):
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            if x[i - 1] == y[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def python_levenshtein(x, y):
    previous = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        current = [i] + [0] * len(y)
        for j in range(1, len(y) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x[i - 1] != y[j - 1]))
        previous = current
    return previous[-1]


def prh_lcs_knn(A, B, k):
    a, b = prh_knn(A, k).tolist(), prh_knn(B, k).tolist()
    return float(np.mean([python_lcs(x, y) for x, y in zip(a, b)]))


def prh_edit_distance_knn(A, B, k):
    a, b = prh_knn(A, k).tolist(), prh_knn(B, k).tolist()
    return 1 - float(np.mean([python_levenshtein(x, y) for x, y in zip(a, b)])) / k


def prh_hsic_biased(K, L):
    H = torch.eye(K.shape[0], dtype=K.dtype) - 1.0 / K.shape[0]
    return torch.trace(K @ H @ L @ H)


def prh_hsic_unbiased(K, L):
    m = K.shape[0]
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    value = (
        (Kt * Lt.T).sum()
        + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2))
        - 2 * torch.mm(Kt, Lt).sum() / (m - 2)
    )
    return value / (m * (m - 3))


def prh_cka(A, B, kernel_metric="ip", rbf_sigma=1.0, unbiased=False):
    if kernel_metric == "ip":
        K, L = A @ A.T, B @ B.T
    else:
        K = torch.exp(-torch.cdist(A, A) ** 2 / (2 * rbf_sigma**2))
        L = torch.exp(-torch.cdist(B, B) ** 2 / (2 * rbf_sigma**2))
    hsic = prh_hsic_unbiased if unbiased else prh_hsic_biased
    return (hsic(K, L) / torch.sqrt(hsic(K, K) * hsic(L, L))).item()


def prh_cknna(A, B, topk, unbiased=True):
    n = A.shape[0]
    K, L = A @ A.T, B @ B.T

    def masked_hsic(K, L):
        def mask_of(M):
            ranking = M.clone().fill_diagonal_(float("-inf")) if unbiased else M
            picked = torch.topk(ranking, topk, dim=1).indices
            return torch.zeros(n, n, dtype=M.dtype).scatter_(1, picked, 1.0)

        mask = mask_of(K) * mask_of(L)
        hsic = prh_hsic_unbiased if unbiased else prh_hsic_biased
        return hsic(mask * K, mask * L)

    return (masked_hsic(K, L) / torch.sqrt(masked_hsic(K, K) * masked_hsic(L, L))).item()


def prh_standardise(Z, eps=1e-8):
    Zt = torch.from_numpy(Z) if isinstance(Z, np.ndarray) else Z
    Zt = Zt - Zt.mean(0)
    return (Zt / (Zt.std(0) + eps)).numpy()


def prh_svcca(A, B, cca_dim=10, eps=1e-8):
    U1 = torch.linalg.svd(torch.from_numpy(prh_standardise(A, eps)), full_matrices=False)[0][:, :cca_dim]
    U2 = torch.linalg.svd(torch.from_numpy(prh_standardise(B, eps)), full_matrices=False)[0][:, :cca_dim]
    _, measured = cca_correlations_by_whitening(U1.numpy(), U2.numpy())
    return float(np.mean(measured))


@pytest.fixture(scope="module")
def prh_inputs():
    X, Y = related(n=150, dx=32, dy=24, rank=6, noise=1.2, seed=11)
    return X, Y, torch.from_numpy(X), torch.from_numpy(Y)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_reference_equality_knn_metrics(prh_inputs, k):
    X, Y, A, B = prh_inputs
    assert score("mutual_knn", X, Y, topk=k) == prh_mutual_knn(A, B, k)
    assert score("cycle_knn", X, Y, topk=k) == prh_cycle_knn(A, B, k)
    assert score("cycle_knn", Y, X, topk=k) == prh_cycle_knn(B, A, k)
    assert score("lcs_knn", X, Y, topk=k) * k == pytest.approx(prh_lcs_knn(A, B, k), abs=1e-12)
    expected_edit = prh_edit_distance_knn(A, B, k)
    assert score("edit_distance_knn", X, Y, topk=k) == pytest.approx(expected_edit, abs=1e-12)


def test_reference_equality_cka(prh_inputs):
    X, Y, A, B = prh_inputs
    assert score("cka", X, Y) == pytest.approx(prh_cka(A, B), rel=1e-10)
    assert score("unbiased_cka", X, Y) == pytest.approx(prh_cka(A, B, unbiased=True), rel=1e-9)
    assert score("cka", X, Y, unbiased=True) == pytest.approx(prh_cka(A, B, unbiased=True), rel=1e-9)
    for sigma in (0.5, 1.0):
        rbf = dict(kernel_metric="rbf", rbf_sigma=sigma)
        assert score("cka", X, Y, **rbf) == pytest.approx(prh_cka(A, B, **rbf), rel=1e-10)
        expected_unbiased = prh_cka(A, B, unbiased=True, **rbf)
        assert score("unbiased_cka", X, Y, **rbf) == pytest.approx(expected_unbiased, rel=1e-8)
    # The reference's rbf_sigma default is 1.0: our default width for kernel_metric='rbf'.
    assert score("cka", X, Y, kernel_metric="rbf") == score("cka", X, Y, kernel_metric="rbf", rbf_sigma=1.0)


@pytest.mark.parametrize("topk", [2, 10, 40])
@pytest.mark.parametrize("unbiased", [True, False])
def test_reference_equality_cknna(prh_inputs, topk, unbiased):
    X, Y, A, B = prh_inputs
    assert score("cknna", X, Y, topk=topk, unbiased=unbiased) == pytest.approx(
        prh_cknna(A, B, topk, unbiased), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("cca_dim", [1, 5, 10])
def test_reference_equality_svcca(prh_inputs, cca_dim):
    X, Y, _, _ = prh_inputs
    ours = score("svcca", X, Y, cca_dim=cca_dim)
    assert ours == pytest.approx(prh_svcca(X, Y, cca_dim, eps=0.0), abs=1e-10)
    # The reference's std + 1e-8 rescales each neuron by ~1e-8 relative: no more than that.
    assert ours == pytest.approx(prh_svcca(X, Y, cca_dim), abs=1e-7)
