"""Pool vision hidden states into one vector per image and layer: `[B, L, D]`, like the language side.

Two layouts occur:
- token models (ViT, DINOv2, CLIP vision): `[B, T, D]` with the CLS token first.
  `cls` takes token 0 (as PRH does for ViTs); `mean` averages the patch tokens, CLS excluded.
- CNNs (ResNet): `[B, C, H, W]`. `mean` averages over space (global average pooling, what the
  classifier sees); `cls` does not exist and raises.

CNN stages usually differ in width (e.g. 64, 128, 256 channels), and a `[B, L, D]` array needs one D.
Zero-padding would invent units that metrics then count, so selected layers of different widths raise
a ValueError naming each layer's width: select layers of one width. (The zoo's ResNets keep one width
in every stage, so all their layers fit together.)
"""

from __future__ import annotations

from typing import Sequence

import torch

POOLINGS = ("cls", "mean")


def _pool_one(h: torch.Tensor, pooling: str, layer: int) -> torch.Tensor:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown vision pooling '{pooling}' (choose from {', '.join(POOLINGS)})")
    if h.ndim == 3:  # [B, T, D], token 0 = CLS
        if pooling == "cls":
            return h[:, 0]
        if h.shape[1] < 2:
            raise ValueError(f"layer {layer}: 'mean' pools patch tokens after CLS, but there is only one token")
        return h[:, 1:].mean(1)
    if h.ndim == 4:  # [B, C, H, W]
        if pooling == "cls":
            raise ValueError(f"layer {layer} is a CNN feature map [B, C, H, W]: it has no CLS token; use pooling 'mean'")
        return h.mean(dim=(2, 3))
    raise ValueError(f"layer {layer}: expected [B, T, D] or [B, C, H, W] hidden states, got shape {tuple(h.shape)}")


def pool_vision_hidden_states(hidden_states: Sequence[torch.Tensor], pooling: str,
                              layers: Sequence[int]) -> torch.Tensor:
    """Hidden states per layer (as `output_hidden_states=True` returns them) -> `[B, len(layers), D]` float32."""
    if len(layers) == 0:
        raise ValueError("no layers selected")
    pooled = [_pool_one(hidden_states[i], pooling, i).float() for i in layers]
    widths = {i: p.shape[-1] for i, p in zip(layers, pooled)}
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{i}: {w}" for i, w in widths.items())
        raise ValueError(
            f"selected layers differ in width ({listing}); a [B, L, D] store needs one width. "
            "Select layers of one width in the model's `layers` (CNN stages often widen)."
        )
    return torch.stack(pooled, dim=1)
