"""Job time of the generator stage, from the CPU seconds its jobs record in a finished run.

Every job of the stage records the CPU time of its work (`time.process_time()`, all threads): the
generator's `metrics.json` (`cpu_time_s`: training and the quality read-out), each pair file's `meta`,
and `edit_summary.json` (inversion and edits). The sets job records none and is timed here by rerunning
`match_summary` on the run's files. The interpreter start (imports of torch and transformers) is
measured once here in a fresh process and added per job. The sum is the stage's job time at one thread
per job, the unit of the time budget.

    python benchmarks/generator_budget.py [results_dir] [generator] [config.yaml]

The config (default `<results_dir>/run_info/config.yaml`) gives the trained models' specs, which the sets
job's figure loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def import_cpu_seconds() -> float:
    code = ("import time, resource; import torch, transformers, convergence.generator.stage, "
            "convergence.generator.figures; r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return float(out.stdout.strip().splitlines()[-1])


def main(results: str = "results", generator: str = "gan-w16", config_path: str | None = None) -> None:
    root = Path(results)
    metrics = json.loads((root / "zoo" / generator / "metrics.json").read_text())
    rows = [("train_generator", metrics["cpu_time_s"])]
    pair_files = sorted((root / "generator" / generator / "pairs").glob("*.npz"))
    for path in pair_files:
        meta = json.loads(str(np.load(path)["meta"]))
        rows.append((f"generator_pair {meta['model']}", meta["cpu_time_s"]))
    edit = json.loads((root / "generator" / generator / "edit_summary.json").read_text())
    rows.append(("generator_edit", edit["cpu_time_s"]))

    import yaml

    from convergence.config import controls_of
    from convergence.generator.stage import match_summary

    config_file = Path(config_path) if config_path else root / "run_info" / "config.yaml"
    summary = json.loads((root / "generator" / generator / "summary.json").read_text())
    trained = summary["trained_models"]
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else None
    specs = {m: config["models"][m] for m in trained} if config else {}
    controls = controls_of(config) if config else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = {k: Path(tmp) / f"{k}.{ext}" for k, ext in (("matches", "csv"), ("sets", "csv"), ("summary", "json"),
                                                           ("nulls_png", "png"), ("sets_png", "png"))}
        c0 = time.process_time()
        match_summary({p.stem: p for p in pair_files}, generator, trained, controls, out,
                      generator_dir=root / "zoo" / generator if specs else None, specs=specs,
                      zoo_dir=root / "zoo", threads=1)
        rows.append(("generator_sets", time.process_time() - c0))
    start = import_cpu_seconds()
    total = 0.0
    print(f"{'job':40s} {'work s':>8s} {'+ start s':>10s}")
    for name, seconds in rows:
        print(f"{name:40s} {seconds:8.1f} {seconds + start:10.1f}")
        total += seconds + start
    print(f"interpreter start (imports) per job: {start:.1f} s CPU")
    print(f"generator stage: {total:.0f} CPU-s = {total / 60:.2f} job-minutes over {len(rows)} jobs")


if __name__ == "__main__":
    main(*sys.argv[1:])
