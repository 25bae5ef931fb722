"""`hf`: any Hugging Face dataset by id (or local folder/file) with revision, split and column names.

PRH's reference set is `path: minhuh/prh, revision: wit_1024, text_column: text, caption_index: 0,
image_column: image` (the first caption of each WIT image). A local image folder in the `imagefolder`
layout (images + `metadata.csv` with `file_name` and a caption column) is `path: <folder>`. Loading
needs the hub or a local copy; `datasets` caches what it reads under `$HF_HOME` (default
`~/.cache/huggingface`; set `HF_HOME` to move it).

Columns: `image_column` / `text_column` left out are inferred from the dataset's features: its one
`Image` column; its one string (or list-of-strings) column, or `text` where there are several. `null`
says the dataset has none. Images follow the image contract (`convergence.datasets.images`:
`image_size` square, default 224 px, alpha on `background`, `resize`, `on_corrupt`); they are decoded
here, not by `datasets`, so that a broken one is named by row and file and `on_corrupt` applies.
"""

from __future__ import annotations

import numpy as np

from convergence.datasets import DatasetError, register
from convergence.datasets.images import CorruptImages, ImageFault, ImageSpec


def _text(row: dict, column: str, caption_index: int | None, where: str) -> str:
    value = row[column]
    if caption_index is not None:
        if not isinstance(value, (list, tuple)) or len(value) <= caption_index:
            raise DatasetError(
                f"{where}: caption_index {caption_index}: column '{column}' holds {type(value).__name__} "
                f"of length {len(value) if hasattr(value, '__len__') else '?'}"
            )
        value = value[caption_index]
    elif isinstance(value, (list, tuple)):
        raise DatasetError(f"{where}: column '{column}' holds lists of {len(value)} texts; "
                           "set caption_index to pick one (PRH: 0)")
    if value is None:
        raise DatasetError(f"{where}: column '{column}' is empty (None)")
    return str(value)


def _is_string(feature) -> bool:
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string")
    inner = getattr(feature, "feature", None)  # Sequence / List of strings: captions per image
    return isinstance(feature, (datasets.Sequence, getattr(datasets, "List", datasets.Sequence))) and _is_string(inner)


def infer_columns(features, spec: dict, needs: dict, where: str) -> tuple[str | None, str | None]:
    """(text_column, image_column): the spec's where it names them (null = none), else inferred from the
    features (module doc). A column that the models need and the dataset lacks is an error naming the key."""
    import datasets

    found = {"text_column": [c for c, f in features.items() if _is_string(f)],
             "image_column": [c for c, f in features.items() if isinstance(f, datasets.Image)]}
    modality = {"text_column": "language", "image_column": "vision"}
    chosen = {}
    for key, candidates in found.items():
        if key in spec:
            col = spec[key]
            if col is not None and col not in features:
                raise DatasetError(f"{where}: config key {key}: no column '{col}'; columns: {list(features)}")
        elif len(candidates) == 1:
            col = candidates[0]
        elif key == "text_column" and "text" in candidates:
            col = "text"
        elif len(candidates) > 1 and needs.get(modality[key]):
            raise DatasetError(f"{where}: config key {key}: the dataset has several candidate columns "
                               f"{candidates}; name one (or null for none)")
        else:
            col = None
        users = needs.get(modality[key])
        if col is None and users:
            what = "text" if key == "text_column" else "images"
            raise DatasetError(
                f"{where}: {modality[key]} models {sorted(users)} are planned on this dataset, but it has no "
                f"{what} column ({key}: {spec.get(key, 'inferred: none')}; columns: {list(features)}). Name the "
                f"column in {key}, or leave the dataset out of those models' datasets (models.<name>.datasets)"
            )
        chosen[key] = col
    return chosen["text_column"], chosen["image_column"]


@register("hf")
def sample_hf(spec: dict, dataset: str = "hf", needs: dict | None = None):
    import datasets

    path = spec["path"]
    where = f"dataset '{dataset}' ({path})"
    split = spec.get("split", "train")
    try:
        ds = datasets.load_dataset(path, spec.get("name"), revision=spec.get("revision"), split=split)
    except Exception as e:  # the hub, a missing revision or split: one message with the keys to check
        raise DatasetError(
            f"cannot load Hugging Face dataset '{path}' (name={spec.get('name')}, revision={spec.get('revision')}, "
            f"split={split}): {type(e).__name__}: {e}"
        ) from e
    text_col, image_col = infer_columns(ds.features, spec, needs or {}, where)
    n = int(spec.get("n", 1024))
    if len(ds) == 0:
        raise DatasetError(f"{where}: split '{split}' is empty")
    if n > len(ds):
        raise DatasetError(f"{where}: config key n = {n} but the split '{split}' has only {len(ds)} rows: lower n")
    images = ImageSpec(dict(spec, sampler="hf"))
    if image_col is not None and isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # decode here: errors name the row
    return HFSampler(ds, spec, text_col, image_col, images, where, dataset, n)


class HFSampler:
    """Iterable of records; `meta` (columns, image contract, skipped images) is complete once iterated."""

    def __init__(self, ds, spec, text_col, image_col, images: ImageSpec, where: str, dataset: str, n: int):
        self.ds, self.spec, self.text_col, self.image_col = ds, spec, text_col, image_col
        self.images, self.where, self.dataset = images, where, dataset
        if spec.get("shuffle"):
            self.indices = np.sort(np.random.default_rng(spec.get("seed", 0)).permutation(len(ds))[:n])
        else:
            self.indices = np.arange(n)  # PRH: the first n rows
        self.meta: dict = {"text_column": text_col, "image_column": image_col,
                           **(images.meta() if image_col else {})}

    def __iter__(self):
        corrupt = CorruptImages(self.dataset, self.images.on_corrupt)
        for i in self.indices.tolist():
            row = self.ds[i]
            sid = f"row-{i:07d}"  # the row index in the source split: stable across n and seeds
            rec = dict(sample_id=sid, text=_text(row, self.text_col, self.spec.get("caption_index"),
                                                 f"{self.where} row {i}") if self.text_col else None)
            if self.image_col:
                source, name = _image_source(row[self.image_col])
                if source is None:
                    fault = ImageFault("is missing (None)")
                    corrupt.handle(sid, f"row {i}", fault)
                    continue
                try:
                    image, (w, h) = self.images.prepare(source)
                except ImageFault as fault:
                    corrupt.handle(sid, f"row {i}" + (f", {name}" if name else ""), fault)
                    continue
                rec.update(image=image, orig_width=w, orig_height=h)
            yield rec
        self.meta.update(corrupt.meta())


def _image_source(value):
    """(what `decode` reads, a file name for messages) of one image cell: an undecoded `Image` feature
    {bytes, path}, a path string or a PIL image."""
    from PIL import Image

    if value is None:
        return None, None
    if isinstance(value, Image.Image):
        return value, None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], value.get("path")
        if value.get("path"):
            return value["path"], value["path"]
        return None, None
    if isinstance(value, str):
        return value, value
    raise DatasetError(f"cannot read an image from a value of type {type(value).__name__}")
