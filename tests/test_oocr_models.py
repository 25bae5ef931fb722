"""OOCR with a tiny random LlamaForCausalLM: the training loss (answer tokens only, weighted rows, left
truncation, lr schedule), scoring with shared contexts, sampling, in-context prompts, evaluation tables,
the summary (hierarchical CIs, baselines, not-learned flags) and the per-task plot."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from convergence.oocr.evaluate import SUMMARY_COLUMNS, evaluate_task, icl_contexts, plot_task, summarize
from convergence.oocr.finetune import (
    IGNORE,
    FinetuneConfig,
    batch_loss,
    collate,
    encode_doc,
    finetune,
    load_adapter,
    lr_factor,
    training_rows,
)
from convergence.oocr.scoring import (
    class_body_end,
    encode_pair,
    option_logprobs,
    pad_id,
    sample_batch,
    sample_completions,
)
from convergence.oocr.tasks import Doc, generate
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
        max_position_embeddings=2048,
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
    config = FinetuneConfig(steps=30, batch_size=8, lr=1e-2, rank=8, alpha=16, seed=0, precision="fp32")
    result = finetune(coins.train, tiny_llama(len(tok)), tok, config=config, out_dir=out_dir, progress=False)
    return result, out_dir


# --------------------------------------------------------------------------- the training loss

DOCS = [
    Doc("Q: what is 12 + 3?\nA:", " 15\n"),
    Doc(">>> print(abc(4))\n", "-7\n"),
    Doc("Q: what is 12 + 3?\nA:", " 15\n"),  # a duplicate: one row of weight 2
    Doc("x = ", "yes\n"),
]


def hand_loss(model, tok, docs) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of every document, each document run alone and unpadded,
    written out from log-softmax: what "loss on the answer tokens only" means."""
    total, count = 0.0, 0
    for d in docs:
        ids, n_prompt = encode_pair(tok, d.prompt, d.completion)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        for t in range(n_prompt, len(ids)):  # token t is predicted at position t - 1
            total = total - logp[t - 1, ids[t]]
            count += 1
    return total / count


def test_loss_and_gradients_equal_a_hand_computation_over_answer_tokens(tok):
    model = tiny_llama(len(tok))
    params = list(model.parameters())
    rows = training_rows(tok, DOCS, max_length=64)
    assert [r.weight for r in rows] == [2, 1, 1]
    loss = batch_loss(model, collate(rows, pad_id(tok)), precision="fp32")
    expected = hand_loss(model, tok, DOCS)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(expected, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-6)  # float32 sums in another order


def test_prompt_tokens_get_no_gradient(tok):
    """The loss's gradient with respect to the logits is zero at every position that predicts a prompt
    (or padding) token and non-zero at every position that predicts an answer token."""
    from convergence.oocr.finetune import completion_loss

    model = tiny_llama(len(tok))
    rows = training_rows(tok, DOCS, max_length=64)
    batch = collate(rows, pad_id(tok))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits.detach().requires_grad_(True)
    completion_loss(logits, batch["labels"], batch["weights"]).backward()
    per_position = logits.grad.abs().sum(-1)  # [row, position]
    predicts_answer = torch.zeros_like(per_position, dtype=torch.bool)
    predicts_answer[:, :-1] = batch["labels"][:, 1:] != IGNORE
    assert (per_position[~predicts_answer] == 0).all()
    assert (per_position[predicts_answer] > 0).all()
    n_answer = sum(len(r.ids) - r.n_prompt for r in rows)
    assert int(predicts_answer.sum()) == n_answer


def test_left_truncation_keeps_the_whole_answer(tok):
    prompt, answer = "a long prompt that does not fit\n>>> f(3)\n", "42\n"
    full, n_prompt = encode_pair(tok, prompt, answer)
    row = encode_doc(tok, prompt, answer, max_length=10)
    assert len(row.ids) == 10 and list(row.ids) == full[-10:]  # the start of the prompt went
    assert row.labels[-3:] == full[n_prompt:] and row.labels[:-3] == [IGNORE] * 7
    assert tok.decode(row.ids[row.n_prompt :]) == answer
    with pytest.raises(ValueError, match="does not fit max_length=2"):
        encode_doc(tok, prompt, answer, max_length=2)


def test_lr_schedule_at_start_middle_and_end(tok):
    config = FinetuneConfig(steps=10, batch_size=2, lr=0.01, rank=2, alpha=4, precision="fp32", lr_schedule="linear")
    lrs = finetune(DOCS, tiny_llama(len(tok)), tok, config=config, progress=False).lrs
    assert len(lrs) == 10
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.005) and lrs[9] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    warm = FinetuneConfig(steps=10, batch_size=2, lr=0.01, rank=2, alpha=4, precision="fp32", warmup_steps=4,
                          lr_schedule="constant")
    lrs = finetune(DOCS, tiny_llama(len(tok)), tok, config=warm, progress=False).lrs
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01]) and lrs[4:] == pytest.approx([0.01] * 6)
    assert lr_factor(5, 10, 4, "linear") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_schedule must be"):
        lr_factor(0, 10, 0, "cosine")


def test_lora_in_the_last_blocks_with_cached_frozen_blocks_is_exact(tok, monkeypatch):
    """LoRA in the last 2 of 4 blocks: training on the cached output of the 2 frozen blocks gives the same
    losses and adapter as running them at every step; afterwards the model is whole again."""
    import convergence.oocr.finetune as ft

    def four_blocks():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3, pad_token_id=0,
                             bos_token_id=None, eos_token_id=None)
        return LlamaForCausalLM(config).eval()

    docs = generate("parity", 0, n_train=40).train
    config = FinetuneConfig(steps=6, batch_size=8, layers=2, precision="fp32")
    cached = finetune(docs, four_blocks(), tok, config=config, progress=False)
    trainable = [n for n, p in cached.model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.2." in n or ".layers.3." in n for n in trainable)
    assert not any(isinstance(m, ft._Skip) for m in cached.model.modules())  # frozen blocks restored

    class Uncached(ft.FrozenBlocks):  # the same LoRA, the frozen blocks run at every step
        def precompute(self, *args, **kwargs):
            pass

        def feeding(self, *args, **kwargs):
            pass

    monkeypatch.setattr(ft, "FrozenBlocks", Uncached)
    plain = finetune(docs, four_blocks(), tok, config=config, progress=False)
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-5)
    for a, b in zip(option_logprobs(cached.model, tok, DOCS_AS_ITEMS), option_logprobs(plain.model, tok, DOCS_AS_ITEMS)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="between 1 and the model's 4 blocks"):
        finetune(docs, four_blocks(), tok, config=FinetuneConfig(steps=1, layers=5), progress=False)


DOCS_AS_ITEMS = [("Q: what is 12 + 3?\nA:", [" 15\n", " 16\n"]), (">>> print(abc(4))\n", ["-7\n", "7\n"])]


def test_bf16_training_follows_fp32(tok, coins):
    losses = {}
    for precision in ("fp32", "bf16"):
        config = FinetuneConfig(steps=6, batch_size=8, lr=1e-2, precision=precision)
        losses[precision] = finetune(coins.train, tiny_llama(len(tok)), tok, config=config, progress=False).losses
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)
    with pytest.raises(ValueError, match="precision must be one of"):
        finetune(DOCS, tiny_llama(len(tok)), tok, config=FinetuneConfig(precision="fp16"), progress=False)


def test_lora_training_loss_falls(trained):
    result, _ = trained
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert result.n_rows == 2 * 4 * 8  # coins: each (coin, snippet) prompt with a heads and a tails answer


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
    assert float(rows[0]["lr"]) == pytest.approx(1e-2) and float(rows[-1]["lr"]) == pytest.approx(1e-2 / 30)
    modules = json.loads((out_dir / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1  # not PEFT's hash order: identical reruns
    # The saved adapter on a fresh copy of the base model scores exactly like the trained model.
    reloaded = load_adapter(tiny_llama(len(tok)), out_dir)
    items = coins.eval[:5]
    for a, b in zip(option_logprobs(result.model, tok, items), option_logprobs(reloaded, tok, items)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_finetuning_moves_in_distribution_answers_towards_the_bias(tok, coins, trained):
    result, _ = trained
    before = evaluate_task(tiny_llama(len(tok)), tok, coins, model_name="tiny", condition="untuned",
                           question_types=["in_distribution"])
    after = evaluate_task(result.model, tok, coins, model_name="tiny", condition="finetuned",
                          question_types=["in_distribution"])
    assert len(before) == len(after) > 0 and after["score"].mean() > before["score"].mean()


# --------------------------------------------------------------------------- scoring with shared contexts


def test_llama_scores_do_not_depend_on_batching_sharing_or_context_caching(tok, coins, trained):
    items = coins.eval[:10] + generate("locations", 0, n_eval_per_type=2).eval[:6]
    contexts, _ = icl_contexts(coins, items, k=3, max_tokens=None)
    for model in (tiny_llama(len(tok)), trained[0].model):  # plain and peft-wrapped
        # reference: every context + prompt + option as one whole sequence
        reference = option_logprobs(model, tok, items, batch_size=1, share_prompt=False, contexts=contexts)
        for batch_size, share, budget in ((64, False, 32768), (1, True, 32768), (7, True, 32768), (7, True, 300)):
            scores = option_logprobs(model, tok, items, batch_size=batch_size, share_prompt=share, contexts=contexts,
                                     max_batch_tokens=budget)
            for a, b in zip(reference, scores):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        # a context changes the scores (it is read)
        bare = option_logprobs(model, tok, items, batch_size=7)
        assert not all(np.allclose(a, b) for a, b in zip(bare, reference))


def test_icl_contexts_hold_the_items_own_latents(tok):
    data = generate("coins", 0, n_eval_per_type=4)
    items = [i for i in data.eval if len(i.latents) == 1]
    contexts, ks = icl_contexts(data, items, k=12, max_tokens=None)
    for item, context, k in zip(items, contexts, ks):
        shown = [d for d in data.train if d.text + "\n" in context]
        assert k == 12 and context.count(">>> from casino import") == 12
        assert shown and all(d.latents == item.latents for d in shown)
    # items about the same latent share one context; another seed draws another
    by_coin = {}
    for item, context in zip(items, contexts):
        by_coin.setdefault(item.latents[0], set()).add(context)
    assert all(len(c) == 1 for c in by_coin.values()) and len(by_coin) > 1
    assert icl_contexts(data, items, 12, None, seed=1)[0] != contexts
    # a token budget cuts k to the largest that fits, and k is recorded
    cut, cut_ks = icl_contexts(data, items, k=200, max_tokens=1000, tokenizer=tok)
    for item, context, k in zip(items, cut, cut_ks):
        total = len(tok(context + item.prompt)["input_ids"]) + max(len(tok(o)["input_ids"]) for o in item.options or ["x"])
        assert 0 < k < 200 and total <= 1000 + 48
    with pytest.raises(ValueError, match="needs the tokenizer"):
        icl_contexts(data, items, k=3, max_tokens=100)


# --------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_and_stops(tok):
    model = tiny_llama(len(tok))
    kwargs = dict(n=4, temperature=1.0, max_new_tokens=12)
    a = sample_completions(model, tok, "x = ", seed=1, **kwargs)
    assert a == sample_completions(model, tok, "x = ", seed=1, **kwargs) and len(a) == 4
    assert a != sample_completions(model, tok, "x = ", seed=2, **kwargs)
    assert all("\n" not in t for t in a)
    greedy = sample_completions(model, tok, "x = ", n=3, temperature=0, max_new_tokens=6)
    assert len(set(greedy)) == 1
    # a context is read before the prompt
    assert sample_completions(model, tok, "x = ", context="abc abc abc\n", seed=1, **kwargs) != a


def test_batched_sampling_equals_one_prompt_at_a_time(tok):
    """Left padding and a shared decoding loop change nothing: greedy answers of a batch of prompts of
    different lengths (and contexts) equal each prompt's own."""
    model = tiny_llama(len(tok))
    prompts = ["x = ", "Q: what is 12 + 3?\nA:", "lambda n:"]
    contexts = [None, "abc abc\n", "a much longer context, to pad the others\n"]
    batch = sample_batch(model, tok, prompts, contexts=contexts, n=2, temperature=0, max_new_tokens=8)
    for prompt, context, got in zip(prompts, contexts, batch):
        alone = sample_completions(model, tok, prompt, context=context, n=1, temperature=0, max_new_tokens=8)
        assert got == alone * 2


def test_class_body_stop_rule():
    assert class_body_end("    heads = 0.7\n") is None  # may go on
    assert class_body_end("    heads = 0.7\nprint(1)\n") == len("    heads = 0.7\n")
    assert class_body_end("    heads = 0.7\n\n\n    x") == len("    heads = 0.7\n\n")
    assert class_body_end("    def flip(self):\n        return 'H'\n\n    p = 1\n") is None


# --------------------------------------------------------------------------- tables, summary, plot


def test_evaluation_table_summary_and_plot(tok, tmp_path):
    model = tiny_llama(len(tok))
    frames = []
    for seed in (0, 1):
        data = generate("functions", seed, n_eval_per_type=2)
        for condition in ("untuned", "icl"):
            frames.append(evaluate_task(model, tok, data, model_name="tiny", condition=condition, icl_k=2,
                                        samples=2, max_new_tokens=6))
    results = pd.concat(frames)
    assert len(results) == 2 * 2 * len(data.eval)
    assert (results.loc[results.condition == "icl", "icl_k"] == 2).all()
    likelihood = results[results.metric == "p_target"]
    assert likelihood.p_target.between(0, 1).all() and likelihood.correct.isin([0.0, 1.0]).all()
    assert (results.loc[results.metric == "exec", "score"] == 0).all()  # a random model writes no valid lambda
    summary = summarize(results, n_boot=200)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert set(summary.condition) == {"untuned", "icl"} and (summary.n_seeds == 2).all()
    assert summary.groupby(["question_type"])["n"].nunique().eq(1).all()  # same n in both conditions
    png = plot_task(summary, "functions", tmp_path / "functions.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rows(**columns) -> pd.DataFrame:
    base = {"task": "parity", "question_type": "direct_print", "model": "m", "condition": "finetuned",
            "role": "score", "correct": 1.0, "chance": 0.5, "answer": ""}
    return pd.DataFrame(base | columns)


def test_summary_resamples_seeds_then_items():
    results = _rows(run_seed=np.repeat([0, 1], 50), score=np.r_[np.full(50, 0.9), np.full(50, 0.5)])
    [row] = summarize(results, n_boot=500).to_dict("records")
    assert row["score"] == pytest.approx(0.7) and row["n"] == 100 and row["n_seeds"] == 2 and row["chance"] == 0.5
    assert row["ci_low"] <= 0.5 + 1e-9 and row["ci_high"] >= 0.9 - 1e-9  # the spread between the two fine-tunes
    # one seed: items only, the interval is narrow
    [single] = summarize(results[results.run_seed == 0].assign(score=np.r_[np.full(25, 0.8), np.full(25, 1.0)]),
                         n_boot=500).to_dict("records")
    assert single["n_seeds"] == 1 and single["ci_high"] - single["ci_low"] < 0.15


def test_summary_flags_tasks_whose_training_task_was_not_learned():
    rng = np.random.default_rng(0)
    rows = []
    for task, in_dist in (("parity", 0.49), ("coins", 0.95)):
        for qt, score in (("in_distribution", in_dist), ("direct_print", 0.9)):
            for condition in ("finetuned", "untuned"):
                mean = 0.4 if (condition, qt) == ("untuned", "in_distribution") else score  # below what is learned
                rows.append(_rows(task=task, question_type=qt, condition=condition, run_seed=np.repeat([0, 1], 20),
                                  score=np.clip(rng.normal(mean, 0.05, 40), 0, 1)))
    summary = summarize(pd.concat(rows), n_boot=300).set_index(["task", "question_type", "condition"])["status"]
    assert summary["parity", "in_distribution", "finetuned"] == "not_learned"
    assert summary["parity", "direct_print", "finetuned"] == "uninterpretable"
    assert summary["parity", "direct_print", "untuned"] == "ok"  # baselines stay readable
    assert (summary["coins"] == "ok").all()


def test_summary_chance_from_baseline_items_and_majority():
    # Coins' fair_or_biased: scored on biased coins; chance is 1 - P(right) on the fair coins.
    results = pd.concat([
        _rows(question_type="fair_or_biased", role="score", run_seed=0, score=[0.9, 0.8], p_target=[0.9, 0.8],
              answer=["biased", "biased"]),
        _rows(question_type="fair_or_biased", role="baseline", run_seed=0, score=[0.3, 0.1], p_target=[0.3, 0.1],
              answer=["fair", "fair"]),
    ])
    [row] = summarize(results, n_boot=100).to_dict("records")
    assert row["n"] == 2 and row["score"] == pytest.approx(0.85) and row["chance"] == pytest.approx(0.8)
    # majority: what always giving the commonest right answer scores (4 of 6 "0" here)
    unbalanced = _rows(run_seed=0, score=0.5, answer=["0", "0", "0", "0", "1", "1"])
    assert summarize(unbalanced, n_boot=50)["majority"].iloc[0] == pytest.approx(4 / 6)


def test_a_finetune_below_its_untuned_model_is_not_learned_however_far_above_chance():
    rng = np.random.default_rng(1)
    rows = []
    for condition, score in (("finetuned", 0.20), ("untuned", 0.30)):  # chance 0.125: both far above it
        for qt in ("in_distribution", "country"):
            rows.append(_rows(task="locations", question_type=qt, condition=condition, chance=0.125,
                              run_seed=np.repeat([0, 1], 30), score=np.clip(rng.normal(score, 0.02, 60), 0, 1)))
    summary = summarize(pd.concat(rows), n_boot=300).set_index(["question_type", "condition"])
    tuned = summary.loc[("in_distribution", "finetuned")]
    assert tuned["ci_low"] > tuned["chance"]  # chance alone would call it learned
    assert tuned["status"] == "not_learned"
    assert summary.loc[("country", "finetuned"), "status"] == "uninterpretable"
    # the same fine-tune above its untuned model is learned
    rows[2:] = [r.assign(score=r["score"] - 0.15) for r in rows[2:]]
    assert (summarize(pd.concat(rows), n_boot=300)["status"] == "ok").all()


def test_paired_comparisons_match_scipy_and_bh():
    from scipy.stats import false_discovery_control, wilcoxon

    from convergence.oocr.evaluate import COMPARISON_COLUMNS, compare_conditions

    rng = np.random.default_rng(2)
    items = [f"coins/q/{k}" for k in range(12)]
    base = rng.uniform(0.2, 0.6, 12)
    frames = []
    for qt, shift in (("in_distribution", 0.3), ("which_coin", 0.0)):
        for condition, scores in (("untuned", base), ("icl", base + 0.01), ("finetuned", base + shift
                                                                            + rng.normal(0, 0.01, 12))):
            frames.append(_rows(task="coins", question_type=qt, condition=condition, run_seed=0, item_id=items,
                                score=scores, chance=0.1))
    results = pd.concat(frames)
    summary = summarize(results, n_boot=200)
    table = compare_conditions(results, summary, n_boot=500, n_resamples=4096)  # >= 2^12: exact
    assert list(table.columns) == COMPARISON_COLUMNS and len(table) == 4
    row = table.set_index(["question_type", "baseline"])
    tuned = results[(results.condition == "finetuned") & (results.question_type == "in_distribution")]["score"]
    assert row.loc[("in_distribution", "untuned"), "difference"] == pytest.approx((tuned.to_numpy() - base).mean())
    # 12 pairs all of one sign: the exact sign-flip p is 2 / 2^12
    assert row.loc[("in_distribution", "untuned"), "p_value"] == pytest.approx(2 / 4096)
    assert row.loc[("in_distribution", "untuned"), "verdict"] == "finetuned_higher"
    assert row.loc[("which_coin", "untuned"), "verdict"] == "no_difference"
    # an independent paired test agrees on which rows differ
    which = tuned.to_numpy() - base
    assert wilcoxon(which).pvalue < 0.01
    assert np.allclose(table["q_value"], false_discovery_control(table["p_value"], method="bh"))
    assert (table["status"] == "ok").all()


def test_learning_curve_starts_at_the_untuned_score_and_ends_at_the_evaluated_one(tok, tmp_path):
    """The held-out points are scored through the training forward (cached frozen blocks, answer-only
    logits): the first equals the untuned model's evaluation, the last the fine-tuned one's."""
    from convergence.oocr.evaluate import item_score

    data = generate("coins", 0, n_eval_per_type=4)
    heldout = [i for i in data.eval if i.question_type == "in_distribution"]
    model = tiny_llama(len(tok))
    untuned = evaluate_task(model, tok, data, model_name="t", condition="untuned", samples=1, max_new_tokens=4,
                            question_types=["in_distribution"])
    config = FinetuneConfig(steps=12, batch_size=8, lr=1e-2, seed=0, precision="fp32", layers=1, eval_every=5)
    result = finetune(data.train, model, tok, config=config, out_dir=tmp_path, progress=False, heldout=heldout,
                      score=item_score)
    assert [p["step"] for p in result.curve] == [0, 5, 10, 12]
    assert result.curve[0]["heldout_score"] == pytest.approx(untuned["score"].mean(), abs=1e-5)
    tuned = evaluate_task(result.model, tok, data, model_name="t", condition="finetuned", samples=1,
                          max_new_tokens=4, question_types=["in_distribution"])
    assert result.curve[-1]["heldout_score"] == pytest.approx(tuned["score"].mean(), abs=1e-5)
    assert result.curve[1]["train_loss"] == pytest.approx(np.mean(result.losses[:5]))
    written = pd.read_csv(tmp_path / "learning_curve.csv")
    assert list(written.columns) == ["step", "train_loss", "heldout_score"] and len(written) == 4
    with pytest.raises(ValueError, match="score"):
        finetune(data.train, tiny_llama(len(tok)), tok, config=config, progress=False, heldout=heldout)


def test_a_fixed_answer_is_learned_from_below_chance_to_above_0_9(tok):
    """A task whose answer is always the same token: the untuned tiny model puts less than chance on it,
    a few seconds of LoRA put more than 0.9."""
    from convergence.oocr.evaluate import item_score
    from convergence.oocr.tasks import Item

    prompts = [f">>> print(k{k}())\n" for k in range(12)]
    docs = [Doc(p, "Q\n") for p in prompts[:8]]
    heldout = [Item(id=f"fixed/in_distribution/{k}", task="coins", question_type="in_distribution", prompt=p,
                    options=["Q\n", "W\n", "Z\n", "M\n"], target=0, chance=0.25) for k, p in enumerate(prompts[8:])]
    for seed in range(20):  # a random model whose untuned mass on the answer is below chance
        model = tiny_llama(len(tok), seed=seed)
        before = np.mean([item_score(i, lp) for i, lp in zip(heldout, option_logprobs(model, tok, heldout))])
        if before < 0.25:
            break
    assert before < 0.25
    config = FinetuneConfig(steps=25, batch_size=8, lr=2e-2, seed=0, precision="fp32", eval_every=5)
    result = finetune(docs, model, tok, config=config, progress=False, heldout=heldout, score=item_score)
    assert result.curve[0]["heldout_score"] == pytest.approx(before, abs=1e-5)
    assert result.curve[-1]["heldout_score"] > 0.9
