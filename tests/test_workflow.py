"""End to end: the real Snakefile in a temp dir on tiny local models; incrementality by dry-run counts."""

import copy

import numpy as np
import pytest
import xarray as xr

from workflow import planned_jobs, snakemake

pytestmark = pytest.mark.slow


# bow x bert-random and bow x cnn-random are not aligned: input baselines pair with trained models only
# (alignment.baseline_pairs: trained)
BASELINE_CONTROL_PAIRS = 2


@pytest.fixture(scope="module")
def base_config(tiny_models):
    return {
        "datasets": {"tiny": {"sampler": "scenes", "n": 24, "seed": 1, "image_size": 32},
                     "tiny_train": {"sampler": "scenes", "n": 48, "seed": 2, "image_size": 32}},
        "extract": {"chunk_size": 16, "datasets": ["tiny"]},
        "alignment": {"metrics": {"mutual_knn": {"topk": 5}, "cka": {}}, "n_boot": 10, "n_perm": 10},
        "rosetta": {"k": 5, "k_relaxed": 3, "grid": 4, "unit_kinds": ["mlp", "residual"]},
        "oocr": {"tasks": ["coins"], "models": ["llama"], "n_eval_per_type": 2, "seeds": [0, 1],
                 "finetune": {"steps": 2, "batch_size": 2}, "icl": {"k": 1}, "free_form": {"samples": 2}},
        "zoo": {"cnn": {"dataset": "tiny_train",
                        "arch": {"arch": "resnet", "width": 8, "depth": 2, "blocks": 1, "image_size": 32},
                        "train": {"epochs": 2, "batch_size": 16}},
                "cnn2": {"dataset": "tiny_train",
                         "arch": {"arch": "resnet", "width": 8, "depth": 2, "blocks": 1, "image_size": 32},
                         "train": {"epochs": 2, "batch_size": 16, "seed": 1}}},
        "models": {
            "llama": {"source": f"local:{tiny_models['llama']}", "batch_size": 8},
            "gemma": {"source": f"local:{tiny_models['gemma3']}"},
            "bert": {"source": f"local:{tiny_models['bert']}"},
            "bert-random": {"source": f"local:{tiny_models['bert']}", "init": "random", "seed": 0},
            "cnn": {"source": "zoo:cnn", "modality": "vision"},
            "cnn2": {"source": "zoo:cnn2", "modality": "vision"},
            "cnn-random": {"source": "zoo:cnn", "modality": "vision", "init": "random"},
            "bow": {"source": "baseline:bag_of_words"},  # an input baseline: aligned, never in Rosetta
        },
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, base_config):
    workdir = tmp_path_factory.mktemp("run")
    snakemake(workdir, base_config)
    return workdir


def test_run_writes_stores_that_xarray_opens(finished_run, base_config):
    stores = {m: xr.open_zarr(finished_run / f"results/activations/tiny/{m}.zarr") for m in base_config["models"]}
    ids = [ds["sample_id"].values.tolist() for ds in stores.values()]
    assert all(i == ids[0] for i in ids) and len(ids[0]) == 24
    assert stores["bert-random"].attrs["init"] == "random"
    assert stores["bert"].attrs["params_sha256"] != stores["bert-random"].attrs["params_sha256"]
    assert "bpb" in stores["llama"] and "bpb" not in stores["bert"]
    assert stores["cnn"].attrs["modality"] == "vision" and 0 < stores["cnn"].attrs["accuracy"] <= 1
    assert stores["cnn"].attrs["layers"] == "blocks" and 0 not in stores["cnn"]["layer"].values  # PRH: no stem
    assert stores["bow"].attrs["init"] == "baseline" and stores["bow"]["layer_name"].values.tolist() == ["counts", "tfidf"]
    assert not (finished_run / "results/units/tiny/bow").exists()
    assert (finished_run / "results/zoo/cnn/metrics.json").exists()
    assert not (finished_run / "results/activations/tiny_train").exists()  # extract.datasets: [tiny]
    assert (finished_run / "results/logs/extract/tiny/llama.log").exists()
    assert planned_jobs(finished_run, base_config) == {}  # nothing to redo


def test_rosetta_outputs(finished_run, base_config):
    import json

    import pandas as pd

    root = finished_run / "results/rosetta/tiny"
    # One units folder per model, a store per kind: both kinds for language models, residual for vision.
    def stores(model):  # the folder's entries but Snakemake's own marker of a directory() output
        folder = finished_run / "results/units/tiny" / model
        return sorted(p.name for p in folder.iterdir() if p.name != ".snakemake_timestamp")

    assert stores("llama") == ["mlp.zarr", "residual.zarr"] and stores("cnn") == ["residual.zarr"]
    for kind, modality in (("mlp", "language"), ("residual", "language"), ("residual", "vision")):
        for suffix in ("null_excess.png", "layers.png", "pairwise.png", "neurons.png", "neurons.md"):
            assert (root / kind / f"{modality}_{suffix}").stat().st_size > 0
        excess = pd.read_csv(root / kind / f"{modality}_null_excess.csv")
        assert {"matches", "null_matches", "excess_over_null"} <= set(excess.columns)
        assert set(excess["unit_kind"]) == {kind}
    assert not (root / "mlp" / "vision_null_excess.csv").exists()  # vision models have no MLP units
    for kind in ("mlp", "residual"):
        sets = pd.read_csv(root / kind / "language_sets.csv")  # three trained language models: llama, gemma, bert
        assert {"llama_layer", "gemma_neuron", "bert_r"} <= set(sets.columns)
    assert not (root / "residual/vision_sets.csv").exists()  # two trained vision models: no sets (three or more)
    summary = json.loads((root / "mlp/matches/bert__gemma.json").read_text())
    assert summary["model_a"] == "bert" and "strict" in summary
    widths = {kind: json.loads((root / kind / "matches/bert__gemma.json").read_text())["n_units_a"]
              for kind in ("mlp", "residual")}
    assert widths["mlp"] > widths["residual"]  # BERT's intermediate layer is wider than its hidden states
    # Pairs: the trained ones, and for each the one control pair its null-excess row reads; a model and
    # its own control are never correlated (no table reads that pair).
    language = ["bert-random__gemma", "bert-random__llama", "bert__gemma", "bert__llama", "gemma__llama"]
    assert sorted(p.stem for p in (root / "mlp/matches").glob("*.json")) == language
    assert sorted(p.stem for p in (root / "residual/matches").glob("*.json")) == sorted(
        language + ["cnn-random__cnn2", "cnn__cnn2"])

    # bert-random is bert's control: the excess table compares trained pairs with it.
    lang = pd.read_csv(root / "mlp/language_null_excess.csv")
    assert "bert-random" not in set(lang.model_a) | set(lang.model_b)
    assert lang.loc[(lang.model_a == "bert") & (lang.model_b == "gemma"), "control_pair"].notna().all()
    # The kinds side by side: every trained pair and criterion per kind, and the set counts.
    kinds = pd.read_csv(root / "language_unit_kinds.csv")
    assert (root / "language_unit_kinds.png").stat().st_size > 0 and not (root / "vision_unit_kinds.csv").exists()
    pairs = kinds[kinds["what"] == "matches"]
    assert len(pairs) == 2 * 3 * 2 and set(pairs["unit_kind"]) == {"mlp", "residual"}  # kinds x pairs x criteria
    assert set(kinds.loc[kinds["what"] == "sets", "criterion"]) == {"anchor", "cycle"}


def test_oocr_summary(finished_run):
    import pandas as pd

    summary = pd.read_csv(finished_run / "results/oocr/summary.csv")
    assert list(summary.columns) == ["task", "question_type", "model", "condition", "score", "ci_low", "ci_high",
                                     "chance", "majority", "n", "n_seeds", "status", "precision"]
    assert set(summary.precision) <= {"bf16", "fp32"}  # what `auto` resolved to in the run's jobs
    assert set(summary.condition) == {"finetuned", "icl", "untuned"} and set(summary.task) == {"coins"}
    assert (summary.n_seeds == 2).all() and summary.groupby("question_type")["n"].nunique().eq(1).all()
    assert (finished_run / "results/oocr/coins.png").stat().st_size > 0
    assert (finished_run / "results/oocr/coins/llama/seed0/adapter/adapter_model.safetensors").exists()
    # each fine-tuned row paired with both baselines; the learning curves of both runs in one figure
    comparisons = pd.read_csv(finished_run / "results/oocr/comparisons.csv")
    assert set(comparisons.baseline) == {"untuned", "icl"} and len(comparisons) == 2 * summary.question_type.nunique()
    assert (finished_run / "results/oocr/learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    for seed in (0, 1):
        curve = pd.read_csv(finished_run / f"results/oocr/coins/llama/seed{seed}/adapter/learning_curve.csv")
        assert curve["step"].iloc[0] == 0 and curve["heldout_score"].between(0, 1).all()


def test_alignment_tables_and_figures(finished_run, base_config):
    import pandas as pd

    k = len(base_config["models"])
    for metric in ("mutual_knn", "cka"):
        table = pd.read_csv(finished_run / f"results/alignment/tiny/{metric}.csv")
        assert len(table) == k * (k - 1) // 2 - BASELINE_CONTROL_PAIRS and table["score"].notna().all()
        assert (table["ci_high"] > table["ci_low"]).all() and (table["p_value"] >= table["p_floor"]).all()
        assert np.allclose(table["p_floor"], 1 / 11) and table["calibrated_score"].between(0, 1).all()
        for suffix in (".png", "_layers.png", "_scale.png", "_claims.png", "_nsweep.png", "_claims.csv", "_nsweep.csv"):
            assert (finished_run / f"results/alignment/tiny/{metric}{suffix}").stat().st_size > 0
    pairs = table[["model_a", "model_b"]].apply(tuple, axis=1).tolist()
    assert ("cnn", "llama") in pairs and ("bert", "bert-random") in pairs  # sorted, cross-modal included


def test_summary_of_the_run(finished_run):
    text = (finished_run / "results/summary.md").read_text()
    for heading in ("## Kernel alignment", "### tiny: mutual_knn", "### tiny: cka", "## Rosetta neurons",
                    "## Inductive out-of-context reasoning"):
        assert heading in text
    assert "<table>" in (finished_run / "results/summary.html").read_text()


def test_adding_a_model_schedules_exactly_its_new_jobs(finished_run, base_config, tiny_models):
    config = copy.deepcopy(base_config)
    config["models"]["mpnet"] = {"source": f"local:{tiny_models['mpnet']}"}
    k = len(base_config["models"])
    # One extraction, K new pairs per metric, the two aggregates; its units (both kinds, one job), per unit
    # kind a correlation and matches with each of the 3 trained language models and with bert's control (the
    # control pair of (bert, mpnet)), the language sets and figures, and the kinds' comparison.
    assert planned_jobs(finished_run, config) == {
        "extract_activations": 1, "align_pair": 2 * k, "aggregate_alignment": 2,
        "extract_units": 1, "correlate_pair": 2 * 4, "match_pair": 2 * 4, "rosetta_sets": 2, "rosetta_figures": 2,
        "rosetta_unit_kinds": 1, "summarize_run": 1, "all": 1}  # Rosetta per unit kind, then the kinds compared

    config["datasets"]["tiny2"] = {"sampler": "scenes", "n": 16, "seed": 2, "image_size": 32}
    assert planned_jobs(finished_run, config)["extract_activations"] == 1  # not in extract.datasets: unused
    config["extract"]["datasets"].append("tiny2")
    # mpnet on tiny (still pending in this dry run) + all K + 1 models on tiny2, which also gets aligned.
    jobs = planned_jobs(finished_run, config)
    assert jobs["sample_dataset"] == 1 and jobs["extract_activations"] == 1 + (k + 1)
    assert jobs["align_pair"] == 2 * k + 2 * ((k + 1) * k // 2 - BASELINE_CONTROL_PAIRS)
    assert jobs["aggregate_alignment"] == 4


def test_changing_one_model_reruns_that_model_and_its_pairs_only(finished_run, base_config):
    config = copy.deepcopy(base_config)
    config["models"]["bert"]["pooling"] = "cls"  # pooled stores only: units are un-pooled
    k = len(base_config["models"])
    assert planned_jobs(finished_run, config) == {"extract_activations": 1, "align_pair": 2 * (k - 1),
                                                  "aggregate_alignment": 2, "summarize_run": 1, "all": 1}
    config = copy.deepcopy(base_config)
    config["models"]["bert"]["units_layers"] = [1, 2]  # units only: bert's two trained pairs, per kind
    assert planned_jobs(finished_run, config) == {"extract_units": 1, "correlate_pair": 2 * 2, "match_pair": 2 * 2,
                                                  "rosetta_sets": 2, "rosetta_figures": 2, "rosetta_unit_kinds": 1,
                                                  "summarize_run": 1, "all": 1}


def test_scheduling_knobs_rerun_nothing(finished_run, base_config):
    config = copy.deepcopy(base_config)
    config["models"]["bert"]["batch_size"] = 3
    config["models"]["llama"]["mem_mb"] = 9000
    assert planned_jobs(finished_run, config) == {}


def test_changing_a_metric_reruns_that_metric_only(finished_run, base_config):
    config = copy.deepcopy(base_config)
    config["alignment"]["metrics"]["mutual_knn"]["topk"] = 3
    k = len(base_config["models"])
    assert planned_jobs(finished_run, config) == {"align_pair": k * (k - 1) // 2 - BASELINE_CONTROL_PAIRS,
                                                  "aggregate_alignment": 1,
                                                  "summarize_run": 1, "all": 1}


def test_bad_config_fails_before_any_job(tmp_path, base_config):
    config = copy.deepcopy(base_config)
    config["models"]["bert"]["batch_size"] = "big"
    proc = snakemake(tmp_path, config, check=False)
    assert proc.returncode != 0
    assert "config key 'models.bert.batch_size'" in proc.stderr + proc.stdout
    config = copy.deepcopy(base_config)
    config["models"]["bert"]["source"] = "offline:bert-large"
    proc = snakemake(tmp_path, config, check=False)
    assert proc.returncode != 0 and "unknown offline model 'bert-large'" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_html_report_holds_every_figure(finished_run, base_config):
    snakemake(finished_run, base_config, "--report", str(finished_run / "report.html"))
    html = (finished_run / "report.html").read_text(errors="replace")
    for name in ("mutual_knn_scale.png", "cka_layers.png", "language_neurons.png", "vision_pairwise.png",
                 "coins.png", "versions.json"):
        assert name in html, name


def test_every_job_leaves_a_benchmark_file_that_the_profile_reads(finished_run, base_config, tmp_path):
    """One `benchmark:` record per job, under results/benchmarks/<rule>/: the run carries its own profile."""
    from collections import Counter

    from test_run_profile import _module

    planned = planned_jobs(tmp_path / "fresh", base_config)  # a fresh folder: every job of the run
    planned.pop("all")  # the target rule runs nothing
    planned["run_info"] = 1  # planned_jobs leaves it out (it reruns on any config change)
    jobs = _module().job_records(finished_run / "results")
    assert Counter(job["rule"] for job in jobs) == planned
    assert all(job["s"] > 0 for job in jobs)
