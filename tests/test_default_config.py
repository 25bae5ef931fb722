"""The embedded default runs each of the three studies; config/full.yaml is a superset of it (dry runs)."""

import re
import subprocess
import sys

import pytest

from workflow import REPO, local_env

pytestmark = pytest.mark.slow


def dry_run(tmp_path, *configs: str) -> dict[str, int]:
    """Job counts of a fresh run of the repository's config files (named: the Snakefile's own is relative to
    the working directory, a temporary one here)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "2",
           "--configfile", *(str(REPO / "config" / c) for c in configs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=local_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:", 1)[1], flags=re.M)}


def test_the_default_runs_every_study_and_the_full_study_contains_it(tmp_path):
    default = dry_run(tmp_path / "default", "config.yaml")
    for rule in ("extract_activations", "align_pair", "correlate_pair", "rosetta_sets", "oocr_finetune",
                 "oocr_evaluate", "summarize_run"):  # PRH, Rosetta neurons, OOCR, the findings
        assert default.get(rule, 0) > 0, rule
    full = dry_run(tmp_path / "full", "config.yaml", "full.yaml")
    assert all(full.get(rule, 0) >= n for rule, n in default.items()), (default, full)
    assert full["train_vision_model"] > 0 and full["train_generator"] > 0  # the zoo and the generator stage
    assert full["oocr_finetune"] == 10 and full["total"] > default["total"]
