"""Row-chunked reading of activation matrices `[N, D]` from numpy, torch, zarr or lazy views.

Everything in `convergence.rosetta` reads its inputs through `read_rows`, so a Zarr store on disk is
never loaded whole: only `chunk_size` rows at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def shape_of(source: Any, name: str = "input") -> tuple[int, int]:
    """`(N, D)` of a 2-D source; a clear ValueError for anything else."""
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, D] (rows = positions), got shape {shape}")
    return int(shape[0]), int(shape[1])


def read_rows(source: Any, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` as a C-contiguous numpy array: float64 if the source is float64, else float32.

    float64 inputs stay float64 until centred, so their extra precision is not thrown away before
    the per-chunk mean is removed (the float32 GEMM then only sees centred values).
    """
    block = source[start:stop]
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu()
        block = block.numpy() if block.dtype in (torch.float32, torch.float64) else block.float().numpy()
    array = np.asarray(block)
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    return np.ascontiguousarray(array)


def preferred_chunk(source: Any, requested: int) -> int:
    """Round `requested` up to whole storage chunks along rows (zarr), so no chunk is decoded twice."""
    chunks = getattr(source, "chunks", None)
    if not chunks or not isinstance(chunks[0], int) or chunks[0] <= 0:
        return requested
    stored = int(chunks[0])
    return max(stored, -(-requested // stored) * stored)


class ColumnView:
    """Lazy view of columns `cols` of a row-sliceable source (for column-blocked Pearson)."""

    def __init__(self, source: Any, cols: slice):
        n, d = shape_of(source)
        self.source, self.cols = source, cols
        self.shape = (n, len(range(*cols.indices(d))))
        self.chunks = getattr(source, "chunks", None)

    def __getitem__(self, rows: slice):
        return read_rows(self.source, rows.start, rows.stop)[:, self.cols]


class LayerView:
    """Lazy `[N, D]` view of one layer of a `(position, layer, neuron)` store (see DESIGN §2)."""

    def __init__(self, source: Any, layer: int):
        shape = getattr(source, "shape", None)
        if shape is None or len(shape) != 3:
            raise ValueError(f"LayerView expects a 3-D (position, layer, neuron) array, got shape {shape}")
        self.source, self.layer = source, int(layer)
        self.shape = (int(shape[0]), int(shape[2]))
        chunks = getattr(source, "chunks", None)
        self.chunks = (chunks[0], chunks[2]) if chunks else None

    def __getitem__(self, rows: slice):
        return self.source[rows.start : rows.stop, self.layer, :]


class RotatedView:
    """Lazy view `source @ Q`: every row's unit vector rotated by an orthogonal Q `[D, D]`.

    Applied chunk by chunk, so a rotation null streams like the data it replaces.
    """

    def __init__(self, source: Any, rotation: np.ndarray | torch.Tensor):
        n, d = shape_of(source)
        q = np.asarray(rotation, dtype=np.float64)
        if q.shape != (d, d):
            raise ValueError(f"rotation must be [{d}, {d}] for a source with {d} units, got {q.shape}")
        self.source, self.q = source, q
        self.q_by_dtype = {np.dtype(np.float64): q, np.dtype(np.float32): q.astype(np.float32)}
        self.shape = (n, d)
        self.chunks = getattr(source, "chunks", None)

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = read_rows(self.source, rows.start, rows.stop)
        # Remove the block mean before rotating: the product then carries no large offsets, so
        # float32 rounding stays relative to the spread; adding the rotated mean back keeps it exact.
        mean = block.mean(0, dtype=np.float64)
        centred = (block - mean).astype(block.dtype)
        return centred @ self.q_by_dtype[block.dtype] + (mean @ self.q).astype(block.dtype)
