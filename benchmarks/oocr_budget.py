"""Time budget of the pipeline's OOCR part, measured on the real stage functions.

For each task, the jobs of one run (seed) are run as Snakemake runs them, each in a fresh process with the
config's settings for that task (`oocr.per_task` merged in): make_data, run_finetune, run_evaluate (untuned,
icl, finetuned in one job). For every job it records the CPU seconds of its process (what the job costs on a
core of its own: job-minutes at one thread) and its wall seconds (inflated by whatever else runs on the
machine). Inside the jobs it records where the time goes: model loading, the training steps (with the
number of rows, tokens and epochs), and each condition of the evaluation. It then extrapolates to the whole
OOCR part of the config (every task x seed x model, plus the summary) and prints the table and the
in-distribution scores of the measured run (a check that the budget buys a learned task).

    python benchmarks/oocr_budget.py                              # config/config.yaml, every task, seed 0
    python benchmarks/oocr_budget.py --tasks parity --seed 1 --out /tmp/oocr_budget
    python benchmarks/oocr_budget.py --set finetune.steps=200     # try a setting for all tasks
    python benchmarks/oocr_budget.py --set per_task.parity.finetune.lr=0.004

Measured numbers on 2 shared CPU cores are noisy: read the CPU column, and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from convergence.oocr.stage import task_setting

REPO = Path(__file__).resolve().parents[1]
BUDGET_MIN = 8.5  # the OOCR part's share of the default run, in job-minutes (fp32 on an AVX2 CPU: 2 tasks, 1 run)


def load_oocr(config_path: Path, overrides: list[str]) -> dict:
    from convergence.config import check_config, validate_schema

    config = yaml.safe_load(config_path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        node = config["oocr"]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    config = validate_schema(config)
    check_config(config)
    return config


# --------------------------------------------------------------------------- jobs (run in fresh processes)

JOB = r"""
import json, sys, time
start_cpu, start_wall = time.process_time(), time.perf_counter()
kind, args = sys.argv[1], json.loads(sys.argv[2])
timings = {}
if kind in ("finetune", "evaluate"):  # imports and model loading: the fixed cost of a model job
    from convergence.oocr import stage
    original_load = stage._load
    def timed_load(*a, **k):
        out = original_load(*a, **k)
        timings["start_cpu_s"] = time.process_time() - start_cpu
        return out
    stage._load = timed_load
if kind == "data":
    from convergence.oocr.stage import make_data
    make_data(args["task"], args["seed"], args["out"], **args["size"])
elif kind == "finetune":
    import convergence.oocr.finetune as ft
    from convergence.oocr import stage
    original = ft._train
    def timed(model, rows, *a, **k):
        t0 = time.process_time()
        out = original(model, rows, *a, **k)
        timings["train_cpu_s"] = time.process_time() - t0
        timings["rows"] = len(rows)
        timings["tokens_per_epoch"] = sum(len(r.ids) for r in rows)
        return out
    ft._train = timed
    stage.run_finetune(args["data"], args["spec"], args["out"], resources_dir=args["resources"], seed=args["seed"],
                       threads=1, precision=args["precision"], **args["finetune"])
elif kind == "evaluate":
    import convergence.oocr.evaluate as ev
    from convergence.oocr import stage
    original = ev.evaluate_task
    def timed(*a, condition, **k):
        t0 = time.process_time()
        out = original(*a, condition=condition, **k)
        timings[condition + "_cpu_s"] = time.process_time() - t0
        timings[condition + "_items"] = len(out)
        return out
    ev.evaluate_task = timed
    stage.run_evaluate(args["data"], args["spec"], args["outputs"], adapter_dir=args["adapter"],
                       icl_k=args["icl"]["k"], icl_max_tokens=args["icl"]["max_tokens"],
                       resources_dir=args["resources"], threads=1, batch_size=args["batch_size"],
                       samples=args["free_form"]["samples"], temperature=args["free_form"]["temperature"],
                       precision=args["precision"], model_name=args["model"])
elif kind == "summary":
    from convergence.oocr.stage import summarize_runs
    summarize_runs(args["items"], args["out"], args["figures"])
timings["job_cpu_s"] = time.process_time() - start_cpu
timings["job_wall_s"] = time.perf_counter() - start_wall
print("TIMINGS " + json.dumps(timings))
"""


def run_job(kind: str, args: dict, log: Path) -> dict:
    """One job in a fresh process; its CPU seconds (the process and its children: sandbox runs) and wall."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", JOB, kind, json.dumps(args)], capture_output=True, text=True,
                          env=env)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} job failed; see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    inner = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("TIMINGS "))[8:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return inner | {"cpu_s": cpu, "wall_s": time.perf_counter() - start}


def measure_task(config: dict, task: str, seed: int, model: str, out: Path) -> dict:
    oocr = config["oocr"]
    spec = {"source": config["models"][model]["source"]}
    resources = str(Path(config["resources_dir"]).resolve())
    folder = out / task / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.json"
    adapter = folder / "adapter"
    outputs = {c: str(folder / f"{c}.parquet") for c in ("untuned", "icl", "finetuned")}
    size = {"n_eval_per_type": oocr["n_eval_per_type"]} | task_setting(oocr, task, "data")
    jobs = {
        "data": run_job("data", {"task": task, "seed": seed, "out": str(data), "size": size}, folder / "data.log"),
        "finetune": run_job("finetune", {"data": str(data), "spec": spec, "out": str(adapter), "resources": resources,
                                         "seed": seed, "precision": oocr["precision"],
                                         "finetune": task_setting(oocr, task, "finetune")}, folder / "finetune.log"),
    }
    jobs["evaluate"] = run_job("evaluate", {
        "data": str(data), "spec": spec, "outputs": outputs, "adapter": str(adapter), "resources": resources,
        "icl": task_setting(oocr, task, "icl"), "free_form": oocr["free_form"], "batch_size": oocr["eval_batch_size"],
        "precision": oocr["precision"], "model": model,
    }, folder / "evaluate.log")
    provenance = json.loads((adapter / "provenance.json").read_text())
    return {"jobs": jobs, "outputs": outputs, "epochs": provenance["epochs"], "loss": [provenance["first_loss"],
                                                                                       provenance["last_loss"]]}


# --------------------------------------------------------------------------- report


def report(config: dict, measured: dict, summary_s: dict, out: Path) -> dict:
    import pandas as pd

    oocr = config["oocr"]
    n_runs = len(oocr["seeds"]) * len(oocr["models"])
    print(f"\nmeasured one run (seed) per task, {oocr['models'][0]}; the config has {len(oocr['seeds'])} seed(s) x "
          f"{len(oocr['models'])} model(s) = {n_runs} run(s) per task\n")
    header = (f"{'task':22s} {'epochs':>6s} {'rows':>5s} {'data':>6s} {'finetune':>9s} {'(train)':>8s} "
              f"{'evaluate':>9s} {'untuned':>8s} {'icl':>7s} {'finetuned':>9s}   CPU seconds of one run; wall in ()")
    print(header)
    total_cpu = total_wall = 0.0
    parts = {"data": 0.0, "finetune": 0.0, "evaluate": 0.0}
    for task, m in measured.items():
        j = m["jobs"]
        cells = [f"{j['data']['cpu_s']:6.1f}", f"{j['finetune']['cpu_s']:9.1f}", f"{j['finetune']['train_cpu_s']:8.1f}",
                 f"{j['evaluate']['cpu_s']:9.1f}"]
        cells += [f"{j['evaluate'][c + '_cpu_s']:{w}.1f}" for c, w in (("untuned", 8), ("icl", 7), ("finetuned", 9))]
        print(f"{task:22s} {m['epochs']:6.1f} {j['finetune']['rows']:5d} " + " ".join(cells)
              + f"   ({sum(x['wall_s'] for x in j.values()):.0f} s wall)")
        for part in parts:
            parts[part] += j[part]["cpu_s"] * n_runs
        total_cpu += sum(x["cpu_s"] for x in j.values()) * n_runs
        total_wall += sum(x["wall_s"] for x in j.values()) * n_runs
    total_cpu += summary_s["cpu_s"]
    total_wall += summary_s["wall_s"]
    # the fixed cost of a job: the interpreter and imports before the job's code ran, plus (model jobs)
    # imports and model loading up to the model being ready
    starts = {k: sum(m["jobs"][k]["cpu_s"] - m["jobs"][k]["job_cpu_s"] + m["jobs"][k].get("start_cpu_s", 0)
                     for m in measured.values()) * n_runs for k in parts}
    print(f"\nwhole OOCR part ({len(measured)} tasks x {n_runs} runs + summary), job-minutes at 1 thread:")
    for part, seconds in parts.items():
        print(f"  {part:9s} {seconds / 60:6.2f} min   (of which process start, imports, model load: "
              f"{starts[part] / 60:.2f})")
    print(f"  {'summary':9s} {summary_s['cpu_s'] / 60:6.2f} min")
    print(f"  total     {total_cpu / 60:6.2f} min CPU (budget {BUDGET_MIN:.0f}); "
          f"{total_wall / 60:.2f} min wall as measured here (load average {os.getloadavg()[0]:.1f})")
    print("\nin-distribution score of the measured run (finetuned / untuned / icl; chance):")
    for task, m in measured.items():
        frames = {c: pd.read_parquet(p) for c, p in m["outputs"].items()}
        cells = []
        for c in ("finetuned", "untuned", "icl"):
            df = frames[c]
            cells.append(f"{df.loc[df.question_type == 'in_distribution', 'score'].mean():.3f}")
        in_dist = frames["finetuned"][frames["finetuned"].question_type == "in_distribution"]
        print(f"  {task:22s} " + " / ".join(cells) + f"; chance {in_dist['chance'].mean():.3f}; "
              f"loss {m['loss'][0]:.2f} -> {m['loss'][1]:.2f}")
    result = {"measured": measured, "summary": summary_s, "total_cpu_min": total_cpu / 60,
              "parts_min": {k: v / 60 for k, v in parts.items()}, "total_wall_min": total_wall / 60}
    (out / "budget.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--tasks", nargs="+", help="default: the config's oocr.tasks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="default: the config's first oocr model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the config's oocr block (dots for nesting), e.g. finetune.steps=200")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "oocr_budget")
    args = ap.parse_args()
    config = load_oocr(args.config, args.set)
    os.chdir(REPO)  # resources_dir is relative to the repository
    tasks = args.tasks or config["oocr"]["tasks"]
    model = args.model or config["oocr"]["models"][0]
    args.out.mkdir(parents=True, exist_ok=True)
    measured = {}
    for task in tasks:
        print(f"{task} ...", flush=True)
        measured[task] = measure_task(config, task, args.seed, model, args.out)
    items = [p for m in measured.values() for p in m["outputs"].values()]
    summary_s = run_job("summary", {"items": items, "out": str(args.out / "summary.csv"),
                                    "figures": str(args.out / "figures")}, args.out / "summary.log")
    report(config, measured, summary_s, args.out)


if __name__ == "__main__":
    main()
