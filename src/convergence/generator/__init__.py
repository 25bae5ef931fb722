"""Rosetta neurons with a generator (Dravid, Gandelsman, Efros, Shocher, ICCV 2023).

The paper puts a generator G at the hub: G's units are matched to the units of discriminative models on
G's own images, and because G draws what its units encode, the matches can be *seen* and *used*: a real
image is inverted by asking G's Rosetta neurons to reproduce the maps that the matched units of the
discriminative models have on it, and edited by shifting, zooming or duplicating those maps.

- `gan`: a small DCGAN (hinge loss, spectral norm), trained on `scenes` images, saved and loaded;
- `maps`: unit maps of G (forward hooks on named layers) and of any vision model (hidden states);
- `matching`: G x model Pearson partners on G's images, with the rotation and random-init-G nulls;
- `latent`: the Rosetta objective and batched latent optimisation;
- `inversion`: guided inversion of real images, edit planning (frame checks), editing, measurement;
- `edits`: shift / zoom / duplicate of maps; `measure`: objects in an image (count, area, centroid);
- `quality`: FID-like sample quality read by a zoo attribute classifier;
- `stage`: the Snakemake-facing functions; `figures`: the stage's figures.

Any generator works: a `torch.nn.Module` with `latent_dim`, `forward(z) -> [B, 3, H, W]` in [-1, 1], and
unit layers named by module name (see the README, "Rosetta neurons with a generator").
"""

from .edits import EditRefused, duplicate_maps, shift_maps, zoom_maps
from .gan import DCGANGenerator, GeneratorError, build_generator, fit_gan, load_generator, normalize_generator_spec
from .latent import Terms, optimize_latents
from .maps import VisionMaps, generator_layers, generator_maps, recording
from .matching import match_generator
from .measure import measure_objects

__all__ = [
    "DCGANGenerator",
    "EditRefused",
    "GeneratorError",
    "Terms",
    "VisionMaps",
    "build_generator",
    "duplicate_maps",
    "fit_gan",
    "generator_layers",
    "generator_maps",
    "load_generator",
    "match_generator",
    "measure_objects",
    "normalize_generator_spec",
    "optimize_latents",
    "recording",
    "shift_maps",
    "zoom_maps",
]
