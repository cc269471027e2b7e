"""Independent numerical oracles for the bargain Kα = 1/α (S4), written for the tests only.

Nothing here imports namex_ref: each oracle is a different algorithm from the code under test.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import root

__all__ = ["ccp_step", "fallback_alpha", "positive_root"]


def positive_root(K: np.ndarray) -> np.ndarray:
    """α > 0 with Kα = 1/α (S4), by scipy's MINPACK hybrid method on the unit-diagonal K̂ (S9).

    Continuation from the diagonal (where α̂ = 1 exactly, S8) along K̂_t = (1 − t)I + tK̂, which
    is positive definite for t < 1, in log coordinates α̂ = exp(x) so every root stays positive;
    the steps in t are geometric towards t = 1, where α̂ grows fastest. MINPACK may stop with
    "xtol too small" at full precision, so the final residual decides (≤ 1e-12), not its flag.
    """
    d = 1.0 / np.sqrt(np.diag(K))
    Kh = d[:, None] * K * d[None, :]
    n = K.shape[0]
    x = np.zeros(n)
    for t in [*(1.0 - np.geomspace(1.0, 1e-9, 80))[1:], 1.0]:
        Kt = (1.0 - t) * np.eye(n) + t * Kh
        x = root(lambda x, Kt=Kt: np.exp(x) * (Kt @ np.exp(x)) - 1.0, x, tol=1e-14).x
    a = np.exp(x) * d
    assert np.max(np.abs(a * (K @ a) - 1)) < 1e-12, "oracle did not converge"
    return a


def fallback_alpha(K: np.ndarray, policy: str, zero: int, ridge: float = 1e-3) -> np.ndarray:
    """α of the merging layer's singular-bargain policies (S4, S6), computed here for a K whose
    expert ``zero`` counts as a zero expert: "ridge" is the root of K' + ridge·mean(K_ii)·I with
    K'_zz = max_j K_jj; "uniform" is α_i = √(N / max(1ᵀK1, 1e-6·tr K))."""
    n = K.shape[0]
    if policy == "ridge":
        Kp = K.copy()
        Kp[zero, zero] = K.diagonal().max()
        return positive_root(Kp + ridge * K.diagonal().mean() * np.eye(n))
    if policy == "uniform":
        return np.full(n, np.sqrt(n / max(K.sum(), 1e-6 * np.trace(K))))
    raise ValueError(policy)


def ccp_step(K: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """One step of Navon et al.'s sequential convex iteration (Nash-MTL, ICML 2022, §3.2),
    written out from the paper for the tests.

    With c = ‖K‖_F and K̃ = K/c, the concave part φ(α) = Σ_i log α_i + log (K̃α)_i of the
    objective is replaced by its tangent at ``prev``, whose gradient is
    w = 1/prev + K̃ᵀ(1/(K̃ prev)), and the next iterate minimises the linear function
    (1ᵀK̃ + w/c)·α over the convex set {α ≥ 0 : α_i (Kα)_i ≥ 1}. Each constraint is written
    as the second-order cone √(α_i (Kα)_i) ≥ 1 (a geometric mean) and solved by Clarabel,
    where the code under test writes it as −log(α_i c) − log(K̃α)_i ≤ 0 (exponential cones)
    and solves it by ECOS: a different formulation and a different interior-point solver.
    Returns |α| (the authors keep the absolute value of the solver's point).
    """
    import cvxpy as cp

    n = K.shape[0]
    c = np.linalg.norm(K)
    Kt = K / c
    w = 1.0 / prev + (1.0 / (Kt @ prev)) @ Kt
    x = cp.Variable(n, nonneg=True)
    Kx = K @ x
    cons = [cp.geo_mean(cp.hstack([x[i], Kx[i]])) >= 1 for i in range(n)]
    prob = cp.Problem(cp.Minimize((Kt.sum(0) + w / c) @ x), cons)
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == "optimal", f"oracle sub-problem: {prob.status}"
    return np.abs(np.asarray(x.value))
