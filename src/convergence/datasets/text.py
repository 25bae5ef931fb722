"""`text_file`: one sample per non-empty line of a local UTF-8 text file (first n, or a seeded draw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convergence.datasets import DatasetError, register


@register("text_file")
def sample_text_file(spec: dict):
    path = Path(spec["file"])
    if not path.exists():
        raise DatasetError(f"config key 'file': {path} does not exist")
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip()]
    if not lines:
        raise DatasetError(f"{path} has no non-empty lines: the dataset would be empty")
    n = int(spec.get("n", 1024))
    if n > len(lines):
        raise DatasetError(f"config key n = {n} but {path} has only {len(lines)} non-empty lines: lower n")
    pick = np.sort(np.random.default_rng(spec.get("seed", 0)).permutation(len(lines))[:n]) if spec.get("shuffle") else range(n)
    for k in pick:
        i, line = lines[k]
        yield dict(sample_id=f"line-{i:07d}", text=line)
