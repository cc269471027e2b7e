"""Benchmark 2: Gram formation GB/s against memory bandwidth, and the alpha solve next to it.

Thin script over the same entry point as ``namex bench gram``; options as there
(--out, --quick, --device, --threads, --repeats).
Example: ``python benchmarks/bench_gram.py --out results``.
"""

import sys

from namex_ref.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["gram", *sys.argv[1:]]))
