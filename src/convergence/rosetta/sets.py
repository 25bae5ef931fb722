"""Rosetta sets: one unit per model, matched across three or more models.

Two definitions:
- anchor (the Rosetta Neurons reference): a unit of the anchor model that has a mutual match in
  every other model; its set is the unit plus its best mutual partner in each model.
- cycle: additionally every pair of non-anchor members is mutually matched, so the set is a
  clique of the match graph and does not depend on which model is the anchor.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .matching import Matches, TopKPartners, as_partners, mutual_matches
from .correlation import PearsonResult

PairInput = TopKPartners | PearsonResult | np.ndarray


@dataclass
class RosettaSets:
    """Rosetta sets found across `models`.

    `units [S, M]`: the unit index in each model (columns in `models` order, the anchor included).
    `r_anchor [S, M]`: each member's r with the anchor unit (1.0 in the anchor's column).
    `mean_r [S]`: mean r over the pairs that define the set (anchor pairs, or all pairs if cycle).
    Sets are sorted by `mean_r`, best first.
    """

    models: list[str]
    anchor: str
    units: np.ndarray
    r_anchor: np.ndarray
    mean_r: np.ndarray
    cycle: bool

    def __len__(self) -> int:
        return len(self.units)

    def to_frame(self) -> pd.DataFrame:
        """One row per set: a unit column per model, `r_<model>` with the anchor unit, `mean_r`."""
        frame = pd.DataFrame(self.units, columns=self.models)
        for column, model in enumerate(self.models):
            frame[f"r_{model}"] = self.r_anchor[:, column]
        frame["mean_r"] = self.mean_r
        return frame


def rosetta_sets(
    pairs: Mapping[tuple[str, str], PairInput],
    models: Sequence[str],
    anchor: str | None = None,
    k: int = 1,
    k_back: int | None = None,
    cycle: bool = False,
    absolute: bool = False,
) -> RosettaSets:
    """Rosetta sets across >= 3 `models` from pairwise correlations.

    `pairs[(m, n)]`: correlations of model m's units (rows) with model n's (columns), as
    `TopKPartners`, `PearsonResult` or a dense array; either orientation of a pair may be given.
    Anchor mode needs the pairs (anchor, m) for every other m; `cycle=True` needs all pairs.
    Matching criterion as `mutual_matches(k, k_back, absolute)`: k=1 strict best buddies, k>1 relaxed.
    With `k_back != k` the criterion is asymmetric and read from the first model of each pair: the
    anchor, or in cycle mode the earlier model in `models`.
    In cycle mode every combination of the anchor unit's mutual partners is tried (at most
    k^(M-1) per anchor unit), so one anchor unit may yield several sets when k > 1.
    """
    models = list(models)
    anchor = models[0] if anchor is None else anchor
    if len(models) < 3 or len(set(models)) != len(models) or anchor not in models:
        raise ValueError(f"need >= 3 distinct models including the anchor, got {models} (anchor {anchor!r})")
    others = [m for m in models if m != anchor]
    criterion = (k, k_back, absolute)
    matches = {m: _oriented_matches(pairs, anchor, m, *criterion) for m in others}
    candidates = _candidates_per_anchor_unit(matches, others)
    graph = None
    if cycle:
        graph = {
            (m, n): _match_lookup(_oriented_matches(pairs, m, n, *criterion))
            for m, n in itertools.combinations(others, 2)
        }
        found = _cliques(candidates, others, graph)
    else:
        found = [(unit, {m: options[m][0] for m in others}) for unit, options in candidates.items()]
    return _assemble(found, models, anchor, others, graph)


def _oriented_matches(
    pairs: Mapping[tuple[str, str], PairInput], m: str, n: str, k: int, k_back: int | None, absolute: bool
) -> Matches:
    """Mutual matches with m's units as `a`, whichever orientation `pairs` stores."""
    if (m, n) in pairs:
        return mutual_matches(pairs[(m, n)], k, k_back, absolute)
    if (n, m) in pairs:
        partners = as_partners(pairs[(n, m)], max(k, k_back or k), absolute)
        return mutual_matches(partners.transpose(), k, k_back, absolute)
    raise KeyError(f"no correlations for the model pair ({m!r}, {n!r}) in either orientation")


def _candidates_per_anchor_unit(matches: dict[str, Matches], others: list[str]) -> dict[int, dict[str, list]]:
    """Anchor units matched in every other model -> per model, its (partner, r) options, best first."""
    options: dict[int, dict[str, list]] = {}
    for m in others:
        for a, b, r in zip(matches[m].a.tolist(), matches[m].b.tolist(), matches[m].r.tolist()):
            options.setdefault(a, {}).setdefault(m, []).append((b, r))
    return {unit: per_model for unit, per_model in sorted(options.items()) if len(per_model) == len(others)}


def _match_lookup(matches: Matches) -> dict[tuple[int, int], float]:
    return {(a, b): r for a, b, r in zip(matches.a.tolist(), matches.b.tolist(), matches.r.tolist())}


def _cliques(candidates, others: list[str], graph) -> list[tuple[int, dict[str, tuple[int, float]]]]:
    """Combinations of anchor partners whose every non-anchor pair is mutually matched too."""
    found = []
    for unit, options in candidates.items():
        for combo in itertools.product(*(options[m] for m in others)):
            members = dict(zip(others, combo))
            if all((members[m][0], members[n][0]) in graph[(m, n)] for m, n in graph):
                found.append((unit, members))
    return found


def _assemble(found, models: list[str], anchor: str, others: list[str], graph) -> RosettaSets:
    column = {m: i for i, m in enumerate(models)}
    units = np.zeros((len(found), len(models)), np.int64)
    r_anchor = np.ones((len(found), len(models)), np.float32)
    mean_r = np.zeros(len(found), np.float32)
    for row, (unit, members) in enumerate(found):
        units[row, column[anchor]] = unit
        pair_r = []
        for m in others:
            units[row, column[m]], r_anchor[row, column[m]] = members[m]
            pair_r.append(members[m][1])
        if graph is not None:
            pair_r += [graph[(m, n)][(members[m][0], members[n][0])] for m, n in graph]
        mean_r[row] = np.mean(pair_r)
    order = np.argsort(-mean_r, kind="stable")
    return RosettaSets(models, anchor, units[order], r_anchor[order], mean_r[order], cycle=graph is not None)
