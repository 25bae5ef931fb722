"""The N-sweep: a pair's score on nested subsets of the samples, N = 64, 128, ..., all.

Mutual kNN at a fixed k falls as N grows (Koepke, Zverev, Ginosar & Efros 2026, *Back into
Plato's Cave*): the same k neighbours are a smaller share of the data, so a score means little
without its N. The sweep scores the pair's best layer pair (found on all samples) on subsets of
each size, several draws each; subsets are nested (a draw's first n samples of one random order)
and the same for every pair of a dataset (seeded). kNN metrics are scored twice: at the
configured k (``fixed_k``) and at k scaled with the subset, round(k n / N) (``fixed_k_over_n``,
the same neighbourhood share); other metrics once (``all``).
"""

from __future__ import annotations

import numpy as np

from convergence.alignment.layers import PreparedPair
from convergence.alignment.stats import check_count

MODES = ("fixed_k", "fixed_k_over_n", "all")


def sweep_sizes(n: int, min_n: int = 64) -> list[int]:
    """Powers of two times ``min_n`` below ``n``, then ``n`` itself."""
    min_n = check_count("min_n", min_n)
    sizes = []
    size = min_n
    while size < n:
        sizes.append(size)
        size *= 2
    return sizes + [n]


def scaled_topk(topk: int, n: int, n_all: int) -> int:
    """k at the same neighbourhood share: round(topk * n / N), at least 1."""
    return max(1, int(np.floor(topk * n / n_all + 0.5)))


def n_sweep(pair: PreparedPair, i: int, j: int, sizes: list[int], draws: int = 5, seed: int = 0,
            log=print) -> list[dict]:
    """Rows ``{n, draw, mode, topk, score}`` for layer ``i`` of A and ``j`` of B on nested
    subsets of each size in ``sizes`` (the full set once). Sizes at which the metric cannot be
    computed (e.g. k >= n) are left out and said in ``log``."""
    draws = check_count("draws", draws)
    n_all = pair.n
    topk = pair.prepare_params.get("topk")
    knn_like = isinstance(topk, (int, np.integer)) and not isinstance(topk, bool)
    rng = np.random.default_rng([seed, 2])  # a stream apart from the half-samples' and permutations'
    orders = [rng.permutation(n_all) for _ in range(draws)]
    full = {"a": pair.subsampler("a", i), "b": pair.subsampler("b", j)}
    layers = {}
    rows, skipped = [], set()

    def scaled_state(side, k, idx, k_n):
        if side not in layers:
            layers[side] = pair.layer(side, k)
        params = {**pair.prepare_params, "topk": k_n}
        return pair.spec.prepare_one(layers[side][idx], params)

    for n in sorted(set(int(s) for s in sizes)):
        if not 2 <= n <= n_all:
            raise ValueError(f"N-sweep size {n} must be in [2, {n_all}]")
        for draw in range(1 if n == n_all else draws):
            idx = np.sort(orders[draw][:n])
            try:
                fixed = pair.spec.compare_pair(full["a"](idx), full["b"](idx), pair.compare_params)
            except ValueError as err:
                skipped.add((n, str(err)))
                continue
            if not knn_like:
                rows.append({"n": n, "draw": draw, "mode": "all", "topk": None, "score": fixed})
                continue
            rows.append({"n": n, "draw": draw, "mode": "fixed_k", "topk": int(topk), "score": fixed})
            k_n = scaled_topk(int(topk), n, n_all)
            if k_n == topk:
                scaled = fixed
            else:
                try:
                    scaled = pair.spec.compare_pair(scaled_state("a", i, idx, k_n), scaled_state("b", j, idx, k_n),
                                                    pair.compare_params)
                except ValueError as err:
                    skipped.add((n, str(err)))
                    continue
            rows.append({"n": n, "draw": draw, "mode": "fixed_k_over_n", "topk": k_n, "score": scaled})
    for n, why in sorted(skipped):
        log(f"N-sweep: left out N = {n}: {why}")
    return rows


def sweep_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of score on log2(N) (change per doubling of N); None with fewer
    than two sizes."""
    n = np.array([r["n"] for r in rows], dtype=np.float64)
    if len(np.unique(n)) < 2:
        return None
    score = np.array([r["score"] for r in rows], dtype=np.float64)
    return float(np.polyfit(np.log2(n), score, 1)[0])
