"""The image contract every image sampler keeps (`hf`, `image_captions`, `scenes`).

A dataset's images are squares of `image_size` px, RGB. A source image is decoded (EXIF orientation
applied), composited on `background` where it has alpha, then fitted by `resize`:

- `pad` (default): the longer side scaled to `image_size`, centred on a square of `background`
  (letterboxing: nothing of the image is lost, as the Tux Paint photos are prepared);
- `crop`: the shorter side scaled to `image_size`, the centre square kept (what most vision models'
  own preprocessing does).

Every record carries the source's size (`orig_width`, `orig_height`). An image that cannot be decoded,
is truncated, or has more than `max_image_pixels` pixels (a decompression bomb: a few KB of PNG can
declare 400 Mpx) is handled per `on_corrupt`: `fail` raises a DatasetError naming the dataset, the row
and the file; `skip` leaves it out, and the sampler's metadata lists it (`corrupt_skipped`) and counts it
(`n_corrupt_skipped`), so a dataset can end up with fewer than `n` samples, never silently.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from convergence.datasets import DatasetError

RESIZE_MODES = ("pad", "crop")
DEFAULT_RESIZE = "pad"
DEFAULT_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 Mpx photo decodes to ~200 MB of RGBA; bombs declare far more
# image_size when a dataset's spec leaves it out: the synthetic sets are drawn small for the vision
# zoo; an hf dataset serves pretrained models, most of which run at 224 px.
DEFAULT_IMAGE_SIZE = {"scenes": 64, "image_captions": 64, "hf": 224}


class ImageFault(Exception):
    """Why one source image is unusable (wrapped per `on_corrupt` by `CorruptImages`)."""


def decode(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a path, bytes or PIL image fully, as RGBA with EXIF orientation applied.

    Raises ImageFault for an unreadable, truncated or oversized image; the size is checked from the
    header, before any pixel is decoded."""
    try:
        if isinstance(source, Image.Image):
            im = source
        else:
            with warnings.catch_warnings():  # PIL's own bomb warning: our limit below decides
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        w, h = im.size
        if w * h > max_pixels:
            raise ImageFault(f"{w}x{h} = {w * h / 1e6:.0f} Mpx exceeds max_image_pixels = {max_pixels:,}")
        im.load()
        return ImageOps.exif_transpose(im).convert("RGBA")
    except Image.DecompressionBombError as e:  # beyond PIL's hard limit (2x its MAX_IMAGE_PIXELS)
        raise ImageFault(f"exceeds max_image_pixels = {max_pixels:,} ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated, broken chunks
        raise ImageFault(f"cannot be decoded ({type(e).__name__}: {e})") from e


def fit(rgba: Image.Image, size: int, background=DEFAULT_BACKGROUND, resize: str = DEFAULT_RESIZE) -> Image.Image:
    """Composite on the background at native size, then fit into a `size` x `size` square (module doc)."""
    if resize not in RESIZE_MODES:
        raise DatasetError(f"resize must be one of {RESIZE_MODES}, got '{resize}'")
    background = tuple(int(c) for c in background)
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba.convert("RGBA")).convert("RGB")
    w, h = flat.size
    scale = size / (max(w, h) if resize == "pad" else min(w, h))
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != flat.size:
        flat = flat.resize(new, Image.LANCZOS)
    if resize == "crop":
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return flat.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(flat, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


class ImageSpec:
    """The contract's keys of one dataset spec, with their defaults."""

    def __init__(self, spec: dict):
        self.size = int(spec.get("image_size") or DEFAULT_IMAGE_SIZE.get(spec.get("sampler"), 64))
        self.background = tuple(int(c) for c in spec.get("background") or DEFAULT_BACKGROUND)
        self.resize = spec.get("resize") or DEFAULT_RESIZE
        self.max_pixels = int(spec.get("max_image_pixels") or DEFAULT_MAX_PIXELS)
        self.on_corrupt = spec.get("on_corrupt") or "fail"
        if self.resize not in RESIZE_MODES:
            raise DatasetError(f"config key resize: '{self.resize}' is not one of {', '.join(RESIZE_MODES)}")
        if self.on_corrupt not in ("fail", "skip"):
            raise DatasetError(f"config key on_corrupt: '{self.on_corrupt}' is not fail or skip")

    def meta(self) -> dict:
        return {"image_size": self.size, "background": list(self.background), "resize": self.resize,
                "max_image_pixels": self.max_pixels, "on_corrupt": self.on_corrupt}

    def prepare(self, source) -> tuple[Image.Image, tuple[int, int]]:
        """(the square image, the source's (width, height)); raises ImageFault."""
        rgba = decode(source, self.max_pixels)
        return fit(rgba, self.size, self.background, self.resize), rgba.size


class CorruptImages:
    """Applies `on_corrupt` to faulty images and keeps the record for the dataset's metadata."""

    def __init__(self, dataset: str, on_corrupt: str, fix: str = ""):
        self.dataset, self.on_corrupt, self.fix = dataset, on_corrupt, fix
        self.skipped: list[str] = []

    def handle(self, sample_id: str, where: str | Path, fault: ImageFault) -> None:
        """Raise (on_corrupt: fail) or record and warn (skip)."""
        if self.on_corrupt != "skip":
            raise DatasetError(
                f"dataset '{self.dataset}': image of '{sample_id}' ({where}) {fault}. {self.fix}"
                "Replace or remove the file, or set on_corrupt: skip to leave such images out"
            ) from fault
        print(f"warning: dataset '{self.dataset}': skipping '{sample_id}' ({where}): {fault}")
        self.skipped.append(str(where))

    def meta(self) -> dict:
        return {"corrupt_skipped": list(self.skipped), "n_corrupt_skipped": len(self.skipped)}
