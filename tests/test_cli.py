import subprocess
import sys

from convergence.cli import main
from convergence.alignment import read_pair
from stores import related, write_store


def test_align_command_prints_best_pair_and_writes_the_matrix(tmp_path, capsys):
    a, b, _ = related()
    pa, pb = write_store(tmp_path / "a.zarr", a, "a"), write_store(tmp_path / "b.zarr", b, "b")
    out = tmp_path / "m.parquet"
    assert main(["align", str(pa), str(pb), "--metric", "mutual_knn", "--topk", "7", "--n-boot", "20",
                 "--n-perm", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    df, summary = read_pair(out)
    assert summary["params"] == {"topk": 7} and len(df) == 3 * 4
    assert f"layer {summary['best_layer_a']}" in text and "CI" in text
    assert f"calibrated (max over layer pairs vs 20 permutations): {summary['calibrated_score']:.4f}" in text
    assert f"p = {summary['p_value']:.3g} (floor {1 / 21:.3g})" in text
    pre = summary["preprocessing"]
    assert {k: pre[k] for k in ("normalize", "clip_quantile", "clip_method")} == {
        "normalize": True, "clip_quantile": 0.95, "clip_method": "per_sample_mean"}
    assert pre["unclipped"] == [] and len(pre["clip_thresholds"]) == 2 and min(pre["clip_thresholds"]) > 0
    assert {r["n"] for r in summary["n_sweep"]} == {64, 128, 200}
    assert main(["align", str(pa), str(pb), "--metric", "mutual_knn", "--topk", "7", "--n-boot", "5", "--n-perm", "5",
                 "--clip-quantile", "none", "--no-sweep", "--agg", "mean", "--out", str(out)]) == 0
    summary = read_pair(out)[1]
    assert summary["preprocessing"]["clip_quantile"] is None and summary["n_sweep"] == []
    assert summary["calibration"]["agg"] == "mean"
    assert main(["align", str(pa), str(pb), "--metric", "cka", "--param", "kernel_metric=rbf",
                 "--param", "rbf_threshold=0.5", "--n-boot", "10", "--n-perm", "10", "--out", str(out)]) == 0
    assert read_pair(out)[1]["params"] == {"kernel_metric": "rbf", "rbf_threshold": 0.5}


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["align", str(tmp_path / "x.zarr"), str(tmp_path / "y.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "x.zarr")]) == 2
    assert main(["align", str(tmp_path / "x.zarr"), str(tmp_path / "y.zarr"), "--alpha", "1.5"]) == 2
    assert "alpha must be a number in (0, 1)" in capsys.readouterr().err


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "convergence.cli", "align", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--topk" in proc.stdout
