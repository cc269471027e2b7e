"""The GPU target table of issue 25 (the fused bargain kernel, the Gram at memory speed), as a
section of ``namex bench solvers``.

Every row of the issue's table is listed with its target and the number measured on the H200
before the fused GPU kernel (issue 25, main at 81ef268, torch 2.11+cu130). On a CUDA device the
three kernel rows are measured here, in the same run (median of interleaved repeats, CUDA
events; ``benchmarks.common``); the others are measured by the benchmark named in the row
(``namex bench gram|step``, ``make gpu-check``). Without a GPU every row says
:data:`~namex_ref.benchmarks.common.NOT_MEASURED_GPU`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from namex_ref.benchmarks.common import NOT_MEASURED_GPU, interleaved_medians
from namex_ref.merging.plan import bargain_alpha
from namex_ref.nash.newton import solve_newton

__all__ = ["GPU_TARGETS", "GpuTarget", "measure", "targets_section"]


@dataclass(frozen=True)
class GpuTarget:
    """One row of issue 25's target table."""

    key: str
    what: str
    target: str
    before: str  # on the H200, before the fused GPU kernel (issue 25)
    measured_by: str


#: Issue 25's target table, in its order: the rows every ``namex bench solvers`` report lists.
GPU_TARGETS = (
    GpuTarget("bargain", "one training bargain, batch 1, small-preset layer, Gram included",
              "≤ 100 µs", "20.3 ms", "this section"),
    GpuTarget("newton_b1", "`solve_newton`, batch 1, N = 8, adaptive", "≤ 30 µs", "4.9 ms",
              "this section"),
    GpuTarget("newton_b65536", "batch 65536, N = 8, per problem (fixed 20)", "≤ 0.1 µs",
              "0.15 µs (adaptive), 0.24 µs (fixed 20)", "this section"),
    GpuTarget("full_step", "NAMEx-Full step / EP-CAMEx step, small and medium, fp32 and bf16",
              "≤ 1.10×", "4.54× / 3.11× (fp32)", "`namex bench step --device cuda`"),
    GpuTarget("namex_step", "NAMEx step / EP-CAMEx step", "≤ 1.03×", "1.60× / 1.31×",
              "`namex bench step --device cuda`"),
    GpuTarget("gram", "Gram, float32 and bfloat16, N ≤ 16, P ≥ 4 M",
              "≥ 50 % of HBM read bandwidth", "4–12 % / 0.3–0.4 %",
              "`namex bench gram --device cuda`"),
    GpuTarget("tokens", "medium NAMEx-Full-Mom tokens/s, bf16", "≥ 0.9× EP-CAMEx's",
              "0.26–0.37× (fp32)", "`make gpu-check`"),
)


def _small_layer(device: torch.device) -> list[torch.Tensor]:
    """Domain vectors of one small-preset layer: 8 experts, two 512×2048 float32 matrices."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 512, 2048, generator=g).to(device),
            torch.randn(8, 2048, 512, generator=g).to(device)]


def measure(device: torch.device, *, repeats: int = 20) -> dict[str, str]:
    """The kernel rows, timed on ``device`` (CUDA only; ``{}`` elsewhere)."""
    if device.type != "cuda":
        return {}
    g = torch.Generator().manual_seed(1)
    G = torch.randn(16, 8, generator=g, dtype=torch.float64)
    K1 = (G.T @ G).to(device)
    Gb = torch.randn(65536, 16, 8, generator=g, dtype=torch.float64)
    Kb = (Gb.mT @ Gb).to(device)
    taus = _small_layer(device)
    calls: dict[str, Callable[[], object]] = {
        "newton_b1": lambda: solve_newton(K1),
        "newton_b65536": lambda: solve_newton(Kb, fixed_iterations=20),
        "bargain": lambda: bargain_alpha(taus),
    }
    med = interleaved_medians(calls, device, repeats=repeats, warmup=2)
    return {"newton_b1": f"{med['newton_b1'] * 1e6:.1f} µs",
            "newton_b65536": f"{med['newton_b65536'] / 65536 * 1e6:.4f} µs",
            "bargain": f"{med['bargain'] * 1e6:.1f} µs"}


def targets_section(measured: dict[str, str]) -> tuple[str, str]:
    """(title, markdown) of the target table; rows missing from ``measured`` say where they
    are measured, or that no GPU was lent."""
    lines = ["| what | target | H200 before (issue 25) | this run | measured by |",
             "|---|---|---|---|---|"]
    for t in GPU_TARGETS:
        now = measured.get(t.key)
        if now is None:
            now = "see that report" if measured else NOT_MEASURED_GPU
        lines.append(f"| {t.what} | {t.target} | {t.before} | {now} | {t.measured_by} |")
    return "GPU targets (issue 25)", "\n".join(lines)
