"""Figures of the generator stage: matches against the nulls, Rosetta sets as maps, inversion and edits."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from convergence.utils import save_figure  # noqa: E402

FIGURE_SEED_OFFSET = 1000  # figure images are drawn apart from the matching images
FIGURE_IMAGES = 64
IMAGES_PER_SET = 3


def _message_figure(text: str, path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return save_figure(fig, path)


def null_figure(table: pd.DataFrame, path, generator: str) -> Path:
    """Per model and criterion: the generator-model matches (top row: how many; bottom row: their mean r)
    next to the rotation, shuffled-images, random-init-generator and random-init-model nulls."""
    criteria = list(dict.fromkeys(table["criterion"])) if len(table) else []
    if not criteria:
        return _message_figure("no models matched", path)
    series = [("", "observed", "C0"), ("rotation_", "rotation null", "C7"),
              ("shuffled_images_", "shuffled images", "C2"),
              ("random_generator_", "random-init generator", "C1"), ("random_model_", "random-init model", "C3")]
    fig, axes = plt.subplots(2, len(criteria), figsize=(5.5 * len(criteria), 6.4), squeeze=False)
    for col, criterion in enumerate(criteria):
        part = table[table["criterion"] == criterion].reset_index(drop=True)
        x = np.arange(len(part))
        width = 0.8 / len(series)
        inits = ["trained" if i == "pretrained" else i for i in part["init"]]
        for row, (stat, ylabel) in enumerate((("matches", "mutual matches with the generator"),
                                              ("mean_r", "mean r of the matches"))):
            ax = axes[row][col]
            for j, (prefix, label, colour) in enumerate(series):
                column = f"{prefix}{stat}"
                values = part[column].astype(float) if column in part else pd.Series(np.nan, index=part.index)
                ax.bar(x + (j - (len(series) - 1) / 2) * width, values.fillna(0), width, label=label, color=colour)
            ax.set_xticks(x, [f"{m}\n({i})" for m, i in zip(part["model"], inits)], rotation=30, ha="right",
                          fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
        title = "strict best buddies" if criterion == "strict" else "best, reciprocated in top-k_back (reference)"
        axes[0][col].set_title(f"{generator}: {title}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _overlay(ax, image: np.ndarray, heat: np.ndarray | None, title: str | None = None) -> None:
    ax.imshow(image)
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=5)


def _heat(maps: torch.Tensor, size: int) -> np.ndarray:
    """`[n, h, w]` maps -> `[n, size, size]` in [0, 1], one scale over the n images (comparable across them)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.min(), up.max()
    return ((up - lo) / (hi - lo + 1e-12)).numpy()


@torch.no_grad()
def sets_figure(frame: pd.DataFrame, pairs: Mapping, models: Sequence[str], generator_name: str, generator_dir,
                specs: Mapping[str, dict], path, *, resources_dir="resources", zoo_dir="results/zoo",
                n_sets: int = 6) -> Path:
    """For each of the best `n_sets` Rosetta sets: the same generated images, and over them the set's unit
    map in the generator and in every model (one colour scale per unit across its images)."""
    if frame is None or len(frame) == 0 or generator_dir is None:
        return _message_figure(f"{generator_name}: no Rosetta sets across {', '.join(models) or 'no models'}", path)
    from . import gan
    from .maps import generator_layers, generator_maps
    from .stage import _vision_model

    generator, gspec = gan.load_generator(generator_dir)
    layers = generator_layers(generator, gspec.get("unit_layers"))
    first = pairs[models[0]]
    z = gan.sample_latents(FIGURE_IMAGES, generator.latent_dim, int(first.meta["seed"]) + FIGURE_SEED_OFFSET)
    images, g_maps = generator_maps(generator, z, layers)
    images_u8 = gan.to_uint8(images)
    d_maps = {m: _vision_model(specs[m], m, resources_dir, zoo_dir).maps(images_u8) for m in models}
    top = frame.sort_values("mean_r", ascending=False).head(n_sets).reset_index(drop=True)
    cols = IMAGES_PER_SET * (2 + len(models))
    fig, axes = plt.subplots(len(top), cols, figsize=(0.95 * cols, 1.25 * len(top)), squeeze=False)
    size = images_u8.shape[1]
    for row, s in top.iterrows():
        g_layer, g_channel = first.locate_a(int(s["generator_unit"]))
        g_unit_maps = g_maps[g_layer][:, g_channel]
        chosen = torch.argsort(g_unit_maps.flatten(1).mean(1), descending=True)[:IMAGES_PER_SET]
        heats = {f"{generator_name}\n{s['generator_label']}": _heat(g_unit_maps[chosen], size)}
        for m in models:
            d_layer, d_channel = pairs[m].locate_b(int(s[f"{m}_unit"]))
            heats[f"{m}\n{s[f'{m}_label']} r={s[f'{m}_r']:.2f}"] = _heat(d_maps[m][d_layer][chosen, d_channel], size)
        for k, idx in enumerate(chosen.tolist()):
            base = k * (2 + len(models))
            _overlay(axes[row][base], images_u8[idx], None, f"set {row + 1}" if k == 0 else None)
            for j, (label, heat) in enumerate(heats.items()):
                _overlay(axes[row][base + 1 + j], images_u8[idx], heat[k], label if k == 0 else None)
    fig.suptitle(f"Rosetta sets of {generator_name} (anchor) across {', '.join(models)}: the same generated images, "
                 "each unit's map over them", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def edits_figure(real: np.ndarray, inverted: np.ndarray, inversion: pd.DataFrame, requests, accepted, edited,
                 edits: pd.DataFrame, path) -> Path:
    """One row per image: the real image, its inversion, and every requested edit (refused ones greyed)."""
    n = len(real)
    per_image: dict[int, list] = {}
    done = {id(r): i for i, r in enumerate(accepted)}
    for row_index, req in enumerate(requests):
        per_image.setdefault(req.image, []).append((req, row_index))
    cols = 2 + max((len(v) for v in per_image.values()), default=0)
    fig, axes = plt.subplots(n, cols, figsize=(1.35 * cols, 1.45 * n), squeeze=False)
    for i in range(n):
        inv = inversion.iloc[i]
        _overlay(axes[i][0], real[i], None, "real" if i == 0 else None)
        status = "" if inv["converged"] else " NOT CONVERGED"
        _overlay(axes[i][1], inverted[i], None, f"inverted, cos {inv['cosine']:.2f}{status}")
        if not inv["converged"]:
            axes[i][1].title.set_color("red")
        for j, (req, row_index) in enumerate(per_image.get(i, [])):
            ax = axes[i][2 + j]
            measured = edits.iloc[row_index]
            if req.refused is not None:
                ax.imshow(np.full_like(inverted[i], 235))
                ax.text(0.5, 0.5, "refused:\nout of frame" if "frame" in req.refused else "refused",
                        ha="center", va="center", fontsize=6, transform=ax.transAxes)
                _overlay(ax, np.full_like(inverted[i], 235), None, req.label)
                continue
            _overlay(ax, edited[done[id(req)]], None, f"{req.label}\n{_measured(measured)}")
            ax.title.set_color("green" if bool(measured.get("success")) else "red")
            if req.kind == "shift" and req.centre is not None:
                cx, cy = req.centre
                ax.annotate("", xy=(cx + req.dx - 0.5, cy + req.dy - 0.5), xytext=(cx - 0.5, cy - 0.5),
                            arrowprops=dict(arrowstyle="->", color="cyan", lw=0.8))
        for j in range(2 + len(per_image.get(i, [])), cols):
            axes[i][j].axis("off")
    fig.suptitle("Rosetta-guided inversion and edits (green: measured success, red: failure)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _measured(row) -> str:
    if row["edit"] == "shift":
        return "moved ?" if pd.isna(row.get("moved_dx")) else f"moved ({row['moved_dx']:+.0f}, {row['moved_dy']:+.0f})"
    if row["edit"] == "zoom":
        return "area ?" if pd.isna(row.get("area_ratio")) else f"area x{row['area_ratio']:.1f}"
    return f"{int(row['count_after'])} object(s)"
