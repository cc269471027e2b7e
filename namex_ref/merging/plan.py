"""The merge plan (S12, S14–S18, docs/math.md): each layer's bargain with its singular-bargain
policy, and the propagation of the base expert across MoE layers.

Experts are lists of weight matrices: ``experts[m]`` is (N, *P_m), the m-th matrix of all N
experts; a base expert is a list of (*P_m) tensors. :func:`propagate` returns a
:class:`MergePlan` (per-layer :class:`LayerTerms` plus the bargains' observables); the merging
layers (:mod:`namex_ref.merging.layers`) apply it with the operators of
:mod:`namex_ref.merging.operators`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import recomputable_taus
from namex_ref.momentum import MomentumChain
from namex_ref.nash import fused, fused_gpu
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
from namex_ref.regions import BARGAIN, CURVATURE, GRAM, MOMENTUM, region

__all__ = [
    "UNIFORM_CANCEL_RTOL",
    "ZERO_EXPERT_RTOL",
    "AlphaSolve",
    "LayerTerms",
    "MergePlan",
    "bargain_alpha",
    "cosine_matrix",
    "propagate",
]

#: Relative size below which a Gram diagonal entry counts as a zero expert (τ_i = 0): float32
#: accumulation of K rounds at ~1e-7 relative, so anything below 1e-12 of the largest entry is
#: rounding of a zero vector, not a direction.
ZERO_EXPERT_RTOL = 1e-12
#: "uniform" policy: 1ᵀK1 below this fraction of tr K is float32 rounding of cancelling experts
#: (Σ_i τ_i ≈ 0, K entries are accurate to ~1e-7·max K_ii, summed over N² entries), so the
#: uniform weight c = √(N / 1ᵀK1) is capped there instead of growing to 1e15.
UNIFORM_CANCEL_RTOL = 1e-6
_POLICIES = ("raise", "ridge", "uniform")


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
    against it) where :func:`~namex_ref.nash.fused.fused_available` allows, in one Triton
    launch for CUDA tensors (:func:`namex_ref.nash.fused_gpu.bargain_kernel`) where
    :func:`~namex_ref.nash.fused_gpu.gpu_fused_available` allows, and the eager torch code
    below otherwise (numba/triton missing, N > 64); "eager" forces the torch code, Newton included
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
    with region(GRAM):
        K_acc = gram_matrix(mats)  # (N, N) float32 or float64: the precision it was formed in
    fast = _fused_alpha(K_acc, singular_policy, ridge, newton_iterations, backend)
    if fast is not None:
        return fast
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

def _fused_alpha(K_acc: Tensor, singular_policy: str, ridge: float, newton_iterations: int,
                 backend: str) -> AlphaSolve | None:
    """``bargain_alpha`` after the Gram K_acc (N, N) in one fused kernel — numba's on CPU,
    Triton's on CUDA (one launch) — or None where neither serves it, or for a failed bargain
    under "raise" (whose validated slow path is ``bargain_alpha``'s own). Reading the "raise"
    verdict back is that policy's documented synchronisation."""
    n = K_acc.shape[-1]
    if backend == "eager" or n > fused.FUSED_MAX_N:
        return None
    consts = {"tol": RESIDUAL_TOL, "factor": ROUNDING_FACTOR, "cap": ROUNDING_CAP,
              "frac": FRACTION_TO_BOUNDARY, "full_dec": FULL_STEP_DECREMENT,
              "zero_rtol": ZERO_EXPERT_RTOL, "cancel_rtol": UNIFORM_CANCEL_RTOL}
    if fused.fused_available(K_acc):
        alpha, residual, fallback, ok = fused.bargain_kernel(
            K_acc, singular_policy, ridge, newton_iterations, **consts)
    elif fused_gpu.gpu_fused_available(K_acc):
        alpha, residual, fallback, ok_t = fused_gpu.bargain_kernel(
            K_acc, singular_policy, ridge, newton_iterations, **consts)
        ok = singular_policy != "raise" or bool(ok_t)
    else:
        return None
    if singular_policy != "raise" or ok:
        return AlphaSolve(alpha, residual, fallback)
    return None



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
    terms: list[LayerTerms] = []

    if spec.base == "none":
        terms = [LayerTerms(None, list(e)) for e in experts]
        return MergePlan(terms, *_observables(L, n, dev, [], [], []))

    if spec.base == "per-layer":
        for l in range(L):
            base_l = bases[l]
            if base_l is None:
                raise ValueError(f"method {config.method!r} needs a base expert at layer {l}")
            taus = domain_vectors(experts[l], base_l)
            with _tau_scope(config, taus, experts[l], base_l), region(CURVATURE):
                terms.append(LayerTerms(list(base_l), curv[l](taus)))
        return MergePlan(terms, *_observables(L, n, dev, [], [], [t.base for t in terms]))

    if bases[0] is None:
        raise ValueError(f"method {config.method!r} needs a learned base expert at layer 0")
    base = list(bases[0])
    mom = config.momentum_config()
    chain = MomentumChain(mom)
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
    alpha_as: dict[torch.dtype, Tensor] = {}  # α in each τ dtype, converted once per solve
    solves: list[tuple[int, AlphaSolve]] = []
    rows: list[Tensor | None] = []
    for l in range(L):
        taus = domain_vectors(experts[l], base)  # S1 per matrix (N, *P_m)
        with _tau_scope(config, taus, experts[l], base), region(CURVATURE):
            curved = curv[l](taus)
        terms.append(LayerTerms(base, curved))
        if spec.propagation == "nash" and config.resolves_at(l):
            with region(BARGAIN):
                res = solve_alpha(taus, l)
            solves.append((l, res))
            alpha, alpha_as = res.alpha, {}
        rows.append(alpha)
        if l == L - 1:
            break
        if spec.propagation == "ep":
            base = [b + (config.gamma / n) * c.sum(0) for b, c in zip(base, curved, strict=True)]
            continue
        assert alpha is not None  # solved at layer 0
        deltas = []
        for t in taus:
            if t.dtype not in alpha_as:
                alpha_as[t.dtype] = alpha.to(t.dtype)[None]  # (1, N)
            d = (alpha_as[t.dtype] @ t.reshape(n, -1)).reshape(t.shape[1:])  # Σ_i α_i τ_i
            deltas.append(d if scale == 1.0 else scale * d)
        with region(MOMENTUM):
            base = chain.step(deltas, base, last=l == L - 2)
    return MergePlan(terms, *_observables(L, n, dev, rows, solves, [t.base for t in terms]))


def _observables(
    L: int, n: int, dev: torch.device, rows: Sequence[Tensor | None],
    solves: Sequence[tuple[int, AlphaSolve]], layer_bases: Sequence[Sequence[Tensor] | None],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:class:`MergePlan`'s observables, each made in one stack (no per-layer index write):
    alphas (L, N) float64 from the α row in force at each layer (``rows``, None: NaN),
    residuals (L,) float64 and fallbacks (L,) bool from the (layer, solve) pairs, base norms
    (L,) float64 of each layer's base (NaN without a base)."""
    f64 = torch.float64
    at = dict(solves)

    def nan(*shape: int) -> Tensor:
        return torch.full(shape, math.nan, dtype=f64, device=dev)

    if rows and any(r is not None for r in rows):
        alphas = _stack_filled(rows, lambda: nan(n)).to(f64)
    else:
        alphas = nan(L, n)
    if at:
        residuals = _stack_filled([at[l].residual if l in at else None for l in range(L)],
                                  nan).to(f64)
        fallbacks = _stack_filled([at[l].fallback if l in at else None for l in range(L)],
                                  lambda: torch.zeros((), dtype=torch.bool, device=dev))
    else:
        residuals, fallbacks = nan(L), torch.zeros((L,), dtype=torch.bool, device=dev)
    known = [b for b in layer_bases if b is not None]
    base_norms = _norms(known) if known and len(known) == L else nan(L)
    return alphas, residuals, fallbacks, base_norms


def _stack_filled(values: Sequence[Tensor | None], fill: Callable[[], Tensor]) -> Tensor:
    """``torch.stack`` of ``values`` with every None replaced by ``fill()`` (made once, and
    only when a value is missing)."""
    out: list[Tensor] = []
    filler: Tensor | None = None
    for v in values:
        if v is None:
            filler = fill() if filler is None else filler
            v = filler
        out.append(v)
    return torch.stack(out)


def _tau_scope(
    config: MergeConfig, taus: Sequence[Tensor], experts: Sequence[Tensor], base: Sequence[Tensor]
) -> contextlib.AbstractContextManager[None]:
    """τ recomputable in the curvature's backward unless ``config.merge_memory == "eager"``."""
    if config.merge_memory == "eager":
        return contextlib.nullcontext()
    return recomputable_taus(taus, experts, base)


def _norms(layer_bases: Sequence[Sequence[Tensor]]) -> Tensor:
    """‖E^(l)‖ over all matrices of each layer's base, (L,) float64 (an observable). Each
    matrix's norm is one reduction with a float32 accumulator (float64 for float64 matrices),
    all of them in one ``torch._foreach_norm``, combined per layer in float64; relative error
    about log2(P)·2⁻²⁴ ≲ 1e-6 for float32. No float64 copy of any base matrix (on a GPU that
    copy is pure memory traffic)."""
    mats = [m for b in layer_bases for m in b]
    accs = {torch.promote_types(dt, torch.float32) for dt in {m.dtype for m in mats}}
    f64 = torch.float64
    with torch.no_grad():
        if len(accs) == 1:
            norms = torch.stack(torch._foreach_norm(mats, 2, dtype=accs.pop())).to(f64)
        else:  # mixed precisions: one reduction per matrix, each in its own accumulator
            norms = torch.stack([torch.linalg.vector_norm(
                m, dtype=torch.promote_types(m.dtype, torch.float32)).to(f64) for m in mats])
        sq = norms.reshape(len(layer_bases), -1) ** 2
        return sq.sum(1).sqrt()
