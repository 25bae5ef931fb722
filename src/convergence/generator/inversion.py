"""Rosetta-guided inversion of real images and editing through the generator's Rosetta neurons.

Inversion (the reference's `notebooks/inversion-*.ipynb`): a real image goes through each
discriminative model D; the maps of D's units that are matched to generator units become targets, and
z is optimised so that the matched generator units' maps follow them (`latent.optimize_latents`):
for every matched pair (g, D, d) one term cos(G_g(z) - mu_g, D_d(image) - mu_d). Matches are G-D
mutual best buddies (`mutual_matches(k=1)`), as the reference's inversion uses; every trained D
contributes its pairs. A pixel term is optional (`pixel_weight`, the reference's "both losses"
variant); 0 by default, so the inverted image shows what the Rosetta neurons alone carry. We optimise
several restarts per image at once and keep the one with the lowest loss (the reference starts once,
from one random z).

Editing (the reference's `shift_zoom_copypaste.ipynb`): the generator's own matched units on the
inverted image (mean-subtracted) are shifted, zoomed or duplicated (`edits`), and z is re-optimised
from the inversion towards the edited maps (plus random restarts), with the reference's pull towards
the inverted z for zooms (`z_reg`). The reference starts a copy-paste from a random z; we start every
edit from the inversion and from `restarts - 1` random latents and keep the best.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .edits import (EditRefused, check_duplicate, check_shift, check_zoom, duplicate_maps, shift_maps, zoom_centre_range,
                    zoom_maps)
from .gan import generate, sample_latents, to_uint8
from .latent import LatentResult, Terms, best_of_restarts, optimize_latents, term_maps
from .maps import VisionMaps, recording, resize_maps
from .measure import measure_objects

FLAT_TARGET = 1e-6  # a target map with less spread (relative to its unit's typical spread) carries no shape


@dataclass
class MatchedPair:
    """One inversion term: generator unit (layer index, channel) <-> model `model`'s unit (layer index, channel)."""

    g_layer: int
    g_channel: int
    model: str
    d_layer: int
    d_channel: int
    r: float


@dataclass
class Inversion:
    z: torch.Tensor
    images: np.ndarray  # [n, H, W, 3] uint8
    result: LatentResult
    n_terms: np.ndarray  # [n] terms with a non-flat target
    converged: np.ndarray  # [n] bool: mean cosine >= min_cosine


def inversion_targets(real: np.ndarray, pairs: list[MatchedPair], models: dict[str, VisionMaps],
                      d_means: dict[str, np.ndarray], d_widths: dict[str, list[int]], res: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets `[n, T, res, res]` (D maps on the real images minus the unit means) and weights `[n, T]`."""
    targets = torch.zeros(len(real), len(pairs), res, res)
    by_model: dict[str, list[int]] = {}
    for t, p in enumerate(pairs):
        by_model.setdefault(p.model, []).append(t)
    for name, term_ids in by_model.items():
        maps = resize_maps(models[name].maps(real), res)
        offsets = np.concatenate([[0], np.cumsum(d_widths[name])[:-1]])
        for t in term_ids:
            p = pairs[t]
            unit = offsets[p.d_layer] + p.d_channel
            targets[:, t] = maps[p.d_layer][:, p.d_channel] - float(d_means[name][unit])
    spread = targets.flatten(2).std(-1)
    typical = spread.mean(0, keepdim=True).clamp_min(1e-12)
    weights = (spread > FLAT_TARGET * typical).float()
    return targets, weights


def invert(generator: nn.Module, layers: list[str], pairs: list[MatchedPair], g_means: np.ndarray,
           g_widths: list[int], real: np.ndarray, models: dict[str, VisionMaps], d_means: dict[str, np.ndarray],
           d_widths: dict[str, list[int]], *, res: int, steps: int, lr: float, restarts: int, seed: int,
           pixel_weight: float = 0.0, min_cosine: float = 0.5, progress: bool = True) -> Inversion:
    """Invert real images `[n, H, W, 3]` uint8 through the matched pairs (module docstring)."""
    if not pairs:
        raise ValueError("no matched generator-model unit pairs to invert through: the generator has no mutual "
                         "best buddy in any model")
    n = len(real)
    terms = _terms(layers, [(p.g_layer, p.g_channel) for p in pairs], g_means, g_widths)
    targets, weights = inversion_targets(real, pairs, models, d_means, d_widths, res)
    z0 = sample_latents(n * restarts, generator.latent_dim, seed)
    pixel = None
    if pixel_weight:
        from .gan import from_uint8

        pixel = from_uint8(real).repeat_interleave(restarts, 0)
    result = optimize_latents(generator, terms, targets.repeat_interleave(restarts, 0),
                              weights.repeat_interleave(restarts, 0), z0, steps=steps, lr=lr, res=res,
                              pixel_target=pixel, pixel_weight=pixel_weight, progress=progress, desc="invert")
    _, best = best_of_restarts(result, n, restarts)
    images = to_uint8(generate(generator, best.z))
    return Inversion(z=best.z, images=images, result=best, n_terms=weights.sum(1).numpy().astype(int),
                     converged=best.cosine >= min_cosine)


def _terms(layers: list[str], units: list[tuple[int, int]], g_means: np.ndarray, g_widths: list[int]) -> Terms:
    offsets = np.concatenate([[0], np.cumsum(g_widths)[:-1]])
    layer = np.array([u[0] for u in units], np.int64)
    channel = np.array([u[1] for u in units], np.int64)
    return Terms(layers=list(layers), layer=layer, channel=channel, mean=np.asarray(g_means)[offsets[layer] + channel])


# ---------------------------------------------------------------- editing


@dataclass
class EditRequest:
    """One edit of one image: kind "shift" | "zoom" | "duplicate" (or "none", the no-edit baseline) and its
    parameters (pixels)."""

    image: int
    kind: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    refused: str | None = None
    centre: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "zoom":
            return f"zoom x{self.scale:g}"
        return f"{self.kind} ({self.dx:+g}, {self.dy:+g})"


def plan_edits(inverted: np.ndarray, shifts, zooms, duplicates, image_size: int, fit: bool = True,
               **measure_kw) -> list[EditRequest]:
    """Every requested edit of every inverted image, refused (with the valid range) only where it cannot keep the
    object (or its copy) inside the frame. Zooms are about the object's centroid; edits of an image without
    exactly one object are refused.

    `fit` (default): a request that does not fit this image's object is replaced by the nearest one of the same
    kind and size that does: a shift or duplicate offset in the opposite direction, a zoom about the valid
    centre nearest the centroid (`zoom_centre_range`). What was requested stays in `extra["requested"]`, what
    changed in `extra["fitted"]`; a request is refused only when no such variant fits.
    """
    requests = []
    for i, image in enumerate(inverted):
        found = measure_objects(image, **measure_kw)
        wanted = ([EditRequest(i, "shift", dx=float(dx), dy=float(dy)) for dx, dy in shifts]
                  + [EditRequest(i, "zoom", scale=float(s)) for s in zooms]
                  + [EditRequest(i, "duplicate", dx=float(dx), dy=float(dy)) for dx, dy in duplicates])
        for req in wanted:
            req.extra["requested"] = req.label
            if found.count != 1:
                req.refused = (f"the inverted image shows {found.count} objects; edits are measured on images "
                               "with exactly one object")
                requests.append(req)
                continue
            req.centre = found.centroid
            try:
                _check(req, found.box, image_size)
            except EditRefused as first:
                req.refused = str(first)
                if fit:
                    _fit(req, found.box, image_size)
            requests.append(req)
    return requests


def _check(req: EditRequest, box, image_size: int) -> None:
    if req.kind == "shift":
        check_shift(box, req.dx, req.dy, image_size)
    elif req.kind == "zoom":
        check_zoom(box, req.scale, *req.centre, image_size)
    else:
        check_duplicate(box, req.dx, req.dy, image_size)


def _fit(req: EditRequest, box, image_size: int) -> None:
    """Try the request's same-size variant (module doc of `plan_edits`); on success clear `refused`."""
    if req.kind == "zoom":
        (x_lo, x_hi), (y_lo, y_hi) = zoom_centre_range(box, req.scale, image_size)
        if x_lo > x_hi or y_lo > y_hi:
            return  # the zoomed object is larger than the frame: nothing fits
        centre = (float(np.clip(req.centre[0], x_lo, x_hi)), float(np.clip(req.centre[1], y_lo, y_hi)))
        fitted, variant = {"centre": centre}, f"about ({centre[0]:.1f}, {centre[1]:.1f}), the nearest centre that fits"
    else:
        fitted, variant = {"dx": -req.dx, "dy": -req.dy}, f"offset ({-req.dx:+g}, {-req.dy:+g}), the opposite direction"
    trial = EditRequest(req.image, req.kind, dx=fitted.get("dx", req.dx), dy=fitted.get("dy", req.dy),
                        scale=req.scale, centre=fitted.get("centre", req.centre))
    try:
        _check(trial, box, image_size)
    except EditRefused as second:
        req.refused = f"{req.refused}; nor does {variant}: {second}"
        return
    req.dx, req.dy, req.centre, req.refused = trial.dx, trial.dy, trial.centre, None
    req.extra["fitted"] = f"{req.extra['requested']} does not fit; ran {variant}"


def edited_targets(base: torch.Tensor, requests: list[EditRequest], image_size: int) -> torch.Tensor:
    """`base [n_images, U, R, R]` (mean-subtracted maps of the inverted images) -> `[len(requests), U, R, R]`."""
    out = []
    for req in requests:
        maps = base[req.image]
        if req.kind == "shift":
            out.append(shift_maps(maps, req.dx, req.dy, image_size))
        elif req.kind == "zoom":
            out.append(zoom_maps(maps, req.scale, *req.centre, image_size))
        elif req.kind == "duplicate":
            out.append(duplicate_maps(maps, req.dx, req.dy, *req.centre, image_size))
        elif req.kind == "none":  # the no-edit baseline: the same optimisation towards the unedited maps
            out.append(maps)
        else:
            raise ValueError(f"unknown edit kind '{req.kind}' (shift, zoom, duplicate, none)")
    return torch.stack(out)


@torch.no_grad()
def unit_maps_at(generator: nn.Module, z: torch.Tensor, terms: Terms, res: int) -> torch.Tensor:
    """The terms' mean-subtracted maps `[B, T, res, res]` for latents `z`."""
    generator.eval()
    with recording(generator, terms.layers) as store:
        generator(z)
    return term_maps([store[n] for n in terms.layers], terms, res)


def edit(generator: nn.Module, layers: list[str], g_units: list[tuple[int, int]], g_means: np.ndarray,
         g_widths: list[int], z_inverted: torch.Tensor, requests: list[EditRequest], *, res: int, steps: int,
         lr: float, restarts: int, z_reg: dict[str, float], seed: int, progress: bool = True
         ) -> tuple[list[EditRequest], LatentResult, np.ndarray]:
    """Run the accepted requests; returns (those requests, the best restart of each, their images uint8)."""
    accepted = [r for r in requests if r.refused is None]
    if not accepted:
        return [], None, np.zeros((0,) + tuple(to_uint8(generate(generator, z_inverted[:1])).shape[1:]), np.uint8)
    image_size = int(generate(generator, z_inverted[:1]).shape[-1])
    terms = _terms(layers, g_units, g_means, g_widths)
    base = unit_maps_at(generator, z_inverted, terms, res)
    targets = edited_targets(base, accepted, image_size)
    anchors = torch.stack([z_inverted[r.image] for r in accepted])
    starts = sample_latents(len(accepted) * restarts, generator.latent_dim, seed).reshape(len(accepted), restarts, -1)
    starts[:, 0] = anchors  # the first start of every edit is the inversion itself
    reg = torch.tensor([float(z_reg.get(r.kind, 0.0)) for r in accepted])
    result = optimize_latents(
        generator, terms, targets.repeat_interleave(restarts, 0), torch.ones(len(accepted) * restarts, len(terms)),
        starts.reshape(len(accepted) * restarts, -1), steps=steps, lr=lr, res=res,
        z_anchor=anchors.repeat_interleave(restarts, 0), z_reg=reg.repeat_interleave(restarts, 0),
        progress=progress, desc="edit")
    _, best = best_of_restarts(result, len(accepted), restarts)
    return accepted, best, to_uint8(generate(generator, best.z))


def measure_edit(req: EditRequest, before: np.ndarray, after: np.ndarray, success: dict, **measure_kw) -> dict:
    """The edit's measured effect on the image, against what was requested (README: how to read the table)."""
    b, a = measure_objects(before, **measure_kw), measure_objects(after, **measure_kw)
    row = {"count_before": b.count, "count_after": a.count, "area_before": b.area, "area_after": a.area}
    if req.kind == "shift":
        if a.centroid is None or b.centroid is None:
            row.update(moved_dx=np.nan, moved_dy=np.nan, error_px=np.nan, success=False)
        else:
            mx, my = a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]
            error = float(np.hypot(mx - req.dx, my - req.dy))
            ok = error <= success["shift_error"] * float(np.hypot(req.dx, req.dy)) and a.count == b.count
            row.update(moved_dx=mx, moved_dy=my, error_px=error, success=bool(ok))
    elif req.kind == "zoom":
        ratio = a.area / b.area if b.area else np.nan
        want = req.scale ** 2
        ok = bool(np.isfinite(ratio) and 1 / success["zoom_factor"] <= ratio / want <= success["zoom_factor"]
                  and a.count == b.count)
        row.update(area_ratio=ratio, wanted_area_ratio=want, log2_ratio_error=float(np.log2(ratio / want))
                   if np.isfinite(ratio) and ratio > 0 else np.nan, success=ok)
    else:
        row.update(wanted_count=b.count + 1, success=bool(a.count == b.count + 1))
    return row
