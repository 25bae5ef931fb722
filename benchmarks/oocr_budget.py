"""Time budget of the pipeline's OOCR part: measure, extrapolate, and check one task end to end.

`measure` times, on the real model, per task: one LoRA step (at the setting's batch size, target
modules and rank), and the scoring of one item per question type under each condition (untuned,
finetuned = with LoRA layers, icl = k documents in the prompt), plus the start of a job (imports and
model loading in a fresh process). `--jobs J` runs J measuring processes at once (tasks dealt out
among them), so that the timings include the slowdown of J concurrent jobs; `--threads` is the torch
threads per job. It then extrapolates the wall time of the whole OOCR part (data, finetune, three
evaluations per task, summary) for the setting, scheduling the jobs on J slots as Snakemake would
(longest first, the finetuned evaluation after its fine-tuning).

`e2e` runs one task through the real stage functions, each job in a fresh process as Snakemake
would, on two slots (fine-tune then evaluate finetuned | untuned then icl), and prints the summary,
the losses and the wall time.

    python benchmarks/oocr_budget.py measure                        # defaults of convergence.oocr.stage
    python benchmarks/oocr_budget.py measure --jobs 1 --threads 2   # one job of two threads
    python benchmarks/oocr_budget.py measure --steps 60 --batch-size 8 --icl-k 10
    python benchmarks/oocr_budget.py e2e --task coins --out /tmp/oocr_e2e
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from convergence.oocr.stage import DEFAULTS, first_per_type
from convergence.oocr.tasks import TASKS, generate

REPO = Path(__file__).resolve().parents[1]


def setting_args(ap: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    ap.add_argument("--model", default="smollm2-135m", help="an offline model name")
    ap.add_argument("--resources", default=str(REPO / "resources"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--threads", type=int, default=d["threads"], help="torch threads per job")
    ap.add_argument("--steps", type=int, default=d["steps"])
    ap.add_argument("--batch-size", type=int, default=d["batch_size"])
    ap.add_argument("--lr", type=float, default=d["lr"])
    ap.add_argument("--rank", type=int, default=d["rank"])
    ap.add_argument("--alpha", type=int, default=d["alpha"])
    ap.add_argument("--target-modules", nargs="+", default=d["target_modules"],
                    help="module names, or one peft keyword/regex such as all-linear")
    ap.add_argument("--max-length", type=int, default=d["max_length"])
    ap.add_argument("--n-eval-per-type", type=int, default=d["n_eval_per_type"])
    ap.add_argument("--icl-k", type=int, default=d["icl_k"])
    ap.add_argument("--icl-items-per-type", type=int, default=d["icl_items_per_type"])
    ap.add_argument("--eval-batch-size", type=int, default=d["eval_batch_size"])
    ap.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])


def target_modules(args):
    tm = args.target_modules
    if isinstance(tm, str):
        return tm
    return tm[0] if len(tm) == 1 else list(tm)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- measure (worker)


class StepClock:
    """Stands in for the progress bar of `finetune`: stamps (wall, CPU) time at every step."""

    stamps: list[tuple[float, float]] = []

    def __init__(self, iterable, **_):
        self.iterable = iterable

    def __iter__(self):
        for batch in self.iterable:
            StepClock.stamps.append((time.perf_counter(), time.process_time()))
            yield batch
        StepClock.stamps.append((time.perf_counter(), time.process_time()))

    def set_postfix(self, **_):
        pass


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> dict:
    now = clock()
    return {"wall": now[0] - start[0], "cpu": now[1] - start[1]}


def worker(args) -> dict:
    """Timings (wall and CPU seconds of this process) for args.tasks in this process (one job slot)."""
    import torch

    import convergence.oocr.finetune as ft
    from convergence.models import load_model
    from convergence.oocr.evaluate import evaluate_task

    torch.set_num_threads(args.threads)
    ft.tqdm = StepClock
    lm = load_model({"source": f"offline:{args.model}"}, args.resources)
    model, tok = lm.model, lm.processor
    out = {}
    for task in args.tasks:
        data = generate(task, 0, n_eval_per_type=args.n_eval_per_type)
        config = ft.FinetuneConfig(steps=1 + args.probe_steps, batch_size=args.batch_size, lr=args.lr,
                                   rank=args.rank, alpha=args.alpha, target_modules=target_modules(args),
                                   max_length=args.max_length, seed=0)
        StepClock.stamps = []
        start = clock()
        result = ft.finetune(data.train, model, tok, config=config, progress=False)
        setup = {"wall": StepClock.stamps[0][0] - start[0], "cpu": StepClock.stamps[0][1] - start[1]}
        steps = [{"wall": b[0] - a[0], "cpu": b[1] - a[1]} for a, b in zip(StepClock.stamps, StepClock.stamps[1:])]
        step = {k: statistics.median(s[k] for s in steps[1:]) for k in ("wall", "cpu")}  # the first is slower
        probe = replace(data, eval=first_per_type(data.eval, args.probe_items))
        per_item = {}
        # finetuned: the base with the (freshly trained) LoRA layers active; then the bare base
        for condition in ("finetuned", "untuned", "icl"):
            if condition == "untuned":
                model = result.model.unload()
            scored = result.model if condition == "finetuned" else model
            per_item[condition] = {}
            for qt in probe.question_types():
                start = clock()
                rows = evaluate_task(scored, tok, probe, model_name=args.model, condition=condition,
                                     icl_k=args.icl_k, question_types=[qt], batch_size=args.eval_batch_size,
                                     max_new_tokens=args.max_new_tokens)
                per_item[condition][qt] = {k: v / len(rows) for k, v in since(start).items()}
        out[task] = {"step_s": step, "first_step_s": steps[0], "setup_s": setup, "per_item_s": per_item,
                     "steps_s": steps}
        print(f"[{os.getpid()}] {task}: step {step['wall']:.2f} s wall / {step['cpu']:.2f} s CPU; per item (wall) "
              + ", ".join(f"{c} {statistics.mean(x['wall'] for x in v.values()):.2f} s" for c, v in per_item.items()),
              flush=True)
    return out


def job_start_seconds(args) -> dict:
    """A fresh process importing the stage's libraries and loading the model (a job's fixed cost)."""
    import resource

    code = (
        "import torch, peft, pandas, matplotlib; from convergence.models import load_model; "
        f"torch.set_num_threads({args.threads}); load_model({{'source': 'offline:{args.model}'}}, {args.resources!r})"
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {"wall": time.perf_counter() - start, "cpu": cpu}


def measure(args) -> dict:
    load_before = loadavg()
    start_s = job_start_seconds(args)
    shares = [args.tasks[j:: args.jobs] for j in range(args.jobs)]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for j, share in enumerate(shares):
            if not share:
                continue
            out = Path(tmp) / f"w{j}.json"
            cmd = [sys.executable, __file__, "_worker", "--out", str(out), "--tasks", *share] + forwarded(args)
            procs.append((subprocess.Popen(cmd), out))
        timings = {}
        for p, out in procs:
            if p.wait() != 0:
                raise SystemExit(f"worker failed ({p.returncode})")
            timings |= json.loads(out.read_text())
    return {"setting": setting_of(args), "job_start_s": start_s, "tasks": timings,
            "loadavg_before": load_before, "loadavg_after": loadavg()}


def forwarded(args) -> list[str]:
    keys = ["model", "resources", "threads", "steps", "batch_size", "lr", "rank", "alpha", "max_length",
            "n_eval_per_type", "icl_k", "icl_items_per_type", "eval_batch_size", "max_new_tokens",
            "probe_steps", "probe_items"]
    argv = []
    for k in keys:
        argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    tm = target_modules(args)
    return argv + ["--target-modules", *([tm] if isinstance(tm, str) else tm)]


def setting_of(args) -> dict:
    keys = ["model", "threads", "jobs", "steps", "batch_size", "lr", "rank", "alpha", "target_modules",
            "max_length", "n_eval_per_type", "icl_k", "icl_items_per_type", "eval_batch_size", "max_new_tokens"]
    return {k: target_modules(args) if k == "target_modules" else getattr(args, k) for k in keys}


# --------------------------------------------------------------------------- extrapolate


def job_list(m: dict, args, kind: str = "wall") -> list[dict]:
    """Every job of the OOCR part with its estimated seconds, from the measured `kind` ("wall":
    as measured under the machine's present load; "cpu": the process's CPU time, i.e. what a job
    of one thread takes on a core of its own)."""
    start = m["job_start_s"][kind]
    jobs = []
    for task, t in m["tasks"].items():
        data = generate(task, 0, n_eval_per_type=args.n_eval_per_type)
        counts = {c: _counts(first_per_type(data.eval, args.icl_items_per_type if c == "icl" else None))
                  for c in ("finetuned", "untuned", "icl")}
        jobs.append({"name": f"{task}/data", "s": 2.0, "after": None})
        train = start + t["setup_s"][kind] + t["first_step_s"][kind] + (args.steps - 1) * t["step_s"][kind]
        jobs.append({"name": f"{task}/finetune", "s": train + 1.0, "after": f"{task}/data"})  # + saving, plot
        for c in ("finetuned", "untuned", "icl"):
            s = start + sum(n * t["per_item_s"][c][qt][kind] for qt, n in counts[c].items())
            after = f"{task}/finetune" if c == "finetuned" else f"{task}/data"
            jobs.append({"name": f"{task}/{c}", "s": s, "after": after, "items": sum(counts[c].values())})
    jobs.append({"name": "summary", "s": 8.0, "after": "*"})
    return jobs


def _counts(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in items:
        counts[i.question_type] = counts.get(i.question_type, 0) + 1
    return counts


def schedule(jobs: list[dict], slots: int) -> float:
    """Wall time of greedy list scheduling on `slots` (longest ready job first), as Snakemake's
    scheduler roughly does with one core per job."""
    finish: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    pending = list(jobs)
    t = 0.0
    while pending or running:
        while len(running) < slots:
            ready = [j for j in pending if _ready(j, finish, pending, running)]
            if not ready:
                break
            job = max(ready, key=lambda j: j["s"])
            pending.remove(job)
            heapq.heappush(running, (t + job["s"], job["name"]))
        if not running:
            raise ValueError("jobs with unmet dependencies: " + ", ".join(j["name"] for j in pending))
        t, name = heapq.heappop(running)
        finish[name] = t
    return t


def _ready(job, finish, pending, running) -> bool:
    if job["after"] is None:
        return True
    if job["after"] == "*":
        return len(pending) == 1 and not running
    return job["after"] in finish


def report(m: dict, args) -> None:
    print(f"\nsetting: {json.dumps(m['setting'])}")
    print(f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']}")
    m["extrapolated"] = {}
    for kind in ("wall", "cpu"):
        jobs = job_list(m, args, kind)
        by = {j["name"]: j for j in jobs}
        print(f"\n[{kind} seconds{' (as measured, under the present load)' if kind == 'wall' else ' (own core)'}]"
              f" job start (imports + model load): {m['job_start_s'][kind]:.1f} s")
        print(f"{'task':22s} {'step':>6s} {'finetune':>9s} {'untuned':>10s} {'icl':>10s} {'finetuned':>10s}"
              "   (job seconds/items)")
        for task, t in m["tasks"].items():
            cells = [f"{by[f'{task}/{c}']['s']:5.0f}/{by[f'{task}/{c}']['items']:<4d}"
                     for c in ("untuned", "icl", "finetuned")]
            print(f"{task:22s} {t['step_s'][kind]:6.2f} {by[task + '/finetune']['s']:9.0f} " + " ".join(cells))
        total = sum(j["s"] for j in jobs)
        wall = schedule(jobs, args.jobs)
        print(f"sum of job times {total:.0f} s; wall on {args.jobs} slot(s) x {args.threads} thread(s): "
              f"{wall:.0f} s ({wall / 60:.1f} min)")
        m["extrapolated"][kind] = {"job_seconds": {j["name"]: round(j["s"], 1) for j in jobs}, "sum_s": total,
                                   "wall_s": wall}
    if args.threads > 1:
        print("(with several threads per job the CPU seconds add up the threads: read the wall figures)")


# --------------------------------------------------------------------------- end to end


def e2e(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"source": f"offline:{args.model}"}
    common = dict(resources_dir=args.resources, threads=args.threads)
    data = out / "data.json"
    adapter = out / "adapter"
    calls = {
        "data": ("make_data", [args.task, args.seed, str(data)], {"n_eval_per_type": args.n_eval_per_type}),
        "finetune": ("run_finetune", [str(data), spec, str(adapter)],
                     dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
                          alpha=args.alpha, seed=args.seed, target_modules=target_modules(args),
                          max_length=args.max_length, **common)),
        "finetuned": ("run_evaluate", [str(data), spec, str(out / "finetuned.parquet")],
                      dict(condition="finetuned", adapter_dir=str(adapter), batch_size=args.eval_batch_size,
                           max_new_tokens=args.max_new_tokens, **common)),
        "untuned": ("run_evaluate", [str(data), spec, str(out / "untuned.parquet")],
                    dict(condition="untuned", batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens,
                         **common)),
        "icl": ("run_evaluate", [str(data), spec, str(out / "icl.parquet")],
                dict(condition="icl", icl_k=args.icl_k, items_per_type=args.icl_items_per_type,
                     batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, **common)),
        "summary": ("summarize_runs", [[str(out / f"{c}.parquet") for c in ("finetuned", "icl", "untuned")],
                                       str(out / "summary.csv"), str(out / "figures")], {}),
    }
    seconds = {}

    def launch(name):
        fn, a, kw = calls[name]
        code = (f"import json, sys; from convergence.oocr import stage; "
                f"a, kw = json.loads(sys.argv[1]); stage.{fn}(*a, **kw)")
        log = open(out / f"{name}.log", "w")
        return subprocess.Popen([sys.executable, "-c", code, json.dumps([a, kw])], stdout=log, stderr=log), time.time()

    def run_lane(names):
        """Jobs one after another in one slot; returns the Popen chain driver."""
        for name in names:
            p, t0 = launch(name)
            if p.wait() != 0:
                raise SystemExit(f"{name} failed; see {out / (name + '.log')}")
            seconds[name] = time.time() - t0

    load_before = loadavg()
    t0 = time.time()
    run_lane(["data"])
    import threading

    lanes = [threading.Thread(target=run_lane, args=(lane,)) for lane in (["finetune", "finetuned"], ["untuned", "icl"])]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    run_lane(["summary"])
    wall = time.time() - t0
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    wide = summary.pivot_table(index="question_type", columns="condition", values="score", sort=False)
    wide["chance"] = summary.groupby("question_type", sort=False)["chance"].mean()
    ci = summary.assign(ci=summary.apply(lambda r: f"[{r.ci_low:.2f}, {r.ci_high:.2f}]", axis=1)).pivot(
        index="question_type", columns="condition", values="ci")
    losses = pd.read_csv(adapter / "loss_curve.csv")["loss"].to_numpy()
    print(f"\n{args.task} on {args.model}: setting {json.dumps(setting_of(args))}")
    print(wide.round(3).to_string())
    print(ci.to_string())
    k = max(1, len(losses) // 10)
    print(f"loss: first {k} steps {losses[:k].mean():.3f}, last {k} steps {losses[-k:].mean():.3f}")
    print("job seconds:", {k: round(v) for k, v in seconds.items()})
    print(f"wall (2 slots): {wall:.0f} s; load average before/after {load_before} / {loadavg()}")
    (out / "e2e.json").write_text(json.dumps({"setting": setting_of(args), "task": args.task, "wall_s": wall,
                                              "job_s": seconds, "loadavg": [load_before, loadavg()]}, indent=1))


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time steps and items, extrapolate the OOCR part's wall time")
    w = sub.add_parser("_worker", help=argparse.SUPPRESS)
    e = sub.add_parser("e2e", help="one task through the stage functions, jobs as fresh processes")
    for p in (m, w, e):
        setting_args(p)
    for p in (m, w):
        p.add_argument("--probe-steps", type=int, default=6, help="timed LoRA steps per task")
        p.add_argument("--probe-items", type=int, default=3, help="timed items per question type and condition")
    m.add_argument("--jobs", type=int, default=2, help="concurrent jobs (slots), each of --threads threads")
    m.add_argument("--json", help="write the measurements and the extrapolation here")
    w.add_argument("--out", required=True)
    e.add_argument("--task", default="coins")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "oocr_e2e"))
    args = ap.parse_args()
    if args.command == "_worker":
        Path(args.out).write_text(json.dumps(worker(args)))
    elif args.command == "measure":
        result = measure(args)
        report(result, args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    else:
        args.jobs = 2
        e2e(args)


if __name__ == "__main__":
    main()
