"""Shared helpers for the symbolic proofs in ``proofs/``.

Each ``proofs/s*.py`` script checks one claim of docs/math.md (tags S3–S19) with sympy. Run one
as a script, ``python proofs/s5_convexity.py`` (from any directory), or as a module from the
repository root, ``python -m proofs.s5_convexity``; ``tests/test_proofs.py`` runs them all both
ways.
"""

from __future__ import annotations

from typing import TypeAlias

import sympy as sp

Checkable: TypeAlias = "sp.Expr | sp.MatrixBase"


def _is_zero(expr: sp.Expr) -> bool:
    """True when ``expr`` simplifies to exactly 0 (cheap rewrites first, then simplify)."""
    expr = sp.sympify(expr)
    # Only assumption-respecting rewrites: nothing here uses force=True.
    return any(rewrite(expr) == 0 for rewrite in (sp.expand, sp.cancel, sp.simplify))


def check(name: str, expr_is_zero: Checkable) -> None:
    """Assert that ``expr_is_zero`` (a scalar or every entry of a matrix) simplifies to 0.

    Prints ``PROVED: <name>`` on success; raises AssertionError with the unsimplified residual
    otherwise.
    """
    entries = list(expr_is_zero) if isinstance(expr_is_zero, sp.MatrixBase) else [expr_is_zero]
    bad = [e for e in entries if not _is_zero(e)]
    if bad:
        raise AssertionError(f"NOT PROVED: {name}; residual does not simplify to 0: {bad}")
    print(f"PROVED: {name}")


def check_true(name: str, statement: bool | None) -> None:
    """Assert a boolean fact computed by sympy (e.g. ``expr.is_positive``); print PROVED."""
    if statement is not True:
        raise AssertionError(f"NOT PROVED: {name}; sympy returned {statement!r}")
    print(f"PROVED: {name}")


def residual(K: sp.MatrixBase, alpha: sp.MatrixBase) -> sp.MatrixBase:
    """The S4 residual Kα − 1/α (element-wise reciprocal), as an N×1 matrix."""
    return K * alpha - alpha.applyfunc(lambda a: 1 / a)


def symmetric(name: str, n: int, **assumptions: bool) -> sp.Matrix:
    """A generic symmetric n×n matrix of symbols name_ij (i ≤ j)."""
    entries = {
        (i, j): sp.Symbol(f"{name}{i + 1}{j + 1}", **assumptions)
        for i in range(n)
        for j in range(i, n)
    }
    return sp.Matrix(n, n, lambda i, j: entries[(min(i, j), max(i, j))])


def symbolic_experts(n: int, d: int) -> tuple[sp.Matrix, sp.Matrix]:
    """G = [τ_1 … τ_N] with generic real symbols t<i>_<r> (d × n) and its Gram K = GᵀG (S2)."""
    G = sp.Matrix(d, n, lambda r, c: sp.Symbol(f"t{c + 1}_{r + 1}", real=True))
    return G, G.T * G
