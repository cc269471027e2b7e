"""Named regions of a training step, for the launch profile of ``namex bench step``.

A few call sites of the model (routing, the merge plan's Gram, bargain, curvature, momentum, the
merge of the experts, the expert FFN) enter :func:`region` with one of the names below. When no
profile is being taken, :func:`region` returns one shared ``nullcontext`` and records nothing
(one global read per call site, no allocation, no tensor operation). Inside :func:`tracking` the
names form a stack that :mod:`namex_ref.benchmarks.launches` reads to attribute each operator
to the innermost region; each change of region is marked with autograd's sequence number at
that moment, so a backward node can be traced to the region whose forward created it
(:meth:`Tracking.region_of`); with ``record=True`` each region is also a
``torch.profiler.record_function`` range (for device time per region on CUDA).

The module imports nothing from namex_ref, so every layer of the package may use it.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "BARGAIN",
    "CURVATURE",
    "FFN",
    "GRAM",
    "MERGE",
    "MODEL",
    "MOMENTUM",
    "PROPAGATION",
    "REGIONS",
    "ROUTER",
    "Tracking",
    "current",
    "region",
    "tracking",
]

#: The routers' scores, gates and balance losses (S12, S13).
ROUTER = "router and gates"
#: K = Σ_m τ_m τ_mᵀ of a bargain (S1–S2).
GRAM = "Gram (S1-S2)"
#: Everything ``bargain_alpha`` runs after the Gram (S4–S5): one fused launch on CUDA.
BARGAIN = "bargain (S4-S5, after the Gram)"
#: The Kronecker curvature operators M_i(τ_i) (S14).
CURVATURE = "curvature M_i (S14)"
#: The merge plan around the other regions: τ = E − E_m, ΔE, the base chain, observables.
PROPAGATION = "propagation chain (S15-S16)"
#: The base expert's update with its momentum buffer (S16–S18).
MOMENTUM = "momentum step (S17-S18)"
#: Forming the merged weights Ê = E_m + η Σ_i s_i D_i (S13–S14).
MERGE = "merge of experts (S13-S14)"
#: The MoE layer outside routing and merging: the merged (or top-k) expert MLP.
FFN = "expert FFN"
#: Outside every region: attention, embeddings, layer norms, the loss.
MODEL = "attention, embeddings, norms, loss"
#: Every region name, in the order the launch table lists them.
REGIONS = (ROUTER, GRAM, BARGAIN, CURVATURE, PROPAGATION, MOMENTUM, MERGE, FFN, MODEL)



@dataclass
class Tracking:
    """The live state of :func:`tracking`: the stack of open regions (innermost last), how
    often each region was entered, and ``marks``: (autograd sequence number, region in force
    from then on) at every change of region, in order."""

    stack: list[str] = field(default_factory=list)
    entries: Counter[str] = field(default_factory=Counter)
    marks: list[tuple[int, str]] = field(default_factory=list)

    def mark(self) -> None:
        """Record the region in force from autograd's next sequence number on."""
        self.marks.append((_next_sequence_nr(), current()))

    def region_of(self, sequence_nr: int) -> str:
        """The region in force when the autograd node numbered ``sequence_nr`` was made
        (``node._sequence_nr()``), :data:`MODEL` before the first mark."""
        i = bisect.bisect_right(self.marks, sequence_nr, key=lambda m: m[0])
        return self.marks[i - 1][1] if i else MODEL


def _next_sequence_nr() -> int:
    """The sequence number autograd gives the next node made on this thread."""
    return int(torch._C._autograd._get_sequence_nr())


_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
#: The live state while :func:`tracking` is on; None otherwise (the fast path).
_STATE: Tracking | None = None
_RECORD = False


class _Region:
    """One open region: pushed on enter, popped on exit (and a profiler range when recording)."""

    __slots__ = ("_name", "_range")

    def __init__(self, name: str) -> None:
        self._name = name
        self._range: Any = None

    def __enter__(self) -> None:
        if _STATE is not None:
            _STATE.stack.append(self._name)
            _STATE.entries[self._name] += 1
            _STATE.mark()
        if _RECORD:
            self._range = torch.profiler.record_function(f"namex::{self._name}")
            self._range.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._range is not None:
            self._range.__exit__(*exc)
        if _STATE is not None and _STATE.stack and _STATE.stack[-1] == self._name:
            _STATE.stack.pop()
            _STATE.mark()


def region(name: str) -> contextlib.AbstractContextManager[None]:
    """Context manager naming the operators run inside it ``name`` (innermost region wins).

    A shared ``nullcontext`` while no profile is taken (:func:`tracking` off)."""
    if _STATE is None:
        return _NULL
    return _Region(name)


def current(default: str = MODEL) -> str:
    """The innermost open region, or ``default`` (outside every region, or tracking off)."""
    return _STATE.stack[-1] if _STATE is not None and _STATE.stack else default


@contextlib.contextmanager
def tracking(*, record: bool = False) -> Iterator[Tracking]:
    """Turn regions on for the ``with`` block; yields the live :class:`Tracking`. ``record``:
    also open a ``torch.profiler.record_function`` range named ``namex::<region>`` per region.
    Not re-entrant: a nested ``tracking`` is a RuntimeError."""
    global _STATE, _RECORD
    if _STATE is not None:
        raise RuntimeError("regions.tracking is already on; it does not nest")
    _STATE, _RECORD = Tracking(), record
    _STATE.mark()
    try:
        yield _STATE
    finally:
        _STATE, _RECORD = None, False
