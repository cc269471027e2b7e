"""Merge operators (S13–S14, docs/math.md): the Kronecker curvature operator and the merged
linear map, each with a memory-saving autograd function and an eager oracle.

Nothing here owns parameters or knows the merging methods: :mod:`namex_ref.merging.plan` builds
the per-layer terms with these operators, :mod:`namex_ref.merging.layers` holds the parameters.
The recomputing paths (``recompute=True``, the default) save only the inputs and form the
intermediates again in backward, under the forward's autocast state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from namex_ref.regions import MERGE, region

__all__ = [
    "kronecker_apply",
    "merge_weights",
    "merged_linear",
    "recomputable_taus",
]


def kronecker_apply(
    tau: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, *, recompute: bool = True
) -> Tensor:
    """Kronecker curvature operator of CAMEx (S14): M_i(τ_i) = (A_i⊗B_i) τ_i (C_i⊗D_i)ᵀ.

    tau: (N, out, in) with out = o1·o2, in = i1·i2; A: (N, o1, o1), B: (N, o2, o2),
    C: (N, i1, i1), D: (N, i2, i2). Row index (a, b) of τ is a·o2 + b (row-major), so
    ((A⊗B)τ(C⊗D)ᵀ)[ab, cd] = Σ A[a,p] B[b,q] τ[pq, rs] C[c,r] D[d,s]. Returns (N, out, in).
    Identity factors give M_i = I. In row-major vectorisation M_i is A_i⊗B_i⊗C_i⊗D_i acting on
    vec(τ_i) (``proofs/s13_s16_merging.py``).

    recompute: True (default) saves only τ and the factors for backward and recomputes the
    three intermediates there (:class:`_KroneckerApply`, no operand copied); False is the eager
    einsum chain that keeps all four (N, out, in) intermediates (the oracle of the tests).
    """
    N, out, inn = tau.shape
    for name, f in (("A", A), ("B", B), ("C", C), ("D", D)):
        if f.ndim != 3 or f.shape[0] != N or f.shape[1] != f.shape[2]:
            raise ValueError(
                f"Kronecker factor {name} must have shape (N, k, k) with N = {N} (one square "
                f"factor per expert); got {tuple(f.shape)}"
            )
    o1, o2, i1, i2 = A.shape[-1], B.shape[-1], C.shape[-1], D.shape[-1]
    if o1 * o2 != out or i1 * i2 != inn:
        raise ValueError(
            f"Kronecker factors ({o1}x{o2}, {i1}x{i2}) do not match tau of shape {(out, inn)}"
        )
    if not recompute:
        return _kronecker_eager(tau, A, B, C, D)
    out_t: Tensor = _KroneckerApply.apply(tau, A, B, C, D)  # type: ignore[no-untyped-call]
    return out_t


def _kronecker_eager(tau: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The eager S14 operator: four einsums, autograd keeps every intermediate (the oracle of
    :class:`_KroneckerApply`, ``merge_memory="eager"``)."""
    N, out, inn = tau.shape
    o1, o2, i1, i2 = A.shape[-1], B.shape[-1], C.shape[-1], D.shape[-1]
    t = tau.reshape(N, o1, o2, i1, i2)
    t = torch.einsum("nap,npqrs->naqrs", A, t)
    t = torch.einsum("nbq,naqrs->nabrs", B, t)
    t = torch.einsum("ncr,nabrs->nabcs", C, t)
    t = torch.einsum("nds,nabcs->nabcd", D, t)
    return t.reshape(N, out, inn)


def _kron_steps(tau: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> list[Tensor]:
    """[t1, t2, t3, t4] of S14 with t1 = A·τ (axis o1), t2 = B·t1 (o2), t3 = C·t2 (i1),
    t4 = D·t3 (i2); each (N, o1, o2, i1, i2), contiguous. Written as (batched) matmuls on
    views so that no operand is permuted or copied (the einsums above copy three of the four)."""
    N = tau.shape[0]
    o1, o2, i1, i2 = A.shape[-1], B.shape[-1], C.shape[-1], D.shape[-1]
    shape = (N, o1, o2, i1, i2)
    t1 = torch.bmm(A, tau.reshape(N, o1, o2 * i1 * i2))
    t2 = torch.matmul(B[:, None], t1.reshape(N, o1, o2, i1 * i2))
    t3 = torch.matmul(C[:, None], t2.reshape(N, o1 * o2, i1, i2))
    t4 = torch.bmm(t3.reshape(N, o1 * o2 * i1, i2), D.transpose(1, 2))
    return [t.reshape(shape) for t in (t1, t2, t3, t4)]


class _AutocastState(NamedTuple):
    """The autocast state of a forward, replayed in the backward of a recomputing function (the
    recomputed tensors then get the dtypes the forward gave them)."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @staticmethod
    def capture(t: Tensor) -> _AutocastState:
        dev = t.device.type
        return _AutocastState(dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    def replay(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


_StorageKey = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]
#: τ tensors that :func:`~namex_ref.merging.plan.propagate` formed as E − E_m, keyed by storage
#: and layout: while registered, :class:`_KroneckerApply` saves (E, E_m) (a parameter and one
#: (*P) matrix) instead of τ and forms τ again in backward (``merge_memory`` other than "eager").
_TAU_RECIPES: dict[_StorageKey, tuple[Tensor, Tensor]] = {}


def _storage_key(t: Tensor) -> _StorageKey:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape),
            tuple(t.stride()), t.dtype)


@contextlib.contextmanager
def recomputable_taus(
    taus: Sequence[Tensor], experts: Sequence[Tensor], base: Sequence[Tensor]
) -> Iterator[None]:
    """Register τ_m = experts[m] − base[m] (exactly those tensors) as recomputable from
    (experts[m], base[m]) for the curvature operators called inside the block."""
    keys = [_storage_key(t) for t in taus]
    for k, E, b in zip(keys, experts, base, strict=True):
        _TAU_RECIPES[k] = (E, b)
    try:
        yield
    finally:
        for k in keys:
            _TAU_RECIPES.pop(k, None)


class _KroneckerApply(torch.autograd.Function):
    """M(τ) of S14 that saves only τ and the four factors for backward and recomputes the three
    intermediates t1..t3 there (one (N, out, in) tensor saved instead of four).

    Backward (g = ∂L/∂t4, every factor acting on its own axis; ``_Tᵀ`` the transposed action):
    u3 = Dᵀ·g, u2 = Cᵀ·u3, u1 = Bᵀ·u2, ∂τ = Aᵀ·u1;
    ∂D[n] = Σ g[n,…,d] t3[n,…,s], ∂C[n] = Σ u3[n,…,c,·] t2[n,…,r,·], ∂B[n] = Σ u2[n,·,b,…]
    t1[n,·,q,…], ∂A[n] = Σ u1[n,a,…] τ[n,p,…] (sums over every other axis).
    """

    @staticmethod
    def forward(
        ctx: Any, tau: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
    ) -> Tensor:
        ctx.autocast = _AutocastState.capture(tau)
        ctx.tau_shape = tau.shape
        recipe = _TAU_RECIPES.get(_storage_key(tau))
        if recipe is None:
            ctx.save_for_backward(tau, A, B, C, D, None, None)
        else:  # τ = E − E_m: keep E (a parameter) and E_m, not the (N, out, in) τ
            ctx.save_for_backward(None, A, B, C, D, *recipe)
        return _kron_steps(tau, A, B, C, D)[3].reshape(tau.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        tau, A, B, C, D, E, Em = ctx.saved_tensors
        N = ctx.tau_shape[0]
        o1, o2, i1, i2 = A.shape[-1], B.shape[-1], C.shape[-1], D.shape[-1]
        need = ctx.needs_input_grad
        with torch.no_grad(), ctx.autocast.replay():
            if tau is None:
                tau = (E - Em).reshape(ctx.tau_shape)  # the same op as domain_vectors (S1)
            t1, t2, t3, _ = _kron_steps(tau, A, B, C, D)
            g = grad.reshape(N, o1 * o2 * i1, i2)
            gD = torch.bmm(g.transpose(1, 2), t3.reshape(N, -1, i2)) if need[4] else None
            u3 = torch.bmm(g, D).reshape(N, o1 * o2, i1, i2)  # Dᵀ acting on axis i2
            gC = (torch.matmul(u3, t2.reshape(N, o1 * o2, i1, i2).transpose(-1, -2)).sum(1)
                  if need[3] else None)
            u2 = torch.matmul(C.transpose(1, 2)[:, None], u3).reshape(N, o1, o2, i1 * i2)
            gB = (torch.matmul(u2, t1.reshape(N, o1, o2, i1 * i2).transpose(-1, -2)).sum(1)
                  if need[2] else None)
            u1 = torch.matmul(B.transpose(1, 2)[:, None], u2).reshape(N, o1, o2 * i1 * i2)
            gA = (torch.bmm(u1, tau.reshape(N, o1, -1).transpose(1, 2)) if need[1] else None)
            gtau = (torch.bmm(A.transpose(1, 2), u1).reshape(tau.shape) if need[0] else None)
        return gtau, gA, gB, gC, gD


def merge_weights(base: Tensor | None, deltas: Tensor, scores: Tensor, eta: float) -> Tensor:
    """S14: Ê = E_m + η Σ_i s_i D_i, with D_i = M_i(τ_i) (CAMEx family) or D_i = E_i (S13).

    base: (*P) or None (= 0; SMEAR, S13, uses η = 1); deltas: (N, *P), or per score row
    (..., N, *P) (``dare_granularity="segment"``; needs a base); scores: (..., N).
    Returns (..., *P) — one merged weight matrix per score row (segment or sequence).

    Note: with η = 1, D_i = τ_i = E_i − E_m (M = I) and Σ s_i = 1, S14 is S13 for every E_m
    (``proofs/s13_s16_merging.py``); router scores sum to 1 only to float32 rounding, so the two
    agree to ~1e-7·‖E_m‖.
    """
    if base is not None and deltas.ndim == scores.ndim + base.ndim:  # per-row terms
        n = scores.shape[-1]
        per = deltas.reshape(-1, n, base.numel())  # (rows, N, P)
        merged = (scores.reshape(-1, 1, n).to(per.dtype) @ per).reshape(
            *scores.shape[:-1], *base.shape)
    else:
        n = deltas.shape[0]
        merged = (scores.reshape(-1, n) @ deltas.reshape(n, -1)).reshape(
            *scores.shape[:-1], *deltas.shape[1:]
        )
    merged = merged if eta == 1.0 else eta * merged
    return merged if base is None else base + merged


def merged_linear(
    x: Tensor,
    base: Tensor | None,
    deltas: Tensor,
    scores: Tensor,
    eta: float,
    *,
    recompute_deltas: Callable[[], Tensor] | None = None,
    recompute: bool = True,
) -> Tensor:
    """One linear map per segment with the merged weight of S14:
    y[b,s,l] = Ŵ[b,s] x[b,s,l], Ŵ[b,s] = base + η Σ_i scores[b,s,i] deltas_i
    (:func:`merge_weights`; ``base`` None is S13).

    x: (B, S, L, in); base: (out, in) or None; deltas: (N, out, in), or per segment
    (B, S, N, out, in) (``dare_granularity="segment"``: then always the eager path);
    scores: (B, S, N). Returns (B, S, L, out).

    recompute: True (default) keeps the (B, S, out, in) merged weights out of the saved tensors
    (:class:`_MergedLinear` saves x, base, deltas, scores and forms Ŵ again in backward);
    False is the eager path (merge_weights + einsum), the oracle of the tests.
    recompute_deltas: with ``recompute``, a function that returns ``deltas`` again (the same
    values, e.g. M(E − E_m) recomputed from parameters); then deltas are not saved either and
    are recomputed in backward, under the forward's autocast state and without grad.

    Gradients (G[b,s] = Σ_l g[b,s,l] x[b,s,l]ᵀ the per-segment weight gradient):
    ∂x[b,s,l] = Ŵ[b,s]ᵀ g[b,s,l]; ∂base = Σ_{b,s} G[b,s]; ∂deltas_i = η Σ_{b,s} s[b,s,i] G[b,s];
    ∂s[b,s,i] = η ⟨G[b,s], deltas_i⟩.
    """
    if not recompute or (base is not None and deltas.ndim == scores.ndim + base.ndim):
        with region(MERGE):
            w = merge_weights(base, deltas, scores, eta)  # per-unit terms: always eager
        return torch.einsum("bslc,bsfc->bslf", x, w)
    out: Tensor = _MergedLinear.apply(  # type: ignore[no-untyped-call]
        x, base, deltas, scores, eta, recompute_deltas
    )
    return out


class _MergedLinear(torch.autograd.Function):
    """:func:`merged_linear` with the per-segment weights recomputed in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        base: Tensor | None,
        deltas: Tensor,
        scores: Tensor,
        eta: float,
        recompute_deltas: Callable[[], Tensor] | None,
    ) -> Tensor:
        ctx.autocast = _AutocastState.capture(x)
        ctx.eta = eta
        ctx.recompute_deltas = recompute_deltas
        ctx.deltas_meta = (deltas.shape, deltas.dtype)
        ctx.has_base = base is not None
        saved_d = deltas if recompute_deltas is None else None
        ctx.save_for_backward(x, base, saved_d, scores)
        with region(MERGE):
            w = merge_weights(base, deltas, scores, eta)  # (B, S, out, in)
        return torch.einsum("bslc,bsfc->bslf", x, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, base, deltas, scores = ctx.saved_tensors
        eta: float = ctx.eta
        with torch.no_grad(), ctx.autocast.replay():
            if deltas is None:
                deltas = ctx.recompute_deltas()
                if (deltas.shape, deltas.dtype) != ctx.deltas_meta:
                    raise RuntimeError(
                        "merged_linear: recompute_deltas returned "
                        f"{tuple(deltas.shape)} {deltas.dtype}, the forward had "
                        f"{tuple(ctx.deltas_meta[0])} {ctx.deltas_meta[1]}; it must return "
                        "the same deltas (were the parameters changed before backward?)"
                    )
            n = deltas.shape[0]
            need = ctx.needs_input_grad
            gx = gbase = gdel = gs = None
            if need[0]:
                w = merge_weights(base, deltas, scores, eta)
                gx = torch.einsum("bslf,bsfc->bslc", grad, w)
                del w
            if need[1] or need[2] or need[3]:
                G = torch.einsum("bslf,bslc->bsfc", grad, x)  # (B, S, out, in)
                if need[1] and ctx.has_base:
                    gbase = G.sum((0, 1))
                Ge = G if eta == 1.0 else eta * G
                Gf = Ge.reshape(-1, deltas[0].numel())  # (B·S, P)
                if need[2]:
                    gdel = (scores.reshape(-1, n).t().to(Gf.dtype) @ Gf).reshape(deltas.shape)
                if need[3]:
                    gs = (Gf @ deltas.reshape(n, -1).t().to(Gf.dtype)).reshape(scores.shape)
        return gx, gbase, gdel, gs, None, None
