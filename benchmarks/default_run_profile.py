"""Where the time of a finished run went, per rule, from the files of Snakemake's `benchmark:` directive,
and what this machine is, so that a profile taken on a faster machine can be scaled to the slowest we support.

    python benchmarks/default_run_profile.py [RESULTS]      # default: results
    python benchmarks/default_run_profile.py --no-probe     # skip the matmul timing

Every rule writes `RESULTS/benchmarks/<rule>/<its wildcards>.tsv` (seconds, max RSS, CPU time of the job,
interpreter start and imports included). Printed per rule: jobs, job-minutes (sum of the jobs' wall times;
every job of the default run holds one core), CPU minutes, the share of all job time, the longest job and
the largest peak memory; then the run's wall time, taken from the files themselves (a file is written when
its job ends, so a job ran from mtime - s to mtime), and the mean number of jobs running at once.

The budget (30 minutes on 2 cores) is a property of the slowest CPU we support: AVX2 only, no native bf16,
a single-thread fp32 512 x 512 matmul in about 17 ms (REFERENCE_MATMUL_MS). The machine block prints this
machine's time for the same product, the precision `auto` picks here, and the wall time scaled by the
ratio: the figure to compare with 30 minutes when the run was taken on a faster machine. That scaling
assumes the whole run slows down as much as the matmul; the README's profile says how far it held.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from collections import defaultdict
from pathlib import Path

REFERENCE_MATMUL_MS = 17.0  # the slowest supported CPU: 2-core AMD EPYC, AVX2 only, single-thread fp32 512^3
BUDGET_MIN = 30.0
FULL_BUDGET_MIN = 180.0


def job_records(results: Path) -> list[dict]:
    """One record per finished job: rule, seconds, cpu seconds, max RSS (MB), end time (the file's mtime)."""
    folder = results / "benchmarks"
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: run snakemake first (every rule writes its benchmark there)")
    jobs = []
    for path in sorted(folder.rglob("*.tsv")):
        rule = path.relative_to(folder).parts[0]
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]  # a job benchmarked with repeats writes one row per repeat; the last is the run we kept
        jobs.append({
            "rule": rule,
            "s": float(row["s"]),
            "cpu_s": _number(row.get("cpu_time")),
            "max_rss": _number(row.get("max_rss")),
            "end": path.stat().st_mtime,
        })
    return jobs


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # "-" where psutil could not read it
        return 0.0


def profile(results: Path) -> tuple[str, float | None]:
    """(the per-rule table, the run's wall seconds; None where no job finished)."""
    jobs = job_records(results)
    if not jobs:
        return f"no benchmark files under {results / 'benchmarks'}", None
    per_rule = defaultdict(lambda: {"n": 0, "s": 0.0, "cpu": 0.0, "longest": 0.0, "rss": 0.0})
    for job in jobs:
        entry = per_rule[job["rule"]]
        entry["n"] += 1
        entry["s"] += job["s"]
        entry["cpu"] += job["cpu_s"]
        entry["longest"] = max(entry["longest"], job["s"])
        entry["rss"] = max(entry["rss"], job["max_rss"])
    total = sum(e["s"] for e in per_rule.values())
    cpu = sum(e["cpu"] for e in per_rule.values())
    wall = max(j["end"] for j in jobs) - min(j["end"] - j["s"] for j in jobs)
    lines = [f"{'rule':<24}{'jobs':>5}{'job-min':>9}{'cpu-min':>9}{'share':>7}{'longest s':>11}{'max MB':>8}"]
    for rule, e in sorted(per_rule.items(), key=lambda kv: -kv[1]["s"]):
        lines.append(f"{rule:<24}{e['n']:>5}{e['s'] / 60:>9.2f}{e['cpu'] / 60:>9.2f}{e['s'] / total:>7.1%}"
                     f"{e['longest']:>11.1f}{e['rss']:>8.0f}")
    lines.append(f"{'total':<24}{len(jobs):>5}{total / 60:>9.2f}{cpu / 60:>9.2f}")
    lines.append(f"wall time (first job start to last job end): {wall / 60:.2f} min; "
                 f"jobs running at once on average: {total / max(wall, 1e-9):.2f}")
    return "\n".join(lines), wall


def matmul_ms(size: int = 512, repeats: int = 20) -> float:
    """Best single-thread time of a float32 `size` x `size` matmul (torch, the library the models use)."""
    import torch

    from convergence.utils import torch_threads

    with torch_threads(1):
        a, b = torch.randn(size, size), torch.randn(size, size)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return best * 1e3


def cpu_description() -> str:
    """Model name, cores and the flags that decide speed here (from /proc/cpuinfo where there is one)."""
    import os

    from convergence.precision import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags() or frozenset()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'unknown'}"


def machine(wall_s: float | None) -> str:
    from convergence.precision import resolve_precision

    ms = matmul_ms()
    choice = resolve_precision("auto", "cpu", log=None)
    lines = [
        f"machine: {cpu_description()}",
        f"precision auto here: {choice.precision} ({choice.reason})",
        f"single-thread fp32 512x512 matmul: {ms:.2f} ms here, {REFERENCE_MATMUL_MS:.0f} ms on the reference "
        f"AVX2 CPU (ratio {REFERENCE_MATMUL_MS / ms:.2f})",
    ]
    if wall_s is not None:
        scaled = wall_s / 60 * REFERENCE_MATMUL_MS / ms
        lines.append(f"wall time scaled by that ratio: {scaled:.1f} min (budgets on 2 cores: the default {BUDGET_MIN:.0f} min, "
                     f"config/full.yaml {FULL_BUDGET_MIN:.0f} min)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    parser.add_argument("--no-probe", action="store_true", help="skip the machine block (matmul timing)")
    args = parser.parse_args(argv)
    text, wall = profile(args.results)
    print(text)
    if not args.no_probe:
        print(machine(wall))


if __name__ == "__main__":
    main()
