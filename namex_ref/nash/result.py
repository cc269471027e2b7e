"""Solver result records and the errors of the bargaining core (S4–S7, docs/math.md).

Every solver returns one :class:`NashSolution` (a frozen record, as scipy's ``OptimizeResult``
but visible to mypy). Failure is always visible: ``converged`` is ``False`` with a residual, or
an :class:`InfeasibleBargainError` carries a certificate (S6). No solver returns NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "BargainInputError",
    "DegenerateExpertError",
    "InfeasibleBargainError",
    "NashConvergenceError",
    "NashSolution",
]


@dataclass(frozen=True)
class NashSolution:
    """Solution of Kα = 1/α (S4); the batch shape (...) follows ``K[..., N, N]``.

    Attributes:
        alpha: (..., N) float64, every entry > 0 and finite.
        residual: (...,) float64, the scale-free residual max_i |α_i (Kα)_i − 1| (S7: α_i u_i = 1).
        converged: (...,) bool, ``residual <= tol`` for Newton/closed form/cvxpy/primal; for
            ``ccp`` it is the baseline's own stopping rule (see ``solve_ccp``).
        iterations: iterations (Newton steps, CCP convex solves) used; 0 for closed form.
        method: the solver's name.
        status: a short human-readable status ("converged", "max_iter", "optimal_inaccurate", …).
        history: (iterations, ...) float64 residual after every iteration, or ``None``.
        certificate: (..., N) v ≥ 0, Σv = 1 with Gv ≈ 0 when a problem has no bargain (S6),
            else ``None``. Solvers raise :class:`InfeasibleBargainError` instead of returning a
            certificate, except in the no-synchronisation mode used inside training loops.
    """

    alpha: Tensor
    residual: Tensor
    converged: Tensor
    iterations: int
    method: str
    status: str = "converged"
    history: Tensor | None = None
    certificate: Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """True when every problem of the batch converged (one host synchronisation)."""
        return bool(self.converged.all())


class BargainInputError(ValueError):
    """The input is not a valid bargaining problem (shape, dtype, NaN/Inf, asymmetry, non-PSD)."""


class InfeasibleBargainError(ValueError):
    """No Nash bargain exists (S6): some v ≥ 0, v ≠ 0 has Gv = 0.

    Equivalently 0 lies in the convex cone of the domain vectors τ_i, so no update ΔE gives every
    expert a positive utility, and f(α) = ½αᵀKα − Σ log α_i is unbounded below along v.

    Attributes:
        certificate: (N,) float64 tensor v ≥ 0 with Σ v = 1 and ‖Gv‖ ≈ 0 (in units of the
            expert norms: Σ_i v_i τ_i / ‖τ_i‖ ≈ 0 is what is checked), for the first failing
            problem of a batch.
        batch_index: index of that problem in the batch (``()`` when unbatched).
        distance: ‖Σ_i v̂_i τ̂_i‖² = v̂ᵀK̂v̂ for the unit-normalised experts τ̂_i = τ_i/‖τ_i‖,
            evaluated in float64 at the simplex point v̂ that minimises ‖K̂v‖_∞ (the S6 LP of
            ``problem.infeasibility_certificate``); 0 means exactly infeasible, and the LP
            path declares infeasibility at ≤ ``CERTIFICATE_TOL`` (1e-9). The closed form
            (N = 2, v̂ = (½, ½)) reports the same quantity, (1 + ρ)/2.
    """

    def __init__(
        self,
        message: str,
        certificate: Tensor,
        batch_index: tuple[int, ...] = (),
        distance: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.certificate = certificate
        self.batch_index = batch_index
        self.distance = distance


class DegenerateExpertError(InfeasibleBargainError):
    """An expert equals the base expert (τ_i = 0): its utility is 0 for every update (S6).

    The certificate is the unit vector e_i. Initialise experts independently of the base expert,
    or choose an explicit policy for singular bargains in the merging layer (ridge or uniform).
    """


class NashConvergenceError(RuntimeError):
    """A solver stopped before reaching its tolerance on a bargain that does exist."""
