"""Matching a generator's units to a discriminative model's units on the generator's own images.

As the Rosetta Neurons reference (`match_utils/matching.py`): sample z, generate images, record the
generator's maps at its unit layers, run the discriminative model on the same images, and correlate
every generator unit with every discriminative unit over (image x position). Where we differ:

- maps are brought to one `grid x grid` grid (bilinear, as every vision model in our Rosetta stage);
  the reference upsamples each pair of layers to the larger of their two sizes;
- correlations are exact Pearson over all images and cells at once (`convergence.rosetta.pearson`,
  streamed in float64); the reference averages per-batch correlations of maps normalised by
  dataset statistics, an approximation of Pearson;
- every layer pair is kept in one unit x unit table, as the reference's concatenated table.

The same pass gives the nulls: a random orthogonal rotation of the generator's units (same
information, no privileged basis; as in the Rosetta stage, units are z-scored and each layer is mixed by
its own Haar-random rotation, `rotated_units`) and the random-init generator
(the same architecture, seeded, not trained) with the discriminative model on *its* images, and the
shuffled-images null (`convergence.rosetta.shuffled_image_rows`): the model's units on another generated
image than the generator's, cell for cell, which keeps every map's spatial smoothness and the layout
shared across images (what lets smooth maps of an untrained generator correlate with anything) but
shares no content. It also records each unit's mean at the inversion resolution `res`, which inversion
and editing subtract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from convergence.rosetta import pearson, random_rotation, shuffled_image_rows, topk_partners

from .gan import sample_latents
from .maps import VisionMaps, cells, generator_maps, resize_maps


@dataclass
class UnitMatrices:
    """Rows (image, cell), columns units: generator `a [N, Ug]`, discriminative `b [N, Ud]`; per-unit means
    at resolution `res` (`mean_a`, `mean_b`); each layer's width."""

    a: np.ndarray
    b: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray
    widths_a: list[int]
    widths_b: list[int]


class _MeanAt:
    """Running per-unit mean of maps resized to `res`, in float64."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, maps: list[torch.Tensor], res: int) -> None:
        sums = torch.cat([m.double().sum((0, 2, 3)) for m in resize_maps(maps, res)])
        self.total = sums if self.total is None else self.total + sums
        self.count += maps[0].shape[0] * res * res

    def result(self) -> np.ndarray:
        return (self.total / self.count).numpy()


@torch.no_grad()
def unit_matrices(generator: nn.Module, layers: list[str], vision: VisionMaps, z: torch.Tensor, *, grid: int,
                  res: int, batch_size: int = 64, progress: bool = True, desc: str = "units") -> UnitMatrices:
    """Generator and discriminative units on the generator's images for latents `z` (module docstring)."""
    generator.eval()
    a, b, mean_a, mean_b = [], [], _MeanAt(), _MeanAt()
    widths_a = widths_b = None
    for start in tqdm(range(0, len(z), batch_size), desc=desc, unit="batch", disable=not progress, mininterval=5):
        images, g_maps = generator_maps(generator, z[start:start + batch_size], layers)
        d_maps = vision.maps(images)
        widths_a, widths_b = [m.shape[1] for m in g_maps], [m.shape[1] for m in d_maps]
        a.append(cells(g_maps, grid).numpy())
        b.append(cells(d_maps, grid).numpy())
        mean_a.add(g_maps, res)
        mean_b.add(d_maps, res)
    return UnitMatrices(np.concatenate(a), np.concatenate(b), mean_a.result(), mean_b.result(), widths_a, widths_b)


def rotated_units(a: np.ndarray, widths: list[int], seed: int) -> np.ndarray:
    """The rotation null of `a [N, U]`: units z-scored, then each layer's block mixed by its own seeded
    Haar-random orthogonal matrix (the Rosetta stage's definition). Constant units stay constant."""
    a = np.asarray(a, np.float64)
    std = a.std(0)
    z = (a - a.mean(0)) / np.where(std > 0, std, 1.0)
    children = np.random.SeedSequence(int(seed)).spawn(len(widths))
    start = 0
    for width, child in zip(widths, children):
        block = slice(start, start + width)
        z[:, block] = z[:, block] @ random_rotation(width, int(child.generate_state(1)[0]))
        start += width
    return z.astype(np.float32)


def match_generator(generator: nn.Module, random_generator: nn.Module, layers: list[str], vision: VisionMaps, *,
                    n_samples: int, seed: int, grid: int, res: int, k: int, rotation_seed: int,
                    batch_size: int = 64, progress: bool = True) -> dict[str, np.ndarray]:
    """Top-`k` partners of the generator's units with `vision`'s units, and both nulls, as plain arrays.

    Keys: `obs_*`, `rot_*` (rotation of the generator's units), `rand_*` (random-init generator) and `shuf_*`
    (shuffled images) hold `TopKPartners.as_dict()` fields; `mean_a`/`mean_b` the units' means at `res`; `widths_a`,
    `widths_b`; `r_obs_max` etc. are kept inside the partners (`max_abs_r`).
    """
    z = sample_latents(n_samples, generator.latent_dim, seed)
    observed = unit_matrices(generator, layers, vision, z, grid=grid, res=res, batch_size=batch_size,
                             progress=progress, desc=f"units {vision.name}")
    random_init = unit_matrices(random_generator, layers, vision, z, grid=grid, res=res, batch_size=batch_size,
                                progress=progress, desc=f"random-init generator, {vision.name}")
    cells_per_image = grid * grid
    image_ids = np.repeat(np.arange(n_samples), cells_per_image)
    shuffled = shuffled_image_rows(image_ids, np.tile(np.arange(cells_per_image), n_samples), rotation_seed, 1)[0]
    results = {
        "obs": pearson(observed.a, observed.b),
        "rot": pearson(rotated_units(observed.a, observed.widths_a, rotation_seed), observed.b),
        "rand": pearson(random_init.a, random_init.b),
        "shuf": pearson(observed.a, observed.b[shuffled]),
    }
    arrays: dict[str, np.ndarray] = {
        "mean_a": observed.mean_a, "mean_b": observed.mean_b,
        "widths_a": np.asarray(observed.widths_a), "widths_b": np.asarray(observed.widths_b),
        "n_rows": np.asarray(len(observed.a)),
    }
    for prefix, result in results.items():
        for key, value in topk_partners(result, k).as_dict().items():
            arrays[f"{prefix}_{key}"] = np.asarray(value)
    return arrays
