"""The singular-bargain policies of ``bargain_alpha`` against values computed here (S4, S6, S9).

``tests/test_merging.py`` checks that the policies are finite and flagged; this file pins what
they return, so a changed threshold or a changed fallback formula is caught:

* the zero-expert threshold ``ZERO_EXPERT_RTOL`` (1e-12 of the largest K_ii): an expert at
  1e-10 is a real direction, one at 1e-14 is a zero;
* "ridge" returns the root of (K' + λI)α = 1/α, K' = K with zero experts' diagonal set to
  max_j K_jj, λ = ridge·mean(diag K): the root is found by ``tests.oracles.positive_root``;
* "uniform" returns α_i = √(N / max(1ᵀK1, 1e-6·tr K));
* a non-finite K falls back with K's non-finite entries read as 0;
* "raise" returns the bargain itself when it converges, with no fallback.

Tolerances: the roots are solved here to ~1e-13 relative in float64; the layer's Newton stops
at residual 1e-10, which moves α by at most ~1e-10·cond relative (cond ≤ 1e3 here), so 1e-8
relative has margin. float32 experts give K to ~1e-7 relative, so those comparisons use 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from namex_ref.merging import plan
from namex_ref.merging.plan import ZERO_EXPERT_RTOL, bargain_alpha
from tests.oracles import fallback_alpha, positive_root


@pytest.fixture(autouse=True, params=["auto", "eager"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: through the default backend (the fused CPU kernel of
    nash/fused.py) and through the eager torch path that CUDA tensors take, each against the
    same independent oracles."""
    defaults = plan.bargain_alpha.__kwdefaults__
    assert defaults is not None and "backend" in defaults
    monkeypatch.setitem(defaults, "backend", request.param)
    return str(request.param)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cone(n: int, d: int, seed: int) -> Tensor:
    g = _gen(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return w + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_raise_policy_returns_the_bargain_without_fallback() -> None:
    t = _cone(4, 12, 0)
    res = bargain_alpha([t], singular_policy="raise")
    assert not bool(res.fallback)
    np.testing.assert_allclose(res.alpha.numpy(), positive_root((t @ t.T).numpy()), rtol=1e-8)
    assert float(res.residual) <= 1e-10


def test_tiny_expert_above_threshold_is_a_real_direction() -> None:
    """K_11 = 1e-10·max K_jj (above ZERO_EXPERT_RTOL = 1e-12): no fallback, and by S9 its α is
    1e5 × the α of the same direction at full size."""
    assert ZERO_EXPERT_RTOL == 1e-12
    t = _cone(3, 10, 1)
    t = t / t.norm(dim=1, keepdim=True)
    small = t.clone()
    small[1] *= 1e-5  # K_11 = 1e-10
    for policy in ("raise", "ridge", "uniform"):
        res = bargain_alpha([small], singular_policy=policy)
        assert not bool(res.fallback), policy
        full = positive_root((t @ t.T).numpy())
        want = full * np.array([1.0, 1e5, 1.0])
        np.testing.assert_allclose(res.alpha.numpy(), want, rtol=1e-8)


def test_expert_below_threshold_is_a_zero_expert() -> None:
    """K_11 = 1e-14·max K_jj (below 1e-12): treated as τ_1 = 0, so "ridge" falls back to the
    root of K' + λI with K'_11 = max_j K_jj (K' computed here)."""
    t = _cone(3, 10, 2)
    t = t / t.norm(dim=1, keepdim=True)
    t[1] *= 1e-7  # K_11 = 1e-14
    res = bargain_alpha([t], singular_policy="ridge", ridge=1e-3)
    assert bool(res.fallback)
    K = (t @ t.T).numpy()
    Kp = K.copy()
    Kp[1, 1] += K.diagonal().max()
    lam = 1e-3 * K.diagonal().mean()
    np.testing.assert_allclose(res.alpha.numpy(), positive_root(Kp + lam * np.eye(3)), rtol=1e-8)


@pytest.mark.parametrize("ridge", [1e-3, 1e-1])
def test_ridge_policy_on_antiparallel_experts(ridge: float) -> None:
    """τ_1 = −2τ_0 (no bargain, S6): "ridge" returns the root of K + λI, λ = ridge·mean K_ii."""
    g = _gen(3)
    u = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    t = torch.stack([u, -2.0 * u, w])
    res = bargain_alpha([t], singular_policy="ridge", ridge=ridge)
    assert bool(res.fallback)
    K = (t @ t.T).numpy()
    lam = ridge * K.diagonal().mean()
    np.testing.assert_allclose(res.alpha.numpy(), positive_root(K + lam * np.eye(3)), rtol=1e-8)


def test_uniform_policy_on_cancelling_experts_is_capped_exactly() -> None:
    """τ_1 = −τ_0: 1ᵀK1 = 0 < 1e-6·tr K, so c = √(N / (1e-6·tr K)) = 1e3/‖u‖ for N = 2."""
    u = torch.randn(1, 8, generator=_gen(4), dtype=torch.float64)
    res = bargain_alpha([torch.cat([u, -u])], singular_policy="uniform")
    assert bool(res.fallback)
    want = 1e3 / float(u.norm())
    np.testing.assert_allclose(res.alpha.numpy(), [want, want], rtol=1e-12)


def test_uniform_policy_on_infeasible_but_not_cancelling_experts() -> None:
    """τ = (u, −2u, w): 1ᵀK1 = ‖w − u‖² > 0, α_i = √(3 / 1ᵀK1) for every i (S7 scale)."""
    g = _gen(5)
    u = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    t = torch.stack([u, -2.0 * u, w])
    res = bargain_alpha([t], singular_policy="uniform")
    total = float(((u - 2.0 * u + w) ** 2).sum())
    np.testing.assert_allclose(res.alpha.numpy(), [math.sqrt(3 / total)] * 3, rtol=1e-12)


@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_non_finite_gram_falls_back_with_nan_read_as_zero(policy: str) -> None:
    """A NaN in expert 0: its row and column of K are read as 0 (it becomes a zero expert), the
    residual is NaN, and α is the policy's α for that K (computed here)."""
    t = _cone(3, 9, 6)
    t[0, 4] = math.nan
    res = bargain_alpha([t], singular_policy=policy)
    assert bool(res.fallback) and math.isnan(float(res.residual))
    K = np.nan_to_num((t @ t.T).numpy(), nan=0.0)
    want = fallback_alpha(K, policy, zero=0)
    np.testing.assert_allclose(res.alpha.numpy(), want, rtol=1e-8)


def test_float32_experts_match_float64_reference() -> None:
    """float32 τ: K accumulated in float32 (~1e-7 relative), solved in float64; α agrees with
    the float64 root to 1e-5 (cond(K̂) ≈ 10 here)."""
    t = _cone(5, 64, 7)
    res = bargain_alpha([t.float()], singular_policy="raise")
    assert not bool(res.fallback)
    K = (t.float().double() @ t.float().double().T).numpy()
    np.testing.assert_allclose(res.alpha.numpy(), positive_root(K), rtol=1e-5)
