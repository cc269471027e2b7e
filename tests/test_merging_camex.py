"""The CAMEx-code options of the one merging layer (docs/math.md §6, "CAMEx options"), each
against an independent written-out formula on random, non-identity factors.

Oracles: Kronecker terms by ``torch.kron`` on the row-major vec(τ) summed over a Python loop;
the layer by a per-(sequence, segment, token) loop that merges Ê = E_m + η Σ_i s_i m_i M_i(τ_i)
expert by expert (S14) with masks, dropout and noisy gates written out element by element; the
noisy gate and cv² by per-row loops with ``math.erf`` and ``statistics.variance``. Random draws
are replayed from the seed in the order the layer documents (``MoEFeedForward._merged``).

Tolerances: float64 merges on O(1) data, 1e-12 (``F64_TOL``, a handful of products per entry);
anything downstream of a router runs through a float32 softmax (docs/math.md §7), so 1e-5
(``ROUTER_TOL``, as in tests/test_merging.py).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import namex_ref.merging.plan as plan
from namex_ref.merging import LayerTerms, MergeConfig, MoEFeedForward, propagate
from namex_ref.merging.config import CAMEX_PAPER
from namex_ref.merging.layers import KroneckerCurvature
from namex_ref.merging.routing import cv_squared, noisy_top_k_gating
from namex_ref.models.gpt import MoEGPT, preset

F64_TOL = 1e-12
ROUTER_TOL = 1e-5
C, FF, N = 4, 6, 3  # d_model, d_ff (factors 2x2 and 2x3), experts


def _gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU written out."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _randomise(layer: MoEFeedForward, seed: int) -> None:
    """O(1) experts, base, biases, curvature factors I + 0.3·noise (non-identity), and routers
    of scale 0.3 (hidden activations are O(10): an O(1) router would saturate the float32 gate
    softmax to exact zeros, which the float64 oracle does not reproduce)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.startswith("curvature"):
                p.add_(0.3 * noise)
            elif "router" in name:
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise)


def _layer(seed: int = 0, **kw: Any) -> MoEFeedForward:
    kw.setdefault("method", "camex")
    cfg = MergeConfig(n_experts=N, segment_len=3, eta=0.7, **kw)
    torch.manual_seed(seed)
    layer = MoEFeedForward(C, FF, cfg, has_base=cfg.spec.base != "none").double()
    _randomise(layer, seed + 100)
    return layer


def _terms(layer: MoEFeedForward) -> LayerTerms:
    return propagate([layer.experts()], [layer.base()], layer.config, [layer.curve]).terms[0]


# --------------------------------------------------------------------------------------------
# Independent oracles
# --------------------------------------------------------------------------------------------


def kron_curvature_oracle(mod: KroneckerCurvature, tau: Tensor) -> Tensor:
    """Σ_j (A_ij⊗B_ij⊗C_ij⊗D_ij) vec(τ_i) (row-major vec), expert by expert, term by term;
    for a bias Σ_j (A_ij⊗B_ij) b_i. Factor j of expert i is entry j·N + i (documented layout)."""
    n, r = tau.shape[0], mod.terms
    A, B = mod.A().detach(), mod.B().detach()
    out = torch.zeros_like(tau)
    for i in range(n):
        for j in range(r):
            e = j * n + i
            if mod.vector:
                out[i] += torch.kron(A[e], B[e]) @ tau[i]
            else:
                Cf, Df = mod.C().detach(), mod.D().detach()
                op = torch.kron(torch.kron(A[e], B[e]), torch.kron(Cf[e], Df[e]))
                out[i] += (op @ tau[i].reshape(-1)).reshape(tau.shape[1:])
    return out


def gate_oracle(
    clean: list[float], raw: list[float], k: int, noise: list[float] | None
) -> tuple[list[float], list[float]]:
    """One row of Shazeer et al.'s noisy top-k gate, written out: (gates, P(in top k))."""
    n = len(clean)
    sigma = [math.log1p(math.exp(v)) + 1e-2 for v in raw]
    eps = noise if noise is not None else [0.0] * n
    logit = [c + e * s for c, e, s in zip(clean, eps, sigma, strict=True)]
    order = sorted(range(n), key=lambda e: -logit[e])
    top = order[:k]
    z = sum(math.exp(logit[e] - logit[order[0]]) for e in top)
    gates = [math.exp(logit[e] - logit[order[0]]) / z if e in top else 0.0 for e in range(n)]
    if noise is None or k == n:
        return gates, [1.0 if g > 0 else 0.0 for g in gates]
    kth, k1th = logit[order[k - 1]], logit[order[k]]
    prob = [
        _phi((clean[e] - k1th) / sigma[e]) if logit[e] > k1th else _phi((clean[e] - kth) / sigma[e])
        for e in range(n)
    ]
    return gates, prob


def cv2_oracle(values: list[float]) -> float:
    return statistics.variance(values) / (statistics.fmean(values) ** 2 + 1e-10)


def layer_oracle(
    layer: MoEFeedForward, x: Tensor, draws: dict[str, Any]
) -> tuple[Tensor, float]:
    """The layer's output and balance loss by loops (S14 with every CAMEx option written out).

    draws: replayed randomness: "dare" per-matrix (N, *P) masks, "noise1"/"noise2" (B·U, N)
    gate noise, "keep1"/"keep2" (B, S, N) dropout masks; absent = not drawn.
    """
    cfg = layer.config
    Bsz, T, _ = x.shape
    L = cfg.segment_len
    S = math.ceil(T / L)
    experts = [p.detach() for p in layer.experts()]
    base_p = layer.base()
    assert base_p is not None
    base = [p.detach() for p in base_p]
    n_mat = len(experts)
    terms: list[list[Tensor]] = [[experts[m][i] - base[m] for i in range(N)] for m in range(n_mat)]
    # curvature (torch.kron, expert by expert), then the masks, entry by entry
    for m in range(n_mat):
        assert layer.curvature is not None
        taus = torch.stack(terms[m])
        curved = kron_curvature_oracle(layer.curvature[m], taus)
        for i in range(N):
            t = curved[i]
            if cfg.sign_mask == "ties":
                tau_i, tau_sum = taus[i], taus.sum(0)
                agree = torch.zeros_like(tau_i)
                flat_i, flat_s, flat_a = tau_i.reshape(-1), tau_sum.reshape(-1), agree.view(-1)
                for q in range(flat_i.numel()):
                    a, c = float(flat_i[q]), float(flat_s[q])
                    si = (a > 0) - (a < 0)
                    ss = (c > 0) - (c < 0)
                    flat_a[q] = 1.0 if si == ss else 0.0
                t = t * agree
            if "dare" in draws:
                t = t * draws["dare"][m][i]
            terms[m][i] = t

    def unit_inputs(h: Tensor) -> list[list[Tensor]]:
        """Per sequence, the mean of segments 0 … S − 2 (the router input of segment k + 1)."""
        return [
            [h[b, k * L : min((k + 1) * L, T)].mean(0) for k in range(S - 1)] for b in range(Bsz)
        ]

    def scores_for(
        h: Tensor, router: Any, noise_router: Any, noise: Tensor | None
    ) -> tuple[Tensor, float]:
        s = torch.full((Bsz, S, N), 1.0 / N, dtype=torch.float64)
        units = unit_inputs(h)
        gates_rows, load_rows = [], []
        for b in range(Bsz):
            for k in range(S - 1):
                u = units[b][k]
                clean = [float(v) for v in router.weight.detach() @ u]
                if cfg.gate == "softmax":
                    z = sum(math.exp(c) for c in clean)
                    gates = [math.exp(c) / z for c in clean]
                else:
                    raw = [float(v) for v in noise_router.weight.detach() @ u]
                    eps = None if noise is None else [float(v) for v in noise[b * (S - 1) + k]]
                    gates, load = gate_oracle(clean, raw, cfg.gate_k, eps)
                    gates_rows.append(gates)
                    load_rows.append(load)
                s[b, k + 1] = torch.tensor(gates, dtype=torch.float64)
        aux = 0.0
        if cfg.gate == "noisy-top-k":
            importance = [sum(r[e] for r in gates_rows) for e in range(N)]
            load_tot = [sum(r[e] for r in load_rows) for e in range(N)]
            aux = cfg.balance_coef * (cv2_oracle(importance) + cv2_oracle(load_tot))
        return s, aux

    def drop(s: Tensor, keep: Tensor | None) -> Tensor:
        return s if keep is None else s * keep / (1.0 - cfg.term_dropout)

    def merged(m: int, s: Tensor) -> Tensor:
        acc = base[m].clone()
        for i in range(N):
            acc = acc + cfg.eta * s[i] * terms[m][i]
        return acc

    s1, aux = scores_for(x, layer.router, layer.noise_router, draws.get("noise1"))
    s1 = drop(s1, draws.get("keep1"))
    h = torch.zeros(Bsz, T, FF, dtype=torch.float64)
    for b in range(Bsz):
        for t in range(T):
            seg = t // L
            pre = merged(0, s1[b, seg]) @ x[b, t]
            if n_mat == 4:
                pre = pre + merged(2, s1[b, seg])
            h[b, t] = _gelu(pre)
    s2 = s1
    if cfg.router_per_matrix:
        s2, aux2 = scores_for(
            h, layer.router_hidden, layer.noise_router_hidden, draws.get("noise2")
        )
        s2 = drop(s2, draws.get("keep2"))
        aux += aux2
    y = torch.zeros_like(x)
    for b in range(Bsz):
        for t in range(T):
            seg = t // L
            out = merged(1, s2[b, seg]) @ h[b, t]
            if n_mat == 4:
                out = out + merged(3, s2[b, seg])
            y[b, t] = out
    return y, aux


def replay(layer: MoEFeedForward, seed: int, Bsz: int, T: int) -> dict[str, Any]:
    """The layer's random draws in its documented order, from ``torch.manual_seed(seed)``."""
    cfg = layer.config
    S = math.ceil(T / cfg.segment_len)
    torch.manual_seed(seed)
    draws: dict[str, Any] = {}
    if cfg.sign_mask == "dare":
        draws["dare"] = [
            torch.empty_like(p.detach()).bernoulli_(cfg.dare_keep) for p in layer.experts()
        ]
    for idx in ("1", "2") if cfg.router_per_matrix else ("1",):
        if cfg.gate == "noisy-top-k":
            draws["noise" + idx] = torch.randn(Bsz * (S - 1), N)
        if cfg.term_dropout > 0:
            draws["keep" + idx] = torch.empty(Bsz, S, N, dtype=torch.float64).bernoulli_(
                1.0 - cfg.term_dropout
            )
    return draws


# --------------------------------------------------------------------------------------------
# kronecker_terms (CAMEx's rank_c)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("terms", [1, 2, 3])
@pytest.mark.parametrize(("out", "inn", "vector"), [(6, 4, False), (4, 6, False), (6, 1, True)])
def test_kronecker_terms_equal_sum_of_krons(terms: int, out: int, inn: int, vector: bool) -> None:
    """M_i(τ) = Σ_j (A_ij⊗B_ij) τ (C_ij⊗D_ij)ᵀ against torch.kron on vec(τ), random factors."""
    torch.manual_seed(terms)
    mod = KroneckerCurvature(N, out, inn, None, terms, vector=vector).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.5 * torch.randn_like(p))
    tau = torch.randn(N, out, dtype=torch.float64) if vector else torch.randn(
        N, out, inn, dtype=torch.float64
    )
    got = mod(tau)
    torch.testing.assert_close(got, kron_curvature_oracle(mod, tau), rtol=F64_TOL, atol=F64_TOL)


@pytest.mark.parametrize("terms", [1, 4, 8])
def test_kronecker_terms_start_at_r_times_identity(terms: int) -> None:
    """Identity-initialised factors: M_i = r·I at initialisation (CAMEx's rank_c)."""
    for vector in (False, True):
        mod = KroneckerCurvature(N, 6, 4, None, terms, vector=vector).double()
        tau = torch.randn((N, 6) if vector else (N, 6, 4), dtype=torch.float64)
        torch.testing.assert_close(mod(tau), terms * tau, rtol=F64_TOL, atol=F64_TOL)
        n_params = sum(p.numel() for p in mod.parameters())
        per_term = (2 * 2 + 3 * 3) + (0 if vector else 2 * 2 + 2 * 2)
        assert n_params == terms * N * per_term


# --------------------------------------------------------------------------------------------
# The layer against the loop oracle, option by option
# --------------------------------------------------------------------------------------------

OPTION_CASES: dict[str, dict[str, Any]] = {
    "kronecker_terms": dict(kronecker_terms=3),
    "term_dropout": dict(term_dropout=0.4),
    "ties": dict(sign_mask="ties"),
    "dare": dict(sign_mask="dare", dare_keep=0.7),
    "noisy_gate_k_lt_n": dict(gate="noisy-top-k", gate_top_k=2, balance_coef=0.3),
    "noisy_gate_k_eq_n": dict(gate="noisy-top-k", balance_coef=0.3),
    "router_per_matrix": dict(router_per_matrix=True),
    "expert_bias": dict(expert_bias=True),
    "all_with_two_noisy_routers": dict(
        kronecker_terms=2, term_dropout=0.3, sign_mask="ties", gate="noisy-top-k", gate_top_k=1,
        balance_coef=0.2, router_per_matrix=True, expert_bias=True,
    ),
    "camex_paper": dict(CAMEX_PAPER, balance_coef=0.3),
    "camex_paper_dropout": dict(CAMEX_PAPER, term_dropout=0.5, balance_coef=0.3),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_layer_equals_loop_oracle(case: str, training: bool, seed: int) -> None:
    """Ê_(b,s) = E_m + η Σ_i s_bsi m_bsi/(1 − p) · mask_i ∘ Σ_j M_ij(τ_i), one expert forward
    per token, with the options' draws replayed; eval mode draws nothing (no noise, no dropout,
    no DARE mask)."""
    layer = _layer(seed=seed, **OPTION_CASES[case])
    layer.train(training)
    Bsz, T = 2, 7
    x = torch.randn(Bsz, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    terms = _terms(layer)
    torch.manual_seed(1234 + seed)
    out = layer(x, terms)
    draws = replay(layer, 1234 + seed, Bsz, T) if training else {}
    y, aux = layer_oracle(layer, x, draws)
    torch.testing.assert_close(out.y.detach(), y, rtol=ROUTER_TOL, atol=ROUTER_TOL)
    assert float(out.aux_loss.detach()) == pytest.approx(aux, rel=ROUTER_TOL, abs=1e-9)


def test_dropout_acts_on_whole_expert_terms_per_segment() -> None:
    """Dropout2d granularity: in training each (sequence, segment, expert) term is either kept
    (scaled 1/(1 − p)) or gone; measured by reading the merged W1 off a linear probe."""
    layer = _layer(seed=3, term_dropout=0.5)
    layer.train()
    terms = _terms(layer)
    x = torch.randn(2, 9, C, dtype=torch.float64)
    torch.manual_seed(7)
    out = layer(x, terms)
    torch.manual_seed(7)
    keep = torch.empty(2, 3, N, dtype=torch.float64).bernoulli_(0.5)
    assert 0 < int(keep.sum()) < keep.numel()  # both outcomes occur, so the test can fail
    y, _ = layer_oracle(layer, x, {"keep1": keep})
    torch.testing.assert_close(out.y.detach(), y, rtol=ROUTER_TOL, atol=ROUTER_TOL)
    # the same mask for every segment of a sequence (a coarser granularity) gives another output
    per_sequence = keep[:, :1].expand_as(keep)
    assert not torch.equal(per_sequence, keep)
    y_seq, _ = layer_oracle(layer, x, {"keep1": per_sequence})
    assert not torch.allclose(out.y.detach(), y_seq, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", ["term_dropout", "dare", "noisy_gate_k_lt_n"])
def test_eval_mode_is_deterministic_and_mask_free(case: str) -> None:
    """In eval mode dropout and DARE are the identity and the gate is noise-free: the output
    equals the option-free layer's (same parameters), for two different global seeds."""
    opts = OPTION_CASES[case]
    layer = _layer(seed=5, **opts).eval()
    plain_opts = {k: v for k, v in opts.items() if k in ("gate", "gate_top_k", "balance_coef")}
    plain = _layer(seed=5, **plain_opts).eval()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 7, C, dtype=torch.float64)
    torch.manual_seed(0)
    a = layer(x, _terms(layer)).y
    torch.manual_seed(1)
    b = layer(x, _terms(layer)).y
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, plain(x, _terms(plain)).y, rtol=0, atol=0)


def test_ties_mask_small_example() -> None:
    """By hand: τ_1 = (1, −2, 0), τ_2 = (3, 1, −1), Σ = (4, −1, −1): masks (1, 1, 0), (1, 0, 1)."""
    layer = _layer(seed=0, sign_mask="ties")
    base = layer.base()
    assert base is not None
    tau = torch.zeros(N, FF, C, dtype=torch.float64)
    tau[0, 0, :3] = torch.tensor([1.0, -2.0, 0.0])
    tau[1, 0, :3] = torch.tensor([3.0, 1.0, -1.0])
    with torch.no_grad():
        layer.w1.copy_(base[0] + tau)
    terms = LayerTerms([b.detach() for b in base], [tau.clone(), torch.ones_like(layer.w2)])
    masked = layer._masked_deltas(terms)[0]
    assert masked[0, 0, :3].tolist() == [1.0, -2.0, 0.0]  # entry 2: sign 0 vs sign −1
    assert masked[1, 0, :3].tolist() == [3.0, 0.0, -1.0]
    assert masked[2].abs().sum() == 0


# --------------------------------------------------------------------------------------------
# The noisy top-k gate and cv²
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("noisy", [True, False])
def test_noisy_gate_equals_row_formula(k: int, noisy: bool) -> None:
    """Gates = softmax over the k largest of x̄W_g + ε(softplus(x̄W_n) + 1e-2); load = Σ_r
    Φ((clean − θ)/σ) in training with k < N, else the count of non-zero gates."""
    g = torch.Generator().manual_seed(k)
    R, n = 6, 4
    clean = torch.randn(R, n, generator=g, dtype=torch.float64) * 2
    raw = torch.randn(R, n, generator=g, dtype=torch.float64)
    noise = torch.randn(R, n, generator=g, dtype=torch.float64) if noisy else None
    got = noisy_top_k_gating(clean, raw, k, noise)
    load = [0.0] * n
    for r in range(R):
        eps = None if noise is None else noise[r].tolist()
        gates, prob = gate_oracle(clean[r].tolist(), raw[r].tolist(), k, eps)
        torch.testing.assert_close(got.gates[r].double(), torch.tensor(gates, dtype=torch.float64),
                                   rtol=ROUTER_TOL, atol=ROUTER_TOL)
        load = [a + b for a, b in zip(load, prob, strict=True)]
    torch.testing.assert_close(got.load.double(), torch.tensor(load, dtype=torch.float64),
                               rtol=ROUTER_TOL, atol=ROUTER_TOL)
    assert got.gates.dtype == got.load.dtype == torch.float32  # computed in float32 (§7)
    for bad in (0, n + 1):
        with pytest.raises(ValueError, match="k must be"):
            noisy_top_k_gating(clean, raw, bad, noise)


def test_cv_squared_equals_statistics() -> None:
    vals = [0.5, 2.0, 1.25, 3.0]
    assert float(cv_squared(torch.tensor(vals))) == pytest.approx(cv2_oracle(vals), rel=1e-6)
    assert float(cv_squared(torch.tensor([1.0, 3.0]))) == pytest.approx(0.5, rel=1e-6)  # 2/4
    assert float(cv_squared(torch.tensor([2.0]))) == 0.0
    assert float(cv_squared(torch.zeros(3))) == 0.0  # no routed unit: 0/(0 + 1e-10), not NaN


def test_noisy_gate_with_sequence_routing() -> None:
    """routing="sequence": one noisy top-k score row per sequence from its mean (eval: no
    noise), and the balance loss over the B rows."""
    cfg = MergeConfig(method="camex", n_experts=4, gate="noisy-top-k", gate_top_k=2,
                      routing="sequence", balance_coef=0.5)
    torch.manual_seed(0)
    layer = MoEFeedForward(C, FF, cfg, has_base=True).double().eval()
    _randomise(layer, 3)
    x = torch.randn(3, 5, C, dtype=torch.float64)
    out = layer(x, _terms(layer))
    assert layer.noise_router is not None
    rows = []
    for b in range(3):
        u = x[b].mean(0)
        gates, _ = gate_oracle((layer.router.weight.detach() @ u).tolist(),
                               (layer.noise_router.weight.detach() @ u).tolist(), 2, None)
        rows.append(gates)
        torch.testing.assert_close(out.scores[b, 0], torch.tensor(gates, dtype=torch.float64),
                                   rtol=ROUTER_TOL, atol=ROUTER_TOL)
    importance = [sum(r[e] for r in rows) for e in range(4)]
    load = [float(sum(r[e] > 0 for r in rows)) for e in range(4)]
    aux = 0.5 * (cv2_oracle(importance) + cv2_oracle(load))
    assert float(out.aux_loss.detach()) == pytest.approx(aux, rel=ROUTER_TOL)


def test_noisy_gate_noise_only_in_training() -> None:
    layer = _layer(seed=2, gate="noisy-top-k", gate_top_k=2)
    x = torch.randn(2, 7, C, dtype=torch.float64)
    terms = _terms(layer)
    layer.train()
    torch.manual_seed(0)
    a = layer(x, terms).scores
    torch.manual_seed(1)
    b = layer(x, terms).scores
    assert not torch.equal(a, b)  # the noise moves the training gates
    assert ((a[:, 1:] > 0).sum(-1) == 2).all()  # exactly k non-zero gates per routed segment


# --------------------------------------------------------------------------------------------
# The bargain sees the raw τ
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        dict(sign_mask="ties", term_dropout=0.5),
        dict(sign_mask="dare"),
        dict(gate="noisy-top-k", gate_top_k=2, router_per_matrix=True, term_dropout=0.2),
    ],
)
def test_masks_and_dropout_leave_the_bargain_alone(
    opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The τ handed to the bargain are E_i − E_m^(l) of the raw parameters (so K = Σ τ τᵀ and α
    are those of the option-free model with the same parameters), in training mode."""
    cfg = dataclasses.replace(
        preset("tiny", "namex-full-mom"), n_layer=2, d_model=16, d_ff=32, vocab_size=64,
        seq_len=16,
    )
    cfg_opts = cfg.with_method("namex-full-mom", segment_len=4, **opts)
    seen: list[list[Tensor]] = []
    real = plan.bargain_alpha

    def spy(taus: Any, **kw: Any) -> Any:
        seen.append([t.detach().clone() for t in taus])
        return real(taus, **kw)

    monkeypatch.setattr(plan, "bargain_alpha", spy)
    torch.manual_seed(0)
    model = MoEGPT(cfg_opts).double().train()
    plain = MoEGPT(cfg.with_method("namex-full-mom", segment_len=4)).double().train()
    plain.load_state_dict(model.state_dict(), strict=False)
    idx = torch.randint(0, 64, (2, 16))
    out = model(idx, idx)
    first = seen[0]
    layer0 = model.moe_layers()[0]
    base0 = layer0.base()
    assert base0 is not None
    for t, E, b in zip(first, layer0.experts(), base0, strict=True):
        torch.testing.assert_close(t, (E - b).detach(), rtol=0, atol=0)
    K = sum(t.reshape(t.shape[0], -1) @ t.reshape(t.shape[0], -1).T for t in first)
    K_plain = sum(
        (E - b).detach().reshape(E.shape[0], -1) @ (E - b).detach().reshape(E.shape[0], -1).T
        for E, b in zip(plain.moe_layers()[0].experts(), plain.moe_layers()[0].base() or [],
                        strict=True)
    )
    torch.testing.assert_close(K, K_plain, rtol=F64_TOL, atol=F64_TOL)
    ref = plain(idx, idx)
    torch.testing.assert_close(out.stats.alphas, ref.stats.alphas, rtol=0, atol=0)
    assert not torch.equal(out.logits, ref.logits)  # the options did change the merge


# --------------------------------------------------------------------------------------------
# Initialisation, biases, routers, causality
# --------------------------------------------------------------------------------------------


def test_base_init_expert0_copies_expert_zero() -> None:
    torch.manual_seed(0)
    cfg = MergeConfig(method="camex", n_experts=N, base_init="expert0", expert_bias=True)
    layer = MoEFeedForward(C, FF, cfg, has_base=True)
    base = layer.base()
    assert base is not None
    for E, b in zip(layer.experts(), base, strict=True):
        assert torch.equal(E[0], b)
    assert not torch.equal(layer.w1[1], layer.w1[0])
    before = [b.detach().clone() for b in base]
    with torch.no_grad():  # a copy, not a view: the base stays when expert 0 moves
        for E in layer.experts():
            E.add_(1.0)
    for E, b, b0 in zip(layer.experts(), base, before, strict=True):
        assert torch.equal(b, b0) and not torch.equal(E[0], b)
    torch.manual_seed(0)
    indep = MoEFeedForward(C, FF, dataclasses.replace(cfg, base_init="independent"), has_base=True)
    assert indep.base1 is not None and not torch.equal(indep.base1, indep.w1[0])


def test_default_layer_has_the_same_parameters_as_before() -> None:
    """Defaults unchanged: no new parameters and the same initial values for a seed."""
    torch.manual_seed(0)
    layer = MoEFeedForward(C, FF, MergeConfig(method="namex", n_experts=N), has_base=True)
    names = [n for n, _ in layer.named_parameters()]
    assert names == [
        "w1", "w2", "base1", "base2", "router.weight",
        *[f"curvature.{m}.{f}.full" for m in range(2) for f in "ABCD"],
    ]
    cfg = MergeConfig()
    for f in ("kronecker_terms", "term_dropout", "sign_mask", "gate", "gate_top_k",
              "router_per_matrix", "base_init", "expert_bias", "dare_keep"):
        assert getattr(cfg, f) == {"kronecker_terms": 1, "term_dropout": 0.0, "sign_mask": "none",
                                   "gate": "softmax", "gate_top_k": None,
                                   "router_per_matrix": False, "base_init": "independent",
                                   "expert_bias": False, "dare_keep": 0.9}[f]


@pytest.mark.parametrize("case", ["all_with_two_noisy_routers", "camex_paper"])
def test_options_keep_routing_causal(case: str) -> None:
    """Changing token t never changes an output before t (eval mode: no random draws), also with
    the hidden-activation router of W2 and biases."""
    layer = _layer(seed=4, **OPTION_CASES[case]).eval()
    x = torch.randn(1, 9, C, dtype=torch.float64)
    y = layer(x, _terms(layer)).y
    for t in (2, 4, 7):
        x2 = x.clone()
        x2[0, t] += 5.0
        y2 = layer(x2, _terms(layer)).y
        torch.testing.assert_close(y2[0, :t], y[0, :t], rtol=0, atol=0)
        assert not torch.allclose(y2[0, t:], y[0, t:])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

BAD_COMBOS: list[tuple[dict[str, Any], str]] = [
    (dict(kronecker_terms=0), "kronecker_terms"),
    (dict(method="smear", kronecker_terms=2), "kronecker_terms=2 .*'smear'"),
    (dict(kronecker_terms=2, curvature_rank=1), "kronecker_terms=2 with curvature_rank=1"),
    (dict(term_dropout=1.0), "term_dropout"),
    (dict(term_dropout=-0.1), "term_dropout"),
    (dict(method="smear", term_dropout=0.1), "term_dropout=0.1 .*'smear'"),
    (dict(method="smoe", sign_mask="ties"), "sign_mask='ties' .*'smoe'"),
    (dict(sign_mask="trim"), "sign_mask"),
    (dict(sign_mask="dare", dare_keep=0.0), "dare_keep"),
    (dict(sign_mask="dare", dare_keep=1.5), "dare_keep"),
    (dict(sign_mask="ties", dare_keep=0.5), "dare_keep=0.5 .*sign_mask='ties'"),
    (dict(gate="noisy"), "gate must be"),
    (dict(method="smoe", gate="noisy-top-k"), "gate='noisy-top-k' .*'smoe'"),
    (dict(method="smoe", router_per_matrix=True), "router_per_matrix"),
    (dict(method="smoe", expert_bias=True), "expert_bias"),
    (dict(gate_top_k=2), "gate_top_k=2 .*gate='softmax'"),
    (dict(gate="noisy-top-k", gate_top_k=0), "gate_top_k"),
    (dict(gate="noisy-top-k", gate_top_k=5), "gate_top_k"),
    (dict(method="smear", base_init="expert0"), "base_init='expert0' .*'smear'"),
    (dict(base_init="zeros"), "base_init must be"),
    (dict(method="namex", base_init="expert0", singular_policy="raise"), "τ_0 = 0"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_COMBOS)
def test_bad_option_combinations_are_named(kw: dict[str, Any], match: str) -> None:
    kw = {"method": "camex", "n_experts": 4, **kw}
    with pytest.raises(ValueError, match=match):
        MergeConfig(**kw)


def test_good_combinations_are_accepted() -> None:
    MergeConfig(method="smear", gate="noisy-top-k", gate_top_k=1, router_per_matrix=True,
                expert_bias=True)  # CAMEx's 2k < N path: SMEAR over the noisy top-k
    MergeConfig(method="namex-q", **CAMEX_PAPER)  # type: ignore[arg-type]
    MergeConfig(method="namex", base_init="expert0")  # ridge handles τ_0 = 0


def test_smear_over_noisy_top_k_is_camex_small_k_path() -> None:
    """CAMEx merges only the top-k experts, SMEAR-style, when 2k < N: method "smear" with the
    noisy gate is that path. Ê = Σ_{i∈topk} g_i E_i (no base, no curvature), per segment."""
    cfg = MergeConfig(method="smear", n_experts=5, gate="noisy-top-k", gate_top_k=2,
                      segment_len=3)
    torch.manual_seed(0)
    layer = MoEFeedForward(C, FF, cfg, has_base=False).double().eval()
    _randomise(layer, 9)
    x = torch.randn(1, 6, C, dtype=torch.float64)
    out = layer(x, LayerTerms(None, layer.experts()))
    u = x[0, :3].mean(0)
    clean = (layer.router.weight.detach() @ u).tolist()
    assert layer.noise_router is not None
    raw = (layer.noise_router.weight.detach() @ u).tolist()
    gates, _ = gate_oracle(clean, raw, 2, None)
    assert sum(g > 0 for g in gates) == 2
    W1 = sum(g * layer.w1.detach()[i] for i, g in enumerate(gates))
    W2 = sum(g * layer.w2.detach()[i] for i, g in enumerate(gates))
    for t in (3, 4, 5):
        ref = W2 @ _gelu(W1 @ x[0, t])
        torch.testing.assert_close(out.y[0, t].detach(), ref, rtol=ROUTER_TOL, atol=ROUTER_TOL)


# --------------------------------------------------------------------------------------------
# Training with the CAMEx-paper configuration
# --------------------------------------------------------------------------------------------


def test_camex_paper_flags_train_on_the_tiny_preset(tmp_path: Path) -> None:
    """``namex train --method camex --merge-preset camex-paper`` on the tiny preset: the loss
    falls over 20 steps (initial ≈ ln 2048 ≈ 7.6; measured 7.49 at step 5, 6.28 at step 20)."""
    from namex_ref.cli import main
    from namex_ref.train.metrics import read_jsonl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main([
            "train", "--preset", "tiny", "--method", "camex", "--merge-preset", "camex-paper",
            "--steps", "20", "--batch-size", "4", "--warmup", "5", "--log-every", "5",
            "--eval-every", "20", "--eval-batches", "1", "--final-eval-batches", "1",
            "--ckpt-every", "20", "--device", "cpu", "--no-progress", "--threads", "1",
            "--corpus-chars", "300000", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"),
        ])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rec[0]["loss"] > rec[-1]["loss"] + 0.5, [r["loss"] for r in rec]


def test_noisy_gate_on_a_single_segment_is_uniform_and_finite() -> None:
    """T ≤ segment_len: no routed segment, so scores 1/N and a zero (finite) balance loss."""
    layer = _layer(seed=6, gate="noisy-top-k", gate_top_k=2, balance_coef=0.5).train()
    out = layer(torch.randn(2, 3, C, dtype=torch.float64), _terms(layer))
    torch.testing.assert_close(out.scores, torch.full((2, 1, N), 1 / N, dtype=torch.float64))
    assert float(out.aux_loss.detach()) == 0.0 and bool(torch.isfinite(out.y).all())


def test_noisy_gate_loss_reaches_the_model_loss() -> None:
    """The gate's balance loss is summed over layers into ModelOutput.aux_loss and the loss."""
    cfg = dataclasses.replace(
        preset("tiny", "camex", gate="noisy-top-k", gate_top_k=2, balance_coef=0.5,
               segment_len=4),
        n_layer=2, d_model=16, d_ff=32, vocab_size=64, seq_len=16,
    )
    torch.manual_seed(0)
    model = MoEGPT(cfg).eval()
    idx = torch.randint(0, 64, (2, 16))
    out = model(idx, idx)
    assert out.loss is not None and out.ce is not None
    assert float(out.aux_loss.detach()) > 0
    torch.testing.assert_close(out.loss, out.ce + out.aux_loss)
    x = model.drop(model.tok(idx) + model.pos(torch.arange(16))[None])
    plan = model.merge_plan()
    total = torch.zeros(())
    for block, terms in zip(model.blocks, plan.terms, strict=True):
        x2 = x + block.attn(block.ln1(x))
        lo = block.moe(block.ln2(x2), terms)
        total = total + lo.aux_loss
        x = x2 + lo.y
    torch.testing.assert_close(out.aux_loss, total)


@pytest.mark.parametrize("routing", ["segment", "sequence"])
def test_softmax_gate_has_no_balance_loss(routing: str) -> None:
    """The default gate adds nothing to the loss: aux_loss is a zero scalar for both routings."""
    layer = _layer(seed=8, routing=routing).train()
    out = layer(torch.randn(2, 7, C, dtype=torch.float64), _terms(layer))
    assert out.aux_loss.shape == () and float(out.aux_loss) == 0.0
