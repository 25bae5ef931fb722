"""Per-model activation extraction: a dataset's samples -> pooled hidden states of every chosen layer, in Zarr.

The store (`results/activations/{dataset}/{model}.zarr`, DESIGN §2) holds `activations`
(sample, layer, neuron), coordinates `sample_id` (identical across the models of a dataset) and `layer`
(hidden-state index, 0 = embedding output), and for causal LMs per-sample `loss` (nats/token) and
`bpb` (bits per UTF-8 byte of the text): the performance axis of PRH's scale plots.

Samples are processed in windows of `chunk_size` (one Zarr chunk each); inside a window they are sorted by
length so batches carry little padding, then put back in order. Memory is bounded by one window.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm.auto import tqdm

from convergence.datasets import read_samples
from convergence.models import LoadedModel, load_model, resolve_layers
from convergence.utils import atomic_path, package_versions

STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


class ExtractionError(RuntimeError):
    pass


def pool_hidden_states(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, pooling: str,
                       layers: Sequence[int]) -> torch.Tensor:
    """[B, T, D] per layer + mask [B, T] -> [B, len(layers), D] float32.

    mean: average over valid tokens (PRH); cls: first token; last: last valid token (right padding).
    """
    stacked = torch.stack([hidden_states[i] for i in layers], dim=1).float()  # [B, L, T, D]
    mask = mask.to(stacked.device)
    if pooling == "mean":
        m = mask.float()
        return torch.einsum("bltd,bt->bld", stacked, m) / m.sum(1).clamp_min(1)[:, None, None]
    if pooling == "cls":
        return stacked[:, :, 0]
    if pooling == "last":
        last = mask.long().sum(1) - 1
        return stacked[torch.arange(stacked.shape[0]), :, last]
    raise ValueError(f"unknown pooling '{pooling}' (mean, cls, last)")


def causal_lm_nats(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """Summed next-token negative log-likelihood (nats) and number of predicted tokens, per sample."""
    targets = input_ids[:, 1:]
    valid = mask[:, 1:].bool()
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return (nll * valid).sum(1).double(), valid.sum(1)


def _batch_forward(lm: LoadedModel, texts: list[str], max_length: int, pooling: str, layers: list[int]):
    enc = lm.processor(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    accepted = inspect.signature(lm.model.forward).parameters
    enc = {k: v.to(lm.device) for k, v in enc.items() if k in accepted}
    out = lm.model(**enc, output_hidden_states=True)
    pooled = pool_hidden_states(out.hidden_states, enc["attention_mask"], pooling, layers)
    nats = ntok = None
    if lm.kind == "causal_lm":
        nats, ntok = causal_lm_nats(out.logits, enc["input_ids"], enc["attention_mask"])
    return pooled.cpu().numpy(), nats, ntok


def plan_batches(lengths: np.ndarray, chunk_size: int, batch_size: int):
    """Windows of `chunk_size` samples (one Zarr chunk each), each split into batches of similar length."""
    n = len(lengths)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        order = start + np.argsort(lengths[start:stop], kind="stable")
        yield start, stop, [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def _token_lengths(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    ids = tokenizer(texts, truncation=False, padding=False)["input_ids"]
    return np.array([len(x) for x in ids])


def _write_window(ds: xr.Dataset, path: Path, first: bool, chunk_size: int) -> None:
    with warnings.catch_warnings():  # zarr: "consolidated metadata is not part of the v3 spec" (xarray reads it)
        warnings.simplefilter("ignore")
        if first:
            enc = {"activations": {"chunks": (chunk_size,) + ds["activations"].shape[1:]}}
            ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=True, encoding=enc)
        else:
            ds.drop_vars("layer").to_zarr(path, append_dim="sample", consolidated=True)


def extract_language(lm: LoadedModel, texts: list[str], sample_ids: list[str], out: Path, layers: list[int],
                     pooling: str, batch_size: int, max_length: int, chunk_size: int, store_dtype,
                     attrs: dict, progress: bool = True) -> dict:
    n = len(texts)
    lengths = _token_lengths(lm.processor, texts, max_length)
    n_truncated = int((lengths > max_length).sum())
    if n_truncated:
        print(f"warning: {n_truncated} of {n} texts exceed max_length={max_length} tokens and are truncated",
              file=sys.stderr)
    attrs = dict(attrs, n_truncated=n_truncated)
    bar = tqdm(total=n, desc=f"extract {attrs['model']}", unit="sample", disable=not progress, mininterval=2)
    with torch.inference_mode():
        for start, stop, batches in plan_batches(lengths, chunk_size, batch_size):
            acts = None  # allocated from the first batch: the width is what the model returns
            nats = np.zeros(stop - start)
            ntok = np.zeros(stop - start, np.int64)
            for idx in batches:
                pooled, bn, bt = _batch_forward(lm, [texts[i] for i in idx], max_length, pooling, layers)
                if acts is None:
                    acts = np.empty((stop - start,) + pooled.shape[1:], np.float32)
                acts[idx - start] = pooled
                if bn is not None:
                    nats[idx - start] = bn.cpu().numpy()
                    ntok[idx - start] = bt.cpu().numpy()
                bar.update(len(idx))
            if not np.isfinite(acts).all():
                raise ExtractionError(
                    f"model {attrs['model']} produced NaN/inf activations for samples {start}..{stop - 1} "
                    f"(dtype {attrs['dtype']}; try dtype: float32)"
                )
            data = {"activations": (("sample", "layer", "neuron"), acts.astype(store_dtype))}
            if lm.kind == "causal_lm":
                nbytes = np.array([len(t.encode("utf-8")) for t in texts[start:stop]])
                data["loss"] = (("sample",), nats / np.maximum(ntok, 1))
                data["bpb"] = (("sample",), nats / math.log(2) / nbytes)
                data["n_tokens"] = (("sample",), ntok)
            ds = xr.Dataset(data, coords={"sample_id": ("sample", np.array(sample_ids[start:stop], dtype=object)),
                                          "layer": np.array(layers)})
            ds.attrs = attrs  # every window: an append rewrites the group's attributes
            _write_window(ds, out, first=start == 0, chunk_size=chunk_size)
    bar.close()
    return attrs


def extract_to_zarr(samples_path: str | Path, spec: dict, out_path: str | Path, *, model_name: str,
                    dataset_name: str | None = None, resources_dir: str | Path = "resources",
                    chunk_size: int = 256, threads: int | None = None, progress: bool = True) -> Path:
    """Extract one model on one dataset into a Zarr store at `out_path` (written to a temp path, renamed)."""
    if threads:
        torch.set_num_threads(int(threads))
    df, meta = read_samples(samples_path)
    modality = spec.get("modality", "language")
    if modality == "language":
        if "text" not in df or df["text"].isna().any():
            raise ExtractionError(f"{samples_path}: language model '{model_name}' needs a text for every sample")
    else:
        raise ExtractionError(f"model '{model_name}': modality '{modality}' is not supported by extraction yet")

    lm = load_model(spec, resources_dir)
    layers = resolve_layers(spec.get("layers", "all"), lm.n_hidden_states, where=f"models.{model_name}.layers")
    attrs = {
        "model": model_name,
        "source": spec["source"],
        "init": spec.get("init", "pretrained"),
        "seed": int(spec.get("seed", 0)),
        "modality": modality,
        "kind": lm.kind,
        "pooling": spec.get("pooling", "mean"),
        "n_params": int(lm.n_params),
        "n_hidden_states": int(lm.n_hidden_states),
        "dtype": spec.get("dtype", "float32"),
        "store_dtype": spec.get("store_dtype", "float32"),
        "max_length": int(spec.get("max_length", 128)),
        "weights_sha256": lm.weights_sha256 or "",
        "params_sha256": lm.params_sha256,
        "dataset": dataset_name or meta.get("dataset", ""),
        "dataset_sha256": meta.get("content_sha256", ""),
        "n_samples": int(len(df)),
        "packages": package_versions(),
    }
    with atomic_path(out_path) as tmp:
        extract_language(
            lm, df["text"].tolist(), df["sample_id"].tolist(), tmp, layers,
            pooling=attrs["pooling"], batch_size=int(spec.get("batch_size", 32)),
            max_length=attrs["max_length"], chunk_size=chunk_size,
            store_dtype=STORE_DTYPES[attrs["store_dtype"]], attrs=attrs, progress=progress,
        )
    return Path(out_path)
