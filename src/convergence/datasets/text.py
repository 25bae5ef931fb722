"""`text_file`: one sample per non-empty line of a local UTF-8 text file (first n, or a seeded draw).

A line that is not valid UTF-8 fails the job naming the file and line (`on_corrupt: fail`, the default), or
with `on_corrupt: skip` is left out and counted in the dataset's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convergence.datasets import DatasetError, not_utf8, register, utf8_lines


class _Lines(list):
    """The records, with the metadata `write_samples` stores."""

    meta: dict


@register("text_file")
def sample_text_file(spec: dict):
    path = Path(spec["file"])
    if not path.exists():
        raise DatasetError(f"config key 'file': {path} does not exist")
    decoded, bad = utf8_lines(path)
    on_corrupt = spec.get("on_corrupt") or "fail"
    if bad and on_corrupt != "skip":
        raise DatasetError(f"{not_utf8(path, bad)}. Re-save the file as UTF-8, or set on_corrupt: skip to "
                           "leave such lines out")
    if bad:
        print(f"warning: {not_utf8(path, bad)}: left out (on_corrupt: skip)")
    # sample ids keep the 0-based line index of earlier versions, so stores stay comparable
    lines = [(i - 1, line.strip()) for i, line in decoded if line.strip()]
    if not lines:
        raise DatasetError(f"{path} has no non-empty lines: the dataset would be empty")
    n = int(spec.get("n", 1024))
    if n > len(lines):
        raise DatasetError(f"config key n = {n} but {path} has only {len(lines)} non-empty lines: lower n")
    pick = np.sort(np.random.default_rng(spec.get("seed", 0)).permutation(len(lines))[:n]) if spec.get("shuffle") else range(n)
    records = _Lines(dict(sample_id=f"line-{lines[k][0]:07d}", text=lines[k][1]) for k in pick)
    records.meta = {"on_corrupt": on_corrupt, "lines_not_utf8": bad, "n_lines_not_utf8": len(bad)}
    return records
