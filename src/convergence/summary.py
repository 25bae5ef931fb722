"""What a run finds, in numbers: `results/summary.md` (and `.html` for the report), written by the pipeline
from the stages' own tables, never typed by hand.

    write_summary(inputs, out_md, out_html)      # the summarize_run rule
    update_readme(readme, summary_md)            # copy the summary into README's marked block

Sections (each only where the run has that stage):
- alignment, per dataset and metric: mean raw and calibrated scores by kind of pair (language-language,
  vision-vision, language-vision) and by what the pair holds (two trained models, a random-init control,
  an input baseline), so trained vs control vs baseline reads at a glance; then the claims table's
  verdicts per kind of claim, and its control and baseline claims one by one;
- Rosetta neurons: each trained pair's strict mutual matches against the rotation null band and the
  random-init control;
- the generator: G-D matches against its nulls, and the edit table;
- OOCR: each task and question type, fine-tuned vs untuned vs in-context, with chance and the flags.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from convergence.utils import write_text

CLASSES = ("trained", "with control", "with baseline")
README_START = "<!-- summary:start (written by `python -m convergence.summary`, from results/summary.md) -->"
README_END = "<!-- summary:end -->"


def _fmt(x, digits: int = 3) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no extra dependency), numbers at `digits` decimals, '–' for missing."""
    if frame.empty:
        return "_(none)_"
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v, digits).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


# ---------------------------------------------------------------------------------------- alignment


def pair_class(row) -> str:
    """What a pair holds: an input baseline, a random-init control, or two trained models."""
    inits = (row["init_a"], row["init_b"])
    if "baseline" in inits:
        return "with baseline"
    if "random" in inits:
        return "with control"
    return "trained"


def alignment_overview(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind of pair and class: pairs, mean and range of the best raw score, mean calibrated score,
    and how many pairs beat their calibrated null (p below 0.05)."""
    t = table.copy()
    t["pairs"] = ["-".join(sorted((a, b))) for a, b in zip(t["modality_a"], t["modality_b"])]
    t["holds"] = t.apply(pair_class, axis=1)
    rows = []
    for (kind, holds), g in t.groupby(["pairs", "holds"], sort=False):
        rows.append({"pairs": kind, "holds": holds, "n": len(g), "raw mean": g["score"].mean(),
                     "raw min": g["score"].min(), "raw max": g["score"].max(),
                     "calibrated mean": g["calibrated_score"].mean(),
                     "beyond null (p<0.05)": f"{int((g['p_value'] < 0.05).sum())}/{len(g)}"})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {c: i for i, c in enumerate(CLASSES)}
    return out.sort_values(["pairs", "holds"], key=lambda s: s.map(order) if s.name == "holds" else s,
                           ignore_index=True)


def claims_overview(claims: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per kind of claim."""
    if claims.empty:
        return pd.DataFrame()
    counts = claims.groupby(["kind", "verdict"]).size().unstack(fill_value=0)
    return counts.reset_index()


def claims_detail(claims: pd.DataFrame, kinds=("control", "baseline", "competence")) -> pd.DataFrame:
    part = claims[claims["kind"].isin(kinds) & (claims["verdict"] != "skipped")]
    cols = ["kind", "pair", "versus", "estimate", "ci_low", "ci_high", "q_value", "verdict"]
    return part[cols].reset_index(drop=True)


def alignment_section(dataset: str, metric: str, table_csv, claims_csv) -> list[str]:
    table = pd.read_csv(table_csv)
    claims = pd.read_csv(claims_csv) if claims_csv else pd.DataFrame()
    n = int(table["n_samples"].iloc[0]) if len(table) else 0
    floor = float(table["p_floor"].iloc[0]) if len(table) else float("nan")
    lines = [f"### {dataset}: {metric} (N = {n}, {len(table)} model pairs)", "",
             "Best layer pair per model pair (raw: the max over layer pairs; calibrated: that max against the "
             f"same search under permuted correspondence, 0 = no better than chance; p floor {_fmt(floor)}).", "",
             markdown_table(alignment_overview(table)), ""]
    if len(claims):
        lines += ["Claims (paired half-sample bootstrap; BH q-values over the table):", "",
                  markdown_table(claims_overview(claims)), ""]
        detail = claims_detail(claims)
        if len(detail):
            lines += ["<details><summary>Every tested control, baseline and competence claim</summary>", "",
                      markdown_table(detail), "", "</details>", ""]
    return lines


# ---------------------------------------------------------------------------------------- Rosetta

UNIT_KIND_NAMES = {"mlp": "MLP neurons", "activation": "post-nonlinearity units",
                   "residual": "hidden states / feature maps"}


def rosetta_section(dataset: str, modality: str, excess_csv, units: str | None = None) -> list[str]:
    t = pd.read_csv(excess_csv)
    t = t[t["criterion"] == "strict"] if "criterion" in t else t
    if t.empty:
        return []
    cols = {"model_a": "model a", "model_b": "model b", "matches": "matches", "null_matches": "null mean",
            "null_matches_sd": "null SD", "z_matches": "z", "p_matches": "p", "control_matches": "control",
            "shuffle_matches": "shuffled images", "z_shuffle": "z shuffled",
            "mean_r": "mean r", "null_mean_r": "null mean r"}
    shuffled = "shuffle_matches" in t and t["shuffle_matches"].notna().any()
    frame = t[[c for c in cols if c in t and (shuffled or not c.startswith(("shuffle", "z_shuffle")))]]
    frame = frame.rename(columns=cols)
    for count in ("matches", "control"):
        if count in frame:
            frame[count] = frame[count].astype("Int64")
    kind = f", {UNIT_KIND_NAMES.get(units, units)}" if units else ""
    also = (", and against shuffled images (B's maps on other images: same smoothness and layout, no shared "
            "content; mean over its draws and z)") if shuffled else ""
    return [f"### Rosetta neurons, {dataset} ({modality}{kind}): strict mutual best buddies", "",
            "Observed matches of each trained pair against the rotation null (mean and SD over its draws, z, "
            f"empirical p), against the same pair with a random-init control{also}.", "",
            markdown_table(frame), ""]


# ---------------------------------------------------------------------------------------- generator


def generator_section(name: str, edit_summary_csv, matches_csv=None) -> list[str]:
    lines = [f"### Generator {name}", ""]
    if matches_csv and Path(matches_csv).exists():
        m = pd.read_csv(matches_csv)
        cols = [c for c in ("model", "init", "criterion", "matches", "mean_r", "rotation_matches",
                            "shuffled_images_matches", "random_generator_matches", "random_model_matches",
                            "above_rotation_max_r", "above_shuffled_images_max_r", "above_random_generator_max_r")
                if c in m]
        lines += ["G–D Rosetta matches (strict; reference: best, reciprocated in the top k_back) against the rotation "
                  "null, the shuffled-images null, the random-init generator and the random-init model; `above_*_max_r`: "
                  "matches stronger than any correlation in that null's matrix:", "",
                  markdown_table(m[cols], 2), ""]
    if edit_summary_csv and Path(edit_summary_csv).exists():
        lines += ["Edits through Rosetta-neuron maps (measured on the scenes' known objects):", "",
                  markdown_table(pd.read_csv(edit_summary_csv)), ""]
    return lines


# ---------------------------------------------------------------------------------------- OOCR


def oocr_section(summary_csv) -> list[str]:
    s = pd.read_csv(summary_csv)
    if s.empty:
        return []
    keys = ["task", "question_type", "model"]
    wide = s.pivot_table(index=keys, columns="condition", values="score", aggfunc="first").reset_index()
    # chance, n and n_seeds are one per item set; status belongs to the fine-tuned rows (the others are ok)
    tuned = s[s["condition"] == "finetuned"] if (s["condition"] == "finetuned").any() else s
    first = s.groupby(keys, sort=False).first().reset_index()
    extra = [c for c in ("chance", "n", "n_seeds") if c in s]
    frame = wide.merge(first[keys + extra], on=keys)
    if "status" in s:
        frame = frame.merge(tuned.groupby(keys, sort=False)["status"].first().reset_index(), on=keys, how="left")
    if "status" in frame:
        frame["status"] = frame["status"].fillna("")
    comparisons = Path(summary_csv).with_name("comparisons.csv")  # written by the same job
    if comparisons.exists():
        c = pd.read_csv(comparisons)
        for baseline, g in c.groupby("baseline", sort=False):
            text = g.assign(**{f"ft - {baseline}": [f"{d:+.3f} (q {q:.2g})" for d, q in zip(g["difference"],
                                                                                           g["q_value"])]})
            frame = frame.merge(text[keys + [f"ft - {baseline}"]], on=keys, how="left")
    return ["### Inductive out-of-context reasoning", "",
            "Mean score per task and question type (95% CIs in results/oocr/summary.csv); `ft - untuned`, "
            "`ft - icl`: the fine-tuned score minus the baseline's, paired by item, with its BH q-value "
            "(results/oocr/comparisons.csv); `not_learned`: the fine-tuned in-distribution CI does not clear "
            "both chance and the untuned model, so the task's out-of-context rows are uninterpretable.", "",
            markdown_table(frame), ""]


# ---------------------------------------------------------------------------------------- the file


def _parse(path, pattern: str) -> dict | None:
    m = re.search(pattern, str(path))
    return m.groupdict() if m else None


def summary_lines(alignment_tables: Sequence, alignment_claims: Sequence = (), rosetta_excess: Sequence = (),
                  generator_edits: Sequence = (), generator_matches: Sequence = (), oocr_summary=None) -> list[str]:
    """The summary's markdown lines from the stages' outputs (paths as the rules name them)."""
    lines = ["# What the run finds", "",
             "Written by the pipeline (rule `summarize_run`) from the stages' own tables; every number below is "
             "in a file under results/.", ""]
    claims = {}
    for path in alignment_claims:
        key = _parse(path, r"alignment/(?P<dataset>[^/]+)/(?P<metric>[^/]+)_claims\.csv$")
        if key:
            claims[key["dataset"], key["metric"]] = path
    if alignment_tables:
        lines += ["## Kernel alignment", ""]
        for path in alignment_tables:
            key = _parse(path, r"alignment/(?P<dataset>[^/]+)/(?P<metric>[^/_]+(?:_[^/]+)?)\.csv$")
            lines += alignment_section(key["dataset"], key["metric"], path, claims.get((key["dataset"], key["metric"])))
    if rosetta_excess:
        lines += ["## Rosetta neurons", ""]
        for path in rosetta_excess:
            key = _parse(path, r"rosetta/(?P<dataset>[^/]+)/(?:(?P<units>mlp|activation|residual)/)?(?P<modality>[a-z]+)"
                               r"_null_excess\.csv$")
            lines += rosetta_section(key["dataset"], key["modality"], path, key["units"])
    if generator_edits or generator_matches:
        lines += ["## Rosetta neurons with a generator", ""]
        names = sorted({Path(p).parent.name for p in [*generator_edits, *generator_matches]})
        for name in names:
            edit = next((p for p in generator_edits if Path(p).parent.name == name), None)
            match = next((p for p in generator_matches if Path(p).parent.name == name), None)
            lines += generator_section(name, edit, match)
    if oocr_summary:
        lines += ["## Inductive out-of-context reasoning", ""] + oocr_section(oocr_summary)[2:]
    return lines


def write_summary(inputs: Mapping[str, Sequence | str | None], out_md, out_html=None) -> Path:
    text = "\n".join(summary_lines(**inputs)).rstrip() + "\n"
    write_text(out_md, text)
    if out_html:
        write_text(out_html, to_html(text))
    return Path(out_md)


def to_html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}</body></html>\n"


def update_readme(readme, summary_md) -> Path:
    """Replace README's block between the summary markers with the summary (its headings one level down)."""
    readme, text = Path(readme), Path(summary_md).read_text()
    content = readme.read_text()
    if README_START not in content or README_END not in content:
        raise ValueError(f"{readme} has no block between '{README_START}' and '{README_END}'")
    body = "\n".join(("#" + line if line.startswith("#") else line) for line in text.splitlines()[2:]).strip()
    head, rest = content.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    write_text(readme, f"{head}{README_START}\n{body}\n{README_END}{tail}")
    return readme


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Copy results/summary.md into README.md's marked block.")
    parser.add_argument("summary", nargs="?", default="results/summary.md")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    print(f"updated {update_readme(args.readme, args.summary)}")


if __name__ == "__main__":
    main()

