"""The shared problem definition (S4–S7) at its edges: input forms, every check of ``check_gram``
with the problem it names, its tolerances at their boundaries, and the S6 linear programme.

Tolerances under test (``check_gram``): symmetry is accepted up to √eps relative to max K_ii
(2⁻²⁶ ≈ 1.5e-8 in float64; an integer K is checked exactly), and K̂ = DKD's smallest
eigenvalue down to −√eps·max(λ_max, 1). The boundary cases below sit at 1.75× and 2× of √eps,
inside or outside depending on λ_max, so a bound that moves by a factor ≥ 1.2 is caught.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch

from namex_ref.nash import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    solve_nash,
)
from namex_ref.nash.problem import (
    as_gram_tensor,
    check_gram,
    converged_mask,
    infeasibility_certificate,
    residual_floor,
    scaled_residual,
)

RTOL64 = 2.0**-26  # √eps(float64), the symmetry / PSD tolerance for float64 K


def _K(seed: int = 0, n: int = 3, d: int = 6) -> torch.Tensor:
    G = torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return G.T @ G


# ------------------------------------------------------------------------------------------
# Input forms (as_gram_tensor)
# ------------------------------------------------------------------------------------------


def test_numpy_list_and_torch_inputs_give_the_same_alpha() -> None:
    K = _K(1)
    want = solve_nash(K).alpha
    for form in (K.numpy(), K.tolist()):
        torch.testing.assert_close(solve_nash(form).alpha, want, rtol=0, atol=0)


def test_numpy_with_negative_strides_is_accepted() -> None:
    """K[::-1, ::-1] is the Gram of the experts in reverse order (a view with negative
    strides, which torch cannot wrap without a copy): α comes back reversed (S9)."""
    K = _K(2).numpy()
    got = solve_nash(K[::-1, ::-1]).alpha
    torch.testing.assert_close(got, solve_nash(K).alpha.flip(0), rtol=1e-13, atol=0)


def test_python_floats_keep_float64_precision() -> None:
    """A nested list of Python floats is read as float64 (not torch's default float32): a
    1e-12 change in one entry moves α by ~1e-12, which float32 would erase."""
    base = [[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]]
    bumped = [row[:] for row in base]
    bumped[0][1] = bumped[1][0] = 0.3 + 1e-12
    a, b = solve_nash(base).alpha, solve_nash(bumped).alpha
    assert a.dtype == torch.float64
    assert 0 < float((a - b).abs().max()) < 1e-10


def test_unconvertible_and_complex_inputs_are_named() -> None:
    with pytest.raises(BargainInputError, match="array-like"):
        solve_nash("not a matrix")
    with pytest.raises(BargainInputError, match="K must be real"):
        solve_nash(_K(3).to(torch.complex128))


def test_as_gram_tensor_keeps_float_dtypes_and_makes_integers_float64() -> None:
    """as_gram_tensor's contract: float inputs keep their dtype (validation then uses that
    precision's tolerance), integer tensors and arrays become float64 with the same values."""
    ints = [[2, 1], [1, 2]]
    for K in (torch.tensor(ints), torch.tensor(ints, dtype=torch.int32),
              np.array(ints, dtype=np.int64), np.array(ints, dtype=np.uint8)):
        t = as_gram_tensor(K)
        assert t.dtype == torch.float64, type(K)
        assert t.tolist() == [[2.0, 1.0], [1.0, 2.0]]
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert as_gram_tensor(torch.tensor(ints, dtype=dtype)).dtype == dtype


def test_integer_K_is_checked_exactly_and_solved() -> None:
    """Integer K (duplicate experts: K = 11ᵀ, singular but feasible, S5) becomes float64; its
    α is 1/√2 each (α_i(α_1 + α_2) = 1). An integer K is checked with zero tolerance."""
    sol = solve_nash(torch.tensor([[1, 1], [1, 1]]))
    torch.testing.assert_close(sol.alpha, torch.full((2,), 2**-0.5, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    K = check_gram(torch.tensor([[2, 1], [1, 2]]))
    assert K.dtype == torch.float64
    with pytest.raises(BargainInputError, match="not symmetric"):
        check_gram(torch.tensor([[2, 1], [2, 2]]))


# ------------------------------------------------------------------------------------------
# check_gram: what each check names, batched and not
# ------------------------------------------------------------------------------------------


def _batch(bad: torch.Tensor) -> torch.Tensor:
    """(2, 3, 3): problem 0 valid, problem 1 = ``bad``."""
    return torch.stack([_K(4), bad])


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_batched_non_finite_diagonal_names_expert_and_problem(value: float) -> None:
    bad = _K(5)
    bad[2, 2] = value
    with pytest.raises(BargainInputError, match=r"non-finite diagonal entry K\[2, 2\].* in "
                       r"problem \(1,\).*expert 2 contains"):
        check_gram(_batch(bad))
    with pytest.raises(BargainInputError) as exc:
        check_gram(bad)
    assert "in problem" not in str(exc.value)


def test_batched_non_finite_off_diagonal_names_problem() -> None:
    bad = _K(6)
    bad[0, 2] = bad[2, 0] = math.nan
    with pytest.raises(BargainInputError, match=r"K\[0, 2\].* in problem \(1,\)"):
        check_gram(_batch(bad))
    with pytest.raises(BargainInputError) as exc:
        check_gram(bad)
    assert "in problem" not in str(exc.value)


def test_asymmetry_names_the_pair_in_order_and_the_problem() -> None:
    """K[0,1] < K[1,0]: the message names K[0,1] first (the largest relative gap, first in
    row-major order), in problem (1,) of a batch."""
    bad = _K(7)
    bad[1, 0] = bad[0, 1] + 0.5
    with pytest.raises(BargainInputError, match=r"not symmetric in problem \(1,\): K\[0,1\]"):
        check_gram(_batch(bad))
    with pytest.raises(BargainInputError, match=r"^K is not symmetric: K\[0,1\]"):
        check_gram(bad)


def test_asymmetry_is_relative_to_each_problem_scale() -> None:
    """Problem 0 has K_ii ~ 1e6, problem 1 K_ii ~ 1: a 1e-5 gap in problem 1 is 1e-5 of its
    own scale (rejected) though only 1e-11 of problem 0's."""
    big = _K(8) * 1e6
    bad = _K(9)
    bad[1, 2] += 1e-5
    with pytest.raises(BargainInputError, match=r"not symmetric in problem \(1,\)"):
        check_gram(torch.stack([big, bad]))


def test_symmetry_tolerance_boundary() -> None:
    """A gap of exactly √eps·max K_ii (2⁻²⁶ with max K_ii = 1) is accepted (the test is
    "gap > √eps"); twice that is rejected."""
    K = torch.tensor([[1.0, 0.5], [0.5 - RTOL64, 1.0]], dtype=torch.float64)
    check_gram(K)
    K[1, 0] = 0.5 - 2 * RTOL64
    with pytest.raises(BargainInputError, match="not symmetric"):
        check_gram(K)


def test_symmetry_scale_uses_magnitudes_of_a_negative_diagonal() -> None:
    """A negative diagonal is reported as not PSD, not as asymmetry: the 1e-12 gap is tiny
    relative to max |K_ii| = 2."""
    K = torch.tensor([[-1.0, 0.5], [0.5 + 1e-12, -2.0]], dtype=torch.float64)
    with pytest.raises(BargainInputError, match=r"not positive semi-definite: K\[0,0\]"):
        check_gram(K)


def test_accepted_asymmetry_is_symmetrised_before_solving() -> None:
    """A 1e-9 relative asymmetry (within √eps) is averaged away: α equals that of ½(K + Kᵀ),
    batched or not; solving the raw K would move α by ~1e-10."""
    K = _K(10)
    K[0, 1] += 1e-9 * float(K.diagonal().max())
    sym = 0.5 * (K + K.T)
    want = solve_nash(sym).alpha
    torch.testing.assert_close(solve_nash(K).alpha, want, rtol=1e-14, atol=0)
    got = solve_nash(torch.stack([_K(4), K])).alpha[1]
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_negative_diagonal_names_expert_and_problem() -> None:
    bad = _K(11)
    bad[2, 2] = -1.0
    with pytest.raises(BargainInputError, match=r"K\[2,2\].*expert 2 in problem \(1,\)"):
        check_gram(_batch(bad))


def test_negative_diagonal_is_named_before_small_or_zero_ones() -> None:
    """diag(0.5, 0, −1): the negative entry is the PSD failure (not the zero, not the 0.5)."""
    K = torch.diag(torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64))
    with pytest.raises(BargainInputError, match=r"K\[2,2\] = -1 < 0 \(expert 2\)"):
        check_gram(K)


def test_zero_diagonal_is_a_degenerate_expert_with_its_problem() -> None:
    bad = _K(12)
    bad[1, :] = 0.0
    bad[:, 1] = 0.0
    with pytest.raises(DegenerateExpertError, match=r"Expert 1 .*in problem \(1,\)") as exc:
        check_gram(_batch(bad))
    assert exc.value.batch_index == (1,)
    assert exc.value.certificate.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(DegenerateExpertError) as exc2:
        check_gram(bad)
    assert "problem" not in str(exc2.value) and exc2.value.batch_index == ()


def _plane(angles_deg: tuple[float, ...], delta: float) -> torch.Tensor:
    """Unit vectors in a plane (rank 2: λ_min(K̂) = 0) with δ·vvᵀ subtracted along the null
    vector v, then renormalised to unit diagonal: λ_min(K̂) = −δ(1 + O(δ))."""
    t = np.radians(np.array(angles_deg))
    G = np.stack([np.cos(t), np.sin(t)])
    K = G.T @ G
    _, V = np.linalg.eigh(K)
    K = K - delta * np.outer(V[:, 0], V[:, 0])
    d = 1 / np.sqrt(np.diag(K))
    return torch.from_numpy(d[:, None] * K * d[None, :])


def test_psd_tolerance_scales_with_the_largest_eigenvalue() -> None:
    """λ_min = −2√eps is accepted when λ_max ≈ 2.9 (bound −2.9√eps) but λ_min = −1.75√eps is
    rejected when λ_max = 1.5 (bound −1.5√eps): the bound is −√eps·max(λ_max, 1), not the
    middle eigenvalue, not divided by λ_max, not a fixed multiple."""
    wide = _plane((0.0, 10.0, 20.0), 2 * RTOL64)
    lam = np.linalg.eigvalsh(wide.numpy())
    assert lam[0] == pytest.approx(-2 * RTOL64, rel=1e-3, abs=0) and lam[1] < 0.5 and lam[2] > 2.8
    check_gram(wide)
    tight = _plane((0.0, 60.0, 120.0), 1.75 * RTOL64)
    assert np.linalg.eigvalsh(tight.numpy())[2] == pytest.approx(1.5, rel=1e-6)
    with pytest.raises(BargainInputError, match="not positive semi-definite"):
        check_gram(tight)


def test_psd_failure_names_the_failing_problem_of_a_2d_batch() -> None:
    """Batch (2, 2): problem (0, 1) is PSD to within its bound (λ_min = −√eps, λ_max = 3),
    problem (1, 0) is not (λ_min = −1.75√eps, λ_max = 1.5): the message names (1, 0)."""
    ok = _plane((0.0, 0.0, 0.0), 0.0)
    near = _plane((0.0, 1e-3, 2e-3), RTOL64)
    bad = _plane((0.0, 60.0, 120.0), 1.75 * RTOL64)
    K = torch.stack([torch.stack([ok, near]), torch.stack([bad, ok])])
    with pytest.raises(BargainInputError, match=r"in problem \(1, 0\)"):
        check_gram(K)
    with pytest.raises(BargainInputError) as exc:
        check_gram(bad)
    assert "in problem" not in str(exc.value)


def test_four_dimensional_batches() -> None:
    """(2, 1, 3, 3): N is the last dimension, whatever the batch shape."""
    K = torch.stack([_K(13), _K(14)])[:, None]
    sol = solve_nash(K)
    assert sol.alpha.shape == (2, 1, 3) and bool(sol.converged.all())
    torch.testing.assert_close(sol.alpha[1, 0], solve_nash(_K(14)).alpha, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------
# Residuals and the convergence rule
# ------------------------------------------------------------------------------------------


def test_scaled_residual_is_evaluated_in_float64() -> None:
    K = _K(15).float()
    a = torch.rand(3, generator=torch.Generator().manual_seed(0)) + 0.5
    r = scaled_residual(K, a)
    assert r.dtype == torch.float64
    want = (a.double() * (K.double() @ a.double()) - 1).abs().max()
    assert float(r) == float(want)


def test_residual_floor_uses_n_of_each_problem() -> None:
    """Batched (2, 3, 4, 4): floor = eps·4·max_i α_i(|K|α)_i per problem (N = 4, not a batch
    size)."""
    K = torch.stack([torch.stack([_K(s, n=4) for s in range(3)]) for _ in range(2)])
    a = torch.ones(2, 3, 4, dtype=torch.float64)
    got = residual_floor(K, a)
    assert got.shape == (2, 3)
    for j in range(3):
        want = np.finfo(np.float64).eps * 4 * float((K[0, j].abs() @ a[0, j]).max())
        assert float(got[1, j]) == pytest.approx(want, rel=1e-15, abs=0)


def test_converged_mask_at_its_thresholds() -> None:
    """residual ≤ max(tol, 8·floor) passes with equality; a NaN residual never does."""
    K = torch.eye(2, dtype=torch.float64)
    a = torch.ones(2, dtype=torch.float64)  # floor = 2·eps: 8·floor ≪ tol
    tol = 1e-10
    res = torch.tensor([tol, tol * (1 + 1e-9), math.nan], dtype=torch.float64)
    got = converged_mask(K, a.expand(3, 2), res, tol)
    assert got.tolist() == [True, False, False]


# ------------------------------------------------------------------------------------------
# The S6 linear programme
# ------------------------------------------------------------------------------------------


def test_certificate_on_an_obtuse_triple_is_the_linf_minimiser() -> None:
    """τ_3 almost opposite τ_1 + τ_2 (feasible, but K̂ strongly negative off the diagonal): the
    LP's v̂ minimises ‖K̂v‖∞ over the simplex (checked by a fine grid search here), not
    max_i (K̂v)_i."""
    G = np.array([[1.0, 0.0, -0.7], [0.0, 1.0, -0.7], [0.0, 0.0, 0.2]])
    K = torch.from_numpy(G.T @ G)
    v, dist = infeasibility_certificate(K)
    norms = np.sqrt(np.diag(K.numpy()))
    Kh = K.numpy() / np.outer(norms, norms)
    vh = v.numpy() * norms
    vh /= vh.sum()
    s = np.linspace(0, 1, 401)
    a, b = np.meshgrid(s, s)
    keep = a + b <= 1
    V = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]])
    best = np.abs(Kh @ V).max(0).min()
    assert np.abs(Kh @ vh).max() <= best + 1e-9
    assert dist == pytest.approx(float(vh @ Kh @ vh), rel=1e-12, abs=0)


def test_certificate_is_the_linf_minimiser_where_the_one_sided_lp_is_not() -> None:
    """Four Gaussian experts in R³ (seed 28, feasible): min over the simplex of ‖K̂v‖∞ (by
    cvxpy/Clarabel here) is 0.095, while minimising max_i (K̂v)_i alone would stop at a v̂ with
    ‖K̂v̂‖∞ = 0.138: the LP must bound (K̂v)_i from both sides."""
    import cvxpy as cp

    G = np.random.default_rng(28).standard_normal((3, 4))
    K = G.T @ G
    v, _ = infeasibility_certificate(torch.from_numpy(K))
    norms = np.sqrt(np.diag(K))
    Kh = K / np.outer(norms, norms)
    vh = v.numpy() * norms
    vh /= vh.sum()
    x = cp.Variable(4, nonneg=True)
    prob = cp.Problem(cp.Minimize(cp.norm(Kh @ x, "inf")), [cp.sum(x) == 1])
    prob.solve(solver=cp.CLARABEL)
    assert float(np.abs(Kh @ vh).max()) == pytest.approx(prob.value, rel=1e-5, abs=0)
    assert prob.value == pytest.approx(0.095, abs=1e-3)


def test_certificate_distance_is_never_negative() -> None:
    """Exactly cancelling experts: v̂ᵀK̂v̂ rounds to ±1e-16; the distance is clipped at 0."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        G = rng.standard_normal((4, 5))
        G[:, 4] = -(G[:, :4] @ rng.uniform(0.2, 1.0, 4))
        _, dist = infeasibility_certificate(torch.from_numpy(G.T @ G))
        assert 0.0 <= dist <= 1e-15


def _patched_linprog(monkeypatch: pytest.MonkeyPatch, edit: Any) -> None:
    real = scipy.optimize.linprog

    def fake(*args: Any, **kwargs: Any) -> Any:
        res = real(*args, **kwargs)
        edit(res)
        return res

    monkeypatch.setattr(scipy.optimize, "linprog", fake)


def test_certificate_is_cleaned_of_solver_tolerance_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS may return v within its feasibility tolerance: a −1e-15 entry and a sum of
    1 + 1e-9. The certificate is still ≥ 0 and sums to 1; its distance is computed from the
    renormalised v̂; an entry at the 1e-12 threshold (exclusive) is not listed as cancelling."""
    G = np.array([[1.0, -0.5, 0.0], [0.0, 0.2, 1.0]])  # feasible: the distance is > 0
    K = torch.from_numpy(G.T @ G)
    x = np.array([0.5, 0.5, -1e-15]) * (1 + 1e-9)

    def noisy(res: Any) -> None:
        res.x[:3] = x

    _patched_linprog(monkeypatch, noisy)
    v, dist = infeasibility_certificate(K)
    assert bool((v >= 0).all()) and abs(float(v.sum()) - 1) <= 1e-15
    norms = np.sqrt(np.diag(K.numpy()))
    vh = np.clip(x, 0, None) / np.clip(x, 0, None).sum()
    Kh = K.numpy() / np.outer(norms, norms)
    assert dist == pytest.approx(float(vh @ Kh @ vh), rel=1e-12, abs=0)

    G = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # τ_2 = −τ_1, τ_3 ⟂: v = (½, ½, 0)
    K = torch.from_numpy(G.T @ G)

    def tiny(res: Any) -> None:  # an entry at exactly the 1e-12 support threshold
        res.x[:3] = np.array([0.5, 0.5 - 1e-12, 1e-12])

    _patched_linprog(monkeypatch, tiny)
    with pytest.raises(InfeasibleBargainError, match=r"experts \[0, 1\] cancel"):
        solve_nash(K)


def test_certificate_lp_failure_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failed(res: Any) -> None:
        res.status, res.message = 2, "infeasible (simulated)"

    _patched_linprog(monkeypatch, failed)
    with pytest.raises(RuntimeError, match="certificate LP failed: infeasible"):
        infeasibility_certificate(_K(16))


def test_infeasible_batch_names_its_problem() -> None:
    G = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    bad = torch.from_numpy(G.T @ G)
    with pytest.raises(InfeasibleBargainError, match=r"No Nash bargain exists \(problem \(1,\)\)"):
        solve_nash(torch.stack([_K(17), bad]))
    with pytest.raises(InfeasibleBargainError, match=r"^No Nash bargain exists: experts \[0, 1\]"):
        solve_nash(bad)
