"""Where a training step goes: operator launches per region on the GPU code path (issue 25, part 3).

On a GPU a small model's training step is launch-bound: the time is the number of kernels, not
their arithmetic. This module counts, on any machine, the ATen operators one training step
(forward, backward, AdamW) dispatches on the *GPU code path*, split by region of the model
(:mod:`namex_ref.regions`); each non-view operator is about one kernel launch on CUDA.

How the count is taken (:func:`count_step`):

- The model runs under :class:`~namex_ref.devicecheck.DeviceTracker`, whose stand-in device
  makes every ``device.type``/``fused_available`` test take the branch a GPU takes (the dense
  top-k of SMoE, the eager bargain instead of the numba kernel). The Gram is the one exception:
  ``gram_matrix`` picks its CUDA kernels by ``device.type == "cuda"``, so the count is its CPU
  path's (one GEMM per matrix either way).
- AdamW runs with ``foreach=True`` (torch's default for CUDA parameters), after one warm-up step,
  so its state exists as in every later step.
- A :class:`~torch.utils._python_dispatch.TorchDispatchMode` counts every ATen call under the
  innermost open region. Backward operators are attributed to the region whose forward created
  the autograd node they run in (by the node's sequence number, :meth:`regions.Tracking.
  region_of`); the gradient accumulation into ``.grad`` and the engine's seed have rows of
  their own.
- The eager bargain (everything ``bargain_alpha`` runs after the Gram) is one launch of the fused
  Triton kernel on CUDA (:mod:`namex_ref.nash.fused_gpu`): the "fused" totals count it as 1 per
  bargain.

On CUDA, :func:`cuda_region_ms` also measures device time per region with ``torch.profiler``
(each region is a ``record_function`` range; backward runs on the autograd thread, outside the
ranges, and is one row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.profiler import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode

from namex_ref import regions
from namex_ref.devicecheck import DeviceTracker
from namex_ref.models.gpt import MoEGPT, preset
from namex_ref.tables import format_table

__all__ = [
    "BACKWARD",
    "LAUNCH_METHODS",
    "OPTIMIZER",
    "LaunchCount",
    "count_step",
    "cuda_region_ms",
    "launch_markdown",
    "launch_rows",
    "region_device_times",
]

#: Methods of the launch table (SMoE and EP-CAMEx are the references).
LAUNCH_METHODS = ("smoe", "ep-camex", "namex", "namex-full", "namex-full-mom", "namex-q")
#: Region of the optimizer step in the harness.
OPTIMIZER = "optimizer (AdamW, foreach)"
#: How to read the launch tables (printed above them by ``namex bench step``).
LAUNCH_NOTE = (
    "One training step (forward, backward, AdamW with foreach=True as on CUDA, after a warm-up "
    "step; batch 2 × two routing segments) counted as ATen calls on the GPU code path, under "
    "namex_ref.devicecheck's stand-in device, by region of the model (namex_ref.regions). "
    "Backward calls go to the region whose forward made their autograd node. A launch-bound GPU "
    "pays about one kernel launch per non-view call (views cost host time only). The bargain "
    "after the Gram is the eager solver here; on CUDA it is one launch of the fused Triton "
    "kernel (namex_ref.nash.fused_gpu), and the fused totals count it so. The Gram is counted "
    "on its CPU path (on CUDA, namex_ref.nash.gram_cuda: one GEMM per matrix as here). Counts, "
    "not timings: deterministic, and tests/test_bench_launches.py holds the ratio targets. "
    "CUDA ms per region: measured only where a GPU is lent.")
#: Region of ``loss.backward()`` in the harness; backward calls go to "backward: <region>".
BACKWARD = "backward"
ACCUMULATE = "backward: accumulate into .grad"
_PREFIX = "namex::"


@dataclass(frozen=True)
class LaunchCount:
    """ATen calls of one training step per region (``calls``; ``views`` the view/alias calls
    among them, which launch no kernel) and the number of bargains solved."""

    preset: str
    method: str
    calls: dict[str, int]
    views: dict[str, int]
    bargains: int

    @property
    def total(self) -> int:
        """Every ATen call of the step, the bargain eager."""
        return sum(self.calls.values())

    @property
    def rest(self) -> int:
        """Every call outside the bargain (the Gram included)."""
        return self.total - self.calls.get(regions.BARGAIN, 0)

    @property
    def fused(self) -> int:
        """Calls with each bargain one launch of the fused GPU kernel."""
        return self.rest + self.bargains


class _Counter(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's untyped hook
    """Counts ATen calls per region (and the view calls among them); a backward call goes to
    the region its autograd node was made in (``state``'s sequence-number marks)."""

    def __init__(self, state: regions.Tracking) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.state = state
        self.calls: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        node = torch._C._current_autograd_node()
        if node is None:
            where = regions.current()
        elif "AccumulateGrad" in node.name():
            where = ACCUMULATE
        else:
            where = f"{BACKWARD}: {self.state.region_of(node._sequence_nr())}"
        self.calls[where] += 1
        if getattr(func, "is_view", False):
            self.views[where] += 1
        return func(*args, **(kwargs or {}))


def _batch(model: MoEGPT, batch: int, seq: int, seed: int) -> tuple[Tensor, Tensor]:
    dev = model.tok.weight.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    tgt = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    return idx.to(dev), tgt.to(dev)


def _step(model: MoEGPT, opt: torch.optim.Optimizer, idx: Tensor, tgt: Tensor) -> None:
    """One training step with the harness's regions (backward, optimizer)."""
    out = model(idx, tgt)
    assert out.loss is not None
    with regions.region(BACKWARD):
        out.loss.backward()
    with regions.region(OPTIMIZER):
        opt.step()
    opt.zero_grad(set_to_none=True)


def count_step(preset_name: str, method: str, *, batch: int = 2, seq: int | None = None,
               seed: int = 0) -> LaunchCount:
    """ATen calls per region of one training step of ``method`` at ``preset_name`` on the GPU
    code path (module doc). ``seq`` defaults to two routing segments. Deterministic: the
    count depends on the code path, not on timing (nor, for these models, on the values)."""
    cfg = preset(preset_name, method)
    seq = seq if seq is not None else min(2 * cfg.merge.segment_len, cfg.seq_len)
    torch.manual_seed(seed)
    model = MoEGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    idx, tgt = _batch(model, batch, seq, seed)
    _step(model, opt, idx, tgt)  # warm-up: AdamW's state exists, as in every later step
    with DeviceTracker(), regions.tracking() as state, _Counter(state) as counter:
        _step(model, opt, idx, tgt)
    return LaunchCount(preset_name, method, dict(counter.calls), dict(counter.views),
                       state.entries[regions.BARGAIN])


# ------------------------------------------------------------------------------------------
# CUDA: device time per region
# ------------------------------------------------------------------------------------------


class ProfilerEvent(Protocol):
    """What :func:`region_device_times` reads of a ``torch.autograd.profiler_util.
    FunctionEvent``: its name, thread, device time in µs (itself and its children) and its
    children on the host."""

    @property
    def name(self) -> str: ...

    @property
    def thread(self) -> int: ...

    @property
    def device_time_total(self) -> float: ...

    @property
    def cpu_children(self) -> Sequence[ProfilerEvent]: ...

    @property
    def cpu_parent(self) -> ProfilerEvent | None: ...

    @property
    def device_type(self) -> DeviceType: ...


def region_device_times(events: Sequence[ProfilerEvent]) -> dict[str, float]:
    """Device time (ms) per region: each event's own device time (its total minus its
    children's) goes to the innermost ``namex::<region>`` range around it. Events on another
    thread than the ranges (the autograd engine's, on CUDA) go to :data:`BACKWARD`; events
    outside every range on the ranges' thread go to :data:`regions.MODEL`. Only host-side
    events are walked (their device time includes their kernels'); the device-side copies of
    the ranges (``gpu_user_annotation``) would count each range twice."""
    events = [e for e in events if e.device_type == DeviceType.CPU]
    marked = [e for e in events if e.name.startswith(_PREFIX)]
    main = marked[0].thread if marked else None
    out: dict[str, float] = {}

    def visit(ev: ProfilerEvent, label: str) -> None:
        if ev.name.startswith(_PREFIX):
            label = ev.name[len(_PREFIX):]
        own = ev.device_time_total - sum(c.device_time_total for c in ev.cpu_children)
        out[label] = out.get(label, 0.0) + own / 1e3
        for child in ev.cpu_children:
            visit(child, label)

    for ev in events:
        if ev.cpu_parent is None:
            visit(ev, regions.MODEL if ev.thread == main else BACKWARD)
    return {k: v for k, v in out.items() if v > 0.0}


def cuda_region_ms(preset_name: str, method: str, *, batch: int, seq: int,
                   device: torch.device, seed: int = 0) -> dict[str, float]:
    """Measured CUDA time (ms) per region of one training step (after two warm-up steps),
    from ``torch.profiler`` with every region a ``record_function`` range."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        raise ValueError(f"cuda_region_ms measures CUDA time; got device {device}")
    torch.manual_seed(seed)
    model = MoEGPT(preset(preset_name, method)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx, tgt = _batch(model, batch, seq, seed)
    for _ in range(2):
        _step(model, opt, idx, tgt)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, \
            regions.tracking(record=True):
        _step(model, opt, idx, tgt)
        torch.cuda.synchronize(device)
    return region_device_times(list(prof.events()))


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _row_order(counts: Sequence[LaunchCount]) -> list[str]:
    """Regions in table order (forward, optimizer, backward by forward region), non-empty."""
    order = [*regions.REGIONS, OPTIMIZER,
             *(f"{BACKWARD}: {r}" for r in regions.REGIONS), ACCUMULATE, BACKWARD]
    seen = {k for c in counts for k, v in c.calls.items() if v}
    return [r for r in order if r in seen] + sorted(seen - set(order))


def launch_rows(counts: Sequence[LaunchCount]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the launch table: ATen calls per region and method, then the totals
    and their ratios to EP-CAMEx (which must be among ``counts``)."""
    by = {c.method: c for c in counts}
    ref = by["ep-camex"]
    header = ["region", *(c.method for c in counts)]
    rows = []
    for r in _row_order(counts):
        label = {regions.BARGAIN: f"{r} (fused GPU kernel: 1 per bargain)",
                 BACKWARD: "backward: engine (loss seed)"}.get(r, r)
        rows.append([label, *(str(c.calls.get(r, 0)) for c in counts)])

    def kernels(c: LaunchCount) -> int:  # non-view calls, the bargain fused
        return c.fused - (sum(c.views.values()) - c.views.get(regions.BARGAIN, 0))

    rows += [
        ["**total, bargain eager**", *(str(c.total) for c in counts)],
        ["**total, bargain fused** (1 launch per bargain)", *(str(c.fused) for c in counts)],
        ["× EP-CAMEx (fused)", *(f"{c.fused / ref.fused:.3f}" for c in counts)],
        ["non-view calls (≈ kernel launches), bargain fused", *(str(kernels(c)) for c in counts)],
        ["× EP-CAMEx (non-view, fused)", *(f"{kernels(c) / kernels(ref):.3f}" for c in counts)],
    ]
    return header, rows


def launch_markdown(presets: Sequence[str], methods: Sequence[str] = LAUNCH_METHODS, *,
                    cuda: Sequence[tuple[str, int, int]] = ()) -> str:
    """The "where the step goes" section of ``namex bench step``: one launch table per preset
    (:func:`count_step`, every method counted in the same run), and, for each (preset, batch,
    seq) in ``cuda``, the measured CUDA ms per region (:func:`cuda_region_ms`)."""
    parts = []
    for name in presets:
        counts = [count_step(name, m) for m in methods]
        header, rows = launch_rows(counts)
        parts += [f"### {name}: ATen calls per training step by region, GPU code path", "",
                  format_table(header, rows), ""]
    for name, batch, seq in cuda:
        dev = torch.device("cuda")
        ms = {m: cuda_region_ms(name, m, batch=batch, seq=seq, device=dev) for m in methods}
        keys = sorted({k for v in ms.values() for k in v})
        ref = sum(ms["ep-camex"].values())
        rows = [[k, *(f"{ms[m].get(k, 0.0):.3f}" for m in methods)] for k in keys]
        rows += [["total", *(f"{sum(ms[m].values()):.3f}" for m in methods)],
                 ["× EP-CAMEx", *(f"{sum(ms[m].values()) / ref:.3f}" for m in methods)]]
        parts += [f"### {name} (cuda, {batch}×{seq}): CUDA ms per region, one step "
                  "(torch.profiler)", "", format_table(["region", *methods], rows), ""]
    return "\n".join(parts)
