"""Reading activation stores with checks: later stages fail early, naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

REQUIRED_ATTRS = ("model", "source", "init", "pooling", "n_params", "modality", "params_sha256")


class StoreError(ValueError):
    pass


def _fix(path) -> str:
    return f"delete {path} and rerun snakemake to re-extract it"


def open_checked(path: str | Path, dims: tuple[str, ...], required_attrs, coords, count_attr: str,
                 writer: str, error=StoreError) -> xr.Dataset:
    """Open a store lazily; fail, naming the file and the fix, unless it is complete: `activations` with
    `dims`, the attributes its writer sets, `coords`, and as many rows as its `count_attr` says."""
    path = Path(path)
    fix = _fix(path)
    if not path.exists():
        raise error(f"{path} does not exist (run snakemake {path})")
    try:
        ds = xr.open_zarr(path)
    except Exception as e:
        raise error(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}); {fix}") from e
    if "activations" not in ds or ds["activations"].dims != dims:
        raise error(f"{path} has no variable activations({', '.join(dims)}); {fix}")
    missing = [a for a in required_attrs if a not in ds.attrs]
    if missing:
        raise error(f"{path} lacks attributes {missing}: not written by {writer}; {fix}")
    for name in coords:
        if name not in ds.coords:
            raise error(f"{path} has no {name} coordinate; {fix}")
    n_expected = ds.attrs.get(count_attr)
    if n_expected is not None and ds.sizes[dims[0]] != int(n_expected):
        raise error(f"{path} holds {ds.sizes[dims[0]]} rows along {dims[0]}, its attributes say {n_expected}: "
                    f"a partial store; {fix}")
    return ds


def read_values(ds: xr.Dataset, path: str | Path, name: str = "activations") -> np.ndarray:
    """`ds[name]` as numpy; a chunk that cannot be read or decoded (a damaged disk or copy) is an error
    naming the store and the fix, not a codec traceback."""
    try:
        return ds[name].values
    except Exception as e:
        raise StoreError(f"{path}: cannot read {name} ({type(e).__name__}: {e}), a corrupt chunk; {_fix(path)}") from e


def open_activations(path: str | Path) -> xr.Dataset:
    """Open `results/activations/{dataset}/{model}.zarr` lazily and check it is a complete store."""
    return open_checked(path, ("sample", "layer", "neuron"), REQUIRED_ATTRS, ("sample_id",), "n_samples",
                        "convergence.extract")


def check_same_samples(a: xr.Dataset, b: xr.Dataset, names=("a", "b")) -> None:
    """Alignment compares rows: both stores must hold the same samples in the same order."""
    ida, idb = a["sample_id"].values, b["sample_id"].values
    if len(ida) != len(idb) or not np.array_equal(ida, idb):
        first = next((i for i, (x, y) in enumerate(zip(ida, idb)) if x != y), min(len(ida), len(idb)))
        raise StoreError(
            f"stores {names[0]} and {names[1]} hold different samples ({len(ida)} vs {len(idb)} rows; "
            f"first difference at row {first}). Extract both models from the same samples.parquet."
        )


def layer_widths(ds: xr.Dataset) -> np.ndarray:
    """Per layer, how many leading neurons are real: a store of layers of different widths (CNN stages,
    the pixel baseline's scales) zero-pads each layer to the widest and records the true widths in the
    coordinate `width`. Stores without it hold every neuron of every layer."""
    if "width" in ds.coords:
        return np.asarray(ds["width"].values, dtype=np.int64)
    return np.full(ds.sizes["layer"], ds.sizes["neuron"], dtype=np.int64)
