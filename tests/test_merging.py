"""Merging layers and their functional core (docs/math.md §3, S12–S18), on small hand-built tensors.

Every check compares the code with an oracle written here independently of it:
- S12: an explicit per-token loop Σ_{i∈topk} s_i f_i(x) and a hand-counted N Σ f_i P_i;
- Kronecker curvature (S14): ``torch.kron(A, B) @ τ @ torch.kron(C, D).T`` per expert;
- S13/S14 merges: an explicit per-token, per-segment loop;
- propagation (S15–S18): the recurrences written out in float64 (complex128 for S17, a numpy
  scalar–vector quaternion product for S18), α from ``solve_nash`` on GᵀG of the concatenated
  domain vectors;
- reductions S14 → S13, S16 → S15 (α ≡ 1/N, M = I), β = 0 ≡ NAMEx, S18 ≡ S17 with
  β_c = Re β + i‖Im β‖ (proved in proofs/s17_s18_quaternion.py and proofs/s13_s16_merging.py).
"""

from __future__ import annotations

import cmath
import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from namex_ref.merging import (
    METHOD_TABLE,
    METHODS,
    AlphaSolve,
    KroneckerCurvature,
    MergeConfig,
    MoEFeedForward,
    bargain_alpha,
    kronecker_apply,
    merge_weights,
    propagate,
)
from namex_ref.merging.layers import nearest_factors
from namex_ref.merging.routing import (
    load_balancing_loss,
    segment_means,
    segment_scores,
    sequence_scores,
    top_k_routing,
)
from namex_ref.nash import (
    RESIDUAL_TOL,
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    solve_nash,
)
from tests.nash_strategies import cone_problems, scaled_problems

EPS64 = float(np.finfo(np.float64).eps)
#: float64 oracles on O(1) data with O(10) flops per entry: rounding stays far below 1e-12.
F64_TOL = 1e-12
#: The router softmax runs in float32 (STYLE), so gates carry ~1e-7 relative error.
ROUTER_TOL = 1e-5
#: Newton with the paper's 20-step budget on well-posed K reaches ~1e-14; the S4 check.
NASH_RESIDUAL_TOL = 1e-10
#: Newton's convergence test: RESIDUAL_TOL, or up to 8× the rounding floor (capped at 1e-6) for
#: near-infeasible problems with large α (namex_ref.nash.solvers).
NEWTON_CONVERGED = 1e-6
#: α from two float64 solvers of the same well-conditioned K (cond ≤ ~1e3 here).
ALPHA_RTOL = 1e-8

SETTINGS = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)
MERGE_METHODS = [m for m in METHODS if METHOD_TABLE[m].kind == "merge"]
FIRST_LAYER_METHODS = [m for m in METHODS if METHOD_TABLE[m].base == "first-layer"]




SHAPES = [(4, 3), (3, 4)]  # two weight matrices per expert (like W1: (F, C), W2: (C, F))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _case(
    seed: int, n_layers: int = 4, n: int = 3, shapes: list[tuple[int, int]] = SHAPES
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Random float64 experts (per layer, per matrix (N, *P)) and per-layer bases."""
    g = _gen(seed)
    experts = [
        [torch.randn(n, *p, generator=g, dtype=torch.float64) for p in shapes]
        for _ in range(n_layers)
    ]
    bases = [
        [torch.randn(*p, generator=g, dtype=torch.float64) for p in shapes] for _ in range(n_layers)
    ]
    return experts, bases


def _diag_curvature(
    seed: int, n_layers: int, n: int
) -> list[Callable[[list[Tensor]], list[Tensor]]]:
    """A non-identity linear M_i per layer: element-wise scaling by fixed positive tensors."""
    g = _gen(seed + 1)
    scales = [
        [torch.rand(n, *p, generator=g, dtype=torch.float64) + 0.5 for p in SHAPES]
        for _ in range(n_layers)
    ]

    def make(l: int) -> Callable[[list[Tensor]], list[Tensor]]:
        return lambda taus: [s * t for s, t in zip(scales[l], taus, strict=True)]

    return [make(l) for l in range(n_layers)]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

BAD_VALUES: list[tuple[str, object]] = [
    ("method", "namex-plus"),
    ("n_experts", 1),
    ("n_experts", 2.5),
    ("n_experts", True),
    ("top_k", 0),
    ("top_k", 5),
    ("balance_coef", -0.1),
    ("balance_coef", "0.1"),
    ("eta", 0.0),
    ("gamma", -1.0),
    ("gamma", math.nan),
    ("ridge", 0.0),
    ("beta_abs", 1.0),
    ("beta_abs", 1.5),
    ("beta_abs", -0.1),
    ("beta_phase", math.inf),
    ("beta_q", (0.9, 0.5, 0.0, 0.0)),
    ("beta_q", (0.1, 0.2)),
    ("alpha_interval", 0),
    ("singular_policy", "ignore"),
    ("newton_iterations", 0),
    ("radius", -1.0),
    ("curvature_rank", 0),
    ("routing", "token"),
    ("segment_len", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_config_rejects_bad_value(field: str, value: object) -> None:
    """Every invalid hyper-parameter is a ValueError whose message names the value."""
    kwargs: dict[str, object] = {field: value}
    if field == "beta_abs":
        kwargs["method"] = "namex-mom"
    with pytest.raises(ValueError, match=re.escape(repr(value))) as info:
        MergeConfig(**kwargs)  # type: ignore[arg-type]
    assert field in str(info.value)


def test_config_quaternion_beta_named() -> None:
    with pytest.raises(ValueError, match=re.escape("(0.9, 0.5, 0.0, 0.0)")):
        MergeConfig(method="namex-q", beta_q=(0.9, 0.5, 0.0, 0.0))


def test_method_table_and_resolution_schedule() -> None:
    assert set(METHOD_TABLE) == set(METHODS) and len(METHODS) == 9
    once = MergeConfig(method="namex", alpha_interval=2)
    full = MergeConfig(method="namex-full", alpha_interval=3)
    assert [once.resolves_at(l) for l in range(7)] == [True] + [False] * 6
    assert [full.resolves_at(l) for l in range(7)] == [True, False, False, True, False, False, True]
    mom = MergeConfig(method="namex-mom", beta_abs=0.5, beta_phase=0.3).momentum_config()
    assert mom.kind == "complex" and mom.beta == pytest.approx(cmath.rect(0.5, 0.3))


# --------------------------------------------------------------------------------------------
# S12: token-level top-k and the load-balancing loss
# --------------------------------------------------------------------------------------------


def _gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU written out, independent of torch.nn.functional.gelu."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _layer(method: str, d: int = 6, f: int = 8, seed: int = 0, **kw: object) -> MoEFeedForward:
    """A float64 layer with O(1) experts, base and router (outputs O(1), routing decisive);
    curvature factors stay at their identity initialisation."""
    torch.manual_seed(seed)
    cfg = MergeConfig(method=method, **kw)  # type: ignore[arg-type]
    layer = MoEFeedForward(d, f, cfg, has_base=cfg.spec.base != "none").double()
    with torch.no_grad():
        for p in (layer.w1, layer.w2, layer.base1, layer.base2, layer.router.weight):
            if p is not None:
                p.copy_(torch.randn_like(p))
    return layer


@given(seed=seeds, k=st.integers(1, 4), t=st.integers(1, 7))
@SETTINGS
def test_top_k_equals_token_loop(seed: int, k: int, t: int) -> None:
    """S12: F(x) = Σ_{i∈topk} s_i f_i(x) with s the renormalised top-k softmax, per token."""
    layer = _layer("smoe", seed=seed % 1000, n_experts=4, top_k=k, balance_coef=0.5)
    x = torch.randn(2, t, 6, generator=_gen(seed), dtype=torch.float64)
    out = layer(x, None)
    W = layer.router.weight.detach()
    expected = torch.zeros_like(x)
    counts = torch.zeros(4, dtype=torch.float64)
    prob_sum = torch.zeros(4, dtype=torch.float64)
    for b in range(2):
        for j in range(t):
            logits = W @ x[b, j]
            p = torch.exp(logits - logits.max())
            p = p / p.sum()
            order = sorted(range(4), key=lambda i: -float(p[i]))[:k]
            z = sum(float(p[i]) for i in order)
            for i in order:
                f_i = layer.w2[i].detach() @ _gelu(layer.w1[i].detach() @ x[b, j])
                expected[b, j] += float(p[i]) / z * f_i
                counts[i] += 1
            prob_sum += p
    torch.testing.assert_close(out.y.detach(), expected, rtol=ROUTER_TOL, atol=ROUTER_TOL)
    f = counts / counts.sum()
    P = prob_sum / (2 * t)
    hand = 4 * float((f * P).sum())
    assert float(out.aux_loss.detach()) == pytest.approx(0.5 * hand, rel=ROUTER_TOL)


def test_top_k_routing_gates() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 1.0]])
    r = top_k_routing(logits, 2)
    assert r.experts.tolist() == [[1, 2], [0, 3]]
    p = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(r.gates[0].double(), p[0, [1, 2]] / p[0, [1, 2]].sum())
    with pytest.raises(ValueError, match="got 5"):
        top_k_routing(logits, 5)


def test_balance_loss_is_one_for_uniform_routing() -> None:
    """N Σ f_i P_i = 1 when P is uniform (any f) and when f is uniform (any P, Σ P_i = 1)."""
    n = 4
    uniform_p = torch.full((12, n), 1 / n)
    skewed_experts = torch.tensor([[0, 1]] * 12)  # f = (1/2, 1/2, 0, 0)
    assert float(load_balancing_loss(uniform_p, skewed_experts, n)) == pytest.approx(1.0)
    g = _gen(3)
    p = torch.softmax(torch.randn(12, n, generator=g), -1)
    balanced = torch.arange(12).reshape(12, 1) % n  # each expert 3 of 12 assignments
    assert float(load_balancing_loss(p, balanced, n)) == pytest.approx(1.0, rel=1e-6)
    # a collapsed router: every token to expert 0 with probability 1 gives N
    collapsed = F.one_hot(torch.zeros(12, dtype=torch.long), n).float()
    assert float(load_balancing_loss(collapsed, torch.zeros(12, 1, dtype=torch.long), n)) == 4.0


# --------------------------------------------------------------------------------------------
# Segment and sequence routing
# --------------------------------------------------------------------------------------------


@given(seed=seeds, t=st.integers(1, 11), seg=st.integers(1, 5))
@SETTINGS
def test_segment_scores_equal_loop(seed: int, t: int, seg: int) -> None:
    """Segment 0 uniform; segment k ≥ 1 routed by the mean of segment k − 1 (last may be short)."""
    g = _gen(seed)
    h = torch.randn(2, t, 5, generator=g, dtype=torch.float64)
    router = torch.nn.Linear(5, 3, bias=False).double()
    n_seg = math.ceil(t / seg)
    means = segment_means(h, seg)
    scores = segment_scores(h, router, seg, 3)
    assert means.shape == (2, n_seg, 5) and scores.shape == (2, n_seg, 3)
    for k in range(n_seg):
        torch.testing.assert_close(means[:, k], h[:, k * seg : (k + 1) * seg].mean(1))
        if k == 0:
            expected = torch.full((2, 3), 1 / 3, dtype=torch.float64)
        else:
            expected = torch.softmax(router(h[:, (k - 1) * seg : k * seg].mean(1)), -1)
        torch.testing.assert_close(scores[:, k], expected.detach(), rtol=ROUTER_TOL, atol=1e-7)
    seq = sequence_scores(h, router)
    torch.testing.assert_close(
        seq[:, 0], torch.softmax(router(h.mean(1)), -1).detach(), rtol=ROUTER_TOL, atol=1e-7
    )


@pytest.mark.parametrize("method", ["smear", "camex", "namex"])
@pytest.mark.parametrize(("t", "seg"), [(7, 3), (6, 3), (2, 4)])
def test_merged_layer_equals_token_loop(method: str, t: int, seg: int) -> None:
    """S13/S14 in the layer: token j of segment k uses Ê = E_m + η Σ s_{k,i} M_i τ_i."""
    layer = _layer(method, seed=1, n_experts=3, segment_len=seg, eta=0.7)
    x = torch.randn(2, t, 6, generator=_gen(5), dtype=torch.float64)
    base = layer.base()
    if base is None:
        terms_base, deltas = None, layer.experts()
    else:
        taus = [E - b for E, b in zip(layer.experts(), base, strict=True)]
        terms_base, deltas = base, layer.curve(taus)
    from namex_ref.merging import LayerTerms

    out = layer(x, LayerTerms(terms_base, deltas))
    eta = 1.0 if terms_base is None else 0.7
    expected = torch.zeros_like(x)
    for b in range(2):
        for j in range(t):
            s = out.scores[b, j // seg]
            w = []
            for m in range(2):
                acc = sum(s[i] * deltas[m][i] for i in range(3))
                w.append(eta * acc if terms_base is None else terms_base[m] + eta * acc)
            expected[b, j] = w[1] @ _gelu(w[0] @ x[b, j])
    torch.testing.assert_close(out.y.detach(), expected.detach(), rtol=F64_TOL, atol=F64_TOL)
    torch.testing.assert_close(out.scores[:, 0], torch.full((2, 3), 1 / 3, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Kronecker curvature (S14)
# --------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    n=st.integers(1, 3),
    dims=st.tuples(*[st.integers(1, 4)] * 4),
)
@SETTINGS
def test_kronecker_apply_equals_kron(seed: int, n: int, dims: tuple[int, int, int, int]) -> None:
    """M_i(τ_i) = (A_i⊗B_i) τ_i (C_i⊗D_i)ᵀ with torch.kron, for the row-major reshape."""
    o1, o2, i1, i2 = dims
    g = _gen(seed)
    tau = torch.randn(n, o1 * o2, i1 * i2, generator=g, dtype=torch.float64)
    A, B, C, D = (torch.randn(n, k, k, generator=g, dtype=torch.float64) for k in dims)
    got = kronecker_apply(tau, A, B, C, D)
    for i in range(n):
        ref = torch.kron(A[i], B[i]) @ tau[i] @ torch.kron(C[i], D[i]).T
        torch.testing.assert_close(got[i], ref, rtol=F64_TOL, atol=F64_TOL)


def test_kronecker_shape_mismatch() -> None:
    eye2 = torch.eye(2).expand(1, 2, 2)
    with pytest.raises(ValueError, match=re.escape("(6, 4)")):
        kronecker_apply(torch.zeros(1, 6, 4), eye2, eye2, eye2, eye2)


@pytest.mark.parametrize("rank", [None, 1, 3])
@pytest.mark.parametrize(("out", "inn"), [(12, 6), (7, 5), (1, 9)])
def test_curvature_identity_at_init(rank: int | None, out: int, inn: int) -> None:
    """CAMEx's init: M_i = I for the full and the low-rank (I + UVᵀ, V = 0) factors."""
    torch.manual_seed(0)
    curv = KroneckerCurvature(3, out, inn, rank).double()
    tau = torch.randn(3, out, inn, dtype=torch.float64)
    torch.testing.assert_close(curv(tau), tau, rtol=0, atol=F64_TOL)
    if rank is not None:  # after a step on V the operator is no longer I
        with torch.no_grad():
            curv.A.v.add_(0.1)
        assert not torch.allclose(curv(tau), tau)


def test_curve_is_the_identity_without_curvature() -> None:
    """MoEFeedForward.curve applies M_i (S14) per matrix, and is the identity for a method
    without curvature operators (smear, S13): the τ come back unchanged. A camex layer with
    perturbed factors does change them (the comparison can fail)."""
    g = _gen(5)
    taus = [torch.randn(4, 8, 6, generator=g, dtype=torch.float64),
            torch.randn(4, 6, 8, generator=g, dtype=torch.float64)]
    smear = _layer("smear", n_experts=4)
    assert smear.curvature is None
    for got, want in zip(smear.curve(taus), taus, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    camex = _layer("camex", n_experts=4)
    assert camex.curvature is not None
    with torch.no_grad():
        for p in camex.curvature.parameters():
            p.add_(0.1)
    assert not torch.allclose(camex.curve(taus)[0], taus[0])


@given(n=st.integers(1, 400))
@SETTINGS
def test_nearest_factors(n: int) -> None:
    a, b = nearest_factors(n)
    assert a * b == n and a <= b
    assert all(n % c for c in range(a + 1, math.isqrt(n) + 1))


# --------------------------------------------------------------------------------------------
# The merge (S13, S14) and the reduction S14 → S13
# --------------------------------------------------------------------------------------------


def test_merge_weights_equals_sum() -> None:
    g = _gen(2)
    deltas = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    base = torch.randn(4, 5, generator=g, dtype=torch.float64)
    scores = torch.softmax(torch.randn(2, 6, 3, generator=g, dtype=torch.float64), -1)
    got = merge_weights(base, deltas, scores, 0.3)
    assert got.shape == (2, 6, 4, 5)
    for b in range(2):
        for s in range(6):
            ref = base + 0.3 * sum(scores[b, s, i] * deltas[i] for i in range(3))
            torch.testing.assert_close(got[b, s], ref, rtol=F64_TOL, atol=F64_TOL)
    torch.testing.assert_close(
        merge_weights(None, deltas, scores, 1.0), merge_weights(base * 0, deltas, scores, 1.0)
    )


def test_camex_with_zero_base_and_identity_curvature_is_smear() -> None:
    """S14 → S13: E_m = 0, M_i = I (the curvature's init) and η = 1 give Ê = Σ s_i E_i.

    Since Σ s_i = 1, η = 1 and M = I already give Ê = E_m + Σ s_i(E_i − E_m) = Σ s_i E_i for
    any E_m (proofs/s13_s16_merging.py); η ≠ 1 with E_m ≠ 0, or M ≠ I, break the reduction."""
    camex = _layer("camex", seed=4, n_experts=3, segment_len=2)
    smear = _layer("smear", seed=4, n_experts=3, segment_len=2)
    with torch.no_grad():
        smear.w1.copy_(camex.w1)
        smear.w2.copy_(camex.w2)
        smear.router.weight.copy_(camex.router.weight)
    x = torch.randn(2, 5, 6, generator=_gen(0), dtype=torch.float64)
    y_s = smear(x, propagate([smear.experts()], [None], smear.config).terms[0]).y

    def camex_out(layer: MoEFeedForward) -> Tensor:
        plan = propagate([layer.experts()], [layer.base()], layer.config, curvature=[layer.curve])
        return layer(x, plan.terms[0]).y

    assert camex.base1 is not None and camex.base2 is not None
    # any E_m: Σ s_i = 1 only to float32 rounding (router softmax), so ROUTER_TOL here
    torch.testing.assert_close(camex_out(camex), y_s, rtol=ROUTER_TOL, atol=ROUTER_TOL)
    with torch.no_grad():
        camex.base1.zero_()
        camex.base2.zero_()
    torch.testing.assert_close(camex_out(camex), y_s, rtol=F64_TOL, atol=F64_TOL)  # E_m = 0
    camex_eta = _layer("camex", seed=4, n_experts=3, segment_len=2, eta=0.5)
    torch.testing.assert_close(camex_eta.w1, camex.w1)
    assert not torch.allclose(camex_out(camex_eta), y_s)  # η ≠ 1, E_m ≠ 0
    assert camex.curvature is not None
    with torch.no_grad():
        camex.curvature[0].A.full.add_(0.1)  # M ≠ I
    assert not torch.allclose(camex_out(camex), y_s)


# --------------------------------------------------------------------------------------------
# Propagation S15–S18 against hand-written recurrences
# --------------------------------------------------------------------------------------------


def _nash_alpha_oracle(taus: list[Tensor]) -> Tensor:
    """α of S4 from GᵀG of the concatenated flattened τ (not gram_matrix's per-matrix sum)."""
    G = torch.cat([t.reshape(t.shape[0], -1) for t in taus], dim=1).T  # (d, N)
    return solve_nash(G.T @ G).alpha


def _qmul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product, scalar–vector form, p: (4,), q: (..., 4)."""
    s1, v1 = p[0], p[1:]
    s2, v2 = q[..., :1], q[..., 1:]
    w = s1 * s2 - (v2 @ v1)[..., None]
    v = s1 * v2 + s2 * v1 + np.cross(np.broadcast_to(v1, v2.shape), v2)
    return np.concatenate([w, v], axis=-1)


def _oracle_bases(
    method: str,
    cfg: MergeConfig,
    experts: list[list[Tensor]],
    base0: list[Tensor],
    curv: list[Callable[[list[Tensor]], list[Tensor]]],
) -> tuple[list[list[Tensor]], list[Tensor | None]]:
    """S15–S18 written out: the base expert at every layer, and α in force at every layer."""
    spec = METHOD_TABLE[method]
    L, n, gamma = len(experts), cfg.n_experts, cfg.gamma
    scale = 1.0 if cfg.radius is None else cfg.radius / math.sqrt(n)
    base = [b.clone() for b in base0]
    mu_c = [torch.zeros(b.shape, dtype=torch.complex128) for b in base]
    mu_q = [np.zeros((*b.shape, 4)) for b in base]
    beta_c = cmath.rect(cfg.beta_abs, cfg.beta_phase)
    beta_q = np.array(cfg.beta_q)
    bases, alphas = [], []
    alpha: Tensor | None = None
    for l in range(L):
        bases.append([b.clone() for b in base])
        taus = [E - b for E, b in zip(experts[l], base, strict=True)]
        if spec.propagation == "nash":
            if l == 0 or (spec.resolve == "interval" and l % cfg.alpha_interval == 0):
                alpha = _nash_alpha_oracle(taus)
        alphas.append(alpha)
        if spec.propagation == "ep":
            curved = curv[l](taus)
            base = [
                b + gamma / n * sum(c[i] for i in range(n))
                for b, c in zip(base, curved, strict=True)
            ]
            continue
        assert alpha is not None
        deltas = [scale * sum(alpha[i] * t[i] for i in range(n)) for t in taus]
        if spec.momentum == "none":
            base = [b + gamma * d for b, d in zip(base, deltas, strict=True)]
        elif spec.momentum == "complex":
            mu_c = [beta_c * m + d for m, d in zip(mu_c, deltas, strict=True)]
            base = [b + (gamma * m).real for b, m in zip(base, mu_c, strict=True)]
        else:
            new_q = []
            for m, d in zip(mu_q, deltas, strict=True):
                m2 = _qmul(beta_q, m)
                m2[..., 0] += d.numpy()
                new_q.append(m2)
            mu_q = new_q
            base = [
                b + gamma * torch.from_numpy(m[..., 0]) for b, m in zip(base, mu_q, strict=True)
            ]
    return bases, alphas


@pytest.mark.parametrize("method", FIRST_LAYER_METHODS)
@pytest.mark.parametrize("interval", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_propagation_equals_recurrence(method: str, interval: int, seed: int) -> None:
    """Bases, merge deltas and α of propagate() equal S15/S16/S17/S18 written out (float64)."""
    L, n = 5, 3
    experts, bases = _case(seed, L, n)
    curv = _diag_curvature(seed, L, n)
    cfg = MergeConfig(
        method=method, n_experts=n, gamma=0.6, alpha_interval=interval,
        beta_abs=0.7, beta_phase=0.4, beta_q=(0.5, 0.3, -0.4, 0.2),
    )  # fmt: skip
    plan = propagate(experts, [bases[0]] + [None] * (L - 1), cfg, curvature=curv)
    ref_bases, ref_alphas = _oracle_bases(method, cfg, experts, bases[0], curv)
    for l in range(L):
        terms = plan.terms[l]
        assert terms.base is not None
        for m in range(2):
            torch.testing.assert_close(terms.base[m], ref_bases[l][m], rtol=1e-10, atol=1e-10)
        taus = [E - b for E, b in zip(experts[l], ref_bases[l], strict=True)]
        for got, ref in zip(terms.deltas, curv[l](taus), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        ref_a = ref_alphas[l]
        if ref_a is None:
            assert torch.isnan(plan.alphas[l]).all()
        else:
            torch.testing.assert_close(plan.alphas[l], ref_a, rtol=ALPHA_RTOL, atol=0)
        norm = math.sqrt(sum(float((b**2).sum()) for b in ref_bases[l]))
        assert float(plan.base_norms[l]) == pytest.approx(norm, rel=1e-12)
    assert not bool(plan.fallbacks.any())
    resolved = [
        l == 0 or (METHOD_TABLE[method].resolve == "interval" and l % interval == 0)
        for l in range(L)
    ]
    if METHOD_TABLE[method].propagation == "nash":
        assert (~torch.isnan(plan.residuals)).tolist() == resolved
        assert float(plan.residuals.nan_to_num(0).max()) <= NASH_RESIDUAL_TOL


@pytest.mark.parametrize("method", ["smoe", "smear", "camex"])
def test_propagation_without_chain(method: str) -> None:
    """SMoE/SMEAR merge the experts themselves; CAMEx uses each layer's own base (S13, S14)."""
    L, n = 3, 3
    experts, bases = _case(7, L, n)
    curv = _diag_curvature(7, L, n)
    cfg = MergeConfig(method=method, n_experts=n)
    plan = propagate(experts, bases, cfg, curvature=curv)
    for l in range(L):
        terms = plan.terms[l]
        if method == "camex":
            assert terms.base is not None
            for m in range(2):
                assert terms.base[m] is bases[l][m]
                torch.testing.assert_close(
                    terms.deltas[m],
                    curv[l]([E - b for E, b in zip(experts[l], bases[l], strict=True)])[m],
                )
        else:
            assert terms.base is None
            for m in range(2):
                assert terms.deltas[m] is experts[l][m]
    assert torch.isnan(plan.alphas).all() and torch.isnan(plan.residuals).all()
    if method == "camex":
        with pytest.raises(ValueError, match="camex"):
            propagate(experts, [bases[0], None, bases[2]], cfg)


def test_first_layer_methods_need_a_base() -> None:
    experts, _ = _case(0, 2, 3)
    with pytest.raises(ValueError, match="namex"):
        propagate(experts, [None, None], MergeConfig(method="namex", n_experts=3))


def _uniform_alpha(n: int) -> Callable[[list[Tensor], int], AlphaSolve]:
    def solve(taus: list[Tensor], layer: int) -> AlphaSolve:
        return AlphaSolve(
            torch.full((n,), 1.0 / n, dtype=torch.float64),
            torch.tensor(math.nan, dtype=torch.float64),
            torch.tensor(False),
        )

    return solve


def _assert_same_bases(p: object, q: object, tol: float = 1e-12) -> None:
    for a, b in zip(p.terms, q.terms, strict=True):  # type: ignore[attr-defined]
        for x, y in zip(a.base, b.base, strict=True):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)
        for x, y in zip(a.deltas, b.deltas, strict=True):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["namex", "namex-full"])
def test_namex_with_uniform_alpha_is_ep_camex(method: str) -> None:
    """S16 → S15: α ≡ 1/N and M = I give E_m' = E_m + (γ/N) Σ_i τ_i."""
    L, n = 4, 3
    experts, bases = _case(3, L, n)
    ep = propagate(
        experts, [bases[0]] + [None] * 3, MergeConfig(method="ep-camex", n_experts=n, gamma=0.8)
    )
    nx = propagate(
        experts,
        [bases[0]] + [None] * 3,
        MergeConfig(method=method, n_experts=n, gamma=0.8),
        solve_alpha=_uniform_alpha(n),
    )
    _assert_same_bases(ep, nx)
    # with the solved α (not 1/N) the chains differ: the check can fail
    solved = propagate(
        experts, [bases[0]] + [None] * 3, MergeConfig(method=method, n_experts=n, gamma=0.8)
    )
    assert not torch.allclose(solved.terms[2].base[0], ep.terms[2].base[0])


@pytest.mark.parametrize(
    ("mom", "plain"), [("namex-mom", "namex"), ("namex-full-mom", "namex-full")]
)
@pytest.mark.parametrize("phase", [0.0, 0.5, -2.0])
def test_zero_beta_momentum_is_namex(mom: str, plain: str, phase: float) -> None:
    """S17 with β = 0 is S16: μ' = ΔE, E_m' = E_m + γΔE."""
    experts, bases = _case(4, 4, 3)
    b0: list[list[Tensor] | None] = [bases[0], None, None, None]
    p = propagate(
        experts, b0, MergeConfig(method=mom, n_experts=3, beta_abs=0.0, beta_phase=phase, gamma=0.9)
    )
    q = propagate(experts, b0, MergeConfig(method=plain, n_experts=3, gamma=0.9))
    _assert_same_bases(p, q)
    r = propagate(experts, b0, MergeConfig(method=mom, n_experts=3, beta_abs=0.5, gamma=0.9))
    assert not torch.allclose(r.terms[2].base[0], q.terms[2].base[0])


@given(
    seed=seeds,
    beta=st.tuples(*[st.floats(-0.5, 0.5)] * 4).filter(lambda b: sum(x * x for x in b) < 0.98),
)
@settings(max_examples=10, deadline=None)
def test_namex_q_is_complex_momentum(seed: int, beta: tuple[float, float, float, float]) -> None:
    """S18 fact: NAMEx-Q with β equals NAMEx-Full-Mom with β_c = Re β + i‖Im β‖ on the bases."""
    experts, bases = _case(seed, 4, 3)
    b0: list[list[Tensor] | None] = [bases[0], None, None, None]
    bc = complex(beta[0], math.sqrt(beta[1] ** 2 + beta[2] ** 2 + beta[3] ** 2))
    q = propagate(experts, b0, MergeConfig(method="namex-q", n_experts=3, beta_q=beta))
    c = propagate(
        experts,
        b0,
        MergeConfig(
            method="namex-full-mom", n_experts=3, beta_abs=abs(bc), beta_phase=cmath.phase(bc)
        ),
    )
    _assert_same_bases(q, c, tol=1e-9)
    torch.testing.assert_close(q.alphas, c.alphas, rtol=1e-9, atol=0)
    # α solved once (Δl ≥ L): NAMEx-Q is NAMEx-Mom with β_c
    q1 = propagate(
        experts, b0, MergeConfig(method="namex-q", n_experts=3, beta_q=beta, alpha_interval=4)
    )
    m1 = propagate(
        experts,
        b0,
        MergeConfig(method="namex-mom", n_experts=3, beta_abs=abs(bc), beta_phase=cmath.phase(bc)),
    )
    _assert_same_bases(q1, m1, tol=1e-9)


@pytest.mark.parametrize("interval", [4, 5, 100])
def test_namex_full_with_long_interval_is_namex(interval: int) -> None:
    """NAMEx (α once) equals NAMEx-Full with Δl ≥ L; Δl = 1 differs (α re-solved)."""
    L = 4
    experts, bases = _case(5, L, 3)
    b0: list[list[Tensor] | None] = [bases[0], None, None, None]
    once = propagate(experts, b0, MergeConfig(method="namex", n_experts=3))
    full = propagate(
        experts, b0, MergeConfig(method="namex-full", n_experts=3, alpha_interval=interval)
    )
    _assert_same_bases(once, full, tol=0)
    torch.testing.assert_close(once.alphas, full.alphas, rtol=0, atol=0)
    every = propagate(experts, b0, MergeConfig(method="namex-full", n_experts=3))
    assert not torch.allclose(every.alphas[2], once.alphas[2])


def test_radius_scales_the_bargained_update() -> None:
    """Our convention: ΔE = (ε/√N) Gα, so ‖ΔE‖ = ε by S7 (‖Gα‖² = N); unscaled ‖ΔE‖ = √N."""
    experts, bases = _case(6, 2, 4)
    b0: list[list[Tensor] | None] = [bases[0], None]
    for radius, expected in ((None, 2.0), (0.3, 0.3)):
        plan = propagate(experts, b0, MergeConfig(method="namex", n_experts=4, radius=radius))
        assert plan.terms[1].base is not None and plan.terms[0].base is not None
        step = math.sqrt(
            sum(
                float(((a - b) ** 2).sum())
                for a, b in zip(plan.terms[1].base, plan.terms[0].base, strict=True)
            )
        )
        assert step == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------
# The bargain (S4) and the singular-bargain policies
# --------------------------------------------------------------------------------------------


@given(seed=seeds, n=st.integers(2, 6), extra=st.integers(0, 6))
@SETTINGS
def test_bargain_alpha_solves_s4(seed: int, n: int, extra: int) -> None:
    """Kα = 1/α to 1e-10 on full-rank Gaussian τ; agrees with solve_nash; never a fallback."""
    rng = np.random.default_rng(seed)
    d1 = max(n + extra, 1)
    taus = [
        torch.from_numpy(rng.standard_normal((n, d1, 2))),
        torch.from_numpy(rng.standard_normal((n, 3))),
    ]
    res = bargain_alpha(taus, singular_policy="raise", layer=0)
    G = torch.cat([t.reshape(n, -1) for t in taus], 1).T  # (d, N)
    u = G.T @ (G @ res.alpha)  # utilities u_i = τ_iᵀ Gα (S7)
    assert float((res.alpha * u - 1).abs().max()) <= NASH_RESIDUAL_TOL
    assert float(res.residual) <= NASH_RESIDUAL_TOL and not bool(res.fallback)
    torch.testing.assert_close(res.alpha, solve_nash(G.T @ G).alpha, rtol=ALPHA_RTOL, atol=0)
    for policy in ("ridge", "uniform"):
        same = bargain_alpha(taus, singular_policy=policy)
        # "ridge" solves the bargain batched with its ridge problem ((2, N, N), one call):
        # batched and unbatched LAPACK kernels may round the last bit differently, so the
        # policies agree to a few float64 ulps (measured: 1 ulp), not bit for bit.
        torch.testing.assert_close(same.alpha, res.alpha, rtol=4 * 2.0**-52, atol=0)
        assert not bool(same.fallback)


@given(problem=st.one_of(cone_problems(), scaled_problems()), iterations=st.sampled_from([3, 20]))
@SETTINGS
def test_bargain_alpha_never_silent(problem: tuple[Tensor, Tensor], iterations: int) -> None:
    """Feasible but hard bargains (singular K, norms over 1e-2…1e2): within the fixed budget α is
    either converged (residual at Newton's tolerance) or flagged as a fallback; "raise" then
    finishes the solve with the full solver instead of raising."""
    G, K = problem
    taus = [G.T.contiguous()]  # (N, d)
    res = bargain_alpha(taus, singular_policy="ridge", newton_iterations=iterations)
    true_res = float((res.alpha * (K @ res.alpha) - 1).abs().max())
    if not bool(res.fallback):
        assert float(res.residual) <= NEWTON_CONVERGED and true_res <= NEWTON_CONVERGED
    else:
        assert float(res.residual) > RESIDUAL_TOL
    full = bargain_alpha(taus, singular_policy="raise", newton_iterations=iterations, layer=0)
    assert float(full.residual) <= NEWTON_CONVERGED
    torch.testing.assert_close(full.alpha, solve_nash(K).alpha, rtol=1e-6, atol=0)


def test_bargain_alpha_is_detached() -> None:
    taus = [torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    res = bargain_alpha(taus)
    assert res.alpha.grad_fn is None and not res.alpha.requires_grad


def _zero_expert() -> list[Tensor]:
    t = torch.randn(3, 5, 4, generator=_gen(0), dtype=torch.float64)
    t[1] = 0.0
    return [t]


def _anti_parallel() -> list[Tensor]:
    u = torch.randn(1, 6, generator=_gen(1), dtype=torch.float64)
    w = torch.randn(1, 6, generator=_gen(2), dtype=torch.float64)
    return [torch.cat([u, -2.0 * u, w])]  # τ_1 = −2τ_0: v = (2, 1, 0) has Gv = 0 (S6)


@pytest.mark.parametrize(
    ("make", "error"),
    [(_zero_expert, DegenerateExpertError), (_anti_parallel, InfeasibleBargainError)],
)
def test_singular_bargain_policies(
    make: Callable[[], list[Tensor]], error: type[Exception]
) -> None:
    """ "raise" names the MoE layer; "ridge"/"uniform" give finite α and flag the fallback."""
    taus = make()
    with pytest.raises(error, match="MoE layer 3") as info:
        bargain_alpha(taus, singular_policy="raise", layer=3)
    assert isinstance(info.value, InfeasibleBargainError) and info.value.certificate.numel() == 3
    n = taus[0].shape[0]
    for policy in ("ridge", "uniform"):
        res = bargain_alpha(taus, singular_policy=policy, layer=3)
        assert bool(res.fallback) and bool(torch.isfinite(res.alpha).all())
        assert bool((res.alpha > 0).all())
        assert float(res.residual) >= 0.5  # no α solves an infeasible bargain
    res = bargain_alpha(taus, singular_policy="uniform")
    G = taus[0].reshape(n, -1)
    assert float(torch.linalg.norm(res.alpha @ G)) == pytest.approx(math.sqrt(n), rel=1e-12)
    assert torch.all(res.alpha == res.alpha[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_experts_equal_to_base(dtype: torch.dtype) -> None:
    """Every τ_i = 0: "raise" raises; "ridge"/"uniform" give α = 1 (was ~1e154, which is inf
    in float32 and made ΔE = inf·0 = NaN)."""
    taus = [torch.zeros(3, 4, 5, dtype=dtype), torch.zeros(3, 2, dtype=dtype)]
    with pytest.raises(DegenerateExpertError, match="MoE layer 1"):
        bargain_alpha(taus, singular_policy="raise", layer=1)
    for policy in ("ridge", "uniform"):
        res = bargain_alpha(taus, singular_policy=policy)
        assert bool(res.fallback) and res.alpha.tolist() == [1.0, 1.0, 1.0]


def test_uniform_policy_bounded_when_experts_cancel() -> None:
    """τ_1 = −τ_0 exactly: 1ᵀK1 = 0, α stays finite and moderate instead of ~1e15."""
    u = torch.randn(1, 8, generator=_gen(3))
    res = bargain_alpha([torch.cat([u, -u])], singular_policy="uniform")
    assert bool(res.fallback) and float(res.alpha.max()) < 1e4 / float(u.norm())


def test_non_finite_experts() -> None:
    t = torch.randn(3, 4, dtype=torch.float64)
    t[0, 0] = math.nan
    with pytest.raises(BargainInputError, match="MoE layer 5"):
        bargain_alpha([t], singular_policy="raise", layer=5)
    res = bargain_alpha([t], singular_policy="ridge")
    assert bool(res.fallback) and bool(torch.isfinite(res.alpha).all())
    assert math.isnan(float(res.residual))


def test_raise_policy_accepts_float32_near_parallel() -> None:
    """Regression: near-parallel float32 experts with an exhausted Newton budget used to reach
    solve_nash with K cast to float64, whose PSD tolerance (1.5e-8) flagged float32 rounding as
    'not positive semi-definite'. K is now validated in the precision it was formed in."""
    g = _gen(0)
    t = torch.randn(1, 4000, generator=g) + 1e-4 * torch.randn(4, 4000, generator=g)
    res = bargain_alpha([t], singular_policy="raise", newton_iterations=1, layer=0)
    assert bool(res.fallback)  # re-solved by the full solver
    assert float(res.residual) <= 1e-6


def test_bad_policy() -> None:
    with pytest.raises(ValueError, match="'skip'"):
        bargain_alpha([torch.randn(2, 3)], singular_policy="skip")


# --------------------------------------------------------------------------------------------
# Gradients: experts, bases and curvature get them; α is a constant (S16)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["namex", "namex-full", "namex-full-mom", "namex-q"])
def test_alpha_is_constant_for_autograd(method: str) -> None:
    """∂loss/∂(experts, base, curvature) with the solved α equals the gradient with α fixed to a
    constant tensor through the solve_alpha hook: no gradient path runs through K → α."""
    L, n = 3, 3
    experts, bases = _case(9, L, n)
    leaves = [t.requires_grad_() for layer in experts for t in layer]
    base0 = [b.clone().requires_grad_() for b in bases[0]]
    scale = [torch.ones(n, *p, dtype=torch.float64, requires_grad=True) for p in SHAPES]

    def curve(taus: list[Tensor]) -> list[Tensor]:
        return [s * t for s, t in zip(scale, taus, strict=True)]

    g = _gen(11)
    probes = [
        [torch.randn(2, *p, generator=g, dtype=torch.float64) for p in SHAPES] for _ in range(L)
    ]
    scores = torch.softmax(torch.randn(2, n, generator=g, dtype=torch.float64), -1)
    cfg = MergeConfig(method=method, n_experts=n)
    b0: list[list[Tensor] | None] = [base0] + [None] * (L - 1)
    params = [*leaves, *base0, *scale]

    def loss_and_grads(plan: object) -> tuple[list[Tensor], Tensor]:
        loss = sum(
            (merge_weights(t.base[m], t.deltas[m], scores, 0.5) * probes[l][m]).sum()
            for l, t in enumerate(plan.terms)  # type: ignore[attr-defined]
            for m in range(2)
        )
        return list(torch.autograd.grad(loss, params)), plan.alphas  # type: ignore

    grads, alphas = loss_and_grads(propagate(experts, b0, cfg, curvature=[curve] * L))
    assert alphas.grad_fn is None
    fixed = {l: alphas[l].clone() for l in range(L)}

    def constant(taus: list[Tensor], layer: int) -> AlphaSolve:
        return AlphaSolve(fixed[layer], torch.tensor(0.0), torch.tensor(False))

    grads_c, _ = loss_and_grads(
        propagate(experts, b0, cfg, curvature=[curve] * L, solve_alpha=constant)
    )
    for a, b in zip(grads, grads_c, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for gr in grads:  # every expert, the base and the curvature receive a gradient
        assert bool((gr.reshape(gr.shape[0], -1).abs().sum(-1) > 0).all())
