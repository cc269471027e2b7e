"""All four benchmarks (``namex bench all``): solvers, gram, step, scaling.

Example: ``python benchmarks/run_all.py --out results --threads 1``.
"""

import sys

from namex_ref.benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["all", *sys.argv[1:]]))
