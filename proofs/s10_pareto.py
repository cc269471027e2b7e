"""S10: the Nash bargain ΔE* = Gα is Pareto optimal in its ball.

Claim (S10, docs/math.md). Let α > 0 solve Kα = 1/α, ΔE* = Gα and u_i(x) = τ_iᵀx. No x with
‖x‖ ≤ ‖ΔE*‖ has u_i(x) ≥ u_i(ΔE*) for every i and u_j(x) > u_j(ΔE*) for some j. Moreover
ΔE* is the only point of the ball with u(x) ≥ u(ΔE*), so the linear programme
max Σ_i u_i(x) s.t. u(x) ≥ u(ΔE*), ‖x‖ ≤ ‖ΔE*‖ has optimum Σ_i u_i(ΔE*) (the certificate that
``tests/test_nash_solvers.py`` solves with ECOS).

Argument, each step checked with sympy for (N, d) = (2, 2), (2, 3) and (3, 4), every entry of
G = [τ_1 … τ_N], α and x a symbol:

1. Weighted-sum identity, valid for every α and x: with w = x − ΔE*,
       Σ_i α_i (u_i(x) − u_i(ΔE*)) = ⟨ΔE*, x⟩ − ‖ΔE*‖² = −½‖w‖² − ½(‖ΔE*‖² − ‖x‖²).
2. Inside the ball (‖x‖² ≤ ‖ΔE*‖²) the right side is ≤ 0, and < 0 unless x = ΔE*
   (checked with each coordinate of w non-zero in turn).
3. A dominating x has u(x) − u(ΔE*) = δ ≥ 0 with some δ_j > 0, so the left side Σ α_i δ_i > 0
   because α > 0: a contradiction. With δ = 0 the left side is 0, which forces x = ΔE* by 2.
4. Where the Nash condition enters (KKT, S3/S4): ∇_x Σ_i log u_i at x = Gα is G(1/(Kα)), and
       G(1/(Kα)) − Gα = −G·diag(α_i/(Kα)_i)·r,   r = Kα − 1/α,
   so at a solution (r = 0) the gradient of the Nash product is ΔE* itself, the outward normal
   of the ball at ΔE*: the Nash point is the ball's point where the positive weights of step 1
   are α_i = 1/u_i(ΔE*). Also ‖ΔE*‖² − N = αᵀr, so ‖ΔE*‖² = N at a solution (S7).

Remark: steps 1–3 use only α > 0 and ΔE* = Gα — every positive weighting gives a Pareto point
(it maximises Σ α_i u_i over the ball); the Nash condition of step 4 selects one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual, symbolic_experts


def _prove(n: int, d: int) -> None:
    tag = f"S10 N={n}, d={d}"
    G, K = symbolic_experts(n, d)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{n + 1}", positive=True))
    x = sp.Matrix(sp.symbols(f"x1:{d + 1}", real=True))
    e_star = G * alpha  # ΔE* = Gα
    u_star = G.T * e_star  # u_i(ΔE*) = τ_iᵀΔE*
    u_x = G.T * x

    def dot(a: sp.MatrixBase, b: sp.MatrixBase) -> sp.Expr:
        return (a.T * b)[0, 0]

    # 1. Weighted-sum identity, in terms of w = x − ΔE* and the radius gap.
    weighted_gain = sum(alpha[i] * (u_x[i] - u_star[i]) for i in range(n))
    w = x - e_star
    gap = dot(e_star, e_star) - dot(x, x)  # ≥ 0 inside the ball
    check(f"{tag}: sum alpha_i (u_i(x) - u_i*) = <dE*, x> - ||dE*||^2",
          weighted_gain - (dot(e_star, x) - dot(e_star, e_star)))
    check(f"{tag}: sum alpha_i (u_i(x) - u_i*) = -||w||^2/2 - (||dE*||^2 - ||x||^2)/2",
          weighted_gain - (-dot(w, w) / 2 - gap / 2))

    # 2. Sign inside the ball: with s = ||dE*||^2 - ||x||^2 >= 0 and w real, -(|w|^2 + s)/2 <= 0,
    #    and < 0 as soon as one coordinate of w is non-zero.
    s = sp.Symbol("s", nonnegative=True)
    ws = sp.symbols(f"w1:{d + 1}", real=True)
    rhs = -(sum(wi**2 for wi in ws) + s) / 2
    check_true(f"{tag}: right side <= 0 inside the ball", rhs.is_nonpositive)
    for j in range(d):
        wj = sp.Symbol(f"w{j + 1}", real=True, nonzero=True)
        strict = rhs.subs(ws[j], wj)
        check_true(f"{tag}: right side < 0 when x != dE* (w_{j + 1} != 0)", strict.is_negative)

    # 3. A dominating x: u(x) = u* + delta, delta >= 0, delta_j > 0 => sum alpha_i delta_i > 0.
    for j in range(n):
        delta = [
            sp.Symbol(f"delta{i + 1}", positive=True)
            if i == j
            else sp.Symbol(f"delta{i + 1}", nonnegative=True)
            for i in range(n)
        ]
        gain = sum(alpha[i] * delta[i] for i in range(n))
        check_true(f"{tag}: domination strict in u_{j + 1} gives a positive weighted gain",
                   gain.is_positive)

    # 4. KKT: the gradient of the Nash product's log at dE* = G alpha.
    log_nash = sum(sp.log(ui) for ui in u_x)
    grad = sp.Matrix([sp.diff(log_nash, xi) for xi in x]).subs(dict(zip(x, e_star, strict=True)))
    K_alpha = K * alpha
    r = residual(K, alpha)
    check(f"{tag}: grad sum log u_i at G alpha = G (1/(K alpha))",
          grad - G * K_alpha.applyfunc(lambda v: 1 / v))
    # With q = Kα (kept as symbols q_i > 0 so the rational identity stays small; r = q − 1/α):
    q = sp.Matrix(sp.symbols(f"q1:{n + 1}", positive=True))
    inv_q = q.applyfunc(lambda v: 1 / v)
    scale = sp.diag(*[alpha[i] / q[i] for i in range(n)])
    check(f"{tag}: G(1/q) - G alpha = -G diag(alpha/q) (q - 1/alpha), q = K alpha",
          G * inv_q - e_star + G * scale * (q - alpha.applyfunc(lambda a: 1 / a)))
    check(f"{tag}: u(dE*) - 1/alpha = r (so u_i* = 1/alpha_i at a solution)",
          u_star - alpha.applyfunc(lambda a: 1 / a) - r)
    check(f"{tag}: ||dE*||^2 - N = alpha^T r (= 0 at a solution, S7)",
          dot(e_star, e_star) - n - dot(alpha, r))


def _example() -> None:
    """An exact instance: τ_1 = (1, 0), τ_2 = (−1, √3) (120° apart), α from S11."""
    G = sp.Matrix([[1, -1], [0, sp.sqrt(3)]])
    K = G.T * G
    rho = K[0, 1] / sp.sqrt(K[0, 0] * K[1, 1])
    alpha = sp.Matrix([1 / sp.sqrt(K[i, i] * (1 + rho)) for i in range(2)])
    check("S10 example: the S11 closed form solves K alpha = 1/alpha", residual(K, alpha))
    e_star = G * alpha
    check("S10 example: ||dE*||^2 = N = 2", (e_star.T * e_star)[0, 0] - 2)
    # Every point of the circle ||x|| = sqrt 2: the weighted gain is 2(cos(t - t*) - 1) <= 0.
    t = sp.Symbol("t", real=True)
    t_star = sp.atan2(e_star[1], e_star[0])
    x = sp.sqrt(2) * sp.Matrix([sp.cos(t), sp.sin(t)])
    gain = sum(alpha[i] * ((G.T * x)[i] - (G.T * e_star)[i]) for i in range(2))
    check("S10 example: weighted gain on the circle = 2(cos(t - t*) - 1)",
          sp.expand_trig(gain - 2 * (sp.cos(t - t_star) - 1)))


def main() -> None:
    for n, d in ((2, 2), (2, 3), (3, 4)):
        _prove(n, d)
    _example()
    print("PROVED: S10 no point of the ball dominates dE* = G alpha; dE* is the only point with "
          "u(x) >= u(dE*), so the LP certificate's optimum is sum_i u_i(dE*)")


if __name__ == "__main__":
    main()
