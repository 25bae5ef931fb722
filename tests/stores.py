"""Synthetic activation stores with the layout of convergence.extract, for stage tests without models."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr


def write_store(path, acts: np.ndarray, model: str, sample_ids=None, modality="language", init="pretrained",
                n_params=1000, bpb=None, accuracy=None):
    n, n_layers, _ = acts.shape
    ids = sample_ids if sample_ids is not None else [f"s{i:05d}" for i in range(n)]
    data = {"activations": (("sample", "layer", "neuron"), acts.astype(np.float32))}
    if bpb is not None:
        data["bpb"] = (("sample",), np.full(n, float(bpb)))
        data["loss"] = (("sample",), np.full(n, float(bpb) * 0.7))
    ds = xr.Dataset(data, coords={"sample_id": ("sample", np.array(ids, dtype=object)), "layer": np.arange(n_layers)})
    ds.attrs = {"model": model, "source": f"local:{model}", "init": init, "pooling": "mean", "n_params": n_params,
                "modality": modality, "params_sha256": "0" * 64, "n_samples": n}
    if accuracy is not None:
        ds.attrs["accuracy"] = float(accuracy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    return path


def related(n=200, layers=3, d=16, noise=0.3, seed=0):
    """Two 'models' whose layers are noisy linear views of one latent, plus an unrelated third."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    a = np.stack([z @ rng.standard_normal((d, d)) + noise * rng.standard_normal((n, d)) for _ in range(layers)], 1)
    b = np.stack([z @ rng.standard_normal((d, d + 4)) + (noise + l) * rng.standard_normal((n, d + 4))
                  for l in range(layers + 1)], 1)
    c = rng.standard_normal((n, layers, d))
    return a, b, c
