"""Geometry-of-samples metrics: orthogonal Procrustes similarity and RSA."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._registry import check_choice, check_min_samples, permute_rows, register

RDMS = ("correlation", "euclidean", "cosine")


def unit_centred(X: np.ndarray) -> np.ndarray:
    """``prepare`` for Procrustes: centred features scaled to unit Frobenius norm. With more
    features than samples they are first rotated into an N-dim basis (Xc = R'Q' -> R'; an
    orthogonal map, which the metric ignores), so the pairwise SVD is at most N square."""
    check_min_samples(X, 2, "centring")
    Xc = X - X.mean(axis=0)
    if Xc.shape[1] > Xc.shape[0]:
        Xc = np.linalg.qr(Xc.T, mode="r").T
    total = np.linalg.norm(Xc)
    if not total > 0:
        raise ValueError("representation is constant across samples: Procrustes is 0/0")
    return np.ascontiguousarray(Xc / total)


@register("procrustes", prepare=unit_centred, permute=permute_rows)
def procrustes(a: np.ndarray, b: np.ndarray) -> float:
    """Orthogonal Procrustes similarity: max over orthogonal R of <Xc R, Yc> for centred,
    unit-Frobenius-norm X and Y, i.e. the nuclear norm ||Xc' Yc||_* (Ding et al. 2021; the
    Procrustes distance is sqrt(2 - 2 * this)). In [0, 1].

    Invariant to orthogonal maps, isotropic scaling and translation. Chance for independent
    isotropic features ≈ (8 / 3pi) sqrt(D / N) for D << N (-> 1 as D approaches N).
    """
    return float(np.linalg.svd(a.T @ b, compute_uv=False).sum())


class RankedRDM(NamedTuple):
    ranks: np.ndarray  # [N, N] symmetric, standardised ranks of the pair distances, 0 elsewhere
    n_pairs: int


def dissimilarities(X: np.ndarray, rdm: str) -> np.ndarray:
    """[N, N] representational dissimilarity matrix."""
    if rdm == "euclidean":
        Xc = X - X.mean(axis=0)  # distances ignore translation; centring avoids cancellation
        sq = (Xc * Xc).sum(axis=1)
        return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * Xc @ Xc.T, 0.0))
    Z = X - X.mean(axis=1, keepdims=True) if rdm == "correlation" else X
    norms = np.linalg.norm(Z, axis=1)
    if np.any(norms == 0):
        what = "constant across features" if rdm == "correlation" else "all zero"
        raise ValueError(f"a sample is {what}: its {rdm} distance is undefined")
    Z = Z / norms[:, None]
    return 1.0 - Z @ Z.T


def ranked_rdm(X: np.ndarray, rdm: str = "correlation") -> RankedRDM:
    """``prepare`` for RSA."""
    check_choice("rdm", rdm, RDMS)
    check_min_samples(X, 3, "Spearman needs at least 3 sample pairs")
    n = X.shape[0]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    values = dissimilarities(X, rdm)[upper]
    from scipy.stats import rankdata  # here only: scipy.stats takes a second to import in every job

    ranks = rankdata(values)  # average ranks for ties, as Spearman's rho
    spread = ranks.std()
    if not spread > 0:
        raise ValueError("all pairwise dissimilarities are equal: Spearman correlation undefined")
    square = np.zeros((n, n))
    square[upper] = (ranks - ranks.mean()) / spread
    return RankedRDM(square + square.T, int(upper.sum()))


def permute_rdm(state: RankedRDM, perm: np.ndarray) -> RankedRDM:
    return RankedRDM(state.ranks[np.ix_(perm, perm)], state.n_pairs)


@register("rsa", prepare=ranked_rdm, permute=permute_rdm)
def rsa(a: RankedRDM, b: RankedRDM) -> float:
    """Representational similarity analysis: Spearman correlation between the upper
    triangles of the two RDMs (``rdm``: 1 - Pearson r between samples [default],
    Euclidean, or cosine distance).

    Invariant to isotropic scaling (and, for 'euclidean', to orthogonal maps and
    translation; for 'correlation', to per-sample shifts and scales). Chance ≈ 0.
    """
    # Standardised ranks: Pearson of ranks = mean product; each pair sits twice in the square.
    return float((a.ranks * b.ranks).sum() / (2 * a.n_pairs))
