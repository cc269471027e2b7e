"""The merging functions (S13–S18) at their edges, against values computed here.

Complements ``tests/test_merging.py`` and ``tests/test_merging_policies.py``: malformed
Kronecker factors, the merge's η, the bargain's defaults, thresholds and messages, the cosine
statistics, and propagation in float32. Every expected value is computed in this file (float64
loops, the scipy root of ``tests/oracles.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import kronecker_apply, merge_weights
from namex_ref.merging.plan import bargain_alpha, cosine_matrix, propagate
from namex_ref.nash import BargainInputError, InfeasibleBargainError
from tests.oracles import fallback_alpha, positive_root


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# Kronecker factors (S14)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["A", "B", "C", "D"])
def test_kronecker_factor_must_be_square_and_per_expert(bad: str) -> None:
    """τ (2, 4, 6) = (2, 2·2, 3·2): a non-square factor, or one with another N, is named."""
    tau = torch.zeros(2, 4, 6)
    f = {"A": torch.eye(2).expand(2, 2, 2), "B": torch.eye(2).expand(2, 2, 2),
         "C": torch.eye(3).expand(2, 3, 3), "D": torch.eye(2).expand(2, 2, 2)}
    k = f[bad].shape[-1]
    for wrong in (torch.zeros(2, k, k + 1), torch.zeros(2, k + 1, k), torch.zeros(3, k, k)):
        g = dict(f)
        g[bad] = wrong
        with pytest.raises(ValueError, match=f"Kronecker factor {bad} must have shape"):
            kronecker_apply(tau, g["A"], g["B"], g["C"], g["D"])


# ------------------------------------------------------------------------------------------
# The merge (S13, S14)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
def test_merge_weights_eta(eta: float) -> None:
    """Ê = E_m + η Σ_i s_i D_i for every η, including η = 0 (Ê = E_m) and η = 2."""
    g = _gen(0)
    base = torch.randn(3, 4, generator=g, dtype=torch.float64)
    deltas = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    scores = torch.softmax(torch.randn(2, 5, generator=g, dtype=torch.float64), -1)
    got = merge_weights(base, deltas, scores, eta)
    for r in range(2):
        want = base + eta * sum(scores[r, i] * deltas[i] for i in range(5))
        torch.testing.assert_close(got[r], want, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------------------
# bargain_alpha: defaults, thresholds, messages
# ------------------------------------------------------------------------------------------


def _hard_taus() -> list[Tensor]:
    """Nearly opposed experts: 20 Newton steps do not finish, 21 move α further."""
    g = _gen(1)
    w = torch.randn(32, generator=g, dtype=torch.float64)
    t = torch.stack([w + 0.3 * torch.randn(32, generator=g, dtype=torch.float64)
                     for _ in range(4)])
    t[1] = -0.99 * t[0] + 0.02 * w
    return [t]


def test_default_newton_budget_is_20_steps() -> None:
    taus = _hard_taus()
    a20 = bargain_alpha(taus, newton_iterations=20).alpha
    assert not torch.equal(a20, bargain_alpha(taus, newton_iterations=21).alpha)
    torch.testing.assert_close(bargain_alpha(taus).alpha, a20, rtol=0, atol=0)


def test_zero_expert_threshold_is_inclusive_and_relative() -> None:
    """K_11 = 1e-12·max K_jj exactly ((1e-6)² is 1e-12 in float64) is a zero expert; the
    threshold scales with max K_jj (experts ×10: K_11 = 1e-10 = 1e-12·100 is still zero)."""
    g = _gen(2)
    t = torch.randn(3, 8, generator=g, dtype=torch.float64) + 2.0
    t[0] = 0.0
    t[0, 0] = 1.0  # max K_jj must be 1 exactly: rescale the others below it
    t[2] = t[2] / t[2].norm() * 0.5
    t[1] = 0.0
    t[1, 3] = 1e-6  # K_11 = 1e-12 exactly
    assert float((t @ t.T).diagonal().max()) == 1.0
    assert bool(bargain_alpha([t], singular_policy="ridge").fallback)
    assert bool(bargain_alpha([t * 10.0], singular_policy="ridge").fallback)
    t2 = t.clone()
    t2[1, 3] = 2e-6  # K_11 = 4e-12: a real, tiny direction
    assert not bool(bargain_alpha([t2], singular_policy="ridge").fallback)


def test_ridge_on_a_float32_zero_expert_is_built_in_float64() -> None:
    """float32 τ with a zero expert: K is accumulated in float32, then K' = K + diag(max K_jj
    on the zero expert) + λI is formed in float64 (λ = 1e-3·mean K_ii); α is its root to the
    Newton tolerance, not to float32 rounding (1e-8 relative here, float32 would give ~1e-7)."""
    g = _gen(3)
    t = (torch.randn(3, 64, generator=g) + 1.0).float()
    t[2] = 0.0
    res = bargain_alpha([t], singular_policy="ridge")
    assert bool(res.fallback)
    K = (t @ t.T).double().numpy()  # the float32 Gram, read in float64
    Kp = K.copy()
    Kp[2, 2] = K.diagonal().max()
    want = positive_root(Kp + 1e-3 * K.diagonal().mean() * np.eye(3))
    np.testing.assert_allclose(res.alpha.numpy(), want, rtol=1e-8)


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_infinite_tau_falls_back_with_inf_read_as_zero(bad: float, policy: str) -> None:
    """±inf in expert 0 makes its row of K ±inf (signs vary): those entries are read as 0, as
    NaN is, and α is the policy's α for that K (computed here)."""
    g = _gen(4)
    t = torch.randn(3, 9, generator=g, dtype=torch.float64) + 1.0
    t[0, 4] = bad
    t[1, 4], t[2, 4] = 0.5, -0.5
    res = bargain_alpha([t], singular_policy=policy)
    assert bool(res.fallback) and math.isnan(float(res.residual))
    K = np.nan_to_num((t @ t.T).numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    want = fallback_alpha(K, policy, zero=0)
    np.testing.assert_allclose(res.alpha.numpy(), want, rtol=1e-8)


def test_raise_policy_messages() -> None:
    """A non-finite K is named as such (not left to the general solver's NaN message); the
    layer prefix appears only when a layer is given, and the message stays one string."""
    t = torch.randn(3, 4, generator=_gen(5), dtype=torch.float64)
    t[0, 0] = math.nan
    with pytest.raises(BargainInputError, match=r"^MoE layer 2: the Gram matrix of the domain "
                       r"vectors has NaN/Inf entries"):
        bargain_alpha([t], singular_policy="raise", layer=2)
    u = torch.randn(1, 6, generator=_gen(6), dtype=torch.float64)
    opposed = [torch.cat([u, -u])]
    with pytest.raises(InfeasibleBargainError) as exc:
        bargain_alpha(opposed, singular_policy="raise")
    assert "MoE layer" not in str(exc.value) and str(exc.value).startswith("No Nash bargain")
    with pytest.raises(InfeasibleBargainError) as exc2:
        bargain_alpha(opposed, singular_policy="raise", layer=3)
    assert str(exc2.value).startswith("MoE layer 3: No Nash bargain")


def test_tiny_but_nonzero_experts_are_bargained() -> None:
    """float32 τ_i = 2⁻⁶³·e_i: every K_ii is float32's smallest normal (2⁻¹²⁶), not zero. The
    experts are orthogonal, so α_i = 1/‖τ_i‖ = 2⁶³ (S8), finite in float32, and ΔE = Σ α_i τ_i
    = (1, 1, 1) — not the α = 1 of experts that all equal the base."""
    t = torch.eye(3) * 2.0**-63
    assert float((t @ t.T).diagonal().max()) == torch.finfo(torch.float32).tiny
    for policy in ("raise", "ridge", "uniform"):
        res = bargain_alpha([t], singular_policy=policy)
        assert not bool(res.fallback)
        assert res.alpha.tolist() == [2.0**63] * 3
        assert (res.alpha.float() @ t).tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------
# Cosine statistics
# ------------------------------------------------------------------------------------------


def test_cosine_matrix_of_several_matrices() -> None:
    """cos(τ_i, τ_j) over the concatenation of every weight matrix (S2), float64; a zero
    expert has cosine 0 with everything (its row and column), not NaN."""
    g = _gen(7)
    a = torch.randn(4, 3, 5, generator=g)
    b = torch.randn(4, 7, generator=g)
    a[2], b[2] = 0.0, 0.0
    got = cosine_matrix([a, b])
    assert got.dtype == torch.float64 and got.shape == (4, 4)
    flat = torch.cat([a.reshape(4, -1), b], 1).double()
    for i in range(4):
        for j in range(4):
            ni, nj = flat[i].norm(), flat[j].norm()
            want = 0.0 if i == 2 or j == 2 else float(flat[i] @ flat[j] / (ni * nj))
            assert float(got[i, j]) == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------------------
# Propagation in float32 (S16)
# ------------------------------------------------------------------------------------------


def test_namex_propagation_of_float32_experts_matches_float64_recurrence() -> None:
    """float32 experts (as in the model): the base chain E_m ← E_m + Σ α_i τ_i (S16, α from
    the independent root, solved once at layer 0), recomputed in float64, agrees to float32
    rounding; base norms are float64 sums of the float32 base."""
    g = _gen(8)
    L, n = 3, 3
    experts = [[torch.randn(n, 4, 2, generator=g) + 1.0] for _ in range(L)]
    base0 = [torch.randn(4, 2, generator=g) * 0.1]
    cfg = MergeConfig(method="namex", n_experts=n)
    plan = propagate(experts, [base0, None, None], cfg)
    b = base0[0].double()
    t0 = (experts[0][0].double() - b).reshape(n, -1)
    alpha = torch.from_numpy(positive_root((t0 @ t0.T).numpy()))
    for layer in range(L):
        got = plan.terms[layer].base
        assert got is not None and got[0].dtype == torch.float32
        torch.testing.assert_close(got[0].double(), b, rtol=1e-5, atol=1e-5)
        # base_norms reduces float32 matrices with a float32 accumulator (merging/plan.py _norm:
        # relative error ≲ log2(P)·2⁻²⁴ ≈ 1e-6); was 1e-12 when every matrix was copied to float64
        assert float(plan.base_norms[layer]) == pytest.approx(float(got[0].double().norm()),
                                                              rel=1e-5)
        tau = experts[layer][0].double() - b
        b = b + torch.einsum("i,i...->...", alpha, tau)


def test_cosine_matrix_of_small_experts() -> None:
    """Norms of 1e-3 (K_ii = 1e-6 ≪ 1): the cosines are scale-free, computed here."""
    g = _gen(9)
    a = torch.randn(3, 8, generator=g, dtype=torch.float64) * 1e-3 / math.sqrt(8)
    got = cosine_matrix([a])
    n = a.norm(dim=1)
    torch.testing.assert_close(got, (a @ a.T) / (n[:, None] * n[None, :]), rtol=1e-12,
                               atol=1e-15)
