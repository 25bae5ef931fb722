"""Figures of the Rosetta stage (matplotlib Agg; every file written atomically).

- `image_units_figure`: for the top Rosetta sets (or pairwise matches), the input image and, side by
  side, each model's activation map of its matched unit upsampled over it (bilinear to the image size,
  alpha overlay), for the images where the anchor unit fires most (its maximum over cells).
  The maps are coloured on each unit's own range over the whole dataset, so maps of one unit are
  comparable across images. The overlay assumes the model saw the whole image (resize, no crop).
- `text_units_figure`: for matched units, each model's top-activating words in context (the text with
  the word in [brackets]), models side by side, as a PNG and a Markdown file (word in **bold**).
- `match_summary_figure`: matches per layer pair (heatmap) next to the rotation null's, and their mean r.
- `null_excess_figure`: per trained pair, matches next to the rotation null's band (mean ± 2 SD over its
  draws) and the random-init control.
- `unit_kinds_figure`: the unit kinds of a modality (MLP neurons, residual coordinates) side by side, each
  observed value against its own null band, for matches per pair and for the set counts.

Unit selections come as a table with columns `{model}_layer` and `{model}_neuron` per model and a
`mean_r` (the Rosetta sets table of `rosetta_sets_from_pairs`); `matches_as_sets` turns a `match_units`
table into that form for a single pair.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from convergence.rosetta.units import open_units, units_array  # noqa: E402
from convergence.utils import save_figure, write_text  # noqa: E402

from .stage import read_summary, read_table, set_models  # noqa: E402


# ---------------------------------------------------------------- unit selections


def matches_as_sets(matches: pd.DataFrame | str | Path, model_a: str, model_b: str,
                    kind: str = "strict") -> pd.DataFrame:
    """A `match_units` table (one kind of match) as a sets-like table for the figure functions."""
    table = matches if isinstance(matches, pd.DataFrame) else read_table(matches)
    table = table[table["kind"] == kind].sort_values("r", ascending=False, key=np.abs)
    return pd.DataFrame({
        "mode": f"{kind} matches", "set_id": np.arange(len(table)), "anchor": model_a,
        f"{model_a}_layer": table["layer_a"].values, f"{model_a}_neuron": table["neuron_a"].values,
        f"{model_b}_layer": table["layer_b"].values, f"{model_b}_neuron": table["neuron_b"].values,
        f"{model_a}_r": 1.0, f"{model_b}_r": table["r"].values, "mean_r": table["r"].values,
    })


def _selection(sets: pd.DataFrame | str | Path, models: Sequence[str] | None, mode: str | None, top: int):
    table = sets if isinstance(sets, pd.DataFrame) else read_table(sets)
    models = list(models) if models is not None else _table_models(table)
    if mode is not None and "mode" in table and (table["mode"] == mode).any():
        table = table[table["mode"] == mode]
    table = table.sort_values("mean_r", ascending=False).head(int(top)).reset_index(drop=True)
    anchor = str(table["anchor"].iloc[0]) if "anchor" in table and len(table) else models[0]
    return table, models, anchor


def _table_models(table: pd.DataFrame) -> list[str]:
    models = set_models(table)
    if not models:
        models = [c[: -len("_layer")] for c in table.columns if c.endswith("_layer")]
    return models


def gather_units(path: str | Path, units: Sequence[tuple[int, int]]) -> np.ndarray:
    """Activations `[positions, len(units)]` float32 of (layer, neuron) units, one pass over the store."""
    ds = open_units(path)
    layers = [int(x) for x in ds["layer"].values]
    missing = [u for u in units if int(u[0]) not in layers]
    if missing:
        raise ValueError(f"{path} holds layers {layers}, not the layers of units {missing}")
    slots = np.array([layers.index(int(u[0])) for u in units], np.int64)
    neurons = np.array([int(u[1]) for u in units], np.int64)
    array = units_array(path)
    step = int(array.chunks[0])
    out = np.empty((array.shape[0], len(units)), np.float32)
    for start in range(0, array.shape[0], step):
        block = np.asarray(array[start:start + step])
        out[start:start + len(block)] = block[:, slots, neurons]
    return out


def _unit_values(units: Mapping[str, str | Path], table: pd.DataFrame, models: Sequence[str]) -> dict[str, np.ndarray]:
    """Per model: `[positions, rows]` activations of that model's unit in each row of `table`."""
    values = {}
    for m in models:
        pairs = list(zip(table[f"{m}_layer"].astype(int), table[f"{m}_neuron"].astype(int)))
        values[m] = gather_units(units[m], pairs)
    return values


def _row_label(row, models: Sequence[str], anchor: str) -> str:
    mode = f"{row['mode']} " if "mode" in row and isinstance(row["mode"], str) else ""
    return f"{mode}#{int(row['set_id']) if 'set_id' in row else row.name}  mean r {row['mean_r']:.2f}"


def _unit_name(row, m: str) -> str:
    return f"L{int(row[f'{m}_layer'])} n{int(row[f'{m}_neuron'])}"


# ---------------------------------------------------------------- images


def image_units_figure(sets, units: Mapping[str, str | Path], samples_path: str | Path, out_path: str | Path, *,
                       models: Sequence[str] | None = None, mode: str | None = "anchor", top_sets: int = 4,
                       top_images: int = 3, alpha: float = 0.55, cmap: str = "jet") -> Path:
    """Input images with each model's matched-unit activation map over them (see the module doc).

    `sets`: a Rosetta sets table (or `matches_as_sets(...)`), path or DataFrame; `units[m]`: model m's
    units store (vision, cell positions); `samples_path`: the dataset's samples.parquet (image paths).
    One row per (set, image): the `top_images` images where the anchor unit's maximum is largest.
    """
    from PIL import Image

    from convergence.datasets import read_samples

    table, models, anchor = _selection(sets, models, mode, top_sets)
    first = open_units(units[anchor])
    if first.attrs.get("positions") != "cell":
        raise ValueError(f"{units[anchor]} holds {first.attrs.get('positions')} positions; image figures need "
                         "vision units (grid cells); use text_units_figure for language models")
    grid = int(first.attrs["grid"])
    cells = grid * grid
    sample_ids = first["sample_id"].values[::cells].astype(object)
    df, _ = read_samples(samples_path)
    image_of = dict(zip(df["sample_id"], df["image"]))
    values = _unit_values(units, table, models) if len(table) else {}
    n_rows = max(1, len(table) * top_images)
    fig, axes = plt.subplots(n_rows, 1 + len(models), figsize=(1.9 * (1 + len(models)), 1.9 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(table):
        axes[0, 0].text(0.5, 0.5, "no matched units", ha="center", va="center")
        return save_figure(fig, out_path)
    for s, row in table.iterrows():
        anchor_map = values[anchor][:, s].reshape(-1, cells)
        best = np.argsort(-anchor_map.max(1), kind="stable")[:top_images]
        for j, sample in enumerate(best):
            r = s * top_images + j
            image = np.asarray(Image.open(image_of[sample_ids[sample]]).convert("RGB"))
            axes[r, 0].imshow(image)
            axes[r, 0].set_title(f"{_row_label(row, models, anchor)}\n{sample_ids[sample]}", fontsize=6)
            for c, m in enumerate(models, start=1):
                v = values[m][:, s]
                lo, hi = float(v.min()), float(v.max())
                cell_map = torch.from_numpy(v.reshape(-1, cells)[sample].reshape(1, 1, grid, grid).copy())
                up = F.interpolate(cell_map, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
                axes[r, c].imshow(image)
                axes[r, c].imshow((up - lo) / (hi - lo or 1.0), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
                axes[r, c].set_title(f"{m}{' (anchor)' if m == anchor else ''}\n{_unit_name(row, m)}  "
                                     f"r {row.get(f'{m}_r', np.nan):.2f}", fontsize=6)
    fig.suptitle(f"Rosetta units over their top images (anchor {anchor})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save_figure(fig, out_path)


# ---------------------------------------------------------------- text


def _contexts(ds, texts: Mapping[str, str] | None, positions: np.ndarray,
              context_chars: int) -> list[tuple[str, str, str]]:
    """(left context, word, right context) of each position."""
    sample_ids = ds["sample_id"].values.astype(object)
    words = ds["word"].values.astype(object)
    starts, ends = ds["char_start"].values, ds["char_end"].values
    out = []
    for p in positions.tolist():
        sid = sample_ids[p]
        if texts is not None and sid in texts:
            text = texts[sid]
            left, word, right = text[: starts[p]], text[starts[p]: ends[p]], text[ends[p]:]
        else:  # from the store alone: the sample's words joined by spaces
            same = np.flatnonzero(sample_ids == sid)
            left = " ".join(words[same[same < p]].tolist())
            right = " ".join(words[same[same > p]].tolist())
            word, left, right = words[p], left + " " if left else "", " " + right if right else ""
        if len(left) > context_chars:
            left = "…" + left[-context_chars:]
        if len(right) > context_chars:
            right = right[:context_chars] + "…"
        out.append((left, word, right))
    return out


def text_units_figure(sets, units: Mapping[str, str | Path], out_png: str | Path, out_md: str | Path, *,
                      samples_path: str | Path | None = None, models: Sequence[str] | None = None,
                      mode: str | None = "anchor", top_sets: int = 6, top_words: int = 5,
                      context_chars: int = 60) -> tuple[Path, Path]:
    """Each model's top-activating words in context for matched units, side by side (PNG + Markdown).

    `units[m]`: model m's units store (language, word positions). The text around a word is taken from
    `samples_path` (the dataset's samples.parquet) when given, else rebuilt from the store's words.
    """
    table, models, anchor = _selection(sets, models, mode, top_sets)
    stores = {m: open_units(units[m]) for m in models}
    for m, ds in stores.items():
        if ds.attrs.get("positions") != "word":
            raise ValueError(f"{units[m]} holds {ds.attrs.get('positions')} positions; text figures need "
                             "language units (words); use image_units_figure for vision models")
    texts = None
    if samples_path is not None:
        from convergence.datasets import read_samples

        df, _ = read_samples(samples_path)
        texts = dict(zip(df["sample_id"], df["text"]))
    values = _unit_values(units, table, models) if len(table) else {}
    md = [f"# Top-activating words of matched units (anchor {anchor})", ""]
    n_rows = max(1, len(table))
    fig, axes = plt.subplots(n_rows, len(models), squeeze=False,
                             figsize=(4.2 * len(models), (0.45 + 0.15 * top_words) * n_rows))
    for ax in axes.flat:
        ax.axis("off")
    if not len(table):
        axes[0, 0].text(0.5, 0.5, "no matched units", ha="center", va="center")
        md.append("No matched units.")
    for s, row in table.iterrows():
        md += [f"## {_row_label(row, models, anchor)}", "",
               "| rank | " + " | ".join(f"{m} ({_unit_name(row, m)}, r {row.get(f'{m}_r', np.nan):.2f})"
                                        for m in models) + " |",
               "|---|" + "---|" * len(models)]
        cells = {}
        for c, m in enumerate(models):
            v = values[m][:, s]
            top = np.argsort(-v, kind="stable")[:top_words]
            contexts = _contexts(stores[m], texts, top, context_chars)
            cells[m] = [(ctx, float(v[p])) for ctx, p in zip(contexts, top.tolist())]
            lines = [f"{value:+.2f}  " + textwrap.shorten(f"{left}[{word}]{right}", 70, placeholder="…")
                     for (left, word, right), value in cells[m]]
            ax = axes[s, c]
            ax.set_title(f"{m}{' (anchor)' if m == anchor else ''}  {_unit_name(row, m)}  "
                         f"r {row.get(f'{m}_r', np.nan):.2f}   [{_row_label(row, models, anchor)}]", fontsize=7,
                         loc="left")
            ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=6.5, family="monospace",
                    transform=ax.transAxes)
        for rank in range(top_words):
            entries = []
            for m in models:
                if rank < len(cells[m]):
                    (left, word, right), value = cells[m][rank]
                    entries.append(_md_escape(f"{left}**{word}**{right}") + f" ({value:+.2f})")
                else:
                    entries.append("")
            md.append(f"| {rank + 1} | " + " | ".join(entries) + " |")
        md.append("")
    fig.tight_layout()
    return save_figure(fig, out_png), write_text(out_md, "\n".join(md) + "\n")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- summaries


def match_summary_figure(summary, out_path: str | Path, criterion: str = "strict") -> Path:
    """Matches per layer pair, observed vs the rotation null, and their mean r (one `match_units` summary)."""
    s = read_summary(summary)
    pairs = pd.DataFrame(s["layer_pairs"])
    la, lb = sorted(pairs["layer_a"].unique()), sorted(pairs["layer_b"].unique())

    def grid(column):
        out = np.full((len(la), len(lb)), np.nan)
        if column in pairs:
            for row in pairs.itertuples(index=False):
                value = getattr(row, column)
                out[la.index(row.layer_a), lb.index(row.layer_b)] = np.nan if value is None else value
        return out

    panels = [(grid(criterion), f"{criterion} matches"), (grid(f"null_{criterion}"), "rotation null"),
              (grid(f"{criterion}_mean_r"), "mean r of matches")]
    vmax = np.nanmax([np.nanmax(p[0]) if np.isfinite(p[0]).any() else 0 for p in panels[:2]] + [1])
    fig, axes = plt.subplots(1, 3, figsize=(3.2 * 3 + 1, 0.35 * len(la) + 2.2))
    for ax, (values, title) in zip(axes, panels):
        mean_r = title.startswith("mean r")
        im = ax.imshow(values, cmap="magma" if mean_r else "viridis", aspect="auto",
                       vmin=None if mean_r else 0, vmax=None if mean_r else vmax)
        ax.set_xticks(range(len(lb)), lb, fontsize=6)
        ax.set_yticks(range(len(la)), la, fontsize=6)
        ax.set_xlabel(f"{s.get('model_b')} layer", fontsize=7)
        ax.set_ylabel(f"{s.get('model_a')} layer", fontsize=7)
        ax.set_title(title, fontsize=8)
        if values.size <= 144:  # small grids: print the numbers, dark on the light end of the colour map
            lo, hi = im.get_clim()
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    light = (v - lo) / ((hi - lo) or 1.0) > 0.6
                    ax.text(j, i, f"{v:.2f}" if mean_r else f"{v:.0f}", ha="center", va="center", fontsize=6,
                            color="black" if light else "white")
        fig.colorbar(im, ax=ax, fraction=0.046)
    rep = s.get(criterion) or {}
    fig.suptitle(
        f"{s.get('model_a')} vs {s.get('model_b')} ({s.get('dataset')}): {rep.get('matches_observed')} {criterion} "
        f"matches, null {_fmt(rep.get('matches_null'))} ± {_fmt(rep.get('matches_null_sd'))} "
        f"(z {_fmt(rep.get('z_matches'))}, p {_fmt(rep.get('p_matches'))}), mean r {_fmt(rep.get('mean_r_observed'))} "
        f"(null {_fmt(rep.get('mean_r_null'))}), {rep.get('above_null_max', '-')} above the null's max |r|",
        fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, out_path)


def null_excess_figure(table: pd.DataFrame | str | Path, out_path: str | Path, criterion: str = "strict",
                       title: str | None = None) -> Path:
    """Grouped bars per trained pair: matches observed, rotation null, random-init control (`null_excess_table`),
    and the shuffled-images null where the table has it (vision)."""
    t = table if isinstance(table, pd.DataFrame) else read_table(table)
    t = t[t["criterion"] == criterion].reset_index(drop=True)
    labels = [f"{a} × {b}" for a, b in zip(t["model_a"], t["model_b"])]
    x = np.arange(len(t))
    shuffled = "shuffle_matches" in t and pd.to_numeric(t["shuffle_matches"], errors="coerce").notna().any()
    bars = [("matches", "mean_r", "observed"), ("null_matches", "null_mean_r", "rotation null (mean ± 2 SD)"),
            ("control_matches", "control_mean_r", "random-init control")]
    if shuffled:
        bars.append(("shuffle_matches", "shuffle_mean_r", "shuffled images (mean ± 2 SD)"))
    width = 0.8 / len(bars)
    fig, axes = plt.subplots(1, 2, figsize=(max(5.0, 0.7 * len(t) + 3) * 2, 3.6), squeeze=False)
    for ax, (which, title) in zip(axes[0], [(0, "matches"), (1, "mean r of matches")]):
        for i, bar in enumerate(bars):
            col, name = bar[which], bar[2]
            sd = t.get(f"{col}_sd") if col in ("null_matches", "null_mean_r", "shuffle_matches") else None
            yerr = 2 * pd.to_numeric(sd, errors="coerce") if sd is not None else None
            ax.bar(x + (i - (len(bars) - 1) / 2) * width, pd.to_numeric(t[col], errors="coerce"), width, label=name,
                   yerr=yerr, capsize=2)
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{criterion}: {title}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_path)


def unit_kinds_figure(table: pd.DataFrame | str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Unit kinds side by side (`report.compare_unit_kinds` table): per panel (strict matches, relaxed
    matches, mean r of strict matches, set counts) and per pair or set mode, each kind's rotation null as a
    band (mean ± 2 SD over the draws, the null mean marked) and its observed value as a dot, with z."""
    t = table if isinstance(table, pd.DataFrame) else read_table(table)
    kinds = list(dict.fromkeys(t["unit_kind"]))
    colours = dict(zip(kinds, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    matches = t[t["what"] == "matches"]
    panels = [(matches[matches["criterion"] == c], "observed", "null", "null_sd", "z", f"{c} matches")
              for c in ("strict", "relaxed")]
    panels.append((matches[matches["criterion"] == "strict"], "mean_r", "null_mean_r", "null_mean_r_sd", "z_mean_r",
                   "mean r of strict matches"))
    sets = t[t["what"] == "sets"]
    if len(sets):
        panels.append((sets, "observed", "null", "null_sd", "z", "Rosetta sets"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(len(kinds), 1)
    for ax, (part, obs, null, sd, z, name) in zip(axes[0], panels):
        is_sets = name.startswith("Rosetta sets")
        labels = list(dict.fromkeys(part["criterion"] if is_sets else part["model_a"] + " × " + part["model_b"]))
        for i, kind in enumerate(kinds):
            rows = part[part["unit_kind"] == kind]
            keys = rows["criterion"] if is_sets else rows["model_a"] + " × " + rows["model_b"]
            x = np.array([labels.index(k) for k in keys], float) + (i - (len(kinds) - 1) / 2) * width
            mean = pd.to_numeric(rows[null], errors="coerce").to_numpy(float)
            spread = 2 * pd.to_numeric(rows[sd], errors="coerce").fillna(0).to_numpy(float)
            ax.bar(x, 2 * spread, width * 0.9, bottom=mean - spread, color=colours[kind], alpha=0.25,
                   label=f"{kind}: null mean ± 2 SD")
            ax.scatter(x, mean, marker="_", s=120, color=colours[kind])
            observed = pd.to_numeric(rows[obs], errors="coerce").to_numpy(float)
            ax.scatter(x, observed, s=22, color=colours[kind], zorder=3, label=f"{kind}: observed")
            for xi, yi, zi in zip(x, observed, pd.to_numeric(rows[z], errors="coerce")):
                if np.isfinite(yi):
                    ax.annotate(f"z {zi:.1f}" if np.isfinite(zi) else "z -", (xi, yi), textcoords="offset points",
                                xytext=(0, 5), ha="center", fontsize=6)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if not is_sets else 0, ha="right" if not is_sets else
                      "center", fontsize=7)
        if not name.startswith("mean r"):
            ax.set_yscale("symlog", linthresh=10)
        ax.set_title(name, fontsize=9)
    axes[0, 0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_path)


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3g}"


__all__ = ["gather_units", "image_units_figure", "match_summary_figure", "matches_as_sets", "null_excess_figure",
           "text_units_figure", "unit_kinds_figure"]
