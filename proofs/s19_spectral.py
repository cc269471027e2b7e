"""S19: the one-step matrix R of complex momentum and its characteristic polynomial.

Claim (docs/math.md §4, S19). For linear dynamics ΔE = −H(E − E*) and real γ, one step of S17
(μ' = βμ + ΔE, E' = E + Re(γμ')) on the real state [Re μ; Im μ; E − E*] is

    R = [[Re β·I, −Im β·I, −H], [Im β·I, Re β·I, 0], [Re(γβ)·I, −Im(γβ)·I, I − γH]],

and for a scalar h (an eigenvalue of H; every block of R is a polynomial in H, so the blocks
commute and spec(R) is the union over h ∈ spec(H) of the roots of the scalar 3×3 problem)

    det(λI − R) = λ³ − (1 + 2Re β − γh)λ² + (|β|² + 2Re β − γh·Re β)λ − |β|²,

which for real β is (λ − β)(λ² − (1 + β − γh)λ + β) (heavy ball).

Here R is first derived from the one-step update (Jacobian of the linear map) and compared with
the documented R, for scalar h and for a generic 2×2 H (where det(λI − R) = det(p_λ(H)), p_λ the
cubic with h replaced by H: the block-polynomial statement). Remark: for a complex γ the derived
R has first two columns Re(γβ), −Im(γβ) as written but corner I − Re(γ)·H; the documented I − γH
holds for real γ, which is what it assumes.

Quaternion analogue (S18): on the state [μ_0, μ_1, μ_2, μ_3; E − E*] with μ' = β⊗μ + ΔE·1,
E' = E + γ·Re μ', the 5×5 matrix is [[L(β), −h·e_0], [γ·e_0ᵀL(β), 1 − γh]] with L(β) the 4×4
left-multiplication matrix of β, and

    det(λI − R_ℍ) = cubic(β_c) · (λ² − 2Re β·λ + |β|²),   β_c = Re β + i‖Im β‖,

where the extra factor is (λ − β_c)(λ − conj β_c): the two buffer directions orthogonal to
span{1, Im β} are invariant under L(β) (acting there as multiplication by β_c), get no input
from E and do not feed Re μ. So ρ(R_ℍ) = max(ρ(R_ℂ with β_c), |β|).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check
from proofs.s17_s18_quaternion import hamilton

lam = sp.Symbol("lambda")


def cubic(br: sp.Expr, abs2: sp.Expr, gamma: sp.Expr, h: sp.Expr) -> sp.Expr:
    """The documented S19 cubic in λ for Re β = br, |β|² = abs2."""
    return (
        lam**3 - (1 + 2 * br - gamma * h) * lam**2 + (abs2 + 2 * br - gamma * h * br) * lam - abs2
    )


def spec_R(br: sp.Expr, bi: sp.Expr, gamma: sp.Expr, H: sp.Matrix) -> sp.Matrix:
    """R exactly as written in docs/math.md §4 (blocks of the size of H)."""
    n = H.shape[0]
    eye, zero = sp.eye(n), sp.zeros(n, n)
    gb = sp.expand(gamma * (br + sp.I * bi))
    return sp.Matrix(
        sp.BlockMatrix(
            [
                [br * eye, -bi * eye, -H],
                [bi * eye, br * eye, zero],
                [sp.re(gb) * eye, -sp.im(gb) * eye, eye - gamma * H],
            ]
        )
    )


def derived_R(br: sp.Expr, bi: sp.Expr, gamma: sp.Expr, H: sp.Matrix) -> sp.Matrix:
    """Jacobian of one S17 step on [Re μ; Im μ; E − E*] with ΔE = −H(E − E*)."""
    n = H.shape[0]
    xr = sp.Matrix(sp.symbols(f"xr1:{n + 1}", real=True))
    xi = sp.Matrix(sp.symbols(f"xi1:{n + 1}", real=True))
    e = sp.Matrix(sp.symbols(f"e1:{n + 1}", real=True))
    beta = br + sp.I * bi
    mu_next = (beta * (xr + sp.I * xi) - H * e).applyfunc(sp.expand)  # μ' = βμ + ΔE
    e_next = e + (gamma * mu_next).applyfunc(lambda v: sp.re(sp.expand(v)))  # E' = E + Re(γμ')
    new_state = sp.Matrix.vstack(mu_next.applyfunc(sp.re), mu_next.applyfunc(sp.im), e_next)
    state = list(xr) + list(xi) + list(e)
    return new_state.jacobian(state)


def _complex_case() -> None:
    br, bi, gamma, h = sp.symbols("b_r b_i gamma h", real=True)
    Hs = sp.Matrix([[h]])
    R = derived_R(br, bi, gamma, Hs)
    check(
        "S19: derived one-step R equals the documented R (scalar h, real gamma)",
        R - spec_R(br, bi, gamma, Hs),
    )
    charpoly = (lam * sp.eye(3) - R).det()
    check(
        "S19: det(lambda I - R) equals the documented cubic",
        charpoly - cubic(br, br**2 + bi**2, gamma, h),
    )
    beta = sp.Symbol("beta", real=True)
    heavy = (lam - beta) * (lam**2 - (1 + beta - gamma * h) * lam + beta)
    check(
        "S19: real beta: cubic = (lambda - beta)(lambda^2 - (1 + beta - gamma h)lambda + beta)",
        charpoly.subs({br: beta, bi: 0}) - heavy,
    )

    # Block version with a generic (non-symmetric) 2×2 H.
    H = sp.Matrix(2, 2, lambda i, j: sp.Symbol(f"h{i + 1}{j + 1}", real=True))
    R6 = derived_R(br, bi, gamma, H)
    check(
        "S19: derived R equals the documented block R (generic 2x2 H)",
        R6 - spec_R(br, bi, gamma, H),
    )
    abs2 = br**2 + bi**2
    eye = sp.eye(2)
    p_of_H = (
        lam**3 * eye
        - (1 + 2 * br) * lam**2 * eye
        + gamma * lam**2 * H
        + (abs2 + 2 * br) * lam * eye
        - gamma * br * lam * H
        - abs2 * eye
    )
    check(
        "S19: det(lambda I - R) = det(cubic_lambda(H)) (blocks are polynomials in H)",
        (lam * sp.eye(6) - R6).det(method="berkowitz") - p_of_H.det(),
    )

    # Complex γ: what the one-step map really gives (S19 assumes real γ).
    gr, gi = sp.symbols("g_r g_i", real=True)
    Rc = derived_R(br, bi, gr + sp.I * gi, Hs)
    gb = sp.expand((gr + sp.I * gi) * (br + sp.I * bi))
    expected = sp.Matrix([[br, -bi, -h], [bi, br, 0], [sp.re(gb), -sp.im(gb), 1 - gr * h]])
    check(
        "S19 remark: complex gamma gives corner 1 - Re(gamma) h, first columns as documented",
        Rc - expected,
    )


def _quaternion_case() -> None:
    b = sp.symbols("b0:4", real=True)
    gamma, h = sp.symbols("gamma h", real=True)
    m = sp.Matrix(sp.symbols("m0:4", real=True))
    e = sp.Symbol("e", real=True)
    beta = sp.Matrix(b)
    L = hamilton(beta, m).jacobian(list(m))  # left-multiplication matrix of β
    e0 = sp.Matrix([1, 0, 0, 0])
    mu_next = hamilton(beta, m) + (-h * e) * e0  # μ' = β⊗μ + ΔE, ΔE = −h e (real part)
    e_next = e + gamma * mu_next[0]  # E' = E + γ Re μ'
    R5 = sp.Matrix.vstack(mu_next, sp.Matrix([e_next])).jacobian([*m, e])
    corner = sp.Matrix([[1 - gamma * h]])
    built = sp.Matrix(sp.BlockMatrix([[L, -h * e0], [gamma * e0.T * L, corner]]))
    check("S19-Q: derived 5x5 R equals the block matrix built from L(beta)", R5 - built)
    abs2 = sum(bk**2 for bk in b)
    charpoly = (lam * sp.eye(5) - R5).det(method="berkowitz")
    quad = lam**2 - 2 * b[0] * lam + abs2
    check(
        "S19-Q: det(lambda I - R_H) = cubic(beta_c) * (lambda^2 - 2 Re(beta) lambda + |beta|^2)",
        charpoly - cubic(b[0], abs2, gamma, h) * quad,
    )
    n = sp.sqrt(b[1] ** 2 + b[2] ** 2 + b[3] ** 2)
    beta_c = b[0] + sp.I * n
    check(
        "S19-Q: Re(beta_c) = Re(beta), |beta_c|^2 = |beta|^2",
        sp.Matrix([sp.re(beta_c) - b[0], sp.expand(beta_c * sp.conjugate(beta_c)) - abs2]),
    )
    check(
        "S19-Q: extra factor = (lambda - beta_c)(lambda - conj(beta_c))",
        quad - sp.expand((lam - beta_c) * (lam - sp.conjugate(beta_c))),
    )

    # Where the factor comes from: w1 = (0, Im β × v) and w2 = u⊗w1 (u = Im β/n) are pure,
    # orthogonal to 1 and u, and β⊗ acts on span{w1, w2} as [[b0, −n], [n, b0]] (i.e. β_c).
    v = sp.Matrix(sp.symbols("v1:4", real=True))
    im_beta = sp.Matrix(b[1:])
    u = sp.Matrix([0, *im_beta]) / n
    w1 = sp.Matrix([0, *im_beta.cross(v)])
    w2 = hamilton(u, w1)
    check(
        "S19-Q: w1, w2 are pure and orthogonal to u and to each other",
        sp.Matrix([w2[0], (u.T * w1)[0, 0], (u.T * w2)[0, 0], (w1.T * w2)[0, 0]]),
    )
    check("S19-Q: beta (x) w1 = b0 w1 + n w2", hamilton(beta, w1) - (b[0] * w1 + n * w2))
    check("S19-Q: beta (x) w2 = -n w1 + b0 w2", hamilton(beta, w2) - (-n * w1 + b[0] * w2))


def main() -> None:
    _complex_case()
    _quaternion_case()
    print("PROVED: S19 one-step R and its characteristic cubic; quaternion 5x5 analogue")


if __name__ == "__main__":
    main()
