"""Launch profile of a training step (namex_ref.benchmarks.launches, namex_ref.regions).

Operator counts are not timings: they depend on the code path only, so the targets of issue 25
part 3 (NAMEx-Full within 10 % of EP-CAMEx's launches, NAMEx within 3 %) are unit tests here,
on the tiny preset and the GPU code path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch
from torch.profiler import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode

from namex_ref import regions
from namex_ref.benchmarks import launches
from namex_ref.benchmarks.launches import LaunchCount, count_step
from namex_ref.benchmarks.step import make_step
from namex_ref.devicecheck import DeviceTracker
from namex_ref.models.gpt import MoEGPT, preset

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@functools.cache
def _count(method: str) -> LaunchCount:
    return count_step("tiny", method)


# --- regions ------------------------------------------------------------------------------


def test_region_is_one_shared_null_context_when_not_tracking() -> None:
    assert regions.region(regions.GRAM) is regions.region(regions.MERGE)
    assert regions.current() == regions.MODEL


def test_tracking_stack_entries_and_no_nesting() -> None:
    with regions.tracking() as state:
        with regions.region("a"):
            assert regions.current() == "a"
            with regions.region("b"):
                assert state.stack == ["a", "b"]
            with regions.region("b"):
                pass
        assert state.stack == []
        assert state.entries == {"a": 1, "b": 2}
        with pytest.raises(RuntimeError, match="does not nest"):
            with regions.tracking():
                pass
    assert regions.current() == regions.MODEL  # off again


def test_region_of_traces_backward_nodes_to_their_forward_region() -> None:
    """Nodes made in a region map back to it, whatever region is open later."""
    x = torch.randn(3, requires_grad=True)
    with regions.tracking() as state:
        y = x * 2.0  # MODEL
        with regions.region("a"):
            z = y.sin()
            with regions.region("b"):
                w = z.exp()
            v = w.cos()  # back in "a"
        u = v.sum()  # MODEL again
    got = [state.region_of(t.grad_fn._sequence_nr()) for t in (y, z, w, v, u)]  # type: ignore[union-attr]
    assert got == [regions.MODEL, "a", "b", "a", regions.MODEL]


# --- counts -------------------------------------------------------------------------------


class _PlainCount(TorchDispatchMode):
    """The oracle of the totals: every ATen call, no regions, no attribution."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.n += 1
        return func(*args, **(kwargs or {}))


def _plain_total(method: str) -> int:
    """One step counted independently of launches.count_step's harness (same recipe: warm-up
    step, AdamW foreach, the GPU path), by a bare dispatch counter."""
    torch.manual_seed(0)
    model = MoEGPT(preset("tiny", method))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (2, 64), generator=g)
    tgt = torch.randint(0, model.config.vocab_size, (2, 64), generator=g)

    step = make_step(model, opt, idx, tgt)
    step()
    with DeviceTracker(), _PlainCount() as c:
        step()
    return c.n


@pytest.mark.parametrize("method", ["smoe", "namex-full"])
def test_regions_add_up_to_an_independent_total(method: str) -> None:
    assert _count(method).total == _plain_total(method)


def test_counts_are_deterministic_and_bargains_counted() -> None:
    assert count_step("tiny", "namex").calls == _count("namex").calls
    assert [_count(m).bargains for m in ("ep-camex", "namex", "namex-full")] == [0, 1, 4]
    smoe = _count("smoe").calls
    for r in (regions.GRAM, regions.BARGAIN, regions.CURVATURE, regions.MOMENTUM):
        assert smoe.get(r, 0) == 0, r
    full = _count("namex-full")
    assert full.calls[regions.BARGAIN] > 1000  # the eager solver, on the stand-in device
    assert full.fused == full.total - full.calls[regions.BARGAIN] + 4


#: Launch targets of issue 25 part 3 on the tiny preset (every ATen call, each bargain one
#: fused launch), as ratios to EP-CAMEx's calls: the issue's step-time targets (NAMEx ≤ 1.03×,
#: NAMEx-Full ≤ 1.10×; NAMEx-Full-Mom held to NAMEx-Full's) on the launch-bound proxy.
TARGETS = {"namex": 1.03, "namex-full": 1.10, "namex-full-mom": 1.10}
#: What the trims of the merge plan reached (1.009 / 1.020 / 1.030 / 1.037 at the time), with
#: about half a percent of slack: a change that adds per-layer work to the plan shows here.
GUARDS = {"namex": 1.015, "namex-full": 1.025, "namex-full-mom": 1.035, "namex-q": 1.042}


@pytest.mark.parametrize("method", sorted(GUARDS))
def test_launch_targets_and_guards(method: str) -> None:
    ratio = _count(method).fused / _count("ep-camex").fused
    assert ratio <= TARGETS.get(method, math.inf), f"{method}: {ratio:.3f}× EP-CAMEx's calls"
    assert ratio <= GUARDS[method], f"{method}: {ratio:.3f}× EP-CAMEx's calls (regression)"


def test_launch_rows_ratios() -> None:
    counts = [_count(m) for m in ("ep-camex", "namex-full")]
    header, rows = launches.launch_rows(counts)
    assert header == ["region", "ep-camex", "namex-full"]
    table = {r[0]: r[1:] for r in rows}
    assert table["× EP-CAMEx (fused)"][0] == "1.000"
    want = counts[1].fused / counts[0].fused
    assert table["× EP-CAMEx (fused)"][1] == f"{want:.3f}"
    assert sum(int(r[2]) for r in rows[:-5]) == counts[1].total


# --- CUDA time per region -----------------------------------------------------------------


@dataclass
class _Ev:
    """A stand-in for torch.profiler's FunctionEvent (the fields region_device_times reads)."""

    name: str
    device_time_total: float
    thread: int = 1
    cpu_children: list[_Ev] = field(default_factory=list)
    cpu_parent: _Ev | None = None
    device_type: DeviceType = DeviceType.CPU


def _tree(ev: _Ev, children: Sequence[_Ev]) -> _Ev:
    for c in children:
        c.cpu_parent = ev
        ev.cpu_children.append(c)
    return ev


def test_region_device_times_attributes_own_time_to_the_innermost_range() -> None:
    mm = _Ev("aten::mm", 3000.0)
    inner = _tree(_Ev("namex::b", 1000.0), [_Ev("aten::add", 1000.0)])
    outer = _tree(_Ev("namex::a", 4000.0), [mm, inner])
    loose = _Ev("aten::cat", 500.0)  # main thread, outside every range
    bwd = _tree(_Ev("autograd::engine", 2000.0, thread=2), [_Ev("aten::mul", 2000.0, thread=2)])
    annotation = _Ev("namex::a", 4000.0, device_type=DeviceType.CUDA)
    events = [outer, mm, inner, *inner.cpu_children, loose, bwd, *bwd.cpu_children, annotation]
    got = launches.region_device_times(events)
    assert got == pytest.approx({"a": 3.0, "b": 1.0, regions.MODEL: 0.5,
                                 launches.BACKWARD: 2.0})


@pytest.mark.gpu
@needs_cuda
def test_cuda_region_ms_measures_every_merge_region() -> None:
    ms = launches.cuda_region_ms("tiny", "namex-full", batch=2, seq=64,
                                 device=torch.device("cuda"))
    for r in (regions.GRAM, regions.BARGAIN, regions.MERGE, launches.BACKWARD):
        assert ms.get(r, 0.0) > 0.0, r
    assert all(v >= 0.0 for v in ms.values())
