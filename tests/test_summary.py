"""results/summary.md: numbers taken from the stages' tables, grouped as a reader compares them."""

import pandas as pd
import pytest

from convergence.summary import alignment_overview, markdown_table, summary_lines, update_readme, write_summary


def alignment_table():
    rows = [  # (a, b, modality a, modality b, init a, init b, score, calibrated, p)
        ("lm1", "lm2", "language", "language", "pretrained", "pretrained", 0.50, 0.40, 0.005),
        ("lm1", "lm3", "language", "language", "pretrained", "pretrained", 0.30, 0.20, 0.005),
        ("lm1", "lm1r", "language", "language", "pretrained", "random", 0.10, 0.05, 0.20),
        ("lm1", "vis", "language", "vision", "pretrained", "pretrained", 0.20, 0.10, 0.01),
        ("px", "lm1", "vision", "language", "baseline", "pretrained", 0.08, 0.00, 0.60),
    ]
    cols = ["model_a", "model_b", "modality_a", "modality_b", "init_a", "init_b", "score", "calibrated_score",
            "p_value"]
    t = pd.DataFrame(rows, columns=cols)
    t["n_samples"], t["p_floor"] = 100, 1 / 201
    return t


def test_overview_groups_pairs_by_kind_and_what_they_hold():
    o = alignment_overview(alignment_table()).set_index(["pairs", "holds"])
    ll = o.loc[("language-language", "trained")]
    assert ll["n"] == 2 and ll["raw mean"] == pytest.approx(0.40) and ll["calibrated mean"] == pytest.approx(0.30)
    assert ll["beyond null (p<0.05)"] == "2/2"
    assert o.loc[("language-language", "with control"), "raw mean"] == pytest.approx(0.10)
    assert o.loc[("language-vision", "with baseline"), "beyond null (p<0.05)"] == "0/1"
    assert list(o.index.get_level_values("holds")[:2]) == ["trained", "with control"]  # trained first


def test_markdown_table_formats_and_marks_missing():
    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [0.12345], "c": [float("nan")], "d": [3]}))
    assert text.splitlines() == ["| a | b | c | d |", "|---|---|---|---|", "| x\\|y | 0.123 | – | 3 |"]


def test_summary_reads_every_stage_table(tmp_path):
    root = tmp_path / "results"
    (root / "alignment/photos").mkdir(parents=True)
    alignment_table().to_csv(root / "alignment/photos/mutual_knn.csv", index=False)
    pd.DataFrame([{"kind": "control", "claim": "c", "pair": "lm1__lm2", "versus": "lm1__lm1r", "estimate": 0.4,
                   "ci_low": 0.3, "ci_high": 0.5, "q_value": 0.01, "verdict": "supported"},
                  {"kind": "baseline", "claim": "c", "pair": "lm1__vis", "versus": "px__lm1", "estimate": -0.1,
                   "ci_low": -0.2, "ci_high": 0.0, "q_value": 0.04, "verdict": "reversed"}]
                 ).to_csv(root / "alignment/photos/mutual_knn_claims.csv", index=False)
    (root / "rosetta/photos/mlp").mkdir(parents=True)
    pd.DataFrame([{"model_a": "lm1", "model_b": "lm2", "criterion": "strict", "matches": 42, "null_matches": 30.5,
                   "null_matches_sd": 2.0, "z_matches": 5.75, "p_matches": 1 / 21, "control_matches": 12},
                  {"model_a": "lm1", "model_b": "lm2", "criterion": "relaxed", "matches": 99}]
                 ).to_csv(root / "rosetta/photos/mlp/language_null_excess.csv", index=False)
    (root / "oocr").mkdir()
    pd.DataFrame([{"task": "parity", "question_type": "in_distribution", "model": "m", "condition": c, "score": s,
                   "chance": 0.5, "n": 12, "n_seeds": 2, "status": "not_learned" if c == "finetuned" else None}
                  for c, s in (("finetuned", 0.52), ("untuned", 0.5), ("icl", 0.61))]
                 ).to_csv(root / "oocr/summary.csv", index=False)
    inputs = {"alignment_tables": [str(root / "alignment/photos/mutual_knn.csv")],
              "alignment_claims": [str(root / "alignment/photos/mutual_knn_claims.csv")],
              "rosetta_excess": [str(root / "rosetta/photos/mlp/language_null_excess.csv")],
              "oocr_summary": str(root / "oocr/summary.csv")}
    text = "\n".join(summary_lines(**inputs))
    assert "### photos: mutual_knn (N = 100, 5 model pairs)" in text
    assert "| language-language | trained | 2 | 0.400 |" in text
    assert "| kind | reversed | supported |\n|---|---|---|\n| baseline | 1 | 0 |\n| control | 0 | 1 |" in text
    assert "| lm1 | lm2 | 42 | 30.500 | 2.000 | 5.750 | 0.048 | 12 |" in text  # the strict row only
    assert "### Rosetta neurons, photos (language, MLP neurons): strict mutual best buddies" in text
    assert "| parity | in_distribution | m | 0.520 | 0.610 | 0.500 | 0.500 | 12 | 2 | not_learned |" in text
    md, html = write_summary(inputs, tmp_path / "s.md", tmp_path / "s.html"), tmp_path / "s.html"
    assert md.read_text().startswith("# What the run finds") and "<table>" in html.read_text()

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- summary:start (written by `python -m convergence.summary`, from "
                      "results/summary.md) -->\nold numbers\n<!-- summary:end -->\nrest\n")
    update_readme(readme, md)
    new = readme.read_text()
    assert "old numbers" not in new and "#### photos: mutual_knn" in new and new.endswith("<!-- summary:end -->\nrest\n")
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no block between"):
        update_readme(readme, md)
