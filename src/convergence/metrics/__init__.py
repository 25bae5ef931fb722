"""Representation similarity metrics: pure math on ``[N, D]`` arrays (numpy or torch).

    from convergence import metrics
    metrics.available()                          # names
    metrics.score("mutual_knn", X, Y, topk=10)   # one float
    metrics.defaults("cka")                      # parameters and defaults, to record

Names and parameters follow the PRH reference (minyoungg/platonic-rep ``metrics.py``)
where it has the metric; no preprocessing is hidden in a metric (normalise/clip first,
see ``convergence.alignment.preprocess``). Adding a metric: one function registered with
``@register("name", prepare=...)`` whose docstring says what it measures and its chance
level, plus tests.
"""

from ._registry import Metric, available, defaults, get, register, score
from .cca import pwcca, svcca
from .kernel import cka, cknna, unbiased_cka
from .knn import cycle_knn, edit_distance_knn, jaccard_knn, knn_indices, lcs_knn, mutual_knn
from .shape import procrustes, rsa

__all__ = [
    "Metric",
    "available",
    "defaults",
    "get",
    "register",
    "score",
    "knn_indices",
    "mutual_knn",
    "cycle_knn",
    "lcs_knn",
    "edit_distance_knn",
    "jaccard_knn",
    "cknna",
    "cka",
    "unbiased_cka",
    "svcca",
    "pwcca",
    "procrustes",
    "rsa",
]
