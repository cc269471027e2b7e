"""S3/S4: the KKT conditions of the primal bargain reduce to Kα = 1/α.

Claim (S3, S4, docs/math.md). For the primal max Σ_i log(τ_iᵀΔE) s.t. ‖ΔE‖² ≤ ε² (G = [τ_1 … τ_N],
K = GᵀG, u_i = τ_iᵀΔE), with Lagrangian L = Σ log u_i − λ(‖ΔE‖² − ε²):

1. ∇_ΔE L = Σ_i τ_i/u_i − 2λΔE = G(1/u) − 2λΔE, so a KKT point has ΔE ∝ Σ_i τ_i/u_i.
2. The constraint is active: along tΔE the objective gains exactly N·log t (increasing in t).
3. Write ΔE = (ε/√N)·Gα. Then u = (ε/√N)·Kα and ‖ΔE‖² = (ε²/N)·Σ_i α_i(Kα)_i.
4. ∇L = G·r with r_i = 1/u_i − 2λ(ε/√N)α_i; G has full column rank (generic τ), so
   stationarity ⇔ r = 0 ⇔ α_i(Kα)_i = N/(2λε²) for every i. Summing and using ‖ΔE‖ = ε gives
   the multiplier λ = N/(2ε²), and then r = 0 ⇔ Kα = 1/α.
   Conversely α > 0 with Kα = 1/α gives a KKT point with λ = N/(2ε²) > 0 and ‖ΔE‖ = ε; the
   program is concave with a Slater point, so that KKT point is the optimum.

Checked symbolically for N = 2 with τ_i ∈ R³ and N = 3 with τ_i ∈ R⁴ (every entry a symbol).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, symbolic_experts


def _prove(n: int, d: int) -> None:
    tag = f"N={n}, d={d}"
    G, K = symbolic_experts(n, d)
    eps, lam, t = sp.symbols("epsilon lambda t", positive=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{n + 1}", positive=True))
    x = sp.Matrix(sp.symbols(f"x1:{d + 1}", real=True))  # the primal variable ΔE

    u_of_x = G.T * x
    obj = sum(sp.log(ui) for ui in u_of_x)
    lagr = obj - lam * ((x.T * x)[0, 0] - eps**2)
    grad_x = sp.Matrix([sp.diff(lagr, xi) for xi in x])

    # 1. ∇L = Σ τ_i/u_i − 2λΔE = G(1/u) − 2λΔE.
    inv_u = u_of_x.applyfunc(lambda v: 1 / v)
    check(f"{tag}: grad Lagrangian = G(1/u) - 2*lambda*dE", grad_x - (G * inv_u - 2 * lam * x))

    # 2. Along t·ΔE the objective gains exactly N·log t: increasing, so the ball is active.
    obj_t = sum(sp.log(ui) for ui in G.T * (t * x))
    check(f"{tag}: d/dt objective(t*dE) = N/t > 0", sp.diff(obj_t, t) - n / t)
    # u is linear in ΔE, and on the domain of the objective every u_i > 0 (positive symbols).
    check(f"{tag}: u(t*dE) = t*u(dE)", G.T * (t * x) - t * u_of_x)
    u_pos = sp.symbols(f"u1:{n + 1}", positive=True)
    gain = sum(sp.log(t * up) - sp.log(up) for up in u_pos) - n * sp.log(t)
    check(f"{tag}: objective(t*dE) - objective(dE) = N*log t", sp.expand_log(gain))

    # 3. The ansatz ΔE = (ε/√N)Gα.
    dE = eps / sp.sqrt(n) * G * alpha
    sub = dict(zip(x, dE, strict=True))
    u = u_of_x.subs(sub)
    ka = K * alpha
    check(f"{tag}: u = G^T dE = (eps/sqrt N) K alpha", u - eps / sp.sqrt(n) * ka)
    norm2 = (dE.T * dE)[0, 0]
    check(
        f"{tag}: ||dE||^2 = (eps^2/N) sum_i alpha_i (K alpha)_i",
        norm2 - eps**2 / n * sum(alpha[i] * ka[i] for i in range(n)),
    )

    # 4. ∇L at the ansatz is G·r, r_i = 1/u_i − 2λ(ε/√N)α_i.
    r = u.applyfunc(lambda v: 1 / v) - 2 * lam * eps / sp.sqrt(n) * alpha
    check(f"{tag}: grad = G*(1/u - 2*lambda*(eps/sqrt N)*alpha)", grad_x.subs(sub) - G * r)
    # G injective for generic τ: det(GᵀG) is not the zero polynomial (nonzero at G = [I; 0]).
    top_identity = {G[i, j]: sp.Integer(int(i == j)) for i in range(d) for j in range(n)}
    check_true(f"{tag}: det(G^T G) is not identically 0", K.det().subs(top_identity) != 0)

    # From here only (Kα)_i matters: name it w_i > 0 (it equals (√N/ε)u_i, u_i > 0 in the domain).
    w = sp.Matrix(sp.symbols(f"w1:{n + 1}", positive=True))
    r_w = r.subs(dict(zip(u, eps / sp.sqrt(n) * w, strict=True)))
    check(f"{tag}: r after u -> (eps/sqrt N) w", r - r_w.subs(dict(zip(w, ka, strict=True))))
    for i in range(n):
        # r_i = (2λε/(√N w_i))·(N/(2λε²) − α_i w_i), a nonzero factor times the level condition.
        level = n / (2 * lam * eps**2) - alpha[i] * w[i]
        check(
            f"{tag}: r_{i + 1} = 0 <=> alpha_{i + 1}(K alpha)_{i + 1} = N/(2 lambda eps^2)",
            r_w[i] - 2 * lam * eps / (sp.sqrt(n) * w[i]) * level,
        )

    # If α_i w_i = N/(2λε²) for all i then ‖ΔE‖² = ε²·N/(2λε²); ‖ΔE‖ = ε ⇒ λ = N/(2ε²).
    norm2_at_level = eps**2 / n * n * (n / (2 * lam * eps**2))
    lam_star = sp.solve(sp.Eq(norm2_at_level, eps**2), lam)
    check_true(f"{tag}: ||dE|| = eps has exactly one multiplier", len(lam_star) == 1)
    check(f"{tag}: lambda = N/(2 eps^2)", lam_star[0] - n / (2 * eps**2))

    # With λ = N/(2ε²): r_i = −(√N/(ε w_i))·α_i·(w_i − 1/α_i), zero ⇔ (Kα)_i = 1/α_i.
    for i in range(n):
        res_i = w[i] - 1 / alpha[i]  # the S4 residual (Kα − 1/α)_i
        check(
            f"{tag}: at lambda*, r_{i + 1} = -(sqrt N alpha_i/(eps w_i)) (K alpha - 1/alpha)_i",
            r_w[i].subs(lam, n / (2 * eps**2)) + sp.sqrt(n) * alpha[i] / (eps * w[i]) * res_i,
        )


def main() -> None:
    _prove(2, 3)
    _prove(3, 4)
    print("PROVED: S3/S4 KKT of the primal <=> K alpha = 1/alpha, lambda = N/(2 eps^2)")


if __name__ == "__main__":
    main()
