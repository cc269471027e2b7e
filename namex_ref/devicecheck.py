"""Device-placement and host-sync detector that runs on a CPU-only machine.

On a CPU every tensor lives in the same memory, so a CPU test cannot see the bugs that only a
GPU run meets: a tensor made on the host and mixed with device tensors ("Expected all tensors to
be on the same device"), a host-to-device copy inside a CUDA-graph capture, a device-to-host
synchronisation in the training step. :class:`DeviceTracker` finds them anyway. It is a
:class:`torch.overrides.TorchFunctionMode` that keeps, beside the real (CPU) computation, a
shadow placement of every tensor: *host* or *device*, as it would be on a GPU machine.

Rules of the shadow placement:

- A tensor the mode has not seen being made (model parameters, their gradients, batches handed
  in, anything built before the ``with``) is a *device* tensor. Its ``.device`` reads ``cpu:0``
  inside the mode, a real CPU device that compares unequal to the host's plain ``cpu``.
- A factory call (``torch.zeros``, ``full``, ``arange``, ``tensor``, ``randn``, …) makes a device
  tensor only when its ``device=`` is ``cpu:0`` (read from a device tensor, or
  :meth:`DeviceTracker.device`, what a training loop resolves ``--device cuda`` to) or a CUDA
  device. Any other factory call, ``from_numpy``, ``.cpu()`` and ``.to("cpu")`` make host
  tensors. ``*_like`` and ``new_*`` follow their tensor.
- Any other operation's result is on the device if one of its tensor inputs is, else on the host.

Events (each with the innermost ``namex_ref`` frame, or the innermost frame outside torch):

- ``mix``: one operation takes device tensors and host tensors. A host 0-dim tensor in an
  element-wise operation is allowed (CUDA passes CPU scalars by value).
- ``h2d``: a host-to-device copy: ``torch.tensor(data, device=dev)``, ``host.to(dev)``, a host
  tensor indexed into or written into a device tensor. A CUDA-graph capture refuses these.
- ``setitem``: a Python number written into a device tensor by index (``t[i] = 1.0``): a
  host-to-device copy too.
- ``sync``: the host waits for the device: ``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``,
  ``nonzero``, boolean-mask indexing and the other data-dependent shapes.

An :data:`ALLOWLIST` entry names a (file, function) pair whose events of one kind are expected,
with its reason. Use :func:`check_placement` in tests: it raises :class:`DevicePlacementError`
listing every event that is neither allowed nor expected.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = [
    "ALLOWLIST",
    "DevicePlacementError",
    "DeviceTracker",
    "Event",
    "check_placement",
]

#: (path part, function, kind) → reason. An event whose file path contains the part, in that
#: function ("*": any), of that kind, is recorded as allowed.
ALLOWLIST: dict[tuple[str, str, str], str] = {
    ("namex_ref/train/", "_to_device", "h2d"): (
        "each step's batch is gathered on the host and copied to the device once "
        "(non_blocking, from pinned memory on CUDA): the data loader's one copy per step"
    ),
}
#: The stand-in for the GPU (see :meth:`DeviceTracker.device`).
_MARKER = "cpu:0"

_FACTORIES = frozenset({
    "tensor", "as_tensor", "asarray", "zeros", "ones", "empty", "full", "arange", "range",
    "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm", "normal",
    "empty_strided", "scalar_tensor", "tril_indices", "triu_indices", "bartlett_window",
    "hann_window", "hamming_window", "blackman_window", "kaiser_window",
})
_FROM_DATA = frozenset({"tensor", "as_tensor", "asarray"})
_LIKE = frozenset({
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like",
})
_NEW = frozenset({"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"})
_SYNC_METHODS = frozenset({
    "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose",
    "bincount", "histc", "__array__",
})
_SCALAR_OK = frozenset({
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow",
    "where", "clamp", "clip", "maximum", "minimum", "fmax", "fmin", "lt", "le", "gt", "ge", "eq",
    "ne", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "atan2",
    "copysign", "lerp", "addcmul", "addcdiv", "rsub", "xlogy", "hypot", "nextafter",
    "masked_fill", "fill", "fill_", "isclose",
})


@dataclass(frozen=True)
class Event:
    """One placement event: ``kind`` ∈ {mix, h2d, setitem, sync}, the operation, where."""

    kind: str
    op: str
    where: str  # "path:line in function"
    file: str
    function: str
    allowed: str | None = None  # the allowlist's reason, if any

    def __str__(self) -> str:
        tag = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.kind}: {self.op} at {self.where}{tag}"


class DevicePlacementError(AssertionError):
    """Placement or sync events that a GPU run would fail on or pay for."""


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = f"{getattr(owner, '__name__', 'attr')}.__get__"
    return str(name)


def _base(name: str) -> str:
    return name.strip("_") if name.startswith("__") else name.rstrip("_")


def _caller() -> tuple[str, int, str]:
    """Innermost frame in namex_ref (else the innermost outside torch and this module)."""
    outside = None
    for fr in reversed(traceback.extract_stack()):
        fname = fr.filename.replace("\\", "/")
        if fname.endswith("namex_ref/devicecheck.py"):
            continue
        if "/namex_ref/" in fname:
            return fname, fr.lineno or 0, fr.name
        if outside is None and "/torch/" not in fname:
            outside = (fname, fr.lineno or 0, fr.name)
    return outside or ("?", 0, "?")


@dataclass
class DeviceTracker(TorchFunctionMode):
    """Shadow host/device placement of every tensor made in a ``with`` block (module doc).

    ``events`` lists every event in order; :meth:`unexpected` those neither allowed nor in
    ``expect``; :meth:`counts` the number per kind (``sync`` and ``h2d`` together are the
    extended sync counter: what a CUDA step would wait for or copy).
    """

    allowlist: dict[tuple[str, str, str], str] = field(default_factory=lambda: dict(ALLOWLIST))
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self._host: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    # --- placement -------------------------------------------------------------------------
    def device(self) -> torch.device:
        """The ``torch.device`` that stands for the GPU: ``cpu:0``.

        A real CPU device (factories accept it, results live in host memory), but unequal to
        the plain ``cpu`` of host tensors, so code that groups or compares by device sees two
        devices, as on a GPU machine. Hand it to code that resolves ``--device``.
        """
        return torch.device(_MARKER)

    def is_device(self, t: Tensor) -> bool:
        """Whether ``t`` would live on the device on a GPU machine."""
        return t not in self._host

    def mark_host(self, *tensors: Tensor) -> None:
        """Declare tensors made before the ``with`` as host tensors."""
        for t in tensors:
            self._host[t] = True

    @staticmethod
    def _target(dev: object) -> bool | None:
        """Device (True), host (False) or unknown (None) for a ``device=`` value."""
        if dev is None:
            return None
        if isinstance(dev, str):
            dev = torch.device(dev)
        if isinstance(dev, torch.device):
            return dev == torch.device(_MARKER) or dev.type not in ("cpu", "meta")
        if isinstance(dev, int):
            return True
        return None

    def __enter__(self) -> DeviceTracker:
        """Enter the mode; ``torch.from_numpy`` (which a mode does not see) is wrapped so
        that its results are host tensors."""
        self._from_numpy = torch.from_numpy

        def from_numpy(ndarray: Any) -> Tensor:
            out = self._from_numpy(ndarray)
            self._host[out] = True
            return out

        torch.from_numpy = from_numpy
        self._group = torch._C._group_tensors_by_device_and_dtype
        torch._C._group_tensors_by_device_and_dtype = self._grouped  # type: ignore[assignment]
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call]
        torch.from_numpy = self._from_numpy
        torch._C._group_tensors_by_device_and_dtype = self._group

    def _grouped(self, lists: Any, with_indices: bool = False) -> Any:
        """torch's grouping of tensor lists by (device, dtype) (foreach optimizers, gradient
        clipping) sees one real device here; split each group by shadow placement and key the
        device half with ``cpu:0``, as the groups would be on a GPU machine."""
        out: dict[Any, Any] = {}
        for (dev, dtype), (tensors, indices) in self._group(lists, with_indices).items():
            first = tensors[0]
            on = [t is not None and self.is_device(t) for t in first]
            for side in (False, True):
                keep = [i for i, flag in enumerate(on) if flag == side]
                if not keep:
                    continue
                key = (torch.device(_MARKER) if side else dev, dtype)
                sub = [[col[i] for i in keep] if col else col for col in tensors]  # () unused
                out[key] = (sub, [indices[i] for i in keep] if indices else indices)
        return out

    # --- events ----------------------------------------------------------------------------
    def _emit(self, kind: str, op: str) -> None:
        path, line, fn = _caller()
        allowed = None
        for (suffix, func, k), reason in self.allowlist.items():
            if k == kind and suffix in path and func in ("*", fn):
                allowed = reason
                break
        self.events.append(Event(kind, op, f"{path}:{line} in {fn}", path, fn, allowed))

    def unexpected(self, expect: Sequence[tuple[str, str]] = ()) -> list[Event]:
        """Events not allowed and not matched by ``expect`` ((kind, function) pairs)."""
        return [e for e in self.events if e.allowed is None
                and (e.kind, e.function) not in expect and (e.kind, "*") not in expect]

    def counts(self) -> dict[str, int]:
        """Number of events per kind (allowed ones included)."""
        out = {"mix": 0, "h2d": 0, "setitem": 0, "sync": 0}
        for e in self.events:
            out[e.kind] += 1
        return out

    # --- the mode --------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = _op_name(func)
        with torch._C.DisableTorchFunction():
            on_dev = self._before(func, name, args, kwargs)
        out = func(*args, **kwargs)
        if out is (args[0] if args else None) and on_dev is not None \
                and isinstance(out, Tensor) and on_dev != self.is_device(out):
            out = out.clone()  # a move returns its input when the real device is the same;
            # on a GPU machine it is a copy, and the input keeps its own placement
        if name == "device.__get__" and isinstance(out, torch.device) and args \
                and isinstance(args[0], Tensor) and self.is_device(args[0]):
            return torch.device(_MARKER)
        if on_dev is False:
            leaves, _ = tree_flatten(out)
            for t in leaves:
                if isinstance(t, Tensor):
                    self._host[t] = True
        return out

    def _before(self, func: Any, name: str, args: Sequence[Any],
                kwargs: dict[str, Any]) -> bool | None:
        """Emit the events of one call; the placement of its result (None: not a tensor op)."""
        base = _base(name)
        leaves, _ = tree_flatten((list(args), kwargs))
        tensors = [t for t in leaves if isinstance(t, Tensor)]
        if name in _FACTORIES and (name in _FROM_DATA or not tensors):
            return self._factory(name, args, kwargs)
        dev = [t for t in tensors if self.is_device(t)]
        host = [t for t in tensors if not self.is_device(t)]
        if name in _LIKE or name in _NEW:
            target = self._target(kwargs.get("device"))
            src = bool(tensors) and self.is_device(tensors[0])
            if name == "new_tensor" and (src if target is None else target):
                self._emit("h2d", name)
            return src if target is None else target
        if name in ("to", "cuda", "cpu", "type"):
            return self._move(name, args, kwargs, tensors)
        if name == "from_numpy":
            return False
        if name == "__setitem__" and tensors and self.is_device(args[0]):
            self._setitem(args)
            return True
        if dev and (name in _SYNC_METHODS or base in _SYNC_METHODS):
            self._emit("sync", name)
        if dev and name == "__getitem__" and any(t.dtype == torch.bool for t in host + dev[1:]):
            self._emit("sync", "boolean-mask indexing")
        if dev and host and not (base in _SCALAR_OK and all(t.ndim == 0 for t in host)):
            self._emit("mix" if name != "__getitem__" else "h2d", name)
        if not tensors:
            return None
        return bool(dev)

    def _factory(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        target = bool(self._target(kwargs.get("device")))
        if target and name in _FROM_DATA:
            data = args[0] if args else kwargs.get("data")
            if not (isinstance(data, Tensor) and self.is_device(data)):
                self._emit("h2d", f"torch.{name}(data, device=...)")
        return target

    def _move(self, name: str, args: Sequence[Any], kwargs: dict[str, Any],
              tensors: list[Tensor]) -> bool:
        src = self.is_device(args[0]) if args and isinstance(args[0], Tensor) else True
        if name == "cpu":
            target: bool | None = False
        elif name == "cuda":
            target = True
        else:
            target = self._target(kwargs.get("device"))
            for a in args[1:]:
                if isinstance(a, Tensor):
                    target = self.is_device(a)
                elif target is None:
                    target = self._target(a)
        if target is None:
            return src
        if target and not src:
            self._emit("h2d", name)
        elif src and not target:
            self._emit("sync", f"{name} (device to host)")
        return target

    def _setitem(self, args: Sequence[Any]) -> None:
        value = args[2] if len(args) > 2 else None
        index_leaves, _ = tree_flatten(args[1] if len(args) > 1 else ())
        if isinstance(value, bool | int | float | complex):
            self._emit("setitem", "__setitem__ (Python number into a device tensor)")
        elif isinstance(value, Tensor) and not self.is_device(value) and value.ndim > 0:
            self._emit("h2d", "__setitem__ (host tensor into a device tensor)")
        for t in index_leaves:
            if isinstance(t, Tensor) and not self.is_device(t):
                self._emit("h2d", "__setitem__ (host index tensor)")
            elif isinstance(t, Tensor) and t.dtype == torch.bool:
                self._emit("sync", "boolean-mask assignment")


def check_placement(fn: Callable[[DeviceTracker], object],
                    expect: Sequence[tuple[str, str]] = ()) -> DeviceTracker:
    """Run ``fn(tracker)`` under a :class:`DeviceTracker`; raise on unexpected events.

    ``expect``: (kind, function) pairs that are documented (e.g. ``("sync", "_log_step")``).

    Raises:
        DevicePlacementError: listing every event neither allowed nor expected.
    """
    tracker = DeviceTracker()
    with tracker:
        fn(tracker)
    bad = tracker.unexpected(expect)
    if bad:
        lines = "\n  ".join(str(e) for e in _dedupe(bad))
        raise DevicePlacementError(
            f"{len(bad)} placement event(s) a GPU run would fail on or wait for:\n  {lines}"
        )
    return tracker


def _dedupe(events: list[Event]) -> Iterator[Event]:
    seen: set[tuple[str, str, str]] = set()
    for e in events:
        key = (e.kind, e.op, e.where)
        if key not in seen:
            seen.add(key)
            yield e

