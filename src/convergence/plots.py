"""Figures of the alignment stage. Random-init controls are always marked (hollow markers, '(rand)')."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from convergence.pairwise import matrix_of, read_pair  # noqa: E402
from convergence.utils import atomic_path  # noqa: E402


def _save(fig, path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _label(model: str, info: pd.DataFrame) -> str:
    return f"{model} (rand)" if info.loc[model, "init"] == "random" else model


def _order(info: pd.DataFrame) -> list[str]:
    """Language before vision, trained before controls, then by size."""
    key = info.assign(m=info["modality"] != "language", r=info["init"] == "random")
    return key.sort_values(["m", "r", "n_params"]).index.tolist()


def model_heatmap(table: pd.DataFrame, info: pd.DataFrame, path, title: str) -> None:
    """Best-layer-pair score of every model pair (symmetric; the diagonal is left blank)."""
    models = _order(info)
    pos = {m: i for i, m in enumerate(models)}
    M = np.full((len(models), len(models)), np.nan)
    for r in table.itertuples():
        M[pos[r.model_a], pos[r.model_b]] = M[pos[r.model_b], pos[r.model_a]] = r.score
    size = 1.2 + 0.55 * len(models)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(M, cmap="viridis")
    labels = [_label(m, info) for m in models]
    ax.set_xticks(range(len(models)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), labels, fontsize=8)
    for i in range(len(models)):
        for j in range(len(models)):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if M[i, j] < np.nanmean(M) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="score (best layer pair)")
    ax.set_title(f"{title}: best layer pair per model pair")
    _save(fig, path)


def layer_grid(pair_files, info: pd.DataFrame, path, title: str) -> None:
    """Every pair's layer x layer matrix (rows: model_a's hidden states, columns: model_b's)."""
    pairs = [read_pair(f) for f in pair_files]
    n = len(pairs)
    cols = min(6, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    vmin = min(df["score"].min() for df, _ in pairs)
    vmax = max(df["score"].max() for df, _ in pairs)
    for ax, (df, s) in zip(axes.flat, pairs):
        M = matrix_of(df)
        ax.imshow(M.values, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis")
        ax.plot([M.columns.get_loc(s["best_layer_b"])], [M.index.get_loc(s["best_layer_a"])], "r+", ms=8)
        ax.set_title(f"{_label(s['model_a'], info)}\nvs {_label(s['model_b'], info)}", fontsize=7)
        ax.set_xlabel(f"{s['model_b']} layer", fontsize=6)
        ax.set_ylabel(f"{s['model_a']} layer", fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}: every layer pair (+ = best), colour range {vmin:.2f}..{vmax:.2f}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _pair_score(table: pd.DataFrame, a: str, b: str):
    row = table[((table.model_a == a) & (table.model_b == b)) | ((table.model_a == b) & (table.model_b == a))]
    return None if row.empty else row.iloc[0]


def _scatter(ax, xs, rows, info, models, color="C0", label=None, line=False, annotate=True):
    """Points with CI bars; random-init controls hollow."""
    pts = sorted((x, m, r) for x, m, r in zip(xs, models, rows) if r is not None and np.isfinite(x))
    if line:
        trained = [(x, r) for x, m, r in pts if info.loc[m, "init"] != "random"]
        if len(trained) > 1:
            ax.plot([x for x, _ in trained], [r.score for _, r in trained], "-", color=color, alpha=0.6)
    for x, m, r in pts:
        random = info.loc[m, "init"] == "random"
        ax.errorbar([x], [r.score], yerr=[[r.score - r.ci_low], [r.ci_high - r.score]], fmt="o",
                    color=color, mfc="white" if random else color, ms=6, capsize=2,
                    label=label if (label and m == pts[-1][1]) else None)
        if annotate:
            ax.annotate(_label(m, info), (x, r.score), fontsize=6, xytext=(3, 3), textcoords="offset points")


def scale_figure(table: pd.DataFrame, info: pd.DataFrame, path, title: str, reference: str) -> None:
    """PRH's question: does alignment grow with size and performance?

    Top: alignment of every model to `reference` vs its size and vs its bits per byte (causal LMs).
    Bottom, when vision models are present: language-vision alignment vs the LM's size (a line per
    vision model) and vs the vision model's held-out accuracy (a line per LM).
    """
    lang = [m for m in _order(info) if info.loc[m, "modality"] == "language"]  # trained first
    vision = [m for m in _order(info) if info.loc[m, "modality"] == "vision"]
    cross = bool(lang and vision)
    fig, axes = plt.subplots(2 if cross else 1, 2, figsize=(11, 8.5 if cross else 4.3), squeeze=False)
    same = info.loc[reference, "modality"]
    others = [m for m in info.index if m != reference and info.loc[m, "modality"] == same]
    rows = [_pair_score(table, reference, m) for m in others]
    _scatter(axes[0, 0], [info.loc[m, "n_params"] for m in others], rows, info, others)
    axes[0, 0].set_xscale("log")
    axes[0, 0].set_xlabel("parameters")
    axes[0, 0].set_ylabel(f"alignment to {reference}")
    axes[0, 0].set_title(f"{same} models: alignment to {reference} vs size", fontsize=9)
    _scatter(axes[0, 1], [info.loc[m, "bpb"] for m in others], rows, info, others)
    axes[0, 1].set_xlabel("bits per byte on the captions (lower = better LM)")
    axes[0, 1].invert_xaxis()
    axes[0, 1].set_title(f"alignment to {reference} vs LM performance", fontsize=9)
    if cross:
        for k, v in enumerate(vision):
            _scatter(axes[1, 0], [info.loc[m, "n_params"] for m in lang], [_pair_score(table, v, m) for m in lang],
                     info, lang, color=f"C{k}", label=_label(v, info), line=info.loc[v, "init"] != "random",
                     annotate=k == 0)
        axes[1, 0].set_xscale("log")
        axes[1, 0].set_xlabel("language model parameters")
        axes[1, 0].set_ylabel("language-vision alignment")
        axes[1, 0].set_title("captions (LM) vs images (vision model): one colour per vision model", fontsize=9)
        axes[1, 0].legend(fontsize=6)
        for k, m in enumerate(lang):
            _scatter(axes[1, 1], [info.loc[v, "accuracy"] for v in vision], [_pair_score(table, m, v) for v in vision],
                     info, vision, color=f"C{k}", label=_label(m, info), line=info.loc[m, "init"] != "random",
                     annotate=k == 0)
        axes[1, 1].set_xlabel("vision model held-out attribute accuracy")
        axes[1, 1].set_title("language-vision alignment vs vision performance: one colour per LM", fontsize=9)
        axes[1, 1].legend(fontsize=6)
    fig.suptitle(f"{title} (hollow = random-init control; bars = 95% CI)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
