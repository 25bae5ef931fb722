"""The OOCR part of the configuration: the default's shape, the paper-size overlay (dry run), and the
errors a wrong per-task setting gives before any job runs."""

import copy
import re
import subprocess
import sys

import pytest
import yaml

from convergence.config import ConfigError, check_config, merge_overlay, validate_schema
from convergence.oocr.tasks import TASKS, task_params
from workflow import REPO


def _raw(*names):
    config = {}
    for name in names:
        merge_overlay(config, yaml.safe_load((REPO / "config" / name).read_text()))
    return config


@pytest.fixture(scope="module")
def default_config():
    return validate_schema(_raw("config.yaml"))


@pytest.fixture(scope="module")
def full_config():
    return validate_schema(_raw("config.yaml", "full.yaml"))


def test_the_full_study_runs_every_task_with_at_least_two_seeds_and_the_default_a_subset(default_config,
                                                                                        full_config):
    oocr = full_config["oocr"]
    assert oocr["enabled"] and set(oocr["tasks"]) == set(TASKS)
    assert len(oocr["seeds"]) >= 2 and len(set(oocr["seeds"])) == len(oocr["seeds"])
    default = default_config["oocr"]
    assert default["enabled"] and default["tasks"] and set(default["tasks"]) < set(TASKS)  # sized to the budget
    for config in (default, oocr):
        assert config["n_eval_per_type"] % 2 == 0  # binary question types balance into two equal halves
        assert config["free_form"] == {"samples": 5, "temperature": 1.0}  # the paper's sampling
        assert config["precision"] == "auto"
        for task, overrides in config["per_task"].items():
            assert set(overrides.get("data", {})) <= set(task_params(task))
    # everything but the tasks and seeds is the default's: the full study asks the same questions
    assert {k: v for k, v in oocr.items() if k not in ("tasks", "seeds")} == {
        k: v for k, v in default.items() if k not in ("tasks", "seeds")}
    check_config(default_config)
    check_config(full_config)


def test_paper_overlay_has_the_papers_sizes():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["oocr"]
    assert len(paper["seeds"]) == 10 and paper["n_eval_per_type"] == 100
    assert set(paper["models"]) == {"smollm2-135m", "gemma3-270m"}
    per_task = paper["per_task"]
    assert per_task["functions"]["data"]["n_train"] == 96_000 and paper["icl"]["k"] == 10
    assert per_task["parity"]["data"]["lengths"] == [4, 5, 6] and per_task["parity"]["icl"]["k"] == 200
    assert per_task["locations"]["icl"]["k"] == 200 and paper["icl"]["max_tokens"] is None
    assert paper["free_form"] == {"samples": 5, "temperature": 1.0}


@pytest.mark.slow
def test_paper_overlay_dry_run_plans_every_fine_tune(tmp_path):
    """`snakemake -n` with config/paper.yaml over the full study: 5 tasks x 10 seeds of data, x 2 models of
    fine-tunes and evaluations, one summary."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "2",
           "results/oocr/summary.csv",  # the OOCR part only: the rest of the study is full.yaml's
           "--configfile", *(str(REPO / "config" / name) for name in ("config.yaml", "full.yaml", "paper.yaml"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:", 1)[1], flags=re.M))
    assert counts == {"fetch_offline_model": "2", "oocr_data": "50", "oocr_finetune": "100", "oocr_evaluate": "100",
                      "oocr_summary": "1", "total": "253"}


@pytest.mark.slow
def test_scale_overlay_adds_only_the_larger_models_oocr_jobs(tmp_path):
    """config/oocr_scale.yaml after the default run: the default's OOCR tasks with Gemma-3-270M beside
    SmolLM2-135M, the OOCR stage only (a dry run plans both models' jobs in an empty folder)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "2",
           "--configfile", *(str(REPO / "config" / name) for name in ("config.yaml", "full.yaml", "oocr_scale.yaml"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout.split("Job stats:", 1)[1], flags=re.M))
    assert {k: counts.get(k) for k in ("oocr_data", "oocr_finetune", "oocr_evaluate")} == {
        "oocr_data": "2", "oocr_finetune": "4", "oocr_evaluate": "4"}
    assert not {"extract_activations", "align_pair", "correlate_pair", "train_vision_model"} & set(counts)
    scale = validate_schema(_raw("config.yaml", "full.yaml", "oocr_scale.yaml"))
    assert scale["oocr"]["tasks"] == _raw("config.yaml")["oocr"]["tasks"]  # the default's tasks


def _with(config, **oocr):
    config = copy.deepcopy(config)
    config["oocr"].update(oocr)
    return config


def test_unknown_per_task_size_is_a_config_error(default_config):
    bad = _with(default_config, per_task={"parity": {"data": {"n_vars": 8, "flips": 3}}})
    with pytest.raises(ConfigError, match=r"oocr.per_task.parity.data.flips': not a size of the parity task"):
        check_config(bad)
    # a task whose items cost more to score may ask fewer of them
    check_config(_with(default_config, per_task={"coins": {"data": {"n_eval_per_type": 4}}}))


@pytest.mark.parametrize(
    "oocr, message",
    [
        ({"icl": {"k": 5, "items_per_type": 8}}, "items_per_type"),  # every condition answers the same items
        ({"per_task": {"dice": {}}}, "dice"),
        ({"per_task": {"coins": {"finetune": {"steps": 0}}}}, "minimum"),
        ({"n_eval_per_type": 1}, "minimum"),
        ({"precision": "fp16"}, "fp16"),
    ],
)
def test_schema_refuses_bad_oocr_settings(default_config, oocr, message):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["oocr"].update(oocr)
    with pytest.raises(ConfigError, match=message):
        validate_schema(raw)
