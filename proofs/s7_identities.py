"""S7: identities at the solution of Kα = 1/α.

Claim (S7, docs/math.md). With G = [τ_1 … τ_N], K = GᵀG and α > 0 solving Kα = 1/α:
u_i = τ_iᵀGα = (Kα)_i = 1/α_i, α_i u_i = 1 and ‖Gα‖² = αᵀKα = Σ_i α_i(Kα)_i = N.

Two steps, for N = 2, 3, 4:
1. identities valid for every α (symbolic τ_i ∈ R^N): u = GᵀGα = Kα, ‖Gα‖² = αᵀKα =
   Σ_i α_i(Kα)_i;
2. on the solution set: solving the equations Kα = 1/α for the diagonal entries K_ii (sympy.solve)
   parametrises every (K, α) pair that satisfies them by (α, off-diagonal K); substituting that
   parametrisation gives α_i(Kα)_i = 1 and αᵀKα = N identically.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual, symmetric


def _any_alpha(n: int) -> None:
    G = sp.Matrix(n, n, lambda r, c: sp.Symbol(f"t{c + 1}_{r + 1}", real=True))
    K = G.T * G
    alpha = sp.Matrix(sp.symbols(f"alpha1:{n + 1}", positive=True))
    g_alpha = G * alpha
    u = sp.Matrix([(G[:, i].T * g_alpha)[0, 0] for i in range(n)])  # u_i = τ_iᵀGα
    check(f"S7 N={n}: u_i = tau_i^T G alpha = (K alpha)_i", u - K * alpha)
    norm2 = (g_alpha.T * g_alpha)[0, 0]
    check(f"S7 N={n}: ||G alpha||^2 = alpha^T K alpha", norm2 - (alpha.T * K * alpha)[0, 0])
    check(
        f"S7 N={n}: alpha^T K alpha = sum_i alpha_i (K alpha)_i",
        (alpha.T * K * alpha)[0, 0] - sum(alpha[i] * (K * alpha)[i] for i in range(n)),
    )


def _on_solutions(n: int) -> None:
    K = symmetric("k", n, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{n + 1}", positive=True))
    diag = [K[i, i] for i in range(n)]
    sols = sp.solve(list(residual(K, alpha)), diag, dict=True)
    check_true(f"S7 N={n}: K alpha = 1/alpha solved uniquely for diag(K)", len(sols) == 1)
    Ks = K.subs(sols[0])
    check(f"S7 N={n}: parametrisation satisfies K alpha = 1/alpha", residual(Ks, alpha))
    u = Ks * alpha  # = τ_iᵀGα by step 1
    for i in range(n):
        check(f"S7 N={n}: u_{i + 1} = 1/alpha_{i + 1}", u[i] - 1 / alpha[i])
        check(f"S7 N={n}: alpha_{i + 1} u_{i + 1} = 1", alpha[i] * u[i] - 1)
    check(f"S7 N={n}: ||G alpha||^2 = alpha^T K alpha = N", (alpha.T * Ks * alpha)[0, 0] - n)


def main() -> None:
    for n in (2, 3, 4):
        _any_alpha(n)
        _on_solutions(n)
    print("PROVED: S7 u_i = 1/alpha_i, alpha_i u_i = 1, ||G alpha||^2 = N at Kalpha = 1/alpha")


if __name__ == "__main__":
    main()
