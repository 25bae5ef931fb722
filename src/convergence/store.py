"""Reading activation stores with checks: later stages fail early, naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

REQUIRED_ATTRS = ("model", "source", "init", "pooling", "n_params", "modality", "params_sha256")


class StoreError(ValueError):
    pass


def open_activations(path: str | Path) -> xr.Dataset:
    """Open `results/activations/{dataset}/{model}.zarr` lazily and check it is a complete store."""
    path = Path(path)
    fix = f"delete {path} and rerun snakemake to re-extract it"
    if not path.exists():
        raise StoreError(f"{path} does not exist (run snakemake {path})")
    try:
        ds = xr.open_zarr(path)
    except Exception as e:
        raise StoreError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}); {fix}") from e
    if "activations" not in ds or ds["activations"].dims != ("sample", "layer", "neuron"):
        raise StoreError(f"{path} has no variable activations(sample, layer, neuron); {fix}")
    missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise StoreError(f"{path} lacks attributes {missing}: not written by convergence.extract; {fix}")
    n_expected = ds.attrs.get("n_samples")
    if n_expected is not None and ds.sizes["sample"] != n_expected:
        raise StoreError(f"{path} holds {ds.sizes['sample']} samples, its attributes say {n_expected}: "
                         f"a partial store; {fix}")
    if "sample_id" not in ds.coords:
        raise StoreError(f"{path} has no sample_id coordinate; {fix}")
    return ds


def check_same_samples(a: xr.Dataset, b: xr.Dataset, names=("a", "b")) -> None:
    """Alignment compares rows: both stores must hold the same samples in the same order."""
    ida, idb = a["sample_id"].values, b["sample_id"].values
    if len(ida) != len(idb) or not np.array_equal(ida, idb):
        first = next((i for i, (x, y) in enumerate(zip(ida, idb)) if x != y), min(len(ida), len(idb)))
        raise StoreError(
            f"stores {names[0]} and {names[1]} hold different samples ({len(ida)} vs {len(idb)} rows; "
            f"first difference at row {first}). Extract both models from the same samples.parquet."
        )
