# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Three experts on a sphere: Pareto frontier, Nash point, mean merging
#
# A rebuild of the idea of the NAMEx paper's three-expert toy (Fig. 11) with our own fixed
# experts in R³: experts 0 and 1 cooperate (their domain vectors point roughly the same way),
# expert 2 is partly adversarial to expert 0 (τ₀ᵀτ₂ < 0). Utilities are u_i(x) = τ_iᵀx with
# disagreement point 0 (S3, docs/math.md); the feasible set is the ball ‖x‖ ≤ √3 = √N, the radius of
# the default ΔE = Gα (S4, S7). Each section ends in `assert`s, so executing this notebook (as
# `tests/test_notebooks.py` does) is a test.

# %%
import math
import tempfile
import time
from pathlib import Path

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch

from namex_ref import nash_bargain

T0 = time.perf_counter()

TAUS = np.array(
    [
        [1.0, 0.2, 0.0],   # expert 0
        [0.6, 1.0, 0.3],   # expert 1: cooperates with 0
        [-0.5, 0.3, 1.0],  # expert 2: partly adversarial to 0
    ]
)
N, D = TAUS.shape
RADIUS = math.sqrt(N)
print("Gram matrix K = GᵀG:\n", TAUS @ TAUS.T)

# %% [markdown]
# ## (a) Utilities over a dense grid of directions
#
# A Fibonacci lattice of 6000 directions on the unit sphere, scaled to ‖x‖ = √3. Sampling the
# sphere suffices: when a bargain exists (S6) there is a direction v with every τ_iᵀv > 0, so
# an interior point x is dominated by x + t·v for small t > 0 inside the ball.

# %%
M = 6000
k = np.arange(M) + 0.5
z = 1.0 - 2.0 * k / M
r = np.sqrt(1.0 - z**2)
phi = math.pi * (3.0 - math.sqrt(5.0)) * k
X = RADIUS * np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)  # (M, 3)
U = X @ TAUS.T  # (M, N) utilities
assert np.allclose(np.linalg.norm(X, axis=1), RADIUS)
print(f"{M} sampled points, utility ranges:",
      [(round(float(U[:, i].min()), 3), round(float(U[:, i].max()), 3)) for i in range(N)])

# %% [markdown]
# ## (b) Pareto frontier among the samples, by brute force
#
# Point j dominates point k when U_j ≥ U_k in every utility and U_j > U_k in at least one.
# The frontier is the non-dominated set; computed in chunks over all pairs (M² comparisons).
# We keep only points with every u_i > 0 (individually rational, S6) for the plot.

# %%
def dominated_mask(U, cand):
    """For each row of cand, whether some row of U dominates it (exact comparisons)."""
    out = np.zeros(len(cand), dtype=bool)
    for s in range(0, len(cand), 500):
        c = cand[s:s + 500][:, None, :]  # (b, 1, N)
        ge = (U[None, :, :] >= c).all(axis=2)
        gt = (U[None, :, :] > c).any(axis=2)
        out[s:s + 500] = (ge & gt).any(axis=1)
    return out


front = ~dominated_mask(U, U)
rational = (U > 0).all(axis=1)
print(f"non-dominated samples: {int(front.sum())}; of them individually rational: "
      f"{int((front & rational).sum())}")
assert front.sum() > 0

# %% [markdown]
# ## (c) The Nash solution (S3, S4, S7)
#
# `nash_bargain` solves Kα = 1/α by Newton and returns ΔE* = Gα with ‖ΔE*‖ = √N and
# u_i = 1/α_i. S10 says it is Pareto optimal: no sampled point may have u ≥ u* everywhere
# with one utility larger by more than 1e-9 (the slack absorbs rounding in u*).

# %%
res = nash_bargain(torch.tensor(TAUS, dtype=torch.float64))
alpha = res.alpha.numpy()
dE = res.delta[0].numpy()
u_star = TAUS @ dE
print("α =", alpha, " residual =", float(res.residual))
print("ΔE* =", dE, " ‖ΔE*‖ =", np.linalg.norm(dE))
print("u* =", u_star, " Σu* =", u_star.sum(), " Σ log u* =", np.log(u_star).sum())
assert float(res.residual) <= 1e-10
assert abs(np.linalg.norm(dE) - RADIUS) <= 1e-12 * RADIUS
assert np.allclose(alpha * u_star, 1.0, rtol=1e-10, atol=0)  # S7
beats = (U >= u_star).all(axis=1) & (U > u_star + 1e-9).any(axis=1)
assert not beats.any(), U[beats][:5]
print("samples dominating the Nash point:", int(beats.sum()))

# %% [markdown]
# ## (d) Independent S10 certificate with cvxpy (SOCP)
#
# max Σ_i u_i(x) s.t. u_i(x) ≥ u_i(ΔE*), ‖x‖ ≤ √3. If ΔE* is Pareto optimal the feasible
# set is the single point ΔE*, so the optimum is Σ u_i(ΔE*). A one-point feasible set has no
# strictly feasible point (Slater fails), which interior-point and splitting solvers handle
# badly; we therefore relax the lower bounds to u_i(ΔE*)·(1 − 1e-9). That opens a sliver of
# feasible set whose extra objective is O(1e-9) relative — three orders below the 1e-6 we
# test — so a true Pareto improvement of any size above that would still be detected.

# %%
x = cp.Variable(D)
cons = [TAUS @ x >= u_star * (1.0 - 1e-9), cp.norm(x, 2) <= RADIUS]
prob = cp.Problem(cp.Maximize(cp.sum(TAUS @ x)), cons)
prob.solve(solver=cp.ECOS, abstol=1e-9, reltol=1e-9, feastol=1e-9, max_iters=200)
gap = abs(prob.value - u_star.sum()) / abs(u_star.sum())
print(f"ECOS status {prob.status}: optimum {prob.value:.12f} vs Σu* {u_star.sum():.12f}, "
      f"relative gap {gap:.2e}")
assert prob.status == cp.OPTIMAL
assert gap <= 1e-6, gap

# %% [markdown]
# ## (e) Mean merging
#
# x_mean = mean(τ) scaled to ‖x‖ = √3. It has the same budget as ΔE*, so by the definition of
# the Nash solution (S3: ΔE* maximises Σ log u_i over the ball) its Nash product must be
# lower — that is the assert. We also report whether a sampled point dominates it and whether
# it is individually rational.

# %%
xm = TAUS.mean(axis=0)
xm = RADIUS * xm / np.linalg.norm(xm)
um = TAUS @ xm
nash_mean = np.log(um).sum() if (um > 0).all() else -math.inf
dom_m = (U >= um).all(axis=1) & (U > um + 1e-9).any(axis=1)
print("x_mean =", xm, " u(x_mean) =", um)
print(f"Σ log u: mean {nash_mean:.6f} < Nash {np.log(u_star).sum():.6f}; "
      f"individually rational: {bool((um > 0).all())}; dominated by {int(dom_m.sum())} samples")
assert nash_mean < np.log(u_star).sum()

# %% [markdown]
# ## (f) Scale invariance (S9)
#
# Rescaling τ₀ → 10·τ₀ must map α₀ → α₀/10, leave the other α_i and ΔE* unchanged. Tolerance
# rtol = 1e-9: both solves have Newton residual ≤ 1e-10, and the rule of docs/implementation.md bounds the
# relative α disagreement by 2·√N·(r₁ + r₂) ≤ 2·√3·2e-10 ≈ 7e-10 < 1e-9; ΔE* = Gα inherits it.

# %%
T10 = TAUS.copy()
T10[0] *= 10.0
res10 = nash_bargain(torch.tensor(T10, dtype=torch.float64))
a10 = res10.alpha.numpy()
d10 = res10.delta[0].numpy()
expect = alpha.copy()
expect[0] /= 10.0
print("α (τ₀×10) =", a10, " expected", expect, " residual =", float(res10.residual))
print("max |ΔE(τ₀×10) − ΔE*| =", np.abs(d10 - dE).max())
assert float(res10.residual) <= 1e-10
np.testing.assert_allclose(a10, expect, rtol=1e-9, atol=0)
np.testing.assert_allclose(d10, dE, rtol=1e-9, atol=0)

# %% [markdown]
# ## (g) Plot: u₀ vs u₁ coloured by u₂
#
# All samples (faint), the non-dominated, individually rational samples, the Nash point and the
# mean-merging point. Shown inline, and saved into a temporary folder (never into the
# repository).

# %%
fig, ax = plt.subplots(figsize=(6.5, 5))
sc = ax.scatter(U[:, 0], U[:, 1], c=U[:, 2], s=3, cmap="viridis", alpha=0.25)
fr = front & rational
ax.scatter(U[fr, 0], U[fr, 1], c=U[fr, 2], s=10, cmap="viridis", edgecolors="k",
           linewidths=0.2, label="Pareto frontier (samples, u > 0)")
ax.scatter(*u_star[:2], marker="*", s=250, c="red", edgecolors="k", label="Nash ΔE*")
ax.scatter(*um[:2], marker="X", s=120, c="orange", edgecolors="k", label="mean merging")
fig.colorbar(sc, ax=ax, label="u₂")
ax.set_xlabel("u₀")
ax.set_ylabel("u₁")
ax.legend(loc="lower left", fontsize=8)
ax.set_title("Three experts, ‖x‖ = √3")
out = Path(tempfile.mkdtemp()) / "pareto.png"
fig.savefig(out, dpi=100)
assert out.stat().st_size > 0
plt.show()

# %%
elapsed = time.perf_counter() - T0
print(f"total {elapsed:.1f} s")
assert elapsed < 60
