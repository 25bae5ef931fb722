"""Faults and determinism over every stage of the real workflow.

One tiny config with every stage on (datasets, a zoo model trained in the pipeline, extraction,
alignment, Rosetta units/correlation/matches/sets/figures, OOCR, run info). Its DAG says which kinds of
job (rules) exist, so rules added later are covered without touching this file; MUST_SEE lists the kinds
the DAG must at least hold.

Run A is a clean run. Run B starts from an empty folder and kills one job of every kind: each armed job
is held by tests/fault_hook at the rename that would complete its outputs (everything written, one
rename missing: the moment a non-atomic write shows), checked there (its outputs are not in place, every
other output it has came by a rename), then SIGKILLed; Snakemake goes on with everything else
(--keep-going). After each round the dry run must plan exactly the killed jobs and what depends on them
(README: "only the killed job and what depends on it run"). One round kills Snakemake's whole process
tree instead (its lock stays: --unlock, then rerun). Then a plain rerun, and run B must equal run A,
file by file and store by store, in both directions. The hook also records, for every job that ends,
which of its outputs came by a rename: none may be written in place.

Jobs are found through the hook's own message (no scan of the machine's processes) and checked to be
descendants of this test's Snakemake before they are signalled. Waiting is by event (a FIFO and
Snakemake's output, through select), never by polling or by the clock.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import xarray as xr
from PIL import Image

from convergence.utils import TMP_TAG
from stores import write_store
from workflow import REPO, local_env, snakemake, snakemake_command

pytestmark = pytest.mark.slow

HOOK = Path(__file__).parent / "fault_hook"
TIMING = re.compile(r"seconds|wall|elapsed|_time(_s)?$")  # keys and columns that hold timings
# Kinds of job the fault config must hold at least, one per stage; the DAG may hold more (they are killed too:
# oocr_icl today, rules other stages add tomorrow).
MUST_SEE = {
    "sample_dataset", "train_vision_model", "extract_activations", "align_pair", "aggregate_alignment",
    "extract_units", "correlate_pair", "match_pair", "rosetta_sets", "rosetta_figures",
    "oocr_data", "oocr_finetune", "oocr_evaluate", "oocr_summary", "run_info",
}
RUN_TIMEOUT = 1800  # seconds for one Snakemake run: a guard against a hang, not a measurement


@pytest.fixture(scope="module")
def fault_config(tiny_models):
    # Three trained language models (Rosetta sets need three), two zoo CNNs (a trained vision pair: image
    # units) and an untrained control (random-init extraction, the Rosetta control null); one metric; OOCR on
    # one task. Small: reruns stay cheap.
    return {
        "datasets": {"tiny": {"sampler": "scenes", "n": 24, "seed": 4, "image_size": 32},
                     "tiny_train": {"sampler": "scenes", "n": 48, "seed": 5, "image_size": 32}},
        "extract": {"chunk_size": 16, "datasets": ["tiny"]},
        "models": {
            "llama": {"source": f"local:{tiny_models['llama']}", "batch_size": 8},
            "gemma": {"source": f"local:{tiny_models['gemma3']}"},
            "bert": {"source": f"local:{tiny_models['bert']}"},
            "cnn": {"source": "zoo:cnn", "modality": "vision"},
            "cnn2": {"source": "zoo:cnn2", "modality": "vision"},
            "cnn-random": {"source": "zoo:cnn", "modality": "vision", "init": "random"},
        },
        "zoo": {"cnn": {"dataset": "tiny_train",
                        "arch": {"arch": "resnet", "width": 8, "depth": 2, "blocks": 1, "image_size": 32},
                        "train": {"epochs": 2, "batch_size": 16}},
                "cnn2": {"dataset": "tiny_train",
                         "arch": {"arch": "resnet", "width": 8, "depth": 2, "blocks": 1, "image_size": 32},
                         "train": {"epochs": 2, "batch_size": 16, "seed": 1}}},
        "alignment": {"metrics": {"cka": {}}, "n_boot": 20, "n_perm": 20},
        "rosetta": {"k": 5, "k_relaxed": 3, "grid": 4},
        "oocr": {"tasks": ["coins"], "models": ["llama"], "n_eval_per_type": 2,
                 "finetune": {"steps": 3, "batch_size": 2}, "icl": {"k": 1}, "free_form": {"samples": 1}},
    }


# ----------------------------------------------------------------------------------------- the DAG


@dataclass(frozen=True)
class Job:
    rule: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    wildcards: str

    @property
    def name(self) -> str:
        return f"{self.rule}({self.wildcards})" if self.wildcards else self.rule


def dry_run(workdir: Path, config: dict, *args: str, snakefile: Path = REPO / "Snakefile") -> set[Job]:
    """The jobs a dry run plans, parsed from Snakemake's job listing."""
    proc = snakemake(workdir, config, "-n", *args, snakefile=snakefile)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return set()
    jobs = set()
    for block in re.split(r"^(?=(?:local)?rule \S+:$)", out, flags=re.M)[1:]:
        head, *lines = block.splitlines()
        fields = {}
        for line in lines:
            m = re.match(r"^    (\w+): (.*)$", line)
            if m:
                fields[m.group(1)] = m.group(2)
            elif line and not line.startswith(" "):
                break
        split = lambda key: tuple(x for x in fields.get(key, "").split(", ") if x)  # noqa: E731
        jobs.add(Job(head.split()[-1].rstrip(":"), split("output"), split("input"), fields.get("wildcards", "")))
    assert jobs, f"no jobs parsed from the dry run:\n{out[-3000:]}"
    return jobs


@dataclass
class Dag:
    jobs: set[Job]
    below: dict[Job, set[Job]]  # job -> every job that depends on it, directly or not

    @classmethod
    def of(cls, jobs: set[Job]) -> Dag:
        producer = {o: j for j in jobs for o in j.outputs}
        children: dict[Job, set[Job]] = {j: set() for j in jobs}
        for j in jobs:
            for i in j.inputs:
                if i in producer:
                    children[producer[i]].add(j)
        below = {}
        for j in jobs:
            seen, todo = set(), [j]
            while todo:
                for c in children[todo.pop()] - seen:
                    seen.add(c)
                    todo.append(c)
            below[j] = seen
        return cls(jobs, below)

    def kinds(self) -> set[str]:
        return {j.rule for j in self.jobs if j.outputs}

    def depth(self, job: Job) -> int:
        return sum(job in b for b in self.below.values())  # number of ancestors

    def rounds(self) -> list[tuple[list[Job], list[Job], set[Job]]]:
        """Which job of each kind to kill, round by round, starting from an empty folder: (armed jobs, jobs to
        make pending first by deleting their outputs, jobs pending when the round starts).

        In a round every armed job must run, so none may depend on another; after a round what is pending is
        exactly the killed jobs and everything below them. A kind is killed where a job of it is pending
        anyway, else one job is made pending. Per kind, the job that leaves other kinds free and has the
        fewest dependants (the cheapest rerun); kinds in order of depth."""
        depth = {k: min(self.depth(j) for j in self.jobs if j.rule == k) for k in self.kinds()}
        remaining = sorted(self.kinds(), key=lambda k: (depth[k], k))
        pending, rounds = set(self.jobs), []
        while remaining:
            armed: list[Job] = []
            for kind in list(remaining):
                free = [j for j in self.jobs if j.rule == kind
                        and not any(j in self.below[a] or a in self.below[j] for a in armed)]
                if not free:
                    continue

                def cost(j):
                    blocks = sum(j in self.below[o] for o in pending if o.rule in remaining and o.rule != kind)
                    return j not in pending, blocks, len(self.below[j]), j.outputs

                armed.append(min(free, key=cost))
                remaining.remove(kind)
            assert armed, f"no job of {remaining} can be killed"
            forced = [a for a in armed if a not in pending]
            rounds.append((armed, forced, pending | self.after(forced)))
            pending = self.after(armed)
        return rounds

    def above(self, job: Job) -> set[Job]:
        return {j for j in self.jobs if job in self.below[j]}

    def after(self, killed: list[Job]) -> set[Job]:
        """What a run that killed `killed` (and finished everything else) leaves to do."""
        return set().union(*({k} | self.below[k] for k in killed))


@pytest.fixture(scope="module")
def dag(tmp_path_factory, fault_config) -> Dag:
    return Dag.of(dry_run(tmp_path_factory.mktemp("dag"), fault_config))


# ---------------------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, fault_config):
    workdir = tmp_path_factory.mktemp("clean")
    snakemake(workdir, fault_config, timeout=RUN_TIMEOUT)
    return workdir


@dataclass
class Faults:
    """A run folder with tests/fault_hook loaded into every Python process of its Snakemake runs."""
    workdir: Path
    config: dict
    root: Path
    snakefile: Path = REPO / "Snakefile"

    def __post_init__(self):
        self.root.mkdir(parents=True)
        os.mkfifo(self.root / "events")
        self.env = local_env({**os.environ, "CONVERGENCE_FAULTS": str(self.root),
                              "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))})

    def arm(self, jobs: list[Job]) -> None:
        (self.root / "armed.json").write_text(json.dumps([str(self.workdir / j.outputs[0]) for j in jobs]))

    def run_round(self, armed: list[Job], whole_tree: bool = False) -> str:
        """One Snakemake run (--keep-going) that kills every armed job at its hold; returns its output."""
        self.arm(armed)
        by_output = {str(self.workdir / j.outputs[0]): j for j in armed}
        cmd = snakemake_command(self.workdir, self.config, "--keep-going", snakefile=self.snakefile)
        events = os.open(self.root / "events", os.O_RDWR | os.O_NONBLOCK)  # RDWR: never an EOF, never blocks
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        out, pending_line, held = bytearray(), b"", {}
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            streams = [events, proc.stdout.fileno()]
            while proc.stdout.fileno() in streams:
                ready, _, _ = select.select(streams, [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no progress within {RUN_TIMEOUT} s:\n{out[-3000:].decode(errors='replace')}"
                if events in ready:
                    pending_line += os.read(events, 1 << 16)
                    *lines, pending_line = pending_line.split(b"\n")
                    for line in lines:
                        event = json.loads(line)
                        job = by_output.get(event["outputs"][0])
                        assert job is not None, f"a job that was not armed held: {event}"
                        self.check_hold(job, event, proc.pid)
                        held[job] = event
                        if whole_tree:
                            os.killpg(proc.pid, signal.SIGKILL)
                        try:
                            os.kill(event["pid"], signal.SIGKILL)
                        except ProcessLookupError:  # gone with the process group
                            pass
                if proc.stdout.fileno() in ready:
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    out += chunk
                    if not chunk:
                        streams.remove(proc.stdout.fileno())
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            os.close(events)
        text = out.decode(errors="replace")
        missed = [j.name for j in armed if j not in held]
        assert not missed, (f"armed jobs ended without holding at the rename of their last output (an output "
                            f"written in place, or the job failed): {missed}\n{text[-4000:]}")
        assert proc.returncode != 0, text[-3000:]
        return text

    def check_hold(self, job: Job, event: dict, snakemake_pid: int) -> None:
        """At the hold: the job is ours, its last output is still at its temporary path, the others came by
        a rename."""
        ancestors = {p.pid for p in psutil.Process(event["pid"]).parents()}
        assert snakemake_pid in ancestors, f"{job.name}: pid {event['pid']} is not below this test's Snakemake"
        assert Path(event["src"]).exists() and not Path(event["dst"]).exists(), (
            f"{job.name}: {event['dst']} is in place before its rename")
        assert not event["not_renamed"], f"{job.name}: written in place, not renamed: {event['not_renamed']}"

    def jobs_log(self) -> list[dict]:
        path = self.root / "jobs.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_fault_config_has_every_kind_of_job(dag):
    assert MUST_SEE <= dag.kinds(), f"missing: {MUST_SEE - dag.kinds()}"
    killed = [j.rule for armed, _, _ in dag.rounds() for j in armed]
    assert sorted(killed) == sorted(dag.kinds())  # one of each


@pytest.mark.timeout(2 * 3600)  # a clean run and about 2.6 runs' worth of jobs: more than .ci/run's 900 s
def test_kill_one_job_of_each_kind_then_rerun_equals_clean_run(dag, fault_config, tmp_path, request):
    workdir = tmp_path / "run"
    faults = Faults(workdir, fault_config, tmp_path / "faults")
    rounds = dag.rounds()
    # Snakemake dies with the job in a round where, when that job holds, nothing else runs (everything else
    # pending is above it, so done, or below it, so waiting): nothing is cut short, the plan stays exact.
    alone = [n for n, (armed, _, pending) in enumerate(rounds, 1)
             if len(armed) == 1 and all(p in dag.above(armed[0]) | dag.after(armed) for p in pending)]
    assert alone, f"no round runs a single job: {[[a.name for a in armed] for armed, _, _ in rounds]}"
    for number, (armed, forced, _) in enumerate(rounds, 1):
        whole_tree = number == alone[-1]
        for job in forced:  # done in an earlier round: deleting its outputs makes it (and what is below) run
            for output in job.outputs:
                shutil.rmtree(workdir / output) if (workdir / output).is_dir() else (workdir / output).unlink()
        faults.run_round(armed, whole_tree=whole_tree)
        if whole_tree:
            locked = snakemake(workdir, fault_config, check=False)  # a real run needs the lock; a dry run does not
            assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr  # says what to do
            snakemake(workdir, fault_config, "--unlock")
        expected = dag.after(armed)
        planned = dry_run(workdir, fault_config)
        assert planned == expected, (
            f"round {number}, killed {[a.name for a in armed]}: planned but not killed or below: "
            f"{sorted(j.name for j in planned - expected)}; killed or below but not planned: "
            f"{sorted(j.name for j in expected - planned)}")

    # The same command again finishes everything: the same results as never having been interrupted.
    faults.arm([])
    snakemake(workdir, fault_config, "--keep-going", env=faults.env, timeout=RUN_TIMEOUT)
    assert dry_run(workdir, fault_config) == set()

    # Every job that ended (killed ones did not) put every output in place by a rename.
    ended = faults.jobs_log()
    assert {j["rule"] for j in ended} >= dag.kinds()
    in_place = {o for j in ended for o in set(j["exists"]) - set(j["renamed"])}
    assert not in_place, f"outputs written in place, not renamed: {sorted(in_place)}"
    assert all(set(j["exists"]) == set(j["outputs"]) for j in ended), "a job ended with outputs missing"

    leftovers = [str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if TMP_TAG in p.name]
    assert not leftovers, f"temporary files of killed jobs that no rerun removed: {leftovers}"
    assert_same_results(request.getfixturevalue("clean_run"), workdir)  # made only now: a fault fails fast


MINI_SNAKEFILE = """
rule all:
    input:
        "atomic.txt",
        "in_place.txt",


rule atomic:
    output:
        "atomic.txt",
    script:
        "atomic.py"


rule in_place:
    output:
        "in_place.txt",
    script:
        "in_place.py"
"""
MINI_SCRIPTS = {
    "atomic.py": "import os\nopen('atomic.tmp', 'w').write('done')\nos.replace('atomic.tmp', snakemake.output[0])\n",
    "in_place.py": "open(snakemake.output[0], 'w').write('done')\n",
}


def test_the_fault_hook_holds_renames_and_catches_writes_in_place(tmp_path):
    """The machinery above on a two-rule workflow: it can fail, and says why."""
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "Snakefile").write_text(MINI_SNAKEFILE)
    for name, text in MINI_SCRIPTS.items():
        (flow / name).write_text(text)
    workdir = tmp_path / "run"
    mini = Dag.of(dry_run(workdir, {}, snakefile=flow / "Snakefile"))
    job = {j.rule: j for j in mini.jobs}
    faults = Faults(workdir, {}, tmp_path / "faults", snakefile=flow / "Snakefile")

    faults.run_round([job["atomic"]])  # held at its rename, checked, killed; in_place finishes
    assert dry_run(workdir, {}, snakefile=flow / "Snakefile") == {job["atomic"], job["all"]}
    assert not (workdir / "atomic.txt").exists() and (workdir / "atomic.tmp").exists()

    (workdir / "in_place.txt").unlink()
    with pytest.raises(AssertionError, match=r"ended without holding.*in_place"):
        faults.run_round([job["in_place"]])  # written in place: no rename to hold
    records = {r["rule"]: r for r in faults.jobs_log()}
    assert records["in_place"]["exists"] and not records["in_place"]["renamed"]
    assert records["atomic"]["renamed"] == records["atomic"]["exists"] == [str(workdir / "atomic.txt")]


# ------------------------------------------------------------------------------------ comparison


def assert_same_results(a: Path, b: Path) -> None:
    """Every result of run `a` equals run `b`'s and the other way round: the same files and stores; arrays
    and tables exactly, figures pixel by pixel, metadata up to timings. Logs (tqdm rates) and Snakemake's
    benchmark files (the jobs' timings) are left out."""
    def entries(root):
        base = root / "results"
        out = set()
        for p in base.rglob("*"):
            rel = p.relative_to(base)
            if rel.parts[0] in ("logs", "benchmarks") or any(part.endswith(".zarr") for part in rel.parts[:-1]):
                continue  # a store is compared as a whole, below
            if p.is_file() or p.suffix == ".zarr":
                out.add(rel)
        return out

    ea, eb = entries(a), entries(b)
    assert ea == eb, f"only in {a}: {sorted(map(str, ea - eb))}; only in {b}: {sorted(map(str, eb - ea))}"
    assert ea
    for rel in sorted(ea):
        pa_, pb_ = a / "results" / rel, b / "results" / rel
        if rel.suffix == ".zarr":
            da, db = xr.open_zarr(pa_), xr.open_zarr(pb_)
            assert set(da.variables) == set(db.variables), rel
            for name in da.variables:
                np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{rel}: {name}")
            assert _untimed(da.attrs) == _untimed(db.attrs), rel
        elif rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(pa_), pd.read_parquet(pb_), obj=str(rel))
            assert _meta(pa_) == _meta(pb_), rel
        elif rel.suffix == ".csv":
            ta, tb = pd.read_csv(pa_), pd.read_csv(pb_)
            timing = [c for c in ta.columns if TIMING.search(c)]
            pd.testing.assert_frame_equal(ta.drop(columns=timing), tb.drop(columns=timing), obj=str(rel))
        elif rel.suffix == ".json":
            assert _untimed(json.loads(pa_.read_text())) == _untimed(json.loads(pb_.read_text())), rel
        elif rel.suffix == ".npz":
            with np.load(pa_) as za, np.load(pb_) as zb:
                assert sorted(za.files) == sorted(zb.files), rel
                for key in za.files:
                    _assert_same_array(za[key], zb[key], f"{rel}: {key}")
        elif rel.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(pa_)), np.asarray(Image.open(pb_)),
                                          err_msg=str(rel))
        else:
            assert pa_.read_bytes() == pb_.read_bytes(), rel


def _assert_same_array(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.dtype.kind == "U" and x.ndim == 0:  # a JSON document stored as a string (metadata): up to timings
        try:
            x, y = json.loads(str(x)), json.loads(str(y))
        except ValueError:
            pass
        else:
            assert _untimed(x) == _untimed(y), what
            return
    np.testing.assert_array_equal(x, y, err_msg=what)


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


def test_comparison_sees_differences_either_way(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((6, 2, 4))

    def run(name, stores, extra=None):
        base = tmp_path / name / "results" / "activations" / "d"
        base.mkdir(parents=True)
        for store, values in stores.items():
            write_store(base / f"{store}.zarr", values, store)
        for rel, text in (extra or {}).items():
            (tmp_path / name / "results" / rel).write_text(text)
        return tmp_path / name

    a = run("a", {"m": acts})
    assert_same_results(a, run("same", {"m": acts}))
    for other in (run("extra_store", {"m": acts, "n": acts}), run("extra_file", {"m": acts}, {"x.txt": "x"})):
        with pytest.raises(AssertionError, match=f"only in {re.escape(str(other))}"):
            assert_same_results(a, other)
        with pytest.raises(AssertionError, match=f"only in {re.escape(str(other))}"):
            assert_same_results(other, a)
    changed = acts.copy()
    changed[0, 0, 0] += 1e-6
    with pytest.raises(AssertionError, match="m.zarr: activations"):
        assert_same_results(a, run("changed", {"m": changed}))
