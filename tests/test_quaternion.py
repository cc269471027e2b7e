"""Hamilton product on (..., 4) real tensors (S18), checked against independent codings.

Oracles (none of them calls namex_ref.quaternion):
- the scalar–vector formula p ⊗ q = (p_w q_w − p_v·q_v, p_w q_v + q_w p_v + p_v × q_v) in numpy;
- the 2×2 complex matrix representation q = α + βj ↦ [[α, β], [−β̄, ᾱ]] (α = w + ix,
  β = y + iz), a ring homomorphism ℍ → ℂ^{2×2}, so M(p)M(q) = M(p ⊗ q);
- the basis table i² = j² = k² = ijk = −1, ij = k, jk = i, ki = j.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from namex_ref.quaternion import as_quaternion, check_quaternion, conj, hamilton, left_matrix, qnorm

#: Each product component is a sum of 4 products; with entries ≤ 10 in magnitude, float64
#: rounding is ≤ ~4·eps·|p||q|. We allow 64·eps relative to |p||q| (+ a tiny absolute floor).
EPS = float(np.finfo(np.float64).eps)
PRODUCT_RTOL = 64 * EPS

#: Entries are 0 or of magnitude ≥ 1e-60: products of three entries then stay ≥ 1e-180 and their
#: squares (qnorm, like torch.linalg.vector_norm, does not rescale) stay normal floats. Inputs
#: near the float64 underflow threshold are out of scope for momentum buffers.
_entries = st.floats(-10, 10, allow_nan=False, allow_infinity=False).filter(
    lambda v: v == 0 or abs(v) >= 1e-60
)
quats = arrays(np.float64, 4, elements=_entries)
SETTINGS = settings(max_examples=150, deadline=None)


def _n(a: np.ndarray) -> float:
    """Norm without underflow of squares (math.hypot scales), so tiny inputs keep a tolerance."""
    return math.hypot(*(float(v) for v in a))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def scalar_vector_product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Independent oracle: (s1, v1)(s2, v2) = (s1 s2 − v1·v2, s1 v2 + s2 v1 + v1 × v2)."""
    s1, v1 = p[0], p[1:]
    s2, v2 = q[0], q[1:]
    return np.concatenate([[s1 * s2 - v1 @ v2], s1 * v2 + s2 * v1 + np.cross(v1, v2)])


def complex_matrix(q: np.ndarray) -> np.ndarray:
    """q = w + xi + yj + zk ↦ [[α, β], [−conj β, conj α]], α = w + ix, β = y + iz."""
    a = complex(q[0], q[1])
    b = complex(q[2], q[3])
    return np.array([[a, b], [-b.conjugate(), a.conjugate()]])


@SETTINGS
@given(p=quats, q=quats)
def test_hamilton_matches_scalar_vector_formula(p: np.ndarray, q: np.ndarray) -> None:
    got = hamilton(_t(p), _t(q)).numpy()
    scale = _n(p) * _n(q) + 1e-300
    np.testing.assert_allclose(got, scalar_vector_product(p, q), rtol=0, atol=PRODUCT_RTOL * scale)


@SETTINGS
@given(p=quats, q=quats)
def test_hamilton_matches_complex_matrix_representation(p: np.ndarray, q: np.ndarray) -> None:
    pq = hamilton(_t(p), _t(q)).numpy()
    scale = _n(p) * _n(q) + 1e-300
    np.testing.assert_allclose(
        complex_matrix(pq), complex_matrix(p) @ complex_matrix(q), rtol=0, atol=PRODUCT_RTOL * scale
    )


@SETTINGS
@given(p=quats, q=quats)
def test_left_matrix_reproduces_product(p: np.ndarray, q: np.ndarray) -> None:
    """hamilton(p, q) = left_matrix(p) @ q (the S19 quaternion matrix relies on it)."""
    scale = _n(p) * _n(q) + 1e-300
    np.testing.assert_allclose(
        (left_matrix(_t(p)) @ _t(q)).numpy(),
        scalar_vector_product(p, q),
        rtol=0,
        atol=PRODUCT_RTOL * scale,
    )


@SETTINGS
@given(q=quats)
def test_left_matrix_is_scaled_orthogonal(q: np.ndarray) -> None:
    """L(q)ᵀ L(q) = ‖q‖² I: left multiplication scales every vector by ‖q‖."""
    L = left_matrix(_t(q)).numpy()
    n2 = _n(q) ** 2
    np.testing.assert_allclose(L.T @ L, n2 * np.eye(4), rtol=0, atol=PRODUCT_RTOL * (n2 + 1e-300))


@SETTINGS
@given(p=quats, q=quats, r=quats)
def test_associativity(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> None:
    P, Q, R = _t(p), _t(q), _t(r)
    left = hamilton(hamilton(P, Q), R).numpy()
    right = hamilton(P, hamilton(Q, R)).numpy()
    scale = _n(p) * _n(q) * _n(r) + 1e-300
    # two rounded products in sequence: twice the single-product bound
    np.testing.assert_allclose(left, right, rtol=0, atol=2 * PRODUCT_RTOL * scale)


@SETTINGS
@given(p=quats, q=quats)
def test_norm_is_multiplicative(p: np.ndarray, q: np.ndarray) -> None:
    got = float(qnorm(hamilton(_t(p), _t(q))))
    want = _n(p) * _n(q)
    assert abs(got - want) <= PRODUCT_RTOL * want + 1e-300


@SETTINGS
@given(p=quats, q=quats)
def test_conjugate_identities(p: np.ndarray, q: np.ndarray) -> None:
    """q ⊗ q* = ‖q‖² and (p ⊗ q)* = q* ⊗ p*."""
    P, Q = _t(p), _t(q)
    n2 = _n(q) ** 2
    np.testing.assert_allclose(
        hamilton(Q, conj(Q)).numpy(), [n2, 0, 0, 0], rtol=0, atol=PRODUCT_RTOL * (n2 + 1e-300)
    )
    scale = _n(p) * _n(q) + 1e-300
    np.testing.assert_allclose(
        conj(hamilton(P, Q)).numpy(),
        hamilton(conj(Q), conj(P)).numpy(),
        rtol=0,
        atol=2 * PRODUCT_RTOL * scale,
    )


def test_basis_table() -> None:
    one, i, j, k = (_t(v) for v in np.eye(4))
    minus_one = -one
    for u in (i, j, k):
        torch.testing.assert_close(hamilton(u, u), minus_one, rtol=0, atol=0)
    torch.testing.assert_close(hamilton(hamilton(i, j), k), minus_one, rtol=0, atol=0)
    torch.testing.assert_close(hamilton(i, j), k, rtol=0, atol=0)
    torch.testing.assert_close(hamilton(j, k), i, rtol=0, atol=0)
    torch.testing.assert_close(hamilton(k, i), j, rtol=0, atol=0)
    torch.testing.assert_close(hamilton(j, i), -k, rtol=0, atol=0)  # not commutative


def test_broadcasting_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64)
    out = hamilton(p, q)
    assert out.shape == (5, 3, 4)
    for a in range(5):
        for b in range(3):
            want = scalar_vector_product(p[a, 0].numpy(), q[b].numpy())
            np.testing.assert_allclose(out[a, b].numpy(), want, rtol=0, atol=1e-13)
    assert left_matrix(p).shape == (5, 1, 4, 4)


def test_inputs_untouched_and_differentiable() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p0, q0 = p.detach().clone(), q.detach().clone()
    assert torch.autograd.gradcheck(hamilton, (p, q))
    assert torch.autograd.gradcheck(lambda x: left_matrix(x), (p,))
    torch.testing.assert_close(p.detach(), p0, rtol=0, atol=0)
    torch.testing.assert_close(q.detach(), q0, rtol=0, atol=0)


def test_float32_is_preserved() -> None:
    p = torch.ones(4, dtype=torch.float32)
    assert hamilton(p, p).dtype == torch.float32
    assert left_matrix(p).dtype == torch.float32


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3), torch.zeros(2, 5), torch.zeros(()), torch.zeros(4, dtype=torch.int64)],
)
def test_check_quaternion_rejects(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        check_quaternion(bad)
    with pytest.raises(ValueError):
        hamilton(bad, torch.zeros(4))


@pytest.mark.parametrize(
    "bad", [(1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 4.0, 5.0), (0.0, float("nan"), 0.0, 0.0), "abcd"]
)
def test_as_quaternion_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="quaternion"):
        as_quaternion(bad)  # type: ignore[arg-type]


def test_as_quaternion_roundtrip() -> None:
    q = as_quaternion((0.8, 0.3, 0.3, 0.3))
    assert q.dtype == torch.float64 and q.shape == (4,)
    assert q.tolist() == [0.8, 0.3, 0.3, 0.3]


# ---- Input validation of every operation and the tensor path of as_quaternion (S18) -----------
# Found by mutation testing (tools/mutation.py): the checks below were reachable only through
# hamilton's first argument, so removing any other check went unnoticed. The expected behaviour
# is the documented contract (ValueError naming the problem), not the code's output.

_BAD_QUATERNIONS = [
    pytest.param(torch.zeros(3), "trailing dimension", id="shape-3"),
    pytest.param(torch.zeros(2, 5), "trailing dimension", id="shape-2x5"),
    pytest.param(torch.zeros(4, dtype=torch.int64), "floating dtype", id="int64"),
    pytest.param([1.0, 0.0, 0.0, 0.0], "torch.Tensor", id="list"),
]
_GOOD = torch.tensor([0.5, -0.25, 1.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize(("bad", "message"), _BAD_QUATERNIONS)
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(check_quaternion, id="check_quaternion"),
        pytest.param(lambda q: hamilton(q, _GOOD), id="hamilton-left"),
        pytest.param(lambda q: hamilton(_GOOD, q), id="hamilton-right"),
        pytest.param(left_matrix, id="left_matrix"),
        pytest.param(conj, id="conj"),
        pytest.param(qnorm, id="qnorm"),
    ],
)
def test_every_operation_rejects_a_non_quaternion(
    operation: Callable[[object], object], bad: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        operation(bad)


def test_as_quaternion_from_a_tensor() -> None:
    """A (4,) floating tensor is accepted and converted exactly (float32 → float64 is exact)."""
    values = np.array([0.8, -0.3, 0.1, 2.5], dtype=np.float32)
    q = as_quaternion(torch.from_numpy(values))
    assert q.dtype == torch.float64 and q.shape == (4,)
    assert q.tolist() == [float(v) for v in values.astype(np.float64)]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 4), "single quaternion of shape"),
        (torch.zeros(1, 4), "single quaternion of shape"),
        (torch.zeros(4, dtype=torch.int64), "floating dtype"),
        (torch.tensor([1.0, float("inf"), 1.0, 1.0]), "finite"),
    ],
)
def test_as_quaternion_rejects_tensors(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_quaternion(bad)


@pytest.mark.parametrize(
    "bad", [(1.0, float("inf"), 1.0, 1.0), (1.0, 2.0, float("nan"), 3.0), (-math.inf, 1, 1, 1)]
)
def test_as_quaternion_rejects_non_finite_components(bad: tuple[float, ...]) -> None:
    """All other components are non-zero, so only the finiteness check can reject these."""
    with pytest.raises(ValueError, match="finite"):
        as_quaternion(bad)


def test_zero_components_are_valid() -> None:
    assert as_quaternion((0.0, 0.0, 0.0, 0.0)).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_qnorm_and_conj_act_per_quaternion_on_batches() -> None:
    """qnorm reduces the trailing (w, x, y, z) axis only; conj flips the vector part (S18)."""
    q = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, 2.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    got = qnorm(_t(q))
    assert got.shape == (3,)
    # math.hypot is an independent, correctly rounded-enough Euclidean norm (exact here: 5, 5, 0).
    assert got.tolist() == [math.hypot(*row) for row in q] == [5.0, 5.0, 0.0]
    assert conj(_t(q)).tolist() == [[w, -x, -y, -z] for w, x, y, z in q.tolist()]
