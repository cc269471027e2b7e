"""Built-in expert vectors and the solver cross-check behind ``namex demo`` (S4–S10, docs/math.md).

The CLI and notebooks call these functions; nothing here is CLI-specific.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.result import NashSolution
from namex_ref.nash.solvers import SOLVERS, SolverName, solve_nash
from namex_ref.tables import format_table

__all__ = ["SolverCheck", "builtin_experts", "compare_solvers"]


def builtin_experts(seed: int = 0) -> tuple[Tensor, list[str]]:
    """Six built-in domain vectors τ (6, 64) float64 with named relationships, fixed by ``seed``.

    Two cooperating experts (cosine ≈ 0.9), two adversarial ones (cosine ≈ −0.6), one orthogonal
    to the rest's common direction, and one with norm 100× the others — so the bargain shows
    down-weighting of cooperators, up-weighting of adversaries and scale invariance (S9).
    """
    g = torch.Generator().manual_seed(seed)
    d = 64
    common = torch.randn(d, generator=g, dtype=torch.float64)
    common /= common.norm()

    def noise() -> Tensor:
        v = torch.randn(d, generator=g, dtype=torch.float64)
        unit: Tensor = v / v.norm()
        return unit

    coop1 = common + 0.35 * noise()
    coop2 = common + 0.35 * noise()
    adv_dir = noise()
    adv1 = 0.5 * common + adv_dir
    adv2 = 0.5 * common - 0.9 * adv_dir
    ortho = noise() + 0.2 * common
    big = 100.0 * (common + noise())
    taus = torch.stack([coop1, coop2, adv1, adv2, ortho, big])
    names = ["coop-1", "coop-2", "adversary-1", "adversary-2", "orthogonal", "large (×100)"]
    return taus, names


@dataclass(frozen=True)
class SolverCheck:
    """One solver's answer on a problem, checked against Newton's α (:func:`compare_solvers`)."""

    method: str
    solution: NashSolution
    seconds: float
    max_rel_diff: float  # max_i |α_i − α_i^newton| / α_i^newton


def compare_solvers(K: Tensor, methods: tuple[SolverName, ...] = SOLVERS) -> list[SolverCheck]:
    """Solve K (N, N) with every method and compare α against Newton's."""
    rows: list[SolverCheck] = []
    ref = solve_nash(K, method="newton").alpha
    for m in methods:
        if m == "closed_form" and K.shape[-1] != 2:
            continue
        t0 = time.perf_counter()
        sol = solve_nash(K, method=m)
        dt = time.perf_counter() - t0
        diff = float(((sol.alpha - ref) / ref).abs().max())
        rows.append(SolverCheck(m, sol, dt, diff))
    return rows


def run_demo(seed: int = 0) -> str:
    """``namex demo`` (``make solvers-demo``): bargain the built-in experts, cross-check every
    solver."""
    taus, names = builtin_experts(seed)
    K = gram_matrix(taus)
    rows = compare_solvers(K)
    newton = rows[0].solution
    alpha = newton.alpha
    u = taus @ (alpha @ taus)  # u_i = τ_iᵀΔE, ΔE = Gα (S4, unscaled: ‖ΔE‖ = √N)
    norms = taus.norm(dim=1)
    cos = (K / torch.outer(norms, norms)).to(torch.float64)
    out = ["Nash bargain over the built-in experts (S4 of docs/math.md: Kα = 1/α, ΔE = Σ α_i τ_i)",
           ""]
    out.append(format_table(
        ["expert", "‖τ_i‖", "α_i", "α_i‖τ_i‖", "u_i = τ_iᵀΔE", "α_i·u_i (S7: 1)"],
        [[n, f"{float(norms[i]):.3g}", f"{float(alpha[i]):.6g}",
          f"{float(alpha[i] * norms[i]):.6g}", f"{float(u[i]):.6g}",
          f"{float(alpha[i] * u[i]):.12f}"] for i, n in enumerate(names)],
    ))
    out += ["", "cosine similarities of the experts:", format_table(
        ["", *names], [[n, *(f"{float(c):+.2f}" for c in cos[i])] for i, n in enumerate(names)]
    )]
    out += ["", "solver cross-check (max relative difference of α against newton):",
            format_table(
                ["method", "residual", "converged", "iterations", "status", "max rel diff",
                 "time"],
                [[r.method, f"{float(r.solution.residual):.2e}", str(r.solution.all_converged),
                  str(r.solution.iterations), r.solution.status, f"{r.max_rel_diff:.2e}",
                  f"{r.seconds * 1e3:.1f} ms"] for r in rows],
            )]
    mean_u = taus @ taus.mean(0)
    out += ["", f"‖ΔE‖² = {float((alpha @ taus).pow(2).sum()):.12f} (S7: N = {len(names)})",
            f"mean merging gives utilities {[round(float(x), 3) for x in mean_u]}"]
    return "\n".join(out)
