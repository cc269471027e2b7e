"""Mutation-guided tests of namex_ref.merging.functional (tools/mutation.py, module
"merging/functional"): the τ-recipe registry of the recomputing Kronecker operator (S14), the
custom backward of merged_linear on mixed-precision inputs (S14), and the noisy gate's missing
router (docs/math.md §6, "CAMEx options"). Oracles are written out here from the definitions
(torch.kron for (A⊗B) τ (C⊗D)ᵀ, a per-segment loop for Ŵ = E_m + η Σ_i s_i D_i) and
differentiated by autograd; no value is taken from the module under test.
"""

from __future__ import annotations

import pytest
import torch

from namex_ref.merging.camex import gated_scores
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import (
    kronecker_apply,
    merged_linear,
)
from namex_ref.merging.operators import (
    recomputable_taus as _recomputable_taus,
)


def _kron_oracle(tau: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor) -> torch.Tensor:
    """(A_i⊗B_i) τ_i (C_i⊗D_i)ᵀ per expert, with torch.kron (S14's definition)."""
    return torch.stack([torch.kron(A[i], B[i]) @ tau[i] @ torch.kron(C[i], D[i]).T
                        for i in range(tau.shape[0])])


def test_a_tau_registered_inside_a_block_is_not_recomputed_after_it() -> None:
    """_recomputable_taus registers τ = E − E_m only inside its block (propagate's scope). A
    Kronecker call on the same τ after the block must save τ itself: changing E afterwards (E
    is not τ) must not change the gradients, which equal the kron oracle's on the original τ.
    Float64: the recomputed and the oracle chains differ by rounding only (bound 1e-12,
    measured ~1e-15)."""
    g = torch.Generator().manual_seed(0)
    N = 3
    E = torch.randn(N, 4, 6, generator=g, dtype=torch.float64)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    tau = E - base
    with _recomputable_taus([tau], [E], [base]):
        pass
    fac = [torch.randn(N, k, k, generator=g, dtype=torch.float64, requires_grad=True)
           for k in (2, 2, 2, 3)]
    y = kronecker_apply(tau, *fac, recompute=True)
    E.add_(1.0)  # after the block E is no recipe of τ any more
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, fac, grad)
    ref = torch.autograd.grad(_kron_oracle(tau, *fac), fac, grad)
    for a, b in zip(got, ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-12 * b.abs().max().item()


def test_merged_linear_backward_takes_the_forwards_mixed_precision_inputs() -> None:
    """x and E_m in float64, deltas and scores in float32 (the forward promotes Ŵ to float64):
    the custom backward gives autograd's gradients of the written-out S14 (Ŵ[b,s] = E_m +
    η Σ_i s[b,s,i] D_i per segment, then y = Ŵ x), in each input's dtype. Tolerance: the float32
    products s_i·D_i round at eps32 ≈ 1.2e-7 in one path and not the other; bound
    1e-5·max|ref| (measured ~1e-8)."""
    g = torch.Generator().manual_seed(1)
    Bn, S, L, N, out, inn, eta = 2, 3, 4, 3, 5, 6, 0.7
    x = torch.randn(Bn, S, L, inn, generator=g, dtype=torch.float64, requires_grad=True)
    base = torch.randn(out, inn, generator=g, dtype=torch.float64, requires_grad=True)
    deltas = torch.randn(N, out, inn, generator=g, requires_grad=True)
    scores = torch.softmax(torch.randn(Bn, S, N, generator=g), -1).requires_grad_()
    y = merged_linear(x, base, deltas, scores, eta, recompute=True)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, base, deltas, scores), gy)
    rows = []
    for b in range(Bn):
        segs = []
        for s in range(S):
            w = base + eta * sum(scores[b, s, i] * deltas[i] for i in range(N))
            segs.append(x[b, s] @ w.T)
        rows.append(torch.stack(segs))
    ref_y = torch.stack(rows)
    ref = torch.autograd.grad(ref_y, (x, base, deltas, scores), gy)
    assert (y - ref_y).abs().max().item() <= 1e-5 * ref_y.abs().max().item()
    for a, r in zip(got, ref, strict=True):
        assert a.dtype == r.dtype
        assert (a.double() - r.double()).abs().max().item() <= 1e-5 * r.abs().max().item()


def test_the_noisy_gate_without_a_noise_router_is_refused() -> None:
    cfg = MergeConfig(method="camex", n_experts=4, gate="noisy-top-k", gate_top_k=2,
                      segment_len=4)
    router = torch.nn.Linear(8, 4, bias=False)
    h = torch.randn(2, 8, 8)
    with pytest.raises(ValueError, match=r"gate='noisy-top-k' needs a noise router"):
        gated_scores(h, router, None, cfg, training=False)
