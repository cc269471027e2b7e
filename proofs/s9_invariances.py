"""S9: invariances of the bargaining solution.

Claims (S9, docs/math.md), with r(K, α) = Kα − 1/α the S4 residual, for N = 3 and generic
symmetric K:

(a) permutations: for every 3×3 permutation P, r(PKPᵀ, Pα) = P·r(K, α). So α solves K iff Pα
    solves PKPᵀ (relabelling the experts relabels α).
(b) orthogonal maps: for Q orthogonal, (QG)ᵀ(QG) = GᵀG, so K and hence α are unchanged. Checked
    with the Cayley transform Q = (I − S)(I + S)⁻¹ of a generic skew-symmetric 3×3 S (every
    rotation without eigenvalue −1) and with a symbolic 2D rotation, τ_i ∈ R³ / R² symbolic.
(c) rescaling: τ_i → c_i τ_i (c_i > 0) is G → GD, K → DKD with D = diag(c); then
    r(DKD, D⁻¹α) = D·r(K, α), so α_i → α_i/c_i, and ΔE ∝ Σ (α_i/c_i)(c_i τ_i) = Gα is unchanged.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python proofs/<name>.py): make `proofs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp

from proofs._common import check, check_true, residual, symmetric

N = 3


def _permutations() -> None:
    K = symmetric("k", N, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    base = residual(K, alpha)
    count = 0
    for perm in itertools.permutations(range(N)):
        P = sp.Matrix(N, N, lambda i, j, perm=perm: int(perm[i] == j))
        check_true(f"S9a: P{perm} is a permutation matrix", P * P.T == sp.eye(N))
        check(
            f"S9a: r(P K P^T, P alpha) = P r(K, alpha) for P{perm}",
            residual(P * K * P.T, P * alpha) - P * base,
        )
        count += 1
    check_true("S9a: all 6 permutations of 3 experts checked", count == 6)


def _orthogonal() -> None:
    s1, s2, s3 = sp.symbols("s1:4", real=True)
    S = sp.Matrix([[0, -s3, s2], [s3, 0, -s1], [-s2, s1, 0]])
    Q = (sp.eye(3) - S) * (sp.eye(3) + S).inv()
    check("S9b: Cayley Q^T Q = I (Q orthogonal)", Q.T * Q - sp.eye(3))
    G = sp.Matrix(3, N, lambda r, c: sp.Symbol(f"t{c + 1}_{r + 1}", real=True))
    check("S9b: (Q G)^T (Q G) = G^T G for Cayley Q in SO(3)", (Q * G).T * (Q * G) - G.T * G)

    th = sp.Symbol("theta", real=True)
    R2 = sp.Matrix([[sp.cos(th), -sp.sin(th)], [sp.sin(th), sp.cos(th)]])
    check("S9b: 2D rotation R^T R = I", R2.T * R2 - sp.eye(2))
    G2 = sp.Matrix(2, N, lambda r, c: sp.Symbol(f"g{c + 1}_{r + 1}", real=True))
    check("S9b: (R G)^T (R G) = G^T G for a 2D rotation", (R2 * G2).T * (R2 * G2) - G2.T * G2)
    # Reflections are orthogonal too: Householder H = I − 2nnᵀ/(nᵀn).
    nvec = sp.Matrix(sp.symbols("n1:4", real=True))
    H = sp.eye(3) - 2 * nvec * nvec.T / (nvec.T * nvec)[0, 0]
    check("S9b: (H G)^T (H G) = G^T G for a Householder reflection", (H * G).T * (H * G) - G.T * G)


def _rescaling() -> None:
    K = symmetric("k", N, real=True)
    alpha = sp.Matrix(sp.symbols(f"alpha1:{N + 1}", positive=True))
    c = sp.symbols(f"c1:{N + 1}", positive=True)
    D = sp.diag(*c)
    check(
        "S9c: r(D K D, D^-1 alpha) = D r(K, alpha)",
        residual(D * K * D, D.inv() * alpha) - D * residual(K, alpha),
    )
    G = sp.Matrix(4, N, lambda r, cc: sp.Symbol(f"t{cc + 1}_{r + 1}", real=True))
    check("S9c: tau_i -> c_i tau_i is K -> D K D", (G * D).T * (G * D) - D * (G.T * G) * D)
    check(
        "S9c: dE = sum (alpha_i/c_i)(c_i tau_i) = G alpha unchanged",
        (G * D) * (D.inv() * alpha) - G * alpha,
    )


def main() -> None:
    _permutations()
    _orthogonal()
    _rescaling()
    print("PROVED: S9 permutation, orthogonal and rescaling invariances")


if __name__ == "__main__":
    main()
