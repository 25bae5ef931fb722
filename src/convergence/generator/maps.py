"""Activation maps of a generator (forward hooks on named layers) and of discriminative vision models.

A unit is one channel of one layer. Both sides give maps `[B, C, h, w]` per layer; `cells` brings a
list of such maps to one `grid x grid` map per unit with `convergence.rosetta.units.spatial_units` (bilinear,
`align_corners=False`, as every vision model's units in the Rosetta stage) and flattens them to rows
`(image, cell)` x columns `unit`, the layout `convergence.rosetta.pearson` correlates.

Discriminative models see the generated images as any image: converted to uint8 RGB and passed through
their own image processor (resizing, normalisation), so every model that loads through
`convergence.models.load_model` with `modality: vision` works, whatever its input size. Their maps are
the units of the Rosetta stage (`convergence.rosetta.units.vision_maps`): by default the units after a
nonlinearity (`activation`), else the hidden states (`residual`); CNN maps `[B, C, H, W]` or tokens
`[B, T, D]` (the last h*w tokens, reshaped to the patch grid).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from convergence.rosetta.units import spatial_units

from .gan import GeneratorError, to_uint8


@dataclass
class UnitIndex:
    """Which layer and channel each unit (column) of a model's unit matrix is."""

    model: str
    layers: list  # layer names (generator) or hidden-state indices (vision models), in unit order
    widths: list[int]

    @property
    def n_units(self) -> int:
        return int(sum(self.widths))

    def layer_of(self) -> np.ndarray:
        """`[U]` position in `layers` of every unit."""
        return np.repeat(np.arange(len(self.widths)), self.widths)

    def channel_of(self) -> np.ndarray:
        """`[U]` channel of every unit inside its layer."""
        return np.concatenate([np.arange(w) for w in self.widths]) if self.widths else np.zeros(0, np.int64)

    def label(self, unit: int) -> str:
        layer, channel = self.layer_of()[unit], self.channel_of()[unit]
        return f"{self.layers[layer]}:{channel}"


def generator_layers(generator: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """The generator's unit layers: `layers`, else its `unit_layers` attribute; checked against its modules."""
    names = list(layers) if layers else list(getattr(generator, "unit_layers", ()) or ())
    if not names:
        raise GeneratorError(f"{type(generator).__name__} has no `unit_layers`; name its layers (module names "
                             "from named_modules()) whose output maps are its units")
    modules = dict(generator.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        known = ", ".join(n for n in modules if n) or "none"
        raise GeneratorError(f"{type(generator).__name__} has no module(s) {missing}; its modules: {known}")
    return names


@contextmanager
def recording(module: nn.Module, layers: Sequence[str]):
    """Record the outputs of `module`'s sublayers `layers` during forward passes: yields {name: tensor}.

    Outputs keep their autograd graph (inversion optimises through them); run under `torch.no_grad()`
    when no gradient is needed.
    """
    modules = dict(module.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        def hook(_module, _inputs, output, name=name):
            if not (torch.is_tensor(output) and output.ndim == 4):
                raise GeneratorError(f"layer '{name}' returned {type(output).__name__} "
                                     f"{tuple(getattr(output, 'shape', ()))}; unit layers must output [B, C, H, W] maps")
            store[name] = output
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def generator_maps(generator: nn.Module, z: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(images `[B, 3, H, W]` in [-1, 1], one map `[B, C, h, w]` per layer) for latents `z`."""
    with recording(generator, layers) as store:
        images = generator(z)
    return images, [store[name] for name in layers]


def resize_maps(maps: Sequence[torch.Tensor], side: int) -> list[torch.Tensor]:
    """Each `[B, C, h, w]` map bilinearly resized to `side x side` (`align_corners=False`)."""
    return [m if tuple(m.shape[-2:]) == (side, side)
            else F.interpolate(m, size=(side, side), mode="bilinear", align_corners=False) for m in maps]


def cells(maps: Sequence[torch.Tensor], grid: int) -> torch.Tensor:
    """Maps of several layers (any widths) -> `[B * grid², U]` float32 rows (image, cell), units in layer order.

    Each layer goes through `spatial_units` on its own (it requires one width per call).
    """
    per_layer = [spatial_units([m], [0], grid)[:, :, 0, :] for m in maps]  # [B, grid², C]
    joined = torch.cat(per_layer, dim=2)
    return joined.reshape(-1, joined.shape[-1])


class VisionMaps:
    """A discriminative vision model as a function images -> maps of its chosen units (`kind`: "activation",
    the units after a nonlinearity, or "residual", the hidden states; see `convergence.rosetta.units`)."""

    def __init__(self, loaded, layers: Sequence[int], name: str, kind: str = "activation"):
        from convergence.rosetta.units import activation_sites

        if kind not in ("activation", "residual"):
            raise GeneratorError(f"model '{name}': units {kind!r} are not vision units (activation or residual)")
        self.loaded, self.layers, self.name, self.kind = loaded, list(layers), name, kind
        self.model = loaded.model
        self.sites = (activation_sites(self.model, self.layers, loaded.n_hidden_states)
                      if kind == "activation" else None)

    def pixels(self, images_uint8: np.ndarray) -> torch.Tensor:
        from PIL import Image

        pil = [Image.fromarray(img) for img in images_uint8]
        pixels = self.loaded.processor(images=pil, return_tensors="pt")["pixel_values"]
        dtype = getattr(self.model, "dtype", None) or next(self.model.parameters(), torch.empty(0)).dtype
        return pixels.to(self.loaded.device, dtype)

    @torch.no_grad()
    def maps(self, images: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """One `[B, C, h, w]` float32 map per chosen layer, for images in [-1, 1] (tensor) or uint8 (array)."""
        from convergence.rosetta.units import as_map, patch_grid_of, vision_maps

        array = to_uint8(images) if torch.is_tensor(images) else np.asarray(images)
        pixels = self.pixels(array)
        found = vision_maps(self.model, pixels, {self.kind: self.layers}, self.sites)[self.kind]
        grid = patch_grid_of(self.model, pixels)
        return [as_map(found[i], i, grid).float().cpu() for i in self.layers]

    def widths(self, probe: np.ndarray) -> list[int]:
        return [m.shape[1] for m in self.maps(probe)]
