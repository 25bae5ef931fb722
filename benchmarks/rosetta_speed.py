"""Speed and memory of `convergence.rosetta.pearson`, measured against plain `torch.matmul`.

Rate: all units × all units (default 1024 × 1024 over 40,000 positions, float32 with offsets),
as a fraction of this machine's `torch.matmul(A.T, B)` on the same shapes, timed alternately in
the same run (the GEMM is the floor: exact Pearson needs at least that product).
Memory: peak resident memory of `pearson` on a lazily generated input at N/4, N and 4N, each in a
fresh subprocess, so neither the data nor the other runs are counted; equal peaks = independent
of N (once N spans several chunks: the smallest N may fit in one or two).

    python benchmarks/rosetta_speed.py            # full run
    python benchmarks/rosetta_speed.py --quick    # smaller shapes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from convergence.rosetta import pearson
from convergence.rosetta.correlation import default_chunk_rows


class SyntheticActivations:
    """Rows generated on demand (seeded by position), so the input itself costs no memory."""

    def __init__(self, n: int, dim: int, seed: int):
        self.shape, self.seed = (n, dim), seed
        rng = np.random.default_rng(seed)
        self.offset = rng.uniform(-100, 100, dim).astype(np.float32)
        self.scale = rng.uniform(0.1, 10, dim).astype(np.float32)

    def __getitem__(self, rows: slice) -> np.ndarray:
        rng = np.random.default_rng((self.seed, rows.start))
        block = rng.standard_normal((rows.stop - rows.start, self.shape[1]), dtype=np.float32)
        return block * self.scale + self.offset


def materialise(n: int, dim: int, seed: int) -> np.ndarray:
    return SyntheticActivations(n, dim, seed)[0:n]


def time_alternately(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Run each callable `repeats` times, interleaved, so background load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def speed(n: int, dim: int, repeats: int, chunk_size: int) -> None:
    a, b = materialise(n, dim, 1), materialise(n, dim, 2)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * n * dim * dim
    torch.matmul(ta.T, tb)  # warm-up: thread pool, BLAS buffers
    times = time_alternately(
        {
            "torch.matmul(A.T, B)": lambda: torch.matmul(ta.T, tb),
            "rosetta.pearson": lambda: pearson(a, b, chunk_size=chunk_size),
        },
        repeats,
    )
    print(f"shapes: A, B = [{n}, {dim}] float32; {flops / 1e9:.1f} GFLOP per product; "
          f"torch threads {torch.get_num_threads()}; chunk_size {chunk_size}; best of {repeats}, alternated")
    best = {name: min(t) for name, t in times.items()}
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds:7.3f} s  {flops / seconds / 1e9:7.1f} GFLOP/s")
    ratios = [m / p for m, p in zip(times["torch.matmul(A.T, B)"], times["rosetta.pearson"])]
    rate = best["torch.matmul(A.T, B)"] / best["rosetta.pearson"]
    print(f"  pearson rate / matmul rate: {rate:.0%} (best vs best; per-round median {np.median(ratios):.0%}; "
          f"target >= 70%)")


def peak_memory_child(n: int, dim: int, chunk_size: int) -> None:
    """In a fresh process: peak RSS growth during one pearson call on a lazy input."""
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = SyntheticActivations(n, dim, 1), SyntheticActivations(n, dim, 2)
    baseline = _memory_kib("VmRSS")
    pearson(a, b, chunk_size=chunk_size)
    print(json.dumps({"n": n, "peak_growth_bytes": (_memory_kib("VmHWM") - baseline) * 1024}))


def _memory_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries the
    parent's resident size at fork over exec into it, which would count the parent's arrays."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def memory(sizes: list[int], dim: int, chunk_size: int) -> None:
    print(f"peak memory growth during pearson, [N, {dim}] × [N, {dim}] generated lazily, chunk_size {chunk_size}, "
          "fresh process each:")
    for n in sizes:
        command = [sys.executable, __file__, "--memory-child", str(n), "--units", str(dim),
                   "--chunk-size", str(chunk_size)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        growth = json.loads(out.strip().splitlines()[-1])["peak_growth_bytes"]
        in_memory = 2 * n * dim * 4
        print(f"  N = {n:>7,d}: peak growth {growth / 2**20:7.1f} MiB   (the inputs themselves would be "
              f"{in_memory / 2**20:7.1f} MiB)")
    print(f"  constant part: float64 co-moments {dim * dim * 8 / 2**20:.0f} MiB, float32 GEMM output "
          f"{dim * dim * 4 / 2**20:.0f} MiB, chunk-sized arrays of {chunk_size * dim * 4 / 2**20:.0f} MiB (per model: "
          f"the chunk in use, the prefetched one, the centred buffer, the generator's temporaries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512 units over 10,000 positions")
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--positions", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 9)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: pearson's)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dim = args.units or (512 if args.quick else 1024)
    args.chunk_size = args.chunk_size or default_chunk_rows(dim, dim)
    if args.memory_child is not None:
        peak_memory_child(args.memory_child, dim, args.chunk_size)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    n = args.positions or (10_000 if args.quick else 40_000)
    speed(n, dim, args.repeats or (9 if args.quick else 3), args.chunk_size)
    # Quick runs are too short to span several default-sized chunks: use small chunks for memory.
    memory([n // 4, n, 4 * n], dim, 1024 if args.quick else args.chunk_size)


if __name__ == "__main__":
    main()
