import numpy as np
import pandas as pd
import pytest

from convergence import alignment
from convergence.alignment.aggregate import OUTPUTS, aggregate, default_reference, model_info
from convergence.alignment import align_stores, matrix_of, metric_call, read_pair, write_pair
from convergence.store import StoreError
from stores import related, write_store


@pytest.fixture()
def three_stores(tmp_path):
    a, b, c = related()
    return {
        "a": write_store(tmp_path / "a.zarr", a, "a", n_params=10_000, bpb=1.2),
        "b": write_store(tmp_path / "b.zarr", b, "b", n_params=50_000, bpb=1.0),
        "c": write_store(tmp_path / "c.zarr", c, "c", init="random", n_params=10_000, bpb=3.0),
    }, (a, b, c)


PRH_DEFAULT = {"clip_quantile": 0.95, "clip_method": "per_sample_mean"}  # align_stores' preprocessing


@pytest.mark.parametrize("metric,params", [("mutual_knn", {"topk": 5}), ("cka", {}), ("svcca", {"cca_dim": 4})])
def test_align_stores_equals_the_array_math(three_stores, metric, params, tmp_path):
    paths, (a, b, _) = three_stores
    r = align_stores(paths["a"], paths["b"], metric, params, n_boot=30, n_perm=30)
    stored = a.astype(np.float32), b.astype(np.float32)  # stores hold float32
    np.testing.assert_array_equal(r.matrix, alignment.layer_scores(*stored, metric, **PRH_DEFAULT, **params))
    i, j, best = alignment.best_pair(r.matrix)
    assert (r.best_layer_a, r.best_layer_b, r.score) == (i, j, best)
    # The interval is the one bootstrap_ci gives on the best pair's preprocessed layers (same seed: the
    # same half-samples), and the calibration the one calibrate_layers gives on the same permutations.
    X, Y = (alignment.preprocess(s, **PRH_DEFAULT)[:, k] for s, k in ((stored[0], i), (stored[1], j)))
    interval = alignment.bootstrap_ci(X, Y, metric, n_boot=30, seed=0, **params)
    assert (r.ci_low, r.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-12)
    assert r.ci_high - r.ci_low > 0
    cal = alignment.calibrate_layers(*stored, metric, n_perm=30, seed=0, **PRH_DEFAULT, **params)
    assert (r.tau, r.calibrated_score, r.p_value) == pytest.approx((cal.tau, cal.calibrated, cal.p_value), abs=1e-12)
    assert r.p_value == pytest.approx(1 / 31) and r.p_floor == pytest.approx(1 / 31)  # nothing in the null comes close
    assert r.calibration["null"] == pytest.approx(cal.null.tolist(), abs=1e-12)
    df, summary = read_pair(write_pair(r, tmp_path / "r.parquet"))
    np.testing.assert_array_equal(matrix_of(df).values, r.matrix)
    assert summary["score"] == r.score and summary["params"] == params and summary["model_b"] == "b"


def test_unrelated_models_are_not_significant(three_stores):
    paths, _ = three_stores
    r = align_stores(paths["a"], paths["c"], "mutual_knn", {"topk": 5}, n_boot=30, n_perm=99)
    assert r.p_value > 0.01 and r.score < 0.1  # chance is 5/199


def test_mismatched_samples_and_bad_metrics_fail_clearly(three_stores, tmp_path):
    paths, (a, _, _) = three_stores
    other = write_store(tmp_path / "o.zarr", a, "o", sample_ids=[f"x{i}" for i in range(len(a))])
    with pytest.raises(StoreError, match="different samples"):
        align_stores(paths["a"], other, "cka")
    with pytest.raises(ValueError, match="unknown metric 'mutual_nn'"):
        metric_call({"metric": "mutual_nn"}, "m")
    with pytest.raises(ValueError, match=r"unknown parameters \['k'\]"):
        metric_call({"k": 10}, "mutual_knn")
    assert metric_call({"metric": "mutual_knn", "topk": 50}, "mknn50") == ("mutual_knn", {"topk": 50})
    assert metric_call(None, "cka") == ("cka", {})


def test_aggregate_writes_table_and_figures(three_stores, tmp_path):
    paths, _ = three_stores
    files = [write_pair(align_stores(paths[x], paths[y], "mutual_knn", {"topk": 5}, n_boot=20, n_perm=20,
                                     sweep={"min_n": 50, "draws": 2}),
                        tmp_path / f"{x}__{y}.parquet") for x, y in [("a", "b"), ("a", "c"), ("b", "c")]]
    out = {name: tmp_path / f"m{suffix}" for name, suffix in OUTPUTS.items()}
    aggregate(files, paths, out, "mutual_knn", "toy", controls={"a": "c", "b": None})
    assert all(p.stat().st_size > 0 for p in out.values())
    csv = pd.read_csv(out["table"])
    assert len(csv) == 3 and set(csv.columns) >= {"model_a", "model_b", "score", "best_layer_a", "best_layer_b",
                                                  "ci_low", "ci_high", "calibrated_score", "tau", "p_value",
                                                  "p_floor", "n_params_a", "bpb_b"}
    ab = csv[(csv.model_a == "a") & (csv.model_b == "b")].iloc[0]
    assert ab.score > csv[csv.model_b == "c"].score.max()  # related beats unrelated
    assert ab.calibrated_score > 0 and (csv[csv.model_b == "c"].calibrated_score == 0).all()
    claims = pd.read_csv(out["claims"])
    control = claims[(claims.kind == "control") & (claims.versus == "b__c")]
    assert control.verdict.tolist() == ["supported"]  # a x b beats c x b, c being a's control
    assert control.estimate.iloc[0] == pytest.approx(ab.score - csv[(csv.model_a == "b") & (csv.model_b == "c")].score.iloc[0])
    sweep = pd.read_csv(out["nsweep"])
    assert set(sweep.n) == {50, 100, 200} and set(sweep["mode"]) == {"fixed_k", "fixed_k_over_n"}
    info = model_info(paths)
    assert default_reference(info) == "b"  # largest pretrained language model
    with pytest.raises(ValueError, match="alignment.reference 'zzz'"):
        aggregate(files, paths, out, "mutual_knn", "toy", reference="zzz")


def test_constant_layers_are_masked_and_reported(three_stores, tmp_path):
    paths, (a, b, _) = three_stores
    a = a.copy()
    a[:, 0] = 1.5  # like a ViT's CLS token at the embedding output: the same for every input
    p = write_store(tmp_path / "cls.zarr", a, "cls")
    r = align_stores(p, paths["b"], "mutual_knn", {"topk": 5}, n_boot=10, n_perm=10)
    assert r.layers_a == [1, 2] and r.excluded_layers_a == [0] and r.matrix.shape == (2, 4)
    stored = a.astype(np.float32)[:, 1:], b.astype(np.float32)
    np.testing.assert_array_equal(r.matrix, alignment.layer_scores(*stored, "mutual_knn", topk=5, **PRH_DEFAULT))
    a[:] = 2.0
    with pytest.raises(ValueError, match="every layer is constant"):
        align_stores(write_store(tmp_path / "flat.zarr", a, "flat"), paths["b"], "cka")
