"""S8: orthogonal experts (K diagonal) have α_i = 1/√K_ii = 1/‖τ_i‖.

Claim (S8, docs/math.md). If K = diag(k_1, …, k_N) with k_i > 0, then Kα = 1/α decouples into
k_i α_i = 1/α_i, whose only positive root is α_i = 1/√k_i; since k_i = K_ii = ‖τ_i‖², this is
α_i = 1/‖τ_i‖. Checked for N = 3: sympy.solve over α > 0 returns exactly that root, and an explicit
symbolic orthogonal family τ_1 = (a, b, 0), τ_2 = s(−b, a, 0), τ_3 = (0, 0, c) has diagonal K
and α_i = 1/‖τ_i‖ solves its equations.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual

N = 3


def main() -> None:
    k = sp.symbols(f"k1:{N + 1}", positive=True)
    K = sp.diag(*k)
    alpha_pos = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    sols = sp.solve(list(residual(K, alpha_pos)), list(alpha_pos), dict=True)
    check_true(
        "S8: exactly one positive solution of K alpha = 1/alpha for diagonal K", len(sols) == 1
    )
    closed = sp.Matrix([1 / sp.sqrt(ki) for ki in k])
    check(
        "S8: the positive solution is alpha_i = 1/sqrt(K_ii)",
        sp.Matrix([sols[0][a] for a in alpha_pos]) - closed,
    )
    # Without the positivity assumption each coordinate has exactly the two roots ±1/√k_i.
    a = sp.Symbol("a", real=True)
    roots = sp.solve(k[0] * a - 1 / a, a)
    check_true("S8: k a = 1/a has exactly the two real roots +-1/sqrt(k)", len(roots) == 2)
    check_true(
        "S8: the roots are +-1/sqrt(k)", set(roots) == {1 / sp.sqrt(k[0]), -1 / sp.sqrt(k[0])}
    )

    # A symbolic orthogonal family: K is diagonal and α_i = 1/‖τ_i‖ solves Kα = 1/α.
    av, bv, cv, s = sp.symbols("a b c s", positive=True)
    taus = [sp.Matrix([av, bv, 0]), s * sp.Matrix([-bv, av, 0]), sp.Matrix([0, 0, cv])]
    G = sp.Matrix.hstack(*taus)
    Kg = G.T * G
    check("S8: this family has diagonal K", Kg - sp.diag(*[Kg[i, i] for i in range(N)]))
    alpha = sp.Matrix([1 / sp.sqrt((t.T * t)[0, 0]) for t in taus])
    check("S8: alpha_i = 1/||tau_i|| solves K alpha = 1/alpha", residual(Kg, alpha))
    print("PROVED: S8 K diagonal => alpha_i = 1/||tau_i||, the unique positive root")


if __name__ == "__main__":
    main()
