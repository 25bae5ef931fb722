"""Optimising a generator's latent so that chosen unit maps match target maps (inversion and editing).

The objective follows the Rosetta Neurons reference (`notebooks/inversion-*.ipynb`,
`shift_zoom_copypaste.ipynb`): for every term t (a generator unit g_t and a target map T_t),

    loss(z) = - mean_t  cos(G_{g_t}(z) - mu_{g_t},  T_t)   [+ pixel_weight * MSE(G(z), image)]
                                                            [+ z_reg * mean((z - z_anchor)^2)]

where maps are compared at one `res x res` resolution (bilinear) and mu is the unit's mean over the
matching images (the reference normalises by mean and std; the std does not change a cosine). Targets
are mean-subtracted already: a discriminative unit's map on a real image minus that unit's mean
(inversion), or the generator's own maps of an inverted image, edited (editing). The reference sums the
terms; the mean makes the loss comparable across images with different numbers of terms.

Adam on z with the reference's learning-rate schedule (a 5% linear ramp-up, a cosine ramp-down over the
last 25% of the steps). Many latents are optimised at once as one batch: the generator is in eval mode
(BatchNorm uses its running statistics), so batch elements do not interact, and every element's loss
and gradient are its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .maps import recording, resize_maps

RAMP_UP = 0.05
RAMP_DOWN = 0.25
COS_EPS = 1e-8


@dataclass
class Terms:
    """Which generator unit each term reads: `layer [T]` (index into `layers`), `channel [T]`, `mean [T]`."""

    layers: list[str]
    layer: np.ndarray
    channel: np.ndarray
    mean: np.ndarray

    def __len__(self) -> int:
        return len(self.layer)


@dataclass
class LatentResult:
    """Per batch element: the optimised `z`, final `loss`, mean cosine `cosine` (the map agreement),
    `pixel_mse` (0 if no pixel target) and the loss every `log_every` steps (`history [n_logs, B]`)."""

    z: torch.Tensor
    loss: np.ndarray
    cosine: np.ndarray
    pixel_mse: np.ndarray
    history: np.ndarray


def learning_rate(step: int, steps: int, base: float) -> float:
    """The reference's schedule: linear ramp-up over the first 5%, cosine ramp-down over the last 25%."""
    t = step / steps
    down = min(1.0, (1.0 - t) / RAMP_DOWN)
    down = 0.5 - 0.5 * np.cos(down * np.pi)
    return float(base * down * min(1.0, t / RAMP_UP)) if t > 0 else float(base * down / max(1, RAMP_UP * steps))


def term_maps(maps: list[torch.Tensor], terms: Terms, res: int) -> torch.Tensor:
    """The terms' unit maps `[B, T, res, res]`, mean-subtracted, from one map per layer of `terms.layers`."""
    resized = resize_maps(maps, res)
    widths = [m.shape[1] for m in resized]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    index = torch.from_numpy(offsets[terms.layer] + terms.channel).long()
    stacked = torch.cat(resized, dim=1)[:, index]
    return stacked - torch.as_tensor(terms.mean, dtype=stacked.dtype)[None, :, None, None]


def cosines(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every (element, term) map pair: `[B, T]`."""
    dot = (pred * target).flatten(2).sum(-1)
    norms = pred.flatten(2).norm(dim=-1) * target.flatten(2).norm(dim=-1)
    return dot / (norms + COS_EPS)


def map_agreement(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cosine per element `[B]` (weights 0 drop a term, e.g. a flat target map)."""
    return (cosines(pred, target) * weights).sum(1) / weights.sum(1).clamp_min(1e-12)


def optimize_latents(generator: nn.Module, terms: Terms, targets: torch.Tensor, weights: torch.Tensor,
                     z0: torch.Tensor, *, steps: int, lr: float, res: int, z_anchor: torch.Tensor | None = None,
                     z_reg: float | torch.Tensor = 0.0, pixel_target: torch.Tensor | None = None,
                     pixel_weight: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), log_every: int = 10,
                     progress: bool = True, desc: str = "optimise z") -> LatentResult:
    """Adam on a batch of latents `z0 [B, L]` towards `targets [B, T, res, res]` (module docstring).

    `weights [B, T]`: per-term weight (0 drops a term). `z_reg` (a float or `[B]`): pull towards
    `z_anchor [B, L]`. `pixel_target [B, 3, H, W]` in [-1, 1] with `pixel_weight`: a pixel term.
    """
    if targets.shape[:2] != (len(z0), len(terms)) or weights.shape != targets.shape[:2]:
        raise ValueError(f"targets {tuple(targets.shape)} / weights {tuple(weights.shape)} do not fit "
                         f"{len(z0)} latents and {len(terms)} terms")
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    z = z0.detach().clone().requires_grad_(True)
    reg = torch.as_tensor(z_reg, dtype=z.dtype).expand(len(z)) if z_anchor is not None else None
    optimizer = torch.optim.Adam([z], lr=lr, betas=betas)
    history = []

    def evaluate(latents):
        with recording(generator, terms.layers) as store:
            images = generator(latents)
        agreement = map_agreement(term_maps([store[n] for n in terms.layers], terms, res), targets, weights)
        loss = -agreement
        mse = torch.zeros_like(loss)
        if pixel_target is not None:
            mse = ((images - pixel_target) ** 2).flatten(1).mean(1)
            loss = loss + pixel_weight * mse
        if reg is not None:
            loss = loss + reg * ((latents - z_anchor) ** 2).mean(1)
        return loss, agreement, mse

    try:
        for step in tqdm(range(int(steps)), desc=desc, unit="step", disable=not progress, mininterval=5):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            loss, _, _ = evaluate(z)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # elements are independent: each gets its own gradient
            optimizer.step()
            if step % log_every == 0:
                history.append(loss.detach().numpy().copy())
        with torch.no_grad():
            loss, agreement, mse = evaluate(z)
        history.append(loss.numpy().copy())
    finally:
        for p in generator.parameters():
            p.requires_grad_(True)
    return LatentResult(z=z.detach(), loss=loss.numpy(), cosine=agreement.numpy(), pixel_mse=mse.numpy(),
                        history=np.stack(history))


def best_of_restarts(result: LatentResult, n_items: int, restarts: int) -> tuple[np.ndarray, LatentResult]:
    """Elements are laid out item-major (`item * restarts + r`); keep each item's lowest-loss restart.

    Returns (chosen element index per item, the result restricted to those elements).
    """
    loss = result.loss.reshape(n_items, restarts)
    chosen = np.arange(n_items) * restarts + loss.argmin(1)
    return chosen, LatentResult(z=result.z[chosen], loss=result.loss[chosen], cosine=result.cosine[chosen],
                                pixel_mse=result.pixel_mse[chosen], history=result.history[:, chosen])
