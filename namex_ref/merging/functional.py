"""Pure merging mathematics (S12–S18, docs/math.md), re-exported from the three modules that
hold it since the layout split of issue 24:

- :mod:`namex_ref.merging.operators`: the Kronecker curvature operator and the merged linear
  map (S13–S14) with their recomputing autograd functions;
- :mod:`namex_ref.merging.plan`: the bargain of one layer with its singular-bargain policy and
  the propagation of the base expert (S14–S18);
- :mod:`namex_ref.merging.camex`: the CAMEx options (gates, term dropout, masks).

Import from those modules; this one keeps ``from namex_ref.merging.functional import ...``
working for code written before the split.
"""

from __future__ import annotations

from namex_ref.merging.camex import gated_scores, masked_deltas, noisy_unit_gates, term_dropout
from namex_ref.merging.operators import kronecker_apply, merge_weights, merged_linear
from namex_ref.merging.plan import (
    UNIFORM_CANCEL_RTOL,
    ZERO_EXPERT_RTOL,
    AlphaSolve,
    LayerTerms,
    MergePlan,
    bargain_alpha,
    cosine_matrix,
    propagate,
)

__all__ = [
    "UNIFORM_CANCEL_RTOL",
    "ZERO_EXPERT_RTOL",
    "AlphaSolve",
    "LayerTerms",
    "MergePlan",
    "bargain_alpha",
    "cosine_matrix",
    "gated_scores",
    "kronecker_apply",
    "masked_deltas",
    "merge_weights",
    "merged_linear",
    "noisy_unit_gates",
    "propagate",
    "term_dropout",
]
