"""Exact Pearson correlation between every unit of A and every unit of B, streamed over positions.

Why not the textbook one-pass formula `(Σxy − ΣxΣy/N) / ...` in float32: activations carry large
offsets (mean ≫ std), and the subtraction then cancels nearly all digits. Why not two passes:
the data would be read twice. Instead, per chunk of rows:

1. subtract the chunk's own per-unit mean, rounded to the input precision (the subtraction is then
   exact or relative to the centred value, never to the offset);
2. one float32 GEMM of the centred chunk (the only O(N·Da·Db) work, at BLAS speed; float64 on
   request, for data with extreme outliers);
3. accumulate in float64 and merge chunks exactly (Chan et al.'s pairwise update): the rank-one
   corrections of the chunks are stacked and applied as one small float64 GEMM once `FLUSH_ROWS`
   are pending, so they cost nothing next to the main GEMM.

Per-unit sums and sums of squares of each centred chunk are float32 over short blocks of rows,
added in float64 (see `SUM_BLOCK`).

Memory is O(Da·Db + chunk_size·(Da+Db)), independent of N.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .sources import preferred_chunk, read_rows, shape_of

# Default rows per chunk: a chunk of the wider model takes about CHUNK_BYTES as float32 (8192 rows
# at 1024 units). Enough rows for the GEMM to run at full speed, few enough to bound memory.
CHUNK_BYTES = 32 * 2**20
CHUNK_ROWS_RANGE = (1024, 16384)
# A unit is constant when std <= rtol * rms (rms = sqrt(mean² + var)). By default rtol is this many
# machine epsilons of the input dtype: a spread of about one rounding step of the unit's magnitude
# is quantisation noise, not signal.
CONSTANT_EPS = 2.0
# Stacked rank-one corrections (2 rows per chunk) applied together once this many rows accumulate.
FLUSH_ROWS = 256
# Column sums of a chunk are taken in float32 over blocks of rows, then added in float64: a single
# float32 pass over 10^4 rows already loses ~1e-6 relative. BLAS sums (SIMD partial sums) stay
# accurate over 64 rows; einsum's sums of squares accumulate serially, so they get shorter blocks.
SUM_BLOCK = 64
SQUARE_BLOCK = 16


@dataclass
class PearsonResult:
    """Pearson correlations `r [Da, Db]` with the constant units masked.

    `r[i, j]` is exact Pearson (up to GEMM rounding, ~1e-7 in float32) between unit i of A and unit j
    of B over all N positions. Rows of constant A units and columns of constant B units
    (`const_a`, `const_b`) are set to 0.0: never NaN. Unpacks as `r, const_a, const_b = result`.
    """

    r: np.ndarray
    const_a: np.ndarray
    const_b: np.ndarray
    n: int
    mean_a: np.ndarray
    std_a: np.ndarray
    mean_b: np.ndarray
    std_b: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.r, self.const_a, self.const_b))

    @property
    def shape(self) -> tuple[int, int]:
        return self.r.shape


class PearsonAccumulator:
    """Streaming co-moments of two row-aligned matrices; `update` chunks, then `result()`.

    Exposed so a caller that already iterates over positions (e.g. while extracting activations)
    can feed chunks directly instead of going through `pearson`.
    """

    def __init__(self, dim_a: int, dim_b: int, gemm_dtype: type = np.float32):
        self.dim_a, self.dim_b = dim_a, dim_b
        self.n = 0
        self.side_a, self.side_b = _Side(dim_a, "A", gemm_dtype), _Side(dim_b, "B", gemm_dtype)
        self.comoment = np.zeros((dim_a, dim_b), np.float64)
        self._gemm_out = np.empty((dim_a, dim_b), gemm_dtype)
        self._rows_a: list[np.ndarray] = []  # pending rank-one corrections, applied by _flush
        self._rows_b: list[np.ndarray] = []

    def update(self, chunk_a: np.ndarray | torch.Tensor, chunk_b: np.ndarray | torch.Tensor) -> None:
        """Add rows: `chunk_a [n, Da]`, `chunk_b [n, Db]` (any float dtype; read as by `read_rows`)."""
        chunk_a, chunk_b = _as_chunk(chunk_a), _as_chunk(chunk_b)
        rows = chunk_a.shape[0]
        if chunk_b.shape[0] != rows:
            raise ValueError(f"chunks must have the same rows, got {rows} and {chunk_b.shape[0]}")
        if rows == 0:
            return
        centred_a, sum_a, delta_a = self.side_a.add(chunk_a, self.n)
        centred_b, sum_b, delta_b = self.side_b.add(chunk_b, self.n)
        torch.mm(torch.from_numpy(centred_a).T, torch.from_numpy(centred_b), out=torch.from_numpy(self._gemm_out))
        np.add(self.comoment, self._gemm_out, out=self.comoment)
        # Within the chunk Σ(x−m)(y−m')ᵀ = GEMM − sum_a sum_bᵀ / n; between chunks n·δaδbᵀ, where
        # δ = chunk mean − reference (minus N·δ̄aδ̄bᵀ in `result`).
        root = math.sqrt(rows)
        self._rows_a += [sum_a / root, delta_a * root]
        self._rows_b += [-sum_b / root, delta_b * root]
        self.n += rows
        if len(self._rows_a) >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows_a:
            self.comoment += np.stack(self._rows_a).T @ np.stack(self._rows_b)
            self._rows_a, self._rows_b = [], []

    def result(self, dtype: type = np.float32, constant_rtol: float | None = None) -> PearsonResult:
        """Correlations so far, as `PearsonResult` with `r` in `dtype` (float32 or float64)."""
        if self.n < 2:
            raise ValueError(f"Pearson needs at least 2 positions, got N={self.n}")
        self._flush()
        mean_a, var_a, const_a = self.side_a.moments(self.n, constant_rtol)
        mean_b, var_b, const_b = self.side_b.moments(self.n, constant_rtol)
        comoment = self.comoment - self.n * np.outer(self.side_a.mean_shift(self.n), self.side_b.mean_shift(self.n))
        with np.errstate(divide="ignore"):
            inv_a = np.where(const_a, 0.0, 1.0 / np.sqrt(var_a * self.n))
            inv_b = np.where(const_b, 0.0, 1.0 / np.sqrt(var_b * self.n))
        r = np.clip(comoment * inv_a[:, None] * inv_b[None, :], -1.0, 1.0)
        return PearsonResult(
            r=r.astype(dtype, copy=False),
            const_a=const_a,
            const_b=const_b,
            n=self.n,
            mean_a=mean_a,
            std_a=np.sqrt(var_a),
            mean_b=mean_b,
            std_b=np.sqrt(var_b),
        )


class _Side:
    """One model's half of the accumulator: chunk centring and per-unit moments.

    Centring reuses preallocated buffers and BLAS reductions: allocating fresh chunk-sized arrays
    page-faults on every chunk and generic column reductions are several times slower than
    the GEMM they feed.
    """

    def __init__(self, dim: int, name: str, gemm_dtype: type = np.float32):
        self.dim, self.name, self.gemm_dtype = dim, name, np.dtype(gemm_dtype)
        self.ref: np.ndarray | None = None  # global reference: the first chunk's mean
        self.sq = np.zeros(dim, np.float64)  # Σ squared deviations from chunk means, pooled
        self.shift_sum = np.zeros(dim, np.float64)  # Σ n_k (chunk mean − ref)
        self.eps = 0.0  # coarsest machine epsilon among the chunks seen
        self._centred = np.empty((0, dim), self.gemm_dtype)

    def add(self, chunk: np.ndarray, row_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre `chunk` on its own mean; return (centred in the GEMM dtype, Σ centred, chunk mean − ref)."""
        rows = chunk.shape[0]
        if chunk.shape[1] != self.dim:
            raise ValueError(f"{self.name}: chunk has {chunk.shape[1]} units, expected {self.dim}")
        centred = self._buffer(rows)
        # The mean is only a shift: float32 block sums suffice, the exact residual is measured below.
        shift = (_column_sums(chunk) / rows).astype(chunk.dtype)
        with np.errstate(all="ignore"):  # NaN/inf/overflow are detected from the sums just below
            # Subtracting, in the input precision, a shift rounded to it: no cancellation.
            np.subtract(chunk, shift, out=centred, casting="same_kind")
            sums, sum_sq = _column_sums(centred), _column_sums_of_squares(centred)
        if not (np.isfinite(sum_sq).all() and np.isfinite(sums).all()):
            _raise_non_finite(chunk, self.name, row_offset)
        delta = shift.astype(np.float64) + sums / rows  # exact chunk mean, then relative to ref
        if self.ref is None:
            self.ref = delta.copy()
        delta -= self.ref
        self.eps = max(self.eps, float(np.finfo(chunk.dtype).eps))
        self.sq += sum_sq - sums * sums / rows + rows * delta * delta
        self.shift_sum += rows * delta
        return centred, sums, delta

    def mean_shift(self, n: int) -> np.ndarray:
        return self.shift_sum / n

    def moments(self, n: int, constant_rtol: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, variance, constant mask) over all rows seen."""
        shift = self.mean_shift(n)
        var = np.maximum(self.sq - n * shift * shift, 0.0) / n
        mean = self.ref + shift
        rtol = CONSTANT_EPS * self.eps if constant_rtol is None else constant_rtol
        constant = var <= (rtol * rtol) * (mean * mean + var)
        return mean, var, constant

    def _buffer(self, rows: int) -> np.ndarray:
        if self._centred.shape[0] < rows:
            self._centred = np.empty((rows, self.dim), self.gemm_dtype)
        return self._centred[:rows]


def pearson(
    a: Any,
    b: Any,
    chunk_size: int | None = None,
    dtype: type = np.float32,
    constant_rtol: float | None = None,
    prefetch: bool = True,
    gemm_dtype: type = np.float32,
) -> PearsonResult:
    """Exact Pearson r between every column (unit) of `a [N, Da]` and every column of `b [N, Db]`.

    `a`, `b`: numpy arrays, torch tensors, zarr arrays, or anything with `.shape` that slices along
    axis 0 (e.g. `LayerView`); read `chunk_size` rows at a time (default `default_chunk_rows`,
    rounded up to whole zarr chunks), so memory does not grow with N.

    Computation: a `gemm_dtype` GEMM per chunk of per-chunk-centred rows, float64 accumulation.
    With float32 the |error| vs float64 `numpy.corrcoef` on the same values is ~1e-7, offsets of
    1e3 × std included; it grows to ~1e-5..1e-4 when single positions are 1e4 × a unit's spread
    (e.g. LM "massive activations"), since one term then dominates the float32 sums of a chunk.
    `gemm_dtype=np.float64` brings it to ~1e-10 at about half the speed.
    `dtype` (np.float32 or np.float64) is the dtype of `r`.

    Constant units (std <= `constant_rtol` · rms; default 2 machine epsilons of the input dtype,
    2.4e-7 for float32/float16) get r = 0 and are flagged in `const_a`/`const_b`.
    Raises ValueError for non-2-D inputs, different N, N < 2, or NaN/inf values.
    `prefetch` reads the next chunk in a background thread while the current one is multiplied.
    """
    n, dim_a, dim_b = _validate_pair(a, b)
    step = preferred_chunk(a, max(1, int(chunk_size or default_chunk_rows(dim_a, dim_b))))
    acc = PearsonAccumulator(dim_a, dim_b, gemm_dtype)
    for chunk_a, chunk_b in _chunk_pairs(a, b, n, step, prefetch):
        acc.update(chunk_a, chunk_b)
    return acc.result(dtype=dtype, constant_rtol=constant_rtol)


def _column_sums(x: np.ndarray) -> np.ndarray:
    """Σ over rows (float64 result), summed in x's dtype per block of rows: BLAS speed, ~1e-8 relative."""
    blocks, rest = _row_blocks(x, SUM_BLOCK)
    partial = np.ones(SUM_BLOCK, x.dtype) @ blocks  # one sum per block
    return partial.sum(0, dtype=np.float64) + rest.sum(0, dtype=np.float64)


def _column_sums_of_squares(x: np.ndarray) -> np.ndarray:
    """Σ x² over rows (float64 result), fused per block of rows (no squared copy of the chunk)."""
    blocks, rest = _row_blocks(x, SQUARE_BLOCK)
    partial = np.einsum("bij,bij->bj", blocks, blocks)
    return partial.sum(0, dtype=np.float64) + np.einsum("ij,ij->j", rest, rest, dtype=np.float64)


def _row_blocks(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """x as [blocks, block, D] (a view) plus the leftover rows."""
    full = x.shape[0] - x.shape[0] % block
    return x[:full].reshape(-1, block, x.shape[1]), x[full:]


def default_chunk_rows(dim_a: int, dim_b: int) -> int:
    """Rows per chunk such that a chunk of the wider model is about `CHUNK_BYTES` of float32."""
    low, high = CHUNK_ROWS_RANGE
    return int(min(high, max(low, CHUNK_BYTES // (4 * max(dim_a, dim_b)))))


def _validate_pair(a: Any, b: Any) -> tuple[int, int, int]:
    n_a, dim_a = shape_of(a, "A")
    n_b, dim_b = shape_of(b, "B")
    if n_a != n_b:
        raise ValueError(f"A and B must have the same positions (rows): N_A={n_a}, N_B={n_b}")
    if n_a < 2:
        raise ValueError(f"Pearson needs at least 2 positions, got N={n_a}")
    if dim_a == 0 or dim_b == 0:
        raise ValueError(f"A and B need at least one unit each, got Da={dim_a}, Db={dim_b}")
    return n_a, dim_a, dim_b


def _read_pair(a: Any, b: Any, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    return read_rows(a, start, stop), read_rows(b, start, stop)


def _as_chunk(chunk: np.ndarray | torch.Tensor) -> np.ndarray:
    return read_rows(chunk, 0, len(chunk))


def _raise_non_finite(chunk: np.ndarray, name: str, row_offset: int) -> None:
    bad_rows = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
    if len(bad_rows):
        raise ValueError(f"{name} contains NaN or inf (first at row {row_offset + int(bad_rows[0])})")
    raise ValueError(f"{name}: values between rows {row_offset} and {row_offset + len(chunk)} overflow float32 sums")


def _chunk_pairs(a: Any, b: Any, n: int, step: int, prefetch: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield aligned row chunks of a and b; with `prefetch`, chunk k+1 is read while k is used."""
    bounds = [(start, min(start + step, n)) for start in range(0, n, step)]
    if not prefetch or len(bounds) == 1:
        for start, stop in bounds:
            yield _read_pair(a, b, start, stop)
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(_read_pair, a, b, *bounds[0])
        for next_bounds in bounds[1:] + [None]:
            chunk = pending.result()
            if next_bounds is not None:
                pending = reader.submit(_read_pair, a, b, *next_bounds)
            yield chunk
