"""The claims a dataset's pair results support, one tested row each, with BH q-values.

Every pair of a dataset is bootstrapped on the same half-samples (one seed per dataset) and keeps
its replicates, so any difference or trend over several pairs gets its own interval from paired
replicates. The claims:

* ``control``: a trained pair aligns more than the same pair with either model replaced by its
  random-init control (``convergence.config.controls_of``);
* ``baseline``: ... more than with either model replaced by an input baseline of its modality
  (a model whose ``source`` starts with ``baseline:``, e.g. pixels or a bag of words);
* ``competence``: alignment grows with competence (Spearman's rho), within each modality
  (alignment to a reference model of that modality) and across modalities (mean alignment with
  the other modality's trained models). Competence is -bits per byte for causal LMs (the store's
  ``bpb``) and held-out accuracy for vision models (the store's ``accuracy`` attribute); models
  with neither (encoders) are left out, and the row says so;
* ``beyond_null``: every cross-modal pair aligns beyond its calibrated null (the layer search repeated
  under permuted correspondence).

Estimates and intervals: differences and rho on all samples, with half-sample intervals from the
paired replicates (``stats.interval_of``). p-values: differences by inverting that interval
(two-sided, floor 1 / (n_boot + 1)); competence by the exact permutation distribution of rho over
the models (two-sided; with few models its floor is large: 3 models can never reach 0.05, and the
row's bootstrap interval only covers the sampling of the inputs, not of the models); the null claims
by the calibration (one-sided, floor 1 / (n_perm + 1)). q-values: Benjamini-Hochberg over the
tested rows of the table. Verdicts: ``supported`` (q < alpha, in the claimed direction),
``reversed`` (q < alpha, the other way), ``inconclusive``, ``skipped`` (with the reason).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from convergence.alignment import stats
from convergence.config import is_baseline_source

KINDS = ("control", "baseline", "competence", "beyond_null")
COLUMNS = ["kind", "claim", "pair", "versus", "estimate", "ci_low", "ci_high", "p_value", "p_floor", "p_method",
           "q_value", "verdict", "n", "reason"]
P_BOOTSTRAP = "paired half-sample bootstrap, two-sided"
P_MODELS = "exact permutation of the models' competence, two-sided"
P_NULL = "calibrated permutation null of the layer search, one-sided"


def competence_of(info: pd.DataFrame) -> pd.Series:
    """Higher = more competent: -bpb for models with bits per byte (causal LMs), accuracy for
    vision models that carry one; NaN for the rest (encoders, baselines)."""
    out = pd.Series(np.nan, index=info.index, dtype=np.float64)
    lm = info["modality"].eq("language") & info["bpb"].notna()
    vision = info["modality"].eq("vision") & info["accuracy"].notna()
    out[lm] = -info.loc[lm, "bpb"]
    out[vision] = info.loc[vision, "accuracy"]
    return out


class PairSet:
    """A dataset's pair summaries (``read_pair``), looked up in either order; checks that all were
    bootstrapped on the same half-samples."""

    def __init__(self, summaries: dict[str, dict]):
        self.by_pair = {}
        fingerprints = {}
        for path, s in summaries.items():
            self.by_pair[frozenset((s["model_a"], s["model_b"]))] = s
            boot = s.get("bootstrap") or {}
            fingerprints[path] = (s["n_samples"], boot.get("n_boot"), boot.get("halves_sha256"))
        if len(set(fingerprints.values())) > 1:
            lines = "\n".join(f"  {p}: N={v[0]}, n_boot={v[1]}, half-samples {v[2]}" for p, v in fingerprints.items())
            raise ValueError("pair results of one dataset were bootstrapped on different half-samples, so their "
                             f"replicates cannot be paired; delete them and rerun (same alignment.seed, n_boot):\n{lines}")
        first = next(iter(summaries.values()), None)
        self.n = first["n_samples"] if first else 0

    def get(self, a: str, b: str) -> dict | None:
        return self.by_pair.get(frozenset((a, b)))

    def replicates(self, a: str, b: str) -> np.ndarray:
        return np.asarray(self.get(a, b)["bootstrap"]["replicates"], dtype=np.float64)


def _row(kind, claim, pair="", versus="", reason="", **values) -> dict:
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(kind=kind, claim=claim, pair=pair, versus=versus, reason=reason, verdict="skipped" if reason else "",
               p_method="")
    row.update(values)
    return row


def _difference(pairs: PairSet, kind: str, claim: str, mine: tuple, theirs: tuple) -> dict:
    a, b = pairs.get(*mine), pairs.get(*theirs)
    estimate = a["score"] - b["score"]
    diff = pairs.replicates(*mine) - pairs.replicates(*theirs)
    low, high = stats.interval_of(estimate, diff, pairs.n, a["ci_level"])
    return _row(kind, claim, pair="__".join(sorted(mine)), versus="__".join(sorted(theirs)), estimate=estimate,
                ci_low=low, ci_high=high, p_value=stats.bootstrap_p(estimate, diff, pairs.n),
                p_floor=1.0 / (len(diff) + 1), p_method=P_BOOTSTRAP, n=len(diff))


def replacement_claims(pairs: PairSet, info: pd.DataFrame, trained: list[str], kind: str, substitutes) -> list[dict]:
    """For every pair of trained models and each side: the pair against the same pair with that side
    replaced by each of ``substitutes(model)`` -> (list of models, reason when empty)."""
    rows = []
    for a, b in itertools.combinations(sorted(trained), 2):
        if pairs.get(a, b) is None:
            continue
        for side, other in ((a, b), (b, a)):
            replacements, reason = substitutes(side)
            what = ("random-init control of " + side if kind == "control"
                    else f"{info.loc[side, 'modality']} input baseline")
            if not replacements:
                rows.append(_row(kind, f"{a} x {b} aligns more than with {side} replaced by its {what.split(' of ')[0]}",
                                 pair=f"{a}__{b}", reason=reason))
                continue
            for sub in replacements:
                claim = f"{a} x {b} aligns more than {sub} x {other} ({sub}: {what})"
                if pairs.get(sub, other) is None:
                    rows.append(_row(kind, claim, pair=f"{a}__{b}", versus="__".join(sorted((sub, other))),
                                     reason=f"no result for {sub} x {other} (not both on this dataset?)"))
                    continue
                rows.append(_difference(pairs, kind, claim, (a, b), (sub, other)))
    return rows


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of x [n] with each row of y [..., n] (average ranks for ties)."""
    rx, ry = _ranks(x), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ry @ rx) / denominator, 0.0)


def model_permutation_p(x: np.ndarray, y: np.ndarray, rho: float, max_exact: int = 8,
                        n_random: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Two-sided p of rho under random assignment of ``x`` to the models, and its floor: exact over
    all orderings for up to ``max_exact`` models, else ``n_random`` random ones (add-one)."""
    n = len(x)
    exact = n <= max_exact
    if exact:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        orders = np.array([rng.permutation(n) for _ in range(n_random)])
    null = np.abs(_perm_rho(_ranks(x), _ranks(y), orders))
    tol = 1e-12
    hits = np.count_nonzero(null >= abs(rho) - tol)
    if exact:
        return hits / len(orders), np.count_nonzero(null >= null.max() - tol) / len(orders)
    return (1 + hits) / (1 + len(orders)), 1.0 / (1 + len(orders))


def _perm_rho(rx: np.ndarray, ry: np.ndarray, orders: np.ndarray) -> np.ndarray:
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx[orders] @ ry) / np.sqrt((rx**2).sum() * (ry**2).sum())


def _trend(pairs: PairSet, claim: str, points: list[tuple[str, list[tuple[str, str]]]], competence: pd.Series,
           left_out: str) -> dict:
    """rho between competence and the mean score over each model's pairs, with its interval from the
    shared replicates and the models' permutation p."""
    models = [m for m, _ in points]
    x = competence[models].to_numpy(dtype=np.float64)
    score = np.array([np.mean([pairs.get(*p)["score"] for p in ps]) for _, ps in points])
    reps = np.stack([np.mean([pairs.replicates(*p) for p in ps], axis=0) for _, ps in points], axis=1)  # [B, n]
    if np.ptp(x) == 0:
        return _row("competence", claim, pair=", ".join(models), reason="every model has the same competence")
    rho = float(spearman(x, score))
    rho_reps = spearman(x, reps)
    low, high = np.clip(stats.interval_of(rho, rho_reps, pairs.n), -1.0, 1.0)  # rho's own range
    p, floor = model_permutation_p(x, score, rho)
    return _row("competence", claim, pair=", ".join(models), versus=left_out, estimate=rho, ci_low=float(low),
                ci_high=float(high), p_value=p, p_floor=floor, p_method=P_MODELS, n=len(models))


def competence_claims(pairs: PairSet, info: pd.DataFrame, trained: list[str], reference: str | None) -> list[dict]:
    rows = []
    competence = competence_of(info)
    for modality in ("language", "vision"):
        mine = [m for m in trained if info.loc[m, "modality"] == modality]
        if len(mine) < 2:
            continue
        no_competence = [m for m in mine if np.isnan(competence[m])]
        note = (f"left out, no competence ({'no bpb: not causal LMs' if modality == 'language' else 'no accuracy'}): "
                + ", ".join(no_competence)) if no_competence else ""
        ref = reference if reference in mine else max(mine, key=lambda m: (info.loc[m, "n_params"], m))
        points = [(m, [(m, ref)]) for m in mine if m != ref and not np.isnan(competence[m]) and pairs.get(m, ref)]
        claim = f"alignment to {ref} grows with competence among trained {modality} models"
        if len(points) < 3:
            rows.append(_row("competence", claim, pair=", ".join(m for m, _ in points),
                             reason=f"needs 3 or more {modality} models with competence besides {ref}, has "
                                    f"{len(points)}" + (f"; {note}" if note else "")))
        else:
            rows.append(_trend(pairs, claim, points, competence, note))
        other = "vision" if modality == "language" else "language"
        theirs = [m for m in trained if info.loc[m, "modality"] == other]
        if not theirs:
            continue
        points = [(m, [(m, o) for o in theirs]) for m in mine
                  if not np.isnan(competence[m]) and all(pairs.get(m, o) for o in theirs)]
        claim = f"{modality}-model competence vs mean alignment with the trained {other} models"
        if len(points) < 3:
            rows.append(_row("competence", claim, pair=", ".join(m for m, _ in points),
                             reason=f"needs 3 or more {modality} models with competence, has {len(points)}"
                                    + (f"; {note}" if note else "")))
        else:
            rows.append(_trend(pairs, claim, points, competence, note))
    return rows


def null_claims(pairs: PairSet, info: pd.DataFrame) -> list[dict]:
    rows = []
    for key in sorted(pairs.by_pair, key=sorted):
        a, b = sorted(key)
        if info.loc[a, "modality"] == info.loc[b, "modality"]:
            continue
        s = pairs.get(a, b)
        cal = s["calibration"]
        tau = s["tau"]
        estimate = cal["observed"] - tau
        ci = (s["ci_low"] - tau, s["ci_high"] - tau) if cal["agg"] == "max" else (np.nan, np.nan)
        what = ("" if cal["agg"] == "max" else "; no interval: the bootstrap resamples the best layer pair only")
        rows.append(_row("beyond_null", f"{a} x {b} aligns beyond its calibrated null ({cal['agg']} over layer pairs "
                                 f"minus tau{what})", pair=f"{a}__{b}", versus=f"{cal['n_perm']} permutations",
                         estimate=estimate, ci_low=ci[0], ci_high=ci[1], p_value=s["p_value"],
                         p_floor=s["p_floor"], p_method=P_NULL, n=cal["n_perm"]))
    return rows


def claims_table(summaries: dict[str, dict], info: pd.DataFrame, controls: dict[str, str | None],
                 reference: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """One row per claim (``COLUMNS``); ``summaries``: pair file -> ``read_pair`` summary;
    ``info``: ``aggregate.model_info``; ``controls``: model -> its random-init control or None
    (``convergence.config.controls_of``)."""
    from scipy.stats import false_discovery_control

    pairs = PairSet(summaries)
    baselines = [m for m in info.index if is_baseline_source(info.loc[m, "source"])]
    trained = [m for m in info.index if info.loc[m, "init"] != "random" and m not in baselines]

    def control(model):
        c = controls.get(model)
        if c is None:
            return [], (f"{model} has no random-init control in the config (a model with init: random and "
                        f"source {info.loc[model, 'source']})")
        if c not in info.index:
            return [], f"{model}'s control {c} is not extracted on this dataset"
        return [c], ""

    def baseline(model):
        modality = info.loc[model, "modality"]
        found = [m for m in baselines if info.loc[m, "modality"] == modality]
        return found, ("" if found else f"no {modality} input baseline in the config (a model with source "
                                        "baseline:..., e.g. baseline:pixels or baseline:bag_of_words)")

    rows = (replacement_claims(pairs, info, trained, "control", control)
            + replacement_claims(pairs, info, trained, "baseline", baseline)
            + competence_claims(pairs, info, trained, reference)
            + null_claims(pairs, info))
    table = pd.DataFrame(rows, columns=COLUMNS)
    tested = table["reason"].eq("")
    if tested.any():
        q = false_discovery_control(table.loc[tested, "p_value"].to_numpy(dtype=np.float64), method="bh")
        table.loc[tested, "q_value"] = q
        significant = q < alpha
        positive = table.loc[tested, "estimate"].to_numpy() > 0
        one_sided = table.loc[tested, "kind"].eq("beyond_null").to_numpy()
        table.loc[tested, "verdict"] = np.where(significant & (positive | one_sided), "supported",
                                                np.where(significant, "reversed", "inconclusive"))
    return table


def describe(table: pd.DataFrame) -> str:
    """A few lines for the log: counts of verdicts per kind of claim."""
    counts = table.groupby(["kind", "verdict"]).size().unstack(fill_value=0)
    return counts.to_string() if len(counts) else "no claims"
