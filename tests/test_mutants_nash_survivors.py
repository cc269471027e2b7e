"""Behaviours an independent mutation sample found unpinned (issue 27, "Mutation survivors"):
one test each, every oracle written here (numpy, closed forms, scipy's root in
tests/oracles.py) or a documented rule checked at its exact boundary.

Modules: nash/solvers, nash/fused, nash/problem, nash/bargain, nash/gram and
merging/functional (bargain_alpha, kronecker_apply); NashMTL's input contract is
tests/test_mutants_mtl.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from namex_ref.merging.functional import bargain_alpha, kronecker_apply
from namex_ref.nash import fused, problem
from namex_ref.nash.bargain import nash_bargain
from namex_ref.nash.gram import HALF_CHUNK_ELEMENTS, gram_matrix
from namex_ref.nash.problem import (
    CERTIFICATE_TOL,
    check_gram,
    raise_if_infeasible,
    residual_floor,
)
from namex_ref.nash.result import (
    BargainInputError,
    InfeasibleBargainError,
)
from namex_ref.nash.solvers import solve_newton
from tests.oracles import positive_root

BACKENDS = ("eager", "fused")
needs_numba = pytest.mark.skipif(not fused.NUMBA_AVAILABLE, reason="numba not installed")


def _K3() -> torch.Tensor:
    return torch.tensor([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]], dtype=torch.float64)


# ---- warm starts that overflow; the broken-step guard; the documented contract ------------


@needs_numba
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixed", [None, 0, 1, 20])
def test_a_warm_start_that_overflows_is_alpha_one_residual_inf(backend: str,
                                                               fixed: int | None) -> None:
    """alpha0 = 1e154: αᵀK̂α = inf, so the ray search scales the start to α̂ = 0. Both backends
    report the documented α = 1, residual inf, not converged (solve_newton's guarantee α > 0),
    after any number of steps, 0 included; a valid problem of the same batch is solved as
    alone."""
    K = torch.stack([_K3(), _K3()])
    a0 = torch.stack([torch.full((3,), 1e154, dtype=torch.float64),
                      torch.tensor([0.5, 1.0, 0.7], dtype=torch.float64)])
    sol = solve_newton(K, alpha0=a0, fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
    assert sol.alpha[0].tolist() == [1.0, 1.0, 1.0]
    assert math.isinf(float(sol.residual[0])) and not bool(sol.converged[0])
    alone = solve_newton(K[1], alpha0=a0[1], fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
    torch.testing.assert_close(sol.alpha[1], alone.alpha, rtol=0, atol=0)


#: An indefinite K (|K_13| = 3e19 ≫ √(K_11 K_33)), unvalidated: the first Newton matrix
#: D K̂ D + I has a pivot ≤ 0 (issue 27's example).
INDEFINITE = [[6.25, 0.0, 3e19], [0.0, 6.25, -3e19], [3e19, -3e19, 6.25]]


@needs_numba
@pytest.mark.parametrize("fixed", [None, 20])
def test_an_indefinite_k_is_alpha_one_residual_inf_in_both_backends(fixed: int | None) -> None:
    """The documented contract (solve_newton: "whose Newton matrix has a pivot ≤ 0 ... is
    returned as α = 1, residual = inf"): the fused kernel's ``broken`` guard and the eager
    loop's factorisation status give the same answer, after the same number of steps, and the
    valid problem beside it is untouched."""
    K = torch.stack([torch.tensor(INDEFINITE, dtype=torch.float64), _K3()])
    out = {}
    for backend in BACKENDS:
        sol = solve_newton(K, fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
        assert sol.alpha[0].tolist() == [1.0, 1.0, 1.0], backend
        assert math.isinf(float(sol.residual[0])) and not bool(sol.converged[0])
        np.testing.assert_allclose(sol.alpha[1].numpy(), positive_root(_K3().numpy()),
                                   rtol=1e-9)
        out[backend] = sol.iterations
        alone = solve_newton(K[0], fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
        assert alone.iterations == (1 if fixed is None else fixed)  # stops at the broken step
    assert out["eager"] == out["fused"]


@needs_numba
@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_bargain_alpha_with_infinite_gram_entries_reads_them_as_zero(policy: str) -> None:
    """τ_0 = −τ_1 = 1e20·e_0 in float32: K_00 = K_11 = +inf, K_01 = −inf. Both backends read
    the non-finite entries as 0 (bargain_alpha's finiteness mask), so experts 0 and 1 are zero
    experts; "ridge" is then the root of K' + λ·mean(diag K')·I with K'_ii = max_j K_jj for
    them, "uniform" c = √(N/1ᵀK'1) with the zero entries (1ᵀK'1 is exact here: small
    integers). The residual is NaN (non-finite K)."""
    t = torch.zeros(4, 4, dtype=torch.float32)
    t[0, 0], t[1, 0] = 1e20, -1e20
    t[2, 1], t[2, 2] = 1.0, 1.0
    t[3, 2], t[3, 3] = 1.0, 1.0
    K = gram_matrix([t])
    assert bool(torch.isneginf(K[0, 1])) and bool(torch.isposinf(K[0, 0]))
    K0 = np.nan_to_num(K.double().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    if policy == "ridge":
        Kp = K0.copy()
        Kp[[0, 1], [0, 1]] = K0.diagonal().max()
        want = positive_root(Kp + 1e-3 * K0.diagonal().mean() * np.eye(4))
    else:
        want = np.full(4, math.sqrt(4 / K0.sum()))
    for backend in ("eager", "auto"):
        got = bargain_alpha([t], singular_policy=policy, backend=backend)  # type: ignore[arg-type]
        assert bool(got.fallback) and math.isnan(float(got.residual))
        np.testing.assert_allclose(got.alpha.numpy(), want, rtol=1e-9)


# ---- half precision into the fused path; the rounding floor of the fused kernel -----------


@needs_numba
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_k_into_the_fused_path(dtype: torch.dtype) -> None:
    """A bfloat16/float16 K is solved in float64 from its exact values: the same α as the
    float64 copy of K, to the last bit, and converged (K is a rounded Gram, still PD here)."""
    G = torch.randn(12, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    K = (G.T @ G).to(dtype)
    half = solve_newton(K, backend="fused")
    wide = solve_newton(K.double(), backend="fused")
    assert half.alpha.dtype == torch.float64 and bool(half.converged)
    assert torch.equal(half.alpha, wide.alpha)
    np.testing.assert_allclose(half.alpha.numpy(), positive_root(K.double().numpy()),
                               rtol=1e-9)


@needs_numba
def test_fused_residual_and_its_rounding_floor_are_problem_s() -> None:
    """fused._residual returns (max_i |α_i(K̂α)_i − 1|, max_i α_i(|K̂|α)_i), the second being
    problem.residual_floor / (eps·N); the largest term sits at coordinate 0 here (a kernel
    that read the last coordinate would be off by 10³)."""
    Kh = np.array([[1.0, -0.9, 0.1], [-0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    a = np.array([40.0, 30.0, 0.04])
    r = np.empty(3)
    res, top = fused._residual(Kh, a, r)
    terms = a * (np.abs(Kh) @ a)
    assert int(terms.argmax()) == 0 and terms[0] > 1e3 * terms[-1]
    assert top == pytest.approx(terms.max(), rel=1e-15)
    floor = float(residual_floor(torch.from_numpy(Kh), torch.from_numpy(a)))
    assert top * np.finfo(np.float64).eps * 3 == pytest.approx(floor, rel=1e-15)
    assert res == pytest.approx(np.abs(a * (Kh @ a) - 1).max(), rel=1e-15)


@needs_numba
def test_fused_certifiability_cap_at_its_boundary() -> None:
    """``_converged``: 8·floor ≤ max(tol, cap) admits equality. With N = 2, eps = 2⁻⁵² and
    top = 2²⁸, 8·eps·N·top = 2⁻²⁰ exactly; cap = 2⁻²⁰ is certifiable (a residual at the
    floor converges), one ulp of top more is not (problem.converged_mask's rule)."""
    cap = 2.0**-20
    top = 2.0**28
    assert fused._converged(2, cap, top, 1e-10, 8.0, cap)
    assert not fused._converged(2, 0.0, np.nextafter(top, np.inf), 1e-10, 8.0, cap)
    assert not fused._converged(2, np.nextafter(cap, 1.0), top, 1e-10, 8.0, cap)


# ---- the <, <= boundaries of nash/problem.py ----------------------------------------------


def test_certificate_distance_equal_to_the_tolerance_is_infeasible(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """raise_if_infeasible: a certificate with v̂ᵀK̂v̂ ≤ CERTIFICATE_TOL means no bargain (S6),
    equality included; one ulp above, the bargain exists and the distance is returned."""
    v = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    K = _K3()
    monkeypatch.setattr(problem, "infeasibility_certificate", lambda K: (v, CERTIFICATE_TOL))
    with pytest.raises(InfeasibleBargainError, match=r"experts \[0, 1\] cancel out"):
        raise_if_infeasible(K)
    above = float(np.nextafter(CERTIFICATE_TOL, 1.0))
    monkeypatch.setattr(problem, "infeasibility_certificate", lambda K: (v, above))
    assert raise_if_infeasible(K) == above


def test_psd_tolerance_at_its_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_gram: K̂'s smallest eigenvalue may reach −√eps·max(λ_max, 1) (float64:
    √eps = 2⁻²⁶ exactly), equality included; one ulp below is not PSD (the eigenvalues are
    set here, the rest of check_gram runs on a valid K)."""
    lam_max = 2.0
    bound = -(2.0**-26) * lam_max
    real = torch.linalg.eigvalsh

    def eig(lam_min: float):  # type: ignore[no-untyped-def]
        return lambda A: torch.tensor([lam_min, 1.0, lam_max], dtype=torch.float64)

    monkeypatch.setattr(torch.linalg, "eigvalsh", eig(bound))
    check_gram(_K3())
    monkeypatch.setattr(torch.linalg, "eigvalsh", eig(float(np.nextafter(bound, -1.0))))
    with pytest.raises(BargainInputError, match="not positive semi-definite"):
        check_gram(_K3())
    monkeypatch.setattr(torch.linalg, "eigvalsh", real)


# ---- messages ------------------------------------------------------------------------------


def test_underflow_message_names_the_largest_entry() -> None:
    """‖τ_1‖² of a float32 τ_1 with entries ≤ 3e-30 underflows to 0: the error names the
    expert and its largest entry (3e-30, formatted %.3g)."""
    t = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    t[1] = torch.tensor([1e-30, -3e-30, 2e-30, 0.0, 1e-31])
    with pytest.raises(BargainInputError, match=r"‖τ_1‖² underflowed to 0 in torch.float32: "
                       r"expert 1's domain vector is not zero \(largest entry 3e-30\)"):
        nash_bargain(t)


def test_infeasibility_message_lists_exactly_the_cancelling_support() -> None:
    """τ_2 = −2τ_0 with τ_1 independent: the certificate's support is {0, 2}, and the
    solver's message names exactly [0, 2] (NashMTL's: tests/test_mutants_mtl.py)."""
    G = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0], [-2.0, -1.0, 0.0]])
    with pytest.raises(InfeasibleBargainError, match=r"experts \[0, 2\] cancel out"):
        raise_if_infeasible(torch.from_numpy(G @ G.T))


# ---- kronecker_apply's default; the chunked half-precision Gram ---------------------------


def test_kronecker_apply_defaults_to_the_recomputing_function() -> None:
    """The documented default recompute=True runs the custom autograd function (which the
    gradcheck and the float32 property test compare with the eager chain); recompute=False
    is the eager einsum chain."""
    g = torch.Generator().manual_seed(0)
    tau = torch.randn(2, 6, 4, generator=g, requires_grad=True)
    f = [torch.randn(2, k, k, generator=g) for k in (2, 3, 2, 2)]
    default = kronecker_apply(tau, *f)
    eager = kronecker_apply(tau, *f, recompute=False)
    assert default.grad_fn is not None and "KroneckerApply" in type(default.grad_fn).__name__
    assert eager.grad_fn is not None and "KroneckerApply" not in type(eager.grad_fn).__name__
    torch.testing.assert_close(default, eager, rtol=1e-6, atol=1e-6)


def test_half_precision_gram_chunks_are_as_wide_as_the_scratch_allows() -> None:
    """bfloat16 τ (N = 4, d = 4·HALF_CHUNK_ELEMENTS): the float32 scratch holds
    HALF_CHUNK_ELEMENTS elements, so the Gram is d / (HALF_CHUNK_ELEMENTS / N) = 16 chunk
    products (addmm), and the largest allocation is the full 1 MiB scratch (a narrower chunk
    gives the same K, slower: many more products, a smaller buffer)."""
    from torch.profiler import ProfilerActivity, profile

    n, d = 4, 4 * HALF_CHUNK_ELEMENTS
    t = torch.randn(n, d, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        gram_matrix(t)
    products = sum(int(ev.count) for ev in prof.key_averages() if ev.key.startswith("aten::addmm"))
    assert products == d // (HALF_CHUNK_ELEMENTS // n) == 16
    biggest = max(ev.cpu_memory_usage for ev in prof.events())
    assert biggest >= 4 * HALF_CHUNK_ELEMENTS
