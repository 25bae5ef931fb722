"""Run the real Snakefile as a subprocess in a temporary working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake_command(workdir: Path, config: dict, *args: str, snakefile: Path = REPO / "Snakefile") -> list[str]:
    """The command line of a Snakemake run of `config` in `workdir` (written there as config.yaml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir),
            "--configfile", str(cfg), *(() if "--profile" in args else ("--cores", "2")), *args]


def local_env(env: dict | None = None) -> dict:
    """The environment of a local (not Slurm) run. The Slurm executor plugin runs `scontrol show config` when
    Snakemake starts: with a slurm.conf whose controller is down that waits 9-10 s (60 s where SLURM_CONF names
    a missing file). A local run never talks to Slurm, so it gets an empty config, which fails at once."""
    return {**(os.environ if env is None else env), "SLURM_CONF": os.devnull}


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True, timeout: int = 900, env=None,
              snakefile: Path = REPO / "Snakefile"):
    cmd = snakemake_command(workdir, config, *args, snakefile=snakefile)
    if "--profile" not in args:
        env = local_env(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    """Dry run; returns rule -> job count from Snakemake's job stats (empty when nothing to do).

    `run_info` (a copy of the config for the report, rewritten on any config change, computing nothing)
    is left out, with the `all` job it alone would trigger."""
    proc = snakemake(workdir, config, "-n")
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    if counts.pop("run_info", None) and set(counts) == {"all"}:
        counts = {}
    return counts
