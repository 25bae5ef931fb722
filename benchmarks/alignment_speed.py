"""mutual_knn over all layer pairs: ``layer_scores`` against the PRH way, side by side.

    python benchmarks/alignment_speed.py            # N=1024, 13 x 9 layers, D=768; kNN memory at N=50,000
    python benchmarks/alignment_speed.py --quick    # 5 x 4 layers; kNN memory at N=10,000

The PRH way (minyoungg/platonic-rep measure_alignment.compute_score + metrics.mutual_knn):
for every layer pair, F.normalize both layers, ``feats @ feats.T``, ``fill_diagonal_(-1e8)``,
full descending argsort per row, N x N float32 masks, in the dtype of the stored features
as PRH loads them (``.float()``: float32); torch uses every core for each operation.
layer_scores preprocesses in float64 and its kNN is the exact float64 neighbour set (float32
products, certified per row, float64 where float32 cannot tell), once per layer, one layer
per core (single-threaded BLAS ssyrk for half of each Gram matrix, compiled scans). The two
must find the same neighbours here: the scores are asserted equal as counts of shared
neighbours (score * N * topk, an integer), the float32 mean aside.
Timings are wall-clock on this machine (other jobs may share its cores: the best of several
runs is reported for layer_scores, one run for the far slower PRH loop).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from convergence.alignment.layers import layer_scores, layer_workers, preprocess_layer
from convergence.metrics.knn import STAT_KEYS, knn_indices, neighbours

TOPK = 10


def features(n: int, layers: int, dim: int, seed: int) -> np.ndarray:
    """[N, L, D] float32: a shared latent seen through layer-specific maps, drifting over depth."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(0).standard_normal((n, 64))  # shared by both models
    mix = rng.standard_normal((64, dim))
    out = np.empty((n, layers, dim), dtype=np.float32)
    for layer in range(layers):
        mix = mix + 0.3 * rng.standard_normal((64, dim))
        noise = (1.0 + 0.2 * layer) * rng.standard_normal((n, dim)) * np.sqrt(64)
        out[:, layer] = latent @ mix + noise
    return out


def prh_mutual_knn_all_pairs(A: np.ndarray, B: np.ndarray, topk: int) -> np.ndarray:
    """PRH's compute_score loop with metrics.mutual_knn / compute_nearest_neighbors, on
    [N, L, D] features in their own dtype (float32 here, as PRH's ``.float()``)."""

    def knn(f):
        return (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk]

    A, B = torch.from_numpy(A), torch.from_numpy(B)
    n = A.shape[0]
    rows = torch.arange(n).unsqueeze(1)
    out = np.empty((A.shape[1], B.shape[1]))
    for i in range(A.shape[1]):
        for j in range(B.shape[1]):
            x = F.normalize(A[:, i], p=2, dim=-1)
            y = F.normalize(B[:, j], p=2, dim=-1)
            mask_x, mask_y = torch.zeros(n, n), torch.zeros(n, n)  # float32, as PRH
            mask_x[rows, knn(x)] = 1.0
            mask_y[rows, knn(y)] = 1.0
            out[i, j] = ((mask_x * mask_y).sum(dim=1) / topk).mean().item()
    return out


def compare_neighbours(stacks, topk: int) -> tuple[int, int, dict, dict]:
    """Untimed: every layer's kNN both ways. Returns (rows, rows whose PRH-way list is in
    the same order as our ranked one, how knn_indices decided its rows as sets (what
    mutual_knn uses) and as ranked lists); asserts the sets equal."""
    sets, ranked, rows, same_order = {}, {}, 0, 0
    for stack in stacks:
        for i in range(stack.shape[1]):
            f = F.normalize(torch.from_numpy(stack[:, i]), p=2, dim=-1)
            prh = (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk].numpy()
            layer = preprocess_layer(stack[:, i], True, None, "layer")
            ours = knn_indices(layer, topk, stats=ranked)
            members = knn_indices(layer, topk, stats=sets, ordered=False)
            assert np.array_equal(np.sort(prh, axis=1), np.sort(ours, axis=1)), f"layer {i}"
            assert np.array_equal(np.sort(members, axis=1), np.sort(ours, axis=1)), f"layer {i}"
            rows += len(ours)
            same_order += int(np.all(prh == ours, axis=1).sum())
    return rows, same_order, sets, ranked


def best_time(fn, repeats: int):
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(n: int, dim: int) -> None:
    """Run in a fresh process: one layer through the layer_scores path (preprocess in
    float64 + blocked kNN). Prints the peak RSS and its rise over the RSS with the input
    already in memory."""
    layer = np.random.default_rng(1).standard_normal((n, dim), dtype=np.float32)
    before = rss_bytes()
    start = time.perf_counter()
    nn = neighbours(preprocess_layer(layer, True, None, "layer"), topk=TOPK)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(f"{peak} {peak - before} {seconds} {nn.shape[0]}")


def measure_memory(n: int, dim: int) -> tuple[int, int, float]:
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n), "--dim", str(dim)],
        check=True, capture_output=True, text=True,
    )
    peak, rise, seconds, rows = child.stdout.split()
    assert int(rows) == n
    return int(peak), int(rise), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 x 4 layers, memory at N=10,000")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=768, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.dim)
        return

    n, dim = 1024, 768
    la, lb = (5, 4) if args.quick else (13, 9)
    n_memory = 10_000 if args.quick else 50_000
    A, B = features(n, la, dim, seed=1), features(n, lb, dim, seed=2)
    print(f"mutual_knn, topk={TOPK}, N={n}, D={dim}, {la} x {lb} layer pairs, "
          f"torch threads={torch.get_num_threads()}, "
          f"layer_scores workers={layer_workers('mutual_knn', n, dim, la + lb)}")

    t_ours, ours = best_time(lambda: layer_scores(A, B, "mutual_knn", topk=TOPK), repeats=5)
    t_prh, prh = best_time(lambda: prh_mutual_knn_all_pairs(A, B, TOPK), repeats=1 if not args.quick else 2)
    # score * N * topk is the number of shared neighbours: equal integers = same neighbour
    # sets. One differing neighbour moves it by 1; PRH's float32 mean by ~1e-7 * N * topk.
    shared_ours, shared_prh = ours * n * TOPK, prh * n * TOPK
    assert np.array_equal(np.rint(shared_ours), np.rint(shared_prh)), np.abs(shared_ours - shared_prh).max()
    assert np.abs(shared_ours - shared_prh).max() < 0.1, np.abs(shared_ours - shared_prh).max()
    print(f"  scores equal to the PRH-way loop: same shared-neighbour counts in all {la * lb} pairs; "
          f"max |diff| {np.abs(ours - prh).max():.1e} (float32 mean) "
          f"(scores {ours.min():.4f} .. {ours.max():.4f})")
    print(f"  PRH way ({A.dtype} features; per pair: normalise, dense argsort): {t_prh:8.3f} s")
    print(f"  layer_scores (float64-exact kNN once per layer):        {t_ours:8.3f} s")
    print(f"  speed-up: {t_prh / t_ours:.1f}x")
    rows, same_order, sets, ranked = compare_neighbours((A, B), TOPK)
    print(f"  neighbour sets equal to the PRH way's in all {rows} rows of the {la + lb} layers "
          f"(our ranked lists in the same order in {same_order})")
    for label, stats in (("as sets (mutual_knn, above)", sets), ("ranked (lcs/edit_distance)", ranked)):
        print(f"  our kNN rows {label}: " + ", ".join(f"{key} {stats[key]}" for key in STAT_KEYS[1:]))
    print("    (certified: float32 decided; reranked / fallback: float64 needed; pairs: float64 similarities)")

    peak, rise, seconds = measure_memory(n_memory, dim)
    input_mib = n_memory * dim * 4 / 2**20
    print(f"blocked kNN of one layer, N={n_memory:,}, D={dim}, topk={TOPK}: {seconds:.1f} s")
    print(f"  peak RSS {peak / 2**30:.2f} GiB for the whole process "
          f"(python + torch + {input_mib:.0f} MiB float32 input);")
    print(f"  rise during preprocess + kNN {rise / 2**30:.2f} GiB")
    print("  (measured in a fresh subprocess: getrusage ru_maxrss, minus /proc/self/status VmRSS")
    print("   read just before the call with the input already allocated)")


if __name__ == "__main__":
    main()
