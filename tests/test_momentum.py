"""Momentum steps S17 (complex) and S18 (quaternion) on real tensors, float64.

Oracles are written here independently of namex_ref.momentum:
- S17 with torch.complex128 arithmetic (μ' = βμ + ΔE, E' = E + Re(γμ'));
- S18 with the scalar–vector quaternion product in numpy;
- heavy ball for real β: E^(l+1) − E^(l) = β (E^(l) − E^(l−1)) + γ ΔE^(l);
- plain NAMEx (S16) for β = 0: E^(l+1) = E^(l) + γ ΔE^(l).
The S18 ≡ S17 reduction (β_c = Re β + i‖Im β‖) is the fact proved in
proofs/s17_s18_quaternion.py; here it is checked numerically over many layers.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from namex_ref.momentum import (
    MomentumConfig,
    buffer_width,
    complex_momentum_step,
    equivalent_complex_beta,
    momentum_step,
    quaternion_momentum_step,
    zero_buffer,
)

EPS = float(np.finfo(np.float64).eps)
#: One step is O(5) flops per entry on O(1) data; 32·eps covers rounding with margin.
STEP_ATOL = 32 * EPS

SETTINGS = settings(max_examples=60, deadline=None)

seeds = st.integers(0, 2**32 - 1)
moduli = st.floats(0.0, 0.99)
phases = st.floats(-math.pi, math.pi)


def _rng_tensors(seed: int, *shape: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))


def np_hamilton(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scalar–vector product on (..., 4) arrays (independent of namex_ref.quaternion)."""
    s1, v1 = p[..., :1], p[..., 1:]
    s2, v2 = q[..., :1], q[..., 1:]
    w = s1 * s2 - np.sum(v1 * v2, axis=-1, keepdims=True)
    v = s1 * v2 + s2 * v1 + np.cross(v1, v2)
    return np.concatenate([w, v], axis=-1)


def random_quaternion_beta(seed: int, norm: float) -> tuple[float, float, float, float]:
    v = np.random.default_rng(seed).normal(size=4)
    v = norm * v / np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]), float(v[3]))


# ----------------------------------------------------------------------------- S17


@SETTINGS
@given(seed=seeds, m=st.floats(0.0, 1.5), phi=phases, g_re=st.floats(-2, 2), g_im=st.floats(-2, 2))
def test_complex_step_matches_complex_arithmetic(
    seed: int, m: float, phi: float, g_re: float, g_im: float
) -> None:
    """S17 on the (..., 2) real layout equals complex128 arithmetic (any β, complex γ)."""
    beta = m * complex(math.cos(phi), math.sin(phi))
    gamma = complex(g_re, g_im)
    mu_re, delta, base = _rng_tensors(seed, 3, 5)
    g = torch.Generator().manual_seed(seed + 1)
    mu_im = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mu = torch.stack((mu_re, mu_im), dim=-1)
    mu_new, base_new = complex_momentum_step(mu, delta, base, beta=beta, gamma=gamma)

    mu_c = torch.complex(mu_re, mu_im)
    want_mu = beta * mu_c + delta
    want_base = base + (gamma * want_mu).real
    torch.testing.assert_close(mu_new, torch.view_as_real(want_mu), rtol=0, atol=8 * STEP_ATOL)
    torch.testing.assert_close(base_new, want_base, rtol=0, atol=16 * STEP_ATOL)


def test_complex_layout_is_view_as_real() -> None:
    """The documented layout: torch.view_as_complex(mu) is μ."""
    mu0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # μ = 1 + 2i
    mu, _ = complex_momentum_step(
        mu0, torch.tensor([0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
        beta=1j, gamma=1.0,
    )
    # i·(1 + 2i) + 0.5 = −1.5 + i
    assert torch.view_as_complex(mu).tolist() == [complex(-1.5, 1.0)]


@SETTINGS
@given(seed=seeds, beta=st.floats(-0.99, 0.99), gamma=st.floats(0.01, 2.0))
def test_real_beta_is_heavy_ball(seed: int, beta: float, gamma: float) -> None:
    """Real β, real γ: E^(l+1) − E^(l) = β(E^(l) − E^(l−1)) + γΔE^(l), with μ^(1) = 0."""
    deltas = torch.randn(12, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    base = torch.randn(4, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    mu = zero_buffer("complex", base)
    bases = [base]
    for d in deltas:
        mu, base = complex_momentum_step(mu, d, base, beta=beta, gamma=gamma)
        bases.append(base)
        assert float(mu[..., 1].abs().max()) == 0.0  # real β keeps Im μ = 0 exactly
    hb = [bases[0], bases[0] + gamma * deltas[0]]
    for lay in range(1, len(deltas)):
        hb.append(hb[-1] + beta * (hb[-1] - hb[-2]) + gamma * deltas[lay])
    # rounding grows like Σ|β|^k ≤ 1/(1−|β|) ≤ 100 per layer over 12 layers
    tol = 12 * 100 * 16 * EPS * (1 + gamma) * 4
    for got, want in zip(bases, hb, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- S18


@SETTINGS
@given(seed=seeds, norm=st.floats(0.0, 1.5), gamma=st.floats(-2.0, 2.0))
def test_quaternion_step_matches_numpy_oracle(seed: int, norm: float, gamma: float) -> None:
    beta = random_quaternion_beta(seed, norm)
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    delta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    base = torch.randn(3, 2, generator=g, dtype=torch.float64)
    mu_new, base_new = quaternion_momentum_step(mu, delta, base, beta=beta, gamma=gamma)

    want = np_hamilton(np.broadcast_to(np.array(beta), mu.shape), mu.numpy()).copy()
    want[..., 0] += delta.numpy()  # ΔE enters the real part only
    np.testing.assert_allclose(mu_new.numpy(), want, rtol=0, atol=16 * STEP_ATOL)
    np.testing.assert_allclose(
        base_new.numpy(), base.numpy() + gamma * want[..., 0], rtol=0, atol=32 * STEP_ATOL
    )


def test_quaternion_left_not_right_multiplication() -> None:
    """β ⊗ μ with β = j, μ = i gives j·i = −k (right multiplication would give +k)."""
    mu = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    mu_new, _ = quaternion_momentum_step(mu, zero, zero, beta=(0.0, 0.0, 1.0, 0.0), gamma=1.0)
    assert mu_new.tolist() == [[0.0, 0.0, 0.0, -1.0]]


def test_equivalent_complex_beta_hand_value() -> None:
    """the paper's example β = 0.8 + 0.3i + 0.3j + 0.3k ↦ 0.8 + i·0.3√3."""
    b = equivalent_complex_beta((0.8, 0.3, 0.3, 0.3))
    assert b.real == 0.8
    assert abs(b.imag - 0.3 * math.sqrt(3.0)) <= 4 * EPS
    assert equivalent_complex_beta((-0.5, 0.0, 0.0, 0.0)) == complex(-0.5, 0.0)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, norm=st.floats(0.0, 0.99), gamma=st.floats(0.01, 2.0), layers=st.integers(1, 64))
def test_quaternion_equals_complex_with_equivalent_beta(
    seed: int, norm: float, gamma: float, layers: int
) -> None:
    """S18 fact: real ΔE, real γ ⇒ S18(β) ≡ S17(β_c), β_c = Re β + i‖Im β‖, on every layer.

    Also: the quaternion buffer stays in span{1, u}, u = Im β/‖Im β‖, and its coordinates
    (w, ⟨μ_v, u⟩) are the complex buffer (Re, Im).
    Tolerance: each layer adds O(eps·‖μ‖) rounding, ‖μ‖ ≤ max|ΔE|/(1 − ‖β‖) and the map is a
    contraction by ‖β‖, so buffer errors stay ≤ c·eps·M/(1−‖β‖)² with M = max|ΔE|; the base
    accumulates γ times that per layer. We use c = 64.
    """
    beta_q = random_quaternion_beta(seed, norm)
    beta_c = equivalent_complex_beta(beta_q)
    g = torch.Generator().manual_seed(seed)
    deltas = 3.0 * torch.randn(layers, 6, generator=g, dtype=torch.float64)
    base0 = torch.randn(6, generator=g, dtype=torch.float64)
    mq, bq = zero_buffer("quaternion", base0), base0
    mc, bc = zero_buffer("complex", base0), base0
    M = float(deltas.abs().max())
    amp = M / (1.0 - norm) ** 2
    tol_mu = 64 * EPS * amp
    tol_base = 64 * EPS * amp * gamma * layers
    v = np.array(beta_q[1:])
    u = v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else None
    for d in deltas:
        mq, bq = quaternion_momentum_step(mq, d, bq, beta=beta_q, gamma=gamma)
        mc, bc = complex_momentum_step(mc, d, bc, beta=beta_c, gamma=gamma)
        torch.testing.assert_close(bq, bc, rtol=0, atol=tol_base)
        torch.testing.assert_close(mq[..., 0], mc[..., 0], rtol=0, atol=tol_mu)
        vec = mq[..., 1:].numpy()  # (6, 3)
        if u is None:
            np.testing.assert_allclose(vec, 0.0, rtol=0, atol=tol_mu)
            np.testing.assert_allclose(mc[..., 1].numpy(), 0.0, rtol=0, atol=tol_mu)
        else:
            along = vec @ u
            np.testing.assert_allclose(along, mc[..., 1].numpy(), rtol=0, atol=tol_mu)
            np.testing.assert_allclose(vec - along[:, None] * u, 0.0, rtol=0, atol=tol_mu)


# ----------------------------------------------------------------------------- β = 0, S16


@SETTINGS
@given(seed=seeds, gamma=st.floats(0.01, 2.0))
def test_zero_beta_is_plain_namex(seed: int, gamma: float) -> None:
    """β = 0 (complex and quaternion) and kind "none" all give E' = E + γΔE on every layer,
    here with ΔE depending on the current base as in NAMEx (ΔE = A(target − E))."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64) / 5
    target = torch.randn(5, generator=g, dtype=torch.float64)
    base0 = torch.randn(5, generator=g, dtype=torch.float64)
    configs = [
        MomentumConfig("none", 0.0, gamma),
        MomentumConfig("complex", 0j, gamma),
        MomentumConfig("quaternion", (0.0, 0.0, 0.0, 0.0), gamma),
    ]
    bases = []
    for cfg in configs:
        mu, base = zero_buffer(cfg, base0), base0
        for _ in range(8):
            delta = A @ (target - base)
            mu, base = momentum_step(mu, delta, base, config=cfg)
        bases.append(base)
    plain = base0
    for _ in range(8):
        plain = plain + gamma * (A @ (target - plain))
    for b in bases:
        torch.testing.assert_close(b, plain, rtol=0, atol=1e-12 * (1 + float(plain.abs().max())))


def test_first_layer_convention() -> None:
    """μ^(1) = 0, so the first step gives μ^(2) = ΔE and E_m^(2) = E_m^(1) + γΔE for any β."""
    delta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    base = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    cfg = MomentumConfig("complex", 0.7 - 0.2j, 0.5)
    mu0 = zero_buffer(cfg, delta)
    assert mu0.shape == (3, 2) and not mu0.any()
    mu, b = momentum_step(mu0, delta, base, config=cfg)
    assert mu[..., 0].tolist() == delta.tolist() and mu[..., 1].tolist() == [0.0, 0.0, 0.0]
    assert b.tolist() == [1.0, -0.5, 2.0]
    q = MomentumConfig("quaternion", (0.8, 0.3, 0.3, 0.3), 0.5)
    mu, b = momentum_step(zero_buffer(q, delta), delta, base, config=q)
    assert mu.shape == (3, 4) and mu[..., 0].tolist() == delta.tolist()
    assert not mu[..., 1:].any() and b.tolist() == [1.0, -0.5, 2.0]


def test_dispatch_matches_direct_calls() -> None:
    mu2, delta, base = _rng_tensors(3, 4)
    mu2 = torch.stack((mu2, delta * 0.5), dim=-1)
    c = MomentumConfig("complex", 0.3 + 0.4j, 0.8)
    torch.testing.assert_close(
        momentum_step(mu2, delta, base, config=c),
        complex_momentum_step(mu2, delta, base, beta=0.3 + 0.4j, gamma=0.8),
        rtol=0, atol=0,
    )
    mu4 = torch.randn(3, 4, 4, dtype=torch.float64)
    q = MomentumConfig("quaternion", [0.5, 0.1, -0.2, 0.3], 0.8)  # type: ignore[arg-type]
    assert q.beta == (0.5, 0.1, -0.2, 0.3)
    torch.testing.assert_close(
        momentum_step(mu4, delta, base, config=q),
        quaternion_momentum_step(mu4, delta, base, beta=(0.5, 0.1, -0.2, 0.3), gamma=0.8),
        rtol=0, atol=0,
    )


# ----------------------------------------------------------------------------- autograd


def test_steps_are_autograd_friendly() -> None:
    g = torch.Generator().manual_seed(0)
    mu2 = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    mu4 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    base = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    beta_t = torch.tensor([0.5, 0.2, -0.1, 0.3], dtype=torch.float64, requires_grad=True)
    snapshot = [t.detach().clone() for t in (mu2, mu4, delta, base, beta_t)]
    versions = [t._version for t in (mu2, mu4, delta, base, beta_t)]

    def s17(m: torch.Tensor, d: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return complex_momentum_step(m, d, b, beta=0.6 - 0.3j, gamma=0.7 + 0.1j)

    def s18(m: torch.Tensor, d: torch.Tensor, b: torch.Tensor, bt: torch.Tensor) -> tuple[
        torch.Tensor, ...
    ]:
        return quaternion_momentum_step(m, d, b, beta=bt, gamma=0.7)

    assert torch.autograd.gradcheck(s17, (mu2, delta, base))
    assert torch.autograd.gradcheck(s18, (mu4, delta, base, beta_t))
    # no in-place operation on any input
    for t, t0, v in zip((mu2, mu4, delta, base, beta_t), snapshot, versions, strict=True):
        assert t._version == v
        torch.testing.assert_close(t.detach(), t0, rtol=0, atol=0)
    # gradient of the final base through several layers reaches ΔE of the first layer
    mu, b = zero_buffer("complex", base), base
    for _ in range(3):
        mu, b = complex_momentum_step(mu, delta, b, beta=0.5j, gamma=1.0)
    b.sum().backward()  # type: ignore[no-untyped-call]
    assert delta.grad is not None and bool(delta.grad.abs().gt(0).all())


def test_float32_inputs_stay_float32() -> None:
    x = torch.ones(2, dtype=torch.float32)
    m, b = complex_momentum_step(torch.zeros(2, 2), x, x, beta=0.5j, gamma=1.0)
    assert m.dtype == b.dtype == torch.float32
    m, b = quaternion_momentum_step(torch.zeros(2, 4), x, x, beta=(0.5, 0.1, 0.1, 0.1), gamma=1.0)
    assert m.dtype == b.dtype == torch.float32


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"kind": "complex", "beta": 1.0}, "1.0"),
        ({"kind": "complex", "beta": 1.5j}, "1.5j"),
        ({"kind": "complex", "beta": -0.8 - 0.7j}, "(-0.8-0.7j)"),
        ({"kind": "complex", "beta": complex("nan")}, "nan"),
        ({"kind": "complex", "beta": (0.5, 0.0, 0.0, 0.0)}, "(0.5, 0.0, 0.0, 0.0)"),
        ({"kind": "quaternion", "beta": (0.9, 0.5, 0.0, 0.0)}, "(0.9, 0.5, 0.0, 0.0)"),
        ({"kind": "quaternion", "beta": (0.5, 0.1, 0.1)}, "(0.5, 0.1, 0.1)"),
        ({"kind": "quaternion", "beta": 0.5j}, "0.5j"),
        ({"kind": "none", "beta": 0.3}, "0.3"),
        ({"kind": "heavy", "beta": 0.3}, "'heavy'"),
        ({"kind": "complex", "beta": 0.5, "gamma": 0.0}, "0.0"),
        ({"kind": "complex", "beta": 0.5, "gamma": -1.0}, "-1.0"),
        ({"kind": "complex", "beta": 0.5, "gamma": float("inf")}, "inf"),
        ({"kind": "complex", "beta": 0.5, "gamma": 1j}, "1j"),
        ({"kind": "complex", "beta": True}, "True"),
    ],
)
def test_config_rejects_bad_hyper_parameters(kwargs: dict[str, object], shown: str) -> None:
    """ValueError whose message shows the bad value."""
    with pytest.raises(ValueError, match=re.escape(shown)):
        MomentumConfig(**kwargs)  # type: ignore[arg-type]


def test_config_accepts_and_normalises() -> None:
    c = MomentumConfig("complex", 0.9, 2)
    assert c.beta == complex(0.9) and isinstance(c.beta, complex) and c.gamma == 2.0
    assert c.buffer_width == 2 and c.complex_beta == 0.9 + 0j
    q = MomentumConfig("quaternion", (0.8, 0.3, 0.3, 0.3), 1.0)  # the paper's example
    assert q.buffer_width == 4
    assert abs(q.complex_beta - complex(0.8, 0.3 * math.sqrt(3))) <= 4 * EPS
    assert MomentumConfig().kind == "none" and MomentumConfig().buffer_width == 0
    with pytest.raises(AttributeError):
        c.gamma = 3.0  # type: ignore[misc]  # frozen
    assert [buffer_width(k) for k in ("none", "complex", "quaternion")] == [0, 2, 4]


def test_step_input_validation() -> None:
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        complex_momentum_step(torch.zeros(3, 4, dtype=torch.float64), x, x, beta=0.5, gamma=1.0)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        quaternion_momentum_step(torch.zeros(3, 2, dtype=torch.float64), x, x,
                                 beta=(0.5, 0, 0, 0), gamma=1.0)
    with pytest.raises(ValueError, match=re.escape("0.5j")):
        quaternion_momentum_step(torch.zeros(3, 4, dtype=torch.float64), x, x,
                                 beta=(0.5, 0, 0, 0), gamma=0.5j)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inf"):
        complex_momentum_step(torch.zeros(3, 2, dtype=torch.float64), x, x,
                              beta=complex("inf"), gamma=1.0)
    with pytest.raises(ValueError, match="floating"):
        complex_momentum_step(torch.zeros(3, 2, dtype=torch.float64),
                              torch.zeros(3, dtype=torch.int64), x, beta=0.5, gamma=1.0)


# ----------------------------------------------------------------------------- mutation kills
# Cases found by mutation testing (tools/mutation.py, results/mutation.md): each pins a part of
# the documented contract that no earlier test reached. Oracles: the S17/S18 formulas written
# here, and the documented errors (ValueError naming the problem).


class _OpaqueNumber(numbers.Number):
    """Registered as a number but not convertible to complex."""

    __hash__ = None  # type: ignore[assignment]


_X = torch.zeros(3, dtype=torch.float64)
_MU2 = torch.zeros(3, 2, dtype=torch.float64)
_MU4 = torch.zeros(3, 4, dtype=torch.float64)


@pytest.mark.parametrize("beta", [True, "0.5", _OpaqueNumber()])
def test_complex_step_rejects_non_numbers(beta: object) -> None:
    """S17 needs β ∈ ℂ: a bool, a numeric string or an unconvertible number is refused."""
    with pytest.raises(ValueError, match="beta must be a real or complex number"):
        complex_momentum_step(_MU2, _X, _X, beta=beta, gamma=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [math.inf, -math.inf, math.nan, complex(0.5, math.nan)])
def test_steps_reject_non_finite_gamma(gamma: complex) -> None:
    with pytest.raises(ValueError, match="gamma must be finite"):
        complex_momentum_step(_MU2, _X, _X, beta=0.5, gamma=gamma)
    with pytest.raises(ValueError, match="gamma must be finite"):
        quaternion_momentum_step(_MU4, _X, _X, beta=(0.5, 0.0, 0.0, 0.0), gamma=gamma)  # type: ignore[arg-type]


def test_complex_step_with_unit_imaginary_gamma() -> None:
    """S17 with γ = 0.5 + 1i: E' = E + Re(γμ') = E + 0.5 Re μ' − 1·Im μ' (complex128 oracle)."""
    mu_c = torch.tensor([1.0 + 2.0j, -0.5 + 0.25j], dtype=torch.complex128)
    delta = torch.tensor([0.75, -1.0], dtype=torch.float64)
    base = torch.tensor([2.0, 3.0], dtype=torch.float64)
    beta, gamma = 0.5 - 0.25j, 0.5 + 1.0j
    mu_new, base_new = complex_momentum_step(torch.view_as_real(mu_c), delta, base, beta=beta,
                                             gamma=gamma)
    want_mu = beta * mu_c + delta
    # dyadic inputs: every operation is exact in float64, so equality is exact
    assert torch.view_as_complex(mu_new).tolist() == want_mu.tolist()
    assert base_new.tolist() == (base + (gamma * want_mu).real).tolist()


def test_real_gamma_base_update_ignores_the_imaginary_buffer() -> None:
    """S17, real γ: Re(γμ') = γ Re μ', so E' does not depend on Im μ' even when it overflows."""
    mu = torch.tensor([[1.0, 1e308]], dtype=torch.float64)  # Re μ = 1, Im μ = 1e308
    delta = torch.tensor([0.5], dtype=torch.float64)
    base = torch.tensor([1.0], dtype=torch.float64)
    mu_new, base_new = complex_momentum_step(mu, delta, base, beta=2.0, gamma=0.5)
    assert mu_new[0, 0].item() == 2.5 and math.isinf(mu_new[0, 1].item())  # 2·1e308 overflows
    assert base_new.tolist() == [1.0 + 0.5 * 2.5]


def test_complex_step_on_a_scalar_parameter() -> None:
    """ΔE of shape () has a (2,) buffer: μ' = βμ + ΔE, E' = E + γ Re μ' (S17, by hand)."""
    mu = torch.tensor([1.0, -1.0], dtype=torch.float64)  # μ = 1 − i
    mu_new, base_new = complex_momentum_step(
        mu, torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64),
        beta=0.5j, gamma=2.0,
    )
    # 0.5i·(1 − i) + 0.5 = 1 + 0.5i; E' = 1 + 2·1 = 3
    assert mu_new.tolist() == [1.0, 0.5] and base_new.item() == 3.0
    with pytest.raises(ValueError, match="mu must have shape"):
        complex_momentum_step(torch.tensor(0.0, dtype=torch.float64), _X, _X, beta=0.5,
                              gamma=1.0)


@pytest.mark.parametrize("which", ["mu", "delta", "base"])
def test_steps_name_the_non_tensor_input(which: str) -> None:
    args = {"mu": _MU4, "delta": _X, "base": _X}
    args[which] = [0.0, 0.0, 0.0]  # type: ignore[assignment]
    with pytest.raises(ValueError, match=f"S18: {which} must be a torch.Tensor"):
        quaternion_momentum_step(args["mu"], args["delta"], args["base"],
                                 beta=(0.5, 0.0, 0.0, 0.0), gamma=1.0)


def test_quaternion_step_validates_its_own_inputs() -> None:
    """S18's checks name the step and the argument (not a later error inside the product)."""
    with pytest.raises(ValueError, match=r"S18: delta must have a real floating dtype"):
        quaternion_momentum_step(_MU4, torch.zeros(3, dtype=torch.int64), _X,
                                 beta=(0.5, 0.0, 0.0, 0.0), gamma=1.0)
    with pytest.raises(ValueError, match=r"S18: mu must have shape \(\.\.\., 4\)"):
        quaternion_momentum_step(_MU2, _X, _X, beta=(0.5, 0.0, 0.0, 0.0), gamma=1.0)


@pytest.mark.parametrize(
    "beta",
    [
        torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.float64),  # (1, 4): would broadcast
        torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64),
        torch.tensor([1, 0, 0, 0]),  # integer
    ],
)
def test_quaternion_step_rejects_bad_beta_tensors(beta: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"beta must be a real \(4,\) tensor"):
        quaternion_momentum_step(_MU4, _X, _X, beta=beta, gamma=1.0)


@pytest.mark.parametrize("shape", [(2,), ()])
def test_quaternion_step_keeps_the_buffer_dtype_for_a_float64_beta_tensor(
    shape: tuple[int, ...]
) -> None:
    """β as a float64 tensor is cast to μ's dtype: a float32 buffer stays float32, also for a
    scalar parameter (shape (), buffer (4,)), where no broadcasting hides β's dtype."""
    mu = torch.zeros(*shape, 4, dtype=torch.float32)
    x = torch.ones(shape, dtype=torch.float32)
    beta = torch.tensor([0.5, 0.1, 0.1, 0.1], dtype=torch.float64)
    m, b = quaternion_momentum_step(mu, x, x, beta=beta, gamma=1.0)
    assert m.dtype == b.dtype == torch.float32


def test_plain_namex_validates_its_empty_buffer() -> None:
    """kind "none" (S16) takes the (..., 0) buffer of zero_buffer; a wider one is an error."""
    cfg = MomentumConfig()
    with pytest.raises(ValueError, match=r"S16: mu must have shape \(\.\.\., 0\)"):
        momentum_step(_MU2, _X, _X, config=cfg)


@pytest.mark.parametrize(
    "beta", [(0.0, 0.99, 0.0, 0.0), (0.0, 0.0, 0.99, 0.0), (0.0, 0.0, 0.0, 0.99), (0.1,) * 4]
)
def test_quaternion_beta_inside_the_unit_ball_is_accepted(beta: tuple[float, ...]) -> None:
    """S18: every component counts in ‖β‖ = √(w² + x² + y² + z²) < 1."""
    assert MomentumConfig("quaternion", beta, 1.0).beta == beta  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "beta", [(1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0),
             (0.0, 0.0, 0.6, 0.8)]
)
def test_quaternion_beta_on_the_unit_sphere_is_rejected(beta: tuple[float, ...]) -> None:
    """S18 needs ‖β‖ < 1 strictly; these have ‖β‖ = 1 (0.36 + 0.64 rounds to 1.0 exactly)."""
    assert math.fsum(v * v for v in beta) == 1.0
    with pytest.raises(ValueError, match=r"\|\|beta\|\| < 1"):
        MomentumConfig("quaternion", beta, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", ["0000", b"\x00\x00\x00\x00", 0.5])
def test_quaternion_beta_must_be_four_floats(beta: object) -> None:
    """A 4-character string or 4 bytes iterate to four numbers, but they are not a β (S18)."""
    with pytest.raises(ValueError, match=r"beta as four floats \(w, x, y, z\)"):
        MomentumConfig("quaternion", beta, 1.0)  # type: ignore[arg-type]


def test_complex_config_names_the_quaternion_alternative() -> None:
    with pytest.raises(ValueError, match="use kind='quaternion'"):
        MomentumConfig("complex", (0.5, 0.0, 0.0, 0.0), 1.0)  # type: ignore[arg-type]


def test_plain_config_reports_a_non_finite_beta_as_such() -> None:
    with pytest.raises(ValueError, match="beta must be finite"):
        MomentumConfig("none", math.nan, 1.0)


def test_config_defaults_and_gamma_type() -> None:
    """γ defaults to 1 (the plain S16 step) and is stored as a Python float."""
    assert MomentumConfig().gamma == 1.0
    assert MomentumConfig("complex", 0.5).gamma == 1.0
    c = MomentumConfig("complex", 0.5, 2)
    assert type(c.gamma) is float and c.gamma == 2.0


def test_quaternion_beta_error_reports_the_norm() -> None:
    """The message shows ‖β‖ = √(0.81 + 0.25) (math.hypot as the oracle), not its square."""
    with pytest.raises(ValueError, match=re.escape(f"||beta||={math.hypot(0.9, 0.5):.6g}")):
        MomentumConfig("quaternion", (0.9, 0.5, 0.0, 0.0), 1.0)
