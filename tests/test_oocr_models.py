"""OOCR with a tiny random LlamaForCausalLM: scoring, LoRA fine-tuning, ICL prompts,
evaluation tables and the per-task plot."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from convergence.oocr.evaluate import SUMMARY_COLUMNS, condition_items, evaluate_task, plot_task, summarize
from convergence.oocr.finetune import FinetuneConfig, finetune, icl_prompt, load_adapter
from convergence.oocr.scoring import generate_completions, option_logprobs
from convergence.oocr.tasks import generate
from test_oocr_scoring import char_tokenizer


# peft calls a transformers API deprecated in v5 (is_gradient_checkpointing); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: thread hand-offs cost more than they save, badly so on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Large enough weights that a frozen output head can still express confident predictions.
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def coins():
    return generate("coins", 0, n_eval_per_type=6)


@pytest.fixture(scope="module")
def trained(tok, coins, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("adapter")
    config = FinetuneConfig(steps=30, batch_size=8, lr=1e-2, rank=8, alpha=16, seed=0)
    result = finetune(coins.train, tiny_llama(len(tok)), tok, config=config, out_dir=out_dir, progress=False)
    return result, out_dir


def test_llama_scores_do_not_depend_on_batching_or_prompt_sharing(tok, coins, trained):
    items = condition_items(coins, "icl", icl_k=2)[:10] + generate("locations", 0, n_eval_per_type=2).eval[:6]
    for model in (tiny_llama(len(tok)), trained[0].model):  # plain and peft-wrapped
        reference = option_logprobs(model, tok, items, batch_size=1, share_prompt=False)
        for batch_size, share in ((64, False), (1, True), (7, True)):
            scores = option_logprobs(model, tok, items, batch_size=batch_size, share_prompt=share)
            for a, b in zip(reference, scores):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_lora_training_loss_falls(trained):
    result, _ = trained
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_lora_training_is_seeded(tok, coins):
    config = FinetuneConfig(steps=4, batch_size=4, seed=3)
    runs = [finetune(coins.train, tiny_llama(len(tok)), tok, config=config, progress=False).losses for _ in range(2)]
    assert runs[0] == runs[1]


def test_adapter_and_loss_curve_are_saved(tok, coins, trained):
    result, out_dir = trained
    assert (out_dir / "adapter_model.safetensors").stat().st_size > 0
    with open(out_dir / "loss_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert float(rows[-1]["loss"]) == pytest.approx(result.losses[-1])
    modules = json.loads((out_dir / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1  # not PEFT's hash order: identical reruns
    # The saved adapter on a fresh copy of the base model scores exactly like the trained model.
    reloaded = load_adapter(tiny_llama(len(tok)), out_dir)
    items = coins.eval[:5]
    for a, b in zip(option_logprobs(result.model, tok, items), option_logprobs(reloaded, tok, items)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_finetuning_moves_in_distribution_answers_towards_the_bias(tok, coins, trained):
    result, _ = trained
    items = [i for i in coins.eval if i.question_type == "in_distribution"]
    before = evaluate_task(tiny_llama(len(tok)), tok, coins, model_name="tiny", condition="untuned")
    after = evaluate_task(result.model, tok, coins, model_name="tiny", condition="finetuned")
    in_dist = lambda df: df.loc[df.question_type == "in_distribution", "score"].mean()  # noqa: E731
    assert len(items) > 0 and in_dist(after) > in_dist(before)


def test_icl_prompt_prepends_k_documents(coins):
    item = coins.eval[0]
    prompt = icl_prompt(coins.train, 3, item, seed=1)
    assert prompt.endswith(item.prompt)
    shots = prompt[: -len(item.prompt)]
    assert sum(d.text + "\n" in shots for d in coins.train) >= 1
    assert shots.count(">>> from casino import") == 3
    assert prompt == icl_prompt(coins.train, 3, item, seed=1)
    assert prompt != icl_prompt(coins.train, 3, item, seed=2)


def test_generation_stops_at_newline(tok):
    texts = generate_completions(tiny_llama(len(tok)), tok, "x = ", n=2, sample=True, max_new_tokens=8, seed=0)
    assert len(texts) == 2 and all("\n" not in t for t in texts)


def test_evaluation_table_summary_and_plot(tok, tmp_path):
    model = tiny_llama(len(tok))
    data = generate("functions", 0, n_eval_per_type=2)
    results = pd.concat(
        [
            evaluate_task(model, tok, data, model_name="tiny", condition="untuned", max_new_tokens=6),
            evaluate_task(model, tok, data, model_name="tiny", condition="icl", icl_k=2, max_new_tokens=6),
        ]
    )
    assert len(results) == 2 * len(data.eval)
    likelihood = results[results.metric == "p_target"]
    assert likelihood.p_target.between(0, 1).all() and likelihood.correct.isin([0.0, 1.0]).all()
    assert (results.loc[results.metric == "exec", "score"] == 0).all()  # a random model writes no valid lambda
    summary = summarize(results, n_boot=200)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert set(summary.condition) == {"untuned", "icl"}
    assert (summary.ci_low <= summary.score + 1e-12).all() and (summary.score <= summary.ci_high + 1e-12).all()
    png = plot_task(summary, "functions", tmp_path / "functions.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_pools_run_seeds():
    results = pd.DataFrame(
        {
            "task": "parity",
            "question_type": "direct_print",
            "model": "m",
            "condition": "finetuned",
            "run_seed": np.repeat([0, 1], 50),
            "score": np.r_[np.full(50, 0.9), np.full(50, 0.5)],
            "correct": 1.0,
            "chance": 0.5,
        }
    )
    [row] = summarize(results, n_boot=500).to_dict("records")
    assert row["score"] == pytest.approx(0.7) and row["n"] == 100 and row["chance"] == 0.5
    assert row["ci_low"] <= 0.5 + 1e-9 and row["ci_high"] >= 0.9 - 1e-9  # run-level spread
