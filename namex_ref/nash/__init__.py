"""The Nash bargaining core (S1–S11, docs/math.md): Gram, shared problem, five solvers."""

from namex_ref.nash.bargain import BargainResult, nash_bargain
from namex_ref.nash.gram import domain_vectors, gram_matrix
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.problem import (
    check_gram,
    infeasibility_certificate,
    scaled_gradient,
    scaled_residual,
)
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    NashSolution,
)
from namex_ref.nash.solvers import SOLVERS, solve_nash

__all__ = [
    "RESIDUAL_TOL",
    "SOLVERS",
    "BargainInputError",
    "BargainResult",
    "DegenerateExpertError",
    "InfeasibleBargainError",
    "NashConvergenceError",
    "NashSolution",
    "check_gram",
    "domain_vectors",
    "gram_matrix",
    "infeasibility_certificate",
    "nash_bargain",
    "scaled_gradient",
    "scaled_residual",
    "solve_nash",
    "solve_newton",
]
