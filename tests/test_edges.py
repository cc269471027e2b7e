"""Edges of the Nash core where a reference implementation is most easily wrong (S4, S6, S11).

Every test here failed on the code before issue 11's fixes; each says what it pins:

* no solver path returns NaN, even unvalidated (``validate=False``) on invalid K;
* the merging layer's "raise" policy raises when the bargain does not converge;
* closed form and Newton share one convergence rule, so they agree on the verdict (S11);
* the S6 certificate's ``distance`` is what the documentation says it is;
* batched τ is explicit, ``alpha0`` is validated, empty inputs raise ``BargainInputError``;
* the messages name the real cause (overflow, underflow, transposed τ, the expert with NaN).

Oracles are independent of the code under test: closed forms written here, the LP optimum
recomputed with scipy, and float64 sums computed here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from namex_ref.cli import main
from namex_ref.merging.plan import bargain_alpha
from namex_ref.nash import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    gram_matrix,
    nash_bargain,
    solve_nash,
)
from namex_ref.nash.closed_form import solve_closed_form
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.problem import infeasibility_certificate

# ------------------------------------------------------------------------------------------
# No NaN from any solver path
# ------------------------------------------------------------------------------------------


def _zero_diag_K() -> torch.Tensor:
    G = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.0, 1.0]], dtype=torch.float64)  # τ_2 = 0
    return G.T @ G


@pytest.mark.parametrize("fixed", [20, None])
def test_unvalidated_zero_expert_gives_finite_unconverged_alpha(fixed: int | None) -> None:
    """validate=False on a K with K_22 = 0 (τ_2 = 0, no bargain, S6): α finite and > 0, the
    problem flagged not converged with an infinite residual, never α = NaN."""
    sol = solve_nash(_zero_diag_K(), validate=False, fixed_iterations=fixed)
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all()), sol.alpha
    assert not bool(sol.converged)
    assert math.isinf(float(sol.residual))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_unvalidated_invalid_entries_do_not_poison_the_batch(bad: float) -> None:
    """One invalid problem (NaN, Inf, or a negative diagonal) in a batch of three: its α is
    finite and flagged; the other two are solved exactly as alone (S4 residual ≤ 1e-10)."""
    G = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    K = (G.T @ G).expand(3, 3, 3).clone()
    K[1, 0, 0] = bad
    sol = solve_nash(K, validate=False, fixed_iterations=20)
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
    assert sol.converged.tolist() == [True, False, True]
    alone = solve_newton(K[0])
    torch.testing.assert_close(sol.alpha[0], alone.alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(sol.alpha[2], alone.alpha, rtol=1e-12, atol=0)


def test_unvalidated_indefinite_K_gives_finite_alpha() -> None:
    """K that is not PSD (|K_12| > √(K_11 K_22)): Cholesky of DK̂D + I can fail; α stays finite
    and the problem is reported as not converged."""
    K = torch.tensor([[1.0, -3.0], [-3.0, 1.0]], dtype=torch.float64)
    sol = solve_nash(K, validate=False, fixed_iterations=20)
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
    assert not bool(sol.converged)


# ------------------------------------------------------------------------------------------
# The "raise" policy raises
# ------------------------------------------------------------------------------------------


def test_raise_policy_raises_on_unconverged_bargain_naming_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A feasible bargain that the full solver cannot finish (forced here by max_iter = 1)
    must raise NashConvergenceError naming the MoE layer, not return the unconverged α."""
    import namex_ref.merging.plan as plan

    real = plan.solve_nash

    def capped(K: torch.Tensor, **kw: object) -> object:
        return real(K, max_iter=1, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(plan, "solve_nash", capped)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    taus = [torch.stack([w + 0.3 * torch.randn(64, generator=g, dtype=torch.float64)
                         for _ in range(4)])]
    taus[0][1] = -0.999 * taus[0][0] + 0.05 * w  # nearly opposed: Newton needs many steps
    with pytest.raises(NashConvergenceError, match="MoE layer 3"):
        bargain_alpha(taus, singular_policy="raise", newton_iterations=1, layer=3)


# ------------------------------------------------------------------------------------------
# One convergence rule: closed form and Newton agree on the verdict (S11)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1e-7, 1e-8])
def test_closed_form_and_newton_agree_on_verdict_near_antiparallel(gap: float) -> None:
    """K = [[1, ρ], [ρ, 1]] with 1 + ρ = gap: α_i = 1/√(1+ρ) exactly (S11). Both solvers must
    reach it and give the same verdict (converged), under the same rule."""
    rho = -1.0 + gap
    K = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    cf, nt = solve_closed_form(K), solve_newton(K)
    assert bool(cf.converged) == bool(nt.converged) is True
    exact = 1.0 / math.sqrt(gap)
    # α̂ ≈ 1/√gap is ill-conditioned in ρ: the rounding of ρ = −1 + gap (eps) moves α by
    # ½·eps/gap relative; 4× that plus the Newton residual covers both solvers.
    tol = 4 * 0.5 * 2.2e-16 / gap + float(nt.residual)
    for sol in (cf, nt):
        assert abs(float(sol.alpha[0]) / exact - 1) <= tol, (sol.method, sol.alpha)


# ------------------------------------------------------------------------------------------
# The S6 certificate's distance is what is documented
# ------------------------------------------------------------------------------------------


def test_certificate_distance_is_squared_norm_of_normalised_combination() -> None:
    """distance = ‖Σ v̂_i τ̂_i‖² (unit-normalised experts) at the LP's minimiser; here the
    experts are (1, 0), (−1, ε): the cone's closest point to 0 is found by scipy directly."""
    from scipy.optimize import minimize_scalar

    eps = 0.2
    G = torch.tensor([[1.0, -1.0], [0.0, eps]], dtype=torch.float64)
    K = G.T @ G
    v, dist = infeasibility_certificate(K)
    Gh = G / G.norm(dim=0, keepdim=True)
    # v in K's units maps to v̂ ∝ v·‖τ‖ in unit-diagonal units
    vh = v * G.norm(dim=0)
    vh = vh / vh.sum()
    assert dist == pytest.approx(float((Gh @ vh).norm() ** 2), rel=1e-12, abs=0)
    # and the LP's minimiser is the simplex point minimising ‖K̂v‖∞ (here: by scipy)
    Kh = (Gh.T @ Gh).numpy()
    best = minimize_scalar(lambda s: np.abs(Kh @ np.array([s, 1 - s])).max(),
                           bounds=(0, 1), method="bounded", options={"xatol": 1e-12})
    assert float(np.abs(Kh @ vh.numpy()).max()) == pytest.approx(best.fun, rel=1e-6)


def test_closed_form_distance_is_the_same_quantity() -> None:
    """N = 2, 1 + ρ = 1e-13 (infeasible for the closed form, ρ ≤ −1 + 1e-12): its distance is
    ‖(τ̂_1 + τ̂_2)/2‖² = (1 + ρ)/2, the same quantity the LP path reports (to its rounding)."""
    rho = -1.0 + 1e-13
    K = torch.tensor([[4.0, 2.0 * rho], [2.0 * rho, 1.0]], dtype=torch.float64)  # norms 2, 1
    with pytest.raises(InfeasibleBargainError) as exc:
        solve_closed_form(K)
    assert exc.value.distance == pytest.approx(0.5 * (1 + rho), rel=1e-3, abs=0)
    _, lp = infeasibility_certificate(K)
    assert lp == pytest.approx(exc.value.distance, abs=1e-15)


# ------------------------------------------------------------------------------------------
# Shapes: batched τ, alpha0, empty inputs
# ------------------------------------------------------------------------------------------


def test_gram_of_3d_tensor_is_explicit() -> None:
    """A single (B, N, d) tensor is ambiguous: a batch of problems or one weight matrix of N
    experts. Without batch_dims it raises; with batch_dims=1 it gives (B, N, N) per problem."""
    t = torch.randn(3, 4, 16, dtype=torch.float64)
    with pytest.raises(BargainInputError, match="batch_dims"):
        gram_matrix(t)
    K = gram_matrix(t, batch_dims=1)
    assert K.shape == (3, 4, 4)
    for b in range(3):
        torch.testing.assert_close(K[b], t[b] @ t[b].T, rtol=1e-14, atol=1e-12)
    # the list form keeps one weight matrix (N, out, in) per entry
    assert gram_matrix([t]).shape == (3, 3)


@pytest.mark.parametrize(
    "alpha0, what",
    [
        (torch.tensor([1.0, -1.0, 1.0]), "positive"),
        (torch.tensor([1.0, 0.0, 1.0]), "positive"),
        (torch.tensor([1.0, math.nan, 1.0]), "finite"),
        (torch.tensor([1.0, 1.0]), "shape"),
    ],
)
def test_alpha0_is_validated(alpha0: torch.Tensor, what: str) -> None:
    K = _zero_diag_K() + torch.eye(3, dtype=torch.float64)
    with pytest.raises(BargainInputError, match=what):
        solve_nash(K, alpha0=alpha0)


@pytest.mark.parametrize("shape", [(0, 16), (3, 0)])
def test_empty_domain_vectors_raise_input_error(shape: tuple[int, int]) -> None:
    with pytest.raises(BargainInputError, match="empty"):
        nash_bargain(torch.zeros(shape))


def test_cli_empty_taus_is_a_named_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 16)))
    assert main(["solve", str(path), "--taus"]) == 2
    assert "empty" in capsys.readouterr().err


def test_cli_unreadable_npy_is_a_named_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "text.npy"
    path.write_text("not an array\n")
    assert main(["solve", str(path), "--taus"]) == 2
    err = capsys.readouterr().err
    assert "text.npy" in err and "allow_pickle" not in err


# ------------------------------------------------------------------------------------------
# Messages name the real cause
# ------------------------------------------------------------------------------------------


def _taus32() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    return torch.stack([w + 0.3 * torch.randn(16, generator=g) for _ in range(3)])


def test_float32_overflow_is_reported_as_overflow() -> None:
    with pytest.raises(BargainInputError, match="overflow") as exc:
        nash_bargain(_taus32() * 1e30)
    assert "NaN" not in str(exc.value)


def test_float32_underflow_is_reported_as_underflow() -> None:
    with pytest.raises(BargainInputError, match="underflow") as exc:
        nash_bargain(_taus32() * 1e-30)
    assert "equals the base" not in str(exc.value)


def test_transposed_taus_suggest_the_transpose() -> None:
    """τ given as (d, N) = (16, 4) instead of (4, 16): 16 'experts' in 4 dimensions cancel;
    the message must point at the likely transpose, not only at anti-parallel experts."""
    g = torch.Generator().manual_seed(0)
    taus = torch.randn(4, 16, generator=g, dtype=torch.float64)
    with pytest.raises(InfeasibleBargainError, match=r"transpose") as exc:
        nash_bargain(taus.T)
    assert exc.value.certificate is not None
    # the hint extends the solver's message: still one message (printed as text, not as a
    # tuple of the old and the new message), starting with the solver's own S6 verdict
    assert len(exc.value.args) == 1 and str(exc.value) == exc.value.args[0]
    assert str(exc.value).startswith("No Nash bargain exists")


def test_nan_in_one_expert_names_that_expert(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    taus = _taus32().double()
    taus[1, 5] = math.nan
    path = tmp_path / "taus.npy"
    np.save(path, taus.numpy())
    assert main(["solve", str(path), "--taus"]) == 2
    err = capsys.readouterr().err
    assert "expert 1" in err and "0 or 1" not in err
    # the Gram route names the expert from the NaN diagonal entry, too
    with pytest.raises(BargainInputError, match="expert 1") as exc:
        solve_nash(taus @ taus.T)
    assert "0 or 1" not in str(exc.value)


def test_cli_solve_still_matches_api(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's --taus route goes through nash_bargain and prints its α bit for bit."""
    taus = _taus32().double()
    path = tmp_path / "taus.npy"
    np.save(path, taus.numpy())
    assert main(["solve", str(path), "--taus"]) == 0
    got = torch.tensor(json.loads(capsys.readouterr().out)["alpha"], dtype=torch.float64)
    torch.testing.assert_close(got, nash_bargain(taus).alpha, rtol=0, atol=0)
    assert float(solve_newton(gram_matrix(taus)).residual) <= RESIDUAL_TOL


def test_degenerate_expert_still_named_for_zero_tau() -> None:
    """A real zero τ_i (not underflow) keeps its DegenerateExpertError."""
    taus = _taus32().double()
    taus[2] = 0.0
    with pytest.raises(DegenerateExpertError, match="expert 2"):
        nash_bargain(taus)


def test_python_caller_is_told_resume_true(tmp_path: Path) -> None:
    """train() called from Python names its own keyword, not only the CLI flag."""
    from namex_ref.train import TrainConfig, train

    (tmp_path / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"resume=True"):
        train(TrainConfig(out=str(tmp_path)))


def test_domain_vectors_per_matrix_and_mismatches() -> None:
    """S1 for experts made of several weight matrices: one τ per matrix, E_i − E_m computed
    here; mismatched shapes or counts raise BargainInputError naming the matrix."""
    from namex_ref.nash import domain_vectors

    g = torch.Generator().manual_seed(0)
    experts = [torch.randn(3, 4, 5, generator=g), torch.randn(3, 7, generator=g)]
    base = [torch.randn(4, 5, generator=g), torch.randn(7, generator=g)]
    taus = domain_vectors(experts, base)
    for E, b, t in zip(experts, base, taus, strict=True):
        for i in range(3):
            assert torch.equal(t[i], E[i] - b)
    assert torch.equal(domain_vectors(experts[0], base[0]), taus[0])
    with pytest.raises(BargainInputError, match="weight matrix 1"):
        domain_vectors(experts, [base[0], torch.randn(6)])
    with pytest.raises(BargainInputError, match="2 expert matrices but 1 base"):
        domain_vectors(experts, base[:1])
    with pytest.raises(BargainInputError, match="both be tensors"):
        domain_vectors(experts[0], base)  # type: ignore[call-overload]
