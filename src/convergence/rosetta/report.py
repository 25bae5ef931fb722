"""The Rosetta stage's per-group outputs (one dataset x modality x unit kind): sets across trained models,
the null-excess table, and the figures; and the unit kinds of a modality side by side. Called by thin
Snakemake scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from convergence.rosetta.units import open_units
from convergence.utils import write_text

from . import figures
from .stage import DEFAULT_K_BACK, null_excess_table, read_summary, read_table, rosetta_sets_from_pairs, save_table


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
                 sets_path=None, kind: str | None = None) -> pd.DataFrame:
    """Write out['excess'] (csv), out['excess_png'], out['layers'], out['pairwise'], out['neurons'], out['md'].

    `kind`: the unit kind of the group ("mlp", "activation", "residual"), named in the tables and titles."""
    table = null_excess_table(summaries, controls)
    if kind is not None:
        table.insert(0, "unit_kind", kind)
    save_table(table, out["excess"])
    figures.null_excess_figure(table, out["excess_png"], title=f"{kind} units" if kind else None)
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


def compare_unit_kinds(modality: str, excess: Mapping[str, str | Path], sets: Mapping[str, str | Path],
                       out_table, out_png) -> pd.DataFrame:
    """The unit kinds of one modality side by side against their rotation-null bands.

    `excess[kind]`: the kind's null-excess table (`make_figures`); `sets[kind]`: its sets summary JSON
    (optional). Table (long, one row per kind x quantity): `unit_kind`, `what` (`matches` per trained pair
    and criterion, `sets` per mode), `model_a`, `model_b` (sets: the anchor and "all"), `criterion`,
    `observed`, `null`, `null_sd`, `z`, `p`, `draws`, and for matches `mean_r`, `null_mean_r`,
    `null_mean_r_sd`, `z_mean_r`, `p_mean_r`, `control` (the random-init control pair's matches), `shuffle`
    and `z_shuffle` (the shuffled-images null, vision). Figure: `figures.unit_kinds_figure`.
    """
    rows = []
    for kind, path in excess.items():
        t = read_table(path)
        for r in t.itertuples(index=False):
            rows.append({"unit_kind": kind, "what": "matches", "model_a": r.model_a, "model_b": r.model_b,
                         "criterion": r.criterion, "observed": r.matches, "null": r.null_matches,
                         "null_sd": r.null_matches_sd, "z": r.z_matches, "p": r.p_matches, "draws": r.null_draws,
                         "mean_r": r.mean_r, "null_mean_r": r.null_mean_r, "null_mean_r_sd": r.null_mean_r_sd,
                         "z_mean_r": r.z_mean_r, "p_mean_r": r.p_mean_r,
                         "control": r.control_matches, "shuffle": getattr(r, "shuffle_matches", float("nan")),
                         "z_shuffle": getattr(r, "z_shuffle", float("nan"))})
    for kind, path in sets.items():
        s = read_summary(path)
        for mode, count in (s.get("sets") or {}).items():
            band = (s.get("null") or {}).get(mode) or {}
            rows.append({"unit_kind": kind, "what": "sets", "model_a": s.get("anchor"), "model_b": "all",
                         "criterion": mode, "observed": count, "null": band.get("sets"), "null_sd": band.get("sets_sd"),
                         "z": band.get("z"), "p": band.get("p"), "draws": band.get("draws")})
    table = pd.DataFrame(rows)
    save_table(table, out_table)
    figures.unit_kinds_figure(table, out_png, title=f"{modality}: unit kinds against their rotation nulls")
    return table
