"""The Rosetta stage's per-group outputs (one dataset x modality): sets across trained models, the
null-excess table, and the figures. Called by thin Snakemake scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from convergence.rosetta.units import open_units
from convergence.utils import write_text

from . import figures
from .stage import DEFAULT_K_BACK, null_excess_table, read_summary, rosetta_sets_from_pairs, save_table


def choose_anchor(units: Mapping[str, str | Path], configured: str | None = None) -> str:
    """The configured anchor, else the largest model (most parameters): the Rosetta reference's hub."""
    if configured:
        return configured
    return max(units, key=lambda m: (int(open_units(units[m]).attrs.get("n_params", 0)), m))


def build_sets(npz_by_pair: Mapping[tuple[str, str], str | Path], models: Sequence[str],
               units: Mapping[str, str | Path], out_table, summary_path, anchor: str | None = None,
               k_back: int = DEFAULT_K_BACK):
    """Reference anchor sets (top-1, reciprocated in the top `k_back`) and strict cycle-consistent sets."""
    anchor = choose_anchor({m: units[m] for m in models}, anchor)
    ordered = [anchor] + [m for m in models if m != anchor]
    return rosetta_sets_from_pairs(npz_by_pair, ordered, out_table, anchor=anchor, cycle=True, k_back=k_back,
                                   summary_path=summary_path)


def best_trained_pair(summaries: Mapping[tuple[str, str], str | Path], controls: Mapping[str, str | None]):
    """The trained pair with the largest excess of strict matches over its rotation null."""
    control_models = {c for c in controls.values() if c}
    best, best_excess = None, None
    for pair, path in summaries.items():
        if set(pair) & control_models:
            continue
        s = read_summary(path)
        excess = (s.get("strict") or {}).get("excess_matches") or 0
        if best is None or excess > best_excess:
            best, best_excess = pair, excess
    return best or next(iter(summaries))


def make_figures(modality: str, summaries: Mapping[tuple[str, str], str | Path],
                 matches: Mapping[tuple[str, str], str | Path], units: Mapping[str, str | Path],
                 samples_path, controls: Mapping[str, str | None], out: Mapping[str, str | Path],
                 sets_path=None) -> pd.DataFrame:
    """Write out['excess'] (csv), out['excess_png'], out['layers'], out['pairwise'], out['neurons'], out['md']."""
    table = null_excess_table(summaries, controls)
    save_table(table, out["excess"])
    figures.null_excess_figure(table, out["excess_png"])
    pair = best_trained_pair(summaries, controls)
    figures.match_summary_figure(summaries[pair], out["layers"])
    pairwise = figures.matches_as_sets(matches[pair], *pair)
    neurons = sets_path if sets_path is not None else pairwise
    pair_units = {m: units[m] for m in pair}
    if modality == "vision":
        figures.image_units_figure(pairwise, pair_units, samples_path, out["pairwise"], mode=None)
        figures.image_units_figure(neurons, units, samples_path, out["neurons"],
                                   mode="anchor" if sets_path is not None else None)
        write_text(out["md"], _sets_markdown(neurons, sets_path is not None))
    else:
        scratch = Path(out["md"]).with_suffix(".pairwise.md")
        figures.text_units_figure(pairwise, pair_units, out["pairwise"], scratch, samples_path=samples_path,
                                  mode=None)
        scratch.unlink(missing_ok=True)
        figures.text_units_figure(neurons, units, out["neurons"], out["md"], samples_path=samples_path,
                                  mode="anchor" if sets_path is not None else None)
    return table


def _sets_markdown(sets, are_sets: bool) -> str:
    t = sets if isinstance(sets, pd.DataFrame) else pd.read_csv(sets) if str(sets).endswith(".csv") \
        else pd.read_parquet(sets)
    kind = "Rosetta sets" if are_sets else "pairwise matches"
    head = t.head(20)
    lines = [f"# Top {kind}", "", f"{len(t)} in all; the 20 with the largest mean r:", "",
             "```", head.to_string(index=False), "```"]
    return "\n".join(lines) + "\n"
