"""Scoring answers of a causal LM: option log-likelihoods, free-form lambdas, bootstrap CIs.

Small models rarely follow "answer with a letter", so every question is scored by the
log-likelihood of each candidate continuation (sum over its tokens), renormalised over the
item's options: P(target) = softmax(logliks)[target].
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch

from convergence.oocr.sandbox import run_in_sandbox



# --------------------------------------------------------------------------- tokenisation


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion, and how many of them belong to the prompt.

    The whole text is tokenised at once (the tokens a model sees when it reads the document),
    provided its first tokens are exactly the prompt's; otherwise (a merge across the boundary)
    the two parts are tokenised separately and concatenated. Training and scoring both use this,
    so a completion is always the same token sequence in both.
    """
    prompt_ids = _ids(tokenizer, prompt, special=True)
    full = _ids(tokenizer, prompt + completion, special=True)
    if len(full) > len(prompt_ids) and full[: len(prompt_ids)] == prompt_ids:
        return full, len(prompt_ids)
    return prompt_ids + _ids(tokenizer, completion, special=False), len(prompt_ids)


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _accepts(model, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# --------------------------------------------------------------------------- likelihoods


@torch.inference_mode()
def sequence_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> np.ndarray:
    """Sum of log P(completion tokens | prompt) for each (prompt, completion) pair."""
    encoded = [encode_pair(tokenizer, p, c) for p, c in pairs]
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = np.zeros(len(encoded), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        scores = _batch_logprobs(model, [encoded[i] for i in batch], pad_id(tokenizer))
        out[batch] = scores
    return out


def _batch_logprobs(model, encoded: list[tuple[list[int], int]], pad: int) -> np.ndarray:
    """Left-padded batch: completions end at the last position, so only the last K logits are
    needed (K = longest completion + 1), which keeps the [batch, K, vocab] tensor small."""
    device = model_device(model)
    length = max(len(ids) for ids, _ in encoded)
    n_completion = [len(ids) - n_prompt for ids, n_prompt in encoded]
    keep = max(n_completion) + 1
    input_ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, _) in enumerate(encoded):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        mask[row, length - len(ids) :] = 1
    kwargs = {"attention_mask": mask.to(device)}
    if _accepts(model, "position_ids"):  # real positions despite the left padding
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(device)
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids.to(device), **kwargs).logits[:, -keep:].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    scores = []
    for row, (ids, _) in enumerate(encoded):
        c = n_completion[row]
        targets = torch.tensor(ids[len(ids) - c :], device=logprobs.device)
        # logits at kept index j predict the token at kept index j + 1
        predicted = logprobs[row, keep - 1 - c : keep - 1]
        scores.append(predicted.gather(1, targets[:, None]).sum().item())
    return np.array(scores)


def option_logprobs(
    model, tokenizer, items, batch_size: int = 16, share_prompt: bool | None = None
) -> list[np.ndarray]:
    """Per item, the log-likelihood of each of its options given its prompt.

    `items`: objects with .prompt and .options, or (prompt, options) pairs. With `share_prompt`
    (default: whenever the model takes a KV cache), each prompt is run once and its cache reused
    by all of its options, which saves most of the work for long (in-context) prompts and for
    items with many options; otherwise every prompt + option is run as one sequence.
    """
    pairs = [(i.prompt, list(i.options)) if hasattr(i, "options") else (i[0], list(i[1])) for i in items]
    if share_prompt is None:
        share_prompt = _cache_argument(model) is not None and hasattr(model, "config")
    if share_prompt:
        return _shared_prompt_logprobs(model, tokenizer, pairs, batch_size)
    flat_pairs = [(prompt, option) for prompt, options in pairs for option in options]
    flat = sequence_logprobs(model, tokenizer, flat_pairs, batch_size) if flat_pairs else np.zeros(0)
    bounds = np.cumsum([0] + [len(options) for _, options in pairs])
    return [flat[bounds[k] : bounds[k + 1]] for k in range(len(pairs))]


def _cache_argument(model) -> str | None:
    """Name of the forward argument taking a KV cache ("cache" in recent transformers 5.x,
    "past_key_values" before), looked up on the model under a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, length - len(r) :] = torch.tensor(r)
        mask[k, length - len(r) :] = 1
    return ids, mask


@torch.inference_mode()
def _shared_prompt_logprobs(model, tokenizer, pairs, batch_size: int) -> list[np.ndarray]:
    from transformers import DynamicCache

    device, pad = model_device(model), pad_id(tokenizer)
    cache_arg = _cache_argument(model)
    prompts, options = [], []
    for prompt, opts in pairs:
        encoded = [encode_pair(tokenizer, prompt, o) for o in opts]
        prompts.append(encoded[0][0][: encoded[0][1]] if encoded else _ids(tokenizer, prompt, special=True))
        options.append([ids[n_prompt:] for ids, n_prompt in encoded])
    out = [np.zeros(len(o)) for o in options]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _left_pad([prompts[i] for i in chunk], pad)
        ids, mask = ids.to(device), mask.to(device)
        result = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        # The prompt's last logits predict every option's first token.
        first = torch.log_softmax(result.logits[:, -1].float(), dim=-1)
        layers = [(layer.keys, layer.values) for layer in getattr(result, cache_arg).layers]
        if any(k is None or k.shape[-2] != ids.shape[1] for k, _ in layers):  # e.g. a sliding window cut it
            plain = [(pairs[i][0], o) for i in chunk for o in pairs[i][1]]
            flat = iter(sequence_logprobs(model, tokenizer, plain, batch_size))
            for i in chunk:
                out[i] = np.array([next(flat) for _ in pairs[i][1]])
            continue
        rows = [(b, i, j) for b, i in enumerate(chunk) for j in range(len(options[i]))]
        for r0 in range(0, len(rows), batch_size):
            part = rows[r0 : r0 + batch_size]
            select = torch.tensor([b for b, _, _ in part], device=device)
            cache = DynamicCache(config=model.config)
            for layer_idx, (keys, values) in enumerate(layers):
                cache.update(keys[select], values[select], layer_idx)
            scores = _continuation_logprobs(
                model, {cache_arg: cache}, mask[select], first[select], [options[i][j] for _, i, j in part], pad
            )
            for (_, i, j), score in zip(part, scores):
                out[i][j] = score
    return out


def _continuation_logprobs(model, cache: dict, prompt_mask, first_logprobs, continuations, pad) -> list[float]:
    """Log-likelihoods of continuations of cached prompts (one prompt row per continuation).
    Continuations are right-padded: padding after a sequence cannot affect it (causal)."""
    device = prompt_mask.device
    length = max(len(c) for c in continuations)
    ids = torch.full((len(continuations), length), pad, dtype=torch.long, device=device)
    cont_mask = torch.zeros_like(ids)
    for k, c in enumerate(continuations):
        ids[k, : len(c)] = torch.tensor(c, device=device)
        cont_mask[k, : len(c)] = 1
    positions = prompt_mask.sum(1, keepdim=True) + torch.arange(length, device=device)
    logits = model(
        input_ids=ids,
        attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **cache,
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scores = []
    for k, c in enumerate(continuations):
        total = first_logprobs[k, c[0]]
        if len(c) > 1:
            rest = torch.tensor(c[1:], device=device)
            total = total + logprobs[k, : len(c) - 1].gather(1, rest[:, None]).sum()
        scores.append(float(total))
    return scores


def normalise(logprobs: np.ndarray) -> np.ndarray:
    """Probabilities over an item's options (softmax of the summed log-likelihoods)."""
    shifted = np.asarray(logprobs, dtype=np.float64) - np.max(logprobs)
    p = np.exp(shifted)
    return p / p.sum()


def p_target(logprobs: np.ndarray, target) -> float:
    """Probability mass, renormalised over the options, on the target index or set of indices."""
    indices = [target] if isinstance(target, int | np.integer) else list(target)
    return float(normalise(logprobs)[indices].sum())


def picks_target(logprobs: np.ndarray, target) -> bool:
    """The |target| most likely options are exactly the target (argmax for a single target)."""
    indices = {int(target)} if isinstance(target, int | np.integer) else {int(t) for t in target}
    top = np.argsort(-np.asarray(logprobs), kind="stable")[: len(indices)]
    return set(top.tolist()) == indices


def one_minus_tvd(logprobs: np.ndarray, target_probs) -> float:
    """1 - total variation distance between the model's option distribution and the target."""
    return 1.0 - 0.5 * float(np.abs(normalise(logprobs) - np.asarray(target_probs)).sum())


# --------------------------------------------------------------------------- free-form answers


@torch.inference_mode()
def generate_completions(
    model,
    tokenizer,
    prompt: str,
    *,
    n: int = 1,
    sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    stop: str = "\n",
) -> list[str]:
    """n continuations of `prompt` (greedy unless `sample`), each cut at the first `stop`."""
    device = model_device(model)
    ids = torch.tensor([_ids(tokenizer, prompt, special=True)], device=device)
    torch.manual_seed(seed)
    # Plain sampling at `temperature` (no top-k/top-p truncation a model's config may carry).
    decoding = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    generated = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        num_return_sequences=n if sample else 1,
        pad_token_id=pad_id(tokenizer),
        **decoding,
    )
    texts = [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in generated]
    texts = [t.split(stop)[0] if stop else t for t in texts]
    return texts if sample else texts * n


def answer_source(generated: str, prefix: str) -> str:
    """The lambda a free-form answer denotes: the prompt ends in `prefix` ("lambda n:") and the
    model continues it, unless it restarts with a full lambda of its own."""
    text = generated.strip().splitlines()[0] if generated.strip() else ""
    return text if text.startswith("lambda") else f"{prefix} {text}"


def check_free_form(generated: str, check: dict, timeout: float = 2.0) -> bool:
    source = answer_source(generated, check["prefix"])
    return check_lambda(source, check["inputs"], check["outputs"], timeout=timeout)


def check_lambda(source: str, inputs: Sequence, expected: Sequence, timeout: float = 2.0) -> bool:
    """Whether the lambda expression `source` maps every input to its expected output.

    The text comes from a model, so it is never evaluated here: `sandbox.run_in_sandbox` checks it
    against a syntax whitelist and runs it in a locked-down child process with `timeout` CPU seconds.
    """
    reply = run_in_sandbox(source, list(inputs), cpu_seconds=timeout)
    return bool(reply.get("ok")) and _all_equal(reply["outputs"], expected)


def _all_equal(outputs: Sequence, expected: Sequence) -> bool:
    return len(outputs) == len(expected) and all(_same(a, b) for a, b in zip(outputs, expected))


def _same(got, want) -> bool:
    # True == 1 in Python; an int-valued function answered with booleans is still wrong.
    if isinstance(got, bool) != isinstance(want, bool):
        return False
    if isinstance(got, int | float) and isinstance(want, int | float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return got == want


# --------------------------------------------------------------------------- confidence intervals


def bootstrap_ci(
    values: Sequence[float],
    groups: Sequence | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of `values` with a percentile bootstrap CI.

    Without groups, items are resampled. With groups (e.g. the run seed of each item), groups
    are resampled first and items within each drawn group next, so the interval also covers the
    variation between runs, which item resampling alone would ignore.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    rng = np.random.default_rng(seed)
    if groups is None:
        means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    else:
        means = _two_stage_means(values, np.asarray(groups), n_boot, rng)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def _two_stage_means(values, groups, n_boot, rng) -> np.ndarray:
    members = [values[groups == g] for g in np.unique(groups)]
    means = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, len(members), size=len(members))
        total = count = 0.0
        for g in drawn:
            group = members[g]
            total += group[rng.integers(0, group.size, size=group.size)].sum()
            count += group.size
        means[b] = total / count
    return means
