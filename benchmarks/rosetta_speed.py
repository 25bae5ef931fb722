"""Speed and memory of the Rosetta correlations, measured side by side in one run.

1. Rate: exact streamed `convergence.rosetta.pearson` of all units x all units (default 1024 x 1024 over
   40,000 positions, float32 with offsets, torch tensors as inputs) against `torch.matmul(A.T, B)` of the
   same tensors, timed alternately (the GEMM is the floor: exact Pearson needs at least that product).
   Then where pearson's time goes: the same blocked GEMMs alone, the centring passes alone, the rest.
2. Rotation nulls: R draws from the one observed pass (Σ per layer accumulated in it, then
   diag(QᵀΣQ)^(-1/2)·QᵀR per draw, `convergence.rosetta.stage.rotated_correlations`) against R streamed
   passes over the rotated, z-scored data; both give the same matrices (the largest difference is printed).
   Shapes: A = 2 layers of 512 units, B = 1024 units, N positions; and the default run's largest MLP
   pairs' per-draw cost at N = 4,312 (the photos' words).
3. Memory: peak resident memory of `pearson` on a lazily generated input at N/4, N and 4N, each in a
   fresh subprocess, so neither the data nor the other runs are counted; equal peaks = independent of N
   (once N spans several chunks: the smallest N may fit in one or two).

The machine's load average is printed before and after: on a shared machine only the ratios measured
side by side mean anything. With 2 threads, `OMP_WAIT_POLICY=PASSIVE` in the environment stops the GEMM's
OpenMP thread spinning while the centring pass runs (2-3 points of rate here; it leaves the GEMM as fast).

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
from convergence.rosetta.correlation import (
    PearsonAccumulator,
    default_block_rows,
    default_chunk_rows,
)
from convergence.rosetta.stage import (
    FlatUnits,
    _NullRotations,
    null_seeds,
    rotated_correlations,
    unit_moments,
)


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


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def speed(n: int, dim: int, repeats: int, chunk_size: int) -> None:
    ta, tb = torch.from_numpy(materialise(n, dim, 1)), torch.from_numpy(materialise(n, dim, 2))
    flops = 2.0 * n * dim * dim
    torch.matmul(ta.T, tb)  # warm-up: thread pool, BLAS buffers, the numba kernels' load
    pearson(ta[:2 * chunk_size], tb[:2 * chunk_size], chunk_size=chunk_size)
    times = time_alternately(
        {
            "torch.matmul(A.T, B)": lambda: torch.matmul(ta.T, tb),
            "rosetta.pearson": lambda: pearson(ta, tb, chunk_size=chunk_size),
        },
        repeats,
    )
    print(f"1. rate: A, B = [{n}, {dim}] float32 torch tensors; {flops / 1e9:.1f} GFLOP per product; "
          f"torch threads {torch.get_num_threads()}; chunk_size {chunk_size}; best of {repeats}, alternated")
    best = {name: min(t) for name, t in times.items()}
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds:7.3f} s  {flops / seconds / 1e9:7.1f} GFLOP/s")
    ratios = [m / p for m, p in zip(times["torch.matmul(A.T, B)"], times["rosetta.pearson"])]
    rate = best["torch.matmul(A.T, B)"] / best["rosetta.pearson"]
    print(f"  pearson rate / matmul rate: {rate:.0%} best vs best; per round: "
          f"{', '.join(f'{x:.0%}' for x in ratios)} (median {np.median(ratios):.0%}; target >= 85%)")
    breakdown(ta.numpy(), tb.numpy(), chunk_size, repeats)


def breakdown(a: np.ndarray, b: np.ndarray, chunk_size: int, repeats: int) -> None:
    """pearson's time split: its blocked GEMMs alone, its centring passes alone, and the rest."""
    n, dim = a.shape
    acc = PearsonAccumulator(dim, dim)
    out = torch.empty((dim, dim))
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    blocks = [[(s, min(s + acc.block_rows, hi)) for s in range(lo, hi, acc.block_rows)] for lo, hi in chunks]

    def gemms():
        for chunk in blocks:
            for k, (lo, hi) in enumerate(chunk):
                left, right = torch.from_numpy(a[lo:hi]).T, torch.from_numpy(b[lo:hi])
                out.addmm_(left, right) if k else torch.mm(left, right, out=out)

    def centring():
        for (lo, hi), chunk in zip(chunks, blocks):
            acc.side_a.begin_chunk(a[lo:hi])
            acc.side_b.begin_chunk(b[lo:hi])
            for start, stop in chunk:
                acc.centre_block(a[start:stop], b[start:stop], start)

    times = time_alternately({"pearson": lambda: pearson(a, b, chunk_size=chunk_size), "gemms": gemms,
                              "centring": centring}, repeats)
    acc.close()
    best = {name: min(t) for name, t in times.items()}
    rest = best["pearson"] - best["gemms"] - best["centring"]
    print(f"  where pearson's {best['pearson']:.3f} s go (best of {repeats} each): its {sum(map(len, blocks))} GEMMs "
          f"of {acc.block_rows} rows {best['gemms']:.3f} s ({best['gemms'] / best['pearson']:.0%}), centring passes "
          f"(shift, fused subtract/sums/squares/max, both sides) {best['centring']:.3f} s "
          f"({best['centring'] / best['pearson']:.0%}), the rest (float64 accumulation, shift corrections, final "
          f"scaling) {rest:.3f} s ({rest / best['pearson']:.0%})")


def nulls(n: int, layers: int, width: int, dim_b: int, draws: int) -> None:
    """R rotation nulls: Σ trick (one pass + R small products) vs R streamed passes over rotated data."""
    x = materialise(n, layers * width, 3).reshape(n, layers, width)
    y = materialise(n, dim_b, 4)
    a, blocks = FlatUnits(x), [(s * width, (s + 1) * width) for s in range(layers)]
    start = time.perf_counter()
    rotations = _NullRotations(width, null_seeds(0, draws), 2**40)
    made = [rotations[q] for q in range(draws)]  # the same for both methods: timed apart
    rotation_seconds = time.perf_counter() - start

    def sigma_trick():
        observed = pearson(a, y, self_blocks=blocks)
        sigma = torch.from_numpy(np.stack(observed.self_r).astype(np.float32))
        return [rotated_correlations(observed.r, sigma, q)[0] for q in made]

    def streamed():
        mean, std = unit_moments(a)
        return [pearson(FlatUnits(x, None, q.numpy(), mean, std), y).r for q in made]

    plain = lambda: pearson(a, y)  # noqa: E731: the observed pass alone
    times, results = {}, {}
    for name, run in (("observed pass alone", plain), ("Σ trick", sigma_trick), ("streamed", streamed)):
        start = time.perf_counter()
        results[name] = run()
        times[name] = time.perf_counter() - start
    diff = max(float(np.abs(f - s).max()) for f, s in zip(results["Σ trick"], results["streamed"]))
    print(f"2. rotation nulls: A = {layers} layers x {width} units, B = {dim_b} units, N = {n:,}, R = {draws} draws "
          f"(one Haar rotation per draw, shared by A's layers)")
    print(f"  observed pass alone {times['observed pass alone']:.2f} s; Σ trick (the pass with Σ, then R products) "
          f"{times['Σ trick']:.2f} s; R streamed passes {times['streamed']:.2f} s: "
          f"{times['streamed'] / times['Σ trick']:.1f}x; the {draws} rotations (not in either) {rotation_seconds:.2f} s; "
          f"max |Σ trick - streamed| = {diff:.1e}")


def null_cost_per_draw(n: int, shapes: list[tuple[str, int, int, int]], draws: int) -> None:
    """Per draw: a rotation and its products, at the default run's MLP widths, vs one streamed pass."""
    print(f"  the default run's MLP pairs at N = {n:,} (per draw: one rotation and its products; a streamed draw "
          "would cost one more pass):")
    for name, layers, width, dim_b in shapes:
        rng = np.random.default_rng(0)
        r = (rng.standard_normal((layers * width, dim_b), dtype=np.float32) * 0.1).clip(-1, 1)
        z = rng.standard_normal((2 * width, width)).astype(np.float32)
        sigma = torch.from_numpy(np.stack([np.corrcoef(z.T)] * layers).astype(np.float32))
        rotations = _NullRotations(width, null_seeds(0, draws), 0)
        t_rot = t_prod = 0.0
        for q in range(draws):
            start = time.perf_counter()
            rotation = rotations[q]
            t_rot += time.perf_counter() - start
            start = time.perf_counter()
            rotated_correlations(r, sigma, rotation)
            t_prod += time.perf_counter() - start
        a, b = SyntheticActivations(n, layers * width, 5), SyntheticActivations(n, dim_b, 6)
        start = time.perf_counter()
        pearson(a, b)
        t_pass = time.perf_counter() - start
        print(f"    {name:28s} rotation {t_rot / draws:.3f} s, products {t_prod / draws:.3f} s per draw; "
              f"one pass {t_pass:.2f} s; R = 20 draws: {20 * (t_rot + t_prod) / draws:.1f} s")


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
    print(f"3. peak memory growth during pearson, [N, {dim}] x [N, {dim}] generated lazily, chunk_size {chunk_size}, "
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
          f"the chunk in use, the prefetched one, the generator's temporaries), centred blocks of "
          f"{default_block_rows(dim, dim)} rows ({default_block_rows(dim, dim) * dim * 4 / 2**20:.0f} MiB per model)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512 units over 10,000 positions")
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--positions", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: pearson's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "nulls", "memory"])
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dim = args.units or (512 if args.quick else 1024)
    args.chunk_size = args.chunk_size or default_chunk_rows(dim, dim)
    if args.memory_child is not None:
        peak_memory_child(args.memory_child, dim, args.chunk_size)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    n = args.positions or (10_000 if args.quick else 40_000)
    print(f"before: {load()}")
    if "speed" not in args.skip:
        speed(n, dim, args.repeats or 9, args.chunk_size)
    if "nulls" not in args.skip:
        if args.quick:
            nulls(n, 2, 128, 256, 5)
        else:
            nulls(n, 2, dim // 2, dim, 20)
            # (rotated side: the narrower layers) minilm x mpnet, gemma x mpnet
            null_cost_per_draw(4312, [("minilm-l6 (3x1536) x mpnet", 3, 1536, 3 * 3072),
                                      ("gemma3 (3x2048) x mpnet", 3, 2048, 3 * 3072)], 3)
    if "memory" not in args.skip:
        # Quick runs are too short to span several default-sized chunks: use small chunks for memory.
        memory([n // 4, n, 4 * n], dim, 1024 if args.quick else args.chunk_size)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
