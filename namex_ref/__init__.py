"""namex-ref: reference implementation of NAMEx (Nash Merging of Experts).

Equation tags (S1…S19) refer to SPEC.md in the shared specification.
"""

__version__ = "0.1.0"
