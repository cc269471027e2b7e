"""Multi-task learning with the Nash bargain (Nash-MTL, S4–S6 of docs/math.md).

:class:`NashMTL` is a drop-in replacement for the authors' ``NashMTL`` weighting (Navon et al.,
ICML 2022) that solves α with the project's batched Newton solver (or, on request, their own
CCP iteration) and never fails silently. The three-task benchmark that compares it with equal
weighting (``namex mtl``) lives with the other benchmarks, in :mod:`namex_ref.benchmarks.mtl`.
"""

from namex_ref.mtl.nash_mtl import (
    MTL_POLICIES,
    MTL_SOLVERS,
    FailurePolicy,
    MTLSolver,
    NashMTL,
    NashMTLWarning,
    task_gram,
)

__all__ = [
    "MTL_POLICIES",
    "MTL_SOLVERS",
    "FailurePolicy",
    "MTLSolver",
    "NashMTL",
    "NashMTLWarning",
    "task_gram",
]
