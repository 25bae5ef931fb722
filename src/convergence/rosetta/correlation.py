"""Exact Pearson correlation between every unit of A and every unit of B, streamed over positions.

Why not the textbook one-pass formula `(Σxy − ΣxΣy/N) / ...` in float32: activations carry large
offsets (mean ≫ std), and the subtraction then cancels nearly all digits. Why not two passes: the data
would be read twice. Instead, per chunk of rows (the unit read and prefetched), one pass over each side and
one GEMM, a block of rows at a time:

1. a per-unit shift: the median of a few rows of the chunk (`SHIFT_ROWS`), rounded to the input precision,
   so it lies inside the bulk of the values whatever the offsets and however the means drift between
   chunks, and a single outlier row (LM "massive activations") does not move it. O(D) per chunk;
2. per block of rows (`default_block_rows`: both sides' centred blocks fit in the last-level cache), one
   fused pass (`_centring.centre_rows`, numba, the block's rows split among the threads): subtract the
   shift, write the float32 GEMM operand, accumulate per-unit sums, sums of squares and largest |value|
   in float64;
3. values beyond `OUTLIER_RATIO` × the rms of their unit's other values in the chunk so far are taken
   out of the float32 GEMM (zeroed in its operand) and added exactly in float64 (the float32 sum would
   carry their huge terms' rounding into every other term of the unit); only their units' rows and
   columns of the co-moments are touched, so a few hundred such values cost next to nothing;
4. one float32 GEMM of the centred block, read from cache (the only O(N·Da·Db) work, at BLAS speed),
   summed over the chunk's blocks by the GEMM (beta = 1) and added once per chunk to float64 co-moments;
   the shifts are corrected exactly in float64 (two rank-one terms per chunk, stacked and applied as one
   small GEMM every `FLUSH_ROWS`).

Measured bound (float32 GEMM): |r − float64 corrcoef| ≤ 1e-6 on offsets of 1e3 × std, means drifting
between chunks, single positions 1e4 × a unit's spread, and real SmolLM2-135M units (residual and MLP;
see tests/test_rosetta.py). `gemm_dtype=np.float64` brings it to ~1e-12 at about half the speed.

Memory is O(Da·Db + chunk_size·(Da+Db)), independent of N.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ._centring import centre_rows, rows_beyond
from .sources import preferred_chunk, read_rows, shape_of

# Default rows per chunk: a chunk of the wider model takes about CHUNK_BYTES as float32 (8192 rows
# at 1024 units). Enough rows for the GEMM to run at full speed, few enough to bound memory.
CHUNK_BYTES = 32 * 2**20
CHUNK_ROWS_RANGE = (1024, 16384)
# Rows centred and multiplied at a time within a chunk (`default_block_rows`): both sides' centred blocks
# take about BLOCK_BYTES, so the GEMM reads them from cache, not memory.
BLOCK_BYTES = 8 * 2**20
# A unit is constant when std <= rtol * rms (rms = sqrt(mean² + var)). By default rtol is this many
# machine epsilons of the input dtype: a spread of about one rounding step of the unit's magnitude
# is quantisation noise, not signal.
CONSTANT_EPS = 2.0
# Stacked rank-one corrections (2 rows per chunk) applied together once this many rows accumulate.
FLUSH_ROWS = 256
# Rows of a chunk whose per-unit median is the chunk's shift (evenly spaced).
SHIFT_ROWS = 9
# A value more than this many times the rms of its unit's other values (about the shift, in its chunk so
# far) is an outlier, summed in float64 outside the GEMM. Gaussian data never gets there; heavy-tailed
# units (LM MLP neurons, ReLU-sparse units) now and then.
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
    """One model's half of the accumulator: the chunk's shift, the centred block, per-unit sums about a reference."""

    def __init__(self, dim: int, name: str, gemm_dtype):
        self.dim, self.name, self.gemm_dtype = dim, name, np.dtype(gemm_dtype)
        self.ref: np.ndarray | None = None  # the first chunk's shift
        self.total = np.zeros(dim, np.float64)  # Σ (x − ref)
        self.sq = np.zeros(dim, np.float64)  # Σ (x − ref)²
        self.eps = 0.0  # coarsest machine epsilon among the chunks seen
        self._buffer = np.empty((0, dim), self.gemm_dtype)
        # this chunk: shift, shift − ref, Σ (x − shift) and Σ (x − shift)² over its blocks so far, rows so far
        self.shift = self.delta = self.sums = self.chunk_sq = None
        self.rows = 0

    def begin_chunk(self, chunk: np.ndarray) -> None:
        """Take the chunk's shift: the per-unit median of `SHIFT_ROWS` evenly spaced rows, in the input precision."""
        if chunk.shape[1] != self.dim:
            raise ValueError(f"{self.name}: chunk has {chunk.shape[1]} units, expected {self.dim}")
        rows = chunk.shape[0]
        picks = np.unique(np.linspace(0, rows - 1, min(SHIFT_ROWS, rows)).round().astype(np.int64))
        with np.errstate(all="ignore"):  # NaN/inf are detected from the sums
            shift = np.median(chunk[picks], axis=0).astype(chunk.dtype).astype(np.float64)
        self.shift = np.where(np.isfinite(shift), shift, 0.0)
        self.sums = np.zeros(self.dim, np.float64)
        self.chunk_sq = np.zeros(self.dim, np.float64)
        self.rows = 0
        self.eps = max(self.eps, float(np.finfo(chunk.dtype).eps))

    def centring_tasks(self, block: np.ndarray, parts: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
        """(centred output, partial sums [parts, 3, D], `centre_rows` argument tuples: one per part of the rows)."""
        rows = block.shape[0]
        if self._buffer.shape[0] < rows:
            self._buffer = np.empty((rows, self.dim), self.gemm_dtype)
        out = self._buffer[:rows]
        bounds = np.linspace(0, rows, max(1, min(parts, rows)) + 1).astype(np.int64)
        partial = np.zeros((len(bounds) - 1, 3, self.dim), np.float64)
        tasks = [(block[lo:hi], self.shift, out[lo:hi], partial[k, 0], partial[k, 1], partial[k, 2])
                 for k, (lo, hi) in enumerate(pairwise(bounds))]
        return out, partial, tasks

    def add_block(self, block: np.ndarray, partial: np.ndarray, row_offset: int) -> np.ndarray:
        """Fold a centred block's partial sums into the chunk's; returns the block's largest |x − shift| per unit."""
        sums, sq = partial[:, 0].sum(0), partial[:, 1].sum(0)
        if not (np.isfinite(sq).all() and np.isfinite(sums).all()):
            _raise_non_finite(block, self.name, row_offset)
        self.sums += sums
        self.chunk_sq += sq
        self.rows += block.shape[0]
        return partial[:, 2].max(0)

    def outliers(self, centred: np.ndarray, peak: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows of the block holding an outlier, per-unit limits) or None: an outlier is a value beyond
        OUTLIER_RATIO × the rms of its unit's other values.

        The rms is over the chunk's rows so far (this block included) about the shift, leaving out the
        block's largest |value|: a single outlier is caught however many rows surround it (with it left
        in, its ratio to the rms could never exceed √rows). Units without an outlier get an infinite limit.
        """
        others = np.maximum(self.chunk_sq - peak * peak, 0.0) / max(self.rows - 1, 1)
        with np.errstate(invalid="ignore"):  # OUTLIER_RATIO = inf (no outliers) times a zero rms
            limit = OUTLIER_RATIO * np.sqrt(others)
        units = np.flatnonzero(peak > limit)
        if not len(units):
            return None
        mask = np.zeros(centred.shape[0], np.bool_)
        rows_beyond(centred, units.astype(np.int64), limit[units], mask)
        limits = np.full(self.dim, np.inf)
        limits[units] = limit[units]
        return np.flatnonzero(mask), limits

    def end_chunk(self) -> None:
        """Move the chunk's sums onto the reference (the first chunk's shift)."""
        if self.ref is None:
            self.ref = self.shift.copy()
        self.delta = self.shift - self.ref
        self.total += self.sums + self.rows * self.delta
        self.sq += self.chunk_sq + 2 * self.delta * self.sums + self.rows * self.delta * self.delta

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
        # numpy float64: its single-threaded add after each chunk is as fast as torch's two threads (memory-
        # bound) and never waits on a descheduled OpenMP thread (which cost ~10 ms a chunk on a busy machine).
        self.comoment = np.zeros((dl, dr), np.float64)
        # The chunk's blocks are summed here by the GEMM itself (beta = 1), as one GEMM over the chunk would.
        self._gemm_out = torch.empty((dl, dr), dtype=torch.from_numpy(np.empty(0, gemm_dtype)).dtype)
        self._blocks = 0
        self._rows_l: list[np.ndarray] = []
        self._rows_r: list[np.ndarray] = []

    def add_block(self, centred_l: np.ndarray, centred_r: np.ndarray, exact_l: tuple | None,
                  exact_r: tuple | None) -> None:
        """One block of a chunk: GEMM of the centred operands (outlier entries zeroed), outliers in float64.

        `exact_l`, `exact_r`: None, or (values, entries): float64 values x − shift of the rows holding an
        outlier (the same rows for both sides) and the mask of their outlier entries. Over those rows,
        Σ xᵀy = Σ x_oᵀ y + Σ x_rᵀ y_o + Σ x_rᵀ y_r (o: outlier entries, r: the rest); the GEMM holds the
        last term; the first two touch only the outliers' rows and columns of the co-moments.
        """
        left = torch.from_numpy(centred_l[:, self.cols_l]).T
        right = torch.from_numpy(centred_r[:, self.cols_r])
        if self._blocks:
            self._gemm_out.addmm_(left, right)
        else:
            torch.mm(left, right, out=self._gemm_out)
        self._blocks += 1
        if exact_l is None:
            return
        x, x_out = exact_l[0][:, self.cols_l], exact_l[1][:, self.cols_l]
        y, y_out = exact_r[0][:, self.cols_r], exact_r[1][:, self.cols_r]
        # torch, not numpy: numpy's BLAS pool would fight torch's for the cores
        units = np.flatnonzero(x_out.any(0))
        if len(units):
            picked = np.where(x_out[:, units], x[:, units], 0.0)
            self.comoment[units] += (torch.from_numpy(picked).T @ torch.from_numpy(y)).numpy()
        units = np.flatnonzero(y_out.any(0))
        if len(units):
            rest = np.where(x_out, 0.0, x)
            picked = np.where(y_out[:, units], y[:, units], 0.0)
            self.comoment[:, units] += (torch.from_numpy(rest).T @ torch.from_numpy(picked)).numpy()

    def end_chunk(self) -> None:
        """Add the chunk's GEMM sum in float64 and queue its shift terms."""
        if self._blocks:
            np.add(self.comoment, self._gemm_out.numpy(), out=self.comoment)
            self._blocks = 0
        left, right = self.left, self.right
        # Σ(x−ref_l)(y−ref_r)ᵀ = Σ(x−s)(y−t)ᵀ + δ_l (Σ(y−t) + n δ_r)ᵀ + Σ(x−s) δ_rᵀ, with δ = shift − ref.
        d_l, d_r = left.delta[self.cols_l], right.delta[self.cols_r]
        self._rows_l += [d_l, left.sums[self.cols_l]]
        self._rows_r += [right.sums[self.cols_r] + right.rows * d_r, d_r]
        if len(self._rows_l) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._rows_l:  # torch, not numpy: numpy's BLAS pool would fight torch's for the cores
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
    `block_rows`: rows centred and multiplied at a time within a chunk (default `default_block_rows`).
    """

    def __init__(self, dim_a: int, dim_b: int, gemm_dtype: type = np.float32,
                 self_blocks: Sequence[tuple[int, int]] | None = None, threads: int | None = None,
                 block_rows: int | None = None):
        self.dim_a, self.dim_b = dim_a, dim_b
        self.n = 0
        self.side_a, self.side_b = _Side(dim_a, "A", gemm_dtype), _Side(dim_b, "B", gemm_dtype)
        self.cross = _Cross(self.side_a, slice(None), self.side_b, slice(None), gemm_dtype)
        self.self_blocks = [(int(a), int(b)) for a, b in (self_blocks or [])]
        self.selves = [_Cross(self.side_a, slice(a, b), self.side_a, slice(a, b), gemm_dtype)
                       for a, b in self.self_blocks]
        self.block_rows = max(1, int(block_rows or default_block_rows(dim_a, dim_b, np.dtype(gemm_dtype).itemsize)))
        self.threads = max(1, int(threads or torch.get_num_threads()))
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def update(self, chunk_a: np.ndarray | torch.Tensor, chunk_b: np.ndarray | torch.Tensor) -> None:
        """Add rows: `chunk_a [n, Da]`, `chunk_b [n, Db]` (any float dtype; read as by `read_rows`)."""
        chunk_a, chunk_b = _as_chunk(chunk_a), _as_chunk(chunk_b)
        rows = chunk_a.shape[0]
        if chunk_b.shape[0] != rows:
            raise ValueError(f"chunks must have the same rows, got {rows} and {chunk_b.shape[0]}")
        if rows == 0:
            return
        self.side_a.begin_chunk(chunk_a)
        self.side_b.begin_chunk(chunk_b)
        for lo in range(0, rows, self.block_rows):
            hi = min(lo + self.block_rows, rows)
            self._add_block(chunk_a[lo:hi], chunk_b[lo:hi], self.n + lo)
        self.side_a.end_chunk()
        self.side_b.end_chunk()
        self.cross.end_chunk()
        for block in self.selves:
            block.end_chunk()
        self.n += rows

    def centre_block(self, block_a: np.ndarray, block_b: np.ndarray, row_offset: int) -> tuple[np.ndarray, ...]:
        """One fused pass over a block of both sides (within the chunk begun by each side's `begin_chunk`):
        (centred A, A's largest |x − shift| per unit, centred B, B's). Each side's rows are split among the
        threads (balanced however different Da and Db are); this thread takes one share itself."""
        centred_a, partial_a, tasks_a = self.side_a.centring_tasks(block_a, self.threads)
        centred_b, partial_b, tasks_b = self.side_b.centring_tasks(block_b, self.threads)
        shares = [tasks_a[k::self.threads] + tasks_b[k::self.threads] for k in range(self.threads)]
        pending = [self._pool.submit(_centre_all, share) for share in shares[1:] if share] if self._pool else []
        _centre_all(shares[0])
        for future in pending:
            future.result()
        peak_a = self.side_a.add_block(block_a, partial_a, row_offset)
        peak_b = self.side_b.add_block(block_b, partial_b, row_offset)
        return centred_a, peak_a, centred_b, peak_b

    def _add_block(self, block_a: np.ndarray, block_b: np.ndarray, row_offset: int) -> None:
        """Centre a block of rows (small enough to stay in cache for its GEMMs) and multiply it."""
        centred_a, peak_a, centred_b, peak_b = self.centre_block(block_a, block_b, row_offset)
        found_a, found_b = self.side_a.outliers(centred_a, peak_a), self.side_b.outliers(centred_b, peak_b)
        exact_a = exact_b = None
        if found_a is not None or found_b is not None:
            rows = np.union1d(*[f[0] if f is not None else np.empty(0, np.int64) for f in (found_a, found_b)])
            exact_a = _take_outliers(self.side_a, block_a, centred_a, found_a, rows)
            exact_b = _take_outliers(self.side_b, block_b, centred_b, found_b, rows)
        self.cross.add_block(centred_a, centred_b, exact_a, exact_b)
        for block in self.selves:
            block.add_block(centred_a, centred_a, exact_a, exact_a)

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
                sigma = np.clip(block.about_mean(n) * inv[:, None] * inv[None, :], -1.0, 1.0)
                # A unit's correlation with itself is 1 by definition; the float32 GEMM's diagonal, a sum of
                # same-sign terms, is off by ~√rows rounding steps (2e-6 on ReLU-sparse units).
                np.fill_diagonal(sigma, np.where(const_a[lo:hi], 0.0, 1.0))
                self_r.append(sigma)
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

    Computation (module doc): `gemm_dtype` GEMMs over cache-sized blocks of rows centred on a robust
    per-chunk shift, outlier values in float64, float64 accumulation. With float32 the |error| vs float64 `numpy.corrcoef`
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


def default_block_rows(dim_a: int, dim_b: int, itemsize: int = 4) -> int:
    """Rows per block: both centred blocks take about `BLOCK_BYTES`, so they stay in the last-level cache
    between the centring pass that writes them and the GEMM that reads them; a chunk is one block (the
    largest chunk, `CHUNK_ROWS_RANGE[1]`) where that many rows would not pay.

    Blocking saves writing and re-reading the centred rows, ~2·(Da+Db) values per row; it costs reading
    and writing the float32 GEMM output once per block, 2·Da·Db values per block. It pays for blocks of
    more than Da·Db/(Da+Db) rows: 1024 x 1024 units block by 1024 rows, 4096 x 6144 do not block.
    """
    rows = BLOCK_BYTES // (itemsize * (dim_a + dim_b))
    if rows <= dim_a * dim_b / (dim_a + dim_b):
        return CHUNK_ROWS_RANGE[1]
    return int(min(CHUNK_ROWS_RANGE[1], rows))


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


def _take_outliers(side: _Side, block: np.ndarray, centred: np.ndarray, found: tuple | None,
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 x − shift of `rows`, mask of their outlier entries); zeroes those entries in `centred`, so
    the float32 GEMM sums everything but them."""
    values = block[rows].astype(np.float64) - side.shift
    entries = np.abs(values) > found[1] if found is not None else np.zeros(values.shape, np.bool_)
    kept = centred[rows]
    kept[entries] = 0.0
    centred[rows] = kept
    return values, entries


def _centre_all(tasks: list[tuple]) -> None:
    for task in tasks:
        centre_rows(*task)


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
