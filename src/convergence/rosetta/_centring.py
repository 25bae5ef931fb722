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
    i = 0
    while i + 4 <= n:  # four rows per sweep: a quarter of the accumulators' loads and stores
        for j in range(d):
            s = shift[j]
            v0 = np.float64(x[i, j]) - s
            v1 = np.float64(x[i + 1, j]) - s
            v2 = np.float64(x[i + 2, j]) - s
            v3 = np.float64(x[i + 3, j]) - s
            out[i, j] = v0  # rounded once to the GEMM dtype
            out[i + 1, j] = v1
            out[i + 2, j] = v2
            out[i + 3, j] = v3
            col_sum[j] += (v0 + v1) + (v2 + v3)
            col_sq[j] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
            col_max[j] = max(col_max[j], max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))))  # no branch: vectorises
        i += 4
    while i < n:
        for j in range(d):
            v = np.float64(x[i, j]) - shift[j]
            out[i, j] = v
            col_sum[j] += v
            col_sq[j] += v * v
            col_max[j] = max(col_max[j], abs(v))
        i += 1


@njit(cache=True, nogil=True)
def rows_beyond(x, units, limits, mask) -> None:
    """mask[i] = True where |x[i, u]| > limits[k] for some u = units[k] (x: the centred float32 chunk)."""
    for i in range(x.shape[0]):
        for k in range(units.shape[0]):
            if abs(x[i, units[k]]) > limits[k]:
                mask[i] = True
                break
