"""The pair stage: two activation stores -> every layer pair's score, the best pair with its
bootstrap CI, the calibrated score and p-value of the layer search, and the N-sweep.

One result per (dataset, metric, model pair) is a parquet table with a row per layer pair
(`layer_a, layer_b, score`, layers as hidden-state indices) and the summary in its metadata
(`read_pair`). Each layer is prepared once (`prepare_pair`); the statistics read those states.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from convergence import metrics
from convergence.alignment import calibration, nsweep, stats
from convergence.alignment.layers import best_pair, prepare_pair
from convergence.store import StoreError, check_same_samples, layer_widths, open_activations, read_values
from convergence.utils import read_parquet, write_parquet


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
    score: float  # the best layer pair's (the maximum of the matrix, as PRH)
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float  # of the calibrated aggregate: the layer search repeated under the null
    p_floor: float  # the smallest p the permutations can give, 1 / (n_perm + 1)
    calibrated_score: float  # clamp((aggregate - tau) / (1 - tau), 0, 1)
    tau: float
    n_samples: int
    preprocessing: dict
    excluded_layers_a: list[int] = field(default_factory=list)  # constant across samples: no kernel to compare
    excluded_layers_b: list[int] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # agg, alpha, n_perm, seed, observed, null
    bootstrap: dict = field(default_factory=dict)  # n_boot, seed, halves_sha256, replicates (of the best pair)
    n_sweep: list = field(default_factory=list)  # rows {n, draw, mode, topk, score} at the best layer pair
    seconds: float = 0.0

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("matrix")
        return out

    def headline(self) -> str:
        return (f"{self.model_a} x {self.model_b}: best {self.score:.4f} at layers ({self.best_layer_a}, "
                f"{self.best_layer_b}) ({100 * self.ci_level:.0f}% CI {self.ci_low:.4f}..{self.ci_high:.4f}); "
                f"{self.calibration['agg']} over {self.matrix.size} layer pairs {self.calibration['observed']:.4f}, "
                f"null tau {self.tau:.4f}, calibrated {self.calibrated_score:.4f}, p = {self.p_value:.3g} "
                f"(floor {self.p_floor:.3g}, {self.calibration['n_perm']} permutations)")


# Keys of an `alignment.metrics` entry that are not the metric's parameters.
ENTRY_KEYS = ("metric", "n_perm")


def metric_call(entry: dict, label: str) -> tuple[str, dict]:
    """A config entry of `alignment.metrics` -> (registered metric name, its parameters).

    The entry's key is a label (the folder name); `metric:` names the function when the label differs,
    e.g. `mutual_knn_k50: {metric: mutual_knn, topk: 50}`; `n_perm:` sets this metric's permutations
    (see `entry_n_perm`)."""
    params = {k: v for k, v in (entry or {}).items() if k not in ENTRY_KEYS}
    name = (entry or {}).get("metric", label)
    if name not in metrics.available():
        raise ValueError(f"alignment metric '{label}': unknown metric '{name}'. Metrics: {', '.join(metrics.available())}")
    unknown = set(params) - set(metrics.defaults(name))
    if unknown:
        raise ValueError(f"alignment metric '{label}': unknown parameters {sorted(unknown)} for {name} "
                         f"(parameters: {metrics.defaults(name)})")
    return name, params


def entry_n_perm(entry: dict | None, default: int) -> int:
    """The calibration permutations of one metric: its entry's `n_perm`, else `default`."""
    return int((entry or {}).get("n_perm", default))


def load_layers(path: str | Path):
    """(dataset, layers: a list of [N, D_l] float32 arrays, hidden-state indices kept, indices excluded
    as constant).

    Each layer holds its own width only (a store pads layers of different widths, e.g. CNN stages, to
    the widest; `convergence.store.layer_widths`): padding would change clipping thresholds and
    CCA-type metrics. A layer that is identical for every sample (e.g. a ViT's CLS token at the
    embedding output) has no kernel structure: every similarity ties. It is masked out, reported in the
    result, never scored."""
    ds = open_activations(path)
    acts = read_values(ds, path).astype(np.float32, copy=False)
    if not np.isfinite(acts).all():
        raise StoreError(f"{path} holds NaN/inf activations; delete it and re-extract (try dtype: float32)")
    layers = ds["layer"].values.tolist()
    widths = layer_widths(ds)
    constant = [k for k in range(acts.shape[1]) if np.all(acts[:, k] == acts[:1, k])]
    if len(constant) == len(layers):
        raise ValueError(f"{path}: every layer is constant across samples; nothing to align "
                         "(is the model's input ignored, e.g. a vision model given no images?)")
    if constant:
        print(f"{path}: layers {[layers[k] for k in constant]} are constant across samples and are excluded",
              flush=True)
    keep = [k for k in range(acts.shape[1]) if k not in constant]
    return ds, [acts[:, k, : widths[k]] for k in keep], [layers[k] for k in keep], [layers[k] for k in constant]


def align_stores(path_a, path_b, metric: str, params: dict | None = None, *, normalize: bool = True,
                 clip_quantile: float | None = 0.95, clip_method: str = "per_sample_mean", n_boot: int = 200,
                 n_perm: int = 200, ci: float = 0.95, seed: int = 0, alpha: float = 0.05, agg: str = "max",
                 sweep: dict | None = None, workers: int | None = None) -> PairResult:
    """Score every layer pair of two stores of the same samples (preprocessing as PRH's default:
    clip at the per-sample 0.95 quantile, then L2-normalise rows); calibrate the ``agg``
    over layer pairs against ``n_perm`` permutations (the pair's p-value); a half-sample
    bootstrap CI for the best pair, its replicates kept (the same half-samples for every pair
    with the same ``seed`` and N); the N-sweep at the best pair when ``sweep`` is given
    (``{"min_n": 64, "draws": 5}``). ``workers``: layers prepared at once (default: every CPU)."""
    t0 = time.perf_counter()
    params = dict(params or {})
    alpha = calibration.check_alpha(alpha)
    calibration.aggregator(agg)
    if not isinstance(agg, str):
        raise ValueError(f"agg must be 'max' or 'mean' here (it is recorded in the result); got {agg!r}")
    ds_a, A, layers_a, excluded_a = load_layers(path_a)
    ds_b, B, layers_b, excluded_b = load_layers(path_b)
    name_a, name_b = ds_a.attrs["model"], ds_b.attrs["model"]
    check_same_samples(ds_a, ds_b, (str(path_a), str(path_b)))
    n = A[0].shape[0]
    halves = stats.half_samples(n, n_boot, seed)
    perms = calibration.permutations(n, n_perm, seed)
    pair = prepare_pair(A, B, metric, normalize=normalize, clip_quantile=clip_quantile, clip_method=clip_method,
                        workers=workers, **params)
    i, j, best = best_pair(pair.matrix)
    print(f"{name_a} x {name_b}: {metric} on {pair.matrix.size} layer pairs in {time.perf_counter() - t0:.1f} s, "
          f"best {best:.4f} at layers ({layers_a[i]}, {layers_b[j]}); uncertainty: {n_perm} permutations of the "
          f"layer search, {n_boot} half-samples" + (", N-sweep" if sweep else ""), flush=True)
    cal = calibration.calibrate_pair(pair, perms, alpha, agg)
    replicates = stats.replicate_scores(pair.spec, pair.subsampler("a", i), pair.subsampler("b", j),
                                        pair.compare_params, halves)
    low, high = stats.interval_of(best, replicates, n, ci)
    sweep_rows = []
    if sweep:
        sizes = nsweep.sweep_sizes(n, sweep.get("min_n", 64))
        sweep_rows = nsweep.n_sweep(pair, i, j, sizes, sweep.get("draws", 5), seed)
    return PairResult(
        model_a=name_a, model_b=name_b, metric=metric, params=params, matrix=pair.matrix,
        layers_a=layers_a, layers_b=layers_b, best_layer_a=int(layers_a[i]), best_layer_b=int(layers_b[j]),
        score=float(best), ci_low=low, ci_high=high, ci_level=ci, p_value=cal.p_value, p_floor=cal.p_floor,
        calibrated_score=cal.calibrated, tau=cal.tau, n_samples=int(n),
        preprocessing={"normalize": normalize, "clip_quantile": clip_quantile,
                       "clip_method": clip_method if clip_quantile is not None else None,
                       "clip_thresholds": [pair.thresholds["a"], pair.thresholds["b"]],
                       # sides whose q-quantile of |values| is 0 (sparse features): clamping would zero them
                       "unclipped": [name for name, side in ((name_a, "a"), (name_b, "b"))
                                     if clip_quantile is not None and pair.thresholds[side] is None]},
        excluded_layers_a=excluded_a, excluded_layers_b=excluded_b,
        calibration={"agg": agg, "alpha": alpha, "n_perm": int(n_perm), "seed": seed, "observed": cal.observed,
                     "null": cal.null.tolist(), "s_max": calibration.S_MAX,
                     "p_value_note": f"for the {agg} over all layer pairs, the search repeated under each permutation"},
        bootstrap={"n_boot": int(n_boot), "seed": seed, "method": "half-sampling without replacement",
                   "halves_sha256": stats.halves_digest(halves), "replicates": replicates.tolist()},
        n_sweep=sweep_rows,
        seconds=time.perf_counter() - t0,
    )


def align_configured(path_a, path_b, label: str, entry: dict | None, options: dict, sweep: dict | None,
                     out, workers: int | None = None) -> PairResult:
    """The align_pair job: ``entry`` is ``alignment.metrics[label]``, ``options`` the rest of
    ``alignment`` that a pair depends on (normalize, clip_quantile, clip_method, n_boot, n_perm,
    ci, seed, alpha, aggregate); writes ``out``."""
    name, params = metric_call(entry, label)
    options = dict(options)
    n_perm = entry_n_perm(entry, options.pop("n_perm"))
    result = align_stores(path_a, path_b, name, params, n_perm=n_perm, agg=options.pop("aggregate", "max"),
                          sweep=sweep, workers=workers, **options)
    write_pair(result, out)
    print(result.headline(), flush=True)
    return result


def write_pair(result: PairResult, path: str | Path) -> Path:
    la, lb = np.meshgrid(result.layers_a, result.layers_b, indexing="ij")
    df = pd.DataFrame({"layer_a": la.ravel(), "layer_b": lb.ravel(), "score": result.matrix.ravel()})
    return write_parquet(df, path, result.summary())


def read_pair(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(layer-pair table, summary) of one pair result."""
    df, meta = read_parquet(path)
    if meta is None:
        raise ValueError(f"{path} is not an alignment result (no summary metadata); delete it and rerun")
    return df, meta


def matrix_of(df: pd.DataFrame) -> pd.DataFrame:
    """Layer-pair table -> [layer_a x layer_b] matrix (a DataFrame indexed by hidden-state indices)."""
    return df.pivot(index="layer_a", columns="layer_b", values="score")
