"""Aggregate the pair results of one (dataset, metric): the table of best and calibrated scores, the
claims, the N-sweep, and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from convergence.alignment import claims as claims_mod
from convergence.alignment import nsweep
from convergence.alignment.pairwise import read_pair
from convergence.store import open_activations
from convergence.utils import atomic_path

# What aggregate() writes: output name -> file suffix after results/alignment/{dataset}/{metric}.
OUTPUTS = {"table": ".csv", "heatmap": ".png", "layers": "_layers.png", "scale": "_scale.png",
           "claims": "_claims.csv", "claims_figure": "_claims.png", "nsweep": "_nsweep.csv",
           "nsweep_figure": "_nsweep.png"}


def model_info(store_paths: dict[str, str | Path]) -> pd.DataFrame:
    """One row per model: modality, init, size and performance (bpb/loss of LMs, accuracy of zoo models)."""
    rows = []
    for model, path in store_paths.items():
        ds = open_activations(path)
        a = ds.attrs
        rows.append({
            "model": model, "modality": a["modality"], "kind": a.get("kind"), "init": a["init"],
            "source": a["source"], "n_params": int(a["n_params"]),
            "bpb": float(ds["bpb"].mean()) if "bpb" in ds else np.nan,
            "loss": float(ds["loss"].mean()) if "loss" in ds else np.nan,
            "accuracy": float(a["accuracy"]) if "accuracy" in a else np.nan,
        })
    return pd.DataFrame(rows).set_index("model")


def collect(summaries: dict, info: pd.DataFrame) -> pd.DataFrame:
    """Best layer pair per model pair, its calibrated score and p, with both models' size and performance."""
    rows = []
    for s in summaries.values():
        row = {k: s[k] for k in ("model_a", "model_b", "metric", "score", "best_layer_a", "best_layer_b",
                                 "ci_low", "ci_high", "calibrated_score", "tau", "p_value", "p_floor", "n_samples")}
        row["aggregate"] = s["calibration"]["agg"]
        row["n_perm"] = s["calibration"]["n_perm"]
        row["params"] = ",".join(f"{k}={v}" for k, v in sorted(s["params"].items()))
        for side in ("a", "b"):
            m = info.loc[s[f"model_{side}"]]
            for col in ("modality", "init", "n_params", "bpb", "accuracy"):
                row[f"{col}_{side}"] = m[col]
        rows.append(row)
    if not rows:
        raise ValueError("no pair results to aggregate (a dataset with fewer than two models?)")
    return pd.DataFrame(rows).sort_values(["model_a", "model_b"]).reset_index(drop=True)


def default_reference(info: pd.DataFrame) -> str:
    """The largest pretrained language model: the natural 'where are models converging to' anchor."""
    pool = info[(info["init"] == "pretrained") & (info["modality"] == "language")]
    pool = pool if len(pool) else info[info["init"] == "pretrained"]
    if not len(pool):
        pool = info
    return str(pool["n_params"].idxmax())


def pair_kind(a: str, b: str, info: pd.DataFrame) -> str:
    """'language-language', 'vision-vision' or 'language-vision'."""
    return "-".join(sorted((info.loc[a, "modality"], info.loc[b, "modality"])))


def sweep_table(summaries: dict, info: pd.DataFrame) -> pd.DataFrame:
    """Per pair, mode and N: mean and SD of the score over draws, and the pair's slope per doubling of N."""
    rows = []
    for s in summaries.values():
        sweep = pd.DataFrame(s.get("n_sweep") or [])
        if sweep.empty:
            continue
        for mode, part in sweep.groupby("mode"):
            slope = nsweep.sweep_slope(part.to_dict("records"))
            for n, at_n in part.groupby("n"):
                rows.append({"model_a": s["model_a"], "model_b": s["model_b"],
                             "pair_kind": pair_kind(s["model_a"], s["model_b"], info), "mode": mode, "n": int(n),
                             "topk": at_n["topk"].iloc[0], "mean": at_n["score"].mean(),
                             "sd": at_n["score"].std(ddof=1) if len(at_n) > 1 else 0.0, "draws": len(at_n),
                             "slope_per_doubling": slope})
    columns = ["model_a", "model_b", "pair_kind", "mode", "n", "topk", "mean", "sd", "draws", "slope_per_doubling"]
    return pd.DataFrame(rows, columns=columns)


def _write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def aggregate(pair_files, store_paths: dict, outputs: dict, metric_label: str, dataset: str,
              reference: str | None = None, controls: dict | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Write every output of ``OUTPUTS`` (``outputs``: name -> path) for one (dataset, metric).
    ``controls``: model -> its random-init control or None (``convergence.config.controls_of``)."""
    from convergence.alignment import plots

    missing = sorted(set(OUTPUTS) - set(outputs))
    if missing:
        raise ValueError(f"aggregate needs a path for {missing}")
    info = model_info(store_paths)
    summaries = {str(f): read_pair(f)[1] for f in pair_files}
    table = collect(summaries, info)
    reference = reference or default_reference(info)
    if reference not in info.index:
        raise ValueError(f"alignment.reference '{reference}' is not a model of dataset '{dataset}' "
                         f"(models: {', '.join(info.index)})")
    claims = claims_mod.claims_table(summaries, info, controls or {}, reference, alpha)
    print(claims_mod.describe(claims), flush=True)
    sweep = sweep_table(summaries, info)
    _write_csv(table, outputs["table"])
    _write_csv(claims, outputs["claims"])
    _write_csv(sweep, outputs["nsweep"])
    title = f"{metric_label} on {dataset}"
    plots.model_heatmaps(table, info, outputs["heatmap"], title)
    plots.layer_grid(pair_files, info, outputs["layers"], title)
    plots.scale_figure(table, info, outputs["scale"], title, reference)
    plots.claims_forest(claims, outputs["claims_figure"], title, alpha)
    plots.sweep_figure(sweep, info, outputs["nsweep_figure"], title, metric_label)
    return table
