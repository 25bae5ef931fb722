"""Where the time of a finished Snakemake run went, per rule, from Snakemake's own records.

    python benchmarks/default_run_profile.py [WORKDIR]        # default: the current directory

Snakemake keeps one metadata record per output file (`.snakemake/metadata/`), with the job's start and
end time and its rule. Outputs of one job share a job hash, so each job is counted once. Printed per
rule: jobs, job-minutes (the sum of the jobs' wall times; a job of 2 threads holds 2 cores for it) and
the share of all job time, then the run's wall time (first start to last end) and the mean number of
jobs running at once (job time / wall time: 2 cores kept busy reads 2.0 for one-thread jobs).
Run it after a cold `snakemake --cores 2` to see where the 30-minute budget goes.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def job_records(workdir: Path) -> list[dict]:
    folder = workdir / ".snakemake" / "metadata"
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: run snakemake in {workdir} first")
    jobs = {}
    for path in folder.iterdir():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("incomplete") or record.get("starttime") is None or record.get("endtime") is None:
            continue
        jobs[(record["rule"], record.get("job_hash"))] = record
    return list(jobs.values())


def profile(workdir: Path) -> str:
    jobs = job_records(workdir)
    if not jobs:
        return f"no finished jobs recorded in {workdir}"
    per_rule = defaultdict(lambda: [0, 0.0, 0.0])
    for job in jobs:
        seconds = job["endtime"] - job["starttime"]
        entry = per_rule[job["rule"]]
        entry[0] += 1
        entry[1] += seconds
        entry[2] = max(entry[2], seconds)
    total = sum(e[1] for e in per_rule.values())
    wall = max(j["endtime"] for j in jobs) - min(j["starttime"] for j in jobs)
    lines = [f"{'rule':<28}{'jobs':>6}{'job-min':>10}{'share':>8}{'longest s':>11}"]
    for rule, (n, seconds, longest) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{rule:<28}{n:>6}{seconds / 60:>10.2f}{seconds / total:>8.1%}{longest:>11.1f}")
    lines.append(f"{'total':<28}{len(jobs):>6}{total / 60:>10.2f}")
    lines.append(f"wall time (first job start to last job end): {wall / 60:.2f} min; "
                 f"jobs running at once on average: {total / wall:.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=".", type=Path)
    print(profile(parser.parse_args(argv).workdir))


if __name__ == "__main__":
    main()
