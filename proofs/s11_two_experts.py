"""S11: closed form of the bargain for two experts.

Claim (S11, S6, docs/math.md). For N = 2, K = [[a, b], [b, c]] with a, c > 0 and cosine
ρ = b/√(ac) ∈ (−1, 1], the unique positive solution of Kα = 1/α is

    α_1 = 1/√(a(1 + ρ)),   α_2 = 1/√(c(1 + ρ)),

i.e. α_i = 1/(‖τ_i‖·√(1 + cos∠(τ_1, τ_2))). Derived here with sympy.solve on the polynomial
system α_i(Kα)_i = 1 over the reals (s = 1 + ρ > 0 as the parameter): of its four real
solutions, two have α_1α_2 = 1/(s√(ac)) (the ± pair of the closed form, exactly one positive)
and two have α_1α_2 = −1/((1 − ρ)√(ac)) < 0 (never positive). As ρ → −1⁺ (anti-parallel
experts) α diverges; at ρ = −1, v = (√c, √a) > 0 has Kv = 0, the S6 certificate that no bargain
exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual


def main() -> None:
    a, c, s = sp.symbols("a c s", positive=True)  # s = 1 + ρ > 0
    rho = sp.Symbol("rho", real=True)
    y1, y2 = sp.symbols("alpha1 alpha2", real=True)
    b = (s - 1) * sp.sqrt(a * c)
    K = sp.Matrix([[a, b], [b, c]])
    y = sp.Matrix([y1, y2])
    # α_i(Kα)_i − 1 = 0 is Kα = 1/α multiplied by α_i ≠ 0: a polynomial system.
    poly = [sp.expand(y[i] * (K * y)[i] - 1) for i in range(2)]
    sols = sp.solve(poly, [y1, y2], dict=True)
    check_true("S11: the polynomial system has 4 real solution branches", len(sols) == 4)

    closed = sp.Matrix([1 / sp.sqrt(a * s), 1 / sp.sqrt(c * s)])
    positive: list[sp.Matrix] = []
    same = mixed = 0
    for sol in sols:
        x = sp.Matrix([sp.simplify(sol[y1]), sp.simplify(sol[y2])])
        prod = sp.simplify(x[0] * x[1])
        if sp.simplify(prod - 1 / (s * sp.sqrt(a * c))) == 0:
            # Same-sign branch: ±(closed form).
            check_true(
                "S11: same-sign branch has a definite sign",
                x[0].is_positive is True or x[0].is_negative is True,
            )
            sign = 1 if x[0].is_positive else -1
            same += 1
            check("S11: same-sign branch is +-(closed form)", x - sign * closed)
            if sign == 1:
                check_true("S11: alpha_2 > 0 on the positive branch", x[1].is_positive)
                positive.append(x)
        else:
            # Mixed branch: α_1α_2·(1 − ρ)√(ac) = −1, so α_1α_2 < 0 whenever ρ < 1.
            check(
                "S11: mixed branch has alpha1*alpha2*(1 - rho)*sqrt(ac) = -1",
                prod * (2 - s) * sp.sqrt(a * c) + 1,
            )
            mixed += 1
    check_true("S11: 2 same-sign and 2 mixed-sign branches", (same, mixed) == (2, 2))
    check_true("S11: exactly one positive solution", len(positive) == 1)
    check("S11: it solves K alpha = 1/alpha", residual(K, closed))

    # In terms of ρ and of (a, b, c).
    a1 = 1 / sp.sqrt(a * (1 + rho))
    a2 = 1 / sp.sqrt(c * (1 + rho))
    b_sym = sp.Symbol("b", real=True)
    check(
        "S11: a(1 + rho) = a + b*sqrt(a/c)",
        (a * (1 + rho)).subs(rho, b_sym / sp.sqrt(a * c)) - (a + b_sym * sp.sqrt(a / c)),
    )
    k_rho = sp.Matrix([[a, rho * sp.sqrt(a * c)], [rho * sp.sqrt(a * c), c]])
    check(
        "S11: closed form in rho solves K alpha = 1/alpha (rho > -1)",
        residual(k_rho, sp.Matrix([a1, a2])).subs(rho, s - 1),
    )
    print(f"S11 closed form: alpha1 = {a1}, alpha2 = {a2}, rho = b/sqrt(a*c) > -1")

    # ρ → −1⁺: no bargain between anti-parallel experts.
    check_true("S11: alpha1 -> oo as rho -> -1+", sp.limit(a1, rho, -1, "+") == sp.oo)
    check_true("S11: alpha2 -> oo as rho -> -1+", sp.limit(a2, rho, -1, "+") == sp.oo)
    k_anti = k_rho.subs(rho, -1)
    v = sp.Matrix([sp.sqrt(c), sp.sqrt(a)])
    check("S6/S11: at rho = -1, K v = 0 with v = (sqrt c, sqrt a) > 0", k_anti * v)
    print("PROVED: S11 two-expert closed form, unique positive root, divergence at rho -> -1")


if __name__ == "__main__":
    main()
