"""Compiled loops (numba) and a GIL-free BLAS call for the kNN and preprocessing hot paths.

All single-threaded and releasing the GIL, so that ``layer_scores`` can run one layer per
thread. Not numba's or torch's thread pools: OpenBLAS's idle threads spin for a while after
each call, and a second pool started next to them competes for the same cores and runs
several times slower.

Every sum of D terms here uses the same fixed order (eight interleaved partial sums, then
combined pairwise), so a row gives the same bits whatever the rows around it.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import njit
from numba.extending import get_cython_function_address

_JIT = dict(cache=True, nogil=True)


@njit(**_JIT)
def _sum_squares(row) -> float:
    """float64 sum of the squares of ``row`` in a fixed order (8 interleaved partial sums)."""
    d = row.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    full = d - d % 8
    for k in range(0, full, 8):
        v0, v1, v2, v3 = np.float64(row[k]), np.float64(row[k + 1]), np.float64(row[k + 2]), np.float64(row[k + 3])
        v4, v5, v6, v7 = np.float64(row[k + 4]), np.float64(row[k + 5]), np.float64(row[k + 6]), np.float64(row[k + 7])
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
        a4 += v4 * v4
        a5 += v5 * v5
        a6 += v6 * v6
        a7 += v7 * v7
    rest = 0.0
    for k in range(full, d):
        v = np.float64(row[k])
        rest += v * v
    return (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + rest


@njit(**_JIT)
def normalize_rows(x, threshold, clip, normalize, out) -> int:
    """``out`` (float64 [N, D]) = x clamped to ±threshold (if ``clip``), then each row divided
    by its L2 norm (if ``normalize``; all-zero rows stay zero). Returns the number of
    non-finite values in ``x`` (``out`` is then meaningless)."""
    n, d = x.shape
    bad = 0
    for i in range(n):
        row, source = out[i], x[i]
        if clip:
            for k in range(d):
                row[k] = min(max(np.float64(source[k]), -threshold), threshold)
        else:
            for k in range(d):
                row[k] = np.float64(source[k])
        total = _sum_squares(source)  # NaN or inf in it: some value is not finite (or huge)
        if not np.isfinite(total):
            for k in range(d):
                bad += not np.isfinite(source[k])
        if normalize:
            norm = np.sqrt(_sum_squares(row)) if clip else np.sqrt(total)
            if norm > 0:
                for k in range(d):
                    row[k] = row[k] / norm
    return bad


@njit(**_JIT)
def norms_and_float32(X, scale, out32):
    """Row norms of float64 ``X`` (``_sum_squares``; callers bound their rounding) and
    ``out32`` = float32(X * scale) (``scale`` a power of two: exact)."""
    n, d = X.shape
    norms = np.empty(n)
    for i in range(n):
        row = X[i]
        norms[i] = np.sqrt(_sum_squares(row))
        dest = out32[i]
        for k in range(d):
            dest[k] = np.float32(row[k] * scale)
    return norms


@njit(**_JIT)
def _kth_largest(values, count, k):
    """The k-th largest of ``values[:count]`` (-inf if count < k): the largest value with at
    least k values >= it, counted (vectorised) only for values above the best so far."""
    best = np.float32(-np.inf)
    for a in range(count):
        v = values[a]
        if v > best:
            at_least = np.int32(0)
            for b in range(count):
                at_least += np.int32(1) if values[b] >= v else np.int32(0)
            if at_least >= k:
                best = v
    return best


@njit(**_JIT)
def _place_top(cand_v, cand_i, count, width, out_v, out_i) -> None:
    """The ``width`` largest of ``cand_v[:count]`` (count >= width), descending, into out."""
    if count <= 64:  # each value's rank by counting: no data-dependent branches
        for a in range(count):
            v = cand_v[a]
            rank = 0
            for b in range(count):
                rank += (cand_v[b] > v) | ((cand_v[b] == v) & (b < a))
            if rank < width:
                out_v[rank] = v
                out_i[rank] = cand_i[a]
        return
    out_v[:width] = -np.inf  # many ties: insertion into the running top
    for a in range(count):
        v = cand_v[a]
        if v > out_v[width - 1] or a < width:
            p = width - 1
            while p > 0 and out_v[p - 1] < v:
                out_v[p] = out_v[p - 1]
                out_i[p] = out_i[p - 1]
                p -= 1
            out_v[p] = v
            out_i[p] = cand_i[a]


@njit(**_JIT)
def top_of_lower(G, width, vals, idx) -> None:
    """Each row's ``width`` largest entries (off the diagonal) of the symmetric matrix whose
    lower triangle is ``G[m, j], j < m`` (the diagonal and upper triangle are not read):
    descending values into ``vals`` [N, width], their columns into ``idx``. Equal values are
    kept in any order; the values are always the row's ``width`` largest (width < N).

    Row m's entries are G[m, :m] (contiguous) and G[m+1:, m] (a column). The maxima of
    ``chunk``-long runs of both come from two streaming passes. The width-th largest of a
    row's chunk maxima, t, is at most its width-th largest entry (those maxima are ``width``
    distinct entries >= t), so the entries >= t, all in chunks whose maximum is >= t, hold
    the answer: usually little more than ``width`` of them.
    """
    n = G.shape[0]
    chunk = max(16, -(-n // 64))  # about 64 chunk maxima per row
    nch = (n + chunk - 1) // chunk
    rowmax = np.full((n, nch), -np.inf, dtype=np.float32)  # over G[m, j], j in chunk, j < m
    colmax = np.full((nch, n), -np.inf, dtype=np.float32)  # over G[r, j], r in chunk, r > j
    for m in range(1, n):
        row = G[m]
        column_max = colmax[m // chunk]
        for j in range(m):
            v = row[j]
            column_max[j] = v if v > column_max[j] else column_max[j]
        for c in range((m + chunk - 1) // chunk):
            best = -np.inf
            for j in range(c * chunk, min(c * chunk + chunk, m)):
                v = row[j]
                best = v if v > best else best
            rowmax[m, c] = best
    maxima = np.empty(nch + 1, dtype=np.float32)
    cand_v = np.empty(n, dtype=np.float32)
    cand_i = np.empty(n, dtype=np.int64)
    for m in range(n):
        row_chunks = (m + chunk - 1) // chunk
        count = 0
        for c in range(row_chunks):
            maxima[count] = rowmax[m, c]
            count += 1
        for c in range(m // chunk, nch):
            maxima[count] = colmax[c, m]
            count += 1
        t = _kth_largest(maxima, count, width)
        count = 0
        row = G[m]
        for c in range(row_chunks):
            if rowmax[m, c] >= t:
                for j in range(c * chunk, min(c * chunk + chunk, m)):
                    cand_v[count] = row[j]
                    cand_i[count] = j
                    count += row[j] >= t
        for c in range(m // chunk, nch):
            if colmax[c, m] >= t:
                for r in range(max(c * chunk, m + 1), min(c * chunk + chunk, n)):
                    cand_v[count] = G[r, m]
                    cand_i[count] = r
                    count += G[r, m] >= t
        _place_top(cand_v, cand_i, count, width, vals[m], idx[m])


@njit(**_JIT)
def rows_of_lower(G, rows, out) -> None:
    """``out[p]`` = full row ``rows[p]`` of the symmetric matrix with lower triangle ``G``,
    -inf at the row's own column."""
    n = G.shape[0]
    for p in range(rows.shape[0]):
        m = rows[p]
        for j in range(m):
            out[p, j] = G[m, j]
        out[p, m] = -np.inf
        for j in range(m + 1, n):
            out[p, j] = G[j, m]


@njit(**_JIT)
def shared_counts(a, b):
    """|a[i] ∩ b[i]| per row (entries within a row distinct)."""
    n, k = a.shape
    kb = b.shape[1]
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        count = 0
        for p in range(k):
            x = a[i, p]
            for q in range(kb):
                count += x == b[i, q]
        out[i] = count
    return out


@njit(**_JIT)
def shared_count_grid(nx, ny, perm, jaccard, out) -> None:
    """Null scores of the kNN set metrics for every layer pair at once: ``out[i, j]`` +=
    the sum over rows s of f(|nx[s, i] ∩ relabelled ny[perm[s], j]|), where Y's samples are
    relabelled by ``perm`` (row s of Y[perm] is sample perm[s]; its neighbour m sits at row
    inverse[m]), f(c) = c (mutual kNN) or c / (2k - c) (Jaccard, ``jaccard``).

    ``nx`` [N, Lx, k] and ``ny`` [N, Ly, k]: each layer's neighbour sets, rows = samples.
    Instead of relabelling Y's neighbours, X's are mapped into Y's labels (inverse[m] == x
    exactly when m == perm[x]), and the row's Y sets are marked in a stamp array: O(N Lx Ly k).
    """
    n, lx, k = nx.shape
    ly = ny.shape[1]
    mark = np.zeros(n, dtype=np.int64)
    mapped = np.empty((lx, k), dtype=np.int64)
    stamp = 0
    for s in range(n):
        t = perm[s]
        for i in range(lx):
            for p in range(k):
                mapped[i, p] = perm[nx[s, i, p]]
        for j in range(ly):
            stamp += 1
            for q in range(k):
                mark[ny[t, j, q]] = stamp
            for i in range(lx):
                c = 0
                for p in range(k):
                    c += mark[mapped[i, p]] == stamp
                if jaccard:
                    out[i, j] += c / (2 * k - c)
                else:
                    out[i, j] += c


@njit(**_JIT)
def pack_symmetric(G, perm, diagonal_scale, off_scale, out) -> None:
    """The upper triangle (diagonal included) of the symmetric ``G[perm][:, perm]``, row by
    row, into ``out`` [N (N + 1) / 2]: the diagonal times ``diagonal_scale``, the rest times
    ``off_scale``. Row r gathers from row perm[r] of G, copied first into a buffer: gathering
    from the row in place touches its cache lines in random order, four times slower."""
    n = G.shape[0]
    row = np.empty(n, dtype=G.dtype)
    p = 0
    for r in range(n):
        source = G[perm[r]]
        for c in range(n):
            row[c] = source[c]
        out[p] = row[perm[r]] * diagonal_scale
        p += 1
        for c in range(r + 1, n):
            out[p] = row[perm[c]] * off_scale
            p += 1


# BLAS ssyrk through scipy's Cython BLAS table: a ctypes call releases the GIL, which
# scipy.linalg.blas.ssyrk does not.
_P = ctypes.c_void_p
_SSYRK = ctypes.CFUNCTYPE(None, *[_P] * 10)(get_cython_function_address("scipy.linalg.cython_blas", "ssyrk"))


def gram_lower(X32: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``G`` [N, N] float32 (C order) whose lower triangle, diagonal included, is
    ``X32 @ X32.T`` (float32 BLAS ssyrk; half the work of a full product). The strict upper
    triangle is left as it was in ``out`` (uninitialised if ``out`` is None)."""
    if X32.dtype != np.float32 or not X32.flags.c_contiguous or X32.ndim != 2:
        raise ValueError("gram_lower needs a C-contiguous float32 [N, D] array")
    n, d = X32.shape
    buffer = np.empty((n, n), dtype=np.float32, order="F") if out is None else out.T
    if buffer.shape != (n, n) or buffer.dtype != np.float32 or not buffer.flags.f_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 [{n}, {n}] array")
    # Fortran's view: X32 is A = X^T (d x n, lda = d); C = A^T A fills C's upper triangle,
    # which is the lower triangle of the C-order transpose returned.
    ints = [ctypes.c_int(v) for v in (n, d, max(d, 1), n)]
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    _SSYRK(ctypes.c_char_p(b"U"), ctypes.c_char_p(b"T"), ctypes.byref(ints[0]), ctypes.byref(ints[1]),
           ctypes.byref(alpha), X32.ctypes.data, ctypes.byref(ints[2]), ctypes.byref(beta),
           buffer.ctypes.data, ctypes.byref(ints[3]))
    return buffer.T
