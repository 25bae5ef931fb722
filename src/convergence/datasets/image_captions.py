"""`image_captions`: a folder of images, each with a caption file of the same name (`frog.png` + `frog.txt`).

The folder is `folder:` (any local folder, searched recursively) or a fetched `source:` (see
`convergence.datasets.sources`; `photos` in the default config is `source: tuxpaint-stamps`).

Caption files follow Tux Paint's format, of which a one-line file is the simplest case: the first line
without a locale tag is the English caption; `<locale>.utf8=<caption>` lines give translations
(`fr.utf8=Une grenouille.`, `pt_BR.utf8=...`, `ca@valencia.utf8=...`). `caption_lang` picks one
(`en` = the untagged line); images without a caption in that language are left out and counted; a
language that no caption file has is an error listing those present.

Images: PNG/JPEG/WebP, or SVG when no raster image of that name exists (`svg: render` with resvg,
without system fonts so the pixels do not depend on the machine; `svg: skip` leaves them out; both
counted). Every image then follows the image contract (`convergence.datasets.images`): composited on
`background` (default white, Tux Paint's canvas), fitted to an `image_size` square (`resize: pad`, the
default, letterboxes on `background`), its source size recorded; an image that cannot be decoded, is
truncated or oversized names its file and fails the job, or with `on_corrupt: skip` is left out and listed.

`n` smaller than the images available takes a seeded subset that grows by adding (the first n of a
seeded hash order); rows are in `sample_id` order (the relative path, `/` -> `.`).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from convergence.datasets import DatasetError, not_utf8, register, utf8_lines
from convergence.datasets.images import CorruptImages, ImageFault, ImageSpec

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TAGGED = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@[A-Za-z]+)?)\.utf-?8=(.*)$")
DEFAULT_LANG = "en"


class CaptionFault(DatasetError):
    """A caption file that is not valid UTF-8 (the message names the file and line)."""


def parse_caption_file(path: str | Path) -> dict[str, str]:
    """Language -> caption of one caption file (`en` is the first untagged non-empty line)."""
    captions: dict[str, str] = {}
    lines, bad = utf8_lines(path)
    if bad:
        raise CaptionFault(not_utf8(path, bad))
    for _, line in lines:
        line = line.strip()
        if not line:
            continue
        m = TAGGED.match(line)
        if m:
            text = m.group(2).strip()
            if text:
                captions.setdefault(m.group(1), text)
        else:
            captions.setdefault(DEFAULT_LANG, line)
    return captions


@dataclass(frozen=True)
class Item:
    sample_id: str
    image: Path
    captions: dict

    @property
    def is_svg(self) -> bool:
        return self.image.suffix.lower() == ".svg"


def _sample_id(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(rel.with_suffix("").parts))


def find_items(root: str | Path, on_corrupt: str = "fail", skipped: list | None = None) -> list[Item]:
    """Every caption file with an image of the same name (raster preferred over SVG), by sample_id. A caption
    file that is not UTF-8 raises a DatasetError, or with on_corrupt: skip is appended to `skipped`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image_captions: {root} is not a folder")
    items, seen = [], {}
    for txt in sorted(root.rglob("*.txt")):
        image = next((txt.with_suffix(s) for s in RASTER_SUFFIXES + (".svg",) if txt.with_suffix(s).exists()), None)
        if image is None:
            continue
        sid = _sample_id(txt.relative_to(root))
        if sid in seen:
            raise DatasetError(f"image_captions: {txt} and {seen[sid]} map to the same sample_id '{sid}'")
        seen[sid] = txt
        try:
            captions = parse_caption_file(txt)
        except CaptionFault as fault:
            if on_corrupt != "skip":
                raise DatasetError(f"image_captions: caption file {fault}. Re-save it as UTF-8, or set "
                                   "on_corrupt: skip to leave such items out") from None
            print(f"warning: image_captions: skipping '{sid}': caption file {fault}")
            if skipped is not None:
                skipped.append(str(txt.relative_to(root)))
            continue
        items.append(Item(sid, image, captions))
    return sorted(items, key=lambda it: it.sample_id)


def _render_svg(path: Path, size: int) -> Image.Image:
    try:
        import resvg_py
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise DatasetError("svg: render needs the resvg-py package (pip install resvg-py), or set svg: skip") from e
    probe = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_path=str(path), skip_system_fonts=True))))
    zoom = size / max(probe.size)
    data = resvg_py.svg_to_bytes(svg_path=str(path), skip_system_fonts=True, zoom=zoom)
    return Image.open(io.BytesIO(bytes(data))).convert("RGBA")


def load_image(item: Item, images: ImageSpec) -> tuple[Image.Image, tuple[int, int]]:
    """The item's image on the square canvas and its source size; raises ImageFault."""
    # resvg's errors (ValueError) are the caller's to count; a rendered SVG then goes the rasters' way
    return images.prepare(_render_svg(item.image, images.size) if item.is_svg else item.image)


def _order_key(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


class ImageCaptionsSampler:
    """Iterable of records; `meta` (counts, languages, provenance) is complete once iterated."""

    def __init__(self, spec: dict, root: Path, provenance: dict | None = None, dataset: str = "image_captions"):
        self.spec, self.root, self.dataset = spec, root, dataset
        self.lang = spec.get("caption_lang", DEFAULT_LANG)
        self.images = ImageSpec(dict(spec, sampler="image_captions"))
        self.svg = spec.get("svg", "skip")
        self.meta: dict = {"caption_lang": self.lang, **self.images.meta(), "svg": self.svg,
                           **({"provenance": provenance} if provenance else {})}
        skipped: list[str] = []
        self.items = self._select(find_items(root, self.images.on_corrupt, skipped))
        self.meta.update(captions_not_utf8=skipped, n_captions_not_utf8=len(skipped))

    def _select(self, items: list[Item]) -> list[Item]:
        if not items:
            raise DatasetError(f"image_captions: no image with a caption file of the same name under {self.root}")
        languages = Counter(lang for it in items for lang in it.captions)
        self.meta["caption_languages"] = dict(sorted(languages.items()))
        if self.lang not in languages:
            raise DatasetError(
                f"config key caption_lang: no caption in '{self.lang}' under {self.root}. Languages present "
                f"(captions): {', '.join(f'{k} ({v})' for k, v in sorted(languages.items()))}"
            )
        with_lang = [it for it in items if self.lang in it.captions]
        svgs = [it for it in with_lang if it.is_svg]
        usable = [it for it in with_lang if not it.is_svg] + (svgs if self.svg == "render" else [])
        self.meta.update(n_with_image=len(items), n_missing_caption_lang=len(items) - len(with_lang),
                         n_raster=len(with_lang) - len(svgs), n_svg_only=len(svgs),
                         n_svg_skipped=0 if self.svg == "render" else len(svgs))
        n = int(self.spec.get("n", 1024))
        if n > len(usable):
            raise DatasetError(
                f"config key n = {n} but {self.root} has only {len(usable)} usable images with a "
                f"'{self.lang}' caption ({self.meta['n_raster']} raster, {len(svgs)} SVG-only, svg: {self.svg}): lower n"
            )
        seed = int(self.spec.get("seed", 0))
        chosen = sorted(usable, key=lambda it: _order_key(seed, it.sample_id))[:n]
        return sorted(chosen, key=lambda it: it.sample_id)

    def __iter__(self):
        fix = "Refetch the source (delete its folder under resources/datasets). " if self.meta.get("provenance") else ""
        corrupt = CorruptImages(self.dataset, self.images.on_corrupt, fix)
        svg_failed, rendered, captions = [], 0, Counter()
        for item in self.items:
            where = item.image.relative_to(self.root)
            try:
                image, (width, height) = load_image(item, self.images)
            except ImageFault as fault:
                corrupt.handle(item.sample_id, where, fault)
                continue
            except (ValueError, OSError):  # resvg: a renderer limit, not damage: counted like a skipped SVG
                if not item.is_svg:
                    raise
                svg_failed.append(str(where))
                continue
            rendered += item.is_svg
            captions[item.captions[self.lang]] += 1
            yield dict(sample_id=item.sample_id, text=item.captions[self.lang], image=image,
                       source_path=str(where), svg=item.is_svg, orig_width=width, orig_height=height)
        self.meta.update(n_svg_rendered=rendered, svg_failed=svg_failed, n_svg_failed=len(svg_failed),
                         **corrupt.meta(), n_duplicate_captions=sum(c - 1 for c in captions.values()))


@register("image_captions")
def sample_image_captions(spec: dict, resources_dir: str | Path = "resources", dataset: str = "image_captions"):
    from convergence.datasets import sources

    if spec.get("source"):
        folder = sources.source_folder(spec["source"], resources_dir)
        if not (folder / sources.RECORD).exists():
            sources.fetch_source(spec["source"], folder, resources_dir)
        return ImageCaptionsSampler(spec, sources.collection_root(folder), sources.provenance(folder), dataset)
    if not spec.get("folder"):
        raise DatasetError("image_captions needs `folder:` (a local folder) or `source:` (a fetched collection)")
    return ImageCaptionsSampler(spec, Path(spec["folder"]).expanduser(), dataset=dataset)
