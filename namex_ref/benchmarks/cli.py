"""Sub-commands of ``namex`` contributed by this package (wired in :mod:`namex_ref.cli`):

``namex bench solvers|gram|step|scaling|memory|all [--out runs/bench] [--quick]
[--device auto|cpu|cuda] [--threads T] [--repeats R]`` — each target writes ``<target>.md`` and
``<target>.png`` in ``--out`` (``runs/bench`` by default; the committed reports are regenerated
with ``--out results``, ``make results``). From Python: :func:`run_target`; without the
``namex`` script: ``python -m namex_ref.benchmarks.cli <target> ...``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["TARGETS", "main", "register", "run_target"]

TARGETS = ("solvers", "gram", "step", "scaling", "memory")


def run_target(target: str, out: str | Path, *, quick: bool = False, device: str = "auto",
               repeats: int | None = None) -> tuple[Path, str]:
    """Run one benchmark target and write its report; return (markdown path, main table)."""
    from namex_ref.benchmarks import gram, merge_memory, scaling, solvers, step

    runners = {"solvers": solvers.run, "gram": gram.run, "step": step.run,
               "scaling": scaling.run, "memory": merge_memory.run}
    if target not in runners:
        raise ValueError(f"unknown benchmark target {target!r}; choose from {(*TARGETS, 'all')}")
    return runners[target](out, quick=quick, device=device, repeats=repeats)


def _cmd_bench(args: argparse.Namespace) -> int:
    from namex_ref.train.run import require_out_folder

    require_out_folder(args.out)  # a file given as --out: a named error, not FileExistsError
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    targets = TARGETS if args.target == "all" else (args.target,)
    for t in targets:
        t0 = time.perf_counter()
        path, table = run_target(t, args.out, quick=args.quick, device=args.device,
                                 repeats=args.repeats)
        print(table)
        print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` options (shared by ``namex bench`` and :func:`main`)."""
    p.add_argument("target", choices=[*TARGETS, "all"], help="which benchmark to run")
    p.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="folder of <target>.md and .png; --out results regenerates the "
                   "committed reports")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU, plus CUDA when present; cuda: GPU 0 only (pick the GPU with "
                   "CUDA_VISIBLE_DEVICES)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per candidate (default: each target's own)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's sub-commands to the ``namex`` parser."""
    b = sub.add_parser("bench", help="benchmark suite: solvers, Gram, training step, scaling, "
                       "merge memory")
    add_arguments(b)
    b.set_defaults(func=_cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m namex_ref.benchmarks.cli solvers ...``)."""
    from namex_ref.cliparse import Parser

    p = Parser(prog="namex bench")
    add_arguments(p)
    return _cmd_bench(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
