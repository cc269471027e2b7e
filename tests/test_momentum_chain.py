"""MomentumChain: the base expert's propagation over several layers (S16–S18), with the work of
exact zeros and ones left out, against oracles written here independently of namex_ref:

- S17 in torch.complex128: μ ← βμ + ΔE, E ← E + γ Re μ, from μ = 0;
- S18 with a numpy scalar–vector quaternion product: μ ← β ⊗ μ + (ΔE, 0, 0, 0), E ← E + γ μ_w;
- S16: E ← E + γ ΔE.

Tolerance: every entry of every input is drawn from N(0, 1) (|x| ≤ 6 in practice); a step is
at most 8 flops per entry on values bounded by Σ_k |β|^k (1 + max|x|) ≤ 20·7 for |β| ≤ 0.95,
so each step adds at most 8·140·u (u the unit roundoff of the dtype: 2⁻⁵³ float64, 2⁻²⁴
float32) to the error, and the chain's error after L steps is below L·(1 + γ)·8·140·u.
The chain must also equal repeated ``momentum_step`` from ``zero_buffer`` exactly (it leaves
out exact zeros and exact ones only).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from namex_ref.momentum import (
    MomentumChain,
    MomentumConfig,
    equivalent_complex_beta,
    momentum_step,
    quaternion_momentum_step,
    zero_buffer,
)

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
SHAPES = [(3, 2), (5,), (2, 3, 2)]


def _oracle_complex(deltas, base0, beta: complex, gamma: float):  # type: ignore[no-untyped-def]
    mus = [torch.zeros(b.shape, dtype=torch.complex128) for b in base0]
    bases = [[b.double() for b in base0]]
    for lay in deltas:
        mus = [beta * m + d.double() for m, d in zip(mus, lay, strict=True)]
        bases.append([e + gamma * m.real for e, m in zip(bases[-1], mus, strict=True)])
    return bases


def _np_left_product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p ⊗ q for p (4,), q (..., 4), as the 4×4 left-multiplication matrix of p."""
    w, x, y, z = p
    left = np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]])
    return q @ left.T


def _oracle_quaternion(deltas, base0, beta, gamma: float):  # type: ignore[no-untyped-def]
    mus = [np.zeros((*b.shape, 4)) for b in base0]
    bases = [[b.double().numpy() for b in base0]]
    for lay in deltas:
        new = []
        for m, d in zip(mus, lay, strict=True):
            m2 = _np_left_product(np.asarray(beta), m)
            m2[..., 0] += d.double().numpy()
            new.append(m2)
        mus = new
        bases.append([e + gamma * m[..., 0] for e, m in zip(bases[-1], mus, strict=True)])
    return [[torch.from_numpy(b) for b in lay] for lay in bases]


def _oracle_none(deltas, base0, gamma: float):  # type: ignore[no-untyped-def]
    bases = [[b.double() for b in base0]]
    for lay in deltas:
        bases.append([e + gamma * d.double() for e, d in zip(bases[-1], lay, strict=True)])
    return bases


def _config(kind: str, seed: int, modulus: float, gamma: float) -> MomentumConfig:
    rng = np.random.default_rng(seed)
    if kind == "complex":
        return MomentumConfig("complex", complex(modulus * np.exp(1j * rng.uniform(-3, 3))),
                              gamma)
    if kind == "quaternion":
        v = rng.normal(size=4)
        w, x, y, z = (float(c) for c in modulus * v / np.linalg.norm(v))
        return MomentumConfig("quaternion", (w, x, y, z), gamma)
    return MomentumConfig("none", 0j, gamma)


def _inputs(seed: int, layers: int, matrices: int, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    shapes = SHAPES[:matrices]
    base0 = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    deltas = [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
              for _ in range(layers)]
    return base0, deltas


def _run_chain(cfg: MomentumConfig, base0, deltas):  # type: ignore[no-untyped-def]
    chain = MomentumChain(cfg)
    bases = [list(base0)]
    for i, lay in enumerate(deltas):
        bases.append(chain.step(lay, bases[-1], last=i == len(deltas) - 1))
    return bases


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["none", "complex", "quaternion"]),
       layers=st.integers(1, 7), matrices=st.integers(1, 3), modulus=st.floats(0.0, 0.95),
       gamma=st.sampled_from([1.0, 0.5, 1.7]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_chain_matches_the_oracles(seed: int, kind: str, layers: int, matrices: int,
                                   modulus: float, gamma: float, dtype: torch.dtype) -> None:
    cfg = _config(kind, seed, modulus, gamma)
    base0, deltas = _inputs(seed, layers, matrices, dtype)
    got = _run_chain(cfg, base0, deltas)
    if kind == "complex":
        want = _oracle_complex(deltas, base0, complex(cfg.beta), gamma)  # type: ignore[arg-type]
    elif kind == "quaternion":
        want = _oracle_quaternion(deltas, base0, cfg.beta, gamma)
    else:
        want = _oracle_none(deltas, base0, gamma)
    tol = layers * (1 + gamma) * 8 * 140 * UNIT_ROUNDOFF[dtype]
    for g_lay, w_lay in zip(got, want, strict=True):
        for g, w in zip(g_lay, w_lay, strict=True):
            assert g.dtype == dtype
            torch.testing.assert_close(g.double(), w, rtol=0, atol=tol)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["none", "complex", "quaternion"]),
       layers=st.integers(1, 6), modulus=st.floats(0.0, 0.95),
       gamma=st.sampled_from([1.0, 0.5]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_chain_equals_repeated_momentum_steps_exactly(seed: int, kind: str, layers: int,
                                                      modulus: float, gamma: float,
                                                      dtype: torch.dtype) -> None:
    """Leaving out exact zeros and ones changes no value (−0.0 == 0.0 counts as equal)."""
    cfg = _config(kind, seed, modulus, gamma)
    base0, deltas = _inputs(seed, layers, 2, dtype)
    got = _run_chain(cfg, base0, deltas)
    mus = [zero_buffer(cfg, b) for b in base0]
    bases = list(base0)
    for i, lay in enumerate(deltas):
        out = [momentum_step(m, d, b, config=cfg) for m, d, b in zip(mus, lay, bases, strict=True)]
        mus, bases = [m for m, _ in out], [b for _, b in out]
        for g, w in zip(got[i + 1], bases, strict=True):
            assert torch.equal(g, w), (kind, i, float((g - w).abs().max()))


def test_last_step_skips_the_buffer_but_not_the_base() -> None:
    cfg = MomentumConfig("complex", 0.5 * complex(math.cos(1.0), math.sin(1.0)), 1.0)
    base0, deltas = _inputs(0, 3, 2, torch.float64)
    a, b = MomentumChain(cfg), MomentumChain(cfg)
    e_a, e_b = list(base0), list(base0)
    for i, lay in enumerate(deltas):
        e_a = a.step(lay, e_a, last=False)
        e_b = b.step(lay, e_b, last=i == 2)
        for x, y in zip(e_a, e_b, strict=True):
            assert torch.equal(x, y)


class _Ops(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's untyped hook
    """Counts the ATen calls made under it (one per ``torch._foreach_*`` call on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def _ops_per_step(cfg: MomentumConfig, layers: int, last: int | None) -> list[list[str]]:
    base0, deltas = _inputs(1, layers, 2, torch.float64)
    chain, bases, per_step = MomentumChain(cfg), list(base0), []
    for i, lay in enumerate(deltas):
        with _Ops() as ops:
            bases = chain.step(lay, bases, last=i == last)
        per_step.append(ops.calls)
    return per_step


def test_chain_does_only_the_work_its_docstring_promises() -> None:
    """The work MomentumChain's docstring says it leaves out, counted from that text (one
    foreach call per operation, whatever the number of matrices):

    complex, γ = 1: step 1 (μ = 0) is E + ΔE (1 add); step 2 (Im μ = 0) is Re μ' = a·Re μ + ΔE
    (mul, add), Im μ' = b·Re μ (mul), E + Re μ' (add): 4; step 3 with Im μ adds b·Im μ (mul, sub)
    and a·Im μ (mul, add): 8; as the last step Im μ' is not formed: 5 (mul, mul, sub, add, add).
    quaternion, γ = 1: step 1 is 1 add; step 2 (only μ_w ≠ 0) is β_w·μ_w + ΔE (mul, add), the
    three other components one mul each, E + μ'_w (add): 6; as the last step only μ'_w: 3.
    γ ≠ 1 adds the multiplication γ·x to every step (E + γx).
    """
    beta_c = 0.5 * complex(math.cos(1.0), math.sin(1.0))
    cplx = MomentumConfig("complex", beta_c, 1.0)
    assert [len(s) for s in _ops_per_step(cplx, 3, None)] == [1, 4, 8]
    assert [len(s) for s in _ops_per_step(cplx, 3, 2)] == [1, 4, 5]
    assert _ops_per_step(cplx, 1, 0) == [["_foreach_add"]]
    assert [len(s) for s in _ops_per_step(MomentumConfig("complex", beta_c, 0.5), 3, 2)] \
        == [2, 5, 6]
    quat = MomentumConfig("quaternion", (0.3, 0.2, -0.1, 0.25), 1.0)
    assert [len(s) for s in _ops_per_step(quat, 2, None)] == [1, 6]
    assert [len(s) for s in _ops_per_step(quat, 2, 1)] == [1, 3]
    assert [len(s) for s in _ops_per_step(MomentumConfig("none", 0j, 1.0), 2, 1)] == [1, 1]
    assert [len(s) for s in _ops_per_step(MomentumConfig("none", 0j, 0.5), 2, 1)] == [2, 2]


@pytest.mark.parametrize("bad", [(math.nan, 0.0, 0.0, 0.0), (0.1, math.inf, 0.0, 0.0)])
def test_quaternion_beta_is_validated_before_use(bad: tuple[float, ...]) -> None:
    """A non-finite β is refused by name (S18 needs a finite β), not turned into NaN momentum."""
    with pytest.raises(ValueError, match="finite"):
        equivalent_complex_beta(bad)
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="finite"):
        quaternion_momentum_step(torch.zeros(3, 4, dtype=torch.float64), x, x, beta=bad,
                                 gamma=1.0)
