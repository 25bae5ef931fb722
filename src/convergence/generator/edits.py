"""Edits of activation maps (shift, zoom, duplicate) and the frame checks that refuse impossible ones.

Maps are mean-subtracted unit maps `[..., R, R]` covering the whole `S x S` image. An edit moves their
content with `torch.nn.functional.grid_sample` (bilinear, `align_corners=False`); what enters from
outside the frame is 0, i.e. the unit's mean, as the Rosetta Neurons reference pads its normalised maps
with zeros. Geometry is in image pixels: a position is a continuous coordinate in [0, S] (pixel i
covers [i, i + 1)), so an edit means the same on a 4x4 and on a 32x32 map.

- shift (dx, dy): the content moves right by dx and down by dy pixels.
- zoom s about (cx, cy): a point at distance d from the centre moves to distance s * d.
- duplicate (dx, dy): the maps keep their content and receive a copy of it shifted by (dx, dy) in the
  half of the frame nearer the copy: the half-planes are split by the perpendicular bisector of the
  segment from the object's centre to the copy's centre (the reference merges two shifted results
  along the image's vertical midline; the bisector is the same cut for an object in the middle and
  works for any offset).

`check_shift`, `check_zoom`, `check_duplicate` take the object's bounding box (pixel indices,
inclusive) and raise `EditRefused` with the valid range when the edit would move any part of the
object outside the frame (or, for a duplicate, make the copy overlap the original).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class EditRefused(ValueError):
    """The requested edit would move the object (or its copy) outside the frame; the message gives the valid range."""


@dataclass(frozen=True)
class Box:
    """An object's bounding box in pixel indices, inclusive: columns x0..x1, rows y0..y1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1


def _affine(maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample `maps [..., R, R]` at `theta @ (x, y, 1)` (normalised coordinates), zeros outside."""
    shape = maps.shape
    flat = maps.reshape(-1, 1, *shape[-2:]) if maps.ndim != 4 else maps
    batch = flat.shape[0]
    grid = F.affine_grid(theta.to(flat).expand(batch, 2, 3), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(shape)


def shift_maps(maps: torch.Tensor, dx: float, dy: float, image_size: int) -> torch.Tensor:
    """Content moves right by `dx` and down by `dy` image pixels (module docstring)."""
    s = float(image_size)
    theta = torch.tensor([[1.0, 0.0, -2 * dx / s], [0.0, 1.0, -2 * dy / s]])
    return _affine(maps, theta[None])


def zoom_maps(maps: torch.Tensor, scale: float, cx: float, cy: float, image_size: int) -> torch.Tensor:
    """Content scaled by `scale` about the image point (cx, cy) (continuous pixel coordinates)."""
    if scale <= 0:
        raise ValueError(f"zoom scale must be > 0, got {scale}")
    s = float(image_size)
    nx, ny = 2 * cx / s - 1, 2 * cy / s - 1
    inv = 1.0 / scale
    theta = torch.tensor([[inv, 0.0, nx * (1 - inv)], [0.0, inv, ny * (1 - inv)]])
    return _affine(maps, theta[None])


def duplicate_maps(maps: torch.Tensor, dx: float, dy: float, cx: float, cy: float, image_size: int) -> torch.Tensor:
    """The maps plus a copy shifted by (dx, dy), merged along the bisector between (cx, cy) and its copy."""
    if dx == 0 and dy == 0:
        raise ValueError("a duplicate needs a non-zero offset")
    side = maps.shape[-1]
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) * (image_size / side)
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    mid_x, mid_y = cx + dx / 2, cy + dy / 2
    copy_side = ((xs - mid_x) * dx + (ys - mid_y) * dy) > 0  # nearer the copy's centre
    shifted = shift_maps(maps, dx, dy, image_size)
    return torch.where(copy_side.to(maps.device), shifted, maps)


# ---------------------------------------------------------------- frame checks


def _range_text(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g}]" if lo <= hi else "none"


def shift_range(box: Box, image_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Valid (dx_min, dx_max), (dy_min, dy_max) that keep the box inside the frame."""
    last = image_size - 1
    return (-box.x0, last - box.x1), (-box.y0, last - box.y1)


def check_shift(box: Box, dx: float, dy: float, image_size: int) -> None:
    (x_lo, x_hi), (y_lo, y_hi) = shift_range(box, image_size)
    if not (x_lo <= dx <= x_hi and y_lo <= dy <= y_hi):
        raise EditRefused(
            f"shift ({dx:g}, {dy:g}) moves the object (columns {box.x0}..{box.x1}, rows {box.y0}..{box.y1}) outside "
            f"the {image_size}x{image_size} frame; valid dx in {_range_text(x_lo, x_hi)}, dy in {_range_text(y_lo, y_hi)}"
        )


def zoom_centre_range(box: Box, scale: float, image_size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Valid ranges of the zoom centre (cx, cy), in continuous pixel coordinates, keeping the scaled box inside.

    The box spans [x0, x1 + 1) continuously; after zooming by s about c it spans
    [c + s (x0 - c), c + s (x1 + 1 - c)), which must lie in [0, S]. For s > 1 this gives
    c in [(s (x1 + 1) - S) / (s - 1), s x0 / (s - 1)]; for s < 1 the object shrinks and every
    centre inside the frame is valid.
    """
    s, size = float(scale), float(image_size)
    if s <= 1:
        return (0.0, size), (0.0, size)

    def axis(lo_px: int, hi_px: int) -> tuple[float, float]:
        return (s * (hi_px + 1) - size) / (s - 1), s * lo_px / (s - 1)

    return axis(box.x0, box.x1), axis(box.y0, box.y1)


def check_zoom(box: Box, scale: float, cx: float, cy: float, image_size: int) -> None:
    (x_lo, x_hi), (y_lo, y_hi) = zoom_centre_range(box, scale, image_size)
    eps = 1e-9
    if not (x_lo - eps <= cx <= x_hi + eps and y_lo - eps <= cy <= y_hi + eps):
        largest = min(image_size / box.width, image_size / box.height)
        raise EditRefused(
            f"zoom x{scale:g} about ({cx:.1f}, {cy:.1f}) moves the object (columns {box.x0}..{box.x1}, rows "
            f"{box.y0}..{box.y1}) outside the {image_size}x{image_size} frame; valid centres: x in "
            f"{_range_text(round(x_lo, 1), round(x_hi, 1))}, y in {_range_text(round(y_lo, 1), round(y_hi, 1))} "
            f"(the largest zoom that fits this object at all is x{largest:.2f})"
        )


def check_duplicate(box: Box, dx: float, dy: float, image_size: int) -> None:
    """The copy must lie inside the frame and not overlap the original."""
    (x_lo, x_hi), (y_lo, y_hi) = shift_range(box, image_size)  # the copy is the object shifted by (dx, dy)
    if not (x_lo <= dx <= x_hi and y_lo <= dy <= y_hi):
        raise EditRefused(
            f"duplicate offset ({dx:g}, {dy:g}) puts the copy of the object (columns {box.x0}..{box.x1}, rows "
            f"{box.y0}..{box.y1}) outside the {image_size}x{image_size} frame; valid dx in "
            f"{_range_text(x_lo, x_hi)}, dy in {_range_text(y_lo, y_hi)}"
        )
    if abs(dx) < box.width and abs(dy) < box.height:
        raise EditRefused(
            f"duplicate offset ({dx:g}, {dy:g}) makes the copy overlap the object ({box.width}x{box.height} px); "
            f"use |dx| >= {box.width} or |dy| >= {box.height}, within dx in "
            f"{_range_text(*shift_range(box, image_size)[0])}, dy in {_range_text(*shift_range(box, image_size)[1])}"
        )
