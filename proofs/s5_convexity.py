"""S5/S6: gradient, Hessian and convexity of f(α) = ½αᵀKα − Σ log α_i; unboundedness (S6).

Claims (S5, S6, docs/math.md), for N = 3 with a generic symmetric K:

- ∇f = Kα − 1/α, so ∇f = 0 on α > 0 is exactly Kα = 1/α (S4).
- ∇²f = K + diag(α⁻²), and vᵀ∇²f v = vᵀKv + Σ_i v_i²/α_i². For K PSD the first term is ≥ 0 and
  the second is > 0 for real v ≠ 0, so ∇²f ≻ 0 and f is strictly convex on α > 0 (hence at most
  one minimiser).
- S6: if Gv = 0 with v ≥ 0, v ≠ 0, then Kv = 0 and f(α + tv) = f(α) − Σ_i log(1 + t v_i/α_i),
  which → −∞ as t → ∞: f is unbounded below and no bargain exists. Checked with the generic
  expansion f(α+tv) = f(α) + t(Kα)ᵀv + ½t²vᵀKv − Σ log(1 + t v_i/α_i) and a symbolic G whose
  columns satisfy Gv = 0 (τ_3 = −(pτ_1 + qτ_2)/r, v = (p, q, r), p, q, r > 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual, symmetric

N = 3


def f(K: sp.MatrixBase, alpha: sp.MatrixBase) -> sp.Expr:
    """S5 objective ½αᵀKα − Σ log α_i."""
    return sp.Rational(1, 2) * (alpha.T * K * alpha)[0, 0] - sum(sp.log(a) for a in alpha)


def _gradient_and_hessian() -> None:
    K = symmetric("k", N, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    fa = f(K, alpha)
    grad = sp.Matrix([sp.diff(fa, a) for a in alpha])
    check("S5: grad f = K alpha - 1/alpha", grad - residual(K, alpha))
    hess = sp.hessian(fa, list(alpha))
    diag_inv_sq = sp.diag(*[a**-2 for a in alpha])
    check("S5: hess f = K + diag(alpha^-2)", hess - (K + diag_inv_sq))

    v = sp.Matrix(sp.symbols(f"v1:{N + 1}", real=True))
    quad = (v.T * hess * v)[0, 0]
    barrier = sum(v[i] ** 2 / alpha[i] ** 2 for i in range(N))
    check("S5: v^T hess v = v^T K v + sum v_i^2/alpha_i^2", quad - (v.T * K * v)[0, 0] - barrier)
    check_true("S5: sum v_i^2/alpha_i^2 >= 0 for real v, alpha > 0", barrier.is_nonnegative)
    # v ≠ 0 ⇒ some v_j ≠ 0 ⇒ that term alone is > 0 (the others are ≥ 0).
    for j in range(N):
        vj = sp.Symbol(f"v{j + 1}", nonzero=True, real=True)
        check_true(
            f"S5: v_{j + 1} != 0 makes sum v_i^2/alpha_i^2 > 0",
            barrier.subs(v[j], vj).is_positive,
        )
    # A PSD K written as LᵀL (here L generic 3x3): vᵀKv = ‖Lv‖² ≥ 0.
    L = sp.Matrix(N, N, lambda i, j: sp.Symbol(f"l{i + 1}{j + 1}", real=True))
    lv_sq = sum(c**2 for c in L * v)
    check("S5: v^T (L^T L) v = ||L v||^2", (v.T * L.T * L * v)[0, 0] - lv_sq)
    check_true("S5: ||L v||^2 >= 0 for real L, v", lv_sq.is_nonnegative)


def _unbounded_along_kernel() -> None:
    K = symmetric("k", N, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    v = sp.Matrix(sp.symbols(f"v1:{N + 1}", nonnegative=True))
    t = sp.Symbol("t", positive=True)
    expansion = (
        f(K, alpha)
        + t * ((K * alpha).T * v)[0, 0]
        + sp.Rational(1, 2) * t**2 * (v.T * K * v)[0, 0]
        - sum(sp.log(1 + t * v[i] / alpha[i]) for i in range(N))
    )
    diff = f(K, alpha + t * v) - expansion
    check("S6: f(alpha + t v) expansion", sp.expand(sp.expand_log(diff)))

    # A symbolic G with Gv = 0, v > 0: τ_3 = −(pτ_1 + qτ_2)/r.
    p, q, r = sp.symbols("p q r", positive=True)
    tau1 = sp.Matrix(sp.symbols("a1:3", real=True))
    tau2 = sp.Matrix(sp.symbols("b1:3", real=True))
    tau3 = -(p * tau1 + q * tau2) / r
    G = sp.Matrix.hstack(tau1, tau2, tau3)
    vk = sp.Matrix([p, q, r])
    check("S6: G v = 0", G * vk)
    Kg = G.T * G
    check("S6: K v = G^T G v = 0", Kg * vk)
    check("S6: (K alpha)^T v = 0", ((Kg * alpha).T * vk)[0, 0])
    check("S6: v^T K v = 0", (vk.T * Kg * vk)[0, 0])
    along = (
        f(Kg, alpha + t * vk)
        - f(Kg, alpha)
        + sum(sp.log(1 + t * vk[i] / alpha[i]) for i in range(N))
    )
    check(
        "S6: f(alpha + t v) = f(alpha) - sum log(1 + t v_i/alpha_i)",
        sp.expand(sp.expand_log(along)),
    )
    drop = -sum(sp.log(1 + t * vk[i] / alpha[i]) for i in range(N))
    lim = sp.limit(drop, t, sp.oo)
    check_true("S6: f(alpha + t v) - f(alpha) -> -oo as t -> oo", lim == -sp.oo)
    # Only one positive v_i is needed: each −log(1 + t v_i/α_i) ≤ 0, one of them → −∞.
    one = sp.limit(-sp.log(1 + t * p / alpha[0]), t, sp.oo)
    check_true("S6: a single v_i > 0 already gives -oo", one == -sp.oo)


def main() -> None:
    _gradient_and_hessian()
    _unbounded_along_kernel()
    print("PROVED: S5 grad/hess/strict convexity and S6 unboundedness along Gv = 0, v >= 0")


if __name__ == "__main__":
    main()
