"""Memory of one training step (benchmark 3, :mod:`namex_ref.benchmarks.step`).

- :func:`saved_tensor_bytes`: bytes of the tensors autograd saves for backward during the
  forward, parameters left out, storages counted once (exact, device independent).
- :func:`cuda_peak_mib`: ``torch.cuda.max_memory_allocated`` over one step.
- :func:`rss_growth_mib`: on CPU, the growth of a fresh process's peak RSS over two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from namex_ref.benchmarks.common import synchronize
from namex_ref.models.gpt import MoEGPT

__all__ = ["cuda_peak_mib", "rss_growth_mib", "saved_by_node", "saved_tensor_bytes"]


def saved_tensor_bytes(model: MoEGPT, idx: Tensor, tgt: Tensor) -> int:
    """Bytes autograd saves for backward in one forward of ``model`` (parameters excluded,
    storages counted once).

    The pack hook returns only the byte count, not the tensor: a hook that returned the tensor
    itself would store an output inside its own grad_fn, a reference cycle through C++ that
    Python's collector cannot free (every call would leak one forward's activations). The
    storages are held in a local dict until the forward ends (as the graph would hold them), so
    addresses are not reused while counting. The graph is not usable for backward.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, torch.UntypedStorage] = {}

    def pack(t: Tensor) -> int:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr != 0:
            seen.setdefault(ptr, st)
        return st.nbytes()

    def unpack(_: int) -> Tensor:
        raise RuntimeError("saved_tensor_bytes builds a forward graph for counting only")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = model(idx, tgt)
    del out
    total = sum(st.nbytes() for st in seen.values())
    seen.clear()
    return total


def saved_by_node(model: MoEGPT, idx: Tensor, tgt: Tensor) -> dict[str, int]:
    """Bytes saved for backward in one forward, by the autograd node that saved them (walking
    the graph from the loss; parameters excluded, each storage counted once, at the first node
    found). Their sum equals :func:`saved_tensor_bytes` for graphs whose saved tensors are all
    reachable as ``_saved_*`` attributes (built-in nodes) or ``saved_tensors`` (custom
    functions)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = model(idx, tgt)
    assert out.loss is not None
    seen: set[int] = set()
    by: dict[str, int] = {}
    stack = [out.loss.grad_fn]
    visited: set[object] = set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        found: list[object] = []
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    v = getattr(node, name)
                except (RuntimeError, AttributeError):
                    continue
                found += list(v) if isinstance(v, tuple | list) else [v]
        for t in found:
            if isinstance(t, Tensor):
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr in params or ptr == 0 or ptr in seen:
                    continue
                seen.add(ptr)
                by[node.name()] = by.get(node.name(), 0) + st.nbytes()
        stack += [nxt for nxt, _ in node.next_functions]
    return dict(sorted(by.items(), key=lambda kv: -kv[1]))


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux): VmRSS (now) or VmHWM (peak)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs); if that
    is not allowed the peak keeps the model-building peak, which only lowers the growth."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def rss_growth_mib(preset_name: str, method: str, batch: int, seq: int,
                   **merge_overrides: object) -> float:
    """In a fresh process: MiB of peak-RSS growth over two training steps, VmHWM after the steps
    minus VmRSS before them (``ru_maxrss`` is not used: Linux carries the parent's peak across
    fork/exec, so a child of a large process would report no growth). ``merge_overrides``:
    MergeConfig fields (str/int/float values, e.g. ``merge_memory``, ``segment_len``)."""
    code = (
        "import json, torch\n"
        "from namex_ref.benchmarks.memory import _reset_peak_rss, _status_kib\n"
        "from namex_ref.benchmarks.step import StepShape, _build\n"
        "from namex_ref.models.gpt import preset\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"cfg = preset({preset_name!r}, {method!r}, **{merge_overrides!r})\n"
        f"model, step = _build(cfg, StepShape({preset_name!r}, 'cpu', {batch}, {seq}))\n"
        "r0 = _status_kib('VmRSS')\n"
        "_reset_peak_rss()\n"
        "step(); step()\n"
        "r1 = _status_kib('VmHWM')\n"
        "print(json.dumps(max(r1 - r0, 0) / 1024))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(json.loads(res.stdout.strip().splitlines()[-1]))


def cuda_peak_mib(step: Callable[[], None], dev: torch.device) -> float:
    """MiB of ``torch.cuda.max_memory_allocated`` over one call of ``step`` on ``dev``."""
    synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) / 2**20
