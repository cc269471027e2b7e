"""The merge plan's own contracts (namex_ref/merging/plan.py) that the method-level tests of
tests/test_merging.py do not pin: the GPU route of ``bargain_alpha``, the ε/√N scale of the
bargained update (S3, S16), which τ the curvature keeps for backward per ``merge_memory``, and
the :class:`MergePlan` observables (α rows, base norms in mixed precision).

Oracles, all independent of the code under test:
- α: the bargain's defining equation α_i (Kα)_i = 1 (S4) with K = Σ_m τ_m τ_mᵀ formed here in
  numpy float64 from the float64 domain vectors;
- the propagated base: S16 with α ≡ 1/N and no momentum written out, E' = E + (ε/√N)(1/N)Σ_i τ_i;
- base norms: ``math.fsum`` of the squares of every entry of a layer's matrices, each entry
  converted exactly to a Python float (float64), then ``math.sqrt``;
- what is saved for backward: the storages autograd's pack hook receives.

Tolerances. α: the solver's convergence rule guarantees max_i |α_i(Kα)_i − 1| ≤ ROUNDING_CAP
(1e-6, tests/test_nash_*); our K differs from the solver's float64 K only by summation order
(~1e-15 relative), so the same bound holds for our residual. Propagated base (float64): 1e-12
relative, a handful of roundings of sums of ≤ 16 terms. Base norms: each matrix is reduced with
a float32 accumulator (float64 for float64 matrices), relative error about log2(P)·u with
u = 2⁻²⁴ (float32 accumulator) or 2⁻⁵³ (float64); we allow 4·(⌈log2 P⌉ + 2)·u for the least
precise accumulator of the layer (≈ 2e-6 for P = 64 in float32, 7e-15 in float64), well below
the error of a bfloat16 accumulator (2⁻⁸) or of a wrong norm order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.operators import kronecker_apply
from namex_ref.merging.plan import AlphaSolve, _observables, bargain_alpha, propagate
from namex_ref.nash import fused, fused_gpu
from namex_ref.nash.problem import ROUNDING_CAP
from namex_ref.nash.result import DegenerateExpertError

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels' first (lazy) import

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# bargain_alpha's GPU route (Triton's interpreter on a CPU-only machine)
# --------------------------------------------------------------------------------------------


def _np_residual(taus: Sequence[Tensor], alpha: Tensor) -> float:
    """max_i |α_i (Kα)_i − 1| with K = Σ_m τ_m τ_mᵀ formed in numpy float64 (S4)."""
    mats = [t.detach().cpu().double().numpy().reshape(t.shape[0], -1) for t in taus]
    K = sum(m @ m.T for m in mats)
    a = alpha.detach().cpu().double().numpy()
    return float(np.abs(a * (K @ a) - 1.0).max())


@pytest.mark.skipif(not fused_gpu.TRITON_AVAILABLE, reason="triton not installed")
@pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="no CUDA and Triton's interpreter is off")
def test_bargain_alpha_routes_to_the_gpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the GPU kernels serve K (here: forced, as tests/test_nash_fused_gpu.py does), every
    policy's α comes from one ``fused_gpu.bargain_kernel`` call and solves S4; a failed bargain
    under "raise" goes on to the validated slow path and raises by name."""
    monkeypatch.setattr(fused, "fused_available", lambda *t: False)
    monkeypatch.setattr(fused_gpu, "gpu_fused_available",
                        lambda *t: all(x is None or not x.requires_grad for x in t))
    calls: list[str] = []
    kernel = fused_gpu.bargain_kernel

    def counted(K: Tensor, policy: str, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        calls.append(policy)
        return kernel(K, policy, *args, **kwargs)

    monkeypatch.setattr(fused_gpu, "bargain_kernel", counted)
    g = _gen(1)
    taus = [torch.randn(3, 5, 4, generator=g, dtype=F64).to(DEVICE),
            torch.randn(3, 7, generator=g, dtype=F64).to(DEVICE)]
    for policy in ("ridge", "uniform", "raise"):
        res = bargain_alpha(taus, singular_policy=policy)
        assert isinstance(res, AlphaSolve) and calls[-1] == policy
        assert res.alpha.shape == (3,) and res.alpha.dtype == F64
        assert not bool(res.fallback)
        assert _np_residual(taus, res.alpha) <= ROUNDING_CAP
    assert len(calls) == 3
    zero = [torch.cat([taus[0][:2], torch.zeros_like(taus[0][:1])])]  # τ_3 = 0
    with pytest.raises(DegenerateExpertError):
        bargain_alpha(zero, singular_policy="raise", layer=2)
    assert calls[-1] == "raise" and len(calls) == 4


# --------------------------------------------------------------------------------------------
# propagate: the ε/√N scale of ΔE (S3, S16)
# --------------------------------------------------------------------------------------------


def _uniform_alpha(taus: list[Tensor], layer: int) -> AlphaSolve:
    n = taus[0].shape[0]
    return AlphaSolve(torch.full((n,), 1.0 / n, dtype=F64), torch.zeros((), dtype=F64),
                      torch.zeros((), dtype=torch.bool))


@pytest.mark.parametrize("radius", [None, 4.0, 0.3, 2.0 * math.sqrt(2.0)])
def test_bargained_update_is_scaled_by_radius_over_sqrt_n(radius: float | None) -> None:
    """S16 with α ≡ 1/N, no momentum, γ = 1: E^(1) = E^(0) + (ε/√N)(1/N) Σ_i τ_i, and ε = None is
    the unscaled S4 step (factor 1). N = 4, so ε = 4 is the scale ε/√N = 2 exactly."""
    n, g = 4, _gen(2)
    experts = [[torch.randn(n, 3, 5, generator=g, dtype=F64), torch.randn(n, 6, generator=g,
                                                                         dtype=F64)]
               for _ in range(2)]
    base0 = [torch.randn(3, 5, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)]
    cfg = MergeConfig(method="namex", n_experts=n, radius=radius, gamma=1.0)
    plan = propagate(experts, [base0, None], cfg, solve_alpha=_uniform_alpha)
    scale = 1.0 if radius is None else radius / math.sqrt(n)
    got = plan.terms[1].base
    assert got is not None
    for m, (E, b) in enumerate(zip(experts[0], base0, strict=True)):
        want = b + scale * (E - b).sum(0) / n
        torch.testing.assert_close(got[m], want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# merge_memory: which τ the curvature keeps for backward
# --------------------------------------------------------------------------------------------


def _saved_storages(method: str, mode: str) -> tuple[set[int], dict[str, set[int]]]:
    """Storages autograd saves while ``propagate`` runs a Kronecker curvature (the operator's
    default ``recompute=True``, which keeps E and E_m instead of τ when τ is registered as
    recomputable), and the storages of τ, E and E_m of that run."""
    n, g = 3, _gen(3)
    E = torch.randn(n, 4, 6, generator=g, dtype=F64).requires_grad_()
    b = torch.randn(4, 6, generator=g, dtype=F64).requires_grad_()
    facs = [torch.eye(k, dtype=F64).expand(n, k, k).clone().requires_grad_() for k in (2, 2, 3, 2)]
    seen: dict[str, set[int]] = {"tau": set()}

    def curv(taus: list[Tensor]) -> list[Tensor]:
        seen["tau"] |= {t.untyped_storage().data_ptr() for t in taus}
        return [kronecker_apply(t, *facs) for t in taus]

    saved: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        saved.add(t.untyped_storage().data_ptr())
        return t

    cfg = MergeConfig(method=method, n_experts=n, merge_memory=mode)  # type: ignore[arg-type]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plan = propagate([[E]], [[b]], cfg, curvature=[curv])
    torch.autograd.grad(plan.terms[0].deltas[0].sum(), [E, b])  # the graph is usable
    seen["E"], seen["base"] = {E.untyped_storage().data_ptr()}, {b.untyped_storage().data_ptr()}
    return saved, seen


@pytest.mark.parametrize("method", ["camex", "ep-camex"])
def test_eager_merge_memory_keeps_tau_itself(method: str) -> None:
    """merge_memory="eager": τ is not registered as recomputable, so the curvature saves τ;
    otherwise it saves E and E_m and forms τ = E − E_m again in backward (docs/math.md S14,
    MergeConfig.merge_memory)."""
    saved, seen = _saved_storages(method, "eager")
    assert seen["tau"] <= saved and not seen["E"] & saved
    for mode in ("keep-deltas", "recompute"):
        saved, seen = _saved_storages(method, mode)
        assert not seen["tau"] & saved and seen["E"] <= saved and seen["base"] <= saved


# --------------------------------------------------------------------------------------------
# MergePlan observables
# --------------------------------------------------------------------------------------------


def _solve(alpha: list[float], residual: float, fallback: bool) -> AlphaSolve:
    return AlphaSolve(torch.tensor(alpha, dtype=F64), torch.tensor(residual, dtype=F64),
                      torch.tensor(fallback))


def test_observables_fill_missing_alpha_rows_and_bases_with_nan() -> None:
    """α rows: the row in force at each layer, NaN where none is (S16, ``MergePlan.alphas``);
    residuals/fallbacks from the layers that solved; base norms NaN for a layer without a
    base (shape (L,) whatever the number of bases)."""
    dev = torch.device("cpu")
    a0, a2 = [0.5, 0.25, 2.0], [1.0, 3.0, 0.125]
    s0, s2 = _solve(a0, 1e-12, False), _solve(a2, 0.5, True)
    rows = [None, s0.alpha, None, s2.alpha]
    bases = [[torch.tensor([3.0, 4.0])], None, [torch.tensor([[1.0, 2.0], [2.0, 4.0]])], None]
    alphas, residuals, fallbacks, norms = _observables(4, 3, dev, rows, [(1, s0), (3, s2)],
                                                       bases)
    nan = math.nan
    want = torch.tensor([[nan] * 3, a0, [nan] * 3, a2], dtype=F64)
    torch.testing.assert_close(alphas, want, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(residuals, torch.tensor([nan, 1e-12, nan, 0.5], dtype=F64),
                               equal_nan=True, rtol=0, atol=0)
    assert fallbacks.tolist() == [False, False, False, True]
    assert norms.shape == (4,) and norms.dtype == F64
    assert bool(torch.isnan(norms[1])) and bool(torch.isnan(norms[3]))
    # every layer with a base: the norms (‖(3, 4)‖ = 5, ‖(1, 2, 2, 4)‖ = 5)
    full = _observables(2, 3, dev, [], [], [bases[0], bases[2]])[3]
    torch.testing.assert_close(full, torch.tensor([5.0, 5.0], dtype=F64), rtol=1e-7, atol=0)
    alphas, residuals, fallbacks, norms = _observables(2, 3, dev, [], [], [])
    assert alphas.shape == (2, 3) and bool(torch.isnan(alphas).all())
    assert bool(torch.isnan(residuals).all()) and not bool(fallbacks.any())
    assert bool(torch.isnan(norms).all()) and norms.shape == (2,)


def _oracle_norm(mats: Sequence[Tensor]) -> float:
    """‖E^(l)‖ over every matrix of a layer: exact float64 squares, fsum, sqrt."""
    return math.sqrt(math.fsum(x * x for m in mats for x in m.double().flatten().tolist()))


def _rtol(mats: Sequence[Tensor]) -> float:
    """The documented bound for the least precise accumulator of the layer (module docstring)."""
    def one(m: Tensor) -> float:
        u = 2.0**-53 if m.dtype == F64 else 2.0**-24
        return 4 * (math.ceil(math.log2(max(m.numel(), 2))) + 2) * u
    return max(one(m) for m in mats)


LAYERS: dict[str, list[torch.dtype]] = {
    "float32": [torch.float32, torch.float32],
    "float64": [F64, F64],
    "bfloat16": [torch.bfloat16, torch.bfloat16],
    "float32+float64": [torch.float32, F64],
    "bfloat16+float64": [torch.bfloat16, F64],
    "bfloat16+float32+float64": [torch.bfloat16, torch.float32, F64],
}


def _mixed_bases(dtypes: list[torch.dtype], seed: int) -> list[Tensor]:
    g = _gen(seed)
    shapes = [(8, 8), (64,), (4, 3, 5)]
    # magnitudes 0.1, 1, 10: every matrix's share of the layer norm is visible
    return [(torch.randn(shapes[i], generator=g, dtype=F64) * 10.0**(i - 1)).to(dt)
            for i, dt in enumerate(dtypes)]


@pytest.mark.parametrize("kind", list(LAYERS))
def test_base_norms_match_the_float64_oracle(kind: str) -> None:
    """``MergePlan.base_norms`` of per-layer bases (CAMEx, S14) in every dtype mix: the float64
    oracle to the documented per-accumulator tolerance (module docstring)."""
    n, g = 2, _gen(4)
    bases = [_mixed_bases(LAYERS[kind], 10 + l) for l in range(2)]
    experts = [[b + 0.1 * torch.randn((n, *b.shape), generator=g).to(b.dtype) for b in layer]
               for layer in bases]
    plan = propagate(experts, bases, MergeConfig(method="camex", n_experts=n))
    assert plan.base_norms.dtype == F64 and plan.base_norms.shape == (2,)
    for l, layer in enumerate(bases):
        want = _oracle_norm(layer)
        assert abs(float(plan.base_norms[l]) - want) <= _rtol(layer) * want, (kind, l)


class _Reductions(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's untyped hook
    """Records (input dtype, accumulator dtype) of every norm reduction."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        kw = kwargs or {}
        if name == "_foreach_norm":
            acc = args[2] if len(args) > 2 else kw.get("dtype")
            self.seen += [(t.dtype, acc or t.dtype) for t in args[0]]
        elif name == "linalg_vector_norm":
            self.seen.append((args[0].dtype, kw.get("dtype") or args[0].dtype))
        return func(*args, **kw)


@pytest.mark.parametrize("kind", ["float32+float64", "bfloat16+float64", "bfloat16"])
def test_base_norms_reduce_each_matrix_in_its_own_accumulator(kind: str) -> None:
    """The precision the docstring promises: bfloat16/float32 matrices are reduced with a
    float32 accumulator, float64 ones with float64 — never a float64 pass over a lower-precision
    matrix (that is a float64 copy's memory traffic on a GPU) nor a bfloat16 accumulator."""
    dtypes = LAYERS[kind]
    bases = [_mixed_bases(dtypes, 20)]
    with _Reductions() as rec:
        norms = _observables(1, 2, torch.device("cpu"), [], [], bases)[3]
    assert bool(torch.isfinite(norms).all())
    want = [(dt, torch.promote_types(dt, torch.float32)) for dt in dtypes]  # one per matrix
    assert sorted(map(str, rec.seen)) == sorted(map(str, want))
