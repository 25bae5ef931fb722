"""Scoring answers of a causal LM: option log-likelihoods, sampled free-form answers checked by
running them in the sandbox, bootstrap CIs.

Small models rarely follow "answer with a letter", so every question is scored by the log-likelihood
of each candidate continuation, renormalised over the item's options: P(target) =
softmax(logliks)[target]. The log-likelihood of an option is the *sum* over its tokens, not a
per-token mean: exp(sum) is the probability that the model writes exactly that answer, which is what
the paper measures (its GPT answers are single tokens, or sampled at temperature 1 and counted, whose
expected count is that same product of token probabilities). A length-normalised score would favour
long options and measure something else.

An item may carry a shared context (the in-context documents): it is run once per group of items
that share it, and its key/value cache is reused by all of their prompts and options.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch

from convergence.oocr.sandbox import run_coin_in_sandbox, run_in_sandbox
from convergence.precision import COMPUTED

# --------------------------------------------------------------------------- tokenisation


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_pair(tokenizer, prompt: str, completion: str, special: bool = True) -> tuple[list[int], int]:
    """Token ids of prompt + completion, and how many of them belong to the prompt.

    The whole text is tokenised at once (the tokens a model sees when it reads the document),
    provided its first tokens are exactly the prompt's; otherwise (a merge across the boundary)
    the two parts are tokenised separately and concatenated. Training and scoring both use this,
    so a completion is always the same token sequence in both. `special`: add the tokenizer's
    special tokens (a BOS) in front; off for a prompt that continues a shared context.
    """
    prompt_ids = _ids(tokenizer, prompt, special=special)
    full = _ids(tokenizer, prompt + completion, special=special)
    if len(full) > len(prompt_ids) and full[: len(prompt_ids)] == prompt_ids:
        return full, len(prompt_ids)
    return prompt_ids + _ids(tokenizer, completion, special=False), len(prompt_ids)


def encode_context(tokenizer, context: str | None) -> tuple[int, ...]:
    """A shared context's tokens (with the special tokens that start a sequence); () for none."""
    return tuple(_ids(tokenizer, context, special=True)) if context else ()


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


def autocast(model, precision: str):
    """bf16: matrix products in bfloat16 (about 3x faster on a CPU with AVX512-BF16); fp32: exact. Takes
    what a job computes in ("auto" is resolved before, by convergence.precision.resolve_precision).
    A model whose weights are bfloat16 already (`run_evaluate` casts them once: autocast would cast
    every weight again at every forward pass, which dominates token-by-token decoding) runs as it is."""
    if precision not in COMPUTED:
        raise ValueError(f"precision must be one of {COMPUTED} (resolve 'auto' first), got {precision!r}")
    if precision == "fp32" or next(model.parameters()).dtype == torch.bfloat16:
        return nullcontext()
    return torch.autocast(model_device(model).type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- likelihoods


class Request:
    """One item as tokens: a shared context (may be empty), its prompt and its options."""

    __slots__ = ("context", "prompt", "options")

    def __init__(self, context: tuple[int, ...], prompt: list[int], options: list[list[int]]):
        self.context, self.prompt, self.options = context, prompt, options


def encode_request(tokenizer, prompt: str, options: Sequence[str], context: tuple[int, ...] = ()) -> Request:
    encoded = [encode_pair(tokenizer, prompt, o, special=not context) for o in options]
    prompt_ids = encoded[0][0][: encoded[0][1]] if encoded else _ids(tokenizer, prompt, special=not context)
    return Request(tuple(context), list(prompt_ids), [ids[n:] for ids, n in encoded])


@torch.inference_mode()
def sequence_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> np.ndarray:
    """Sum of log P(completion tokens | prompt) for each (prompt, completion) pair."""
    return _plain_logprobs(model, [encode_pair(tokenizer, p, c) for p, c in pairs], pad_id(tokenizer), batch_size)


@torch.no_grad()
def _plain_logprobs(model, encoded, pad: int, batch_size: int, precision: str = "fp32") -> np.ndarray:
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = np.zeros(len(encoded), dtype=np.float64)
    device = model_device(model)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        padded = left_padded([encoded[i] for i in batch], pad, device)
        out[batch] = answer_logprobs(model, padded, precision).double().cpu().numpy()
    return out


IGNORE = -100  # label of tokens that carry no loss and no score (prompt, padding)


def left_padded(encoded: Sequence[tuple[Sequence[int], int]], pad: int, device=None) -> dict:
    """(token ids, how many are the prompt) as one left-padded batch, labels IGNORE but on the answer
    tokens: every answer ends at the last position, so only the last `keep` = longest answer + 1
    positions need logits; positions count from each row's first token."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        input_ids[row, length - len(ids) :] = torch.as_tensor(ids)
        labels[row, length - len(ids) + n_prompt :] = torch.as_tensor(ids[n_prompt:])
        mask[row, length - len(ids) :] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": (mask.cumsum(1) - 1).clamp(min=0).to(device),
        "labels": labels.to(device),
        "keep": max(len(ids) - n_prompt for ids, n_prompt in encoded) + 1,
    }


def answer_logits(model, batch: dict, precision: str = "fp32") -> torch.Tensor:
    """Logits of the last `keep` positions of a left-padded batch (those that predict answer tokens)."""
    kwargs = {"attention_mask": batch["attention_mask"]}
    if _accepts(model, "position_ids"):  # real positions despite the left padding
        kwargs["position_ids"] = batch["position_ids"]
    keep = batch["keep"]
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    with autocast(model, precision):
        logits = model(input_ids=batch["input_ids"], **kwargs).logits
    return logits[:, -keep:]


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log P(token) at every labelled position (0 elsewhere), in float32; position t predicts t + 1, so
    the result has one column fewer. `logits` may cover only the last positions (cut `labels` alike)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=IGNORE, reduction="none"
    )


def answer_logprobs(model, batch: dict, precision: str = "fp32") -> torch.Tensor:
    """Per row of a left-padded batch, the summed log-likelihood of its answer tokens given the prompt."""
    logits = answer_logits(model, batch, precision)
    return -answer_nll(logits, batch["labels"][:, -batch["keep"] :]).sum(1)


def option_logprobs(
    model,
    tokenizer,
    items,
    batch_size: int = 16,
    share_prompt: bool | None = None,
    contexts: Sequence[str | None] | None = None,
    precision: str = "fp32",
    max_batch_tokens: int = 32768,
) -> list[np.ndarray]:
    """Per item, the log-likelihood of each of its options given its prompt.

    `items`: objects with .prompt and .options, or (prompt, options) pairs. `contexts`: per item a
    text read before its prompt (the in-context documents), or None. With `share_prompt` (default:
    whenever the model takes a KV cache), each context runs once for all the items that share it and
    each prompt once for all of its options, reusing the key/value cache; otherwise every context +
    prompt + option is run as one sequence. `max_batch_tokens` bounds rows x cached tokens per
    forward pass (the memory of long contexts copied across a batch).
    """
    pairs = [(i.prompt, list(i.options)) if hasattr(i, "options") else (i[0], list(i[1])) for i in items]
    contexts = list(contexts) if contexts is not None else [None] * len(pairs)
    if len(contexts) != len(pairs):
        raise ValueError(f"{len(contexts)} contexts for {len(pairs)} items")
    encoded_contexts = {c: encode_context(tokenizer, c) for c in dict.fromkeys(contexts)}
    requests = [encode_request(tokenizer, p, o, encoded_contexts[c]) for (p, o), c in zip(pairs, contexts)]
    if share_prompt is None:
        share_prompt = _cache_argument(model) is not None and hasattr(model, "config")
    return score_requests(model, requests, pad_id(tokenizer), batch_size, share_prompt, precision, max_batch_tokens)


def score_requests(model, requests: list[Request], pad: int, batch_size: int = 16, share: bool = True,
                   precision: str = "fp32", max_batch_tokens: int = 32768) -> list[np.ndarray]:
    out: list[np.ndarray | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for k, r in enumerate(requests):
        groups.setdefault(r.context, []).append(k)
    for context, members in groups.items():
        scored = None
        if share:
            scored = _shared_logprobs(model, context, [requests[k] for k in members], pad, batch_size, precision,
                                      max_batch_tokens)
        if scored is None:  # no cache, or one a sliding window cut: every option as a whole sequence
            scored = _plain_request_logprobs(model, [requests[k] for k in members], pad, batch_size, precision)
        for k, s in zip(members, scored):
            out[k] = s
    return out


def _plain_request_logprobs(model, requests: list[Request], pad, batch_size, precision) -> list[np.ndarray]:
    flat = [(list(r.context) + r.prompt + o, len(r.context) + len(r.prompt)) for r in requests for o in r.options]
    scores = _plain_logprobs(model, flat, pad, batch_size, precision) if flat else np.zeros(0)
    bounds = np.cumsum([0] + [len(r.options) for r in requests])
    return [scores[bounds[k] : bounds[k + 1]] for k in range(len(requests))]


def _cache_argument(model) -> str | None:
    """Name of the forward argument taking a KV cache ("cache" in recent transformers 5.x,
    "past_key_values" before), looked up on the model under a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _cached_layers(result, cache_arg: str, length: int):
    """The (keys, values) of every layer, or None where a layer does not hold all `length` positions
    (a sliding-window layer drops the oldest)."""
    layers = [(layer.keys, layer.values) for layer in getattr(result, cache_arg).layers]
    if any(k is None or k.shape[-2] != length for k, _ in layers):
        return None
    return layers


def _cache_of(model, layers, rows: torch.Tensor | int):
    """A fresh DynamicCache holding the given rows of `layers` (an int: the single row, repeated as
    an expanded view, which the next update copies once)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer_idx, (keys, values) in enumerate(layers):
        if isinstance(rows, int):
            keys, values = keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1)
        else:
            keys, values = keys[rows], values[rows]
        cache.update(keys, values, layer_idx)
    return cache


@torch.inference_mode()
def _shared_logprobs(model, context, requests, pad, batch_size, precision, max_batch_tokens):
    """Context once, then prompts in batches on its cache, then options on the prompts' caches.
    None where the model's cache does not keep every position (then score plainly)."""
    device = model_device(model)
    cache_arg = _cache_argument(model)
    n_context = len(context)
    context_layers = None
    if n_context:
        with autocast(model, precision):
            result = model(input_ids=torch.tensor([context], device=device), use_cache=True, logits_to_keep=1)
        context_layers = _cached_layers(result, cache_arg, n_context)
        if context_layers is None:
            return None
    out = [np.zeros(len(r.options)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    start = 0
    while start < len(order):
        width = n_context + len(requests[order[start]].prompt)
        rows = max(1, min(batch_size, max_batch_tokens // max(1, width)))
        chunk = order[start : start + rows]
        start += len(chunk)
        padded = left_padded([(requests[i].prompt, len(requests[i].prompt)) for i in chunk], pad, device)
        ids, mask = padded["input_ids"], padded["attention_mask"]
        positions = n_context + (mask.cumsum(1) - 1).clamp(min=0)
        full_mask = torch.cat([torch.ones((len(chunk), n_context), dtype=mask.dtype, device=device), mask], dim=1)
        kwargs = {}
        if context_layers is not None:
            kwargs[cache_arg] = _cache_of(model, context_layers, len(chunk))
        with autocast(model, precision):
            result = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **kwargs)
        # The prompt's last logits predict every option's first token.
        first = torch.log_softmax(result.logits[:, -1].float(), dim=-1)
        layers = _cached_layers(result, cache_arg, full_mask.shape[1])
        if layers is None:  # e.g. a sliding window cut it
            return None
        option_rows = [(b, i, j) for b, i in enumerate(chunk) for j in range(len(requests[i].options))]
        per_forward = max(1, min(batch_size, max_batch_tokens // max(1, full_mask.shape[1])))
        for r0 in range(0, len(option_rows), per_forward):
            part = option_rows[r0 : r0 + per_forward]
            select = torch.tensor([b for b, _, _ in part], device=device)
            with autocast(model, precision):
                scores = _continuation_logprobs(
                    model, {cache_arg: _cache_of(model, layers, select)}, full_mask[select], first[select],
                    [requests[i].options[j] for _, i, j in part], pad,
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


# --------------------------------------------------------------------------- sampling


def first_line(text: str) -> int | None:
    """Stop rule of a one-line answer: cut at the first newline."""
    index = text.find("\n")
    return None if index < 0 else index


def class_body_end(text: str) -> int | None:
    """Stop rule of a class body: cut before the first non-empty line that is not indented (the
    class has ended), or at two blank lines in a row."""
    offset = 0
    lines = text.split("\n")
    for k, line in enumerate(lines[:-1]):  # the last line may still be growing
        if k > 0 and line.strip() and not line[:1].isspace():
            return offset
        if k > 0 and not line.strip() and not lines[k - 1].strip():
            return offset
        offset += len(line) + 1
    return None


def sample_completions(
    model,
    tokenizer,
    prompt: str,
    *,
    context: str | None = None,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    stop: Callable[[str], int | None] = first_line,
    precision: str = "fp32",
) -> list[str]:
    """n continuations of `context` + `prompt` (see `sample_batch`)."""
    return sample_batch(model, tokenizer, [prompt], contexts=[context], n=n, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, stops=[stop], precision=precision)[0]


@torch.inference_mode()
def sample_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    contexts: Sequence[str | None] | None = None,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    stops: Sequence[Callable[[str], int | None]] | None = None,
    precision: str = "fp32",
    max_batch_tokens: int = 32768,
) -> list[list[str]]:
    """n continuations of each `context` + `prompt`, sampled at `temperature` from the full
    distribution (no top-k/top-p truncation; 0: greedy), each cut where its `stop` says (or at an
    end-of-sequence token). The prompts run once, left-padded in one batch, and their caches are shared
    by their n samples, which are decoded together: one forward pass per new token for the whole batch
    (decoding is bound by reading the weights, so one row costs nearly what forty do). Seeded: the same
    call returns the same samples."""
    contexts = list(contexts) if contexts is not None else [None] * len(prompts)
    stops = list(stops) if stops is not None else [first_line] * len(prompts)
    out: list[list[str]] = []
    sequences = []
    for prompt, context in zip(prompts, contexts):
        context_ids = encode_context(tokenizer, context)
        sequences.append(list(context_ids) + _ids(tokenizer, prompt, special=not context_ids))
    longest = max((len(s) for s in sequences), default=1)
    per_batch = max(1, max_batch_tokens // ((longest + max_new_tokens) * n))
    for start in range(0, len(sequences), per_batch):
        chunk = range(start, min(len(sequences), start + per_batch))
        out += _sample_chunk(model, tokenizer, [sequences[i] for i in chunk], [stops[i] for i in chunk], n,
                             temperature, max_new_tokens, seed + start, precision)
    return out


def _sample_chunk(model, tokenizer, sequences, stops, n, temperature, max_new_tokens, seed, precision):
    device = model_device(model)
    cache_arg = _cache_argument(model)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    eos = {int(t) for t in np.atleast_1d(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else [])}
    padded = left_padded([(s, len(s)) for s in sequences], pad_id(tokenizer), device)
    mask = padded["attention_mask"]
    with autocast(model, precision):
        result = model(input_ids=padded["input_ids"], attention_mask=mask, position_ids=padded["position_ids"],
                       use_cache=True, logits_to_keep=1)
    cache = getattr(result, cache_arg)
    cache.batch_repeat_interleave(n)  # row r's samples are rows r*n .. r*n + n - 1
    mask = mask.repeat_interleave(n, dim=0)
    logits = result.logits[:, -1].float().repeat_interleave(n, dim=0)
    rows = len(sequences) * n
    tokens: list[list[int]] = [[] for _ in range(rows)]
    texts = [""] * rows
    done = [False] * rows
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            chosen = logits.argmax(-1).cpu()
        for r in range(rows):
            if done[r]:
                continue
            token = int(chosen[r])
            if token in eos:
                done[r] = True
                continue
            tokens[r].append(token)
            texts[r] = tokenizer.decode(tokens[r], skip_special_tokens=True)
            done[r] = stops[r // n](texts[r]) is not None
        if all(done) or step == max_new_tokens - 1:
            break
        positions = mask.sum(1, keepdim=True)  # each row's next position, whatever its padding
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        with autocast(model, precision):
            result = model(input_ids=chosen[:, None].to(device), attention_mask=mask, position_ids=positions,
                           use_cache=True, **{cache_arg: cache})
        cache = getattr(result, cache_arg)
        logits = result.logits[:, -1].float()
    cut = [stops[r // n](t) for r, t in enumerate(texts)]
    texts = [t if c is None else t[:c] for t, c in zip(texts, cut)]
    return [texts[r * n : (r + 1) * n] for r in range(len(sequences))]


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


def coin_source(generated: str, coin: str) -> str:
    """The class a free-form coin answer denotes: the prompt ends in `class <coin>(BaseCoin):` and the
    model writes its body."""
    return f"class {coin}(BaseCoin):\n{generated.rstrip()}\n"


def estimate_heads(generated: str, check: dict, seed: int = 0, timeout: float = 2.0) -> float | None:
    """P(heads) of the coin class a model wrote, from flips in the sandbox; None if it is no valid
    coin class (syntax, whitelist, no `heads` and no `flip`, a crash, a flip that returns no H/T)."""
    reply = run_coin_in_sandbox(coin_source(generated, check["coin"]), check["coin"], seed=seed, cpu_seconds=timeout)
    return reply.get("p_heads") if reply.get("ok") else None


def within(estimate: float | None, bias: float, window: float) -> bool:
    """The paper's rule: an estimate (rounded to 2 decimals) in [bias - window, bias + window]."""
    return estimate is not None and round(bias - window, 2) <= estimate <= round(bias + window, 2)


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
