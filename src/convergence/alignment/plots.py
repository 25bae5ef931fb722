"""Figures of the alignment stage. Random-init controls are always marked (hollow markers, '(rand)')."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from convergence.alignment.pairwise import matrix_of, read_pair  # noqa: E402
from convergence.utils import save_figure  # noqa: E402


def _label(model: str, info: pd.DataFrame) -> str:
    return f"{model} (rand)" if info.loc[model, "init"] == "random" else model


def _order(info: pd.DataFrame) -> list[str]:
    """Language before vision, trained before controls, then by size."""
    key = info.assign(m=info["modality"] != "language", r=info["init"] == "random")
    return key.sort_values(["m", "r", "n_params"]).index.tolist()


def _model_matrix(table: pd.DataFrame, models: list[str], column: str) -> np.ndarray:
    pos = {m: i for i, m in enumerate(models)}
    M = np.full((len(models), len(models)), np.nan)
    for r in table.itertuples():
        M[pos[r.model_a], pos[r.model_b]] = M[pos[r.model_b], pos[r.model_a]] = getattr(r, column)
    return M


def _heatmap(ax, M: np.ndarray, labels: list[str], vmin: float, vmax: float, title: str, fmt: str = "{:.2f}"):
    im = ax.imshow(M, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    middle = (vmin + vmax) / 2
    for i in range(len(labels)):
        for j in range(len(labels)):
            if not np.isnan(M[i, j]):
                ax.text(j, i, fmt.format(M[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if M[i, j] < middle else "black")
    ax.set_title(title, fontsize=9)
    return im


def model_heatmaps(table: pd.DataFrame, info: pd.DataFrame, path, title: str) -> None:
    """Side by side: the raw best-layer-pair score of every model pair, and its calibrated score
    (the aggregate over layer pairs beyond the null's critical value tau, rescaled to [0, 1]:
    0 = not above what shuffled correspondence gives with the same layer search)."""
    models = _order(info)
    labels = [_label(m, info) for m in models]
    raw = _model_matrix(table, models, "score")
    calibrated = _model_matrix(table, models, "calibrated_score")
    size = 1.2 + 0.55 * len(models)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 3, size))
    agg = table["aggregate"].iloc[0] if len(table) else "max"
    im = _heatmap(axes[0], raw, labels, np.nanmin(raw), np.nanmax(raw), "raw: best layer pair")
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="score")
    floor = table["p_floor"].max() if len(table) else np.nan
    im = _heatmap(axes[1], calibrated, labels, 0.0, max(1e-9, np.nanmax(calibrated)),
                  f"calibrated: {agg} over layer pairs vs its permutation null (0 = within the null)")
    fig.colorbar(im, ax=axes[1], fraction=0.046, label=f"calibrated score (p floor {floor:.3g})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


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
    save_figure(fig, path)


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
    save_figure(fig, path)


VERDICT_COLOURS = {"supported": "C2", "reversed": "C3", "inconclusive": "0.45"}


def _claim_label(row) -> str:
    """Short y label of a claim: the two pairs compared, or the claim's text for trends."""
    pair = str(row.pair).replace("__", " x ")
    if row.kind in ("control", "baseline"):
        return f"{pair}  -  {str(row.versus).replace('__', ' x ')}"
    if row.kind == "beyond_null":
        return f"{pair}  -  tau"
    return str(row.claim)


def claims_forest(claims: pd.DataFrame, path, title: str, alpha: float) -> None:
    """The claims as a forest plot: per tested claim its estimate (a difference of scores, rho, or
    the excess over the null's tau) and interval, coloured by verdict, one panel per kind; the
    zero line is "no effect". Skipped claims are counted in each panel's title."""
    from convergence.alignment.claims import KINDS

    kinds = [k for k in KINDS if (claims["kind"] == k).any()]
    tested = claims[claims["reason"].fillna("").eq("")]
    heights = [max(1, int((tested["kind"] == k).sum())) for k in kinds] or [1]
    fig, axes = plt.subplots(len(heights), 1, squeeze=False,
                             figsize=(9, 1.2 * len(heights) + 0.16 * sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    if not kinds:
        axes[0, 0].text(0.5, 0.5, "no claims: too few models", ha="center", va="center")
        axes[0, 0].axis("off")
    for ax, kind in zip(axes[:, 0], kinds):
        rows = tested[tested["kind"] == kind].reset_index(drop=True)
        skipped = int(((claims["kind"] == kind) & ~claims.index.isin(tested.index)).sum())
        for y, r in rows.iterrows():
            colour = VERDICT_COLOURS.get(r.verdict, "0.45")
            if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
                ax.plot([r.ci_low, r.ci_high], [y, y], "-", color=colour, lw=1.5)
            ax.plot([r.estimate], [y], "o", color=colour, ms=4)
        ax.axvline(0.0, color="black", lw=0.8)
        if rows.empty:
            ax.text(0.5, 0.5, "every claim of this kind was skipped", transform=ax.transAxes, ha="center",
                    va="center", fontsize=7)
        labels = [_claim_label(r) for r in rows.itertuples()]
        ax.set_yticks(range(len(rows)), [lab if len(lab) < 90 else lab[:87] + "..." for lab in labels], fontsize=6)
        ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=7)
        counts = rows["verdict"].value_counts()
        ax.set_title(f"{kind}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICT_COLOURS)
                     + (f", {skipped} skipped (reasons in the table)" if skipped else ""), fontsize=8)
    axes[-1, 0].set_xlabel("estimate with 95% interval (difference of scores, Spearman rho, or excess over tau)",
                           fontsize=8)
    fig.suptitle(f"{title}: claims (green supported, red reversed, grey inconclusive at BH q < {alpha:g})",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


KIND_COLOURS = {"language-language": "C0", "vision-vision": "C1", "language-vision": "C2"}
MODE_TITLES = {"fixed_k": "fixed k", "fixed_k_over_n": "fixed k / N (k scaled with N)", "all": "score vs N"}


def sweep_figure(sweep: pd.DataFrame, info: pd.DataFrame, path, title: str, metric: str) -> None:
    """The N-sweep: each pair's score (mean over nested draws, bars = SD) against N on a log2 axis,
    one panel per mode; colour = kind of pair, dashed = a random-init control or baseline is in the
    pair. For mutual kNN at fixed k the dotted line is chance, k / (N - 1)."""
    modes = [m for m in MODE_TITLES if (sweep["mode"] == m).any()] if len(sweep) else []
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(5.5 * max(1, len(modes)), 4.2), squeeze=False)
    if not modes:
        axes[0, 0].text(0.5, 0.5, "no N-sweep (alignment.n_sweep off)", ha="center", va="center")
        axes[0, 0].axis("off")
    for ax, mode in zip(axes[0], modes):
        part = sweep[sweep["mode"] == mode]
        for (a, b), rows in part.groupby(["model_a", "model_b"]):
            rows = rows.sort_values("n")
            control = any(info.loc[m, "init"] == "random" or str(info.loc[m, "source"]).startswith("baseline:")
                          for m in (a, b))
            ax.errorbar(rows["n"], rows["mean"], yerr=rows["sd"], color=KIND_COLOURS.get(rows["pair_kind"].iloc[0], "C4"),
                        ls="--" if control else "-", lw=0.9, alpha=0.75, capsize=1.5, marker=".", ms=3)
        if metric == "mutual_knn" and mode == "fixed_k":
            n = np.array(sorted(part["n"].unique()), dtype=float)
            k = float(part["topk"].dropna().iloc[0])
            ax.plot(n, k / (n - 1), ":", color="black", lw=1, label="chance k/(N-1)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples, nested subsets)")
        ax.set_ylabel("score at the best layer pair")
        ax.set_title(MODE_TITLES[mode], fontsize=9)
        handles = [plt.Line2D([], [], color=c, label=k) for k, c in KIND_COLOURS.items()]
        handles.append(plt.Line2D([], [], color="0.4", ls="--", label="control or baseline in the pair"))
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=6)
    fig.suptitle(f"{title}: N-sweep", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
