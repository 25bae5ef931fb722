"""Input baselines: features computed from the data alone, written as stores and compared like any model.

They say how much alignment the input already has: a vision model that aligns with captions no better
than downsampled pixels do, or a language model no better than the caption's words, adds nothing.

- `baseline:pixels` (vision): the image averaged down to s x s pixels (PIL box filter = area mean),
  RGB scaled to [-1, 1] so that cosine similarity is not dominated by overall brightness, one layer per
  scale (`scales`, default 2, 4, 8, 16 -> 12, 48, 192, 768 numbers). `random_features: D` adds, per scale,
  a fixed random one-layer feature map relu(W x + b) (W Gaussian with variance 1/dim, seeded): a
  random-projection pyramid.
- `baseline:bag_of_words` (language): counts of the dataset's words (sklearn's CountVectorizer:
  lower-cased, tokens of two or more word characters, the `max_features` most frequent) as layer 0,
  and their TF-IDF (smooth idf, l2) as layer 1. Why not averaged word embeddings: embeddings are
  learned by some model (an LM's input table is its hidden state 0, which the LM stores already hold);
  counts and TF-IDF need no model at all, so they measure exactly what the shared words explain.

Layers of different widths (the pixel scales) are zero-padded to the widest; the store's `width`
coordinate records each layer's true width (see `convergence.vision.pooling`). Output is a pure
function of the data and the parameters: no randomness but the seeded projection.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

KINDS = {"pixels": "vision", "bag_of_words": "language"}
DEFAULTS = {
    "pixels": {"scales": [2, 4, 8, 16], "random_features": 0, "seed": 0},
    "bag_of_words": {"max_features": 4096},
}


class BaselineError(ValueError):
    pass


@dataclass
class BaselineFeatures:
    values: np.ndarray  # [N, L, D] float32, zero-padded to the widest layer
    widths: list[int]
    layer_names: list[str]
    params: dict
    info: dict = field(default_factory=dict)

    @property
    def params_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()


def kind_of(source: str) -> str:
    scheme, _, kind = source.partition(":")
    if scheme != "baseline" or kind not in KINDS:
        raise BaselineError(f"unknown baseline '{source}'. Baselines: {', '.join(f'baseline:{k}' for k in KINDS)}")
    return kind


def resolve_params(source: str, options: dict | None) -> dict:
    """The baseline's parameters: its defaults overridden by the config entry's `baseline:` mapping."""
    kind = kind_of(source)
    options = dict(options or {})
    unknown = set(options) - set(DEFAULTS[kind])
    if unknown:
        raise BaselineError(f"{source}: unknown options {sorted(unknown)} (options: {DEFAULTS[kind]})")
    params = {**DEFAULTS[kind], **options}
    if kind == "pixels":
        scales = params["scales"]
        if not scales or any(int(s) < 1 for s in scales) or len(set(scales)) != len(scales):
            raise BaselineError(f"{source}: scales must be distinct positive sizes in pixels, got {scales}")
        if int(params["random_features"]) < 0:
            raise BaselineError(f"{source}: random_features must be >= 0")
    elif int(params["max_features"]) < 1:
        raise BaselineError(f"{source}: max_features must be >= 1")
    return {"kind": kind, **params}


def _pad(layers: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    widths = [a.shape[1] for a in layers]
    out = np.zeros((layers[0].shape[0], len(layers), max(widths)), np.float32)
    for k, a in enumerate(layers):
        out[:, k, : a.shape[1]] = a
    return out, widths


def _area_mean(image, side: int) -> np.ndarray:
    """[side, side, 3] float32 area averages of an RGB image (PIL's box filter on float channels, so no
    rounding to 8 bits)."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(np.asarray(c, dtype=np.float32), mode="F").resize((side, side), Image.BOX))
                for c in image.split()]
    return np.stack(channels, axis=-1).astype(np.float32)


def pixel_features(image_paths: list[str], params: dict) -> BaselineFeatures:
    from PIL import Image

    scales = [int(s) for s in params["scales"]]
    per_scale: list[list[np.ndarray]] = [[] for _ in scales]
    sizes = set()
    for path in image_paths:
        with Image.open(path) as im:
            image = im.convert("RGB")
        sizes.add(image.size)
        for k, s in enumerate(scales):
            if s > min(image.size):
                raise BaselineError(f"baseline:pixels: scale {s} px exceeds the image ({image.size[0]}x{image.size[1]}, "
                                    f"{path}); choose scales up to {min(image.size)}")
            per_scale[k].append(_area_mean(image, s).reshape(-1) / 127.5 - 1.0)
    layers = [np.stack(rows) for rows in per_scale]
    names = [f"{s}px" for s in scales]
    if int(params["random_features"]):
        rng = np.random.default_rng(int(params["seed"]))
        dim = int(params["random_features"])
        for s, x in zip(list(scales), list(layers)):
            w = rng.standard_normal((x.shape[1], dim)) / np.sqrt(x.shape[1])
            b = rng.standard_normal(dim) * 0.1
            layers.append(np.maximum(x.astype(np.float64) @ w + b, 0).astype(np.float32))
            names.append(f"{s}px-random{dim}")
    values, widths = _pad(layers)
    return BaselineFeatures(values, widths, names, params, {"image_sizes": sorted(map(list, sizes))})


def bag_of_words_features(texts: list[str], params: dict) -> BaselineFeatures:
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    vectorizer = CountVectorizer(lowercase=True, max_features=int(params["max_features"]), dtype=np.float64)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError as e:  # sklearn: "empty vocabulary"
        raise BaselineError(f"baseline:bag_of_words: the texts hold no word of two or more letters ({e})") from e
    tfidf = TfidfTransformer(norm="l2", smooth_idf=True).fit_transform(counts)
    values = np.stack([counts.toarray(), tfidf.toarray()], axis=1).astype(np.float32)
    n_empty = int((counts.sum(1) == 0).sum())
    return BaselineFeatures(values, [values.shape[2]] * 2, ["counts", "tfidf"], params,
                            {"vocabulary_size": int(values.shape[2]), "n_texts_without_words": n_empty})


def compute(source: str, options: dict | None, texts: list[str] | None = None,
            image_paths: list[str] | None = None) -> BaselineFeatures:
    params = resolve_params(source, options)
    if params["kind"] == "pixels":
        if image_paths is None:
            raise BaselineError("baseline:pixels needs images")
        return pixel_features(image_paths, params)
    if texts is None:
        raise BaselineError("baseline:bag_of_words needs texts")
    return bag_of_words_features(texts, params)
