"""Benchmark 4: step cost against N experts, expert size d and depth L, fitted exponents.

Thin script over the same entry point as ``namex bench scaling``; options as there
(--out, --quick, --device, --threads, --repeats).
Example: ``python benchmarks/bench_scaling.py --out results``.
"""

import sys

from namex_ref.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["scaling", *sys.argv[1:]]))
