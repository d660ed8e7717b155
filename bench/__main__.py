"""`make bench`: every benchmark in turn, each printing its own table with ratios against its baseline.

    python -m bench [--only store,serving] [--with-train]

The full default training (`bench.train`, ~15 min on 2 cores) runs only with --with-train. Which model the
model-dependent benchmarks use is decided in bench/models.py (BENCH_MODEL_BASE_PATH, then `make up`'s models).
"""

from __future__ import annotations

import argparse
import importlib
import sys

ORDER = ["startup", "store", "serving", "preprocess", "hostile", "gateway", "scaleout"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(ORDER + ['train'])}")
    parser.add_argument("--with-train", action="store_true", help="also run the full default training")
    args = parser.parse_args(argv)
    names = ORDER + (["train"] if args.with_train else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(ORDER) - {"train"})
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in names:
        print(f"\n===== bench.{name} =====", flush=True)
        code = importlib.import_module(f"bench.{name}").main([])
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
