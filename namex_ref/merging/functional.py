"""Pure merging mathematics (S12–S18, docs/math.md): curvature operators, the merge, the
bargain with its singular-bargain policy, and base-expert propagation across MoE layers.

Experts are lists of weight matrices: ``experts[m]`` is (N, *P_m), the m-th matrix of all N
experts; a base expert is a list of (*P_m) tensors. Nothing here owns parameters; the modules in
:mod:`namex_ref.merging.layers` hold them and call these functions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.routing import (
    cv_squared,
    noisy_top_k_gating,
    segment_scores,
    sequence_scores,
    unit_means,
)
from namex_ref.momentum import momentum_step, zero_buffer
from namex_ref.nash import fused
from namex_ref.nash.gram import domain_vectors, gram_matrix
from namex_ref.nash.newton import (
    FRACTION_TO_BOUNDARY,
    FULL_STEP_DECREMENT,
    RESIDUAL_TOL,
    NewtonBackend,
    solve_newton,
)
from namex_ref.nash.problem import ROUNDING_CAP, ROUNDING_FACTOR, scaled_residual
from namex_ref.nash.result import BargainInputError, InfeasibleBargainError, NashConvergenceError
from namex_ref.nash.solvers import solve_nash

__all__ = [
    "AlphaSolve",
    "LayerTerms",
    "MergePlan",
    "bargain_alpha",
    "cosine_matrix",
    "gated_scores",
    "kronecker_apply",
    "masked_deltas",
    "merge_weights",
    "merged_linear",
    "noisy_unit_gates",
    "propagate",
    "term_dropout",
]

# Relative size below which a Gram diagonal entry counts as a zero expert (τ_i = 0): float32
# accumulation of K rounds at ~1e-7 relative, so anything below 1e-12 of the largest entry is
# rounding of a zero vector, not a direction.
ZERO_EXPERT_RTOL = 1e-12
# "uniform" policy: 1ᵀK1 below this fraction of tr K is float32 rounding of cancelling experts
# (Σ_i τ_i ≈ 0, K entries are accurate to ~1e-7·max K_ii, summed over N² entries), so the
# uniform weight c = √(N / 1ᵀK1) is capped there instead of growing to 1e15.
UNIFORM_CANCEL_RTOL = 1e-6
_POLICIES = ("raise", "ridge", "uniform")


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
#: τ tensors that :func:`propagate` formed as E − E_m, keyed by storage and layout: while
#: registered, :class:`_KroneckerApply` saves (E, E_m) (a parameter and one (*P) matrix)
#: instead of τ and forms τ again in backward (``merge_memory`` other than "eager").
_TAU_RECIPES: dict[_StorageKey, tuple[Tensor, Tensor]] = {}


def _storage_key(t: Tensor) -> _StorageKey:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape),
            tuple(t.stride()), t.dtype)


@contextlib.contextmanager
def _recomputable_taus(
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

    base: (*P) or None (= 0; SMEAR, S13, uses η = 1); deltas: (N, *P); scores: (..., N).
    Returns (..., *P) — one merged weight matrix per score row (segment or sequence).

    Note: with η = 1, D_i = τ_i = E_i − E_m (M = I) and Σ s_i = 1, S14 is S13 for every E_m
    (``proofs/s13_s16_merging.py``); router scores sum to 1 only to float32 rounding, so the two
    agree to ~1e-7·‖E_m‖.
    """
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

    x: (B, S, L, in); base: (out, in) or None; deltas: (N, out, in); scores: (B, S, N).
    Returns (B, S, L, out).

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
    if not recompute:
        w = merge_weights(base, deltas, scores, eta)
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


class AlphaSolve(NamedTuple):
    """α of one bargain (S4) after the singular-bargain policy.

    alpha: (N,) float64, detached, > 0. residual: () float64 max_i |α_i(Kα)_i − 1| of the
    fixed-budget Newton α on the true K, before any fallback (NaN for a non-finite K).
    fallback: () bool, True when the policy replaced (or, for "raise", re-solved) it.
    """

    alpha: Tensor
    residual: Tensor
    fallback: Tensor


def bargain_alpha(
    taus: Sequence[Tensor],
    *,
    singular_policy: str = "ridge",
    ridge: float = 1e-3,
    newton_iterations: int = 20,
    layer: int | None = None,
    backend: NewtonBackend = "auto",
) -> AlphaSolve:
    """Solve Kα = 1/α (S4) for the domain vectors of one layer, with no host synchronisation
    unless ``singular_policy == "raise"``.

    taus: per-matrix (N, *P_m) domain vectors; detached here (α is a constant for autograd, S16).
    K = Σ_m τ_mτ_mᵀ is accumulated in float32 (float64 for float64 τ) and solved in float64 by
    Newton with a fixed budget of ``newton_iterations`` steps (no host synchronisation). A
    bargain that does not converge within the budget, has a zero expert (K_ii ≤ 1e-12·max K_jj)
    or a non-finite K goes to ``singular_policy`` (the names are :class:`MergeConfig`'s):

    - "raise": one host sync; the full validated solver (``solve_nash``, given K in the precision
      it was accumulated in, so its PSD tolerance matches) either finishes it (counted as a
      fallback) or raises ``DegenerateExpertError`` / ``InfeasibleBargainError`` /
      ``BargainInputError`` / ``NashConvergenceError`` with "MoE layer <l>" in the message.
    - "ridge": α of K' + λ·mean(diag K)·I, K' = K with the diagonal of zero experts set to
      max_j K_jj (positive definite, so always solvable).
    - "uniform": α_i = c, c = √(N / 1ᵀK1), so ‖Σ α_i τ_i‖ = √N as for a solved bargain (S7).
      Where the experts cancel (1ᵀK1 < 1e-6·tr K, below float32 rounding of K) c is capped at
      √(N / (1e-6·tr K)) instead of growing without bound.

    If every τ_i is zero, "ridge" and "uniform" return α = 1 (ΔE = 0 whatever α is).

    Returns :class:`AlphaSolve`; ``residual`` is max_i |α_i(Kα)_i − 1| of the Newton α on the
    true K (so 1 for a zero expert, NaN for a non-finite K), whatever the policy returns.

    ``backend``: "auto" (default) runs everything after the Gram matrix in one fused CPU kernel
    (:func:`namex_ref.nash.fused.bargain_kernel`, the same steps as the code below, tested
    against it) where :func:`~namex_ref.nash.fused.fused_available` allows, and the eager torch
    code below otherwise (CUDA, numba missing); "eager" forces the torch code, Newton included
    (``solve_newton(backend="eager")``); "fused" is "auto" that refuses to fall back for the
    Newton solves. The "raise" policy's slow path (a bargain that failed) is ``solve_nash``.
    """
    if singular_policy not in _POLICIES:
        raise ValueError(
            f"unknown singular_policy {singular_policy!r}; use 'raise', 'ridge' or 'uniform'"
        )
    if backend not in ("auto", "eager", "fused"):
        raise ValueError(f"backend must be 'auto', 'eager' or 'fused'; got {backend!r}")
    mats = [t.detach().reshape(t.shape[0], -1) for t in taus]
    n = mats[0].shape[0]
    K_acc = gram_matrix(mats)  # (N, N) float32 or float64: the precision it was formed in
    if backend != "eager" and n <= fused.FUSED_MAX_N and fused.fused_available(K_acc):
        alpha_f, residual_f, fallback_f, ok_f = fused.bargain_kernel(
            K_acc, singular_policy, ridge, newton_iterations, tol=RESIDUAL_TOL,
            factor=ROUNDING_FACTOR, cap=ROUNDING_CAP, frac=FRACTION_TO_BOUNDARY,
            full_dec=FULL_STEP_DECREMENT, zero_rtol=ZERO_EXPERT_RTOL,
            cancel_rtol=UNIFORM_CANCEL_RTOL)
        if singular_policy != "raise" or ok_f:
            return AlphaSolve(alpha_f, residual_f, fallback_f)
    K = K_acc.to(torch.float64)
    finite = torch.isfinite(K).all()
    K0 = torch.nan_to_num(K, nan=0.0, posinf=0.0, neginf=0.0)
    diag = K0.diagonal()
    scale = diag.max().clamp_min(torch.finfo(torch.float64).tiny)
    zero = diag <= ZERO_EXPERT_RTOL * scale  # (N,)
    eye = torch.eye(n, dtype=torch.float64, device=K.device)
    Ksafe = K0 + torch.diag(zero.to(torch.float64) * scale)
    alt: Tensor | None = None
    if singular_policy == "ridge":
        # The ridge problem is solved in the same batched call as the bargain itself: no host
        # sync is needed to decide whether it is used, and one (2, N, N) solve costs about as
        # much as one (N, N) solve (launch-bound; results/step.md "what-if").
        lam = ridge * diag.mean().clamp_min(torch.finfo(torch.float64).tiny)
        pair = torch.stack((Ksafe, Ksafe + lam * eye))
        both = solve_newton(pair, fixed_iterations=newton_iterations, backend=backend)
        alpha_main, converged, alt = both.alpha[0], both.converged[0], both.alpha[1]
    else:
        sol = solve_newton(Ksafe, fixed_iterations=newton_iterations, backend=backend)
        alpha_main, converged = sol.alpha, sol.converged
    ok = converged & finite & ~zero.any() & torch.isfinite(alpha_main).all()
    residual = torch.where(finite, scaled_residual(K0, alpha_main), math.nan)
    if singular_policy == "raise":
        if bool(ok):
            return AlphaSolve(alpha_main, residual, ~ok)
        where = "" if layer is None else f"MoE layer {layer}: "
        if not bool(finite):
            raise BargainInputError(
                f"{where}the Gram matrix of the domain vectors has NaN/Inf entries; the experts "
                "or the base expert diverged (lower the learning rate or check the data)."
            )
        try:
            full = solve_nash(K_acc)
        except (BargainInputError, InfeasibleBargainError) as err:
            # keep the exception's class and attributes (certificate, ...); prefix the layer
            err.args = (where + str(err.args[0]), *err.args[1:])
            raise
        if not full.all_converged:  # a feasible bargain the full solver could not finish
            raise NashConvergenceError(
                f"{where}the Nash bargain did not converge: residual "
                f"{float(full.residual.max()):.3e} after {full.iterations} Newton steps "
                f"({full.status}); use singular_policy 'ridge' or 'uniform' to continue with a "
                "fallback α (counted in the metrics)."
            )
        return AlphaSolve(
            full.alpha, full.residual, torch.ones((), dtype=torch.bool, device=K.device)
        )
    if singular_policy == "uniform":
        floor = (UNIFORM_CANCEL_RTOL * diag.sum()).clamp_min(torch.finfo(torch.float64).tiny)
        total = torch.maximum(K0.sum(), floor)
        alt = torch.full((n,), 1.0, dtype=torch.float64, device=K.device) * (n / total).sqrt()
    assert alt is not None  # "ridge" solved it above, batched with the bargain
    alpha = torch.where(ok, alpha_main, alt)
    # Every τ_i = 0 (experts equal to the base, docs/math.md, "degenerate τ"): ΔE = 0 for any
    # α, but the policies' α ~ 1/√tiny ≈ 1e154 would overflow to inf in float32 and make
    # ΔE = inf·0 = NaN; use α = 1. Only exact zeros: a K_ii as small as float32's smallest
    # normal is a real direction whose α ≈ 1e19 is still finite in float32.
    all_zero = ~(diag.max() > 0)
    alpha = torch.where(all_zero, torch.ones_like(alpha), alpha)
    alpha = torch.nan_to_num(alpha, nan=1.0, posinf=1.0, neginf=1.0)
    return AlphaSolve(alpha, residual, ~ok)


def cosine_matrix(mats: Sequence[Tensor]) -> Tensor:
    """Cosine similarity of flattened experts (or domain vectors): (N, N) float64, no grad."""
    with torch.no_grad():
        K = gram_matrix([t.detach().reshape(t.shape[0], -1) for t in mats]).to(torch.float64)
        d = K.diagonal().clamp_min(1e-300).rsqrt()
        return d[:, None] * K * d[None, :]


@dataclass(frozen=True)
class LayerTerms:
    """What one MoE layer merges (S13/S14): Ê = base + η Σ_i s_i deltas_i per weight matrix.

    base: per-matrix E_m^(l) (*P_m), or None for SMEAR/SMoE (then deltas are the experts E_i).
    deltas: per-matrix (N, *P_m): M_i(τ_i) for CAMEx-family methods, E_i otherwise.
    """

    base: list[Tensor] | None
    deltas: list[Tensor]


@dataclass(frozen=True)
class MergePlan:
    """Per-layer merge terms plus observables of the bargains (all tensors, no host sync).

    terms: one :class:`LayerTerms` per MoE layer.
    alphas: (L, N) float64 α in force at each layer (NaN rows where no bargain is used).
    residuals: (L,) float64 Newton residual of the bargain solved at each layer (NaN if none).
    fallbacks: (L,) bool, singular-bargain policy applied at that layer.
    base_norms: (L,) float64 ‖E_m^(l)‖ over all matrices (NaN if no base).
    """

    terms: list[LayerTerms]
    alphas: Tensor
    residuals: Tensor
    fallbacks: Tensor
    base_norms: Tensor


Curvature = Callable[[list[Tensor]], list[Tensor]]
AlphaSolver = Callable[[list[Tensor], int], AlphaSolve]


def _identity(taus: list[Tensor]) -> list[Tensor]:
    return taus


def propagate(
    experts: Sequence[Sequence[Tensor]],
    bases: Sequence[Sequence[Tensor] | None],
    config: MergeConfig,
    curvature: Sequence[Curvature] | None = None,
    solve_alpha: AlphaSolver | None = None,
) -> MergePlan:
    """Build every layer's merge terms, propagating the base expert across layers (S14–S18).

    experts: per layer, per matrix (N, *P_m). bases: per layer the learned base (list of (*P_m))
    or None; methods with ``base="first-layer"`` read only ``bases[0]``. curvature: per layer a
    function τ ↦ M(τ) over the matrices (identity if None). solve_alpha: (τ, layer) ↦ α, default
    :func:`bargain_alpha` with the config's policy (tests pass α ≡ 1/N to reduce S16 to S15).

    Propagation (between consecutive MoE layers l → l+1, not after the last):
      ep (S15):   E_m' = E_m + (γ/N) Σ_i M_i τ_i
      nash (S16): ΔE = (ε/√N) Σ_i α_i τ_i (raw τ, α detached), then μ and E_m updated by the
                  momentum kind (S16 none, S17 complex, S18 quaternion) with μ^(1) = 0.
    α is solved at layer 0 and, for "-full" methods, every Δl layers (``config.resolves_at``).

    Reductions (``proofs/s13_s16_merging.py``, ``proofs/s17_s18_quaternion.py``, tested in
    ``tests/test_merging.py``): α ≡ 1/N with M = I gives EP-CAMEx (S16 → S15); β = 0 gives NAMEx;
    NAMEx-Q with β equals NAMEx-Full-Mom with β_c = Re β + i‖Im β‖; NAMEx-Full with Δl ≥ L is
    NAMEx.
    """
    spec = config.spec
    L = len(experts)
    n = config.n_experts
    dev = experts[0][0].device
    curv: Sequence[Curvature] = curvature if curvature is not None else [_identity] * L
    alphas = torch.full((L, n), math.nan, dtype=torch.float64, device=dev)
    residuals = torch.full((L,), math.nan, dtype=torch.float64, device=dev)
    fallbacks = torch.zeros((L,), dtype=torch.bool, device=dev)
    base_norms = torch.full((L,), math.nan, dtype=torch.float64, device=dev)
    terms: list[LayerTerms] = []

    if spec.base == "none":
        return MergePlan(
            [LayerTerms(None, list(e)) for e in experts], alphas, residuals, fallbacks, base_norms
        )

    if spec.base == "per-layer":
        for l in range(L):
            base_l = bases[l]
            if base_l is None:
                raise ValueError(f"method {config.method!r} needs a base expert at layer {l}")
            taus = domain_vectors(experts[l], base_l)
            with _tau_scope(config, taus, experts[l], base_l):
                terms.append(LayerTerms(list(base_l), curv[l](taus)))
            base_norms[l] = _norm(base_l)
        return MergePlan(terms, alphas, residuals, fallbacks, base_norms)

    if bases[0] is None:
        raise ValueError(f"method {config.method!r} needs a learned base expert at layer 0")
    base = list(bases[0])
    mom = config.momentum_config()
    mu = [zero_buffer(mom, b) for b in base]
    scale = 1.0 if config.radius is None else config.radius / math.sqrt(n)
    if solve_alpha is None:

        def solve_alpha(taus: list[Tensor], layer: int) -> AlphaSolve:
            return bargain_alpha(
                taus,
                singular_policy=config.singular_policy,
                ridge=config.ridge,
                newton_iterations=config.newton_iterations,
                layer=layer,
            )

    alpha: Tensor | None = None
    for l in range(L):
        taus = domain_vectors(experts[l], base)  # S1 per matrix (N, *P_m)
        with _tau_scope(config, taus, experts[l], base):
            curved = curv[l](taus)
        terms.append(LayerTerms(base, curved))
        base_norms[l] = _norm(base)
        if spec.propagation == "nash" and config.resolves_at(l):
            res = solve_alpha(taus, l)
            alpha = res.alpha
            residuals[l] = res.residual
            fallbacks[l] = res.fallback
        if alpha is not None:
            alphas[l] = alpha
        if l == L - 1:
            break
        if spec.propagation == "ep":
            base = [b + (config.gamma / n) * c.sum(0) for b, c in zip(base, curved, strict=True)]
        else:
            assert alpha is not None  # solved at layer 0
            new_base, new_mu = [], []
            for b, t, m in zip(base, taus, mu, strict=True):
                a = alpha.to(t.dtype)
                delta = scale * torch.tensordot(a, t, dims=1)  # Σ_i α_i τ_i, (*P_m)
                m2, b2 = momentum_step(m, delta, b, config=mom)
                new_mu.append(m2)
                new_base.append(b2)
            base, mu = new_base, new_mu
    return MergePlan(terms, alphas, residuals, fallbacks, base_norms)


def _tau_scope(
    config: MergeConfig, taus: Sequence[Tensor], experts: Sequence[Tensor], base: Sequence[Tensor]
) -> contextlib.AbstractContextManager[None]:
    """τ recomputable in the curvature's backward unless ``config.merge_memory == "eager"``."""
    if config.merge_memory == "eager":
        return contextlib.nullcontext()
    return _recomputable_taus(taus, experts, base)


def _norm(mats: Sequence[Tensor]) -> Tensor:
    with torch.no_grad():
        return torch.sqrt(sum((m.detach().double() ** 2).sum() for m in mats))  # type: ignore[arg-type]


# ---- CAMEx-code options shared by the merging layers (docs/math.md §6, "CAMEx options") ------
# MoEFeedForward (GPT) and HFMergedMoE (Hugging Face) both call these, in the same order, so the
# random draws of a training step are the same sequence in both: the "dare" masks (one per
# matrix), the first router's gate noise, its term-dropout mask, then the second router's
# (``router_per_matrix``) noise and mask.


def noisy_unit_gates(
    u: Tensor,
    router: torch.nn.Module,
    noise_router: torch.nn.Module,
    config: MergeConfig,
    *,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """The noisy top-k gate (``gate="noisy-top-k"``) on routing-unit inputs u (B, U, C).

    Returns gates (B, U, N) float32 (:func:`~namex_ref.merging.routing.noisy_top_k_gating` with
    k = ``config.gate_k``, ε = ``torch.randn`` drawn only when ``training``) and the balance
    loss balance_coef·(cv²(Σ_units gates) + cv²(load)) (Shazeer et al.; 0 for U·B < 2 units).
    """
    B, U, _ = u.shape
    n = config.n_experts
    clean: Tensor = router(u).reshape(B * U, n)
    raw: Tensor = noise_router(u).reshape(B * U, n)
    noise = torch.randn(clean.shape, device=clean.device) if training else None
    gated = noisy_top_k_gating(clean, raw, config.gate_k, noise)
    aux = config.balance_coef * (cv_squared(gated.gates.sum(0)) + cv_squared(gated.load))
    return gated.gates.reshape(B, U, n), aux


def gated_scores(
    h: Tensor,
    router: torch.nn.Module,
    noise_router: torch.nn.Module | None,
    config: MergeConfig,
    *,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """Router scores (B, S, N) of the merging methods (S13) and the gate's balance loss.

    h: (B, T, C) the router's input. ``config.gate == "softmax"``:
    :func:`~namex_ref.merging.routing.segment_scores` / ``sequence_scores``, loss 0.
    "noisy-top-k": :func:`noisy_unit_gates` on the same unit means (segment 0 keeps the uniform
    1/N, S13's causal convention), noise only in training. Scores in h's dtype.
    """
    if config.gate == "softmax":
        if config.routing == "segment":
            scores = segment_scores(h, router, config.segment_len, config.n_experts)
            return scores, h.new_zeros(())
        return sequence_scores(h, router), h.new_zeros(())
    if noise_router is None:
        raise ValueError("gate='noisy-top-k' needs a noise router (noise_router is None)")
    u = unit_means(h, config.routing, config.segment_len)  # (B, U, C); U = 0 for one segment
    gates, aux = noisy_unit_gates(u, router, noise_router, config, training=training)
    if config.routing == "segment":
        n = config.n_experts
        first = torch.full((h.shape[0], 1, n), 1.0 / n, device=h.device)
        gates = torch.cat([first, gates], dim=1)
    return gates.to(h.dtype), aux


def term_dropout(scores: Tensor, p: float, *, training: bool) -> Tensor:
    """``term_dropout``: Dropout2d of the merge terms s_i·M_i(τ_i) per (routing unit, expert),
    as a mask on the (B, S, N) scores: s_i·m_i/(1 − p), m_i ~ Bernoulli(1 − p) drawn with
    ``bernoulli_``. Identity in eval mode or for p = 0."""
    if not training or p == 0.0:
        return scores
    keep = torch.empty_like(scores).bernoulli_(1.0 - p)
    return scores * keep / (1.0 - p)


def masked_deltas(
    terms: LayerTerms,
    experts: Sequence[Tensor],
    config: MergeConfig,
    *,
    training: bool,
) -> list[Tensor]:
    """The merge terms of S14 after ``config.sign_mask``; ``terms.deltas`` itself when unmasked.

    "ties": deltas_i × [sign τ_i = sign Σ_j τ_j] element-wise (τ_i = E_i − E_m from S1 on the
    layer's base ``terms.base``, no grad), train and eval. "dare": deltas_i × Bernoulli(dare_keep)
    element-wise (``bernoulli_``, one draw per matrix in order, no rescaling), training only.
    The τ of the bargain (S16) are not touched: they are formed in :func:`propagate`.
    """
    if config.sign_mask == "none" or terms.base is None:
        return terms.deltas
    if config.sign_mask == "ties":
        with torch.no_grad():
            taus = domain_vectors(list(experts), terms.base)
            masks = [(t.sign() == t.sum(0).sign()).to(t.dtype) for t in taus]
        return [d * m for d, m in zip(terms.deltas, masks, strict=True)]
    if not training:
        return terms.deltas
    return [d * torch.empty_like(d).bernoulli_(config.dare_keep) for d in terms.deltas]
