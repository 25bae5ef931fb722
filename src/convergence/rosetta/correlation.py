"""Exact Pearson correlation between every unit of A and every unit of B, streamed over positions.

Why not the textbook one-pass formula `(Σxy − ΣxΣy/N) / ...` in float32: activations carry large
offsets (mean ≫ std), and the subtraction then cancels nearly all digits. Why not two passes: the data
would be read twice. Instead, per chunk of rows, one GEMM and one pass over each side:

1. a per-unit shift: the median of a few rows of the chunk (`SHIFT_ROWS`), rounded to the input precision,
   so it lies inside the bulk of the values whatever the offsets and however the means drift between
   chunks, and a single outlier row (LM "massive activations") does not move it. O(D) per chunk;
2. one fused pass (`_centring.centre_rows`, numba, one thread per block of rows): subtract the shift,
   write the float32 GEMM operand, accumulate per-unit sums, sums of squares and largest |value| in
   float64;
3. rows that hold a value beyond `OUTLIER_RATIO` × the unit's spread in the chunk are taken out of the
   float32 GEMM and added exactly in float64 (a few rows: the float32 sum would carry their huge terms'
   rounding into every other term of the unit);
4. one float32 GEMM of the centred chunk (the only O(N·Da·Db) work, at BLAS speed) added to float64
   co-moments; the shifts are corrected exactly in float64 (two rank-one terms per chunk, stacked and
   applied as one small GEMM every `FLUSH_ROWS`).

Measured bound (float32 GEMM): |r − float64 corrcoef| ≤ 1e-6 on offsets of 1e3 × std, means drifting
between chunks, single positions 1e4 × a unit's spread, and real SmolLM2-135M units (residual and MLP;
see tests/test_rosetta.py). `gemm_dtype=np.float64` brings it to ~1e-12 at about half the speed.

Memory is O(Da·Db + chunk_size·(Da+Db)), independent of N.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ._centring import centre_rows, rows_beyond
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
# Rows of a chunk whose per-unit median is the chunk's shift (evenly spaced).
SHIFT_ROWS = 9
# A value more than this many times its unit's rms (about the shift, in its chunk) makes its row an
# outlier row, summed in float64. Gaussian data never gets there; ReLU-sparse units seldom.
OUTLIER_RATIO = 32.0


@dataclass
class PearsonResult:
    """Pearson correlations `r [Da, Db]` with the constant units masked.

    `r[i, j]` is exact Pearson (|error| ≤ 1e-6, see the module doc) between unit i of A and unit j
    of B over all N positions. Rows of constant A units and columns of constant B units
    (`const_a`, `const_b`) are set to 0.0: never NaN. Unpacks as `r, const_a, const_b = result`.
    `self_r`: with `self_blocks` (see `PearsonAccumulator`), the correlation matrix of each block of
    A's units with itself (float64; constant units' rows and columns 0), else None.
    """

    r: np.ndarray
    const_a: np.ndarray
    const_b: np.ndarray
    n: int
    mean_a: np.ndarray
    std_a: np.ndarray
    mean_b: np.ndarray
    std_b: np.ndarray
    self_r: list[np.ndarray] | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.r, self.const_a, self.const_b))

    @property
    def shape(self) -> tuple[int, int]:
        return self.r.shape


class _Side:
    """One model's half of the accumulator: shifts, the centred chunk, per-unit sums about a reference."""

    def __init__(self, dim: int, name: str, gemm_dtype):
        self.dim, self.name, self.gemm_dtype = dim, name, np.dtype(gemm_dtype)
        self.ref: np.ndarray | None = None  # the first chunk's shift
        self.total = np.zeros(dim, np.float64)  # Σ (x − ref)
        self.sq = np.zeros(dim, np.float64)  # Σ (x − ref)²
        self.eps = 0.0  # coarsest machine epsilon among the chunks seen
        self._buffer = np.empty((0, dim), self.gemm_dtype)
        # this chunk: shift, shift − ref, Σ (x − shift), rows
        self.shift = self.delta = self.sums = None
        self.rows = 0

    def centre(self, chunk: np.ndarray, pool: ThreadPoolExecutor | None, parts: int, row_offset: int) -> np.ndarray:
        rows = chunk.shape[0]
        if chunk.shape[1] != self.dim:
            raise ValueError(f"{self.name}: chunk has {chunk.shape[1]} units, expected {self.dim}")
        if self._buffer.shape[0] < rows:
            self._buffer = np.empty((rows, self.dim), self.gemm_dtype)
        out = self._buffer[:rows]
        picks = np.unique(np.linspace(0, rows - 1, min(SHIFT_ROWS, rows)).round().astype(np.int64))
        with np.errstate(all="ignore"):  # NaN/inf are detected from the sums below
            shift = np.median(chunk[picks], axis=0).astype(chunk.dtype).astype(np.float64)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        bounds = np.linspace(0, rows, max(1, min(parts, rows)) + 1).astype(np.int64)
        partial = np.zeros((len(bounds) - 1, 3, self.dim), np.float64)

        def run(k: int) -> None:
            lo, hi = bounds[k], bounds[k + 1]
            centre_rows(chunk[lo:hi], shift, out[lo:hi], partial[k, 0], partial[k, 1], partial[k, 2])

        if pool is None or len(bounds) == 2:
            for k in range(len(bounds) - 1):
                run(k)
        else:
            list(pool.map(run, range(len(bounds) - 1)))
        sums, sq, peak = partial[:, 0].sum(0), partial[:, 1].sum(0), partial[:, 2].max(0)
        if not (np.isfinite(sq).all() and np.isfinite(sums).all()):
            _raise_non_finite(chunk, self.name, row_offset)
        if self.ref is None:
            self.ref = shift.copy()
        delta = shift - self.ref
        self.total += sums + rows * delta
        self.sq += sq + 2 * delta * sums + rows * delta * delta
        self.eps = max(self.eps, float(np.finfo(chunk.dtype).eps))
        self.shift, self.delta, self.sums, self.rows, self.peak, self.chunk_sq = shift, delta, sums, rows, peak, sq
        return out

    def outlier_rows(self, centred: np.ndarray) -> np.ndarray | None:
        """Mask of the rows holding a value beyond OUTLIER_RATIO × its unit's rms in this chunk, or None."""
        limit = OUTLIER_RATIO * np.sqrt(self.chunk_sq / max(self.rows, 1))
        units = np.flatnonzero(self.peak > limit)
        if not len(units):
            return None
        mask = np.zeros(self.rows, np.bool_)
        rows_beyond(centred, units.astype(np.int64), limit[units], mask)
        return mask

    def moments(self, n: int, constant_rtol: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, variance, constant mask) over all rows seen."""
        offset = self.total / n
        var = np.maximum(self.sq / n - offset * offset, 0.0)
        mean = self.ref + offset
        rtol = CONSTANT_EPS * self.eps if constant_rtol is None else constant_rtol
        constant = var <= (rtol * rtol) * (mean * mean + var)
        return mean, var, constant


class _Cross:
    """Float64 co-moments about the sides' references of columns `cols_l` of one side and `cols_r` of another."""

    def __init__(self, left: _Side, cols_l: slice, right: _Side, cols_r: slice, gemm_dtype):
        self.left, self.right, self.cols_l, self.cols_r = left, right, cols_l, cols_r
        dl, dr = len(range(*cols_l.indices(left.dim))), len(range(*cols_r.indices(right.dim)))
        # numpy float64: its single-threaded add after each GEMM is as fast as torch's two threads (memory-
        # bound) and never waits on a descheduled OpenMP thread (which cost ~10 ms a chunk on a busy machine).
        self.comoment = np.zeros((dl, dr), np.float64)
        self._gemm_out = torch.empty((dl, dr), dtype=torch.from_numpy(np.empty(0, gemm_dtype)).dtype)
        self._rows_l: list[np.ndarray] = []
        self._rows_r: list[np.ndarray] = []

    def add(self, centred_l: np.ndarray, centred_r: np.ndarray, exact_l: np.ndarray | None,
            exact_r: np.ndarray | None) -> None:
        """One chunk: GEMM of the centred operands (outlier rows zeroed), float64 outlier rows, shift terms."""
        left, right = self.left, self.right
        torch.mm(torch.from_numpy(centred_l[:, self.cols_l]).T, torch.from_numpy(centred_r[:, self.cols_r]),
                 out=self._gemm_out)
        np.add(self.comoment, self._gemm_out.numpy(), out=self.comoment)
        if exact_l is not None:  # torch, not numpy: numpy's BLAS pool would fight torch's for the cores
            torch.from_numpy(self.comoment).addmm_(torch.from_numpy(exact_l[:, self.cols_l]).T,
                                                   torch.from_numpy(exact_r[:, self.cols_r]))
        # Σ(x−ref_l)(y−ref_r)ᵀ = Σ(x−s)(y−t)ᵀ + δ_l (Σ(y−t) + n δ_r)ᵀ + Σ(x−s) δ_rᵀ, with δ = shift − ref.
        d_l, d_r = left.delta[self.cols_l], right.delta[self.cols_r]
        self._rows_l += [d_l, left.sums[self.cols_l]]
        self._rows_r += [right.sums[self.cols_r] + right.rows * d_r, d_r]
        if len(self._rows_l) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._rows_l:
            torch.from_numpy(self.comoment).addmm_(torch.from_numpy(np.stack(self._rows_l)).T,
                                                   torch.from_numpy(np.stack(self._rows_r)))
            self._rows_l, self._rows_r = [], []

    def about_mean(self, n: int) -> np.ndarray:
        """Co-moments about the means: Σ(x−x̄)(y−ȳ)ᵀ (float64)."""
        self.flush()
        shift_l, shift_r = self.left.total[self.cols_l] / n, self.right.total[self.cols_r] / n
        return self.comoment - n * np.outer(shift_l, shift_r)


class PearsonAccumulator:
    """Streaming co-moments of two row-aligned matrices; `update` chunks, then `result()`.

    Exposed so a caller that already iterates over positions (e.g. while extracting activations)
    can feed chunks directly instead of going through `pearson`.
    `self_blocks`: column ranges `(start, stop)` of A whose correlation matrix with themselves is
    accumulated in the same pass (`PearsonResult.self_r`); the rotation nulls need it (Σ_A per layer).
    `threads`: threads of the centring pass (default: torch's thread count).
    """

    def __init__(self, dim_a: int, dim_b: int, gemm_dtype: type = np.float32,
                 self_blocks: Sequence[tuple[int, int]] | None = None, threads: int | None = None):
        self.dim_a, self.dim_b = dim_a, dim_b
        self.n = 0
        self.side_a, self.side_b = _Side(dim_a, "A", gemm_dtype), _Side(dim_b, "B", gemm_dtype)
        self.cross = _Cross(self.side_a, slice(None), self.side_b, slice(None), gemm_dtype)
        self.self_blocks = [(int(a), int(b)) for a, b in (self_blocks or [])]
        self.selves = [_Cross(self.side_a, slice(a, b), self.side_a, slice(a, b), gemm_dtype)
                       for a, b in self.self_blocks]
        self.threads = max(1, int(threads or torch.get_num_threads()))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def update(self, chunk_a: np.ndarray | torch.Tensor, chunk_b: np.ndarray | torch.Tensor) -> None:
        """Add rows: `chunk_a [n, Da]`, `chunk_b [n, Db]` (any float dtype; read as by `read_rows`)."""
        chunk_a, chunk_b = _as_chunk(chunk_a), _as_chunk(chunk_b)
        rows = chunk_a.shape[0]
        if chunk_b.shape[0] != rows:
            raise ValueError(f"chunks must have the same rows, got {rows} and {chunk_b.shape[0]}")
        if rows == 0:
            return
        # Each side's rows split among the threads: balanced however different Da and Db are.
        centred_a = self.side_a.centre(chunk_a, self._pool, self.threads, self.n)
        centred_b = self.side_b.centre(chunk_b, self._pool, self.threads, self.n)
        exact_a = exact_b = None
        masks = [m for m in (self.side_a.outlier_rows(centred_a), self.side_b.outlier_rows(centred_b))
                 if m is not None]
        if masks:
            outliers = np.flatnonzero(np.logical_or.reduce(masks))
            exact_a = chunk_a[outliers].astype(np.float64) - self.side_a.shift
            exact_b = chunk_b[outliers].astype(np.float64) - self.side_b.shift
            centred_a[outliers] = 0.0
            centred_b[outliers] = 0.0
        self.cross.add(centred_a, centred_b, exact_a, exact_b)
        for block in self.selves:
            block.add(centred_a, centred_a, exact_a, exact_a)
        self.n += rows

    def result(self, dtype: type = np.float32, constant_rtol: float | None = None) -> PearsonResult:
        """Correlations so far, as `PearsonResult` with `r` in `dtype` (float32 or float64)."""
        if self.n < 2:
            raise ValueError(f"Pearson needs at least 2 positions, got N={self.n}")
        n = self.n
        mean_a, var_a, const_a = self.side_a.moments(n, constant_rtol)
        mean_b, var_b, const_b = self.side_b.moments(n, constant_rtol)
        with np.errstate(divide="ignore"):
            inv_a = np.where(const_a, 0.0, 1.0 / np.sqrt(var_a * n))
            inv_b = np.where(const_b, 0.0, 1.0 / np.sqrt(var_b * n))
        r = self.cross.about_mean(n)
        r *= inv_a[:, None]
        r *= inv_b[None, :]
        np.clip(r, -1.0, 1.0, out=r)
        self_r = None
        if self.selves:
            self_r = []
            for (lo, hi), block in zip(self.self_blocks, self.selves):
                inv = inv_a[lo:hi]
                self_r.append(np.clip(block.about_mean(n) * inv[:, None] * inv[None, :], -1.0, 1.0))
        return PearsonResult(
            r=r.astype(dtype, copy=False), const_a=const_a, const_b=const_b, n=n, mean_a=mean_a,
            std_a=np.sqrt(var_a), mean_b=mean_b, std_b=np.sqrt(var_b), self_r=self_r,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):
        self.close()


def pearson(
    a: Any,
    b: Any,
    chunk_size: int | None = None,
    dtype: type = np.float32,
    constant_rtol: float | None = None,
    prefetch: bool = True,
    gemm_dtype: type = np.float32,
    self_blocks: Sequence[tuple[int, int]] | None = None,
) -> PearsonResult:
    """Exact Pearson r between every column (unit) of `a [N, Da]` and every column of `b [N, Db]`.

    `a`, `b`: numpy arrays, torch tensors, zarr arrays, or anything with `.shape` that slices along
    axis 0 (e.g. `LayerView`); read `chunk_size` rows at a time (default `default_chunk_rows`,
    rounded up to whole zarr chunks), so memory does not grow with N.

    Computation (module doc): a `gemm_dtype` GEMM per chunk of rows centred on a robust per-chunk shift,
    outlier rows in float64, float64 accumulation. With float32 the |error| vs float64 `numpy.corrcoef`
    on the same values is at most 1e-6 (measured: offsets of 1e3 × std, drifting means, single positions
    1e4 × a unit's spread as LM "massive activations", real SmolLM2 units), typically 1e-7.
    `gemm_dtype=np.float64` brings it to ~1e-12 at about half the speed.
    `dtype` (np.float32 or np.float64) is the dtype of `r`. `self_blocks`: see `PearsonAccumulator`.

    Constant units (std <= `constant_rtol` · rms; default 2 machine epsilons of the input dtype,
    2.4e-7 for float32/float16) get r = 0 and are flagged in `const_a`/`const_b`.
    Raises ValueError for non-2-D inputs, different N, N < 2, or NaN/inf values.
    `prefetch` reads the next chunk in a background thread while the current one is multiplied.
    """
    n, dim_a, dim_b = _validate_pair(a, b)
    step = preferred_chunk(a, max(1, int(chunk_size or default_chunk_rows(dim_a, dim_b))))
    acc = PearsonAccumulator(dim_a, dim_b, gemm_dtype, self_blocks=self_blocks)
    try:
        for chunk_a, chunk_b in _chunk_pairs(a, b, n, step, prefetch):
            acc.update(chunk_a, chunk_b)
        return acc.result(dtype=dtype, constant_rtol=constant_rtol)
    finally:
        acc.close()


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
