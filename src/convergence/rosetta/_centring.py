"""The one pass over a chunk that Pearson needs besides the GEMM (numba, GIL-free).

`centre_rows` reads a chunk once: it subtracts a per-unit shift, writes the float32 GEMM operand and
accumulates in float64 the per-unit sum, sum of squares and largest |value| of the centred values.
Numpy would need four passes for that (subtract, sum, square-sum, max), each single-threaded.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def centre_rows(x, shift, out, col_sum, col_sq, col_max) -> None:
    """out = (x - shift) in out's dtype; col_sum += Σ(x - shift), col_sq += Σ(x - shift)², col_max = max(col_max, |x - shift|).

    `x` [n, D] float32 or float64 (C order), `shift` [D] float64 (a value of x's dtype), `out` [n, D] float32 or float64 (the GEMM operand);
    the accumulators are float64 [D] and hold partial results of the caller's earlier calls.
    The difference is taken in x's precision (exact when shift is close to x, Sterbenz) and summed in float64.
    """
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            v = np.float64(x[i, j]) - shift[j]
            out[i, j] = v  # rounded once to the GEMM dtype
            col_sum[j] += v
            col_sq[j] += v * v
            col_max[j] = max(col_max[j], abs(v))  # no branch: the loop over units vectorises


@njit(cache=True, nogil=True)
def rows_beyond(x, units, limits, mask) -> None:
    """mask[i] = True where |x[i, u]| > limits[k] for some u = units[k] (x: the centred float32 chunk)."""
    for i in range(x.shape[0]):
        for k in range(units.shape[0]):
            if abs(x[i, units[k]]) > limits[k]:
                mask[i] = True
                break
