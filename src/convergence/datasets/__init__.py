"""Datasets: seeded samplers registered by name, written as one parquet table per dataset.

`results/datasets/{dataset}/samples.parquet` has one row per sample: `sample_id` (stable string),
`text`, optional `image` (a PNG path relative to the parquet's folder), plus sampler-specific
attribute columns. The file's metadata records the sampler, its spec, the seed and a content hash.
Samplers know no model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from convergence.utils import atomic_path, read_parquet, write_parquet

SAMPLERS: dict[str, Callable[[dict], Iterable[dict]]] = {}


class DatasetError(ValueError):
    pass


def register(name: str):
    """Register a sampler: spec dict -> iterable of records {sample_id, text, image (PIL or None), ...}."""

    def deco(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler '{name}' registered twice")
        SAMPLERS[name] = fn
        return fn

    return deco


def utf8_lines(path: str | Path) -> tuple[list[tuple[int, str]], list[int]]:
    """The lines of a text file, decoded strictly, as (1-based line number, line), and the numbers of the
    lines that are not valid UTF-8 (never replaced by U+FFFD: a mis-encoded file is the user's to fix)."""
    lines, bad = [], []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError:
            bad.append(number)
    return lines, bad


def not_utf8(path: str | Path, bad: list[int]) -> str:
    more = f" (and {len(bad) - 1} more lines)" if len(bad) > 1 else ""
    return f"{path}: line {bad[0]}{more} is not valid UTF-8"


def available() -> list[str]:
    return sorted(SAMPLERS)


def _hash_record(digest, rec: dict) -> None:
    digest.update(rec["sample_id"].encode())
    digest.update(b"\0" + (rec.get("text") or "").encode() + b"\0")
    img = rec.get("image")
    if img is not None:  # hash pixels, not the PNG encoding, so the hash does not depend on zlib
        digest.update(f"{img.mode}{img.size}".encode())
        digest.update(img.tobytes())


def write_samples(records: Iterable[dict], out_dir: str | Path, meta: dict) -> Path:
    """Write records as samples.parquet (+ images/), atomically. Returns the parquet path.

    A sampler's iterable may carry a `meta` dict (counts, provenance) complete after iteration: it is
    merged into the file's metadata."""
    out_dir = Path(out_dir)
    parquet = out_dir / "samples.parquet"
    images = out_dir / "images"
    digest = hashlib.sha256()
    rows = []
    with atomic_path(images) as img_tmp:
        img_tmp.mkdir(parents=True)
        for rec in iter(records):
            rec = dict(rec)
            _hash_record(digest, rec)
            img = rec.pop("image", None)
            if img is not None:
                img.save(img_tmp / f"{rec['sample_id']}.png")
                rec["image"] = f"images/{rec['sample_id']}.png"
            rows.append(rec)
    if not rows:
        raise DatasetError(f"dataset '{meta.get('dataset')}' produced no samples (check its n and source)")
    df = pd.DataFrame(rows)
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DatasetError(f"dataset '{meta.get('dataset')}': duplicate sample_id '{dup}'")
    meta = dict(meta, **getattr(records, "meta", {}), n=len(df), content_sha256=digest.hexdigest())
    write_parquet(df, parquet, meta)
    return parquet


def sample_dataset(name: str, spec: dict, out_dir: str | Path, resources_dir: str | Path = "resources",
                   needs: dict | None = None) -> Path:
    """Run the sampler `spec['sampler']` and write the dataset to `out_dir` (fetched sources under
    `resources_dir`). `needs` maps a modality to the models planned on this dataset
    (`convergence.config.dataset_needs`): a sampler that finds no column for one of them fails here,
    before any model has run."""
    import inspect

    from convergence.datasets import hf, image_captions, scenes, text  # noqa: F401  (register the samplers)

    sampler = spec["sampler"]
    if sampler not in SAMPLERS:
        raise DatasetError(
            f"dataset '{name}': unknown sampler '{sampler}'. Samplers: {', '.join(available())}"
        )
    meta = {"dataset": name, "sampler": sampler, "seed": spec.get("seed", 0), "spec": spec}
    fn = SAMPLERS[sampler]
    offered = {"resources_dir": resources_dir, "dataset": name, "needs": needs or {}}
    accepted = inspect.signature(fn).parameters
    return write_samples(fn(spec, **{k: v for k, v in offered.items() if k in accepted}), out_dir, meta)


def read_samples(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a samples.parquet; returns (table, metadata). Image paths become absolute."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist: sample the dataset first (snakemake {path})")
    df, meta = read_parquet(path)
    meta = meta or {}
    if len(df) == 0:
        raise DatasetError(f"{path} holds no samples: the dataset is empty")
    if "image" in df:
        df["image"] = [str(path.parent / p) if isinstance(p, str) else None for p in df["image"]]
    return df, meta
