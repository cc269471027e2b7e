"""S18 ≡ S17: quaternion momentum with real inputs is complex momentum with β_c = Re β + i‖Im β‖.

Claim (S17, S18, docs/math.md). Quaternions are 4 real components (w, x, y, z) = w + xi + yj + zk
with the Hamilton product written out. The S18 step is μ ← β⊗μ + ΔE (ΔE real, i.e. in the real
part), E_m ← E_m + γ·Re(μ) with real γ, μ⁽¹⁾ = 0. Write β = b_0 + n·u with n = ‖Im β‖ and, when
n > 0, u = Im β / n a unit pure quaternion (u⊗u = −1). Then:

1. on span{1, u} the map μ ↦ β⊗μ has matrix [[b_0, −n], [n, b_0]] in the basis (1, u), which is
   the real 2×2 matrix of z ↦ β_c·z on ℂ with β_c = b_0 + i·n; ΔE only moves the 1-coordinate.
   So from μ = 0 and real ΔE, μ stays in span{1, u}, its coordinates (x, y) follow exactly the
   complex recursion z ← β_c z + ΔE with z = x + iy, and Re(μ) = x = Re(z).
2. 3 steps with symbolic β, ΔE⁽¹⁾…ΔE⁽³⁾, γ are also unrolled and compared with S17 directly.
3. Im β = 0: β⊗μ = b_0·μ, μ stays real, and the recursion is heavy ball μ ← b_0μ + ΔE, which is
   S17 with β_c = b_0 = Re β + i‖Im β‖.
Remark (checked too): β_c and its conjugate give the same Re(μ) sequence for real inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeAlias

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true

Quat: TypeAlias = sp.Matrix  # 4×1 real components (w, x, y, z)


def hamilton(p: Quat, q: Quat) -> Quat:
    """Hamilton product p⊗q of quaternions given as (w, x, y, z) column vectors."""
    a1, b1, c1, d1 = p
    a2, b2, c2, d2 = q
    return sp.Matrix(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ]
    )


def _q(w: sp.Expr, x: sp.Expr = 0, y: sp.Expr = 0, z: sp.Expr = 0) -> Quat:
    return sp.Matrix([w, x, y, z])


def _hamilton_rules() -> None:
    one, i, j, k = _q(1), _q(0, 1), _q(0, 0, 1), _q(0, 0, 0, 1)
    for name, sq in (("i", i), ("j", j), ("k", k)):
        check(f"Hamilton: {name}^2 = -1", hamilton(sq, sq) + one)
    check("Hamilton: i j k = -1", hamilton(hamilton(i, j), k) + one)
    check("Hamilton: i j = k", hamilton(i, j) - k)
    check("Hamilton: j i = -k", hamilton(j, i) + k)
    p = sp.Matrix(sp.symbols("p0:4", real=True))
    q = sp.Matrix(sp.symbols("q0:4", real=True))
    r = sp.Matrix(sp.symbols("r0:4", real=True))
    check("Hamilton: associative", hamilton(hamilton(p, q), r) - hamilton(p, hamilton(q, r)))


def _complex_step(z: sp.Expr, beta_c: sp.Expr, delta: sp.Expr) -> sp.Expr:
    return sp.expand(beta_c * z + delta)


def _span_and_matrix() -> None:
    b0 = sp.Symbol("b0", real=True)
    b = sp.symbols("b1:4", real=True)
    n = sp.sqrt(b[0] ** 2 + b[1] ** 2 + b[2] ** 2)  # ‖Im β‖, assumed > 0 here
    beta = _q(b0, *b)
    one = _q(1)
    u = _q(0, *b) / n
    check("S18: u = Im(beta)/|Im(beta)| is a unit (u.u = 1)", (u.T * u)[0, 0] - 1)
    check("S18: u (x) u = -1", hamilton(u, u) + one)
    check("S18: beta = b0 + n u", beta - (b0 * one + n * u))

    # Matrix of μ ↦ β⊗μ on span{1, u}: images of the basis, then their coordinates.
    basis = [one, u]
    images = [hamilton(beta, e) for e in basis]
    M = sp.Matrix(2, 2, lambda r, c: sp.simplify((basis[r].T * images[c])[0, 0]))
    for c, img in enumerate(images):
        check(f"S18: beta (x) basis_{c} stays in span{{1, u}}", img - (M[0, c] * one + M[1, c] * u))
    check(
        "S18: matrix of beta(x). on (1, u) = [[b0, -n], [n, b0]]",
        M - sp.Matrix([[b0, -n], [n, b0]]),
    )
    # That is the real matrix of z ↦ β_c z, β_c = b0 + i n.
    x, y, dE = sp.symbols("x y Delta", real=True)
    beta_c = b0 + sp.I * n
    z_next = _complex_step(x + sp.I * y, beta_c, dE)
    step = M * sp.Matrix([x, y]) + sp.Matrix([dE, 0])
    check(
        "S18: (x, y) -> M(x, y) + (dE, 0) is z -> beta_c z + dE",
        sp.Matrix([sp.re(z_next), sp.im(z_next)]) - step,
    )
    mu = x * one + y * u
    check(
        "S18: beta (x) (x + y u) + dE = Re(beta_c z + dE) + Im(beta_c z + dE) u",
        hamilton(beta, mu) + dE * one - (sp.re(z_next) * one + sp.im(z_next) * u),
    )
    check_true("S18: Re(mu) is the 1-coordinate (u is pure)", u[0] == 0)


def _unrolled(beta: Quat, beta_c: sp.Expr, tag: str, steps: int = 3) -> None:
    gamma = sp.Symbol("gamma", real=True)
    deltas = sp.symbols(f"Delta1:{steps + 1}", real=True)
    e0 = sp.Symbol("E0", real=True)
    mu_q, e_q = _q(0), e0
    mu_c, mu_conj = sp.Integer(0), sp.Integer(0)
    e_c = e_conj = e0
    for t, d in enumerate(deltas, start=1):
        mu_q = hamilton(beta, mu_q) + _q(d)
        e_q = e_q + gamma * mu_q[0]
        mu_c = _complex_step(mu_c, beta_c, d)
        e_c = e_c + sp.re(gamma * mu_c)
        mu_conj = _complex_step(mu_conj, sp.conjugate(beta_c), d)
        e_conj = e_conj + sp.re(gamma * mu_conj)
        check(f"S18=S17 ({tag}) step {t}: Re(mu_q) = Re(mu_c)", mu_q[0] - sp.re(mu_c))
        check(f"S18=S17 ({tag}) step {t}: E_m sequences equal", e_q - e_c)
        check(f"S17 ({tag}) step {t}: conj(beta_c) gives the same E_m", e_conj - e_c)
        im_beta = beta[1:, 0]
        # μ stays in span{1, Im β}: its pure part is (Im μ_c / ‖Im β‖)·Im β.
        n2 = (im_beta.T * im_beta)[0, 0]
        if n2 != 0:
            pure = sp.im(mu_c) / sp.sqrt(n2) * im_beta
        else:
            pure = sp.zeros(3, 1)
        check(f"S18 ({tag}) step {t}: mu stays in span{{1, Im beta}}", mu_q[1:, 0] - pure)


def _real_beta() -> None:
    b0 = sp.Symbol("b0", real=True)
    beta = _q(b0)
    m = sp.Matrix(sp.symbols("m0:4", real=True))
    check("S18, Im beta = 0: beta (x) mu = b0 mu", hamilton(beta, m) - b0 * m)
    x, dE = sp.symbols("x Delta", real=True)
    check(
        "S18, Im beta = 0: real mu stays real (heavy ball b0 x + dE)",
        hamilton(beta, _q(x)) + _q(dE) - _q(b0 * x + dE),
    )
    _unrolled(beta, b0 + sp.I * 0, "Im beta = 0")


def main() -> None:
    _hamilton_rules()
    _span_and_matrix()
    b0 = sp.Symbol("b0", real=True)
    b = sp.symbols("b1:4", real=True)
    _unrolled(_q(b0, *b), b0 + sp.I * sp.sqrt(b[0] ** 2 + b[1] ** 2 + b[2] ** 2), "generic beta")
    _real_beta()
    print("PROVED: S18 == S17 with beta_c = Re(beta) + i|Im(beta)| (incl. Im(beta) = 0)")


if __name__ == "__main__":
    main()
