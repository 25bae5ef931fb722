"""Does a task's fine-tune learn its training distribution, and when? One fine-tune per task on the real
stage function (`run_finetune`), with the config's settings for that task unless overridden, printing its
learning curve: training loss and in-distribution score (the run's items) against step, and its cost.

    python benchmarks/oocr_learning.py --tasks parity                          # config/config.yaml settings
    python benchmarks/oocr_learning.py --tasks parity --steps 300 --eval-every 30
    python benchmarks/oocr_learning.py --tasks locations --steps 200 --lr 0.004 --n-eval 32

The README's "What each task learns" table came from these curves. The score at step 0 is the untuned
model's; a task is learned when the fine-tuned score clears both chance and that (the summary's rule, on
its CI). Precision is the config's (`auto`: bf16 where the CPU computes it natively, else fp32).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from convergence.oocr.stage import make_data, run_finetune, task_setting

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--model", help="default: the config's first oocr model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--n-eval", type=int, help="items per question type (default: the config's)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "oocr_learning")
    args = ap.parse_args()

    config = yaml.safe_load(args.config.read_text())
    oocr = config["oocr"]
    model = args.model or oocr["models"][0]
    spec = {"source": config["models"][model]["source"]}
    resources = REPO / config.get("resources_dir", "resources")
    for task in args.tasks:
        size = {"n_eval_per_type": oocr.get("n_eval_per_type", 12)} | task_setting(oocr, task, "data")
        if args.n_eval:
            size["n_eval_per_type"] = args.n_eval
        settings = task_setting(oocr, task, "finetune")
        for key in ("steps", "lr", "layers", "eval_every"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        folder = args.out / f"{task}_seed{args.seed}"
        data = make_data(task, args.seed, folder / "data.json", **size)
        start = time.perf_counter()
        adapter = run_finetune(data, spec, folder / "adapter", resources_dir=resources, seed=args.seed, threads=1,
                               precision=oocr.get("precision", "auto"), **settings)
        seconds = time.perf_counter() - start
        curve = pd.read_csv(adapter / "learning_curve.csv")
        provenance = json.loads((adapter / "provenance.json").read_text())
        print(f"\n{task} (seed {args.seed}, {model}): {settings}")
        print(f"{provenance['n_rows']} rows, {provenance['epochs']} epochs, {seconds:.0f} s "
              f"({provenance['precision']['precision']}), {provenance['n_heldout']} in-distribution items")
        print(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
