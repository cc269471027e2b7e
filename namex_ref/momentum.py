r"""Momentum across MoE layers for the base expert (S16–S18, docs/math.md): pure per-layer steps.

NAMEx (S16) moves the base expert from layer to layer, E_m^(l+1) = E_m^(l) + γ ΔE^(l). The
momentum variants keep a buffer μ that accumulates the bargained updates ΔE^(l):

    S17 (complex):     μ^(l+1) = β μ^(l) + ΔE^(l),        E_m^(l+1) = E_m^(l) + Re(γ μ^(l+1)),
                       β ∈ ℂ, |β| < 1, γ real or complex.
    S18 (quaternion):  μ^(l+1) = β ⊗ μ^(l) + ΔE^(l),      E_m^(l+1) = E_m^(l) + γ Re(μ^(l+1)),
                       β ∈ ℍ, ‖β‖ < 1, ⊗ the Hamilton product with β on the LEFT, ΔE in the
                       real part, γ real.

Buffer layout (our convention). Only real tensors are used, so the steps run on devices or
dtypes without complex support, and autograd sees ordinary real arithmetic:

- complex μ: a real tensor (..., 2) with μ[..., 0] = Re μ and μ[..., 1] = Im μ; this is exactly
  the layout of ``torch.view_as_real``, so ``torch.view_as_complex(mu)`` converts where complex
  dtypes exist;
- quaternion μ: a real tensor (..., 4) = (w, x, y, z) (see :mod:`namex_ref.quaternion`);
- ``kind="none"`` (plain NAMEx): an empty buffer (..., 0), so one code path serves all kinds.

Here (...) is the shape of ΔE, e.g. (d_out, d_in) or (B, d_out, d_in) for per-sequence routing.

Convention (ours, S17 in docs/math.md): μ^(1) = 0 at the first MoE layer of every forward pass
(:func:`zero_buffer`), so the first step gives μ^(2) = ΔE^(1). Note: ``torch.optim.SGD`` instead
starts its buffer at the first gradient; with μ^(1) = 0 the two agree on μ^(2) but our first
base update is Re(γ ΔE^(1)), as in NAMEx.

Reductions: β = 0 is plain NAMEx (S16); real β and real γ are heavy-ball momentum. By the S18
fact (``proofs/s17_s18_quaternion.py``), with real ΔE and real γ, S18 with β equals S17 with
β_c = Re β + i‖Im β‖ (:func:`equivalent_complex_beta`).

Every step is pure: no in-place operation touches an input, so the MoE layers can call them
inside a forward pass with gradients flowing through ΔE, E_m and μ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from namex_ref.checks import as_finite_complex, require_real
from namex_ref.quaternion import QUATERNION_DIM, hamilton, quaternion_entries

__all__ = [
    "BUFFER_WIDTH",
    "MomentumChain",
    "MomentumConfig",
    "MomentumKind",
    "QuaternionBeta",
    "buffer_width",
    "complex_momentum_step",
    "equivalent_complex_beta",
    "momentum_step",
    "quaternion_momentum_step",
    "validate_complex_beta",
    "validate_quaternion_beta",
    "zero_buffer",
]

MomentumKind = Literal["none", "complex", "quaternion"]
QuaternionBeta = tuple[float, float, float, float]

#: Size of the buffer's trailing dimension for each kind (see the module docstring).
BUFFER_WIDTH: dict[str, int] = {"none": 0, "complex": 2, "quaternion": QUATERNION_DIM}


def buffer_width(kind: str) -> int:
    """Trailing buffer dimension for ``kind``: none → 0, complex → 2, quaternion → 4."""
    if kind not in BUFFER_WIDTH:
        raise ValueError(
            f"momentum kind must be one of {sorted(BUFFER_WIDTH)}, got kind={kind!r}"
        )
    return BUFFER_WIDTH[kind]


def validate_complex_beta(beta: complex) -> complex:
    """Return β as a Python complex; ValueError naming β unless it is finite with |β| < 1 (S17).

    |β| < 1 is necessary for the buffer to forget old updates (with ΔE = 0, |μ^(l)| = |β|^l |μ|).
    """
    value = as_finite_complex("beta", beta)
    if not abs(value) < 1.0:
        raise ValueError(
            f"complex momentum needs |beta| < 1 (S17, docs/math.md), got beta={beta!r} with "
            f"|beta|={abs(value):.6g}"
        )
    return value


def validate_quaternion_beta(beta: Sequence[float] | Tensor) -> QuaternionBeta:
    """Return β as a tuple (w, x, y, z) of floats; ValueError naming β unless ‖β‖ < 1 (S18)."""
    if isinstance(beta, (str, bytes)) or isinstance(beta, numbers.Number):
        raise ValueError(
            f"quaternion momentum needs beta as four floats (w, x, y, z), got beta={beta!r}"
        )
    w, x, y, z = quaternion_entries(beta)  # ValueError unless four finite reals
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if not norm < 1.0:
        raise ValueError(
            f"quaternion momentum needs ||beta|| < 1 (S18, docs/math.md), got beta={tuple(beta)!r} "
            f"with ||beta||={norm:.6g}"
        )
    return (w, x, y, z)


def equivalent_complex_beta(beta_q: Sequence[float] | Tensor) -> complex:
    """β_c = Re β + i‖Im β‖ for a quaternion β = (w, x, y, z) (S18 fact).

    With real ΔE and real γ, S18 with β is S17 with β_c: the buffer stays in span{1, u},
    u = Im β / ‖Im β‖, and u² = −1, so span{1, u} ≅ ℂ with β ↦ β_c. No bound on ‖β‖ is imposed.
    """
    w, x, y, z = quaternion_entries(beta_q)
    return complex(w, math.sqrt(x * x + y * y + z * z))


@dataclass(frozen=True)
class MomentumConfig:
    """Hyper-parameters of the base-expert propagation (S16–S18), validated on construction.

    kind:  "none" (plain NAMEx, S16), "complex" (S17) or "quaternion" (S18).
    beta:  complex (or real) number with |β| < 1 for "complex"; four floats (w, x, y, z) with
           ‖β‖ < 1 for "quaternion"; must be 0 for "none" (a non-zero β would be silently unused).
    gamma: real propagation step γ > 0 (S16), finite.

    Quaternion β given as any sequence is stored as a tuple of floats; complex β as a complex.
    """

    kind: MomentumKind = "none"
    beta: complex | QuaternionBeta = 0j
    gamma: float = 1.0

    def __post_init__(self) -> None:
        width = buffer_width(self.kind)  # validates kind
        del width
        gamma = require_real("gamma", self.gamma, low=0, low_open=True, note="S16, docs/math.md")
        object.__setattr__(self, "gamma", gamma)
        beta: complex | QuaternionBeta
        if self.kind == "quaternion":
            beta = validate_quaternion_beta(self.beta)  # type: ignore[arg-type]  # refuses a number
        elif self.kind == "complex":
            if not isinstance(self.beta, numbers.Number):
                raise ValueError(
                    f"complex momentum needs beta as a (complex) number, got beta={self.beta!r}; "
                    "use kind='quaternion' for four components"
                )
            beta = validate_complex_beta(self.beta)
        else:
            if (
                not isinstance(self.beta, numbers.Number)
                or as_finite_complex("beta", self.beta) != 0
            ):
                raise ValueError(
                    f"kind='none' (plain NAMEx) takes no momentum, got beta={self.beta!r}; "
                    "set kind='complex' or 'quaternion' or beta=0"
                )
            beta = 0j
        object.__setattr__(self, "beta", beta)

    @property
    def buffer_width(self) -> int:
        """Trailing dimension of the momentum buffer: 0, 2 or 4."""
        return buffer_width(self.kind)

    @property
    def complex_beta(self) -> complex:
        """β for "complex", the equivalent β_c = Re β + i‖Im β‖ for "quaternion", 0 for "none"."""
        if self.kind == "quaternion":
            return equivalent_complex_beta(self.beta)  # type: ignore[arg-type]
        return complex(self.beta)  # type: ignore[arg-type]


def zero_buffer(config: MomentumConfig | MomentumKind, like: Tensor) -> Tensor:
    """μ^(1) = 0 (our convention, S17): zeros of shape (*like.shape, width), like's dtype/device.

    like: (...) a tensor shaped like ΔE (or E_m). width = 0 / 2 / 4 for none / complex /
    quaternion. The result does not require grad.
    """
    kind = config.kind if isinstance(config, MomentumConfig) else config
    width = buffer_width(kind)
    return torch.zeros((*like.shape, width), dtype=like.dtype, device=like.device)


def _check_step_inputs(mu: Tensor, delta: Tensor, base: Tensor, width: int, eq: str) -> None:
    for name, t in (("mu", mu), ("delta", delta), ("base", base)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{eq}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{eq}: {name} must have a real floating dtype, got {t.dtype}")
    if mu.ndim == 0 or mu.shape[-1] != width:
        raise ValueError(
            f"{eq}: mu must have shape (..., {width}) (buffer layout, see namex_ref.momentum), "
            f"got shape {tuple(mu.shape)}"
        )


def complex_momentum_step(
    mu: Tensor, delta: Tensor, base: Tensor, *, beta: complex, gamma: complex
) -> tuple[Tensor, Tensor]:
    r"""One layer of NAMEx-Mom (S17): μ' = βμ + ΔE, E_m' = E_m + Re(γ μ').

    mu:    (..., 2) real, [..., 0] = Re μ, [..., 1] = Im μ (``torch.view_as_real`` layout).
    delta: (...) real ΔE^(l), e.g. the bargained update Σ_i α_i τ_i (S16).
    base:  (...) real E_m^(l) (broadcastable with delta).
    beta:  β ∈ ℂ as a Python number. Not range-checked here (the spectral tools evaluate any β);
           :class:`MomentumConfig` enforces |β| < 1.
    gamma: γ, real or complex; Re(γμ') = Re γ·Re μ' − Im γ·Im μ'.
    Returns (mu_new (..., 2), base_new (...)), new tensors; inputs are not modified.

    In real arithmetic, with β = a + ib:
        Re μ' = a·Re μ − b·Im μ + ΔE,   Im μ' = b·Re μ + a·Im μ.
    β = 0 gives E_m' = E_m + Re(γ)ΔE (plain NAMEx, S16); real β and γ give heavy ball.
    """
    _check_step_inputs(mu, delta, base, 2, "S17")
    b = as_finite_complex("beta", beta)
    g = as_finite_complex("gamma", gamma)
    re, im = mu.unbind(-1)
    re_new = b.real * re - b.imag * im + delta
    im_new = b.imag * re + b.real * im
    update = g.real * re_new if g.imag == 0.0 else g.real * re_new - g.imag * im_new
    return torch.stack((re_new, im_new), dim=-1), base + update


def quaternion_momentum_step(
    mu: Tensor,
    delta: Tensor,
    base: Tensor,
    *,
    beta: Sequence[float] | Tensor,
    gamma: float,
) -> tuple[Tensor, Tensor]:
    r"""One layer of NAMEx-Q (S18): μ' = β ⊗ μ + ΔE (ΔE in the real part), E_m' = E_m + γ Re μ'.

    mu:    (..., 4) real quaternion buffer (w, x, y, z).
    delta: (...) real ΔE^(l).   base: (...) real E_m^(l) (broadcastable with delta).
    beta:  β ∈ ℍ as four floats (w, x, y, z) or a (4,) tensor (then gradients reach β too);
           multiplies μ on the LEFT. Not range-checked here; :class:`MomentumConfig` enforces
           ‖β‖ < 1.
    gamma: real γ (S18 defines the update with a real step); a complex γ is a ValueError.
    Returns (mu_new (..., 4), base_new (...)), new tensors; inputs are not modified.

    Equals :func:`complex_momentum_step` with β_c = :func:`equivalent_complex_beta` (β) on the
    base expert (S18 fact, ``proofs/s17_s18_quaternion.py``).
    """
    _check_step_inputs(mu, delta, base, QUATERNION_DIM, "S18")
    g = as_finite_complex("gamma", gamma)
    if g.imag != 0.0:
        raise ValueError(f"S18 uses a real step gamma, got gamma={gamma!r}")
    beta_q: Tensor | tuple[float, float, float, float]
    if isinstance(beta, Tensor):
        if beta.shape != (QUATERNION_DIM,) or not beta.is_floating_point():
            raise ValueError(f"beta must be a real (4,) tensor, got shape {tuple(beta.shape)}")
        beta_q = beta.to(device=mu.device, dtype=mu.dtype)
    else:  # four Python floats: no tensor made, no host-to-device copy per layer
        beta_q = quaternion_entries(beta)
    rotated = hamilton(beta_q, mu)  # (..., 4) = β ⊗ μ
    w_new = rotated[..., 0] + delta
    mu_new = torch.cat((w_new.unsqueeze(-1), rotated[..., 1:]), dim=-1)
    return mu_new, base + g.real * w_new


def momentum_step(
    mu: Tensor, delta: Tensor, base: Tensor, *, config: MomentumConfig
) -> tuple[Tensor, Tensor]:
    """One layer of base-expert propagation for any ``config.kind`` (S16, S17 or S18).

    mu: (..., w) with w = config.buffer_width (start from :func:`zero_buffer`);
    delta, base: (...) real. Returns (mu_new, base_new). For kind "none" (S16) the empty buffer
    is returned unchanged and E_m' = E_m + γ ΔE.
    """
    if config.kind == "complex":
        return complex_momentum_step(
            mu, delta, base, beta=config.complex_beta, gamma=config.gamma
        )
    if config.kind == "quaternion":
        return quaternion_momentum_step(
            mu, delta, base, beta=config.beta, gamma=config.gamma  # type: ignore[arg-type]
        )
    _check_step_inputs(mu, delta, base, 0, "S16")
    return mu, base + config.gamma * delta


class MomentumChain:
    r"""The base expert's propagation across the MoE layers of one forward (S16–S18), one
    :meth:`step` per layer transition, for every weight matrix of the base at once.

    Same recurrences as :func:`momentum_step` from μ^(1) = 0 (:func:`zero_buffer`), with the
    work that exact zeros and exact ones make unnecessary left out (results equal; tested
    against a complex128 / quaternion oracle in tests/test_momentum.py):

    - γ = 1: E_m' = E_m + ΔE (1·x = x exactly), no multiplication.
    - "complex": the buffer is kept as Re μ, Im μ (no stack, no unbind), each ``None`` while it
      is exactly 0: the first step is E_m' = E_m + γΔE, the second needs no Im μ term; on the
      ``last`` step (no layer follows) the buffer is not formed, only Re μ' for the base.
    - "quaternion": μ kept as its four components, each ``None`` while exactly 0: the first
      step (β ⊗ 0 = 0) is E_m' = E_m + γΔE, the second multiplies only μ_w; the ``last`` step
      forms μ'_w only.

    Every operation is one ``torch._foreach_*`` call over the matrices (one launch for all of
    them on CUDA), in the order of operations of the per-tensor steps.
    """

    def __init__(self, config: MomentumConfig) -> None:
        self.config = config
        self._re: list[Tensor] | None = None  # complex: Re μ per matrix; None = exactly 0
        self._im: list[Tensor] | None = None  # complex: Im μ per matrix; None = exactly 0
        # quaternion: (w, x, y, z), each a per-matrix list or None while exactly 0
        self._q: tuple[list[Tensor] | None, ...] | None = None

    def step(self, deltas: Sequence[Tensor], base: Sequence[Tensor], *,
             last: bool = False) -> list[Tensor]:
        """E_m^(l+1) per matrix from ΔE^(l) (``deltas``) and E_m^(l) (``base``), matching
        shapes; ``last``: no step follows, so the buffer need not be formed."""
        kind, g = self.config.kind, float(self.config.gamma)  # γ is real (MomentumConfig)
        deltas, base = list(deltas), list(base)
        if kind == "complex":
            return self._complex(deltas, base, last)
        if kind == "quaternion":
            return self._quaternion(deltas, base, last)
        return _add_scaled(base, deltas, g)

    def _quaternion(self, deltas: list[Tensor], base: list[Tensor],
                    last: bool) -> list[Tensor]:
        """S18 on the split buffer: the terms of :func:`namex_ref.quaternion.hamilton` (β ⊗ μ,
        β on the left) in its order, μ'_w = (β ⊗ μ)_w + ΔE, E_m' = E_m + γ μ'_w."""
        pw, px, py, pz = self.config.beta  # type: ignore[misc]  # four floats (validated)
        g = float(self.config.gamma)
        rest: tuple[list[Tensor] | None, ...]
        if self._q is None:  # μ = 0
            w_new, rest = deltas, (None, None, None)
        else:
            qw, qx, qy, qz = self._q
            w = _combine([(pw, qw), (-px, qx), (-py, qy), (-pz, qz)])
            w_new = deltas if w is None else list(torch._foreach_add(w, deltas))
            rest = (None, None, None) if last else (
                _combine([(pw, qx), (px, qw), (py, qz), (-pz, qy)]),
                _combine([(pw, qy), (-px, qz), (py, qw), (pz, qx)]),
                _combine([(pw, qz), (px, qy), (-py, qx), (pz, qw)]))
        self._q = (w_new, *rest)
        return _add_scaled(base, w_new, g)

    def _complex(self, deltas: list[Tensor], base: list[Tensor], last: bool) -> list[Tensor]:
        """S17 on the split buffer: Re μ' = a·Re μ − b·Im μ + ΔE, Im μ' = b·Re μ + a·Im μ
        (β = a + ib, the order of operations of :func:`complex_momentum_step`), each operation
        one ``torch._foreach_*`` call over the matrices (the same element-wise operation per
        tensor, so the same values; one launch for all matrices on CUDA)."""
        beta, g = complex(self.config.complex_beta), float(self.config.gamma)  # γ real (S17)
        a, b = beta.real, beta.imag
        re, im = self._re, self._im
        if re is None:  # μ = 0 (only at the first step: Im μ = 0 too)
            new_re, new_im = deltas, None
        else:
            ar = torch._foreach_mul(re, a)
            if im is not None:
                ar = torch._foreach_sub(ar, torch._foreach_mul(im, b))
            new_re = list(torch._foreach_add(ar, deltas))
            new_im = None
            if not last:
                br = torch._foreach_mul(re, b)
                if im is not None:
                    br = torch._foreach_add(br, torch._foreach_mul(im, a))
                new_im = list(br)
        self._re, self._im = new_re, new_im
        return _add_scaled(base, new_re, g)


def _add_scaled(base: list[Tensor], x: list[Tensor], gamma: float) -> list[Tensor]:
    """E + γx per matrix, in one ``torch._foreach_*`` call each; the multiplication is left
    out for γ = 1 (exact)."""
    if gamma == 1.0:
        return list(torch._foreach_add(base, x))
    return list(torch._foreach_add(base, torch._foreach_mul(x, gamma)))


def _combine(terms: Sequence[tuple[float, list[Tensor] | None]]) -> list[Tensor] | None:
    """Σ c·x over the terms, left to right, per matrix; a ``None`` x is exactly 0 and is left
    out (y ± 0 = y); None when every x is. Adding (−c)·x is subtracting c·x exactly in IEEE
    arithmetic, so a negative coefficient reproduces hamilton's subtractions."""
    acc: list[Tensor] | tuple[Tensor, ...] | None = None
    for c, x in terms:
        if x is not None:
            cx = torch._foreach_mul(x, c)
            acc = cx if acc is None else torch._foreach_add(acc, cx)
    return None if acc is None else list(acc)
