"""`scenes`: a seeded synthetic image-caption dataset rendered with PIL.

Each scene shows 1-3 objects of one shape, colour and size on a plain background; a single object sits
in one cell of a 3x3 grid. The caption states every attribute (count, size, colour, shape, position,
background), so a language model reading the caption and a vision model seeing the image receive the
same content: paired data for cross-modal alignment. The attributes are also stored as columns (targets
for the in-pipeline vision zoo).

Captions vary their wording: several sentence templates and synonyms for every attribute value
("red" / "crimson" / "scarlet", "small" / "tiny" / "little", ...). Without that, two captions of the same
scene would share their words, and a bag of random word embeddings (a random-init LM) would find the
same neighbours as a trained model; with it, matching meaning needs a model that knows the synonyms.

Sample i is drawn from its own generator seeded by (seed, i): the first n samples do not depend on n,
so sample_ids stay stable when a dataset grows.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from convergence.datasets import register
from convergence.datasets.images import ImageSpec

COLORS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "gray": (128, 128, 128), "beige": (225, 205, 160)}
# Object colours that would vanish on a background.
LOW_CONTRAST = {"white": {"white", "yellow"}, "beige": {"white", "yellow"}, "black": {"black"}, "gray": set()}
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
PLURALS = {"cross": "crosses"}
SIZES = {"small": 0.08, "large": 0.17}  # radius as a fraction of the image side
ROWS = ["top", "middle", "bottom"]
COLS = ["left", "center", "right"]
SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges


def position_name(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


POSITIONS = [position_name(r, c) for r in range(3) for c in range(3)]


# Surface forms of every attribute value; captions draw one at random.
SHAPE_WORDS = {
    "circle": [("circle", "circles"), ("disc", "discs"), ("round dot", "round dots")],
    "square": [("square", "squares"), ("block", "blocks"), ("box", "boxes")],
    "triangle": [("triangle", "triangles"), ("wedge", "wedges")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs")],
}
COLOR_WORDS = {
    "red": ["red", "crimson", "scarlet"], "green": ["green", "emerald"], "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"], "purple": ["purple", "violet"], "orange": ["orange", "tangerine"],
    "white": ["white", "ivory"], "black": ["black", "jet-black", "ebony"],
}
SIZE_WORDS = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
BACKGROUND_WORDS = {"white": ["white", "snowy"], "black": ["black", "dark"], "gray": ["gray", "grey", "slate"],
                    "beige": ["beige", "sandy", "tan"]}
COUNT_WORDS = {1: ["one", "a single"], 2: ["two", "a pair of"], 3: ["three", "a trio of"]}


def position_phrases(pos: str) -> list[str]:
    if pos == "center":
        return ["in the center", "in the middle"]
    if pos in ("left", "right"):
        return [f"on the {pos}", f"on the {pos} side", f"at the {pos} edge"]
    if pos in ("top", "bottom"):
        return [f"at the {pos}", f"near the {pos} edge"]
    vertical, horizontal = pos.split()
    upper_lower = {"top": "upper", "bottom": "lower"}[vertical]
    return [f"in the {pos} corner", f"in the {upper_lower} {horizontal}", f"at the {pos}"]


def _position_phrase(pos: str) -> str:
    return position_phrases(pos)[0]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.93, cy + r * 0.7), (cx - r * 0.93, cy + r * 0.7)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "cross":
        a, b = r, r * 0.35
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def _centres(rng: np.random.Generator, count: int, r: float, side: float, cell: tuple[int, int] | None):
    """Object centres: jittered inside a grid cell for one object, non-overlapping anywhere for more."""
    if cell is not None:
        third = side / 3
        lo = np.array([cell[1] * third, cell[0] * third]) + min(r, third / 2)
        hi = lo + max(third - 2 * min(r, third / 2), 0)
        return [tuple(rng.uniform(lo, hi))]
    for _ in range(1000):
        pts = rng.uniform(r, side - r, size=(count, 2))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(count) * 1e9
        if d.min() > 2.2 * r:
            return [tuple(p) for p in pts]
    raise RuntimeError("could not place objects without overlap; raise image_size")


def _caption(rng: np.random.Generator, a: dict) -> tuple[str, int]:
    def pick(options):
        return options[int(rng.integers(len(options)))]

    n = a["count"]
    singular, plural = pick(SHAPE_WORDS[a["shape"]])
    size, color, bg = pick(SIZE_WORDS[a["size"]]), pick(COLOR_WORDS[a["color"]]), pick(BACKGROUND_WORDS[a["background"]])
    count = "a" if n == 1 else pick(COUNT_WORDS[n])
    thing = f"{size} {color} {singular if n == 1 else plural}"
    where = "" if a["position"] == "scattered" else " " + pick(position_phrases(a["position"]))
    templates = [
        f"{count} {thing}{where} on a {bg} background.",
        f"A picture of {count} {thing}{where}, on {bg}.",
        f"There {'is' if n == 1 else 'are'} {count} {thing}{where}; the background is {bg}.",
        f"{bg} background with {count} {thing}{where}.",
        f"An image showing {count} {thing}{where} against a {bg} backdrop.",
        f"On a {bg} canvas: {count} {thing}{where}.",
        f"This scene has {count} {thing}{where}, set on {bg}.",
    ]
    k = int(rng.integers(len(templates)))
    text = templates[k]
    return text[0].upper() + text[1:], k


def render_scene(seed: int, index: int, image_size: int = 64) -> dict:
    """One scene, deterministic in (seed, index): {sample_id, text, image, attributes...}."""
    rng = np.random.default_rng([seed, index])
    background = str(rng.choice(list(BACKGROUNDS)))
    color = str(rng.choice([c for c in COLORS if c not in LOW_CONTRAST[background]]))
    shape = str(rng.choice(SHAPES))
    size = str(rng.choice(list(SIZES)))
    count = int(rng.integers(1, 4))
    cell = (int(rng.integers(3)), int(rng.integers(3))) if count == 1 else None
    attrs = dict(
        shape=shape, color=color, size=size, count=count, background=background,
        position=position_name(*cell) if cell else "scattered",
    )
    side = image_size * SUPERSAMPLE
    r = SIZES[size] * side
    img = Image.new("RGB", (side, side), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    for cx, cy in _centres(rng, count, r, side, cell):
        _draw(draw, shape, cx, cy, r, COLORS[color])
    img = img.resize((image_size, image_size), Image.LANCZOS)
    text, template = _caption(rng, attrs)
    return dict(sample_id=f"scenes-{seed}-{index:06d}", text=text, image=img, template=template, **attrs)


@register("scenes")
def sample_scenes(spec: dict):
    """Scenes are drawn at `image_size` on their own backgrounds (an attribute), so of the image contract
    (`convergence.datasets.images`) only the size applies; the config rejects the other keys."""
    size = ImageSpec(dict(spec, sampler="scenes")).size
    for i in range(int(spec.get("n", 1024))):
        yield dict(render_scene(int(spec.get("seed", 0)), i, size), orig_width=size, orig_height=size)
