"""Calibration over the layer search: ``calibrate_layers`` against the reference, side by side.

    python benchmarks/calibration_speed.py            # mutual_knn, N=1024, 5 x 4 layers, K=50
    python benchmarks/calibration_speed.py --quick    # N=512, 4 x 3 layers, K=20
    python benchmarks/calibration_speed.py --budget   # what calibration costs the default run's pairs

The reference is ``calibrated_similarity.calibrate_layers`` (PyPI calibrated-similarity 0.1.1,
Gröger et al.'s code) given our metric as ``sim`` on the preprocessed float64 layers: for each of
the K + 1 grids it calls ``sim`` on every layer pair, so every kNN is computed 2 La Lb (K + 1)
times. Ours prepares each layer once (from the raw float32 stacks: clipping and normalisation are
inside its time) and relabels the kNN indices per permutation. Both get the same permutations and
must return the same calibrated score, tau and p (asserted). "naive" recomputes ``layer_scores``
for every permutation (each layer once per permutation). Timings are wall-clock on a shared
machine: ours is the best of several runs, the reference one run (it is slow); each ratio is
printed with the runs it comes from.

``--budget`` measures the CPU time (``time.process_time``: the job-minutes of single-threaded jobs;
wall-clock on a shared machine says little) of an align_pair job's parts for the layer shapes of
the default run's 12 models (synthetic activations, N=1024), per metric at its configured K, summed
over the 66 pairs; and of the job's process start and imports. Run it with one BLAS thread
(OMP_NUM_THREADS=1), as the jobs run.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from convergence import metrics
from convergence.alignment import calibrate_layers, layer_scores, preprocess
from convergence.alignment.calibration import calibrate_pair, critical_value, permutations
from convergence.alignment.layers import best_pair, prepare_pair
from convergence.alignment.nsweep import n_sweep, sweep_sizes
from convergence.alignment.stats import half_samples, replicate_scores

TOPK = 10


def features(n: int, layers: int, dim: int, seed: int) -> np.ndarray:
    """[N, L, D] float32: a shared latent seen through layer-specific maps, drifting over depth."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(0).standard_normal((n, 64))
    mix = rng.standard_normal((64, dim))
    out = np.empty((n, layers, dim), dtype=np.float32)
    for layer in range(layers):
        mix = mix + 0.3 * rng.standard_normal((64, dim))
        out[:, layer] = latent @ mix + (1.0 + 0.2 * layer) * rng.standard_normal((n, dim)) * 8
    return out


def reference(A: np.ndarray, B: np.ndarray, perms: np.ndarray, metric: str, **params):
    from calibrated_similarity import calibrate_layers as reference_calibrate

    pa, pb = preprocess(A), preprocess(B)
    xs = [torch.from_numpy(np.ascontiguousarray(pa[:, i])) for i in range(pa.shape[1])]
    ys = [torch.from_numpy(np.ascontiguousarray(pb[:, j])) for j in range(pb.shape[1])]
    order = iter(perms)

    def sim(X, Y):
        return metrics.score(metric, X.numpy(), Y.numpy(), **params)

    start = time.perf_counter()
    calibrated, p, tau = reference_calibrate(xs, ys, sim, K=len(perms), perm_fn=lambda n, device: torch.from_numpy(next(order)))
    return time.perf_counter() - start, (float(calibrated), float(p), float(tau))


def naive(A, B, perms, metric, **params):
    """layer_scores for every permutation (B's rows permuted): each layer prepared K + 1 times."""
    observed = layer_scores(A, B, metric, **params).max()
    null = np.array([layer_scores(A, B[perm], metric, **params).max() for perm in perms])
    tau = critical_value(observed, null, 0.05)
    return observed, tau, (1 + np.count_nonzero(null >= observed)) / (len(perms) + 1)


def speed(args) -> None:
    n, la, lb, k = (512, 4, 3, 20) if args.quick else (1024, 5, 4, 50)
    A, B = features(n, la, 768, seed=1), features(n, lb, 576, seed=2)
    perms = permutations(n, k, seed=0)
    print(f"mutual_knn, topk={TOPK}, N={n}, {la} x {lb} layers (D = 768, 576), K={k}, "
          f"torch threads={torch.get_num_threads()}")
    # Once per process: loading the compiled kernels from numba's cache (each pipeline job pays it once).
    start = time.perf_counter()
    calibrate_layers(A[:64, :2], B[:64, :2], "mutual_knn", n_perm=2, topk=TOPK)
    t_load = time.perf_counter() - start
    ours_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = calibrate_layers(A, B, "mutual_knn", perms=perms, topk=TOPK)
        ours_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    naive_result = naive(A, B, perms, "mutual_knn", topk=TOPK)
    t_naive = time.perf_counter() - start
    t_ref, (ref_cal, ref_p, ref_tau) = reference(A, B, perms, "mutual_knn", topk=TOPK)
    diffs = (abs(ours.calibrated - ref_cal), abs(ours.p_value - ref_p), abs(ours.tau - ref_tau))
    assert max(diffs) < 1e-6, diffs
    assert abs(naive_result[1] - ours.tau) < 1e-12 and naive_result[2] == ours.p_value
    best = min(ours_times)
    print(f"  same result as the reference: calibrated {ours.calibrated:.6f}, tau {ours.tau:.6f}, "
          f"p {ours.p_value:.4f}; max |diff| {max(diffs):.1e} (the reference keeps float32)")
    print(f"  reference (sim = our metric per layer pair and permutation): {t_ref:8.2f} s (1 run)")
    print(f"  naive (layer_scores per permutation):                         {t_naive:8.2f} s (1 run)")
    print(f"  calibrate_layers (layers prepared once, kNN relabelled):      {best:8.3f} s "
          f"(best of {len(ours_times)}: {', '.join(f'{t:.3f}' for t in ours_times)})")
    print(f"  speed-up over the reference: {t_ref / best:.0f}x (per run: "
          f"{', '.join(f'{t_ref / t:.0f}x' for t in ours_times)}); naive: {t_ref / t_naive:.0f}x")
    print(f"  (once per process before these runs: {t_load:.2f} s to load the compiled kernels; counted in, "
          f"the best run is {t_ref / (best + t_load):.0f}x)")


# The default run's models (layers kept x width; vision without the stem, as `layers: blocks`).
DEFAULT_SHAPES = {
    "smollm2-135m": (31, 576), "gemma3-270m": (19, 640), "minilm-l6": (7, 384), "mpnet-base": (13, 768),
    "smollm2-135m-random": (31, 576), "minilm-l6-random": (7, 384),
    "cnn-w32-s0": (4, 32), "cnn-w32-s1": (4, 32), "vit-w64-d4": (5, 64), "vit-w128-d3": (4, 128),
    "cnn-w32-random": (4, 32), "vit-w64-random": (4, 64),
}


def budget(args) -> None:
    """Per metric: the statistics of every default-run pair (prepare, calibrate, bootstrap, sweep)."""
    n = 1024
    configured = {"mutual_knn": ({"topk": TOPK}, args.k_knn), "cka": ({}, args.k_cka)}
    stacks = {m: features(n, layers, dim, seed=s) for s, (m, (layers, dim)) in enumerate(DEFAULT_SHAPES.items())}
    halves = half_samples(n, 200, 0)
    pairs = list(itertools.combinations(sorted(stacks), 2))
    for metric, (params, k) in configured.items():
        perms = permutations(n, k, 0)
        totals = dict.fromkeys(("prepare", "calibrate", "bootstrap", "sweep"), 0.0)
        worst = (0.0, None)
        clock = time.process_time
        for a, b in pairs:
            t0 = clock()
            pair = prepare_pair(stacks[a], stacks[b], metric, clip_quantile=0.95, workers=1, **params)
            t1 = clock()
            calibrate_pair(pair, perms)
            t2 = clock()
            i, j, _ = best_pair(pair.matrix)
            replicate_scores(pair.spec, pair.subsampler("a", i), pair.subsampler("b", j), pair.compare_params, halves)
            t3 = clock()
            n_sweep(pair, i, j, sweep_sizes(n, 64), 5, 0, log=lambda *_: None)
            t4 = clock()
            for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                totals[key] += dt
            worst = max(worst, (t2 - t1, f"{a} x {b}"))
        print(f"{metric} (K={k}), {len(pairs)} pairs, CPU seconds: " + ", ".join(
            f"{key} {seconds:.1f}" for key, seconds in totals.items())
            + f"; slowest calibration {worst[0]:.2f} s ({worst[1]})", flush=True)
    code = "import convergence.alignment.pairwise, convergence.utils"
    starts = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        starts.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"process start + imports of an align_pair job, CPU seconds: {', '.join(f'{t:.2f}' for t in starts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=512, 4 x 3 layers, K=20")
    parser.add_argument("--repeats", type=int, default=5, help="runs of ours (the best is compared)")
    parser.add_argument("--budget", action="store_true", help="cost of the statistics over the default run's pairs")
    parser.add_argument("--k-knn", type=int, default=200, help="--budget: permutations for mutual_knn")
    parser.add_argument("--k-cka", type=int, default=100, help="--budget: permutations for CKA")
    args = parser.parse_args()
    budget(args) if args.budget else speed(args)


if __name__ == "__main__":
    main()
