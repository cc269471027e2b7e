"""Bad inputs to the Nash core raise a specific exception with a useful message (S2, S6).

Infeasibility certificates (S6) are checked independently of the solver: v ≥ 0, Σv = 1 and
‖Gv‖ ≤ 1e-6·max_i‖τ_i‖ computed from the real G (1e-6: the LP (HiGHS) returns v to ~1e-9 in
unit-diagonal units; our inputs cancel exactly up to float64 rounding, so 1e-6 has margin).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from namex_ref.nash import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    nash_bargain,
    solve_nash,
)
from tests.nash_strategies import gaussian_G, rescale_columns


def _K(G: torch.Tensor) -> torch.Tensor:
    return G.T @ G


def _G(n: int = 4, d: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(gaussian_G(n, d, seed))


def assert_certificate(G: torch.Tensor, v: torch.Tensor, support: list[int] | None = None):
    v = v.to(torch.float64)
    assert bool((v >= 0).all()), v
    assert abs(float(v.sum()) - 1.0) <= 1e-12, v
    max_norm = float(G.norm(dim=0).max())
    assert float((G @ v).norm()) <= 1e-6 * max_norm, (G @ v).norm()
    if support is not None:
        assert [i for i, x in enumerate(v.tolist()) if x > 1e-6] == support, v


# ------------------------------------------------------------------------------------------
# Non-finite entries
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_K_names_entry(bad):
    K = _K(_G())
    K[2, 1] = bad
    K[1, 2] = bad
    with pytest.raises(BargainInputError, match=r"K\[1, 2\]") as exc:
        solve_nash(K)
    assert "expert 1 or 2" in str(exc.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_taus_names_expert(bad):
    taus = _G(4, 6).T.clone()  # (N, d)
    taus[3, 2] = bad
    with pytest.raises(BargainInputError, match="expert 3"):
        nash_bargain(taus)


def test_nonfinite_in_second_matrix_names_matrix():
    taus = [_G(3, 4, 1).T.clone(), _G(3, 5, 2).T.clone()]
    taus[1][2, 0] = math.nan
    with pytest.raises(BargainInputError, match=r"expert 2 \(weight matrix 1\)"):
        nash_bargain(taus)


# ------------------------------------------------------------------------------------------
# Symmetry, PSD, shape
# ------------------------------------------------------------------------------------------


def test_nonsymmetric_K():
    K = _K(_G())
    K[0, 3] += 0.5 * float(K.diagonal().max())
    with pytest.raises(BargainInputError, match="not symmetric") as exc:
        solve_nash(K)
    assert "K[0,3]" in str(exc.value) or "K[3,0]" in str(exc.value)


def test_G_instead_of_K_rejected():
    """Passing a non-symmetric square G (d = N) instead of GᵀG is a symmetry error."""
    G = _G(4, 4, 3)
    with pytest.raises(BargainInputError, match="not symmetric"):
        solve_nash(G)


def test_non_psd_K():
    with pytest.raises(BargainInputError, match="not positive semi-definite") as exc:
        solve_nash(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64))
    assert "eigenvalue" in str(exc.value)


def test_negative_diagonal():
    K = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(BargainInputError, match="expert 1"):
        solve_nash(K)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_wrong_shapes(shape):
    with pytest.raises(BargainInputError, match="shape"):
        solve_nash(torch.ones(shape, dtype=torch.float64))


def test_n_equals_one():
    with pytest.raises(BargainInputError, match="at least 2 experts"):
        solve_nash(torch.ones((1, 1), dtype=torch.float64))
    with pytest.raises(BargainInputError, match="at least 2 experts"):
        nash_bargain(torch.ones((1, 5)))


def test_empty():
    with pytest.raises(BargainInputError, match="empty"):
        solve_nash(torch.zeros((0, 0), dtype=torch.float64))
    with pytest.raises(BargainInputError, match="no domain vectors"):
        nash_bargain([])


def test_one_dimensional_taus():
    with pytest.raises(BargainInputError, match=r"expected \[N, \.\.\.\]"):
        nash_bargain(torch.ones(5))


# ------------------------------------------------------------------------------------------
# Degenerate and duplicate experts
# ------------------------------------------------------------------------------------------


def test_zero_expert_via_K():
    G = _G(4, 7)
    G[:, 2] = 0.0
    with pytest.raises(DegenerateExpertError, match="Expert 2") as exc:
        solve_nash(_K(G))
    assert torch.equal(exc.value.certificate, torch.tensor([0.0, 0.0, 1.0, 0.0],
                                                           dtype=torch.float64))
    assert isinstance(exc.value, InfeasibleBargainError)


def test_zero_expert_via_bargain():
    taus = _G(4, 7).T.clone()
    taus[1] = 0.0
    with pytest.raises(DegenerateExpertError, match="expert 1") as exc:
        nash_bargain(taus)
    assert torch.equal(exc.value.certificate, torch.tensor([0.0, 1.0, 0.0, 0.0],
                                                           dtype=torch.float64))


def test_duplicate_experts_share_alpha():
    """Duplicate τ_i = τ_j: K singular but feasible; by the permutation symmetry (S9) swapping
    i and j leaves K unchanged, and the solution is unique, so α_i = α_j (rtol 1e-12)."""
    G = _G(4, 7, 5)
    G = torch.cat([G, G[:, 1:2]], 1)  # expert 4 duplicates expert 1
    sol = solve_nash(_K(G))
    assert bool(sol.converged)
    assert float(sol.alpha[1]) == pytest.approx(float(sol.alpha[4]), rel=1e-12)


# ------------------------------------------------------------------------------------------
# Infeasible bargains (S6)
# ------------------------------------------------------------------------------------------


def _antiparallel() -> torch.Tensor:
    t = torch.from_numpy(np.random.default_rng(9).standard_normal(6))
    return torch.stack([t, -3.0 * t], 1)  # (d, 2)


@pytest.mark.parametrize(
    "method",
    ["newton", "closed_form", "cvxpy", "primal"],
)
def test_antiparallel_infeasible(method):
    """S6. Regression for cvxpy/primal: Clarabel reports "optimal" on these infeasible problems
    (α ~ 1e7…1e13, residual ≫ 1); the S6 LP must still be consulted and raise."""
    G = _antiparallel()
    with pytest.raises(InfeasibleBargainError, match="No Nash bargain exists") as exc:
        solve_nash(_K(G), method=method)
    assert_certificate(G, exc.value.certificate, [0, 1])


@pytest.mark.parametrize(
    "method",
    [
        "newton",
        "cvxpy",
        "primal",
    ],
)
def test_cancelling_triple_infeasible(method):
    """τ3 = −τ1 − τ2 (d = 5): v ∝ (1, 1, 1) is the only certificate; supported on all three."""
    rng = np.random.default_rng(21)
    t1, t2 = rng.standard_normal(5), rng.standard_normal(5)
    G = torch.from_numpy(np.stack([t1, t2, -t1 - t2], 1))
    with pytest.raises(InfeasibleBargainError) as exc:
        solve_nash(_K(G), method=method)
    assert_certificate(G, exc.value.certificate, [0, 1, 2])
    assert "[0, 1, 2]" in str(exc.value) or method == "newton"


def test_infeasible_via_bargain():
    with pytest.raises(InfeasibleBargainError):
        nash_bargain(_antiparallel().T)


# ------------------------------------------------------------------------------------------
# Dispatch and convergence
# ------------------------------------------------------------------------------------------


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'lbfgs'"):
        solve_nash(_K(_G()), method="lbfgs")


def test_closed_form_rejects_n3():
    with pytest.raises(ValueError, match="N = 2"):
        solve_nash(_K(_G(3, 5)), method="closed_form")


def test_require_converged_ccp_failure():
    """A badly scaled N = 8 problem (norms 1e-2…1e2, seed 0) where the CCP baseline stops at a
    large residual: nash_bargain must raise NashConvergenceError naming the residual, and with
    require_converged=False return the unconverged result visibly."""
    G = torch.from_numpy(rescale_columns(gaussian_G(8, 16, 0), 0))
    with pytest.raises(NashConvergenceError, match="ccp stopped at residual"):
        nash_bargain(G.T, method="ccp")
    r = nash_bargain(G.T, method="ccp", require_converged=False)
    assert not bool(r.solution.converged) and float(r.residual) > 1e-6
