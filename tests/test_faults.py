"""Faults and determinism on the real workflow: two clean runs give identical results, and a run whose
jobs are SIGKILLed mid-work (an extraction while it writes its store, an alignment while it bootstraps,
the whole Snakemake process tree, a LoRA fine-tuning between steps) and is then simply rerun ends with
results identical to the clean run's, with no temporary leftovers.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import xarray as xr

from convergence.utils import TMP_TAG, stale_tmp_siblings
from workflow import snakemake, snakemake_command

pytestmark = pytest.mark.slow

TIMING = re.compile(r"seconds|wall|elapsed")


@pytest.fixture(scope="module")
def fault_config(tiny_models):
    return {
        # Enough samples and windows that a running extraction can be caught between two writes.
        "datasets": {"tiny": {"sampler": "scenes", "n": 256, "seed": 4, "image_size": 32}},
        "extract": {"chunk_size": 16},
        "models": {
            "llama": {"source": f"local:{tiny_models['llama']}", "batch_size": 4},
            "bert": {"source": f"local:{tiny_models['bert']}"},
            "bert-random": {"source": f"local:{tiny_models['bert']}", "init": "random", "seed": 0},
        },
        "alignment": {"metrics": {"cka": {}}, "n_boot": 3000, "n_perm": 3000},
        "rosetta": {"enabled": False},
        "oocr": {"tasks": ["coins"], "models": ["llama"], "n_eval_per_type": 2,
                 "finetune": {"steps": 60, "batch_size": 2}, "icl": {"k": 1, "items_per_type": 1}},
    }


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, fault_config):
    workdir = tmp_path_factory.mktemp("clean")
    snakemake(workdir, fault_config)
    return workdir


def test_two_clean_runs_give_identical_results(clean_run, fault_config, tmp_path):
    snakemake(tmp_path, fault_config)
    assert_same_results(clean_run, tmp_path)


def test_killed_jobs_then_plain_reruns_equal_the_clean_run(clean_run, fault_config, tmp_path):
    results = tmp_path / "results"
    store = results / "activations/tiny/llama.zarr"
    pair = results / "alignment/tiny/cka/bert__llama.parquet"
    adapter = results / "oocr/coins/llama/seed0/adapter"

    # 1. The scheduler kills an extraction while it writes its store.
    def extraction_mid_write():
        for tmp in stale_tmp_siblings(store):
            if (tmp / "activations" / "c").is_dir():  # at least one chunk written
                return int(tmp.name.rsplit("-", 1)[1])
        return None

    run_and_kill(tmp_path, fault_config, extraction_mid_write, target=store)
    assert not store.exists() and stale_tmp_siblings(store)  # a leftover, not a store

    # 2. The whole Snakemake process tree dies (head node preempted) while a pair bootstraps.
    def alignment_bootstrapping():
        log = results / "logs/alignment/tiny/cka/bert__llama.log"
        return job_pid("align_pair") if log.exists() and "uncertainty:" in log.read_text() else None

    run_and_kill(tmp_path, fault_config, alignment_bootstrapping, target=pair, whole_tree=True)
    assert not pair.exists()
    assert not stale_tmp_siblings(store)  # the rerun extraction cleared the leftover
    locked = snakemake(tmp_path, fault_config, str(pair.relative_to(tmp_path)), check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr  # says what to do
    snakemake(tmp_path, fault_config, "--unlock")

    # 3. A fine-tuning job is killed between two optimiser steps.
    def finetune_training():
        log = results / "logs/oocr/coins/llama/seed0_finetune.log"
        if not log.exists():
            return None
        steps = re.findall(r"LoRA:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", log.read_text())
        return job_pid("oocr_finetune") if any(0 < int(a) < int(b) for a, b in steps) else None

    run_and_kill(tmp_path, fault_config, finetune_training, target=adapter)
    assert not adapter.exists()

    # A plain rerun finishes everything: same results as never having been interrupted.
    snakemake(tmp_path, fault_config)
    assert_same_results(clean_run, tmp_path)
    assert not [p for p in results.rglob("*") if TMP_TAG in p.name]


def run_and_kill(workdir: Path, config: dict, victim, target: Path, whole_tree: bool = False, timeout: float = 600):
    """Start Snakemake for `target`; as soon as `victim()` names a job process, SIGKILL it (or Snakemake and
    all its children); the run must then fail, leaving `target` absent."""
    cmd = snakemake_command(workdir, config, str(target.relative_to(workdir)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        pid = victim()
        if pid:
            if whole_tree:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=120)
    assert killed, f"the job finished (or never started) before it could be killed:\n{out[-3000:]}"
    assert proc.returncode != 0, out[-3000:]


def job_pid(rule_script: str) -> int | None:
    """The process running scripts/<rule_script>.py (Snakemake runs a copy named tmp<...>.<script>.py)."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(arg.endswith(f".{rule_script}.py") for arg in p.info["cmdline"] or ()):
            return p.info["pid"]
    return None


def assert_same_results(a: Path, b: Path) -> None:
    """Every result of run `a` equals run `b`'s: arrays and tables exactly, metadata up to timings.
    Figures and logs are left out (matplotlib and tqdm write timestamps)."""
    def files(root):
        base = root / "results"
        return {p.relative_to(base) for p in base.rglob("*") if p.is_file() and ".zarr" not in str(p)
                and p.parts[len(base.parts)] != "logs" and p.suffix != ".png"}

    fa, fb = files(a), files(b)
    assert fa == fb, f"different files: {sorted(fa ^ fb)}"
    stores = sorted({p for p in (a / "results").rglob("*.zarr")})
    assert stores
    for sa in stores:
        sb = b / sa.relative_to(a)
        da, db = xr.open_zarr(sa), xr.open_zarr(sb)
        assert set(da.variables) == set(db.variables), sa
        for name in da.variables:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{sa}: {name}")
        assert _untimed(da.attrs) == _untimed(db.attrs), sa
    for rel in sorted(fa):
        pa_, pb_ = a / "results" / rel, b / "results" / rel
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(pa_), pd.read_parquet(pb_), obj=str(rel))
            assert _meta(pa_) == _meta(pb_), rel
        elif rel.suffix == ".csv":
            ta, tb = pd.read_csv(pa_), pd.read_csv(pb_)
            timing = [c for c in ta.columns if TIMING.search(c)]
            pd.testing.assert_frame_equal(ta.drop(columns=timing), tb.drop(columns=timing), obj=str(rel))
        elif rel.suffix == ".json":
            assert _untimed(json.loads(pa_.read_text())) == _untimed(json.loads(pb_.read_text())), rel
        else:
            assert pa_.read_bytes() == pb_.read_bytes(), rel


def _meta(path: Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    out = {}
    for key, value in meta.items():
        try:
            out[key] = _untimed(json.loads(value))
        except ValueError:
            out[key] = value
    out.pop(b"pandas", None)
    return out


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj
