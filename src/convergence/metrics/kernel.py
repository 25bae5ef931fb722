"""Kernel alignment: CKA (biased and unbiased HSIC) and CKNNA (CKA on mutual-kNN pairs).

CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). The biased HSIC is <HKH, HLH> (H the
centring matrix, as PRH's ``trace(K H L H)``); the unbiased one (Song et al. 2012) is
<U(K), U(L)> / (N (N - 3)) with U the U-centring of Székely & Rizzo. Both are computed on
kernels of mean-centred features: centring changes no HSIC, and it removes the large
common offset whose cancellation ruins the reference's raw-Gram formula in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import _kernels
from ._registry import check_choice, check_int, check_min_samples, check_not_constant, register

KERNELS = ("ip", "linear", "rbf")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class CentredKernel:
    gram: np.ndarray  # H K H (biased) or U(K) (unbiased)
    norm: float  # Frobenius norm of ``gram``
    unbiased: bool = False
    # Whether a subsample's kernel entries are those of the full kernel (false for an RBF
    # whose width is taken from the median distance of the samples at hand).
    entries_fixed: bool = True


def permute_kernel(state: CentredKernel, perm: np.ndarray) -> CentredKernel:
    # Centring commutes with relabelling the samples, and the norm is unchanged.
    return replace(state, gram=state.gram[np.ix_(perm, perm)])


def kernel_from_state(state: CentredKernel):
    """``from_state`` for CKA: the centred kernel of a subsample from the full one. Centring
    the block again removes what the full centring added (H_m (HKH)[idx, idx] H_m =
    H_m K[idx, idx] H_m, and U-centring removes any a_i + a_j the same way), so the result
    is the subsample's own centred kernel. None where kernel entries depend on the sample
    (an RBF width from the median distance)."""
    if not state.entries_fixed:
        return None
    centre = u_centre if state.unbiased else double_centre

    def state_of(idx: np.ndarray) -> CentredKernel:
        gram = centre(state.gram[np.ix_(idx, idx)])
        norm = np.sqrt(frobenius_dot(gram, gram))
        if not norm > 0:
            raise ValueError("the centred kernel of this subsample is zero: CKA would be 0/0")
        return replace(state, gram=gram, norm=norm)

    return state_of


def gram_grid(states_x: list, states_y: list):
    """``grid`` for CKA: every layer pair's score with Y's samples relabelled, as one matrix
    product per permutation. CKA = <Gx, Gy> / (|Gx| |Gy|) for symmetric Grams: the upper
    triangles (diagonal once, the rest twice) of each layer, packed into rows of a matrix,
    scaled by 1 / norm. The side with fewer layers is relabelled (by the inverse permutation
    when it is X: the score does not depend on the order of the samples), one cache-friendly
    pass per layer; the other side is packed once."""
    n = states_x[0].gram.shape[0]
    size = n * (n + 1) // 2
    relabel_x = len(states_x) < len(states_y)
    fixed, moving = (states_y, states_x) if relabel_x else (states_x, states_y)
    identity = np.arange(n, dtype=np.int64)
    packed = np.empty((len(fixed), size))
    for row, s in zip(packed, fixed):
        _kernels.pack_symmetric(s.gram, identity, 1.0 / s.norm, 2.0 / s.norm, row)
    moved = np.empty((len(moving), size))

    def scores(perm: np.ndarray) -> np.ndarray:
        perm = np.ascontiguousarray(perm, dtype=np.int64)
        if relabel_x:
            inverse = np.empty_like(perm)
            inverse[perm] = identity
            perm = inverse
        for row, s in zip(moved, moving):
            _kernels.pack_symmetric(s.gram, perm, 1.0 / s.norm, 1.0 / s.norm, row)
        out = packed @ moved.T  # [fixed, moving]
        return out.T.copy() if relabel_x else out

    return scores


def frobenius_dot(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b>_F with per-row dots accumulated in float64 (stays accurate for float32 input)."""
    return float(np.einsum("ij,ij->i", a, b).sum(dtype=np.float64))


def check_kernel_params(kernel_metric, rbf_sigma, rbf_threshold, dtype) -> None:
    check_choice("kernel_metric", kernel_metric, KERNELS)
    check_choice("dtype", dtype, DTYPES)
    if kernel_metric != "rbf" and (rbf_sigma is not None or rbf_threshold is not None):
        raise ValueError("rbf_sigma / rbf_threshold apply only to kernel_metric='rbf'")
    if rbf_sigma is not None and rbf_threshold is not None:
        raise ValueError("give rbf_sigma (absolute, PRH) or rbf_threshold (x median), not both")
    for name, value in (("rbf_sigma", rbf_sigma), ("rbf_threshold", rbf_threshold)):
        if value is not None and not (np.isscalar(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_hsic_samples(X: np.ndarray, unbiased: bool) -> None:
    if unbiased:
        check_min_samples(X, 4, "the unbiased HSIC divides by N (N - 3)")
    else:
        check_min_samples(X, 2, "centring")


def squared_distances(Xc: np.ndarray) -> np.ndarray:
    sq_norms = np.einsum("ij,ij->i", Xc, Xc)
    sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (Xc @ Xc.T)
    np.maximum(sq, 0.0, out=sq)  # rounding can dip just below zero
    np.fill_diagonal(sq, 0.0)
    return sq


def kernel_matrix(X, kernel_metric="ip", rbf_sigma=None, rbf_threshold=None, dtype="float64"):
    """Uncentred kernel of mean-centred features: linear, or RBF with an absolute
    ``rbf_sigma`` (PRH) or sigma^2 = rbf_threshold^2 * median squared distance (Kornblith
    et al.). Centring first keeps float32 Grams accurate under large common offsets."""
    Xc = X.astype(dtype, copy=True)
    Xc -= Xc.mean(axis=0)
    if kernel_metric in ("ip", "linear"):
        return Xc @ Xc.T
    sq = squared_distances(Xc)
    if rbf_threshold is not None:
        median = np.median(sq)  # over the full matrix, diagonal included, as Kornblith
        if median <= 0:
            raise ValueError("median pairwise distance is 0 (mostly duplicate rows): no RBF width")
        two_sigma_sq = 2.0 * rbf_threshold**2 * median
    else:
        two_sigma_sq = 2.0 * (1.0 if rbf_sigma is None else rbf_sigma) ** 2
    return np.exp(-sq / np.asarray(two_sigma_sq, dtype=sq.dtype))


def double_centre(K: np.ndarray) -> np.ndarray:
    """H K H."""
    row = K.mean(axis=1, keepdims=True)
    col = K.mean(axis=0, keepdims=True)
    return K - row - col + K.mean()


def u_centre(K: np.ndarray) -> np.ndarray:
    """U-centring (Székely & Rizzo 2014): <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC."""
    n = K.shape[0]
    U = K.copy()
    np.fill_diagonal(U, 0)
    means = U.sum(axis=0, dtype=np.float64) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    U -= means.astype(U.dtype)[:, None]
    U -= means.astype(U.dtype)[None, :]
    np.fill_diagonal(U, 0)
    return U


def centred_kernel(
    X: np.ndarray,
    kernel_metric: str = "ip",
    rbf_sigma: float | None = None,
    rbf_threshold: float | None = None,
    unbiased: bool = False,
    dtype: str = "float64",
) -> CentredKernel:
    """``prepare`` for CKA: the (U-)centred kernel of one representation and its norm."""
    check_kernel_params(kernel_metric, rbf_sigma, rbf_threshold, dtype)
    check_hsic_samples(X, unbiased)
    check_not_constant(X, "its centred kernel is zero and CKA would be 0/0")
    K = kernel_matrix(X, kernel_metric, rbf_sigma, rbf_threshold, dtype)
    gram = u_centre(K) if unbiased else double_centre(K)
    norm = np.sqrt(frobenius_dot(gram, gram))
    if not norm > 0:
        raise ValueError("the centred kernel is zero (constant representation?): CKA would be 0/0")
    return CentredKernel(gram, norm, unbiased, entries_fixed=rbf_threshold is None)


def u_centred_kernel(
    X: np.ndarray,
    kernel_metric: str = "ip",
    rbf_sigma: float | None = None,
    rbf_threshold: float | None = None,
    dtype: str = "float64",
) -> CentredKernel:
    """``prepare`` for unbiased CKA."""
    return centred_kernel(X, kernel_metric, rbf_sigma, rbf_threshold, True, dtype)


def kernel_alignment(a: CentredKernel, b: CentredKernel) -> float:
    return frobenius_dot(a.gram, b.gram) / (a.norm * b.norm)


_CKA = dict(permute=permute_kernel, from_state=kernel_from_state, grid=gram_grid)


@register("cka", prepare=centred_kernel, **_CKA)
def cka(a: CentredKernel, b: CentredKernel) -> float:
    """Centred kernel alignment (Kornblith et al. 2019) with the biased HSIC, as PRH.

    Linear kernel by default (``kernel_metric='ip'``, alias ``'linear'``); ``'rbf'`` with an
    absolute ``rbf_sigma`` (PRH; 1.0 if neither width is given) or ``rbf_threshold`` x the
    median pairwise distance of each representation (Kornblith: sigma^2 = threshold^2 x
    median squared distance, diagonal included). ``unbiased=True`` is
    ``unbiased_cka``. Invariant to orthogonal maps, isotropic scaling and translation.
    Chance for independent isotropic features ≈ sqrt(Dx Dy / ((N + Dx)(N + Dy))) (linear):
    the biased estimator is inflated unless D << N. Computed in float64 (or
    ``dtype='float32'``, stable because features are centred first).
    """
    return kernel_alignment(a, b)


@register("unbiased_cka", prepare=u_centred_kernel, **_CKA)
def unbiased_cka(a: CentredKernel, b: CentredKernel) -> float:
    """CKA with the unbiased HSIC (Song et al. 2012), computed by U-centring (stable, also in
    float32 on uncentred features, unlike the reference's raw-Gram formula).

    Same kernels and parameters as ``cka``. Chance ≈ 0 (it can be slightly negative).
    """
    return kernel_alignment(a, b)


# ---- CKNNA ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NeighbourKernel:
    kernel: np.ndarray  # raw linear kernel X X^T (as the reference: no centring)
    mask: np.ndarray  # bool [N, N]: j is among i's topk by kernel value
    self_hsic: float  # HSIC of the masked kernel with itself


def permute_neighbour_kernel(state: NeighbourKernel, perm: np.ndarray) -> NeighbourKernel:
    grid = np.ix_(perm, perm)
    return NeighbourKernel(state.kernel[grid], state.mask[grid], state.self_hsic)


def hsic_unbiased_general(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC formula evaluated as written, for possibly asymmetric
    (kNN-masked) K and L: [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2 1'K~L~1/(n-2)] / (n(n-3)).
    For asymmetric matrices this is not a U-centred inner product, so it is kept verbatim
    (in float64) to agree with the reference."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    trace_kl = np.einsum("ij,ji->", Kt, Lt)
    sum_kl = Kt.sum(axis=0) @ Lt.sum(axis=1)  # 1'K L 1 without the O(n^3) product
    value = trace_kl + Kt.sum() * Lt.sum() / ((n - 1) * (n - 2)) - 2.0 * sum_kl / (n - 2)
    return float(value / (n * (n - 3)))


def hsic_biased_general(K: np.ndarray, L: np.ndarray) -> float:
    """trace(K H L H) for any square K, L, in O(n^2)."""
    n = K.shape[0]
    trace_kl = np.einsum("ij,ji->", K, L)
    cross = K.sum(axis=0) @ L.sum(axis=1) + K.sum(axis=1) @ L.sum(axis=0)
    return float(trace_kl - cross / n + K.sum() * L.sum() / n**2)


def _hsic(K, L, unbiased: bool) -> float:
    return hsic_unbiased_general(K, L) if unbiased else hsic_biased_general(K, L)


def neighbour_kernel(X: np.ndarray, topk: int | None = None, unbiased: bool = True) -> NeighbourKernel:
    """``prepare`` for CKNNA."""
    check_choice("unbiased", unbiased, (True, False))
    check_hsic_samples(X, unbiased)
    check_not_constant(X, "its kernel is flat, so neighbours are all ties and CKNNA is undefined")
    n = X.shape[0]
    # Unbiased: the diagonal is excluded from the candidates (as the reference), so
    # topk=None means every other sample; biased: the diagonal may be chosen.
    candidates = n - 1 if unbiased else n
    topk = candidates if topk is None else check_int("topk", topk, 2, candidates)
    kernel = X @ X.T
    ranking = kernel.copy()
    if unbiased:
        np.fill_diagonal(ranking, -np.inf)
    import torch  # here only: importing torch costs every pipeline job a second or more

    picked = torch.topk(torch.from_numpy(ranking), topk, dim=1).indices.numpy()
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, picked, True, axis=1)
    masked = np.where(mask, kernel, 0.0)
    return NeighbourKernel(kernel, mask, _hsic(masked, masked, unbiased))


@register("cknna", prepare=neighbour_kernel, permute=permute_neighbour_kernel)
def cknna(a: NeighbourKernel, b: NeighbourKernel, unbiased: bool = True) -> float:
    """CKNNA (Huh et al. 2024): CKA of the linear kernels restricted to pairs (i, j) where j is
    among i's ``topk`` neighbours in both X and Y, each normalised by its own masked HSIC.

    Kernel on the rows as given (uncentred, as the reference). ``topk=None`` keeps every pair:
    then it equals ``unbiased_cka`` (``cka`` when ``unbiased=False``). Chance ≈ 0.
    """
    both = a.mask & b.mask
    hsic_xy = _hsic(np.where(both, a.kernel, 0.0), np.where(both, b.kernel, 0.0), unbiased)
    denominator = a.self_hsic * b.self_hsic
    if not denominator > 0:
        raise ValueError(
            f"masked self-HSIC product is {denominator:.3g} <= 0 (constant representation or "
            "too few neighbours): CKNNA is undefined"
        )
    return hsic_xy / np.sqrt(denominator)
