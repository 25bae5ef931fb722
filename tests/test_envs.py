"""The conda environment every rule names (snakemake --sdm conda) installs what pip install -e . does."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_conda_env_matches_the_package():
    env = yaml.safe_load((REPO / "envs/convergence.yaml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    torch_pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                     if d.startswith("torch"))
    assert torch_pin in pip  # the CPU wheel pin, not an unpinned multi-GB CUDA build
    # conda resolves pip paths against the env file's folder: `-e ..` is the repository itself.
    editable = next(d for d in pip if d.startswith("-e "))
    assert ((REPO / "envs" / editable.split()[1]).resolve() / "pyproject.toml").exists()


def test_every_rule_that_runs_code_names_the_env():
    checked = 0
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for rule in (c for c in re.split(r"^(?=rule )", smk.read_text(), flags=re.M) if c.startswith("rule ")):
            if re.search(r"\n    (script|shell|run):", rule):
                assert '\n    conda:\n        "../envs/convergence.yaml"' in rule, f"{smk.name}: {rule.splitlines()[0]}"
                checked += 1
    assert checked >= 16  # all but `all`
