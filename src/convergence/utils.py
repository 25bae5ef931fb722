"""Small shared helpers: atomic outputs, hashing, logging to a file, provenance."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import os
import shutil
import sys
import traceback
from pathlib import Path

HASH_BLOCK = 1 << 22


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


TMP_TAG = ".tmp-"


def tmp_sibling(path: str | Path) -> Path:
    """A temporary path next to `path` (same filesystem, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")


def stale_tmp_siblings(path: str | Path) -> list[Path]:
    """Temporary siblings of `path` left by earlier writers (a SIGKILL leaves no chance to clean up)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}{TMP_TAG}*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling of `path`; rename it into place only if the block succeeds.

    A killed or failing job therefore never leaves something at `path` that looks complete.
    Works for files and folders (Zarr stores, model folders). Leftovers of a killed earlier writer are
    removed first: one writer per output at a time is what Snakemake guarantees (its output lock).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    for stale in stale_tmp_siblings(path):
        _remove(stale)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"atomic_path: nothing was written to {tmp} for {path}")
    _remove(path)
    os.replace(tmp, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG by default) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


PARQUET_META_KEY = b"convergence"


def write_parquet(frame, path: str | Path, meta: dict | None = None) -> Path:
    """Write a DataFrame atomically as parquet, with `meta` (JSON) in the schema's metadata (under
    PARQUET_META_KEY, beside pandas' own), where `read_parquet` finds it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), PARQUET_META_KEY: json.dumps(meta).encode()}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


class CorruptFileError(ValueError):
    """An output of the workflow that cannot be read (the message names the file and the fix)."""


def read_parquet(path: str | Path):
    """(DataFrame, metadata written by `write_parquet`, or None where the file has none)."""
    import json

    import pyarrow.parquet as pq

    import pyarrow as pa

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        if not Path(path).exists():
            raise
        raise CorruptFileError(f"{path} is not a readable parquet file: {e}. It is truncated or damaged (a copy "
                               "or disk that failed): delete it and rerun; the workflow writes it again") from e
    meta = (table.schema.metadata or {}).get(PARQUET_META_KEY)
    return table.to_pandas(), (None if meta is None else json.loads(meta))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with torch on `n` intra-op threads (None or 0: as they are), then give the caller back its
    own count: a library call must not change it."""
    import torch

    before = torch.get_num_threads()
    if n and int(n) != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def log_to(log_path: str | Path | None):
    """Send this process's stdout and stderr (fd level, so C libraries and tqdm too) to a log file."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            # Into the log too: on a cluster the job's stderr is elsewhere, and Snakemake shows failed logs.
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def package_versions(names=("convergence", "torch", "transformers", "numpy", "zarr", "xarray", "gguf")) -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
