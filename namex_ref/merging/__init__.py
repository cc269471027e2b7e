"""Expert-merging MoE layers (docs/math.md §3, S12–S18): one layer configured by method."""

from namex_ref.merging.config import CAMEX_PAPER, METHOD_TABLE, METHODS, MergeConfig, MethodSpec
from namex_ref.merging.layers import KroneckerCurvature, MoEFeedForward
from namex_ref.merging.operators import kronecker_apply, merge_weights
from namex_ref.merging.plan import AlphaSolve, LayerTerms, MergePlan, bargain_alpha, propagate

__all__ = [
    "CAMEX_PAPER",
    "METHODS",
    "METHOD_TABLE",
    "AlphaSolve",
    "KroneckerCurvature",
    "LayerTerms",
    "MergeConfig",
    "MergePlan",
    "MethodSpec",
    "MoEFeedForward",
    "bargain_alpha",
    "kronecker_apply",
    "merge_weights",
    "propagate",
]
