"""Pool vision hidden states into one vector per image and layer: `[B, L, D]`, like the language side.

Two layouts occur:
- token models (ViT, DINOv2, CLIP vision): `[B, T, D]` with the CLS token first.
  `cls` takes token 0 (as PRH does for ViTs); `mean` averages the patch tokens, CLS excluded.
- CNNs (ResNet): `[B, C, H, W]`. `mean` averages over space (global average pooling, what the
  classifier sees); `cls` does not exist and raises.

CNN stages usually differ in width (e.g. 64, 128, 256 channels), and a `[B, L, D]` array needs one D.
By default selected layers of different widths raise a ValueError naming each layer's width. With
`pad_widths=True` (what extraction uses) each layer is zero-padded to the widest, and the store records
every layer's true width (coordinate `width`, `convergence.store.layer_widths`): kernels of
L2-normalised rows (mutual kNN, CKA, CKNNA) are unchanged by zero columns, but anything that counts
units or takes quantiles over them (clipping, CCA, RSA) must read layer k as `[:, k, :width[k]]`.
(The zoo's ResNets keep one width in every stage, so all their layers fit together unpadded.)
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
                              layers: Sequence[int], pad_widths: bool = False) -> torch.Tensor:
    """Hidden states per layer (as `output_hidden_states=True` returns them) -> `[B, len(layers), D]` float32.

    `pad_widths`: layers narrower than the widest are zero-padded at the end (see the module docstring)."""
    if len(layers) == 0:
        raise ValueError("no layers selected")
    pooled = [_pool_one(hidden_states[i], pooling, i).float() for i in layers]
    widths = {i: p.shape[-1] for i, p in zip(layers, pooled)}
    if pad_widths:
        widest = max(widths.values())
        return torch.stack([torch.nn.functional.pad(p, (0, widest - p.shape[-1])) for p in pooled], dim=1)
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{i}: {w}" for i, w in widths.items())
        raise ValueError(
            f"selected layers differ in width ({listing}); a [B, L, D] store needs one width. "
            "Select layers of one width in the model's `layers` (CNN stages often widen)."
        )
    return torch.stack(pooled, dim=1)


def layer_widths(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> list[int]:
    """The true width (channels or hidden size) of each selected layer."""
    return [int(hidden_states[i].shape[1] if hidden_states[i].ndim == 4 else hidden_states[i].shape[-1])
            for i in layers]
