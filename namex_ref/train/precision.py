"""Mixed precision of a training run (``TrainConfig.precision``): autocast for the model's
forward, a gradient scaler for float16.

* ``"fp32"`` (default): no autocast, no scaler; the run is exactly what it was before this
  option existed.
* ``"bf16"``: the forward under ``torch.autocast(dtype=torch.bfloat16)`` (matmuls take bfloat16
  inputs and accumulate in float32); no scaler (bfloat16 has float32's exponent range).
* ``"fp16"``: autocast with float16 and a :class:`torch.amp.GradScaler` (the loss is scaled
  before backward so small gradients do not flush to zero; a step whose gradients overflow is
  skipped and the scale halved). The scaler reads its overflow flag on the host: one sync per
  step, the price of fp16's dynamic loss scaling.

Parameters, gradients and AdamW's moments stay float32 in every mode. The merge plan (the
bargain in float64, the propagated base experts and the momentum buffers, S13-S18) is weight
space and is computed outside autocast (docs/math.md, "Mixed precision"). The scaler's state is
part of a checkpoint (``counters["grad_scaler"]``), so an fp16 run resumes exactly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

__all__ = ["AUTOCAST_DTYPES", "Precision"]

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each reduced precision (``"fp32"`` has none)."""


class Precision:
    """Autocast and loss scaling of one run on ``device`` (``name``: fp32, bf16 or fp16)."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"--precision must be fp32, bf16 or fp16, got {name!r}")
        self.name = name
        self.device_type = device.type
        self.dtype = AUTOCAST_DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context of a forward: autocast to :attr:`dtype`, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, the loss scaled first under fp16."""
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (fp16) before they are clipped or logged."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 skipped when a gradient overflowed, then the scale
        is updated. Under fp16 this is the step's one host sync: torch's GradScaler reads its
        found-inf flag on the host to decide whether to skip (docs/gpu.md); bf16 and fp32
        have none."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state for a checkpoint ({} unless fp16); JSON-able."""
        return dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a no-op for {})."""
        if state:
            self.scaler.load_state_dict(state)
