"""The workflow on a real Slurm scheduler (single node on localhost) gives the same outputs as a local run.

tests/slurm/cluster.sh starts a private cluster (Debian's slurm-wlm and munge; `.ci/run` installs them
where it can): its own config through SLURM_CONF, its own state, spool, pid and log files, munge key and
socket, and free ports, all in a temporary folder of this run; it stops only the daemons it started, by
their pids, and refuses to start where a slurmctld already answers. Nothing outside that folder is
touched: an existing /etc/slurm/slurm.conf is checked to be left as it was.

Where the cluster cannot start (no packages, not root, a cluster already here) the tests skip with the
reason; with CONVERGENCE_REQUIRE_SLURM=1 (set by .ci/run where it runs as root) they fail instead, so CI
cannot pass without the real scheduler.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from workflow import REPO, snakemake

pytestmark = pytest.mark.slow
CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"
HOST_CONF = Path("/etc/slurm/slurm.conf")
REQUIRED = os.environ.get("CONVERGENCE_REQUIRE_SLURM") == "1"


def skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"CONVERGENCE_REQUIRE_SLURM=1, and the Slurm test cannot run: {reason}")
    pytest.skip(reason)


def fingerprint(path: Path):
    """Content and metadata of a file, None if absent: what a test must leave as it found."""
    if not path.exists():
        return None
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_mode, st.st_uid


def cluster(command: str, state: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), command, str(state)], capture_output=True, text=True,
                          timeout=240, env=env)


@pytest.fixture(scope="module")
def slurm_env():
    """The environment of a client of a private cluster started for this module."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        skip_or_fail("snakemake-executor-plugin-slurm is not installed (pip install -e .[test])")
    before = fingerprint(HOST_CONF)
    # A short path under /tmp: munge's socket path must fit in 108 bytes.
    state = Path(tempfile.mkdtemp(prefix="convergence-slurm-"))
    try:
        proc = cluster("start", state)
        if proc.returncode == 3:
            skip_or_fail(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        *_, path, conf = proc.stdout.strip().splitlines()
        assert conf == f"SLURM_CONF={state / 'slurm.conf'}" and path == f"PATH={state / 'bin'}", proc.stdout
        yield {**os.environ, "SLURM_CONF": conf.removeprefix("SLURM_CONF="),
               "PATH": os.pathsep.join([path.removeprefix("PATH="), os.environ["PATH"]])}
    finally:
        cluster("stop", state)
        assert not state.exists()
        assert fingerprint(HOST_CONF) == before, f"{HOST_CONF} changed"


def slurm_job_ids(env) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True,
                         env=env)
    return set(out.stdout.split())


def test_slurm_run_equals_local_run(slurm_env, tiny_models, tmp_path):
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
    before = slurm_job_ids(slurm_env)
    snakemake(tmp_path / "slurm", config, "--profile", str(REPO / "profiles" / "slurm"), "--slurm-no-account",
              "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--default-resources", "slurm_partition=debug", "mem_mb=500", "runtime=10", *same_threads,
              # The profile asks 4 CPUs for these rules; the test node may have 2 (Slurm would hold the job).
              "--set-resources", *(f"{rule}:cpus_per_task=1" for rule in fat_rules), timeout=600, env=slurm_env)
    # Finished jobs stay listed (MinJobAge=3600): sampling, two extractions, one pair at least.
    assert len(slurm_job_ids(slurm_env) - before) >= 4, "jobs did not go through sbatch"
    for model in config["models"]:
        a = xr.open_zarr(tmp_path / f"local/results/activations/tiny/{model}.zarr")
        b = xr.open_zarr(tmp_path / f"slurm/results/activations/tiny/{model}.zarr")
        np.testing.assert_array_equal(a["activations"].values, b["activations"].values)
        assert a.attrs["params_sha256"] == b.attrs["params_sha256"]
    local = pd.read_csv(tmp_path / "local/results/alignment/tiny/mutual_knn.csv")
    slurm = pd.read_csv(tmp_path / "slurm/results/alignment/tiny/mutual_knn.csv")
    pd.testing.assert_frame_equal(local, slurm)


def test_a_second_cluster_refuses_to_start_beside_one_that_answers(slurm_env, tmp_path):
    state = tmp_path / "second"
    proc = cluster("start", state, env=slurm_env)  # its clients see the running controller
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "SKIP: a slurmctld already answers here" in proc.stdout
    assert not state.exists()  # nothing started, nothing written


@pytest.fixture
def impostors(tmp_path):
    """Processes named like the daemons (a copy of `sleep` named munged): two of them, only one of which a pid
    file of the cluster folder names."""
    if sys.platform != "linux":
        pytest.skip("reads /proc")
    state = tmp_path / "state"
    state.mkdir()
    fake = tmp_path / "munged"
    shutil.copy(shutil.which("sleep"), fake)
    procs = [subprocess.Popen([str(fake), "300"]) for _ in range(2)]
    (state / "munged.pid").write_text(f"{procs[0].pid}\n")
    (state / "slurmd.pid").write_text(f"{procs[1].pid}\n")  # a pid that is not a slurmd: left alone
    yield state, procs
    for p in procs:
        p.kill()
        p.wait()


def test_stop_signals_only_the_daemons_its_pid_files_name(impostors):
    state, (ours, other) = impostors
    proc = cluster("stop", state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ours.wait(timeout=30) is not None  # named by munged.pid and named munged: stopped
    assert other.poll() is None  # named munged too, but only by slurmd.pid: untouched
    assert not state.exists()
