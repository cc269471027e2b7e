"""Host synchronisation in the training step (benchmark 3, :mod:`namex_ref.benchmarks.step`).

On CUDA, ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``) and ``aten::nonzero`` wait for
the device. The profiler counts these operators on any device, so a CPU run finds the
Python-level syncs a GPU run would pay. Caveat: a kernel's own error check can differ between
devices (see :func:`sync_sources`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from namex_ref.merging.plan import bargain_alpha
from namex_ref.models.gpt import MoEGPT
from namex_ref.nash.newton import solve_newton

__all__ = ["SYNC_OPS", "count_sync_ops", "forward_sync_ops", "step_sync_events", "sync_sources"]

#: Operators that make the host wait for a CUDA device: reading a scalar (``.item()``,
#: ``bool(t)``, ``if t:`` all end in ``_local_scalar_dense``) and data-dependent shapes.
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def count_sync_ops(fn: Callable[[], object]) -> dict[str, int]:
    """How often each operator of :data:`SYNC_OPS` runs in ``fn()`` (torch.profiler, CPU
    activity; the same operators synchronise on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {k: 0 for k in SYNC_OPS}
    for ev in prof.key_averages():
        if ev.key in counts:
            counts[ev.key] += int(ev.count)
    return counts


def forward_sync_ops(model: MoEGPT, idx: Tensor, tgt: Tensor) -> int:
    """Host-sync operators (:data:`SYNC_OPS`) in one forward of ``model`` on (idx, tgt)."""
    return sum(count_sync_ops(lambda: model(idx, tgt)).values())


def step_sync_events(model: MoEGPT, idx: Tensor, tgt: Tensor) -> int:
    """What one training step (forward, backward, AdamW step) of a copy of ``model`` would
    make a GPU wait for or copy: device-to-host syncs plus host-to-device copies plus host
    tensors mixed into device operations, as seen by :class:`~namex_ref.devicecheck.
    DeviceTracker` on any machine (the profiler count of :func:`forward_sync_ops` sees neither
    the copies nor the backward and optimizer)."""
    import copy

    from namex_ref.devicecheck import DeviceTracker

    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-4)
    with DeviceTracker() as tracker:
        out = twin(idx, tgt)
        assert out.loss is not None
        out.loss.backward()
        opt.step()
    c = tracker.counts()
    return c["sync"] + c["h2d"] + c["setitem"] + c["mix"]


def sync_sources(device: torch.device, n: int = 4) -> list[list[str]]:
    """Sync operators of the pieces of a NAMEx bargain on ``device`` (rows of a table): one
    ``solve_newton(fixed_iterations=20)``, one ``torch.cholesky_solve`` (its Newton step), the
    same solve as two ``torch.linalg.solve_triangular`` calls, and ``bargain_alpha``."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(64, n, generator=g, dtype=torch.float64)
    K = (G.T @ G).to(device)
    L = torch.linalg.cholesky(K + torch.eye(n, dtype=K.dtype, device=device))
    r = torch.ones(n, 1, dtype=K.dtype, device=device)
    taus = [G.T.to(device=device, dtype=torch.float32)]
    pieces: dict[str, Callable[[], object]] = {
        "solve_newton(K, fixed_iterations=20)": lambda: solve_newton(K, fixed_iterations=20),
        "torch.cholesky_solve (one Newton step's solve)": lambda: torch.cholesky_solve(r, L),
        "2 × torch.linalg.solve_triangular (same solve)": lambda: torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, r, upper=False), upper=True),
        "bargain_alpha(τ, newton_iterations=20), ridge policy": lambda: bargain_alpha(taus),
    }
    rows = []
    for name, fn in pieces.items():
        c = count_sync_ops(fn)
        rows.append([name, str(c["aten::_local_scalar_dense"]), str(c["aten::nonzero"])])
    return rows
