"""LoRA fine-tuning of a causal LM on OOCR documents (loss on completion tokens only), and the
in-context-learning baseline's prompts."""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .scoring import encode_pair, model_device, pad_id

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


@dataclass
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear": every linear layer but the output head (peft); or a list of module names
    target_modules: str | list[str] = "all-linear"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # "linear": decay to 0 over `steps` after warm-up. With a constant lr the last batches decide the
    # model's answer probabilities (coins' biases were not learned); the decay averages over them.
    lr_schedule: str = "linear"
    max_length: int = 96  # tokens; longer documents lose the start of their prompt
    seed: int = 0


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the peft-wrapped model, in eval mode
    tokenizer: object
    losses: list[float]
    config: FinetuneConfig
    files: dict[str, Path] = field(default_factory=dict)


def finetune(
    docs: Sequence,
    model=None,
    tokenizer=None,
    *,
    loader: Callable[[], tuple] | None = None,
    config: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Train LoRA adapters on `docs` (objects with .prompt and .completion).

    Give either `model` and `tokenizer`, or `loader()` returning (model, tokenizer). Batches are
    drawn in seeded epochs over the documents; the loss is the mean cross-entropy over the
    completion tokens of the batch. With `out_dir`, the adapter is saved there as safetensors
    with `loss_curve.csv` and `finetune_config.json` beside it.

    The LoRA layers are injected into the given model in place: score the untuned baseline
    before, on a fresh copy, or inside `result.model.disable_adapter()`.
    """
    from peft import LoraConfig, get_peft_model

    config = config or FinetuneConfig()
    if model is None:
        if loader is None:
            raise ValueError("give model and tokenizer, or a loader")
        model, tokenizer = loader()
    torch.manual_seed(config.seed)  # LoRA's A matrices are initialised randomly
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    encoded = [_encode(tokenizer, d.prompt, d.completion, config.max_length) for d in docs]
    losses = _train(model, encoded, pad_id(tokenizer), config, progress)
    model.eval()
    result = FinetuneResult(model, tokenizer, losses, config)
    if out_dir is not None:
        result.files = save(result, out_dir)
    return result


def _encode(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    ids, n_prompt = encode_pair(tokenizer, prompt, completion)
    labels = [IGNORE] * n_prompt + ids[n_prompt:]
    return ids[-max_length:], labels[-max_length:]


def _batches(n_docs: int, batch_size: int, steps: int, seed: int):
    """Indices of each step's batch: shuffled epochs, so every document is seen equally often."""
    rng = np.random.default_rng(seed)
    pool: list[int] = []
    for _ in range(steps):
        while len(pool) < batch_size:
            pool += rng.permutation(n_docs).tolist()
        yield pool[:batch_size]
        pool = pool[batch_size:]


def _collate(examples, pad: int, device) -> dict[str, torch.Tensor]:
    """Right padding: causal attention never looks ahead, so padding cannot change the loss."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled (completion) tokens; position t predicts t + 1."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
    )


def _train(model, encoded, pad: int, config: FinetuneConfig, progress: bool) -> list[float]:
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    if config.lr_schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {config.lr_schedule!r}")

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup)
        return ramp if config.lr_schedule == "constant" else ramp * max(0.0, 1 - step / config.steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses: list[float] = []
    bar = tqdm(
        _batches(len(encoded), config.batch_size, config.steps, config.seed),
        total=config.steps,
        desc="LoRA",
        disable=not progress,
    )
    for indices in bar:
        batch = _collate([encoded[i] for i in indices], pad, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = completion_loss(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


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
        writer.writerow(["step", "loss"])
        writer.writerows((step + 1, loss) for step, loss in enumerate(result.losses))
    config_path = out_dir / "finetune_config.json"
    config_path.write_text(json.dumps(asdict(result.config), indent=1))
    return {"adapter": out_dir / "adapter_model.safetensors", "loss_curve": curve, "config": config_path}


def load_adapter(model, adapter_dir: str | Path):
    """The base `model` with a saved adapter applied, in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


# --------------------------------------------------------------------------- in-context learning


def icl_prompt(train_docs: Sequence, k: int, item, seed: int = 0, separator: str = "\n") -> str:
    """The item's prompt preceded by k training documents (drawn per item, reproducibly).

    This is the in-context baseline: the untuned model sees some of the evidence in its prompt
    instead of in its weights. Documents are whole (prompt + completion) and separated by a
    blank line.
    """
    prompt = item.prompt if hasattr(item, "prompt") else str(item)
    key = getattr(item, "id", prompt)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    chosen = rng.choice(len(train_docs), size=min(k, len(train_docs)), replace=False)
    shots = [train_docs[i].prompt + train_docs[i].completion for i in chosen]
    return "".join(shot + separator for shot in shots) + prompt
