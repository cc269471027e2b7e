"""Quaternions as real tensors of shape (..., 4) = (w, x, y, z) (S18, docs/math.md).

A quaternion q = w + x·i + y·j + z·k is stored as its four real components in the trailing
dimension, so every operation runs on real dtypes (float16 … float64) on any device and is
differentiable by autograd. The Hamilton product follows i² = j² = k² = ijk = −1:

    p ⊗ q = (p_w q_w − p_v·q_v,  p_w q_v + q_w p_v + p_v × q_v)      (p_v, q_v the vector parts)

It is bilinear, associative, not commutative, and ‖p ⊗ q‖ = ‖p‖‖q‖. Left multiplication by p is
linear in q: p ⊗ q = L(p) q with the 4×4 real matrix returned by :func:`left_matrix`; NAMEx-Q
(S18) multiplies its buffer on the LEFT by β, μ ← β ⊗ μ + ΔE.

All functions are pure: they never modify their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "QUATERNION_DIM",
    "as_quaternion",
    "check_quaternion",
    "conj",
    "hamilton",
    "left_matrix",
    "qnorm",
    "quaternion_entries",
]

#: Components per quaternion, in the order (w, x, y, z): real part first.
QUATERNION_DIM = 4


def check_quaternion(q: Tensor, name: str = "q") -> None:
    """Raise ValueError unless ``q`` is a floating tensor of shape (..., 4).

    q: (..., 4) real tensor (w, x, y, z). Complex and integer dtypes are rejected: a quaternion
    is four REAL numbers here, and integer arithmetic would silently truncate.
    """
    if not isinstance(q, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., 4), got {type(q).__name__}")
    if q.ndim == 0 or q.shape[-1] != QUATERNION_DIM:
        raise ValueError(
            f"{name} must have a trailing dimension of size 4 (w, x, y, z), got shape "
            f"{tuple(q.shape)}"
        )
    if not q.is_floating_point():
        raise ValueError(f"{name} must have a real floating dtype, got {q.dtype}")


def quaternion_entries(value: Sequence[float] | Tensor) -> tuple[float, float, float, float]:
    """Validate one quaternion and return its four finite components (w, x, y, z) as floats.

    A Python tuple, not a tensor: a constant β (NAMEx-Q, S18) enters :func:`hamilton` as four
    numbers, so no host-to-device copy happens in a training step (a CUDA-graph capture
    refuses one). A tensor argument is read once on the host.

    Raises ValueError naming the value if it does not have exactly four finite entries.
    """
    if isinstance(value, Tensor):
        check_quaternion(value, "quaternion")
        if value.ndim != 1:
            raise ValueError(
                f"expected a single quaternion of shape (4,), got {tuple(value.shape)}"
            )
        entries = [float(v) for v in value.detach().cpu().tolist()]
    else:
        try:
            entries = [float(v) for v in value]
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"a quaternion is four real numbers (w, x, y, z), got {value!r}"
            ) from exc
        if len(entries) != QUATERNION_DIM:
            raise ValueError(
                f"a quaternion is four real numbers (w, x, y, z), got {len(entries)}: {value!r}"
            )
    if not all(math.isfinite(v) for v in entries):
        raise ValueError(f"quaternion components must be finite, got {value!r}")
    w, x, y, z = entries
    return w, x, y, z


def as_quaternion(
    value: Sequence[float] | Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Build one quaternion tensor (4,) from four finite reals (w, x, y, z).

    Raises ValueError naming the value if it does not have exactly four finite entries.
    """
    return torch.tensor(quaternion_entries(value), dtype=dtype, device=device)


def hamilton(p: Tensor | tuple[float, float, float, float], q: Tensor) -> Tensor:
    """Hamilton product p ⊗ q (S18), broadcasting over leading dimensions.

    p: (..., 4) real tensor, or one constant quaternion as four floats (w, x, y, z) from
    :func:`quaternion_entries` (then no tensor is made for it: nothing is copied to q's
    device); q: (..., 4) real → (..., 4), dtype of the torch type promotion of p and q.
    Written out component by component (not through :func:`left_matrix`) so that the identity
    hamilton(p, q) = left_matrix(p) @ q is a check between two independent codings.
    """
    check_quaternion(q, "q")
    pw: Tensor | float
    px: Tensor | float
    py: Tensor | float
    pz: Tensor | float
    if isinstance(p, tuple) and len(p) == QUATERNION_DIM and all(type(v) is float for v in p):
        pw, px, py, pz = p
    else:
        check_quaternion(p, "p")  # type: ignore[arg-type]  # anything else is refused here
        assert isinstance(p, Tensor)
        pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    w = pw * qw - px * qx - py * qy - pz * qz
    x = pw * qx + px * qw + py * qz - pz * qy
    y = pw * qy - px * qz + py * qw + pz * qx
    z = pw * qz + px * qy - py * qx + pz * qw
    return torch.stack((w, x, y, z), dim=-1)


def left_matrix(q: Tensor) -> Tensor:
    """Real 4×4 matrix L(q) of left multiplication: hamilton(q, p) = L(q) @ p (S18, S19).

    q: (..., 4) → (..., 4, 4). For q = (a, b, c, d):

        L(q) = [[a, −b, −c, −d],
                [b,  a, −d,  c],
                [c,  d,  a, −b],
                [d, −c,  b,  a]]

    L(q) = a·I + (antisymmetric part), so L(q)ᵀL(q) = ‖q‖²·I (S19 uses it for the quaternion
    momentum matrix).
    """
    check_quaternion(q, "q")
    a, b, c, d = q.unbind(-1)
    rows = (
        torch.stack((a, -b, -c, -d), dim=-1),
        torch.stack((b, a, -d, c), dim=-1),
        torch.stack((c, d, a, -b), dim=-1),
        torch.stack((d, -c, b, a), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def conj(q: Tensor) -> Tensor:
    """Conjugate q* = (w, −x, −y, −z); q ⊗ q* = ‖q‖². q: (..., 4) → (..., 4)."""
    check_quaternion(q, "q")
    sign = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype, device=q.device)
    return q * sign


def qnorm(q: Tensor) -> Tensor:
    """Euclidean norm ‖q‖ = sqrt(w² + x² + y² + z²). q: (..., 4) → (...).

    Computed by ``torch.linalg.vector_norm``, which does not rescale: components below ~1e-154
    (float64) underflow when squared.
    """
    check_quaternion(q, "q")
    norm: Tensor = torch.linalg.vector_norm(q, dim=-1)
    return norm
