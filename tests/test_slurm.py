"""The workflow on a real Slurm scheduler (single node on localhost) gives the same outputs as a local run.

Starts slurmctld + slurmd with tests/slurm/cluster.sh (Debian's slurm-wlm and munge; `.ci/run` installs
them where it can) and skips with the script's reason where the daemons cannot start.
"""

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from workflow import REPO, snakemake

pytestmark = pytest.mark.slow
CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"
STATE = "/tmp/convergence-slurm"  # cluster.sh's default
SLURM_ENV = {**os.environ, "SLURM_TEST_STATE": STATE}


@pytest.fixture(scope="module")
def slurm_cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e .[test])")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=240, env=SLURM_ENV)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=60, env=SLURM_ENV)


def slurm_job_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True,
                         env=SLURM_ENV)
    return set(out.stdout.split())


def test_slurm_run_equals_local_run(slurm_cluster, tiny_models, tmp_path):
    config = {
        "datasets": {"tiny": {"sampler": "scenes", "n": 16, "seed": 5, "image_size": 32}},
        "models": {"bert": {"source": f"local:{tiny_models['bert']}"},
                   "llama": {"source": f"local:{tiny_models['llama']}"}},
        "alignment": {"metrics": {"mutual_knn": {"topk": 3}}, "n_boot": 5, "n_perm": 5},
        "rosetta": {"enabled": False},
    }
    same_threads = ["--set-threads", "extract_activations=2"]
    fat_rules = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]  # the same float operations on both sides
    snakemake(tmp_path / "local", config, *same_threads)
    before = slurm_job_ids()
    snakemake(tmp_path / "slurm", config, "--profile", str(REPO / "profiles" / "slurm"), "--slurm-no-account",
              "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--default-resources", "slurm_partition=debug", "mem_mb=500", "runtime=10", *same_threads,
              # The profile asks 4 CPUs for these rules; the test node may have 2 (Slurm would hold the job).
              "--set-resources", *(f"{rule}:cpus_per_task=1" for rule in fat_rules), timeout=600, env=SLURM_ENV)
    # Finished jobs stay listed (MinJobAge=3600): sampling, two extractions, one pair at least.
    assert len(slurm_job_ids() - before) >= 4, "jobs did not go through sbatch"
    for model in config["models"]:
        a = xr.open_zarr(tmp_path / f"local/results/activations/tiny/{model}.zarr")
        b = xr.open_zarr(tmp_path / f"slurm/results/activations/tiny/{model}.zarr")
        np.testing.assert_array_equal(a["activations"].values, b["activations"].values)
        assert a.attrs["params_sha256"] == b.attrs["params_sha256"]
    local = pd.read_csv(tmp_path / "local/results/alignment/tiny/mutual_knn.csv")
    slurm = pd.read_csv(tmp_path / "slurm/results/alignment/tiny/mutual_knn.csv")
    pd.testing.assert_frame_equal(local, slurm)
