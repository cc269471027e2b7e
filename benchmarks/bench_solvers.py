"""Benchmark 1: solver time per problem and residual, ratios against ccp.

Thin script over the same entry point as ``namex bench solvers``; options as there
(--out, --quick, --device, --threads, --repeats).
Example: ``python benchmarks/bench_solvers.py --out results``.
"""

import sys

from namex_ref.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["solvers", *sys.argv[1:]]))
