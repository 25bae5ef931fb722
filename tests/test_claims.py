"""Tests of the claims table (paired differences, competence trends, nulls, BH q-values, skipped
claims) on hand-made pair summaries, and of the N-sweep against direct recomputation."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from convergence import metrics
from convergence.alignment import prepare_pair, preprocess
from convergence.alignment.claims import claims_table, competence_of, model_permutation_p, spearman
from convergence.alignment.nsweep import n_sweep, scaled_topk, sweep_slope, sweep_sizes
from convergence.config import ConfigError, check_config, dataset_controls, model_pairs, validate_schema

N, B = 400, 50  # samples, bootstrap replicates


def info_of(models: dict) -> pd.DataFrame:
    """model -> (modality, init, source, n_params, bpb, accuracy)."""
    rows = [{"model": m, "modality": mod, "kind": None, "init": init, "source": src, "n_params": size,
             "bpb": bpb, "loss": np.nan, "accuracy": acc} for m, (mod, init, src, size, bpb, acc) in models.items()]
    return pd.DataFrame(rows).set_index("model")


def summary(a, b, score, replicates, tau=0.05, p=0.01, n_perm=99, digest="h0"):
    return {"model_a": a, "model_b": b, "score": score, "ci_low": score - 0.02, "ci_high": score + 0.03,
            "ci_level": 0.95, "tau": tau, "p_value": p, "p_floor": 1 / (n_perm + 1), "n_samples": N,
            "calibration": {"agg": "max", "observed": score, "n_perm": n_perm},
            "bootstrap": {"n_boot": len(replicates), "halves_sha256": digest, "replicates": list(replicates)}}


MODELS = {
    "lm1": ("language", "pretrained", "offline:lm1", 100, 1.2, np.nan),
    "lm2": ("language", "pretrained", "offline:lm2", 200, 1.0, np.nan),
    "lm1-random": ("language", "random", "offline:lm1", 100, 9.0, np.nan),
    "enc": ("language", "pretrained", "offline:enc", 50, np.nan, np.nan),
    "cnn": ("vision", "pretrained", "zoo:cnn", 10, np.nan, 0.8),
    "pixels": ("vision", "pretrained", "baseline:pixels", 0, np.nan, np.nan),
}


def hand_pairs(rng):
    scores = {}
    for a, b in itertools.combinations(sorted(MODELS), 2):
        scores[a, b] = 0.3 if "random" not in a + b and "pixels" not in a + b else 0.05
    scores["lm1", "lm2"] = 0.5
    out, reps = {}, {}
    shared = rng.standard_normal(B) * 0.01  # the half-sample effect every pair shares
    for (a, b), s in scores.items():
        reps[a, b] = s - 0.02 + shared + rng.standard_normal(B) * 0.003
        out[f"{a}__{b}.parquet"] = summary(a, b, s, reps[a, b], p=0.5 if s < 0.1 else 0.01)
    return out, reps


def test_paired_differences_intervals_p_and_q_by_hand():
    rng = np.random.default_rng(0)
    summaries, reps = hand_pairs(rng)
    info = info_of(MODELS)
    table = claims_table(summaries, info, {"lm1": "lm1-random", "lm2": None, "enc": None, "cnn": None})
    row = table[(table.kind == "control") & (table.pair == "lm1__lm2") & (table.versus == "lm1-random__lm2")].iloc[0]
    diff = reps["lm1", "lm2"] - reps["lm1-random", "lm2"]
    dev = diff - diff.mean()  # N even: the half-sample scale is 1
    assert row.estimate == pytest.approx(0.5 - 0.05)
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(0.45 + np.quantile(dev, [0.025, 0.975])))
    assert row.p_value == pytest.approx((1 + np.count_nonzero(np.abs(dev) >= 0.45)) / (B + 1))
    assert row.p_floor == pytest.approx(1 / (B + 1)) and row.verdict == "supported"
    # The shared half-sample effect cancels in the paired difference: its interval is much narrower
    # than either pair's own spread.
    assert row.ci_high - row.ci_low < 0.5 * (np.quantile(reps["lm1", "lm2"], 0.975) - np.quantile(reps["lm1", "lm2"], 0.025))
    # BH by hand over every tested row.
    tested = table[table.reason == ""]
    p = tested.p_value.to_numpy()
    order = np.argsort(p)
    q = np.empty_like(p)
    q[order] = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    np.testing.assert_allclose(tested.q_value, np.minimum(q, 1), rtol=1e-12)


def test_skipped_claims_say_why():
    rng = np.random.default_rng(1)
    summaries, _ = hand_pairs(rng)
    table = claims_table(summaries, info_of(MODELS), {"lm1": "lm1-random", "lm2": None, "enc": None, "cnn": None})
    skipped = table[table.verdict == "skipped"]
    assert (skipped.reason != "").all() and (table[table.verdict != "skipped"].reason == "").all()
    no_control = skipped[(skipped.kind == "control") & (skipped.pair == "lm1__lm2")].reason.tolist()
    assert no_control == ["lm2 has no random-init control in the config (a model with init: random and source "
                          "offline:lm2)"]
    no_baseline = skipped[(skipped.kind == "baseline") & skipped.claim.str.contains("lm2 replaced")].reason
    assert no_baseline.str.contains("no language input baseline in the config").all()
    # cnn has the pixels baseline: those rows are tested (cnn x lm1 vs pixels x lm1, ...).
    tested_baseline = table[(table.kind == "baseline") & (table.reason == "")]
    assert set(tested_baseline.versus) == {"lm1__pixels", "lm2__pixels", "enc__pixels"}
    competence = table[table.kind == "competence"]
    assert competence.reason.str.contains("needs 3 or more").all()  # lm1 and lm2 only have bpb
    assert competence.reason.str.contains("left out, no competence .*: enc").any()


def test_competence_trend_and_its_permutation_p():
    models = {f"lm{k}": ("language", "pretrained", f"offline:lm{k}", 100 * (k + 1), 2.0 - 0.2 * k, np.nan)
              for k in range(5)}
    models.update({f"v{k}": ("vision", "pretrained", f"zoo:v{k}", 10, np.nan, 0.5 + 0.1 * k) for k in range(4)})
    rng = np.random.default_rng(2)
    summaries = {}
    for a, b in itertools.combinations(sorted(models), 2):
        # Alignment grows with the LM's competence (index k), and with the vision model's.
        score = 0.1 + 0.05 * sum(int(m[-1]) for m in (a, b))
        summaries[f"{a}__{b}"] = summary(a, b, score, score + rng.standard_normal(B) * 0.001)
    table = claims_table(summaries, info_of(models), {})
    rows = table[table.kind == "competence"].set_index("claim")
    within = rows.loc["alignment to lm4 grows with competence among trained language models"]
    assert within.estimate == pytest.approx(1.0) and within.n == 4  # lm4 (largest) is the reference
    assert within.p_value == pytest.approx(2 / 24) and within.p_floor == pytest.approx(2 / 24)
    cross = rows.loc["language-model competence vs mean alignment with the trained vision models"]
    assert cross.estimate == pytest.approx(1.0) and cross.n == 5
    assert cross.p_value == pytest.approx(2 / 120)
    assert (rows.verdict != "skipped").all()
    # spearman and the permutation p against scipy and a brute-force count
    from scipy.stats import spearmanr

    x, y = rng.standard_normal(6), rng.standard_normal(6)
    rho = float(spearman(x, y))
    assert rho == pytest.approx(spearmanr(x, y).statistic)
    brute = np.mean([abs(spearmanr(x[list(o)], y).statistic) >= abs(rho) - 1e-12
                     for o in itertools.permutations(range(6))])
    assert model_permutation_p(x, y, rho)[0] == pytest.approx(brute)


def test_competence_of_and_mismatched_half_samples():
    info = info_of(MODELS)
    c = competence_of(info)
    assert c["lm1"] == -1.2 and c["cnn"] == 0.8 and np.isnan(c["enc"]) and np.isnan(c["pixels"])
    summaries = {"x.parquet": summary("lm1", "lm2", 0.5, np.zeros(B)),
                 "y.parquet": summary("lm1", "enc", 0.5, np.zeros(B), digest="other")}
    with pytest.raises(ValueError, match="(?s)bootstrapped on different half-samples.*y.parquet: N=400, n_boot=50, half-samples other"):
        claims_table(summaries, info, {})


def test_cross_modal_pairs_against_their_null():
    rng = np.random.default_rng(3)
    summaries, _ = hand_pairs(rng)
    table = claims_table(summaries, info_of(MODELS), {})
    null = table[table.kind == "beyond_null"]
    assert set(null.pair) == {"cnn__enc", "cnn__lm1", "cnn__lm1-random", "cnn__lm2", "enc__pixels",
                              "lm1__pixels", "lm1-random__pixels", "lm2__pixels"}
    row = null[null.pair == "cnn__lm1"].iloc[0]
    assert row.estimate == pytest.approx(0.3 - 0.05) and row.ci_low == pytest.approx(0.3 - 0.02 - 0.05)
    assert row.p_value == 0.01 and row.p_floor == pytest.approx(0.01) and row.verdict == "supported"
    assert null[null.pair == "lm1-random__pixels"].verdict.tolist() == ["inconclusive"]


def test_dataset_controls_come_from_the_config():
    config = {"datasets": {"d": {"sampler": "scenes", "n": 64}},
              "models": {"a": {"source": "local:/x"}, "a-rand": {"source": "local:/x", "init": "random"},
                         "b": {"source": "local:/y"}}}
    config = check_config(validate_schema(config))
    assert dataset_controls(config, "d") == {"a": "a-rand", "b": None}


def test_baselines_pair_with_trained_models_only_unless_all():
    config = {"datasets": {"d": {"sampler": "scenes", "n": 64}},
              "models": {"a": {"source": "local:/x"}, "a-rand": {"source": "local:/x", "init": "random"},
                         "b": {"source": "local:/y"}, "px": {"source": "baseline:pixels", "modality": "vision"},
                         "bow": {"source": "baseline:bag_of_words"}}}
    config = check_config(validate_schema(config))
    assert config["alignment"]["baseline_pairs"] == "trained"
    assert model_pairs(config, "d") == [("a", "a-rand"), ("a", "b"), ("a", "bow"), ("a", "px"), ("a-rand", "b"),
                                        ("b", "bow"), ("b", "px")]
    config["alignment"]["baseline_pairs"] = "all"
    assert len(model_pairs(config, "d")) == 10  # 5 models: every pair


# ---- N-sweep ---------------------------------------------------------------------------------------


def test_sweep_sizes_and_scaled_k():
    assert sweep_sizes(1024) == [64, 128, 256, 512, 1024]
    assert sweep_sizes(300, 64) == [64, 128, 256, 300] and sweep_sizes(24) == [24]
    assert [scaled_topk(10, n, 1024) for n in (64, 128, 256, 512, 1024)] == [1, 1, 3, 5, 10]
    assert sweep_slope([{"n": 64, "score": 0.5}, {"n": 128, "score": 0.4}, {"n": 256, "score": 0.3}]) == pytest.approx(-0.1)
    assert sweep_slope([{"n": 64, "score": 0.5}]) is None


@pytest.mark.parametrize("metric,params", [("mutual_knn", {"topk": 6}), ("cka", {})])
def test_sweep_scores_equal_direct_scores_on_nested_subsets(metric, params):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((256, 6))
    A = np.stack([z @ rng.standard_normal((6, 20)) + rng.standard_normal((256, 20)) for _ in range(2)], 1)
    B = np.stack([z @ rng.standard_normal((6, 12)) + rng.standard_normal((256, 12)) for _ in range(3)], 1)
    pair = prepare_pair(A, B, metric, **params)
    rows = n_sweep(pair, 1, 2, [64, 128, 256], draws=3, seed=7)
    order = np.random.default_rng([7, 2]).permutation(256)  # the documented stream: draw 0's order
    X, Y = preprocess(A)[:, 1], preprocess(B)[:, 2]
    for r in rows:
        if r["draw"] != 0:
            continue
        idx = np.sort(order[: r["n"]])
        p = {**params, "topk": r["topk"]} if r["topk"] is not None else params
        assert r["score"] == pytest.approx(metrics.score(metric, X[idx], Y[idx], **p), abs=1e-12)
    full = [r for r in rows if r["n"] == 256]
    assert len({r["mode"] for r in full}) == len(full)  # the full set once per mode
    assert all(r["score"] == pytest.approx(pair.matrix[1, 2], abs=1e-12) for r in full)
    modes = {r["mode"] for r in rows}
    assert modes == ({"fixed_k", "fixed_k_over_n"} if metric == "mutual_knn" else {"all"})
    draws_at_64 = [r["score"] for r in rows if r["n"] == 64 and r["mode"] in ("fixed_k", "all")]
    assert len(draws_at_64) == 3 and len(set(draws_at_64)) == 3  # different subsets


# ---- config ------------------------------------------------------------------------------------------


def base_config():
    return {"datasets": {"d": {"sampler": "scenes", "n": 64}},
            "models": {"a": {"source": "local:/x"}, "b": {"source": "local:/y"}}}


@pytest.mark.parametrize("alignment,message", [
    ({"metrics": {"nope": {}}}, r"config key 'alignment.metrics.nope': alignment metric 'nope': unknown metric 'nope'"),
    ({"metrics": {"k50": {"metric": "mutual_nn", "topk": 5}}}, r"'alignment.metrics.k50'.*unknown metric 'mutual_nn'"),
    ({"metrics": {"cknna": {}}}, r"config key 'alignment.metrics.cknna.topk' is required for cknna"),
    ({"metrics": {"ck": {"metric": "cknna", "unbiased": True}}}, r"'alignment.metrics.ck.topk' is required for cknna"),
    ({"metrics": {"cka": {"n_perm": 0}}}, r"'alignment.metrics.cka.n_perm': 0 must be a positive integer"),
    ({"n_sweep": {"pairs": ["a__c"]}}, r"'alignment.n_sweep.pairs': 'a__c' is not two models"),
])
def test_alignment_config_errors_name_the_key(alignment, message):
    config = base_config()
    config["alignment"] = alignment
    with pytest.raises(ConfigError, match=message):
        check_config(validate_schema(config))


def test_alignment_config_defaults_are_prh_and_schema_checks_values():
    config = check_config(validate_schema(base_config()))
    al = config["alignment"]
    assert (al["clip_quantile"], al["clip_method"], al["aggregate"], al["alpha"]) == (0.95, "per_sample_mean", "max", 0.05)
    config = base_config()
    config["alignment"] = {"clip_method": "exact"}
    with pytest.raises(ConfigError, match="'exact' is not one of"):
        validate_schema(config)
    config["alignment"] = {"clip_quantile": None, "metrics": {"cknna": {"topk": 10}}}
    assert check_config(validate_schema(config))["alignment"]["clip_quantile"] is None
