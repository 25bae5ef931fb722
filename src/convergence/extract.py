"""Per-model activation extraction: a dataset's samples -> pooled hidden states of every chosen layer, in Zarr.

The store (`results/activations/{dataset}/{model}.zarr`, DESIGN §2) holds `activations`
(sample, layer, neuron), coordinates `sample_id` (identical across the models of a dataset) and `layer`
(hidden-state index, 0 = embedding output), and for causal LMs per-sample `loss` (nats/token) and
`bpb` (bits per UTF-8 byte of the text): the performance axis of PRH's scale plots.

Samples are processed in windows of `chunk_size` (one Zarr chunk each); inside a window they are sorted by
length so batches carry little padding, then put back in order. Memory is bounded by one window.

Layers of different widths (CNN stages, the pixel baseline's scales) are zero-padded to the widest and
the store gets a coordinate `width` (dims `layer`) with each layer's true width
(`convergence.store.layer_widths`); models that name their layers add `layer_name`. Input baselines
(`source: baseline:...`, `convergence.models.baselines`) are computed from the samples and written the
same way, with `init: baseline`, `kind: baseline` and `n_params: 0`.
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
import xarray as xr
from tqdm.auto import tqdm

from convergence.datasets import read_samples
from convergence.models import LoadedModel, default_layers, load_model, resolve_layers
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
    """Summed next-token negative log-likelihood (nats) and number of predicted tokens, per sample.

    nll = logsumexp(logits) - logit[target]: one reduction over the vocabulary instead of a full
    log-softmax tensor, faster and closer to a float64 computation (6e-6 vs 2e-3 nats per caption
    on SmolLM2) than float32 cross_entropy."""
    logits = logits[:, :-1]
    targets = input_ids[:, 1:]
    valid = mask[:, 1:].bool()
    nll = torch.logsumexp(logits.float(), -1).double() - logits.gather(-1, targets[..., None])[..., 0].double()
    return (nll * valid).sum(1), valid.sum(1)


class TextInputs:
    """Captions/texts for a language model: tokenised per batch, padded right, masked pooling."""

    def __init__(self, lm: LoadedModel, texts: list[str], max_length: int):
        self.lm, self.texts, self.max_length = lm, texts, max_length
        ids = lm.processor(texts, truncation=False, padding=False)["input_ids"]
        self.lengths = np.array([len(x) for x in ids])  # sort key: batches of similar length pad little
        self.n_truncated = int((self.lengths > max_length).sum())
        self._accepted = inspect.signature(lm.model.forward).parameters

    def forward(self, idx: np.ndarray, pooling: str, layers: list[int]):
        lm = self.lm
        enc = lm.processor([self.texts[i] for i in idx], padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(lm.device) for k, v in enc.items() if k in self._accepted}
        out = lm.model(**enc, output_hidden_states=True)
        pooled = pool_hidden_states(out.hidden_states, enc["attention_mask"], pooling, layers)
        extras = {}
        if lm.kind == "causal_lm":
            nats, ntok = causal_lm_nats(out.logits, enc["input_ids"], enc["attention_mask"])
            extras = {"nats": nats.cpu().numpy(), "n_tokens": ntok.cpu().numpy()}
        return pooled.cpu().numpy(), extras

    def window_vars(self, start: int, stop: int, extras: dict) -> dict:
        """Per-sample performance of causal LMs: loss (nats/token) and bits per UTF-8 byte."""
        if self.lm.kind != "causal_lm":
            return {}
        nats, ntok = extras["nats"], extras["n_tokens"]
        nbytes = np.array([len(t.encode("utf-8")) for t in self.texts[start:stop]])
        return {"loss": (("sample",), nats / np.maximum(ntok, 1)),
                "bpb": (("sample",), nats / math.log(2) / nbytes),
                "n_tokens": (("sample",), ntok.astype(np.int64))}


def processor_input_size(processor) -> tuple[int, int] | None:
    """(height, width) an image processor resizes to, where it says so (ours: `input_size`; transformers:
    `crop_size` / `size`); None when it does not."""
    if getattr(processor, "input_size", None):
        return tuple(processor.input_size)
    for key in ("crop_size", "size"):
        size = getattr(processor, key, None)
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None


def check_images_serve(paths: list[str], needed: tuple[int, int] | None, model_name: str, samples_path) -> None:
    """Fail when no image is as large as the model's input (the dataset was sampled too small for it);
    warn, with a count, when only some are (they are upsampled)."""
    from PIL import Image

    if needed is None or not paths:
        return
    small = []
    for p in paths:
        with Image.open(p) as im:  # reads the header only
            if min(im.size) < min(needed):
                small.append(im.size)
    if len(small) == len(paths):
        sizes = sorted(set(small))
        raise ExtractionError(
            f"{samples_path}: vision model '{model_name}' runs at {needed[0]}x{needed[1]} px but every image of "
            f"this dataset is smaller (e.g. {sizes[0][0]}x{sizes[0][1]}); sample the dataset at image_size >= "
            f"{min(needed)} (datasets.<name>.image_size), or extract this model on another dataset"
        )
    if small:
        print(f"warning: {len(small)} of {len(paths)} images are smaller than {model_name}'s input "
              f"({needed[0]}x{needed[1]} px) and are upsampled", file=sys.stderr)


class ImageInputs:
    """Images for a vision model, preprocessed by the model's own image processor."""

    def __init__(self, lm: LoadedModel, image_paths: list[str]):
        self.lm, self.paths = lm, image_paths
        self.lengths = np.zeros(len(image_paths), np.int64)  # one size: no reordering needed
        self.widths: list[int] | None = None

    def forward(self, idx: np.ndarray, pooling: str, layers: list[int]):
        from PIL import Image

        from convergence.vision import pool_vision_hidden_states
        from convergence.vision.pooling import layer_widths

        images = [Image.open(self.paths[i]).convert("RGB") for i in idx]
        pixels = self.lm.processor(images=images, return_tensors="pt")["pixel_values"].to(self.lm.device)
        out = self.lm.model(pixel_values=pixels.to(self.lm.model.dtype), output_hidden_states=True)
        self.widths = layer_widths(out.hidden_states, layers)
        return pool_vision_hidden_states(out.hidden_states, pooling, layers, pad_widths=True).cpu().numpy(), {}

    def layer_coords(self, layers: list[int]) -> dict:
        coords = {}
        if self.widths is not None and len(set(self.widths)) > 1:
            coords["width"] = ("layer", np.array(self.widths, np.int64))
        names = getattr(self.lm.model, "layer_names", None)
        if names is not None:
            coords["layer_name"] = ("layer", np.array([names[i] for i in layers], dtype=object))
        return coords

    def window_vars(self, start: int, stop: int, extras: dict) -> dict:
        return {}


class BaselineInputs:
    """Features computed up front (an input baseline): windows take their rows."""

    def __init__(self, features, layers: list[int]):
        widths = [features.widths[i] for i in layers]
        self.values = features.values[:, layers, : max(widths)]
        self.widths, self.names = widths, [features.layer_names[i] for i in layers]
        self.lengths = np.zeros(len(self.values), np.int64)

    def forward(self, idx: np.ndarray, pooling: str, layers: list[int]):
        return self.values[idx], {}

    def layer_coords(self, layers: list[int]) -> dict:
        coords = {"layer_name": ("layer", np.array(self.names, dtype=object))}
        if len(set(self.widths)) > 1:
            coords["width"] = ("layer", np.array(self.widths, np.int64))
        return coords

    def window_vars(self, start: int, stop: int, extras: dict) -> dict:
        return {}


def plan_batches(lengths: np.ndarray, chunk_size: int, batch_size: int):
    """Windows of `chunk_size` samples (one Zarr chunk each), each split into batches of similar length."""
    n = len(lengths)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        order = start + np.argsort(lengths[start:stop], kind="stable")
        yield start, stop, [order[b:b + batch_size] for b in range(0, len(order), batch_size)]


def _write_window(ds: xr.Dataset, path: Path, first: bool, chunk_size: int) -> None:
    with warnings.catch_warnings():  # zarr: "consolidated metadata is not part of the v3 spec" (xarray reads it)
        warnings.simplefilter("ignore")
        if first:
            enc = {"activations": {"chunks": (chunk_size,) + ds["activations"].shape[1:]}}
            ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=True, encoding=enc)
        else:
            per_layer = [name for name, c in ds.coords.items() if c.dims == ("layer",)]
            ds.drop_vars(per_layer).to_zarr(path, append_dim="sample", consolidated=True)


def extract_windows(inputs, sample_ids: list[str], out: Path, layers: list[int], pooling: str, batch_size: int,
                    chunk_size: int, store_dtype, attrs: dict, progress: bool = True) -> None:
    """Run `inputs` through the model window by window and append each window to the store at `out`."""
    n = len(sample_ids)
    bar = tqdm(total=n, desc=f"extract {attrs['model']}", unit="sample", disable=not progress, mininterval=2)
    with torch.inference_mode():
        for start, stop, batches in plan_batches(inputs.lengths, chunk_size, batch_size):
            acts = None  # allocated from the first batch: the width is what the model returns
            extras: dict[str, np.ndarray] = {}
            for idx in batches:
                pooled, batch_extras = inputs.forward(idx, pooling, layers)
                if acts is None:
                    acts = np.empty((stop - start,) + pooled.shape[1:], np.float32)
                acts[idx - start] = pooled
                for key, values in batch_extras.items():
                    extras.setdefault(key, np.zeros(stop - start, values.dtype))[idx - start] = values
                bar.update(len(idx))
            if not np.isfinite(acts).all():
                raise ExtractionError(
                    f"model {attrs['model']} produced NaN/inf activations for samples {start}..{stop - 1} "
                    f"(dtype {attrs['dtype']}; try dtype: float32)"
                )
            data = {"activations": (("sample", "layer", "neuron"), acts.astype(store_dtype)),
                    **inputs.window_vars(start, stop, extras)}
            layer_coords = inputs.layer_coords(layers) if hasattr(inputs, "layer_coords") else {}
            ds = xr.Dataset(data, coords={"sample_id": ("sample", np.array(sample_ids[start:stop], dtype=object)),
                                          "layer": np.array(layers), **layer_coords})
            ds.attrs = attrs  # every window: an append rewrites the group's attributes
            _write_window(ds, out, first=start == 0, chunk_size=chunk_size)
    bar.close()


def _inputs_for(lm: LoadedModel, df, modality: str, spec: dict, model_name: str, samples_path):
    column = "text" if modality == "language" else "image"
    if column not in df or df[column].isna().any():
        raise ExtractionError(
            f"{samples_path}: {modality} model '{model_name}' needs one {column} per sample; "
            f"choose datasets with {column}s in models.{model_name}.datasets"
        )
    if modality == "language":
        inputs = TextInputs(lm, df["text"].tolist(), int(spec.get("max_length", 128)))
        if inputs.n_truncated:
            print(f"warning: {inputs.n_truncated} of {len(df)} texts exceed max_length={inputs.max_length} "
                  "tokens and are truncated", file=sys.stderr)
        return inputs
    inputs = ImageInputs(lm, df["image"].tolist())
    check_images_serve(inputs.paths, processor_input_size(lm.processor), model_name, samples_path)
    return inputs


def _performance(lm: LoadedModel, spec: dict) -> dict:
    """Vision zoo models carry their held-out attribute accuracy (the performance axis of vision)."""
    metrics = lm.metrics or {}
    if "holdout" not in metrics:
        return {}
    key = "holdout" if spec.get("init", "pretrained") == "pretrained" else "untrained_holdout"
    return {"accuracy": float(metrics[key]["mean_accuracy"]),
            "chance_accuracy": float(metrics["chance_holdout"]["mean_accuracy"])}


def extract_to_zarr(samples_path: str | Path, spec: dict, out_path: str | Path, *, model_name: str,
                    dataset_name: str | None = None, resources_dir: str | Path = "resources",
                    zoo_dir: str | Path = "results/zoo", chunk_size: int = 256, threads: int | None = None,
                    progress: bool = True) -> Path:
    """Extract one model on one dataset into a Zarr store at `out_path` (written to a temp path, renamed)."""
    if threads:
        torch.set_num_threads(int(threads))
    df, meta = read_samples(samples_path)
    modality = spec.get("modality", "language")
    if spec["source"].startswith("baseline:"):
        return _extract_baseline(df, meta, spec, out_path, model_name=model_name, dataset_name=dataset_name,
                                 samples_path=samples_path, chunk_size=chunk_size, progress=progress)
    lm = load_model(spec, resources_dir, zoo_dir=zoo_dir)
    layers = resolve_layers(spec.get("layers") or default_layers(spec), lm.n_hidden_states,
                            where=f"models.{model_name}.layers")
    inputs = _inputs_for(lm, df, modality, spec, model_name, samples_path)
    attrs = {
        **network_attrs(model_name, spec, lm, meta, dataset_name, len(df)),
        "pooling": spec.get("pooling", "mean"),
        "layers": spec.get("layers") or default_layers(spec),
        "store_dtype": spec.get("store_dtype", "float32"),
        "n_truncated": int(getattr(inputs, "n_truncated", 0)),
        **_performance(lm, spec),
    }
    with atomic_path(out_path) as tmp:
        extract_windows(inputs, df["sample_id"].tolist(), tmp, layers, pooling=attrs["pooling"],
                        batch_size=int(spec.get("batch_size", 32)), chunk_size=chunk_size,
                        store_dtype=STORE_DTYPES[attrs["store_dtype"]], attrs=attrs, progress=progress)
    return Path(out_path)


def network_attrs(model_name: str, spec: dict, lm, meta: dict, dataset_name: str | None, n_samples: int) -> dict:
    """The attributes every store of a network's outputs carries (activations and units stores alike):
    which model, weights and data produced it, and with which packages."""
    return {
        "model": model_name,
        "source": spec["source"],
        "init": spec.get("init", "pretrained"),
        "seed": int(spec.get("seed", 0)),
        "modality": spec.get("modality", "language"),
        "kind": lm.kind,
        "n_params": int(lm.n_params),
        "n_hidden_states": int(lm.n_hidden_states),
        "dtype": spec.get("dtype", "float32"),
        "max_length": int(spec.get("max_length", 128)),
        "weights_sha256": lm.weights_sha256 or "",
        "params_sha256": lm.params_sha256,
        "dataset": dataset_name or meta.get("dataset", ""),
        "dataset_sha256": meta.get("content_sha256", ""),
        "n_samples": int(n_samples),
        "packages": package_versions(),
    }


def _extract_baseline(df, meta: dict, spec: dict, out_path, *, model_name: str, dataset_name: str | None,
                      samples_path, chunk_size: int, progress: bool) -> Path:
    """An input baseline as a store: features of the samples themselves, no model."""
    import json

    from convergence.models import baselines

    kind = baselines.kind_of(spec["source"])
    modality = spec.get("modality", "language")
    if baselines.KINDS[kind] != modality:
        raise ExtractionError(f"models.{model_name}: {spec['source']} is a {baselines.KINDS[kind]} baseline "
                              f"(set modality: {baselines.KINDS[kind]})")
    column = "text" if modality == "language" else "image"
    if column not in df or df[column].isna().any():
        raise ExtractionError(f"{samples_path}: {spec['source']} needs one {column} per sample")
    features = baselines.compute(spec["source"], spec.get("baseline"),
                                 texts=df["text"].tolist() if modality == "language" else None,
                                 image_paths=df["image"].tolist() if modality == "vision" else None)
    selection = spec.get("layers") or "all"
    if selection == "blocks":
        raise ExtractionError(f"models.{model_name}.layers: a baseline has no embedding layer to leave out; "
                              "use all or a list")
    layers = resolve_layers(selection, len(features.layer_names), where=f"models.{model_name}.layers")
    inputs = BaselineInputs(features, layers)
    attrs = {
        "model": model_name,
        "source": spec["source"],
        "init": "baseline",
        "seed": int(features.params.get("seed", 0)),
        "modality": modality,
        "kind": "baseline",
        "baseline": kind,
        "baseline_params": json.dumps(features.params, sort_keys=True),
        "baseline_info": json.dumps(features.info, sort_keys=True),
        "pooling": "none",
        "n_params": 0,
        "n_hidden_states": len(features.layer_names),
        "layers": selection,
        "dtype": "float32",
        "store_dtype": spec.get("store_dtype", "float32"),
        "weights_sha256": "",
        "params_sha256": features.params_sha256,
        "dataset": dataset_name or meta.get("dataset", ""),
        "dataset_sha256": meta.get("content_sha256", ""),
        "n_samples": int(len(df)),
        "packages": package_versions(),
    }
    with atomic_path(out_path) as tmp:
        extract_windows(inputs, df["sample_id"].tolist(), tmp, layers, pooling="none", batch_size=len(df),
                        chunk_size=chunk_size, store_dtype=STORE_DTYPES[attrs["store_dtype"]], attrs=attrs,
                        progress=progress)
    return Path(out_path)
