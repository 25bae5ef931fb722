"""The in-pipeline vision model zoo (DESIGN §4): small ViTs and ResNets trained on `scenes` images.

No pretrained vision weights are reachable offline, so the pipeline trains its own vision models on the
attributes that the captions state (`convergence.vision.attributes`). The architectures are transformers'
own (`ViTForImageClassification`, `ResNetForImageClassification`), so a trained folder loads with
`AutoModel` + `AutoImageProcessor` like any Hugging Face vision model, through the `local:` source.

Arch spec (a config entry's `arch`; unknown keys are errors, missing ones take the defaults below):

- `arch`: "vit" | "resnet"
- `width`: ViT hidden size / ResNet channels of the stem and of every stage. ResNets keep one width in
  every stage (unlike ImageNet ResNets) so that all their hidden states can be stored side by side.
- `depth`: ViT transformer layers / ResNet stages. Either way the model has `depth + 1` hidden states
  (embedding or stem output first).
- `image_size`: input side in pixels (the processor resizes to it).
- vit only: `patch_size`, `heads` (default width // 32, at least 1), `mlp_ratio` (MLP width / width).
- resnet only: `blocks` (basic residual blocks per stage). The stem divides the side by 4, every stage
  after the first by 2.

Images are scaled to [0, 1] and normalised with the fixed mean = std = 0.5 per channel (inputs in [-1, 1]),
as ViT does: `scenes` backgrounds span black to white, so data statistics would depend on the sample mix
without helping models that normalise internally (LayerNorm, BatchNorm).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from convergence.datasets import read_samples
from convergence.models import pick_device
from convergence.utils import atomic_path, package_versions, sha256_file, torch_threads
from convergence.vision import attributes as A

ARCH_DEFAULTS = {
    "vit": {"width": 64, "depth": 4, "image_size": 64, "patch_size": 8, "heads": None, "mlp_ratio": 4},
    "resnet": {"width": 32, "depth": 3, "image_size": 64, "blocks": 1},
}
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]
RESNET_STEM_STRIDE = 4  # 7x7 conv stride 2, then max-pool stride 2
WARMUP_FRACTION = 0.05
GRAD_CLIP = 1.0
EVAL_BATCH = 256


class ZooError(ValueError):
    pass


# ---------------------------------------------------------------- architectures


def normalize_arch_spec(arch_spec: dict) -> dict:
    """Fill defaults and check values; the result is what metrics.json records."""
    arch = arch_spec.get("arch")
    if arch not in ARCH_DEFAULTS:
        raise ZooError(f"arch spec {arch_spec}: 'arch' must be one of {', '.join(ARCH_DEFAULTS)}")
    unknown = set(arch_spec) - set(ARCH_DEFAULTS[arch]) - {"arch"}
    if unknown:
        raise ZooError(f"arch '{arch}': unknown keys {sorted(unknown)} (known: {sorted(ARCH_DEFAULTS[arch])})")
    spec = {"arch": arch, **ARCH_DEFAULTS[arch], **arch_spec}
    for key in ("width", "depth", "image_size") + (("patch_size",) if arch == "vit" else ("blocks",)):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise ZooError(f"arch '{arch}': {key} must be a positive integer, got {spec[key]!r}")
    if arch == "vit":
        spec["heads"] = spec["heads"] or max(1, spec["width"] // 32)
        if spec["width"] % spec["heads"]:
            raise ZooError(f"vit: width {spec['width']} is not divisible by heads {spec['heads']}")
        if spec["image_size"] % spec["patch_size"]:
            raise ZooError(f"vit: image_size {spec['image_size']} is not a multiple of patch_size {spec['patch_size']}")
    else:
        last_side = spec["image_size"] / RESNET_STEM_STRIDE / 2 ** (spec["depth"] - 1)
        if last_side < 1:
            raise ZooError(f"resnet: image_size {spec['image_size']} is too small for {spec['depth']} stages")
    return spec


def _vit(spec: dict, labels: dict):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.modeling_vit import ViTPooler

    config = ViTConfig(
        hidden_size=spec["width"], num_hidden_layers=spec["depth"], num_attention_heads=spec["heads"],
        intermediate_size=int(spec["mlp_ratio"] * spec["width"]), image_size=spec["image_size"],
        patch_size=spec["patch_size"], encoder_stride=spec["patch_size"], id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ViTForImageClassification(config)
    # The classifier reads the CLS token and builds its ViTModel without a pooler, but AutoModel builds
    # one: without saved pooler weights every load would draw new ones (and a new params hash).
    # The pooler is unused in training, so saving a seeded one costs nothing.
    model.vit.pooler = ViTPooler(config)
    return model


def _resnet(spec: dict, labels: dict):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=spec["width"], hidden_sizes=[spec["width"]] * spec["depth"],
        depths=[spec["blocks"]] * spec["depth"], layer_type="basic", hidden_act="relu",
        downsample_in_first_stage=False, id2label=labels, label2id={v: k for k, v in labels.items()},
        # Not ResNet fields: num_hidden_layers lets generic code count hidden states (stages + stem);
        # image_size records what the model was trained on.
        num_hidden_layers=spec["depth"], image_size=spec["image_size"],
    )
    return ResNetForImageClassification(config)


def image_processor(image_size: int):
    """Resize to `image_size`, scale to [0, 1], normalise with mean = std = 0.5 (module docstring)."""
    import transformers

    # ViTImageProcessorPil (transformers >= 5.x without torchvision) saves as "ViTImageProcessor".
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
               do_normalize=True, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)


def build_model(arch_spec: dict, seed: int | None = None):
    """(model, image_processor) for an arch spec, randomly initialised (seeded if `seed` is given).

    The seed is applied in a forked RNG: building a model does not move the caller's global RNG.
    """
    spec = normalize_arch_spec(arch_spec)
    labels = A.id2label()
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(int(seed))
        model = (_vit if spec["arch"] == "vit" else _resnet)(spec, labels)
    return model, image_processor(spec["image_size"])


# ---------------------------------------------------------------- data


def load_pixels(processor, image_paths: Sequence[str]) -> torch.Tensor:
    """Images on disk -> processed pixel values [N, 3, H, W] float32."""
    images = []
    for path in image_paths:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return processor(images=images, return_tensors="pt")["pixel_values"].float()


def holdout_mask(sample_ids: Sequence[str], fraction: float, split_seed: int = 0) -> np.ndarray:
    """True for held-out samples: a hash of (split_seed, sample_id) below `fraction`.

    Per sample, so a sample keeps its side when the dataset grows and rows are reordered; independent of
    the training seed, so every zoo model is scored on the same held-out images.
    """
    if not 0 < fraction < 1:
        raise ZooError(f"holdout_fraction must lie in (0, 1), got {fraction}")
    u = [int.from_bytes(hashlib.sha256(f"{split_seed}\0{sid}".encode()).digest()[:8], "big") / 2**64
         for sid in sample_ids]
    mask = np.array(u) < fraction
    if mask.all() or not mask.any():
        raise ZooError(f"holdout_fraction={fraction} leaves an empty split of {len(mask)} samples; use more samples")
    return mask


def _image_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "image" not in df or df["image"].isna().any():
        raise ZooError("the vision zoo needs an image for every sample (a `scenes` dataset)")
    return df


# ---------------------------------------------------------------- training and evaluation


@torch.inference_mode()
def _logits(model, pixels: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(pixel_values=pixels[i:i + EVAL_BATCH]).logits.float()
                          for i in range(0, len(pixels), EVAL_BATCH)])
    finally:
        model.train(was_training)


def _score(model, pixels: torch.Tensor, targets: torch.Tensor, layout: dict) -> dict:
    return A.accuracies(A.predict(_logits(model, pixels), layout).cpu(), targets.cpu(), layout)


def evaluate_attributes(model, processor, df: pd.DataFrame) -> dict:
    """Per-attribute accuracy of a zoo classifier (trained or random-init control) on a samples table.

    Returns {"accuracy": {attr: acc}, "mean_accuracy": mean over attributes, "n": rows}.
    """
    layout = A.layout_from_config(model.config)
    targets = A.encode_targets(_image_rows(df), layout)
    preds = []
    for start in range(0, len(df), EVAL_BATCH):
        pixels = load_pixels(processor, df["image"].iloc[start:start + EVAL_BATCH].tolist())
        preds.append(A.predict(_logits(model, pixels.to(model.device)), layout).cpu())
    return A.accuracies(torch.cat(preds), targets, layout)


def _warmup_cosine(total_steps: int):
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _fit(model, pixels, targets, layout, *, epochs, batch_size, lr, weight_decay, seed, progress, desc):
    """AdamW with linear warmup and cosine decay; returns the mean training loss of every epoch."""
    n = len(pixels)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(epochs * steps_per_epoch))
    shuffle = torch.Generator().manual_seed(int(seed))
    curve = []
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        order = torch.randperm(n, generator=shuffle).to(pixels.device)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = A.attribute_loss(model(pixel_values=pixels[idx]).logits, targets[idx], layout)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        curve.append(total / n)
        bar.set_postfix(loss=f"{curve[-1]:.3f}")
        tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: train loss {curve[-1]:.4f}")  # one log line per epoch
    model.eval()
    return curve


def train_zoo_model(samples_parquet: str | Path, arch_spec: dict, out_dir: str | Path, *, epochs: int,
                    batch_size: int, lr: float, seed: int, holdout_fraction: float = 0.2,
                    weight_decay: float = 0.05, split_seed: int = 0, threads: int | None = None,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Train one zoo model on a `scenes` dataset's attributes; save it to `out_dir`; return its metrics.

    `out_dir` (written atomically) holds the model (safetensors), its image processor and metrics.json:
    held-out per-attribute accuracy of the trained model, of its untrained control (the same seeded
    initialisation before training) and of the majority-class baseline (chance), the loss per epoch,
    the arch spec, seeds, split sizes and timings.

    `threads`: torch intra-op threads for this call (restored after). Give each job its own cores: on 2
    shared cores, 2 threads per job beside other busy jobs made a ViT step ~25x slower than 1 thread.
    `device`: "cpu" (default; bitwise reproducible for a given thread count and torch/transformers
    versions), "cuda" or "auto".
    """
    with torch_threads(threads):
        return _train_zoo_model(samples_parquet, arch_spec, out_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                                seed=seed, holdout_fraction=holdout_fraction, weight_decay=weight_decay,
                                split_seed=split_seed, device=device, progress=progress)




def _train_zoo_model(samples_parquet, arch_spec, out_dir, *, epochs, batch_size, lr, seed, holdout_fraction,
                     weight_decay, split_seed, device, progress) -> dict:
    t0 = time.perf_counter()
    spec = normalize_arch_spec(arch_spec)
    df, meta = read_samples(samples_parquet)
    _image_rows(df)
    model, processor = build_model(spec, seed=seed)
    dev = pick_device({"device": device})
    model.to(dev)
    layout = A.layout_from_config(model.config)
    targets = A.encode_targets(df, layout).to(dev)
    held = torch.from_numpy(holdout_mask(df["sample_id"].tolist(), holdout_fraction, split_seed)).to(dev)
    pixels = load_pixels(processor, df["image"].tolist()).to(dev)
    untrained = _score(model, pixels[held], targets[held], layout)

    t_train = time.perf_counter()
    curve = _fit(model, pixels[~held], targets[~held], layout, epochs=int(epochs), batch_size=int(batch_size),
                 lr=float(lr), weight_decay=float(weight_decay), seed=seed, progress=progress,
                 desc=f"train {spec['arch']} w{spec['width']} d{spec['depth']} s{seed}")
    train_time = time.perf_counter() - t_train

    metrics = {
        "arch": spec,
        "seed": int(seed),
        "split_seed": int(split_seed),
        "holdout_fraction": float(holdout_fraction),
        "n_train": int((~held).sum()),
        "n_holdout": int(held.sum()),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "train_loss": curve,
        "holdout": _score(model, pixels[held], targets[held], layout),
        "untrained_holdout": untrained,
        "chance_holdout": A.majority_baseline(targets[~held], targets[held], layout),
        "train": _score(model, pixels[~held], targets[~held], layout),
        "dataset": meta.get("dataset"),
        "dataset_sha256": meta.get("content_sha256"),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "train_time_s": train_time,
        "packages": package_versions(("convergence", "torch", "transformers", "numpy")),
    }
    h = metrics["holdout"]["mean_accuracy"]
    print(f"held-out mean attribute accuracy {h:.3f} (untrained {untrained['mean_accuracy']:.3f}, "
          f"majority {metrics['chance_holdout']['mean_accuracy']:.3f}); trained in {train_time:.1f} s", flush=True)
    with atomic_path(out_dir) as tmp:
        model.cpu().save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        metrics["weights_sha256"] = sha256_file(Path(tmp) / "model.safetensors")
        metrics["wall_time_s"] = time.perf_counter() - t0
        (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
