"""The one problem definition every solver shares (S4–S7, docs/math.md).

Given a Gram matrix K = GᵀG of N domain vectors (S2), the Nash bargaining weights are the
α > 0 with Kα = 1/α (S4), the unique minimiser of the strictly convex

    f(α) = ½ αᵀKα − Σ_i log α_i,   ∇f = Kα − 1/α,   ∇²f = K + diag(α⁻²) ≻ 0      (S5)

(derivations: ``proofs/s4_stationarity.py``, ``proofs/s5_convexity.py``).

Scale: by S9 (``proofs/s9_invariances.py``) rescaling τ_i → c_i τ_i maps α_i → α_i / c_i, so
every solver works on the unit-diagonal matrix K̂ = D K D with D = diag(K_ii^{-1/2}) and maps
back with α = D α̂. This makes the solvers invariant to expert norms by construction and keeps
K̂'s entries in [−1, 1] (cosine similarities of the experts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from namex_ref.nash.result import BargainInputError, DegenerateExpertError, InfeasibleBargainError

__all__ = [
    "CERTIFICATE_TOL",
    "ROUNDING_CAP",
    "ROUNDING_FACTOR",
    "as_gram_tensor",
    "check_gram",
    "converged_mask",
    "infeasibility_certificate",
    "normalise_gram",
    "raise_if_infeasible",
    "residual_floor",
    "scaled_gradient",
    "scaled_residual",
]

#: A problem is declared infeasible (S6) when the LP's v has vᵀK̂v = ‖Σ_i v_i τ̂_i‖² ≤ this
#: (τ̂_i unit vectors, v on the simplex): the normalised experts cancel to within ~3e-5. Such a
#: bargain, if it exists at all, has α̂ ≳ 1/‖Ĝv‖ ~ 3e4, where float64 can no longer evaluate
#: the residual below ~1e-6 (see ``residual_floor``). Evaluated in float64 from v, not taken
#: from the LP's objective (HiGHS's feasibility tolerance is ~1e-7).
CERTIFICATE_TOL = 1e-9
#: Where α̂ is large, the residual cannot be evaluated below its rounding floor (see
#: ``residual_floor``, ∝ α̂²); a solution then counts as converged at 8× that floor, but only
#: while 8× the floor is ≤ 1e-6 — beyond that float64 cannot certify the bargain at all.
ROUNDING_FACTOR = 8.0
ROUNDING_CAP = 1e-6


def _dtype_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def as_gram_tensor(K: Any) -> Tensor:
    """Convert array-like K (numpy, torch, nested lists) to a floating torch tensor.

    Keeps the input dtype (float16/bfloat16/float32/float64) so validation can use tolerances of
    the precision K was formed in; integer inputs become float64.
    """
    if isinstance(K, Tensor):
        t = K
    elif isinstance(K, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(K))
    else:
        try:
            t = torch.as_tensor(np.asarray(K, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise BargainInputError(
                f"K must be an array-like of shape [..., N, N]; could not convert {type(K)!r}: "
                f"{exc}"
            ) from exc
    if t.is_complex():
        raise BargainInputError("K must be real; got a complex tensor.")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def check_gram(K: Tensor) -> Tensor:
    """Validate a batch of Gram matrices and return it symmetrised in float64.

    K: (..., N, N), any float dtype. Returns (..., N, N) float64, exactly symmetric.

    Tolerances depend on the precision K was formed in (``eps`` of K's dtype): a Gram matrix
    rounded in that precision is symmetric and PSD up to about N·eps·max K_ii, while a wrong
    input (G instead of GᵀG, a random matrix) is off by O(1). ``sqrt(eps)`` sits between the two:
    1.5e-8 (float64), 3.5e-4 (float32), 8.8e-2 (bfloat16), relative to max_i K_ii.

    Raises:
        BargainInputError: wrong shape, empty, N < 2, NaN/Inf (naming the expert), asymmetric
            (naming the entry), or not positive semi-definite (naming the eigenvalue).
        DegenerateExpertError: some K_ii = 0, i.e. τ_i = 0 (certificate e_i, S6).
    """
    _check_shape(K)
    rtol = _dtype_eps(K.dtype) ** 0.5
    K64 = K.to(torch.float64)
    _check_finite(K64)
    diag = K64.diagonal(dim1=-2, dim2=-1)  # (..., N)
    _check_symmetric(K64, diag, rtol, K.dtype)
    K64 = 0.5 * (K64 + K64.transpose(-1, -2))
    _check_diagonal(diag)
    _check_psd(K64, rtol, K.dtype)
    return K64


def _check_shape(K: Tensor) -> None:
    """(..., N, N), not empty, N ≥ 2; else :class:`BargainInputError` saying what was passed."""
    if K.ndim < 2 or K.shape[-1] != K.shape[-2]:
        raise BargainInputError(
            f"K must have shape [..., N, N] (a Gram matrix per problem); got {tuple(K.shape)}. "
            "For domain vectors τ of shape [N, d] use nash_bargain(τ) or gram_matrix(τ)."
        )
    if K.numel() == 0:
        raise BargainInputError(f"K is empty (shape {tuple(K.shape)}); nothing to bargain over.")
    if K.shape[-1] < 2:
        raise BargainInputError(
            "A bargain needs at least 2 experts; got N = 1. (With one expert the answer is "
            "trivially α = 1/‖τ_1‖; N = 1 usually means τ was passed as [d] or [1, d] by mistake.)"
        )


def _check_finite(K64: Tensor) -> None:
    """No NaN/Inf in K64 (..., N, N) float64; the error names the expert (or the entry)."""
    finite = torch.isfinite(K64)
    diag_finite = torch.isfinite(K64.diagonal(dim1=-2, dim2=-1))
    if not bool(diag_finite.all()):  # K_ii = ‖τ_i‖²: the expert itself is named
        *batch, i = (~diag_finite).nonzero()[0].tolist()
        where = f" in problem {tuple(batch)}" if batch else ""
        raise BargainInputError(
            f"K has a non-finite diagonal entry K[{i}, {i}] = {K64[(*batch, i, i)].item()}{where}: "
            f"the domain vector of expert {i} contains NaN/Inf (or its squared norm overflows). "
            "Check that expert's parameters (and the base expert) before bargaining."
        )
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        *batch, i, j = bad
        where = f" in problem {tuple(batch)}" if batch else ""
        raise BargainInputError(
            f"K has a non-finite entry K[{i}, {j}] = {K64[tuple(bad)].item()}{where}: the domain "
            f"vector of expert {i} or {j} contains NaN/Inf. Check that expert's parameters "
            "(and the base expert) before bargaining."
        )


def _check_symmetric(K64: Tensor, diag: Tensor, rtol: float, dtype: torch.dtype) -> None:
    """|K_ij − K_ji| ≤ rtol·max_i K_ii per problem; the error names the worst entry."""
    scale = diag.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    asym = (K64 - K64.transpose(-1, -2)).abs() / scale[..., None]
    if bool((asym > rtol).any()):
        bad = (asym == asym.amax()).nonzero()[0].tolist()
        *batch, i, j = bad
        where = f" in problem {tuple(batch)}" if batch else ""
        raise BargainInputError(
            f"K is not symmetric{where}: K[{i},{j}] = {K64[tuple(bad)].item():.6g} but "
            f"K[{j},{i}] = {K64[(*batch, j, i)].item():.6g} (relative gap "
            f"{asym[tuple(bad)].item():.3g} > {rtol:.3g} for {dtype}). Pass the Gram matrix "
            "GᵀG of the domain vectors, not G itself."
        )


def _check_diagonal(diag: Tensor) -> None:
    """K_ii = ‖τ_i‖² > 0: a negative one is no Gram matrix (:class:`BargainInputError`), a zero
    one a zero expert (:class:`DegenerateExpertError` with certificate e_i, S6)."""
    if bool((diag < 0).any()):
        bad = (diag < 0).nonzero()[0].tolist()
        *batch, i = bad
        raise BargainInputError(
            f"K is not positive semi-definite: K[{i},{i}] = {diag[tuple(bad)].item():.6g} < 0 "
            f"(expert {i}{' in problem ' + str(tuple(batch)) if batch else ''}). A Gram matrix "
            "has ‖τ_i‖² on its diagonal."
        )
    zero = diag <= 0
    if bool(zero.any()):
        bad = zero.nonzero()[0].tolist()
        *batch, i = bad
        cert = torch.zeros(diag.shape[-1], dtype=torch.float64)
        cert[i] = 1.0
        raise DegenerateExpertError(
            f"Expert {i} has a zero domain vector (‖τ_{i}‖ = 0: it equals the base expert"
            f"{', in problem ' + str(tuple(batch)) if batch else ''}), so its utility is 0 for "
            "every update and no bargain exists (S6). Initialise experts independently of the "
            "base expert, or use the merging layer's 'ridge' or 'uniform' policy.",
            certificate=cert,
            batch_index=tuple(batch),
        )


def _check_psd(K64: Tensor, rtol: float, dtype: torch.dtype) -> None:
    """λ_min(K̂) ≥ −rtol·max(1, λ_max(K̂)) for the unit-diagonal K̂ (K64 symmetric, diagonal > 0)."""
    Kh = normalise_gram(K64)[0]
    eig = torch.linalg.eigvalsh(Kh)  # (..., N) ascending; λ_max(K̂) ≤ N
    lam_min = eig[..., 0]
    bound = -rtol * eig[..., -1].clamp_min(1.0)
    if bool((lam_min < bound).any()):
        idx = (lam_min - bound).argmin()
        batch_idx = np.unravel_index(int(idx), lam_min.shape) if lam_min.ndim else ()
        raise BargainInputError(
            f"K is not positive semi-definite"
            f"{' in problem ' + str(tuple(int(b) for b in batch_idx)) if batch_idx else ''}: "
            f"the unit-diagonal K̂ = DKD has eigenvalue {lam_min.flatten()[idx].item():.6g} "
            f"(tolerance {bound.flatten()[idx].item():.3g} for {dtype}); some |K_ij| "
            "exceeds ‖τ_i‖‖τ_j‖. Form K as GᵀG from the domain vectors."
        )


def normalise_gram(K: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-diagonal form of K (S9 rescaling): K̂ = D K D, D = diag(K_ii^{-1/2}).

    K: (..., N, N) with positive diagonal. Returns (K̂ (..., N, N), d (..., N)) with
    α = d · α̂ mapping the solution of K̂ back to K.
    """
    d = K.diagonal(dim1=-2, dim2=-1).rsqrt()
    return d[..., :, None] * K * d[..., None, :], d


def scaled_gradient(K: Tensor, alpha: Tensor) -> Tensor:
    """α∘∇f = α∘(Kα) − 1, the gradient of f (S5) in multiplicative coordinates. → (..., N).

    Zero exactly at the bargain (S4: Kα = 1/α), and the S7 identity α_i u_i = 1 in residual
    form. Scale-free (S9): under τ_i → c_i τ_i, α_i → α_i/c_i it does not change. Newton's
    step (``newton.solve_newton``) and :func:`scaled_residual` are both built on it.
    """
    return alpha * (K @ alpha[..., None])[..., 0] - 1.0


def scaled_residual(K: Tensor, alpha: Tensor) -> Tensor:
    """Scale-free residual max_i |α_i (Kα)_i − 1| (S4, S7: α_i u_i = 1). → (...) float64.

    Invariant under τ_i → c_i τ_i, α_i → α_i / c_i (S9), so one tolerance serves all scales.
    """
    return scaled_gradient(K.to(torch.float64), alpha.to(torch.float64)).abs().amax(-1)


def residual_floor(K: Tensor, alpha: Tensor) -> Tensor:
    """Rounding level of the residual α_i(Kα)_i − 1 in float64. → (...) float64.

    eps · N · max_i α_i (|K| α)_i: the error of evaluating (Kα)_i by summation, relative to 1.
    When α̂ (unit-diagonal units) is large the terms of (K̂α̂)_i cancel to 1/α̂_i and no
    iterate can show a smaller residual than this; it grows as α̂².
    """
    n = K.shape[-1]
    eps = float(torch.finfo(torch.float64).eps)
    return eps * n * (alpha * (K.abs() @ alpha[..., None])[..., 0]).amax(-1)


def converged_mask(K: Tensor, alpha: Tensor, residual: Tensor, tol: float) -> Tensor:
    """The one convergence rule every solver uses (S4).

    Converged ⇔ residual ≤ max(tol, 8·floor) and 8·floor ≤ max(tol, 1e-6).

    K: (..., N, N), α: (..., N) in the same units (the rule is scale-free, S9); residual: (...)
    the scale-free max_i |α_i(Kα)_i − 1|. ``floor`` is :func:`residual_floor`, the rounding
    level of that residual in float64: where α̂ is large (near-infeasible problems) no
    evaluation can show a residual below it, so the threshold rises to ``ROUNDING_FACTOR``× the
    floor. Once that exceeds ``ROUNDING_CAP`` (or ``tol``, if larger) the evaluated residual no
    longer bounds the true one — it can read 1e-7 where the exact residual is 1e-3 — so the
    problem is *not* converged and the S6 linear programme decides whether a bargain exists. A
    NaN residual is never converged. → (...) bool, no host synchronisation.
    """
    floor8 = ROUNDING_FACTOR * residual_floor(K, alpha)
    certifiable = floor8 <= max(tol, ROUNDING_CAP)
    return (residual <= torch.clamp(floor8, min=tol)) & certifiable


def infeasibility_certificate(K: Tensor) -> tuple[Tensor, float]:
    """Closest-to-infeasible direction of one problem (S6): v ≥ 0, Σv = 1 with K̂v ≈ 0.

    K: (N, N) float64 PSD with positive diagonal. Solves the linear programme
    min t s.t. −t ≤ (K̂v̂)_i ≤ t, v̂ ≥ 0, Σ v̂ = 1 with HiGHS (scipy). Since Gv = 0 ⇔ Kv = 0 for
    PSD K, a bargain exists iff the optimum is > 0. Returns the certificate in the coordinates
    of K (v_i ∝ v̂_i / ‖τ_i‖, renormalised to sum 1) and its *distance*: v̂ᵀK̂v̂ = ‖Σ v̂_i τ̂_i‖²
    (τ̂_i = τ_i/‖τ_i‖) at the LP's minimiser v̂, recomputed in float64. This is not the LP's
    optimum t = ‖K̂v̂‖∞ (HiGHS's accuracy ~1e-7 is too coarse for the test ≤ CERTIFICATE_TOL);
    since Σv̂ = 1, v̂ᵀK̂v̂ ≤ ‖K̂v̂‖∞, and both are 0 exactly when the experts cancel.
    """
    from scipy.optimize import linprog  # oracle-only dependency

    Kh, d = normalise_gram(K)
    A = Kh.cpu().numpy()
    n = A.shape[0]
    # variables [v (n), t]; minimise t
    c = np.zeros(n + 1)
    c[-1] = 1.0
    ones = np.ones((n, 1))
    A_ub = np.block([[A, -ones], [-A, -ones]])
    b_ub = np.zeros(2 * n)
    A_eq = np.concatenate([np.ones((1, n)), np.zeros((1, 1))], axis=1)
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=[(0, None)] * (n + 1),
                  method="highs")
    x = res.x  # None only when the LP failed (scipy-stubs types it Optional)
    if res.status != 0 or x is None:  # pragma: no cover - HiGHS solves this bounded LP
        raise RuntimeError(f"certificate LP failed: {res.message}")
    v_hat = torch.from_numpy(np.clip(x[:n], 0.0, None))
    v_hat = v_hat / v_hat.sum()
    dist = float(v_hat @ Kh.cpu() @ v_hat)
    v = v_hat * d.cpu()
    return v / v.sum(), max(dist, 0.0)


def raise_if_infeasible(K: Tensor, batch_index: tuple[int, ...] = ()) -> float:
    """Raise :class:`InfeasibleBargainError` if problem K (N, N) has no bargain (S6).

    Returns the certificate's quality v̂ᵀK̂v̂ (> CERTIFICATE_TOL) when the bargain exists.
    """
    v, dist = infeasibility_certificate(K)
    if dist <= CERTIFICATE_TOL:
        support = [i for i, x in enumerate(v.tolist()) if x > 1e-12]
        where = f" (problem {batch_index})" if batch_index else ""
        raise InfeasibleBargainError(
            f"No Nash bargain exists{where}: experts {support} cancel out — a non-negative "
            f"combination of their normalised domain vectors is zero (‖Σ v̂_i τ̂_i‖² = {dist:.2e}), "
            "so no update improves every expert (S6). Typical cause: anti-parallel experts. "
            "Certificate v is attached as .certificate.",
            certificate=v,
            batch_index=batch_index,
            distance=dist,
        )
    return dist
