"""Command line: ``namex train | compare | methods | bench | demo | solve | momentum-grid | mtl |
convert | generate | eval``.

``train`` and ``compare`` come from :mod:`namex_ref.train.cli`, ``bench`` from
:mod:`namex_ref.benchmarks.cli`; the rest are defined here. Each command calls the public API
functions; nothing is computed here. Every parser is a :class:`namex_ref.cliparse.Parser`
(defaults in ``--help``, one-line errors). ``mtl`` comes from
:mod:`namex_ref.benchmarks.mtl_report`,
``convert``, ``generate`` and ``eval`` (Hugging Face models, the ``hf`` extra) from
:mod:`namex_ref.hf.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from namex_ref.train.builder import ModelBuilder
from namex_ref.train.config import TrainConfig

__all__ = ["build_parser", "main", "package_version"]


def package_version() -> str:
    """The installed distribution's version (``namex-ref``), else ``namex_ref.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("namex-ref")
    except metadata.PackageNotFoundError:
        from namex_ref import __version__

        return __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from namex_ref.demo import run_demo

    print(run_demo(seed=args.seed))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from namex_ref.merging.config import METHODS, describe_method

    width = max(map(len, METHODS))
    print(f"{'method':<{width}}  what it does (docs/math.md §3; M_i: curvature operators, "
          f"base: the base expert E_m)")
    for name in METHODS:
        print(f"{name:<{width}}  {describe_method(name)}")
    return 0


def _load_npy(path: Path) -> np.ndarray:
    """Read a numeric .npy array (no pickles), with errors that name the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"could not read {str(path)!r} as a .npy array ({exc.__class__.__name__}); save it "
            "with numpy.save(path, array) from a float array."
        ) from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ValueError(f"{str(path)!r} does not hold a real numeric array (dtype {arr.dtype}).")
    return arr


def _cmd_solve(args: argparse.Namespace) -> int:
    from namex_ref.nash import nash_bargain, solve_nash

    arr = _load_npy(args.path)
    if not args.taus and (arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]):
        raise ValueError(
            f"{str(args.path)!r} has shape {arr.shape}, not a Gram matrix K [..., N, N]; if it "
            f"holds domain vectors τ [N, d], add --taus (namex solve {args.path} --taus)"
        )
    if args.taus:  # the same route as the API's nash_bargain (checks name the expert)
        t = torch.from_numpy(arr)
        t = t if t.is_floating_point() else t.to(torch.float64)
        sol = nash_bargain(t, method=args.method, require_converged=False).solution
    else:
        sol = solve_nash(torch.from_numpy(arr), method=args.method)
    print(json.dumps({
        "method": sol.method,
        "alpha": sol.alpha.tolist(),
        "residual": sol.residual.tolist(),
        "converged": sol.converged.tolist(),
        "iterations": sol.iterations,
        "status": sol.status,
    }, indent=2))
    return 0


def _cmd_momentum_grid(args: argparse.Namespace) -> int:
    from namex_ref.spectral import momentum_grid_main
    from namex_ref.train.run import require_out_folder

    require_out_folder(args.out)

    path, table = momentum_grid_main(
        args.out, h_kind=args.h_kind, c=args.c, sigma=args.sigma, gamma=args.gamma,
        n_moduli=args.n_moduli, n_phases=args.n_phases,
    )
    print(table)
    print(f"wrote {path}")
    return 0


def _train_builder(config: TrainConfig) -> ModelBuilder | None:
    """The model builder of a ``namex train`` / ``compare`` run: Hugging Face's for
    ``--hf-model``, else ``None`` (the training package's default, the GPT presets)."""
    if not config.hf_model:
        return None
    from namex_ref.hf.training import HF_BUILDER

    return HF_BUILDER


def build_parser() -> argparse.ArgumentParser:
    """The ``namex`` argument parser."""
    from namex_ref.cliparse import Parser
    from namex_ref.nash.solvers import SOLVERS

    p = Parser(prog="namex", description="NAMEx reference implementation")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                   help="print the installed namex-ref version and exit")
    sub = p.add_subparsers(dest="command", required=True)  # sub-parsers: Parser too
    m = sub.add_parser("methods", help="list the merging methods, one line each")
    m.set_defaults(func=_cmd_methods)
    d = sub.add_parser("demo", help="bargain built-in experts and cross-check every solver")
    d.add_argument("--seed", type=int, default=0, help="seed of the built-in experts")
    d.set_defaults(func=_cmd_demo)
    s = sub.add_parser("solve", help="solve Kα = 1/α for a .npy file (K [..., N, N] or τ [N, d])")
    s.add_argument("path", type=Path, help="a .npy file written by numpy.save (float array)")
    s.add_argument("--taus", action="store_true", help="the file holds τ [N, d], not K")
    s.add_argument("--method", choices=SOLVERS, default="newton",
                   help="Nash solver")
    s.set_defaults(func=_cmd_solve)
    g = sub.add_parser("momentum-grid", help="ρ(R) over (|β|, φ) for a chosen H (S19), PNG")
    g.add_argument("--out", type=Path, default=Path("runs/momentum-grid"),
                   help="output folder of rho_grid.png")
    g.add_argument("--h-kind", choices=["cooperative", "bilinear", "both"], default="both",
                   help="the game's Jacobian H")
    g.add_argument("--c", type=float, default=1.0, help="H = cI (cooperative)")
    g.add_argument("--sigma", type=float, default=1.0, help="bilinear eigenvalues ±iσ")
    g.add_argument("--gamma", type=float, default=0.5, help="step size γ of S19")
    g.add_argument("--n-moduli", type=int, default=50,
                   help="grid points over |β| in [0, 0.99]")
    g.add_argument("--n-phases", type=int, default=73,
                   help="grid points over the phase φ in [−π, π]")
    g.set_defaults(func=_cmd_momentum_grid)
    from namex_ref.benchmarks.cli import register as register_bench
    from namex_ref.train.cli import register as register_train

    register_train(sub, builder_for=_train_builder)  # train, compare
    register_bench(sub)  # bench
    from namex_ref.benchmarks.mtl_report import register as register_mtl

    register_mtl(sub)  # mtl (Nash-MTL example)
    from namex_ref.hf.cli import register as register_hf

    register_hf(sub)  # convert, generate, eval (Hugging Face MoE models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``namex`` script. Errors of the library and of the file system
    (a full disk, a missing or unreadable file) are one line on stderr and exit status 2;
    an interrupt is one line and status 130 (training: 130 / 143 after a checkpoint)."""
    import signal

    from namex_ref.nash import BargainInputError, InfeasibleBargainError
    from namex_ref.train.interrupt import exit_status

    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except (BargainInputError, InfeasibleBargainError, ValueError, OSError, ImportError) as exc:
        print(f"namex: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training step, or a second one inside
        print("namex: interrupted", file=sys.stderr)
        return exit_status(signal.SIGINT)
    return rc


if __name__ == "__main__":
    sys.exit(main())
