"""Fused GPU kernels for small bargains: Newton's whole iteration (S4–S5) in one Triton launch.

On a GPU the eager ``solve_newton`` is launch-bound: ~1,000 tiny kernels per 20-step solve,
milliseconds for microseconds of arithmetic (issue 25). The kernels of
:mod:`namex_ref.nash.fused_triton` run the same algorithm as the eager loop and the CPU kernel
(:mod:`namex_ref.nash.fused`) with one program per problem (N ≤ :data:`FUSED_MAX_N`, a padded
register tile), the whole loop in one launch:

- :func:`newton_kernel`: ``solve_newton``'s loop on a batch (B, N, N), adaptive or fixed budget,
  with or without a warm start; per-problem α, residual, converged flag and steps.
- :func:`bargain_kernel`: ``merging.functional.bargain_alpha`` after the Gram matrix (zero-expert
  and finiteness masks, the fixed-budget solve, the "ridge"/"uniform" policies; for "raise" the
  Newton α and an ``ok`` flag the caller reads back, the one documented synchronisation).

Both launch exactly one kernel, allocate their outputs with ``torch.empty`` on K's device, read
no value back and are therefore capturable in a CUDA graph. The caller (``solve_newton``) still
reads the step counts back in *adaptive* mode to report ``iterations``/``status`` (one sync per
solve instead of one per step); fixed-budget mode reads nothing.

No FMA contraction (``enable_fp_fusion=False``, Triton 3.9's default is on): every float64
operation rounds as written, as in the numba kernel. Same constants, same rules: the caller
passes the eager path's own constants, and the float64 facts (eps, tiny) are those of
:mod:`namex_ref.nash.fused`. Results agree with the eager
path to the residual rule of docs/math.md §7 (tests/test_nash_fused_gpu.py, through Triton's
interpreter on CPU: set ``TRITON_INTERPRET=1`` before the first launch).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from namex_ref.nash.fused import _EPS, _POLICY_CODES, _TINY, FUSED_MAX_N

__all__ = [
    "FUSED_MAX_N",
    "TRITON_AVAILABLE",
    "bargain_kernel",
    "gpu_fused_available",
    "newton_kernel",
]

#: True when triton can be imported (it ships with CUDA builds of torch, and is a dev extra):
#: CUDA tensors then take the fused GPU kernels (``gpu_fused_available``).
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
_MAXF = float(np.finfo(np.float64).max)
_SOURCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): the kernels take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_fused_available(*tensors: Tensor | None) -> bool:
    """True when the GPU kernels may serve these tensors: triton importable, every tensor on a
    CUDA device without autograd, not inside ``torch.compile`` tracing. Reads no tensor values
    (no synchronisation). CPU tensors are never routed here (the numba kernel serves them)."""
    if not TRITON_AVAILABLE or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and (t.device.type != "cuda" or t.requires_grad):
            return False
    return True


def _kernels() -> Any:
    """The Triton module, imported on first use (so ``TRITON_INTERPRET`` set by then applies)."""
    return importlib.import_module("namex_ref.nash.fused_triton")


def _block(n: int) -> tuple[int, int]:
    """Tile side (a power of 2 ≥ N, at least 2) and warps per program for N experts."""
    if not 1 <= n <= FUSED_MAX_N:
        raise ValueError(f"the fused GPU kernels take 1 ≤ N ≤ {FUSED_MAX_N}; got N = {n}")
    block = max(2, 1 << (n - 1).bit_length())
    return block, (1 if block <= 16 else 2 if block <= 32 else 4)


def _check_device(K: Tensor) -> None:
    if K.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"the fused GPU kernels take CUDA tensors (got {K.device}); on CPU set "
            "TRITON_INTERPRET=1 before the first launch to run them through Triton's interpreter"
        )


def _as_source(K: Tensor) -> Tensor:
    """K detached, in a dtype the kernel loads (float16/bfloat16/float32/float64; others are
    converted to float64 first, as the eager path does)."""
    K = K.detach()
    return K if K.dtype in _SOURCE_DTYPES else K.to(torch.float64)


def newton_kernel(
    K: Tensor, alpha0: Tensor | None, n_steps: int, *, tol: float, factor: float, cap: float,
    frac: float, full_dec: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused Newton on K (..., N, N) (CUDA, or CPU under the interpreter), solved in float64.

    The contract of :func:`namex_ref.nash.fused.newton_kernel`: ``alpha0`` None or broadcastable
    to (..., N) (shape-checked by the caller); the constants are ``solve_newton``'s. Returns
    (α (..., N) float64, residual (...) float64, converged (...) bool, steps (...) int64) on K's
    device, from one launch and no host synchronisation.
    """
    _check_device(K)
    batch = tuple(K.shape[:-2])
    n = K.shape[-1]
    block, warps = _block(n)
    Kf = _as_source(K).reshape(-1, n, n)  # a view when K is contiguous in its batch dims
    b = Kf.shape[0]
    dev = K.device
    alpha = torch.empty((b, n), dtype=torch.float64, device=dev)
    res = torch.empty(b, dtype=torch.float64, device=dev)
    conv = torch.empty(b, dtype=torch.bool, device=dev)
    steps = torch.empty(b, dtype=torch.int64, device=dev)
    a0 = alpha  # placeholder pointer when there is no warm start (never read)
    if alpha0 is not None:
        a0 = alpha0.detach().to(device=dev, dtype=torch.float64).expand(*batch, n).reshape(-1, n)
    if b:
        _kernels().newton_batch_kernel[(b,)](
            Kf, a0, alpha, res, conv, steps, n, int(n_steps),
            Kf.stride(0), Kf.stride(1), Kf.stride(2), a0.stride(0), a0.stride(1),
            float(tol), float(factor), float(cap), float(frac), float(full_dec), _EPS, _TINY,
            _MAXF, HAS_A0=alpha0 is not None, BLOCK=block, num_warps=warps,
            enable_fp_fusion=False)
    return (alpha.reshape(*batch, n), res.reshape(batch), conv.reshape(batch),
            steps.reshape(batch))


def bargain_kernel(
    K: Tensor, policy: str, ridge: float, n_steps: int, *, tol: float, factor: float,
    cap: float, frac: float, full_dec: float, zero_rtol: float, cancel_rtol: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The no-raise part of ``bargain_alpha`` on Gram matrices K (..., N, N) (float32/float64,
    the precision they were accumulated in), one launch, no synchronisation.

    Returns (α (..., N) float64, residual (...) float64, fallback (...) bool, ok (...) bool) on
    K's device: for policy "raise" α is the Newton α and ``ok`` says whether it can be returned
    as is; reading ``ok`` is the caller's (documented) synchronisation.
    """
    _check_device(K)
    if policy not in _POLICY_CODES:
        raise ValueError(f"unknown policy {policy!r}; use one of {tuple(_POLICY_CODES)}")
    batch = tuple(K.shape[:-2])
    n = K.shape[-1]
    block, warps = _block(n)
    Kf = _as_source(K).reshape(-1, n, n)
    b = Kf.shape[0]
    dev = K.device
    alpha = torch.empty((b, n), dtype=torch.float64, device=dev)
    residual = torch.empty(b, dtype=torch.float64, device=dev)
    fallback = torch.empty(b, dtype=torch.bool, device=dev)
    ok = torch.empty(b, dtype=torch.bool, device=dev)
    if b:
        _kernels().bargain_batch_kernel[(b,)](
            Kf, alpha, residual, fallback, ok, n, int(n_steps),
            Kf.stride(0), Kf.stride(1), Kf.stride(2), float(ridge), float(zero_rtol),
            float(cancel_rtol), float(tol), float(factor), float(cap), float(frac),
            float(full_dec), _EPS, _TINY, _MAXF, POLICY=_POLICY_CODES[policy], BLOCK=block,
            num_warps=warps, enable_fp_fusion=False)
    return (alpha.reshape(*batch, n), residual.reshape(batch), fallback.reshape(batch),
            ok.reshape(batch))
