"""Kernel alignment (PRH) between two models over every layer pair, and what can be claimed from it.

    from convergence import alignment
    Z = alignment.layer_scores(A, B, "mutual_knn", topk=10)   # A [N, La, D], B [N, Lb, D'] -> [La, Lb]
    i, j, best = alignment.best_pair(Z)                       # max over layer pairs, as PRH
    cal = alignment.calibrate_layers(A, B, "mutual_knn", topk=10)   # null over the whole layer search
    cal.observed, cal.tau, cal.calibrated, cal.p_value
    X, Y = alignment.preprocess(A)[:, i], alignment.preprocess(B)[:, j]
    alignment.bootstrap_ci(X, Y, "mutual_knn", topk=10)       # (score, low, high)
    df, summary = alignment.read_pair("results/alignment/scenes/mutual_knn/a__b.parquet")

Modules, in the order of the stage:

* ``layers``: preprocessing (PRH clipping, L2 rows), every layer prepared once (``prepare_pair``),
  all layer pairs' scores (``layer_scores``), the best pair;
* ``stats``: half-sample bootstrap (intervals, replicates, paired differences), permutation p;
* ``calibration``: the null of the layer search (``calibrate_layers``);
* ``nsweep``: scores on nested subsets, N = 64 ... all;
* ``pairwise``: the pair job, stores in, one parquet out (``align_stores``, ``read_pair``);
* ``claims``: the tests a dataset's pairs support (controls, baselines, competence, nulls);
* ``aggregate`` and ``plots``: the per-(dataset, metric) table, claims and figures.
"""

from convergence.alignment.calibration import Calibration, calibrate_layers
from convergence.alignment.layers import (
    CLIP_METHODS,
    PreparedPair,
    best_pair,
    clip_threshold,
    layer_scores,
    model_clip_threshold,
    prepare_pair,
    preprocess,
    preprocess_layer,
)
from convergence.alignment.pairwise import align_stores, matrix_of, metric_call, read_pair, write_pair
from convergence.alignment.stats import Interval, PermutationTest, bootstrap_ci, permutation_pvalue

__all__ = [
    "CLIP_METHODS",
    "Calibration",
    "Interval",
    "PermutationTest",
    "PreparedPair",
    "align_stores",
    "best_pair",
    "bootstrap_ci",
    "calibrate_layers",
    "clip_threshold",
    "model_clip_threshold",
    "layer_scores",
    "matrix_of",
    "metric_call",
    "permutation_pvalue",
    "prepare_pair",
    "preprocess",
    "preprocess_layer",
    "read_pair",
    "write_pair",
]
