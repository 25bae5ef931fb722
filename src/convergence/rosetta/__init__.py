"""Rosetta Neurons (Dravid et al., ICCV 2023) as pure math on activation matrices.

`pearson` gives exact unit-by-unit correlations streamed over positions; `topk_partners` /
`pearson_topk` keep only each unit's best partners; `mutual_matches`, `hungarian` and
`rosetta_sets` match units across models; `rotation_null` and `compare_to_null` say how many
matches exceed chance. No models, no files: inputs are arrays (numpy, torch, zarr) `[N, D]`.
"""

from .matching import Matches, TopKPartners, as_partners, hungarian, mutual_matches, pearson_topk, topk_partners
from .null import NullReport, compare_to_null, null_band, random_rotation, rotation_null, shuffled_image_rows
from .correlation import PearsonAccumulator, PearsonResult, pearson
from .sets import RosettaSets, rosetta_sets
from .sources import LayerView, RotatedView

__all__ = [
    "LayerView",
    "Matches",
    "NullReport",
    "PearsonAccumulator",
    "PearsonResult",
    "RosettaSets",
    "RotatedView",
    "TopKPartners",
    "as_partners",
    "compare_to_null",
    "hungarian",
    "mutual_matches",
    "null_band",
    "pearson",
    "pearson_topk",
    "random_rotation",
    "rosetta_sets",
    "rotation_null",
    "shuffled_image_rows",
    "topk_partners",
]
