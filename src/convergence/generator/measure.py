"""Objects in a `scenes`-like image, measured from pixels: mask, count, area, centroid, bounding box.

Scenes have a plain background and solid objects, so the objects are the pixels that differ from the
background colour. The background colour is the per-channel median of a `border`-pixel frame (objects
rarely cover most of the border). A pixel is foreground when its RGB distance from the background (in
[0, 1] units, at most sqrt(3)) exceeds `threshold`; `scenes` never puts an object on a background of
low contrast with it (`LOW_CONTRAST`), and its closest colour pair (purple on gray) is 0.34 apart.
Objects are the 8-connected components of the mask (`scipy.ndimage.label`) with at least `min_area`
pixels, which drops specks of generator noise. The same measurement runs on real and generated
images; `real_count_accuracy` checks it against the count that real scenes state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .edits import Box

DEFAULT_THRESHOLD = 0.2
DEFAULT_MIN_AREA = 6
DEFAULT_BORDER = 2


@dataclass
class Objects:
    """What `measure_objects` finds. `centroid` (x, y) is in continuous pixel coordinates (pixel i spans
    [i, i + 1), so its centre is i + 0.5); `box` covers every object; `area` counts object pixels."""

    count: int
    area: int
    centroid: tuple[float, float] | None
    box: Box | None
    background: tuple[float, float, float]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["box"] = None if self.box is None else [self.box.x0, self.box.y0, self.box.x1, self.box.y1]
        return out


def background_colour(image: np.ndarray, border: int = DEFAULT_BORDER) -> np.ndarray:
    """Per-channel median of the `border`-pixel frame of `image [H, W, 3]` uint8, in [0, 1]."""
    img = np.asarray(image, np.float64) / 255.0
    frame = np.concatenate([img[:border].reshape(-1, 3), img[-border:].reshape(-1, 3),
                            img[:, :border].reshape(-1, 3), img[:, -border:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def object_mask(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA,
                border: int = DEFAULT_BORDER) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels [H, W] int, 0 = background, 1..n objects; background colour; n objects)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
    bg = background_colour(image, border)
    distance = np.linalg.norm(image.astype(np.float64) / 255.0 - bg, axis=2)
    labels, n = ndimage.label(distance > threshold, structure=np.ones((3, 3), bool))
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = np.flatnonzero(sizes >= min_area)
        keep = keep[keep > 0]
        relabel = np.zeros(n + 1, np.int64)
        relabel[keep] = np.arange(1, len(keep) + 1)
        labels, n = relabel[labels], len(keep)
    return labels, bg, int(n)


def measure_objects(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA,
                    border: int = DEFAULT_BORDER) -> Objects:
    labels, bg, n = object_mask(image, threshold, min_area, border)
    mask = labels > 0
    bg_tuple = tuple(float(v) for v in bg)
    if not mask.any():
        return Objects(count=0, area=0, centroid=None, box=None, background=bg_tuple)
    ys, xs = np.nonzero(mask)
    return Objects(count=n, area=int(mask.sum()), centroid=(float(xs.mean() + 0.5), float(ys.mean() + 0.5)),
                   box=Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), background=bg_tuple)


def real_count_accuracy(images: np.ndarray, counts, **kw) -> float:
    """Fraction of real images whose measured object count equals the count they state."""
    found = [measure_objects(img, **kw).count for img in images]
    return float(np.mean(np.asarray(found) == np.asarray(counts, dtype=np.int64)))
