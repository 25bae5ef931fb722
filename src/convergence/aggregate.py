"""Aggregate the pair results of one (dataset, metric): a table of best scores and the PRH figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from convergence.pairwise import read_pair
from convergence.store import open_activations
from convergence.utils import atomic_path


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


def collect(pair_files, info: pd.DataFrame) -> pd.DataFrame:
    """Best layer pair per model pair, with both models' size and performance."""
    rows = []
    for f in pair_files:
        _, s = read_pair(f)
        row = {k: s[k] for k in ("model_a", "model_b", "metric", "score", "best_layer_a", "best_layer_b",
                                 "ci_low", "ci_high", "p_value", "n_samples")}
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


def aggregate(pair_files, store_paths: dict, table_path, heatmap_path, layers_path, scale_path,
              metric_label: str, dataset: str, reference: str | None = None) -> pd.DataFrame:
    from convergence import plots

    info = model_info(store_paths)
    table = collect(pair_files, info)
    reference = reference or default_reference(info)
    if reference not in info.index:
        raise ValueError(f"alignment.reference '{reference}' is not a model of dataset '{dataset}' "
                         f"(models: {', '.join(info.index)})")
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    title = f"{metric_label} on {dataset}"
    plots.model_heatmap(table, info, heatmap_path, title)
    plots.layer_grid(pair_files, info, layers_path, title)
    plots.scale_figure(table, info, scale_path, title, reference)
    return table
