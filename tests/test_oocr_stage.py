"""OOCR pipeline stages on tiny random Llamas loaded through `local:` specs: data -> LoRA fine-tuning
-> evaluation under the three conditions -> summary table and figures; atomic outputs."""

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from convergence.oocr.stage import (
    SUMMARY_COLUMNS,
    make_data,
    run_evaluate,
    run_finetune,
    summarize_runs,
)
from convergence.oocr.tasks import QUESTION_TYPES, TaskData, generate

# peft calls a transformers API deprecated in v5 (is_gradient_checkpointing); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TASK = "coins"
SIZE = dict(flips_per_snippet=10, n_eval_per_type=3)  # 320 documents, 18 items
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def leftovers(folder):
    """Temporary siblings an atomic write would leave behind."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def llama_spec(tiny_models):
    return {"source": f"local:{tiny_models['llama']}"}


@pytest.fixture(scope="module")
def char_llama_spec(tiny_models, tmp_path_factory):
    """The fixture's tiny Llama reading characters, with weights large enough to make confident
    predictions: options of an item then differ in likelihood, so scores show what training did."""
    from test_oocr_scoring import char_tokenizer
    from transformers import AutoConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = AutoConfig.from_pretrained(tiny_models["llama"])
    config.vocab_size, config.initializer_range = len(tok), 0.3
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, None, None
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("char_llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return {"source": f"local:{folder}"}


@pytest.fixture(scope="module")
def pipeline(llama_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("oocr")
    data = {seed: make_data(TASK, seed, root / f"run{seed}" / "data.json", **SIZE) for seed in (0, 1)}
    adapters, items = {}, {}
    for seed in (0, 1):  # two fine-tunes, each evaluated under all three conditions in one job
        adapters[seed] = run_finetune(
            data[seed], llama_spec, root / f"run{seed}" / "adapter", steps=30 if seed == 0 else 4, batch_size=4,
            lr=1e-2, rank=4, alpha=8, threads=1, seed=seed,
        )
        outputs = {c: root / f"run{seed}" / f"{c}.parquet" for c in ("untuned", "icl", "finetuned")}
        written = run_evaluate(data[seed], llama_spec, outputs, adapter_dir=adapters[seed], icl_k=2,
                               icl_max_tokens=None, samples=2, max_new_tokens=8, model_name="tiny", threads=1)
        items |= {(seed, c): path for c, path in written.items()}
    summary = summarize_runs(list(items.values()), root / "summary.csv", root / "figures", n_boot=200,
                             comparisons_csv=root / "comparisons.csv", adapter_dirs=list(adapters.values()))
    return {"root": root, "data": data, "adapter": adapters[0], "items": items, "summary": summary}


def test_data_round_trips_and_matches_the_generator(pipeline):
    path = pipeline["data"][0]
    assert TaskData.load(path).to_dict() == json.loads(json.dumps(generate(TASK, 0, **SIZE).to_dict()))
    assert json.loads(path.read_text())["seed"] == 0
    assert leftovers(path.parent) == []


def test_finetune_writes_adapter_loss_curve_and_plot_and_loss_falls(pipeline):
    adapter = pipeline["adapter"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "finetune_config.json", "provenance.json"):
        assert (adapter / name).stat().st_size > 0, name
    assert (adapter / "loss.png").read_bytes()[:8] == PNG
    with open(adapter / "loss_curve.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.3
    config = json.loads((adapter / "finetune_config.json").read_text())
    assert (config["steps"], config["batch_size"], config["rank"], config["lr"]) == (30, 4, 4, 1e-2)
    provenance = json.loads((adapter / "provenance.json").read_text())
    assert provenance["task"] == TASK and provenance["threads"] == 1
    # the learning curve: the run's in-distribution items before training and every 30 // 5 steps
    curve = pd.read_csv(adapter / "learning_curve.csv")
    assert list(curve["step"]) == [0, 6, 12, 18, 24, 30] and curve["heldout_score"].between(0, 1).all()
    data = TaskData.load(pipeline["data"][0])
    assert provenance["n_heldout"] == sum(i.question_type == "in_distribution" for i in data.eval) > 0
    assert provenance["heldout_last"] == pytest.approx(curve["heldout_score"].iloc[-1])
    assert leftovers(adapter.parent) == []


def test_every_condition_answers_the_same_items(pipeline):
    data = TaskData.load(pipeline["data"][0])
    ids = [i.id for i in data.eval]
    for condition in ("finetuned", "untuned", "icl"):
        df = pd.read_parquet(pipeline["items"][0, condition])
        assert sorted(df["item_id"]) == sorted(ids) and df["item_id"].is_unique
        assert set(df["condition"]) == {condition} and set(df["model"]) == {"tiny"}
        assert set(df["task"]) == {TASK} and set(df["run_seed"]) == {0}
        assert df["score"].between(0, 1).all()
    icl = pd.read_parquet(pipeline["items"][0, "icl"])
    # k = 2, cut to what fits the tiny model's 64 positions (recorded per item)
    assert icl["icl_k"].between(0, 2).all() and icl["icl_k"].max() > 0
    assert (pd.read_parquet(pipeline["items"][0, "untuned"])["icl_k"] == 0).all()


def test_summary_has_exact_columns_one_row_per_group_and_figures(pipeline):
    summary = pipeline["summary"]
    on_disk = pd.read_csv(pipeline["root"] / "summary.csv")
    assert list(on_disk.columns) == SUMMARY_COLUMNS
    assert SUMMARY_COLUMNS == ["task", "question_type", "model", "condition", "score", "ci_low", "ci_high", "chance",
                               "majority", "n", "n_seeds", "status", "precision"]
    assert set(on_disk["precision"]) <= {"bf16", "fp32"}  # what `auto` resolved to on this machine, per row
    assert len(on_disk) == len(summary)
    keys = ["task", "question_type", "model", "condition"]
    assert not on_disk.duplicated(keys).any()
    question_types = list(QUESTION_TYPES[TASK])
    expected = {(TASK, q, "tiny", c) for q in question_types for c in ("finetuned", "icl", "untuned")}
    assert set(map(tuple, on_disk[keys].to_numpy())) == expected
    # rows in task, question-type and condition order
    assert list(dict.fromkeys(on_disk["question_type"])) == question_types
    assert list(on_disk["condition"][:3]) == ["finetuned", "icl", "untuned"]
    # the same n in every condition, both runs pooled
    assert on_disk.groupby("question_type")["n"].nunique().eq(1).all() and (on_disk.n_seeds == 2).all()
    data = [TaskData.load(pipeline["data"][s]) for s in (0, 1)]
    n = on_disk.set_index(["question_type", "condition"])["n"]
    assert n[("make_a_bet", "icl")] == sum(i.question_type == "make_a_bet" for d in data for i in d.eval)
    # fair_or_biased counts the biased coins only; the fair ones set its chance
    assert n[("fair_or_biased", "untuned")] == sum(
        i.question_type == "fair_or_biased" and i.role == "score" for d in data for i in d.eval)
    assert (on_disk.chance >= 0).all() and (on_disk.chance <= 1).all()
    assert set(on_disk.status) <= {"ok", "not_learned", "uninterpretable"}
    figures = pipeline["root"] / "figures"
    assert sorted(p.name for p in figures.iterdir()) == [f"{TASK}.png", "learning_curves.png"]
    assert (figures / f"{TASK}.png").read_bytes()[:8] == PNG
    assert (figures / "learning_curves.png").read_bytes()[:8] == PNG


def test_comparisons_pair_each_finetuned_row_with_both_baselines(pipeline):
    from convergence.oocr.evaluate import COMPARISON_COLUMNS

    table = pd.read_csv(pipeline["root"] / "comparisons.csv")
    assert list(table.columns) == COMPARISON_COLUMNS
    summary = pipeline["summary"].set_index(["question_type", "condition"])
    for (qt, baseline), row in table.set_index(["question_type", "baseline"]).iterrows():
        assert row["score"] == pytest.approx(summary.loc[(qt, "finetuned"), "score"])
        assert row["baseline_score"] == pytest.approx(summary.loc[(qt, baseline), "score"])
        assert row["difference"] == pytest.approx(row["score"] - row["baseline_score"])
        assert row["n"] == summary.loc[(qt, "finetuned"), "n"] and row["n_seeds"] == 2
        assert row["status"] == summary.loc[(qt, "finetuned"), "status"]
    assert set(table["baseline"]) == {"untuned", "icl"} and len(table) == 2 * len(QUESTION_TYPES[TASK])
    assert table["q_value"].between(0, 1).all() and (table["q_value"] >= table["p_value"] - 1e-12).all()


def test_finetuned_condition_uses_the_adapter(char_llama_spec, tmp_path):
    data = make_data(TASK, 0, tmp_path / "data.json", **SIZE)
    adapter = run_finetune(
        data, char_llama_spec, tmp_path / "adapter", steps=100, batch_size=8, lr=1e-2, rank=8, alpha=16, threads=1,
        target_modules="all-linear", precision="fp32",
    )
    scores = {}
    outputs = {c: tmp_path / f"{c}.parquet" for c in ("untuned", "finetuned")}
    for condition, path in run_evaluate(data, char_llama_spec, outputs, adapter_dir=adapter, threads=1,
                                        samples=1, precision="fp32").items():
        scores[condition] = pd.read_parquet(path).set_index("item_id")["score"]
    assert not np.allclose(scores["untuned"], scores["finetuned"])
    in_dist = {c: s[s.index.str.contains("in_distribution")].mean() for c, s in scores.items()}
    assert in_dist["finetuned"] > in_dist["untuned"]


def test_failed_stages_leave_nothing_behind(llama_spec, pipeline, tmp_path):
    # data: coins cannot show P(heads) exactly with 7 flips per snippet
    with pytest.raises(ValueError, match="cannot show P\\(heads\\)=0.5 exactly"):
        make_data(TASK, 0, tmp_path / "data.json", flips_per_snippet=7)
    assert not (tmp_path / "data.json").exists() and leftovers(tmp_path) == []
    # fine-tuning: no module of the model matches the LoRA target
    with pytest.raises(ValueError, match="no_such_layer"):
        run_finetune(pipeline["data"][0], llama_spec, tmp_path / "adapter", steps=2, target_modules=["no_such_layer"])
    assert not (tmp_path / "adapter").exists() and leftovers(tmp_path) == []
    # evaluation: an adapter folder that does not exist (untuned and icl, scored first, are complete files)
    outputs = {c: tmp_path / f"{c}.parquet" for c in ("untuned", "finetuned")}
    with pytest.raises(ValueError, match="Can't find 'adapter_config.json'"):
        run_evaluate(pipeline["data"][0], llama_spec, outputs, adapter_dir=tmp_path / "missing", samples=1)
    assert not (tmp_path / "finetuned.parquet").exists() and leftovers(tmp_path) == []
    (tmp_path / "untuned.parquet").unlink()
    # summary: a result file from an unknown condition
    bad = pd.read_parquet(pipeline["items"][0, "untuned"]).assign(condition="few_shot")
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="few_shot"):
        summarize_runs([tmp_path / "bad.parquet"], tmp_path / "summary.csv", tmp_path / "figures")
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "figures").exists()
    assert leftovers(tmp_path) == []


def test_arguments_are_checked(llama_spec, pipeline, tmp_path):
    with pytest.raises(ValueError, match="unknown OOCR task"):
        make_data("dice", 0, tmp_path / "d.json")
    with pytest.raises(ValueError, match="unknown condition"):
        run_evaluate(pipeline["data"][0], llama_spec, {"zero_shot": tmp_path / "x.parquet"})
    with pytest.raises(ValueError, match="adapter_dir"):
        run_evaluate(pipeline["data"][0], llama_spec, {"finetuned": tmp_path / "x.parquet"})
    with pytest.raises(ValueError, match="adapter_dir"):
        run_evaluate(pipeline["data"][0], llama_spec, {"untuned": tmp_path / "x.parquet"},
                     adapter_dir=pipeline["adapter"])
    # the same items twice (one result file given twice) is a mistake, not more data
    twice = [pipeline["items"][0, "untuned"]] * 2
    with pytest.raises(ValueError, match="more than one result file"):
        summarize_runs(twice, tmp_path / "s.csv", tmp_path / "f")
    # conditions that answered different items cannot be compared
    fewer = pd.read_parquet(pipeline["items"][0, "icl"]).iloc[1:]
    fewer.to_parquet(tmp_path / "icl.parquet")
    with pytest.raises(ValueError, match="answered different items"):
        summarize_runs([pipeline["items"][0, "untuned"], tmp_path / "icl.parquet"], tmp_path / "s.csv", tmp_path / "f")
    (tmp_path / "icl.parquet").unlink()
    assert os.listdir(tmp_path) == []


def test_gemma_runs_through_every_stage(tiny_models, tmp_path):
    """The cluster config fine-tunes Gemma-3 too: sliding-window attention (its cache keeps only the last
    positions, so scoring falls back to whole sequences), LoRA in its last blocks, the frozen first block
    cached, free-form sampling, every condition on the same items."""
    spec = {"source": f"local:{tiny_models['gemma3']}"}
    data = make_data("functions", 0, tmp_path / "data.json", n_train=40, n_eval_per_type=2)
    adapter = run_finetune(data, spec, tmp_path / "adapter", steps=3, batch_size=4, layers=2, threads=1)
    assert json.loads((adapter / "finetune_config.json").read_text())["layers"] == 2
    outputs = {c: tmp_path / f"{c}.parquet" for c in ("untuned", "icl", "finetuned")}
    written = run_evaluate(data, spec, outputs, adapter_dir=adapter, icl_k=2, samples=2, max_new_tokens=4,
                           model_name="gemma", threads=1)
    frames = {c: pd.read_parquet(p) for c, p in written.items()}
    ids = {c: sorted(f["item_id"]) for c, f in frames.items()}
    assert ids["untuned"] == ids["icl"] == ids["finetuned"] == sorted(i.id for i in TaskData.load(data).eval)
    for f in frames.values():
        assert f["score"].between(0, 1).all()
