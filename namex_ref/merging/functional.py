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

from namex_ref.merging import camex, operators, plan
from namex_ref.merging.camex import *  # noqa: F403 - the facade re-exports camex.__all__
from namex_ref.merging.operators import *  # noqa: F403 - ... operators.__all__
from namex_ref.merging.plan import *  # noqa: F403 - ... plan.__all__

__all__ = [*camex.__all__, *operators.__all__, *plan.__all__]
