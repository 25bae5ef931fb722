"""Null baselines: how many unit matches would appear without any shared unit basis.

Three nulls, compared with the same statistics as the observed matches:
- rotation: A's units mixed by a random orthogonal matrix (same information, no privileged
  basis), so whatever survives in the observed data beyond this is unit-level alignment;
- shuffled images (vision: cell positions): B's units read on another image than A's, cell for cell
  (`shuffled_image_rows`, a derangement of the images). Every unit keeps its values, its maps keep their
  spatial autocorrelation and the layout they share across images (a unit that fires at the centre of
  every image still meets one that does), but no content is shared: matches that survive it are about
  what is in the image, not where things usually are or how smooth maps are;
- control: any second activation matrix supplied by the caller, e.g. a random-init model, so the
  excess is what training created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from convergence.utils import torch_threads

from .matching import TopKPartners, as_partners, mutual_matches
from .correlation import PearsonResult, pearson
from .sources import RotatedView, shape_of

Correlations = TopKPartners | PearsonResult | np.ndarray


@dataclass
class NullReport:
    """Observed mutual-match statistics next to the null's, over R null draws.

    `matches_*`: number of mutual matches; `mean_r_*`: their mean r (NaN when there are none);
    `*_null` the mean over the draws, `*_null_sd` their standard deviation (ddof=1; 0 for one draw);
    `excess_*`: observed − null mean; `z_*`: excess / null SD (NaN when the SD is 0);
    `p_*`: the empirical one-sided p-value (1 + #{draws ≥ observed}) / (R + 1), whose floor is 1/(R + 1);
    `null_max_abs_r`: the largest |r| anywhere in any null matrix; `above_null_max`: observed matches
    with |r| above it; `null_draws`: R.
    """

    matches_observed: int
    matches_null: float
    matches_null_sd: float
    excess_matches: float
    z_matches: float
    p_matches: float
    mean_r_observed: float
    mean_r_null: float
    mean_r_null_sd: float
    excess_mean_r: float
    z_mean_r: float
    p_mean_r: float
    null_max_abs_r: float
    above_null_max: int
    null_draws: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def null_band(observed: float, draws: Sequence[float]) -> dict[str, float]:
    """Observed value against R null draws: null mean and SD, excess, z-score and empirical p (upper tail).

    Draws that are NaN (e.g. the mean r of a draw without matches) are left out; with none left, all NaN.
    """
    values = np.asarray([x for x in draws if x is not None and np.isfinite(x)], np.float64)
    if not len(values) or observed is None or not np.isfinite(observed):
        return {"null": float("nan"), "null_sd": float("nan"), "excess": float("nan"), "z": float("nan"),
                "p": float("nan"), "draws": int(len(values))}
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    excess = float(observed) - mean
    z = excess / sd if sd > 0 else float("nan")
    p = (1 + int((values >= observed).sum())) / (len(values) + 1)
    return {"null": mean, "null_sd": sd, "excess": excess, "z": z, "p": p, "draws": int(len(values))}


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A Haar-uniform random orthogonal `[dim, dim]` matrix (float64), reproducible from `seed`.

    QR of a Gaussian matrix with the signs of R's diagonal fixed (Mezzadri 2007): orthogonal to float64
    rounding (QᵀQ = I to ~1e-14). The Gaussian comes from numpy's seeded generator; the QR is torch's
    (LAPACK through MKL, several times faster than numpy's here), on one thread: the blocked QR
    synchronises its threads at every panel, and on a busy machine two threads took 4.5x as long as one
    (width 1536: 1.66 s vs 0.37 s, load 6 on 2 cores).
    """
    gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
    with torch_threads(1):
        q, upper = torch.linalg.qr(torch.from_numpy(gaussian))
    q, upper = q.numpy(), upper.numpy()
    # Fix the signs QR leaves arbitrary; otherwise the distribution is not uniform (Mezzadri 2007).
    return q * np.sign(np.diag(upper))[None, :]




def shuffled_image_rows(sample_ids: Sequence, unit_pos: Sequence[int], seed: int, draws: int) -> list[np.ndarray]:
    """Per draw, the row of B to pair with each row of A: the same cell of another image.

    Rows are positions `(sample_id, unit_pos)` as a units store holds them: each sample's cells contiguous,
    every sample with the same cells `0..C-1` in order (an image grid). Draw q pairs image i with image
    `pi_q(i)`, `pi_q` a uniformly random derangement (no image meets itself), from
    `np.random.default_rng([seed, q])`. Raises ValueError for fewer than two images or rows that are not a
    grid of cells per image (e.g. word positions, whose number differs between texts).
    """
    ids = np.asarray(sample_ids, dtype=object)
    pos = np.asarray(unit_pos, np.int64)
    if len(ids) != len(pos) or not len(ids):
        raise ValueError("shuffled images: sample_ids and unit_pos must be equal-length and non-empty")
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    cells = np.diff(np.r_[starts, len(ids)])
    n_images = len(starts)
    if n_images < 2:
        raise ValueError("shuffled images needs at least two images")
    if len(set(ids[starts])) != n_images or len(set(cells.tolist())) != 1 \
            or not np.array_equal(pos, np.tile(np.arange(cells[0]), n_images)):
        raise ValueError("shuffled images needs every image's cells 0..C-1 in order, each image's rows together "
                         "(a vision units store); word positions differ in number between texts")
    image_of_row = np.repeat(np.arange(n_images), cells)
    out = []
    for q in range(int(draws)):
        rng = np.random.default_rng([int(seed), q])
        while True:  # rejection: a uniform permutation is a derangement with probability ~1/e
            perm = rng.permutation(n_images)
            if not (perm == np.arange(n_images)).any():
                break
        out.append(starts[perm[image_of_row]] + pos)
    return out


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
    """Observed mutual matches (`mutual_matches(k, k_back)`) against one or several null draws.

    Several draws (e.g. rotations with different seeds) give the null's mean, SD, a z-score and an
    empirical p-value (see `NullReport`), and make the null's maximum |r| a stricter threshold.
    `absolute` as in `mutual_matches`.
    """
    nulls = list(null) if isinstance(null, (list, tuple)) else [null]
    kk = max(k, k_back or k)
    observed_partners = as_partners(observed, kk, absolute)
    null_partners = [as_partners(x, kk, absolute) for x in nulls]
    found = mutual_matches(observed_partners, k, k_back)
    null_found = [mutual_matches(x, k, k_back) for x in null_partners]
    null_max = max(x.max_abs_r for x in null_partners)
    mean_observed = _mean(found.r)
    counts = null_band(len(found), [len(m) for m in null_found])
    mean_r = null_band(mean_observed, [_mean(m.r) for m in null_found])
    return NullReport(
        matches_observed=len(found),
        matches_null=counts["null"],
        matches_null_sd=counts["null_sd"],
        excess_matches=counts["excess"],
        z_matches=counts["z"],
        p_matches=counts["p"],
        mean_r_observed=mean_observed,
        mean_r_null=mean_r["null"],
        mean_r_null_sd=mean_r["null_sd"],
        excess_mean_r=mean_r["excess"],
        z_mean_r=mean_r["z"],
        p_mean_r=mean_r["p"],
        null_max_abs_r=null_max,
        above_null_max=int((np.abs(found.r) > null_max).sum()),
        null_draws=len(nulls),
    )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
