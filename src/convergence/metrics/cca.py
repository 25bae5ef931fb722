"""Canonical-correlation metrics: SVCCA (Raghu et al. 2017) and PWCCA (Morcos et al. 2018).

Canonical correlations between two column spaces with orthonormal bases Qx, Qy are the
singular values of Qx' Qy; computing them that way (exact decompositions in float64) is
deterministic,
unlike the reference's randomised ``svd_lowrank`` + iterative sklearn CCA + added noise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from ._registry import check_int, check_min_samples, permute_rows, register


def _centre(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0)


def standardise(X: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit std (ddof=1, as the reference's ``torch.std``).
    Constant columns stay zero (the reference divides 0 by std + 1e-8, also giving 0)."""
    Xc = _centre(X)
    std = Xc.std(axis=0, ddof=1)
    return Xc / np.where(std > 0, std, 1.0)


def top_left_singular_vectors(X: np.ndarray, cca_dim: int = 10) -> np.ndarray:
    """``prepare`` for SVCCA: an orthonormal basis ``[N, cca_dim]`` of the leading
    ``cca_dim`` left singular vectors of the standardised representation (exact, from the
    top eigenvectors of its smaller Gram matrix)."""
    check_min_samples(X, 2, "standardisation needs a spread")
    n, d = X.shape
    cca_dim = check_int("cca_dim", cca_dim, 1, min(n - 1, d))
    Xs = standardise(X)
    small = min(n, d)
    gram = Xs.T @ Xs if d <= n else Xs @ Xs.T
    eigenvalues, vectors = scipy.linalg.eigh(
        gram, subset_by_index=[small - cca_dim, small - 1], driver="evx"  # evx: fast for few
    )
    # Eigenvalues of a Gram matrix carry absolute error ~ eps * largest: rank below that.
    if not eigenvalues[0] > eigenvalues[-1] * small * np.finfo(np.float64).eps:
        raise ValueError(
            f"cca_dim={cca_dim} exceeds the numerical rank of the standardised representation: "
            "the extra directions would be arbitrary"
        )
    basis = Xs @ vectors if d <= n else vectors
    return np.linalg.qr(basis)[0]  # orthonormal to machine precision; same subspace


def canonical_correlations(Qx: np.ndarray, Qy: np.ndarray) -> np.ndarray:
    return np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)


@register("svcca", prepare=top_left_singular_vectors, permute=permute_rows)
def svcca(Ux: np.ndarray, Uy: np.ndarray) -> float:
    """SVCCA: mean of the ``cca_dim`` canonical correlations between the top-``cca_dim``
    singular subspaces of the column-standardised representations, as PRH (deterministic).

    Invariant to per-neuron scaling and neuron permutations (not to rotations: neurons are
    standardised one by one). Chance for independent representations is of order
    sqrt(cca_dim / N) (two random cca_dim-dim subspaces of R^N; 0.08 at cca_dim=10, N=1000).
    """
    return float(canonical_correlations(Ux, Uy).mean())


class CentredBasis(NamedTuple):
    centred: np.ndarray  # [N, D] mean-centred features
    basis: np.ndarray  # [N, r] orthonormal basis of their column space, r = rank


def centred_basis(X: np.ndarray) -> CentredBasis:
    """``prepare`` for PWCCA: rank-revealing (column-pivoted) QR of the centred features."""
    check_min_samples(X, 2, "centring")
    Xc = _centre(X)
    Q, R, _ = scipy.linalg.qr(Xc, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(R))
    if diagonal.size == 0 or diagonal[0] == 0:
        raise ValueError("representation is constant across samples: no canonical directions")
    rank = int((diagonal > diagonal[0] * max(X.shape) * np.finfo(np.float64).eps).sum())
    return CentredBasis(Xc, np.ascontiguousarray(Q[:, :rank]))


@register("pwcca", prepare=centred_basis, permute=permute_rows)
def pwcca(a: CentredBasis, b: CentredBasis) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): canonical correlations averaged with
    weights = how much of the representation's neurons each canonical variate accounts for
    (sum over neurons of |<variate, neuron>|). Weights come from the side with fewer
    canonical directions (lower rank; X on a tie), as the reference implementation.

    Invariant to invertible linear maps of either side and to translation. Chance for
    independent features is of order sqrt(D / N) for D << N (0.27 at D=100, N=1000), and
    1 once Dx + Dy >= N: CCA metrics need D well below N.
    """
    if b.basis.shape[1] < a.basis.shape[1]:
        a, b = b, a
    P, rho, _ = np.linalg.svd(a.basis.T @ b.basis, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    variates = a.basis @ P  # [N, m] unit-norm canonical variates of the weighting side
    weights = np.abs(variates.T @ a.centred).sum(axis=1)
    return float(weights @ rho / weights.sum())
