"""OOCR scoring: option likelihoods on a model with known likelihoods, bootstrap CIs (the lambda
checker and its sandbox: tests/test_oocr_sandbox.py)."""

import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from convergence.oocr.scoring import (
    bootstrap_ci,
    encode_pair,
    one_minus_tvd,
    option_logprobs,
    p_target,
    picks_target,
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = list(dict.fromkeys(string.printable))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


class BigramLM(torch.nn.Module):
    """logits[t] = table[token_t]: log P(next | previous) is known exactly."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def bigram(tok):
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(len(tok), len(tok), generator=generator)
    # After "?" the model strongly prefers "y"; after "y", "e".
    table[tok.convert_tokens_to_ids("?"), tok.convert_tokens_to_ids("y")] = 8.0
    table[tok.convert_tokens_to_ids("y"), tok.convert_tokens_to_ids("e")] = 8.0
    return BigramLM(table)


def by_hand(model, tok, prompt, option) -> float:
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    ids = tok(prompt + option)["input_ids"]
    start = len(tok(prompt)["input_ids"])
    return float(sum(logp[ids[t - 1], ids[t]] for t in range(start, len(ids))))


def test_encode_pair_splits_at_the_prompt(tok):
    ids, n_prompt = encode_pair(tok, "Q: ok?\nA:", " yes\n")
    assert tok.decode(ids[:n_prompt]) == "Q: ok?\nA:" and tok.decode(ids[n_prompt:]) == " yes\n"


def test_option_logprobs_match_hand_computation(tok, bigram):
    items = [("Is it?", ["yes\n", "no\n", "maybe not\n"]), ("x=", ["1\n", "22\n"])]
    for batch_size in (1, 2, 16):  # left padding must not change anything
        scores = option_logprobs(bigram, tok, items, batch_size=batch_size)
        for (prompt, options), got in zip(items, scores):
            want = [by_hand(bigram, tok, prompt, o) for o in options]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_scorer_picks_the_likely_option(tok, bigram):
    [scores] = option_logprobs(bigram, tok, [("Is it?", ["no\n", "yes\n", "nah\n"])])
    assert np.argmax(scores) == 1
    assert p_target(scores, 1) > 0.95 and picks_target(scores, 1)
    assert not picks_target(scores, 0)
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert p_target(scores, [0, 2]) == pytest.approx(probs[0] + probs[2])


def test_set_targets_and_tvd():
    logprobs = np.log([0.5, 0.3, 0.2])
    assert p_target(logprobs, [0, 2]) == pytest.approx(0.7)
    assert picks_target(logprobs, [0, 1]) and not picks_target(logprobs, [0, 2])
    assert one_minus_tvd(np.log([0.7, 0.3]), [0.7, 0.3]) == pytest.approx(1.0)
    assert one_minus_tvd(np.log([0.5, 0.5]), [0.8, 0.2]) == pytest.approx(0.7)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.7
    large = rng.random(2000) < 0.7
    m1, lo1, hi1 = bootstrap_ci(small, n_boot=1000, seed=1)
    m2, lo2, hi2 = bootstrap_ci(large, n_boot=1000, seed=1)
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert hi2 - lo2 < (hi1 - lo1) / 3
    assert lo2 < 0.7 < hi2
    assert bootstrap_ci(small, n_boot=500, seed=3) == bootstrap_ci(small, n_boot=500, seed=3)


def test_bootstrap_over_groups_covers_run_to_run_variation():
    rng = np.random.default_rng(0)
    run_means = [0.2, 0.9, 0.4, 0.8, 0.3]  # runs disagree a lot; items within a run little
    values = np.concatenate([rng.normal(m, 0.01, 200) for m in run_means])
    groups = np.repeat(np.arange(5), 200)
    _, lo_items, hi_items = bootstrap_ci(values, n_boot=1000)
    _, lo_runs, hi_runs = bootstrap_ci(values, groups=groups, n_boot=1000)
    assert hi_runs - lo_runs > 5 * (hi_items - lo_items)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    assert all(np.isnan(bootstrap_ci([])))
