"""Per-thread work buffers reused between calls of the same shape.

A fresh multi-MB numpy array costs a page fault per 4 KiB on first touch, which for a
1024-sample layer is a third of its kNN time; ``layer_scores``' worker threads keep theirs.
"""

from __future__ import annotations

import threading

import numpy as np

# Buffers up to this size are kept; larger ones are allocated each time.
SCRATCH_BYTES = 64 * 2**20
_SCRATCH = threading.local()


def reuse_buffers_in_this_thread() -> None:
    """From now on, this thread's ``scratch`` buffers are kept and reused (for a pool's
    worker threads: the buffers go with the thread)."""
    _SCRATCH.buffers = {}


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array: the one this thread keeps under ``name`` (after
    ``reuse_buffers_in_this_thread``) if it has this shape and dtype, else a new one (kept
    if at most SCRATCH_BYTES). The caller must be done with it before asking again."""
    buffers = getattr(_SCRATCH, "buffers", None)
    dtype = np.dtype(dtype)
    if buffers is not None:
        kept = buffers.get(name)
        if kept is not None and kept.shape == tuple(shape) and kept.dtype == dtype:
            return kept
    array = np.empty(shape, dtype=dtype)
    if buffers is not None and array.nbytes <= SCRATCH_BYTES:
        buffers[name] = array
    return array
