"""`hf`: any Hugging Face dataset by id (or local folder/file) with revision, split and column names.

PRH's reference set is `path: minhuh/prh, revision: wit_1024, text_column: text, caption_index: 0,
image_column: image` (the first caption of each WIT image). Needs the hub, or a local copy.
"""

from __future__ import annotations

import io

import numpy as np

from convergence.datasets import DatasetError, register


def _to_image(value):
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"]).convert("RGB")
    if isinstance(value, str):
        return Image.open(value).convert("RGB")
    raise DatasetError(f"cannot read an image from a value of type {type(value).__name__}")


def _text(row: dict, column: str, caption_index: int | None) -> str:
    value = row[column]
    if caption_index is not None:
        if not isinstance(value, (list, tuple)) or len(value) <= caption_index:
            raise DatasetError(
                f"caption_index {caption_index}: column '{column}' holds {type(value).__name__} "
                f"of length {len(value) if hasattr(value, '__len__') else '?'}"
            )
        value = value[caption_index]
    return str(value)


@register("hf")
def sample_hf(spec: dict):
    import datasets

    path = spec["path"]
    try:
        ds = datasets.load_dataset(path, spec.get("name"), revision=spec.get("revision"), split=spec.get("split", "train"))
    except Exception as e:  # the hub, a missing revision or split: one message with the keys to check
        raise DatasetError(
            f"cannot load Hugging Face dataset '{path}' (name={spec.get('name')}, revision={spec.get('revision')}, "
            f"split={spec.get('split', 'train')}): {type(e).__name__}: {e}"
        ) from e
    for key in ("text_column", "image_column"):
        col = spec.get(key)
        if col and col not in ds.column_names:
            raise DatasetError(f"dataset '{path}' has no column '{col}' (config key {key}); columns: {ds.column_names}")
    n = int(spec.get("n", 1024))
    if len(ds) == 0:
        raise DatasetError(f"Hugging Face dataset '{path}' split '{spec.get('split', 'train')}' is empty")
    if n > len(ds):
        raise DatasetError(f"config key n = {n} but dataset '{path}' has only {len(ds)} rows: lower n")
    if spec.get("shuffle"):
        indices = np.sort(np.random.default_rng(spec.get("seed", 0)).permutation(len(ds))[:n])
    else:
        indices = np.arange(n)  # PRH: the first n rows
    text_col, image_col = spec.get("text_column"), spec.get("image_column")
    for i in indices.tolist():
        row = ds[i]
        yield dict(
            sample_id=f"row-{i:07d}",  # the row index in the source split: stable across n and seeds
            text=_text(row, text_col, spec.get("caption_index")) if text_col else None,
            image=_to_image(row[image_col]) if image_col else None,
        )
