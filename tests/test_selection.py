"""`run:` narrows a config to the models, datasets and stages it names, before anything is planned."""

import copy
import re
import subprocess
import sys

import pytest

from convergence.config import ConfigError, apply_run_selection, load_config, validate_schema
from workflow import REPO, local_env


@pytest.fixture(scope="module")
def full():
    return validate_schema(load_config(REPO / "config" / "config.yaml", REPO / "config" / "full.yaml"))


def _select(config, **run):
    config = copy.deepcopy(config)
    config["run"] = run
    return apply_run_selection(validate_schema(config))


def test_only_the_named_models_and_datasets_stay_and_settings_naming_others_follow(full):
    sel = _select(full, models=["minilm-l6", "efficientnet-lite0", "efficientnet-lite1"], datasets=["photos"])
    assert list(sel["models"]) == ["minilm-l6", "efficientnet-lite0", "efficientnet-lite1"]
    assert list(sel["datasets"]) == ["photos"]  # scenes, scenes_train (the zoo's) go: no zoo model is kept
    assert all(spec["datasets"] == ["photos"] for spec in sel["models"].values())
    assert sel["zoo"] == {} and sel["oocr"]["models"] == [] and sel["generator"]["models"] == []
    assert sel["alignment"]["reference"] is None or sel["alignment"]["reference"] in sel["models"]


def test_a_selected_dataset_overrides_the_models_own_datasets(full):
    """The registry's models name `photos`; run.datasets puts them on the user's dataset instead."""
    config = copy.deepcopy(full)
    config["datasets"]["mine"] = {"sampler": "image_captions", "folder": "/data/mine"}
    sel = _select(config, models=["smollm2-135m", "efficientnet-lite0"], datasets=["mine"])
    assert sel["models"]["smollm2-135m"]["datasets"] == ["mine"] and sel["models"]["efficientnet-lite0"]["datasets"] == ["mine"]
    assert list(sel["datasets"]) == ["mine"] and sel["extract"]["datasets"] is None
    assert sel["rosetta"]["datasets"] is None and sel["alignment"]["datasets"] is None  # not the default's photos


def test_zoo_models_keep_the_dataset_they_train_on_and_the_generator_its_gan(full):
    sel = _select(full, models=["cnn-w32-s0", "cnn-w32-random"], datasets=["scenes"])
    assert set(sel["zoo"]) == {"cnn-w32-s0", "gan-w16", "cnn-w32-s1"}  # the model, the GAN, its evaluator
    assert set(sel["datasets"]) == {"scenes", "scenes_train"}
    no_gen = _select(full, models=["cnn-w32-s0"], datasets=["scenes"], stages=["extract", "alignment", "rosetta"])
    assert set(no_gen["zoo"]) == {"cnn-w32-s0"} and no_gen["generator"]["enabled"] is False
    assert no_gen["oocr"]["enabled"] is False


def test_without_a_selection_nothing_changes(full):
    assert _select(full) == validate_schema(copy.deepcopy(full) | {"run": {}})


def test_stages_left_out_are_switched_off(full):
    sel = _select(full, stages=["extract", "rosetta"])
    assert sel["alignment"]["datasets"] == [] and sel["oocr"]["enabled"] is False
    assert sel["generator"]["enabled"] is False and sel["rosetta"]["enabled"] is True
    assert set(sel["models"]) == set(full["models"])  # no run.models: every model
    with pytest.raises(ConfigError, match="run.stages': alignment needs extract"):
        _select(full, stages=["alignment"])


def test_selection_mistakes_name_the_key(full):
    with pytest.raises(ConfigError, match=r"run.models': unknown model \['gpt-5'\]"):
        _select(full, models=["gpt-5"])
    with pytest.raises(ConfigError, match=r"run.datasets': unknown dataset \['mine'\]"):
        _select(full, datasets=["mine"])
    config = copy.deepcopy(full)
    config["datasets"]["texts"] = {"sampler": "text_file", "file": "/data/t.txt"}
    with pytest.raises(ConfigError, match=r"run.datasets': model 'efficientnet-lite0' \(vision\) can read none of "
                                          r"\['texts'\].*images"):
        _select(config, models=["efficientnet-lite0"], datasets=["texts"])


@pytest.mark.slow
def test_an_overlay_of_a_few_lines_plans_exactly_its_jobs(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("run:\n  models: [minilm-l6, mpnet-base]\n  datasets: [photos]\n  stages: [extract, alignment]\n")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n",
           "--cores", "2", "--configfile", str(REPO / "config" / "config.yaml"), str(overlay)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=local_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:", 1)[1], flags=re.M)}
    assert jobs == {"fetch_dataset_source": 1, "fetch_offline_model": 2, "sample_dataset": 1,
                    "extract_activations": 2, "align_pair": 1, "aggregate_alignment": 1, "summarize_run": 1,
                    "run_info": 1, "all": 1, "total": 11}
    assert "mpnet-base" in proc.stdout and "smollm2" not in proc.stdout and "efficientnet" not in proc.stdout


def test_a_name_the_config_does_not_know_is_still_an_error_after_selection(full):
    """Pruning drops the models left out, not typos: check_config still reports an unknown name."""
    from convergence.config import check_config

    config = copy.deepcopy(full)
    config["oocr"]["models"] = ["smollm2-135m", "gpt-9"]
    sel = _select(config, models=["smollm2-135m", "minilm-l6"])
    assert sel["oocr"]["models"] == ["smollm2-135m", "gpt-9"]
    with pytest.raises(ConfigError, match="oocr.models.*unknown model 'gpt-9'"):
        check_config(sel)
    config["oocr"]["models"] = ["gpt-9"]
    with pytest.raises(ConfigError, match="oocr.models.*unknown model 'gpt-9'"):
        check_config(_select(config))  # no run.models: nothing pruned
