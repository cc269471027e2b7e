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
# # Cross-checking the five Nash solvers
#
# Every solver of `solve_nash` (`newton`, `closed_form` for N = 2, `cvxpy`, `primal`, `ccp`)
# on the same problems. The agreement rule is the one of docs/implementation.md (Conventions): two solutions with
# scale-free residuals r₁, r₂ agree in relative α to within
# `rtol = 2·√N·(r₁ + r₂) + 1e-12`. Each section ends in `assert`s, so executing this notebook
# (as `tests/test_notebooks.py` does) is a test.

# %%
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from namex_ref import InfeasibleBargainError, gram_matrix, solve_nash

T0 = time.perf_counter()
torch.manual_seed(0)


def rel_diff(a, b):
    """max_i |a_i − b_i| / |b_i| (both float64 tensors)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs()).max())


def rule(n, r1, r2):
    """The tolerance of docs/implementation.md for relative α agreement of two solutions with residuals r1, r2."""
    return 2.0 * math.sqrt(n) * (float(r1) + float(r2)) + 1e-12


# %% [markdown]
# ## (a) Random well-scaled problems, N = 2, 8, 16
#
# τ_i ~ 𝒩(0, I) in d = 64 dimensions plus a common component so that the bargain exists;
# K = GᵀG. Columns: the solver's residual and its max relative disagreement in α with Newton.

# %%
rows = []
newton_res = {}
for n in (2, 8, 16):
    d = 64
    taus = torch.randn(n, d, dtype=torch.float64) + 2.0 * torch.randn(1, d, dtype=torch.float64)
    K = gram_matrix(taus)
    methods = ["newton", "closed_form", "cvxpy", "primal", "ccp"] if n == 2 else [
        "newton", "cvxpy", "primal", "ccp"]
    sols = {m: solve_nash(K, method=m) for m in methods}
    ref = sols["newton"]
    newton_res[n] = float(ref.residual)
    for m, s in sols.items():
        rows.append((n, m, float(s.residual), bool(s.converged), s.iterations,
                     rel_diff(s.alpha, ref.alpha)))
    assert float(ref.residual) <= 1e-10, (n, float(ref.residual))
    tol = rule(n, ref.residual, sols["cvxpy"].residual)
    gap = rel_diff(sols["cvxpy"].alpha, ref.alpha)
    assert gap <= tol, (n, gap, tol)

print(f"{'N':>3} {'method':<12} {'residual':>10} {'conv':>5} {'iters':>5} {'max rel Δα vs newton':>22}")
for n, m, r, c, it, g in rows:
    print(f"{n:>3} {m:<12} {r:>10.2e} {c!s:>5} {it:>5} {g:>22.2e}")

# %% [markdown]
# ## (b) Ill-conditioned cone experts
#
# τ_i = w + s·noise_i: all experts nearly parallel, so K̂ is nearly rank one and cond(K̂)
# grows like 1/s². Newton must still converge and agree with the cvxpy oracle by the rule.

# %%
print(f"{'s':>8} {'N':>3} {'cond(K̂)':>10} {'r_newton':>10} {'r_cvxpy':>10} {'Δα':>10} {'rtol':>10}")
for s in (1e-2, 1e-4, 1e-6):
    for n in (2, 8):
        d = 64
        w = torch.randn(d, dtype=torch.float64)
        taus = w + s * torch.randn(n, d, dtype=torch.float64)
        K = gram_matrix(taus)
        dinv = K.diagonal().rsqrt()
        Kh = dinv[:, None] * K * dinv[None, :]
        cond = float(np.linalg.cond(Kh.numpy()))
        sn = solve_nash(K, method="newton")
        sc = solve_nash(K, method="cvxpy")
        gap = rel_diff(sc.alpha, sn.alpha)
        tol = rule(n, sn.residual, sc.residual)
        print(f"{s:>8.0e} {n:>3} {cond:>10.2e} {float(sn.residual):>10.2e} "
              f"{float(sc.residual):>10.2e} {gap:>10.2e} {tol:>10.2e}")
        assert bool(sn.converged), (s, n, sn.status)
        assert gap <= tol, (s, n, gap, tol)

# %% [markdown]
# ## (c) Batched: 256 problems in one call equal the loop

# %%
B, n, d = 256, 8, 32
taus = torch.randn(B, n, d, dtype=torch.float64) + 2.0 * torch.randn(B, 1, d, dtype=torch.float64)
Kb = taus @ taus.transpose(-1, -2)
t = time.perf_counter()
batched = solve_nash(Kb, method="newton")
t_batch = time.perf_counter() - t
t = time.perf_counter()
looped = [solve_nash(Kb[b], method="newton") for b in range(B)]
t_loop = time.perf_counter() - t
alpha_loop = torch.stack([s.alpha for s in looped])
gap = rel_diff(batched.alpha, alpha_loop)
worst_tol = max(rule(n, batched.residual[b], looped[b].residual) for b in range(B))
print(f"batched: {B} problems in {t_batch * 1e3:.1f} ms, max residual "
      f"{float(batched.residual.max()):.2e}; loop: {t_loop * 1e3:.1f} ms")
print(f"max rel Δα batched vs loop: {gap:.2e} (largest allowed {worst_tol:.2e})")
assert bool(batched.converged.all())
for b in range(B):
    g = rel_diff(batched.alpha[b], looped[b].alpha)
    assert g <= rule(n, batched.residual[b], looped[b].residual), (b, g)

# %% [markdown]
# ## (d) Residual against iteration: Newton and CCP on one problem
#
# Shown inline; the image also goes to a temporary folder (never committed).

# %%
n, d = 8, 64
taus = torch.randn(n, d, dtype=torch.float64) + 2.0 * torch.randn(1, d, dtype=torch.float64)
K = gram_matrix(taus)
hn = solve_nash(K, method="newton", record_history=True).history
hc = solve_nash(K, method="ccp", record_history=True).history
print("newton:", " ".join(f"{x:.1e}" for x in hn.tolist()))
print("ccp:   ", " ".join(f"{x:.1e}" for x in hc.tolist()))
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.semilogy(range(1, len(hn) + 1), hn.clamp_min(1e-17).numpy(), "o-", label="newton")
ax.semilogy(range(1, len(hc) + 1), hc.clamp_min(1e-17).numpy(), "s-", label="ccp")
ax.set_xlabel("iteration")
ax.set_ylabel("max_i |α_i (Kα)_i − 1|")
ax.legend()
fig.tight_layout()
out = Path(tempfile.mkdtemp(prefix="namex_nb_")) / "residual_vs_iteration.png"
fig.savefig(out, dpi=100)
assert float(hn[-1]) <= 1e-10
assert out.stat().st_size > 0
plt.show()

# %% [markdown]
# ## (e) Infeasibility certificate on anti-parallel experts
#
# τ₂ = −2τ₁ (plus an unrelated third expert): 0 is in the cone of the τ_i, no bargain exists,
# and the solver must raise with a certificate v ≥ 0, Σv = 1, Σ v_i τ_i ≈ 0.

# %%
d = 64
t1 = torch.randn(d, dtype=torch.float64)
taus = torch.stack([t1, -2.0 * t1, torch.randn(d, dtype=torch.float64)])
K = gram_matrix(taus)
try:
    solve_nash(K, method="newton")
except InfeasibleBargainError as e:
    err = e
else:
    raise AssertionError("anti-parallel experts must be infeasible")
v = err.certificate
combo = float((v[:, None] * taus).sum(0).norm())
scale = float(taus.norm(dim=1).max())
print("message:", str(err)[:120], "...")
print("certificate v =", [f"{x:.6f}" for x in v.tolist()], " Σv =", f"{float(v.sum()):.16f}")
print(f"‖Σ v_i τ_i‖ = {combo:.2e}, max‖τ_i‖ = {scale:.2f}, ratio {combo / scale:.2e}")
assert bool((v >= 0).all())
assert abs(float(v.sum()) - 1.0) <= 1e-12
assert combo <= 1e-9 * scale

# %%
elapsed = time.perf_counter() - T0
print(f"notebook body: {elapsed:.1f} s")
assert elapsed < 60
