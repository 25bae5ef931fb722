"""Overhead of extraction (all hidden states, pooling, loss/bpb, Zarr writes) over a bare forward pass.

Same model, same samples, same length-sorted batches; the two are timed alternately, `--repeats` times,
and the medians compared. Target: ratio <= 1.10.

    python benchmarks/extract_overhead.py                      # SmolLM2-135M (packaged), 256 scenes captions
    python benchmarks/extract_overhead.py --model all-minilm-l6-v2 --n 512
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from convergence.datasets import read_samples, sample_dataset
from convergence.extract import TextInputs, extract_windows, plan_batches
from convergence.models import load_model


def bare_forward(lm, texts, lengths, chunk_size, batch_size, max_length):
    with torch.inference_mode():
        for _, _, batches in plan_batches(lengths, chunk_size, batch_size):
            for idx in batches:
                enc = lm.processor([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt")
                lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="an offline model name")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resources", default="resources")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="extract_bench_"))
    try:
        df, _ = read_samples(sample_dataset("scenes", {"sampler": "scenes", "n": args.n, "seed": 0}, tmp / "ds"))
        texts, ids = df["text"].tolist(), df["sample_id"].tolist()
        lm = load_model({"source": f"offline:{args.model}"}, args.resources)
        layers = list(range(lm.n_hidden_states))
        inputs = TextInputs(lm, texts, 128)
        lengths = inputs.lengths
        attrs = {"model": args.model, "dtype": "float32"}
        bare_forward(lm, texts[:32], lengths[:32], args.chunk_size, args.batch_size, 128)  # warm-up

        bare, full = [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            bare_forward(lm, texts, lengths, args.chunk_size, args.batch_size, 128)
            bare.append(time.perf_counter() - t)
            out = tmp / f"store{r}.zarr"
            t = time.perf_counter()
            extract_windows(inputs, ids, out, layers, "mean", args.batch_size, args.chunk_size, "float32", attrs,
                            progress=False)
            full.append(time.perf_counter() - t)
            shutil.rmtree(out)
        b, f = statistics.median(bare), statistics.median(full)
        print(f"model {args.model} ({lm.kind}, {lm.n_hidden_states} hidden states), n={args.n}, "
              f"batch {args.batch_size}, {args.threads} threads, {args.repeats} repeats")
        print(f"bare forward            median {b:7.2f} s   ({', '.join(f'{x:.2f}' for x in bare)})")
        print(f"extract all layers+Zarr median {f:7.2f} s   ({', '.join(f'{x:.2f}' for x in full)})")
        print(f"ratio extract / bare forward = {f / b:.3f}   (target <= 1.10)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
