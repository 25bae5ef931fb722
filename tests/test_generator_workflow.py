"""The generator stage end to end: the real Snakefile on a tiny config, its outputs, and incrementality."""

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from workflow import snakemake

pytestmark = pytest.mark.slow

GEN = "results/generator/gan"
TARGETS = [f"{GEN}/{name}" for name in ("matches.csv", "nulls.png", "sets.csv", "sets.png", "inversion.csv",
                                        "edits.csv", "edit_summary.csv", "edits.png")]


@pytest.fixture(scope="module")
def gen_config():
    cnn = {"arch": "resnet", "width": 8, "depth": 2, "blocks": 1, "image_size": 32}
    return {
        "datasets": {"tiny": {"sampler": "scenes", "n": 24, "seed": 1, "image_size": 32},
                     "tiny_train": {"sampler": "scenes", "n": 48, "seed": 2, "image_size": 32}},
        "extract": {"datasets": ["tiny"]},
        "rosetta": {"enabled": False, "grid": 4},
        "oocr": {"enabled": False},
        "zoo": {
            "cnn-a": {"dataset": "tiny_train", "arch": cnn, "train": {"epochs": 2, "batch_size": 16, "seed": 0}},
            "gan": {"kind": "generator", "dataset": "tiny_train", "evaluator": "cnn-a",
                    "arch": {"latent_dim": 8, "width": 4, "image_size": 32},
                    "train": {"steps": 4, "batch_size": 8}},
        },
        "models": {
            "cnn-a": {"source": "zoo:cnn-a", "modality": "vision"},
            # A second trained model from the same weights, other layers: sets need two (saves a training job).
            "cnn-b": {"source": "zoo:cnn-a", "modality": "vision", "units_layers": [1, 2]},
            "cnn-a-random": {"source": "zoo:cnn-a", "modality": "vision", "init": "random"},
        },
        "generator": {
            "n_samples": 24, "res": 8, "k": 5, "k_back": 3, "batch_size": 8,
            "invert": {"dataset": "tiny", "n_images": 2, "steps": 4, "restarts": 2},
            "edit": {"shift": [[4, 0], [40, 0]], "zoom": [2.0], "duplicate": [[12, 0]], "steps": 3, "restarts": 1},
        },
    }


def planned(workdir, config, targets):
    out = snakemake(workdir, config, "-n", *targets)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    counts = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, gen_config):
    workdir = tmp_path_factory.mktemp("gen_run")
    snakemake(workdir, gen_config, *TARGETS)
    return workdir


def test_generator_folder_holds_weights_metrics_and_samples(gen_run):
    folder = gen_run / "results/zoo/gan"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (folder / "generator.safetensors").exists() and (folder / "samples.png").stat().st_size > 0
    assert metrics["arch"]["unit_layers"] == ["stem", "up1", "up2"] and metrics["arch"]["latent_dim"] == 8
    quality = metrics["quality"]
    assert quality["evaluator"] == "cnn-a"
    for ref in ("generator", "real_train", "random_init"):
        assert quality[ref]["frechet"] >= 0 and 0 <= quality[ref]["mean_attribute_tvd"] <= 1


def test_matches_against_nulls_and_sets(gen_run):
    matches = pd.read_csv(gen_run / f"{GEN}/matches.csv")
    assert set(matches["model"]) == {"cnn-a", "cnn-b", "cnn-a-random"}
    assert set(matches["criterion"]) == {"strict", "reference"}
    trained = matches[(matches["model"] == "cnn-a")]
    assert {"rotation_matches", "random_generator_matches", "random_model_matches",
            "shuffled_images_matches"} <= set(matches.columns)
    assert (trained["random_model"] == "cnn-a-random").all()  # its control is the random-init model null
    # The reference criterion (best, reciprocated in the top 3) admits every strict match and maybe more.
    strict = matches.set_index(["model", "criterion"])["matches"]
    for m in ("cnn-a", "cnn-b"):
        assert strict[(m, "reference")] >= strict[(m, "strict")]
    summary = json.loads((gen_run / f"{GEN}/summary.json").read_text())
    assert summary["trained_models"] == ["cnn-a", "cnn-b"] and set(summary["sets"]) == {
        "observed", "rotation", "random_generator"}
    sets = pd.read_csv(gen_run / f"{GEN}/sets.csv")
    assert len(sets) == summary["sets"]["observed"]
    assert {"generator_label", "cnn-a_label", "cnn-b_r", "mean_r"} <= set(sets.columns)
    pair = np.load(gen_run / f"{GEN}/pairs/cnn-a.npz")
    assert pair["obs_a_index"].shape == (int(pair["widths_a"].sum()), 5)  # every generator unit, top-5


def test_inversion_and_edits_are_measured_and_refusals_give_the_range(gen_run):
    inversion = pd.read_csv(gen_run / f"{GEN}/inversion.csv")
    assert len(inversion) == 2 and {"loss", "cosine", "converged", "pixel_mae", "attr_acc_inverted",
                                    "attr_acc_real"} <= set(inversion.columns)
    assert (inversion["true_count"] == 1).all()  # single-object images only
    edits = pd.read_csv(gen_run / f"{GEN}/edits.csv")
    assert len(edits) == 2 * 4  # 2 shifts + 1 zoom + 1 duplicate per image
    far = edits[(edits["edit"] == "shift") & (edits["dx"] == 40)]
    assert far["refused"].notna().all()  # 40 px right in a 32 px frame
    assert far["refused"].str.contains("outside the 32x32 frame|objects; edits are measured").all()
    ran = edits[edits["refused"].isna()]
    assert ran["baseline_success"].notna().all() and set(ran["baseline_success"]) <= {True, False}
    assert (edits["requested"] == edits["label"]).sum() + edits["fitted"].notna().sum() == len(edits)
    table = pd.read_csv(gen_run / f"{GEN}/edit_summary.csv")
    assert list(table["edit"]) == ["shift", "zoom", "duplicate"]
    assert (table["requested"] == table["refused"] + table["run"]).all()
    assert {"fitted", "no_edit_success_rate"} <= set(table.columns)
    assert (gen_run / f"{GEN}/edits.png").stat().st_size > 0
    log = (gen_run / "results/logs/generator/gan/edit.log").read_text()
    for _, row in inversion[~inversion["converged"]].iterrows():  # never hidden
        assert f"inversion of {row['sample_id']} did not converge" in log


def test_adding_a_vision_model_schedules_its_pair_and_the_aggregates(gen_run, gen_config):
    assert planned(gen_run, gen_config, TARGETS) == {}
    config = copy.deepcopy(gen_config)
    config["models"]["cnn-b-random"] = {"source": "zoo:cnn-a", "modality": "vision", "init": "random", "seed": 1}
    # A random-init model: its pair, and the summary (a new null); inversion uses trained models only.
    assert planned(gen_run, config, TARGETS) == {"generator_pair": 1, "generator_sets": 1}
    config["generator"]["edit"]["steps"] = 4
    assert planned(gen_run, config, TARGETS) == {"generator_pair": 1, "generator_sets": 1, "generator_edit": 1}
    config = copy.deepcopy(gen_config)
    config["zoo"]["gan"]["train"]["steps"] = 5  # a new generator: everything of the stage, nothing else
    assert planned(gen_run, config, TARGETS) == {"train_generator": 1, "generator_pair": 3, "generator_sets": 1,
                                                 "generator_edit": 1}
