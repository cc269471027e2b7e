"""What ``solve_newton``, ``solve_closed_form`` and ``solve_nash`` promise at their edges (S4, S8,
S11), called directly (the dispatcher's last guard would hide a solver that breaks a promise):

* α is finite and > 0 for any input; a problem that is no bargain gets α = 1 exactly;
* everything is solved in float64, whatever the dtype of K;
* the warm start is moved to the minimum of f on its ray, per problem;
* iteration counts: 0 when no step is taken, NEWTON_MAX_ITER (100) when Newton never stops;
* closed form: batched, any batch rank, float64;
* the dispatcher validates ``alpha0`` for every method and mode, and replaces any non-finite
  or non-positive α a solver returns.

Expected values are computed here: closed forms (S8, S11), the scipy root, hand-scaled starts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from namex_ref.nash import BargainInputError, solve_nash
from namex_ref.nash.closed_form import solve_closed_form
from namex_ref.nash.newton import solve_newton
from tests.oracles import positive_root

# Every test runs through both Newton backends (tests/conftest.py): the fused CPU default and
# the eager torch loop that CUDA tensors take, against the same oracles.
pytestmark = pytest.mark.usefixtures("newton_backend")


def _K(seed: int, n: int = 3) -> torch.Tensor:
    G = torch.randn(n + 2, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return G.T @ G + 0.5 * torch.ones(n, n, dtype=torch.float64)


def test_newton_stops_at_its_cap_where_it_cannot_certify() -> None:
    """1 + ρ = 1e-12: α̂ ≈ 1e6, so the residual's rounding floor (8·floor ≈ 7e-3) is far above
    what float64 can certify (1e-6) and no iterate counts as converged: adaptive Newton runs
    exactly NEWTON_MAX_ITER = 100 steps and says so (status max_iter), with α finite."""
    rho = -1.0 + 1e-12
    K = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    sol = solve_newton(K)
    assert sol.iterations == 100 and sol.status == "max_iter" and not bool(sol.converged)
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())


def test_zero_steps_report_zero_iterations() -> None:
    K = _K(0)
    assert solve_newton(K, fixed_iterations=0).iterations == 0
    assert solve_newton(K, max_iter=0).iterations == 0


@pytest.mark.parametrize("bad", ["nan_off", "zero_diag", "indefinite"])
def test_solve_newton_itself_keeps_alpha_finite(bad: str) -> None:
    """Direct calls: a NaN off the diagonal or a zero diagonal makes the problem no bargain
    (α = 1 exactly, residual inf, not converged); an indefinite K stays finite and unconverged.
    The other problem of the batch is solved as alone."""
    K = _K(1)
    if bad == "nan_off":
        K[0, 1] = K[1, 0] = math.nan
    elif bad == "zero_diag":
        K[2, :] = 0.0
        K[:, 2] = 0.0
    else:
        K = torch.tensor([[1.0, -3.0, 0.0], [-3.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                         dtype=torch.float64)
    Kb = torch.stack([_K(2), K])
    for fixed in (None, 20):
        sol = solve_newton(Kb, fixed_iterations=fixed)
        assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
        assert not bool(sol.converged[1]) and bool(sol.converged[0])
        np.testing.assert_allclose(sol.alpha[0].numpy(), positive_root(_K(2).numpy()),
                                   rtol=1e-9)
        if bad != "indefinite":
            assert sol.alpha[1].tolist() == [1.0, 1.0, 1.0]
            assert math.isinf(float(sol.residual[1]))


def test_float32_K_is_solved_in_float64() -> None:
    """K with float32-exact entries: Newton and the closed form return float64 α equal to the
    float64 answer to 1e-12 (a float32 solve would be off by ~1e-7)."""
    K = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float32)
    rho = 0.5 / math.sqrt(2.0)
    want = np.array([1 / math.sqrt(2.0 * (1 + rho)), 1 / math.sqrt(1 + rho)])  # S11
    for sol in (solve_newton(K), solve_closed_form(K)):
        assert sol.alpha.dtype == torch.float64
        np.testing.assert_allclose(sol.alpha.numpy(), want, rtol=1e-12)


def test_warm_start_is_rescaled_per_problem() -> None:
    """After 0 steps α is each problem's own start scaled by √(N / α0ᵀKα0) (computed here)."""
    Kb = torch.stack([_K(3), 4.0 * _K(4)])
    a0 = torch.tensor([[1.0, 2.0, 3.0], [0.2, 0.1, 0.3]], dtype=torch.float64)
    got = solve_newton(Kb, alpha0=a0, fixed_iterations=0).alpha
    for b in range(2):
        q = float(a0[b] @ Kb[b] @ a0[b])
        torch.testing.assert_close(got[b], a0[b] * math.sqrt(3 / q), rtol=1e-14, atol=0)


def test_warm_start_in_the_null_space_is_kept() -> None:
    """α0ᵀKα0 = 0 (only possible without a bargain): no rescaling is defined, so the start is
    kept as it is (unvalidated call, 0 steps)."""
    K = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    got = solve_newton(K, alpha0=torch.tensor([0.5, 0.5], dtype=torch.float64),
                       fixed_iterations=0).alpha
    assert got.tolist() == [0.5, 0.5]


def test_zero_in_a_warm_start_is_invalid_in_fixed_mode() -> None:
    """A zero entry cannot start Newton (α stays 0 on that coordinate): in fixed mode the row
    starts from α̂ = 1 instead and converges to the independent root."""
    K = _K(5)
    a0 = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    sol = solve_newton(K, alpha0=a0, fixed_iterations=30)
    np.testing.assert_allclose(sol.alpha.numpy(), positive_root(K.numpy()), rtol=1e-9)


@pytest.mark.parametrize("shape", [(3,), (3, 1), (1, 3)])
def test_closed_form_batches_of_any_rank(shape: tuple[int, ...]) -> None:
    Ks = [_K(10 + i, n=2) for i in range(3)]
    Kb = torch.stack(Ks).reshape(*shape, 2, 2)
    sol = solve_closed_form(Kb)
    assert sol.alpha.shape == (*shape, 2) and bool(sol.converged.all())
    flat = sol.alpha.reshape(3, 2)
    for i, K in enumerate(Ks):
        k = K.numpy()
        rho = k[0, 1] / math.sqrt(k[0, 0] * k[1, 1])
        want = 1 / np.sqrt(np.diag(k) * (1 + rho))  # S11
        np.testing.assert_allclose(flat[i].numpy(), want, rtol=1e-14)


@pytest.mark.parametrize("fixed", [None, 30])
@pytest.mark.parametrize("shape", [(6,), (2, 3), (3, 2), (1, 2, 3)])
def test_newton_batches_of_any_rank(shape: tuple[int, ...], fixed: int | None) -> None:
    """Newton takes K of shape (..., N, N) with any number of batch dims (solve_newton's
    contract), each problem solved as if alone: checked per problem against the independent
    root (tests/oracles.positive_root, residual < 1e-12), adaptive and in fixed-iteration mode.
    Two batch dims of different sizes are the case that a per-problem flag of the wrong shape
    ((B1,) instead of (B1, B2)) cannot broadcast against. Tolerance 1e-9 relative, as in
    test_invalid_start_in_the_null_space_starts_at_alpha_hat_one: Newton stops at residual
    ≤ 1e-10 on these well-conditioned K (cond(K̂) < 1e2), which moves α by ≤ ~1e-10·cond."""
    Ks = [_K(20 + i) for i in range(6)]
    Kb = torch.stack(Ks).reshape(*shape, 3, 3)
    sol = solve_newton(Kb, fixed_iterations=fixed)
    assert sol.alpha.shape == (*shape, 3)
    assert sol.residual.shape == shape and sol.converged.shape == shape
    assert bool(sol.converged.all())
    flat = sol.alpha.reshape(6, 3)
    for i, K in enumerate(Ks):
        np.testing.assert_allclose(flat[i].numpy(), positive_root(K.numpy()), rtol=1e-9)


def test_dispatcher_validates_alpha0_in_fixed_mode_and_for_batches() -> None:
    """validate=True checks alpha0 whatever the mode (fixed mode alone would not raise), and a
    shared (N,) alpha0 is checked against each problem's N, not the batch size."""
    K = _K(6)
    with pytest.raises(BargainInputError, match="positive"):
        solve_nash(K, alpha0=torch.tensor([1.0, -1.0, 1.0]), fixed_iterations=5)
    Kb = torch.stack([_K(7), _K(8)])  # batch 2, N = 3
    sol = solve_nash(Kb, alpha0=torch.tensor([1.0, 2.0, 3.0]))
    assert bool(sol.converged.all())


def test_dispatcher_replaces_non_finite_or_zero_alpha() -> None:
    """The closed form on unvalidated bad input: NaN (zero diagonal) and 0 (infinite diagonal)
    are replaced by α = 1, residual inf, not converged."""
    Kn = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    Ki = torch.tensor([[math.inf, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for K in (Kn, Ki):
        raw = solve_closed_form(K).alpha
        assert not bool((torch.isfinite(raw) & (raw > 0)).all())  # the solver alone
        sol = solve_nash(K, method="closed_form", validate=False)
        assert sol.alpha.tolist() == [1.0, 1.0] and not bool(sol.converged)
        assert math.isinf(float(sol.residual))


def test_invalid_start_in_the_null_space_starts_at_alpha_hat_one() -> None:
    """No bargain (1ᵀK̂1 = 0) and an invalid warm start, fixed mode, 0 steps: the start is
    α̂ = 1 exactly (no rescaling is defined on a null direction)."""
    K = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    got = solve_newton(K, alpha0=torch.tensor([-1.0, 1.0], dtype=torch.float64),
                       fixed_iterations=0).alpha
    assert got.tolist() == [1.0, 1.0]


def test_a_step_that_overflows_freezes_the_problem() -> None:
    """Exactly anti-parallel experts (no bargain, S6) unvalidated: α̂ doubles every damped step
    until the step overflows; the problem is then frozen and reported as α = 1, residual inf,
    and adaptive Newton stops there instead of running to its cap of 100 steps."""
    K = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    sol = solve_newton(K)
    assert sol.iterations < 100 and sol.status == "max_iter"
    assert sol.alpha.tolist() == [1.0, 1.0] and math.isinf(float(sol.residual))


def test_list_warm_start_keeps_float64_values() -> None:
    """alpha0 = [0.1, 0.2, 0.3] is read in float64: after 0 steps α is exactly that start
    scaled by √(N / α0ᵀKα0), computed here (float32 would move it by ~1e-8)."""
    K = _K(20)
    a0 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    got = solve_newton(K, alpha0=[0.1, 0.2, 0.3], fixed_iterations=0).alpha  # type: ignore[arg-type]
    want = a0 * math.sqrt(3 / float(a0 @ K @ a0))
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


def test_closed_form_takes_no_iterations() -> None:
    assert solve_closed_form(_K(21, n=2)).iterations == 0
