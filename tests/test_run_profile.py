"""benchmarks/default_run_profile.py: job time per rule from Snakemake's metadata records."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "default_run_profile.py"


def _module():
    spec = importlib.util.spec_from_file_location("default_run_profile", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_counts_each_job_once_and_sums_per_rule(tmp_path):
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    records = [  # two outputs of one job (same hash), one more job of that rule, one of another, one incomplete
        {"rule": "extract", "job_hash": 1, "starttime": 100.0, "endtime": 160.0, "incomplete": False},
        {"rule": "extract", "job_hash": 1, "starttime": 100.0, "endtime": 160.0, "incomplete": False},
        {"rule": "extract", "job_hash": 2, "starttime": 100.0, "endtime": 130.0, "incomplete": False},
        {"rule": "align", "job_hash": 3, "starttime": 160.0, "endtime": 220.0, "incomplete": False},
        {"rule": "align", "job_hash": 4, "starttime": 160.0, "endtime": None, "incomplete": True},
    ]
    for i, r in enumerate(records):
        (meta / f"r{i}").write_text(json.dumps(r))
    text = _module().profile(tmp_path)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:4]}
    assert rows["extract"][1:3] == ["2", "1.50"] and rows["align"][1:3] == ["1", "1.00"]
    assert rows["total"][1:3] == ["3", "2.50"]
    assert "wall time (first job start to last job end): 2.00 min" in text
    assert "on average: 1.25" in text
