"""S13–S17: the identities the merging layers rely on (namex_ref/merging/operators.py, plan.py).

Claims (S13–S17, docs/math.md), each checked symbolically:

1. Kronecker curvature (S14), row-major reshape. ``kronecker_apply`` reshapes τ (o1·o2, i1·i2)
   to t[a, b, c, d] = τ[a·o2 + b, c·i2 + d] and contracts
   t'[a, b, c, d] = Σ A[a,p] B[b,q] C[c,r] D[d,s] t[p, q, r, s]. This equals the matrix product
   (A⊗B) τ (C⊗D)ᵀ (⊗ = sympy's kronecker_product), and in row-major vectorisation
   vec(M_i τ) = (A⊗B⊗C⊗D) vec(τ) (the "vec trick" for row-major order: vec(XτYᵀ) = (X⊗Y)vec τ).
   Identity factors give M_i = I. Checked for (o1, o2, i1, i2) = (2, 2, 2, 2) and (2, 3, 1, 2).
2. S14 → S13: Ê = E_m + η Σ s_i M_i(E_i − E_m) with E_m = 0, M_i = I, η = 1 is Σ s_i E_i.
   Since Σ s_i = 1, η = 1 and M = I already give Σ s_i E_i for every E_m; with η ≠ 1 the
   difference is (1 − η)E_m, so both conditions matter in general.
3. S16 → S15: the NAMEx chain E_m' = E_m + γ Σ α_i τ_i with α_i = 1/N equals the EP-CAMEx chain
   E_m' = E_m + (γ/N) Σ_i M_i τ_i with M_i = I, unrolled over 3 layers with τ_i^(l) = E_i^(l) −
   E_m^(l) recomputed from the propagated base at each layer.
4. S17 with β = 0 is S16: μ' = βμ + ΔE, E_m' = E_m + Re(γμ') with μ^(1) = 0; unrolled over 3
   layers with complex β = b_r + i b_i, then b_r = b_i = 0 gives the S16 chain exactly (and a
   non-zero β does not).
5. Norms used by the layer's conventions (S7): at a solution of Kα = 1/α, αᵀKα = ‖Gα‖² = N, so
   the radius-ε update (ε/√N)·Gα has norm ε; the "uniform" policy α_i = c = √(N / 1ᵀK1) gives
   ‖Σ c τ_i‖² = c²·1ᵀK1 = N.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, symmetric

N = 3
LAYERS = 3


# --------------------------------------------------------------------------------------------
# 1. Kronecker curvature with the row-major reshape
# --------------------------------------------------------------------------------------------


def _square(name: str, k: int) -> sp.Matrix:
    return sp.Matrix(k, k, lambda i, j: sp.Symbol(f"{name}{i}{j}", real=True))


def _kronecker(o1: int, o2: int, i1: int, i2: int) -> None:
    A, B, C, D = _square("A", o1), _square("B", o2), _square("C", i1), _square("D", i2)
    tau = sp.Matrix(o1 * o2, i1 * i2, lambda r, c: sp.Symbol(f"t{r}_{c}", real=True))
    tag = f"({o1}x{o2}, {i1}x{i2})"

    # kronecker_apply: reshape row-major to t[a, b, c, d], contract the four factors, reshape back
    def t(a: int, b: int, c: int, d: int) -> sp.Expr:
        return tau[a * o2 + b, c * i2 + d]

    out = sp.zeros(o1 * o2, i1 * i2)
    for a, b, c, d in itertools.product(range(o1), range(o2), range(i1), range(i2)):
        out[a * o2 + b, c * i2 + d] = sum(
            A[a, p] * B[b, q] * C[c, r] * D[d, s] * t(p, q, r, s)
            for p, q, r, s in itertools.product(range(o1), range(o2), range(i1), range(i2))
        )
    kron_ab = sp.kronecker_product(A, B)
    kron_cd = sp.kronecker_product(C, D)
    check(
        f"S14 {tag}: row-major contraction = (A(x)B) tau (C(x)D)^T", out - kron_ab * tau * kron_cd.T
    )

    def vec(M: sp.Matrix) -> sp.Matrix:  # row-major vectorisation (torch's reshape(-1))
        return sp.Matrix([M[i, j] for i in range(M.rows) for j in range(M.cols)])

    big = sp.kronecker_product(sp.kronecker_product(kron_ab, C), D)
    check(f"S14 {tag}: vec_row(M tau) = (A(x)B(x)C(x)D) vec_row(tau)", vec(out) - big * vec(tau))
    ident = out.subs(
        {m[i, j]: int(i == j) for m in (A, B, C, D) for i in range(m.rows) for j in range(m.cols)}
    )
    check(f"S14 {tag}: identity factors give M = I", ident - tau)


# --------------------------------------------------------------------------------------------
# 2. S14 -> S13
# --------------------------------------------------------------------------------------------


def _vecs(name: str, n: int, dim: int = 2) -> list[sp.Matrix]:
    return [sp.Matrix(sp.symbols(f"{name}{i}_0:{dim}", real=True)) for i in range(n)]


def _s14_to_s13() -> None:
    E = _vecs("E", N)
    (Em,) = _vecs("Em", 1)
    s = sp.symbols(f"s1:{N + 1}", positive=True)
    eta = sp.Symbol("eta", positive=True)

    def camex(base: sp.Matrix, eta_: sp.Expr) -> sp.Matrix:
        return base + eta_ * sum(
            (si * (Ei - base) for si, Ei in zip(s, E, strict=True)), sp.zeros(2, 1)
        )

    smear = sum((si * Ei for si, Ei in zip(s, E, strict=True)), sp.zeros(2, 1))
    check("S14 -> S13: E_m = 0, M = I, eta = 1 gives sum s_i E_i", camex(sp.zeros(2, 1), 1) - smear)
    simplex = {s[-1]: 1 - sum(s[:-1])}
    check(
        "S14 -> S13: with sum s_i = 1, eta = 1 and M = I give sum s_i E_i for any E_m",
        (camex(Em, 1) - smear).subs(simplex),
    )
    check(
        "S14: with sum s_i = 1 the gap to SMEAR is (1 - eta)(E_m - sum s_i E_i)",
        (camex(Em, eta) - smear - (1 - eta) * (Em - smear)).subs(simplex),
    )


# --------------------------------------------------------------------------------------------
# 3. S16 -> S15 and 4. S17(beta = 0) = S16, unrolled over layers
# --------------------------------------------------------------------------------------------


def _experts_per_layer() -> list[list[sp.Symbol]]:
    return [list(sp.symbols(f"E{l}_1:{N + 1}", real=True)) for l in range(LAYERS)]


def _s16_to_s15() -> None:
    E = _experts_per_layer()
    gamma = sp.Symbol("gamma", positive=True)
    e_ep = e_nx = sp.Symbol("Em", real=True)
    alpha = [sp.Rational(1, N)] * N
    for l in range(LAYERS):
        # EP-CAMEx (S15), M = I: E_m' = E_m + (γ/N) Σ τ_i
        e_ep = e_ep + gamma / N * sum(Ei - e_ep for Ei in E[l])
        # NAMEx (S16): E_m' = E_m + γ Σ α_i τ_i with α_i = 1/N
        e_nx = e_nx + gamma * sum(a * (Ei - e_nx) for a, Ei in zip(alpha, E[l], strict=True))
        check(f"S16 -> S15: layer {l + 1} base with alpha = 1/N, M = I", e_nx - e_ep)


def _momentum_zero_beta() -> None:
    E = _experts_per_layer()
    gamma = sp.Symbol("gamma", positive=True)
    alpha = sp.symbols(f"alpha1:{N + 1}", positive=True)
    br, bi = sp.symbols("b_r b_i", real=True)
    beta = br + sp.I * bi
    e_mom = e_nx = sp.Symbol("Em", real=True)
    mu = sp.Integer(0)  # μ^(1) = 0 (our convention)
    for l in range(LAYERS):
        d_mom = sum(a * (Ei - e_mom) for a, Ei in zip(alpha, E[l], strict=True))
        mu = sp.expand(beta * mu + d_mom)
        e_mom = sp.expand(e_mom + sp.re(gamma * mu))
        e_nx = e_nx + gamma * sum(a * (Ei - e_nx) for a, Ei in zip(alpha, E[l], strict=True))
        check(f"S17, beta = 0: layer {l + 1} base equals S16", e_mom.subs({br: 0, bi: 0}) - e_nx)
    gap = sp.expand(e_mom - e_nx).subs({bi: 0})
    check_true("S17: a non-zero real beta changes the base (the check can fail)", gap != 0)


# --------------------------------------------------------------------------------------------
# 5. Norms (S7) behind the radius and "uniform" conventions
# --------------------------------------------------------------------------------------------


def _norms() -> None:
    K = symmetric("K", N, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    # At a solution (Kα)_i = 1/α_i, so αᵀKα = Σ α_i (Kα)_i = N.
    Ka_at_solution = alpha.applyfunc(lambda a: 1 / a)
    check("S7: alpha^T K alpha = N at K alpha = 1/alpha", (alpha.T * Ka_at_solution)[0, 0] - N)
    eps = sp.Symbol("epsilon", positive=True)
    check(
        "radius: ||(eps/sqrt N) G alpha||^2 = eps^2 alpha^T K alpha / N = eps^2",
        (eps / sp.sqrt(N)) ** 2 * (alpha.T * Ka_at_solution)[0, 0] - eps**2,
    )
    ones = sp.ones(N, 1)
    c = sp.sqrt(N / (ones.T * K * ones)[0, 0])  # 1ᵀK1 > 0 where the policy uses it
    check(
        "uniform policy: ||sum c tau_i||^2 = (c 1)^T K (c 1) = N",
        ((c * ones).T * K * (c * ones))[0, 0] - N,
    )


def main() -> None:
    _kronecker(2, 2, 2, 2)
    _kronecker(2, 3, 1, 2)
    _s14_to_s13()
    _s16_to_s15()
    _momentum_zero_beta()
    _norms()
    print("PROVED: S13-S17 identities used by namex_ref.merging")


if __name__ == "__main__":
    main()
