"""Alignment of two activation stores: every layer pair, the best pair, its CI and permutation p-value.

The store-level half of the alignment stage (`convergence.alignment` is the array math). One result per
(dataset, metric, model pair) is a parquet table with a row per layer pair (`layer_a, layer_b, score`,
layers as hidden-state indices) and the summary (best pair, CI, p-value, metric parameters and
preprocessing) in its metadata.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from convergence import alignment, metrics
from convergence.store import StoreError, check_same_samples, open_activations, read_values
from convergence.utils import atomic_path

META_KEY = b"convergence"


@dataclass
class PairResult:
    model_a: str
    model_b: str
    metric: str
    params: dict
    matrix: np.ndarray  # [La, Lb]
    layers_a: list[int]
    layers_b: list[int]
    best_layer_a: int  # hidden-state indices
    best_layer_b: int
    score: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    n_samples: int
    preprocessing: dict
    excluded_layers_a: list[int] = field(default_factory=list)  # constant across samples: no kernel to compare
    excluded_layers_b: list[int] = field(default_factory=list)
    uncertainty: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("matrix")
        return out


def metric_call(entry: dict, label: str) -> tuple[str, dict]:
    """A config entry of `alignment.metrics` -> (registered metric name, its parameters).

    The entry's key is a label (the folder name); `metric:` names the function when the label differs,
    e.g. `mutual_knn_k50: {metric: mutual_knn, topk: 50}`."""
    params = dict(entry or {})
    name = params.pop("metric", label)
    if name not in metrics.available():
        raise ValueError(f"alignment metric '{label}': unknown metric '{name}'. Metrics: {', '.join(metrics.available())}")
    unknown = set(params) - set(metrics.defaults(name))
    if unknown:
        raise ValueError(f"alignment metric '{label}': unknown parameters {sorted(unknown)} for {name} "
                         f"(parameters: {metrics.defaults(name)})")
    return name, params


def load_layers(path: str | Path):
    """(dataset, activations [N, L, D], hidden-state indices kept, indices excluded as constant).

    A layer that is identical for every sample (e.g. a ViT's CLS token at the embedding output) has no
    kernel structure: every similarity ties. It is masked out, reported in the result, never scored."""
    ds = open_activations(path)
    acts = read_values(ds, path).astype(np.float32, copy=False)
    if not np.isfinite(acts).all():
        raise StoreError(f"{path} holds NaN/inf activations; delete it and re-extract (try dtype: float32)")
    layers = ds["layer"].values.tolist()
    constant = [k for k in range(acts.shape[1]) if np.all(acts[:, k] == acts[:1, k])]
    if len(constant) == len(layers):
        raise ValueError(f"{path}: every layer is constant across samples; nothing to align "
                         "(is the model's input ignored, e.g. a vision model given no images?)")
    if constant:
        print(f"{path}: layers {[layers[k] for k in constant]} are constant across samples and are excluded",
              flush=True)
    keep = [k for k in range(acts.shape[1]) if k not in constant]
    return ds, acts[:, keep], [layers[k] for k in keep], [layers[k] for k in constant]


def _prepared_layer(stack: np.ndarray, k: int, normalize: bool, clip_quantile: float | None) -> np.ndarray:
    threshold = None if clip_quantile is None else alignment.clip_threshold(stack, clip_quantile)
    return alignment.preprocess_layer(stack[:, k], normalize, threshold)


def align_stores(path_a, path_b, metric: str, params: dict | None = None, *, normalize: bool = True,
                 clip_quantile: float | None = None, n_boot: int = 200, n_perm: int = 200, ci: float = 0.95,
                 seed: int = 0, workers: int | None = None) -> PairResult:
    """Score every layer pair of two stores of the same samples; CI and p-value for the best pair.
    ``workers``: layers prepared at once (``layer_scores``; default: every CPU available)."""
    t0 = time.perf_counter()
    params = dict(params or {})
    ds_a, A, layers_a, excluded_a = load_layers(path_a)
    ds_b, B, layers_b, excluded_b = load_layers(path_b)
    name_a, name_b = ds_a.attrs["model"], ds_b.attrs["model"]
    check_same_samples(ds_a, ds_b, (str(path_a), str(path_b)))
    matrix = alignment.layer_scores(A, B, metric, normalize=normalize, clip_quantile=clip_quantile,
                                    workers=workers, **params)
    i, j, best = alignment.best_pair(matrix)
    print(f"{name_a} x {name_b}: {metric} on {matrix.size} layer pairs in {time.perf_counter() - t0:.1f} s, best "
          f"{best:.4f} at layers ({layers_a[i]}, {layers_b[j]}); uncertainty: {n_boot} half-samples, "
          f"{n_perm} permutations", flush=True)
    # The chosen pair, preprocessed exactly as in layer_scores (clipping thresholds over all layers).
    X, Y = (_prepared_layer(stack, k, normalize, clip_quantile) for stack, k in ((A, i), (B, j)))
    interval = alignment.bootstrap_ci(X, Y, metric, n_boot=n_boot, ci=ci, seed=seed, **params)
    perm = alignment.permutation_pvalue(X, Y, metric, n_perm=n_perm, seed=seed, **params)
    return PairResult(
        model_a=name_a, model_b=name_b, metric=metric, params=params, matrix=matrix,
        layers_a=layers_a, layers_b=layers_b, best_layer_a=int(layers_a[i]), best_layer_b=int(layers_b[j]),
        score=float(best), ci_low=interval.low, ci_high=interval.high, ci_level=ci, p_value=perm.p_value,
        n_samples=int(A.shape[0]),
        preprocessing={"normalize": normalize, "clip_quantile": clip_quantile},
        excluded_layers_a=excluded_a, excluded_layers_b=excluded_b,
        uncertainty={"n_boot": n_boot, "bootstrap": "half-sampling without replacement", "n_perm": n_perm,
                     "seed": seed, "null_mean": float(np.mean(perm.null)), "null_max": float(np.max(perm.null)),
                     "p_value_note": "for the selected best layer pair (not corrected for the choice of pair)"},
        seconds=time.perf_counter() - t0,
    )


def write_pair(result: PairResult, path: str | Path) -> Path:
    la, lb = np.meshgrid(result.layers_a, result.layers_b, indexing="ij")
    df = pd.DataFrame({"layer_a": la.ravel(), "layer_b": lb.ravel(), "score": result.matrix.ravel()})
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({META_KEY: json.dumps(result.summary()).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_pair(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(layer-pair table, summary) of one pair result."""
    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(META_KEY)
    if meta is None:
        raise ValueError(f"{path} is not an alignment result (no summary metadata); delete it and rerun")
    return table.to_pandas(), json.loads(meta)


def matrix_of(df: pd.DataFrame) -> pd.DataFrame:
    """Layer-pair table -> [layer_a x layer_b] matrix (a DataFrame indexed by hidden-state indices)."""
    return df.pivot(index="layer_a", columns="layer_b", values="score")
