"""namex-ref: reference implementation of NAMEx (Nash Merging of Experts).

Equation tags (S1…S19) refer to docs/math.md. The stable public API:

- Nash core (S1–S11): :func:`solve_nash`, :func:`nash_bargain`, :class:`NashSolution`,
  :class:`InfeasibleBargainError` and friends.
- Momentum (S17–S18): :func:`complex_momentum_step`, :func:`quaternion_momentum_step`,
  :class:`MomentumConfig`; convergence tools (S19) in :mod:`namex_ref.spectral`.
- Merging layers and model (S12–S18): :class:`MergeConfig` (the method is configuration),
  :class:`MoEFeedForward`, :func:`propagate`; :class:`MoEGPT`, :class:`ModelConfig`,
  :func:`preset` ("tiny", "small", "medium").
"""

from namex_ref.merging import METHODS as MERGE_METHODS
from namex_ref.merging import MergeConfig, MoEFeedForward, propagate
from namex_ref.models import ModelConfig, MoEGPT, preset
from namex_ref.momentum import (
    MomentumConfig,
    complex_momentum_step,
    equivalent_complex_beta,
    momentum_step,
    quaternion_momentum_step,
    zero_buffer,
)
from namex_ref.nash import (
    RESIDUAL_TOL,
    SOLVERS,
    BargainInputError,
    BargainResult,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    NashSolution,
    domain_vectors,
    gram_matrix,
    nash_bargain,
    scaled_residual,
    solve_nash,
)
from namex_ref.quaternion import hamilton, left_matrix

__version__ = "0.1.0"

__all__ = [
    "MERGE_METHODS",
    "RESIDUAL_TOL",
    "SOLVERS",
    "BargainInputError",
    "BargainResult",
    "DegenerateExpertError",
    "InfeasibleBargainError",
    "MergeConfig",
    "MoEFeedForward",
    "MoEGPT",
    "ModelConfig",
    "MomentumConfig",
    "NashConvergenceError",
    "NashSolution",
    "complex_momentum_step",
    "domain_vectors",
    "equivalent_complex_beta",
    "gram_matrix",
    "hamilton",
    "left_matrix",
    "momentum_step",
    "nash_bargain",
    "preset",
    "propagate",
    "quaternion_momentum_step",
    "scaled_residual",
    "solve_nash",
    "zero_buffer",
]
