"""The propagated base expert of a converted Hugging Face model, layer by layer (S1, S2, S4,
S16–S18), against a written-out per-layer loop.

The oracle reads only the converted model's parameters — each block's pretrained
``experts.gate_up_proj`` (N, 2I, H) and ``experts.down_proj`` (N, H, I) and the learned base
of the first block (``base_gate_up`` (2I, H), ``base_down`` (H, I)) — and rebuilds the base of
every layer in numpy float64:

    τ_i = E_i − E_m                       (S1; gate_up and down, as one vector per expert)
    K_ij = ⟨τ_i, τ_j⟩                     (S2)
    α = the positive root of Kα = 1/α    (S4; scipy's MINPACK, tests.oracles.positive_root),
        solved at layer 0 (NAMEx) or at every layer l with l mod Δl = 0 (the "-full" methods)
    ΔE = Σ_i α_i τ_i                     (S16, raw τ: no curvature in the bargain)
    none (S16):        E_m ← E_m + γ ΔE
    complex (S17):     μ ← βμ + ΔE, E_m ← E_m + Re(γμ), μ = 0 at layer 0, β = |β|e^{iφ}
    quaternion (S18):  μ ← β ⊗ μ + ΔE (Hamilton product written out on the four components,
                       ΔE in the real part), E_m ← E_m + γ Re μ

and compares it with the base the model merged with at every layer (``model.namex_plan``,
the observables of the last forward) after one and after three AdamW steps on the language
model loss, so that the first-layer base, the experts and α have all moved off their initial
values. The model runs in float64.

Tolerance: the model's α is damped Newton's after a fixed budget of 20 steps, converged to
the residual 1e-10 (RESIDUAL_TOL), the oracle's MINPACK root to 1e-12; by the residual rule of
docs/math.md §7 the two α agree to 2√N(1e-10 + 1e-12) ≈ 4e-10 relative, and ΔE, μ and the
base are linear in α with coefficients of the size of the base itself: ‖Δbase‖ ≤ 1e-8·‖base‖
(measured ≤ 1.7e-11 over the five cases and steps 1–3).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from namex_ref.hf import convert, converted_blocks
from tests.oracles import positive_root
from tests.test_hf import VOCAB, ids, tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent

LAYERS = 4
SEG = 8
BASE_RTOL = 1e-8  # see the module docstring
ALPHA_RTOL = 2 * math.sqrt(4) * (1e-10 + 1e-12) + 1e-12  # the residual rule, N = 4


def _model(method: str, **options: Any) -> torch.nn.Module:
    """A float64 OLMoE of LAYERS sparse layers (4 experts, hidden 32), converted."""
    cfg = tiny_model("olmoe", vocab=VOCAB).config
    cfg.num_hidden_layers = LAYERS
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).double()
    return convert(model, method, segment_len=SEG, **options)


def _hamilton(b: tuple[float, float, float, float], m: np.ndarray) -> np.ndarray:
    """β ⊗ μ for a fixed quaternion β and μ (4, P), component by component."""
    b0, b1, b2, b3 = b
    m0, m1, m2, m3 = m
    return np.stack([
        b0 * m0 - b1 * m1 - b2 * m2 - b3 * m3,
        b0 * m1 + b1 * m0 + b2 * m3 - b3 * m2,
        b0 * m2 - b1 * m3 + b2 * m0 + b3 * m1,
        b0 * m3 + b1 * m2 - b2 * m1 + b3 * m0,
    ])


def oracle_bases(model: torch.nn.Module) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The written-out loop of the module docstring: (base of every layer as one flat vector
    [gate_up, down], α used at every layer)."""
    blocks = converted_blocks(model)
    cfg = blocks[0].config
    experts = [
        np.concatenate([b.experts.gate_up_proj.detach().numpy().reshape(cfg.n_experts, -1),
                        b.experts.down_proj.detach().numpy().reshape(cfg.n_experts, -1)], 1)
        for b in blocks
    ]  # per layer (N, P)
    base = np.concatenate([blocks[0].base_gate_up.detach().numpy().ravel(),
                           blocks[0].base_down.detach().numpy().ravel()])
    method = cfg.method
    full = method != "namex"
    kind = {"namex-full-mom": "complex", "namex-q": "quaternion"}.get(method, "none")
    beta_c = cfg.beta_abs * complex(math.cos(cfg.beta_phase), math.sin(cfg.beta_phase))
    mu_c = np.zeros(base.shape, dtype=complex)
    mu_q = np.zeros((4, *base.shape))
    bases, alphas = [], []
    alpha = np.full(cfg.n_experts, np.nan)
    for layer, E in enumerate(experts):
        bases.append(base.copy())
        tau = E - base[None, :]  # (N, P)
        if layer == 0 or (full and layer % cfg.alpha_interval == 0):
            alpha = positive_root(tau @ tau.T)
        alphas.append(alpha)
        delta = alpha @ tau
        if kind == "complex":
            mu_c = beta_c * mu_c + delta
            base = base + (cfg.gamma * mu_c).real
        elif kind == "quaternion":
            mu_q = _hamilton(cfg.beta_q, mu_q)
            mu_q[0] += delta
            base = base + cfg.gamma * mu_q[0]
        else:
            base = base + cfg.gamma * delta
    return bases, alphas


def _plan_bases(model: torch.nn.Module) -> list[np.ndarray]:
    """The base the model merged with at every layer in its last forward, flattened as
    [W_gate, W_up, W_down] = [gate_up, down]."""
    return [np.concatenate([m.detach().numpy().ravel() for m in t.base])
            for t in model.namex_plan.terms]


@pytest.mark.parametrize(("method", "options"), [
    ("namex", {}),
    ("namex-full", {}),
    ("namex-full", {"alpha_interval": 3}),
    ("namex-full-mom", {}),
    ("namex-q", {}),
])
def test_propagated_base_at_every_layer_after_training(method: str,
                                                       options: dict[str, Any]) -> None:
    model = _model(method, **options)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = ids()
    for step in range(1, 4):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
        if step not in (1, 3):
            continue
        with torch.no_grad():
            model(x)  # the plan of the parameters after `step` optimizer steps
        want, alphas = oracle_bases(model)
        got = _plan_bases(model)
        assert len(got) == LAYERS
        moved = np.linalg.norm(want[-1] - want[0]) / np.linalg.norm(want[0])
        assert moved > 1e-2  # the propagation acts: layer 3's base is not layer 0's
        for layer, (g, w) in enumerate(zip(got, want, strict=True)):
            err = np.linalg.norm(g - w) / np.linalg.norm(w)
            assert err <= BASE_RTOL, (step, layer, err)
        plan_alpha = model.namex_plan.alphas.numpy()
        for layer in range(LAYERS):
            np.testing.assert_allclose(plan_alpha[layer], alphas[layer], rtol=ALPHA_RTOL)
