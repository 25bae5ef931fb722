"""Null baselines: how many unit matches would appear without any shared unit basis.

Two nulls, compared with the same statistics as the observed matches:
- rotation: A's units mixed by a random orthogonal matrix (same information, no privileged
  basis), so whatever survives in the observed data beyond this is unit-level alignment;
- control: any second activation matrix supplied by the caller, e.g. a random-init model, so the
  excess is what training created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .matching import TopKPartners, as_partners, mutual_matches
from .correlation import PearsonResult, pearson
from .sources import RotatedView, shape_of

Correlations = TopKPartners | PearsonResult | np.ndarray


@dataclass
class NullReport:
    """Observed mutual-match statistics next to the null's.

    `matches_*`: number of mutual matches; `mean_r_*`: their mean r (NaN when there are none);
    `excess_*`: observed − null (null averaged over the null draws); `null_max_abs_r`: the largest
    |r| anywhere in any null matrix; `above_null_max`: observed matches with |r| above it.
    """

    matches_observed: int
    matches_null: float
    excess_matches: float
    mean_r_observed: float
    mean_r_null: float
    excess_mean_r: float
    null_max_abs_r: float
    above_null_max: int
    null_draws: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A Haar-uniform random orthogonal `[dim, dim]` matrix (float64), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    q, upper = np.linalg.qr(rng.standard_normal((dim, dim)))
    # Fix the signs QR leaves arbitrary; otherwise the distribution is not uniform (Mezzadri 2007).
    return q * np.sign(np.diag(upper))[None, :]


def rotation_null(a: Any, b: Any, seed: int = 0, **pearson_kw) -> PearsonResult:
    """Pearson between a random rotation of A's units (`A @ Q`, streamed) and B; `pearson_kw` as `pearson`.

    For Da × Db too large to hold, rank the null the same way as the data instead:
    `pearson_topk(RotatedView(a, random_rotation(Da, seed)), b, k)`.
    """
    _, dim_a = shape_of(a, "A")
    rotated = RotatedView(a, random_rotation(dim_a, seed))
    return pearson(rotated, b, **pearson_kw)


def compare_to_null(
    observed: Correlations,
    null: Correlations | Sequence[Correlations],
    k: int = 1,
    k_back: int | None = None,
    absolute: bool = False,
) -> NullReport:
    """Excess of observed mutual matches (`mutual_matches(k, k_back)`) over one or several nulls.

    Several null draws (e.g. rotations with different seeds) make the null's maximum |r| a
    stricter threshold and the mean counts less noisy. `absolute` as in `mutual_matches`.
    """
    nulls = list(null) if isinstance(null, (list, tuple)) else [null]
    kk = max(k, k_back or k)
    observed_partners = as_partners(observed, kk, absolute)
    null_partners = [as_partners(x, kk, absolute) for x in nulls]
    found = mutual_matches(observed_partners, k, k_back)
    null_found = [mutual_matches(x, k, k_back) for x in null_partners]
    null_count = float(np.mean([len(m) for m in null_found]))
    null_r = np.concatenate([m.r for m in null_found])
    null_max = max(x.max_abs_r for x in null_partners)
    mean_observed, mean_null = _mean(found.r), _mean(null_r)
    return NullReport(
        matches_observed=len(found),
        matches_null=null_count,
        excess_matches=len(found) - null_count,
        mean_r_observed=mean_observed,
        mean_r_null=mean_null,
        excess_mean_r=mean_observed - mean_null,
        null_max_abs_r=null_max,
        above_null_max=int((np.abs(found.r) > null_max).sum()),
        null_draws=len(nulls),
    )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
