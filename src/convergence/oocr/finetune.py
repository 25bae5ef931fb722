"""LoRA fine-tuning of a causal LM on OOCR documents: loss on the answer tokens only, identical
documents merged into weighted rows, left padding with logits only where an answer token is predicted,
bf16 matrix products where the device computes them natively (`precision: auto`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convergence.precision import PRECISIONS, PrecisionChoice, resolve_precision

from .scoring import IGNORE, answer_logits, answer_logprobs, answer_nll, encode_pair, left_padded, model_device, pad_id


@dataclass
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 8  # rows per step; a row is one distinct document, weighted by how often it occurs
    lr: float = 1e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear": every linear layer but the output head (peft); or a list of module names
    target_modules: str | list[str] = "all-linear"
    # LoRA in the last `layers` transformer blocks only (None: all). The backward pass then stops
    # below them (with 15 of SmolLM2's 30 blocks a step costs 0.63x, with 10 0.52x; bf16, CPU), and the
    # frozen blocks below, whose output never changes, run once per document instead of once per epoch.
    layers: int | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # "linear": decay to 0 over `steps` after warm-up. With a constant lr the last batches decide the
    # model's answer probabilities (coins' biases were not learned); the decay averages over them.
    lr_schedule: str = "linear"
    max_length: int = 96  # tokens; longer documents lose the start of their prompt, never the answer
    # "bf16": matrix products in bfloat16 under autocast (LoRA weights and the optimiser stay float32),
    # 1.7x faster per step on a CPU with AVX512-BF16 and the usual choice on GPUs, but 18x slower per step on
    # a CPU without native bf16 (AVX2 only; benchmarks/precision_speed.py); "fp32": exact; "auto": bf16 where
    # native, else fp32 (convergence.precision).
    precision: str = "auto"
    seed: int = 0
    # Steps between scorings of the held-out items (`finetune(heldout=...)`): the learning curve.
    # None: five points after the start.
    eval_every: int | None = None


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the peft-wrapped model, in eval mode
    tokenizer: object
    losses: list[float]
    config: FinetuneConfig
    files: dict[str, Path] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)  # the learning rate each optimiser step used
    n_rows: int = 0  # distinct training rows (documents after merging duplicates)
    precision: PrecisionChoice | None = None  # what the matrix products ran in, and why
    # The learning curve: {"step", "train_loss" (mean since the previous point), "heldout_score"}
    # at step 0 (the untuned model) and every `eval_every` steps; empty without held-out items.
    curve: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One distinct training document as tokens: `ids[:n_prompt]` is the prompt (no loss), the rest the
    answer; `weight` is how many documents of the training set are exactly this one."""

    ids: tuple[int, ...]
    n_prompt: int
    weight: int = 1

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * self.n_prompt + list(self.ids[self.n_prompt :])


def finetune(
    docs: Sequence,
    model=None,
    tokenizer=None,
    *,
    loader: Callable[[], tuple] | None = None,
    config: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    heldout: Sequence = (),
    score: Callable[[object, np.ndarray], float] | None = None,
) -> FinetuneResult:
    """Train LoRA adapters on `docs` (objects with .prompt and .completion).

    Give either `model` and `tokenizer`, or `loader()` returning (model, tokenizer). Identical
    documents are merged into one weighted row (Coins repeats each prompt with both answers many
    times: the merged rows, whose answers to one prompt always share a batch, give the same gradient
    at a tenth of the cost). Batches of about `batch_size` rows are drawn in seeded epochs; the loss is
    the weighted mean cross-entropy over the answer tokens of the batch (prompt tokens carry no loss). With
    `out_dir`, the adapter is saved there as safetensors with `loss_curve.csv` and `finetune_config.json`
    beside it. `config.precision` "auto" is resolved here, for the model's device (`result.precision`).

    `heldout`: items (objects with .prompt and .options) scored before training and every
    `config.eval_every` steps by `score(item, option_logprobs)`, their mean written to
    `result.curve` (and `learning_curve.csv`): whether and when the training distribution is
    learned. Their options are scored as the evaluation scores them (summed log-likelihood given the
    whole prompt), through the same cached frozen blocks as training, with no gradient.

    The LoRA layers are injected into the given model in place: score the untuned baseline
    before, on a fresh copy, or inside `result.model.disable_adapter()`.
    """
    from peft import LoraConfig, get_peft_model

    config = config or FinetuneConfig()
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if model is None:
        if loader is None:
            raise ValueError("give model and tokenizer, or a loader")
        model, tokenizer = loader()
    choice = resolve_precision(config.precision, model_device(model).type)
    precision = choice.precision
    torch.manual_seed(config.seed)  # LoRA's A matrices are initialised randomly
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        task_type="CAUSAL_LM",
        **lora_targets(model, config.target_modules, config.layers),
    )
    model = get_peft_model(model, lora)
    rows = training_rows(tokenizer, docs, config.max_length)
    monitor = None
    if heldout:
        if score is None:
            raise ValueError("held-out items need a score(item, option_logprobs) function")
        monitor = Monitor(tokenizer, list(heldout), score, offset=len(rows))
    frozen = None
    if config.layers is not None and config.layers < model.config.num_hidden_layers:
        frozen = FrozenBlocks(model, model.config.num_hidden_layers - config.layers)
        frozen.precompute(rows + (monitor.rows if monitor else []), pad_id(tokenizer), precision, config.batch_size)
    try:
        losses, lrs, curve = _train(model, rows, pad_id(tokenizer), config, precision, progress, frozen, monitor)
    finally:
        if frozen is not None:
            frozen.restore()
    model.eval()
    result = FinetuneResult(model, tokenizer, losses, config, lrs=lrs, n_rows=len(rows), precision=choice,
                            curve=curve)
    if out_dir is not None:
        result.files = save(result, out_dir)
    return result


def lora_targets(model, target_modules, layers: int | None) -> dict:
    """peft's target arguments: `target_modules` in every block, or in the last `layers` blocks only
    (peft takes a layer list only with module names, so "all-linear" is resolved to the names of the
    linear layers inside the blocks)."""
    if layers is None:
        return {"target_modules": target_modules}
    n_blocks = model.config.num_hidden_layers
    if not 0 < layers <= n_blocks:
        raise ValueError(f"layers must be between 1 and the model's {n_blocks} blocks, got {layers}")
    if target_modules == "all-linear":
        target_modules = sorted({
            name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"
        })
    elif isinstance(target_modules, str):
        raise ValueError("with `layers`, target_modules must be 'all-linear' or a list of module names")
    return {"target_modules": list(target_modules), "layers_to_transform": list(range(n_blocks - layers, n_blocks))}


def encode_doc(tokenizer, prompt: str, completion: str, max_length: int) -> Row:
    """A document as a row of at most `max_length` tokens. A longer one loses the start of its
    prompt (left truncation): the answer, which carries the loss, is always kept whole."""
    ids, n_prompt = encode_pair(tokenizer, prompt, completion)
    n_answer = len(ids) - n_prompt
    if n_answer > max_length:
        raise ValueError(f"an answer of {n_answer} tokens does not fit max_length={max_length}: {completion!r}")
    cut = max(0, len(ids) - max_length)
    return Row(tuple(ids[cut:]), n_prompt - cut)


def training_rows(tokenizer, docs: Sequence, max_length: int) -> list[Row]:
    """Distinct documents as weighted rows, in order of first occurrence."""
    counts: dict[tuple[str, str], int] = {}
    for d in docs:
        counts[d.prompt, d.completion] = counts.get((d.prompt, d.completion), 0) + 1
    rows = []
    for (prompt, completion), weight in counts.items():
        row = encode_doc(tokenizer, prompt, completion, max_length)
        rows.append(Row(row.ids, row.n_prompt, weight))
    return rows


def prompt_groups(rows: Sequence[Row]) -> list[list[int]]:
    """Indices of the rows that share a prompt (Coins: one prompt, a heads and a tails answer)."""
    groups: dict[tuple, list[int]] = {}
    for k, r in enumerate(rows):
        groups.setdefault(r.ids[: r.n_prompt], []).append(k)
    return list(groups.values())


def _batches(groups: list[list[int]], batch_size: int, steps: int, seed: int):
    """Row indices of each step's batch: shuffled epochs over the prompt groups, so every row is seen
    equally often, and the answers of one prompt always share a batch. Weights only count relative to
    each other within a batch (Adam rescales every step), so a prompt's heads and tails must meet in the
    same batch for the gradient to pull towards their mix rather than to whichever came last."""
    rng = np.random.default_rng(seed)
    pool: list[list[int]] = []
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < batch_size:
            if not pool:
                pool = [groups[i] for i in rng.permutation(len(groups))]
            batch += pool.pop(0)
        yield batch


def collate(rows: Sequence[Row], pad: int, device=None) -> dict[str, torch.Tensor]:
    """Rows as a left-padded batch (`scoring.left_padded`) with their weights."""
    batch = left_padded([(r.ids, r.n_prompt) for r in rows], pad, device)
    batch["weights"] = torch.tensor([float(r.weight) for r in rows], device=device)
    return batch


def completion_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean cross-entropy over the labelled (answer) tokens; position t predicts t + 1.

    `logits` may cover only the last positions of the sequence (then `labels` must be cut alike).
    Row r's tokens count `weights[r]` times: the mean over the documents the rows stand for.
    """
    counted = (labels[:, 1:] != IGNORE).float()
    if weights is not None:
        counted = counted * weights[:, None]
    return (answer_nll(logits, labels) * counted).sum() / counted.sum()


def batch_loss(model, batch: dict, precision: str = "fp32") -> torch.Tensor:
    """The training loss of one collated batch: logits only where an answer token is predicted."""
    logits = answer_logits(model, batch, precision)
    return completion_loss(logits, batch["labels"][:, -batch["keep"] :], batch["weights"])


def lr_factor(step: int, steps: int, warmup_steps: int = 0, schedule: str = "linear") -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based): a linear ramp over
    `warmup_steps`, then constant or a linear decay reaching 0 after the last step."""
    if schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {schedule!r}")
    ramp = min(1.0, (step + 1) / max(1, warmup_steps))
    return ramp if schedule == "constant" else ramp * max(0.0, 1 - step / steps)


class Monitor:
    """Held-out items scored during training: every option of every item is one row (prompt, then
    the option as the answer), kept whole (never truncated) as the evaluation reads it; rows
    `offset`, `offset + 1`, ... of the frozen-block cache."""

    def __init__(self, tokenizer, items: list, score: Callable, offset: int):
        self.items, self.score, self.offset = items, score, offset
        self.rows: list[Row] = []
        self.bounds = [0]
        for item in items:
            for option in item.options:
                ids, n_prompt = encode_pair(tokenizer, item.prompt, option)
                self.rows.append(Row(tuple(ids), n_prompt))
            self.bounds.append(len(self.rows))

    @torch.no_grad()
    def __call__(self, model, pad: int, precision: str, frozen: FrozenBlocks | None, batch_size: int) -> float:
        device = model_device(model)
        was_training = model.training
        model.eval()
        logprobs = np.zeros(len(self.rows))
        try:
            for start in range(0, len(self.rows), batch_size):
                chunk = list(range(start, min(start + batch_size, len(self.rows))))
                batch = collate([self.rows[i] for i in chunk], pad, device)
                if frozen is not None:
                    frozen.feeding([self.offset + i for i in chunk], batch["input_ids"].shape[1])
                logprobs[chunk] = answer_logprobs(model, batch, precision).double().cpu().numpy()
        finally:
            model.train(was_training)
        scores = [self.score(item, logprobs[self.bounds[k] : self.bounds[k + 1]]) for k, item in enumerate(self.items)]
        return float(np.mean(scores))


class _Stop(Exception):
    pass


class _Skip(torch.nn.Module):
    """Stands in for a frozen block during training: its output comes from the cache."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class FrozenBlocks:
    """The blocks below the first one with LoRA never change during training, so the hidden states
    entering that block are a fixed function of each document: computed once (`precompute`), then fed
    to it directly while the blocks below are skipped (`feeding`). Exact: the same numbers the frozen
    blocks would compute at every step (tested)."""

    def __init__(self, model, first: int):
        self.model, self.first = model, first
        self.blocks = _blocks(model)
        self.states: dict[int, torch.Tensor] = {}
        self.batch: torch.Tensor | None = None

    @torch.no_grad()
    def precompute(self, rows: list[Row], pad: int, precision: str, batch_size: int) -> None:
        device = model_device(self.model)
        captured = {}

        def capture(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop  # nothing above the cut is needed

        handle = self.blocks[self.first].register_forward_pre_hook(capture, with_kwargs=True)
        was_training = self.model.training
        self.model.eval()
        try:
            order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
            for start in range(0, len(order), 4 * batch_size):
                chunk = order[start : start + 4 * batch_size]
                batch = collate([rows[i] for i in chunk], pad, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    try:
                        self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   position_ids=batch["position_ids"])
                    except _Stop:
                        pass
                hidden = captured.pop("h").float()
                for b, i in enumerate(chunk):
                    self.states[i] = hidden[b, hidden.shape[1] - len(rows[i].ids) :].clone()
        finally:
            handle.remove()
            self.model.train(was_training)
        self._originals = [self.blocks[i] for i in range(self.first)]
        for i in range(self.first):
            self.blocks[i] = _Skip()
        self._feed = self.blocks[self.first].register_forward_pre_hook(self._replace, with_kwargs=True)

    def feeding(self, indices: list[int], length: int):
        """The cached states of these rows, left-padded to the batch's length, for the next forward."""
        rows = [self.states[i] for i in indices]
        batch = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        for b, h in enumerate(rows):
            batch[b, length - h.shape[0] :] = h
        self.batch = batch

    def _replace(self, module, args, kwargs):
        if self.batch is None:
            raise RuntimeError("FrozenBlocks: no cached states for this forward pass")
        hidden, self.batch = self.batch, None
        if args:
            return (hidden.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    def restore(self) -> None:
        if getattr(self, "_feed", None) is not None:
            self._feed.remove()
            for i, block in enumerate(self._originals):
                self.blocks[i] = block
            self._feed = None
        self.states.clear()


def _blocks(model) -> torch.nn.ModuleList:
    """The model's list of transformer blocks."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def _train(model, rows: list[Row], pad: int, config: FinetuneConfig, precision: str, progress: bool,
           frozen: FrozenBlocks | None = None, monitor: Monitor | None = None) -> tuple[list, list, list]:
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_factor(0, config.steps, config.warmup_steps, config.lr_schedule)  # refuse an unknown schedule now
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup_steps, config.lr_schedule)
    )
    model.train()
    losses: list[float] = []
    lrs: list[float] = []
    curve: list[dict] = []
    every = config.eval_every or max(1, config.steps // 5)

    def point(step: int) -> None:
        if monitor is None:
            return
        since = losses[curve[-1]["step"] : step] if curve else []
        score = monitor(model, pad, precision, frozen, 4 * config.batch_size)
        curve.append({"step": step, "train_loss": float(np.mean(since)) if since else np.nan, "heldout_score": score})

    point(0)
    bar = tqdm(
        _batches(prompt_groups(rows), config.batch_size, config.steps, config.seed),
        total=config.steps,
        desc="LoRA",
        disable=not progress,
    )
    for indices in bar:
        batch = collate([rows[i] for i in indices], pad, device)
        if frozen is not None:
            frozen.feeding(indices, batch["input_ids"].shape[1])
        loss = batch_loss(model, batch, precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if len(losses) % every == 0 or len(losses) == config.steps:
            point(len(losses))
        shown = {"heldout": f"{curve[-1]['heldout_score']:.3f}"} if curve else {}
        bar.set_postfix(loss=f"{losses[-1]:.3f}", **shown)
    return losses, lrs, curve


def save(result: FinetuneResult, out_dir: str | Path) -> dict[str, Path]:
    """Adapter weights (safetensors), the loss curve and the configuration, in `out_dir`."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out_dir, safe_serialization=True)
    # PEFT keeps target_modules as a set and writes it in hash order, which changes between processes:
    # sorted, two identical runs write identical files.
    adapter_config = out_dir / "adapter_config.json"
    saved = json.loads(adapter_config.read_text())
    if isinstance(saved.get("target_modules"), list):
        saved["target_modules"] = sorted(saved["target_modules"])
        adapter_config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    curve = out_dir / "loss_curve.csv"
    with curve.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows((step + 1, loss, lr) for step, (loss, lr) in enumerate(zip(result.losses, result.lrs)))
    if result.curve:
        with (out_dir / "learning_curve.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "train_loss", "heldout_score"])
            writer.writeheader()
            writer.writerows(result.curve)
    config_path = out_dir / "finetune_config.json"
    saved_config = asdict(result.config)
    if result.precision is not None:  # what "auto" became, beside what was asked
        saved_config["precision_used"] = result.precision.precision
    config_path.write_text(json.dumps(saved_config, indent=1))
    return {"adapter": out_dir / "adapter_model.safetensors", "loss_curve": curve, "config": config_path}


def load_adapter(model, adapter_dir: str | Path):
    """The base `model` with a saved adapter applied, in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()
