"""Benchmark 3: training-step time and memory of every method vs SMoE and
EP-CAMEx, profile, host syncs.

Thin script over the same entry point as ``namex bench step``; options as there
(--out, --quick, --device, --threads, --repeats).
Example: ``python benchmarks/bench_step.py --out results``.
"""

import sys

from namex_ref.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["step", *sys.argv[1:]]))
