"""Shared pieces of the benchmark suite: the environment record, device-aware timing, memory
bandwidth, and writing tables/plots atomically.

Timing convention (every benchmark): the candidates of one comparison are timed *interleaved*
(round-robin over repeats) in the same process, and each reports the median of its repeats.
Ratios are formed from medians of the same run. On CUDA a timing is bracketed by
``torch.cuda.synchronize`` and measured with CUDA events; on CPU by ``time.perf_counter``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "NOT_MEASURED_GPU",
    "BandwidthResult",
    "Environment",
    "environment",
    "fmt_ratio",
    "fmt_seconds",
    "interleaved_medians",
    "interleaved_times",
    "log_ticks",
    "log_y_labels",
    "markdown_document",
    "measure_bandwidth",
    "new_figure",
    "paired_ratio",
    "resolve_devices",
    "save_figure",
    "synchronize",
    "time_call",
    "write_text_atomic",
]

#: What a GPU row says when this run had no CUDA device.
NOT_MEASURED_GPU = "not measured (no GPU lent to this run)"

#: Packages whose versions are recorded in every results header.
_PACKAGES = ("torch", "numpy", "scipy", "cvxpy", "ecos", "clarabel", "matplotlib")


@dataclass(frozen=True)
class Environment:
    """Where and when a benchmark ran (written at the top of every results file)."""

    date: str
    machine: str
    cpu: str
    cpu_count: int
    torch_threads: int
    python: str
    versions: dict[str, str]
    gpu: str | None

    def header_lines(self) -> list[str]:
        """Markdown bullet lines describing this environment."""
        vers = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        gpu = self.gpu if self.gpu is not None else f"none — GPU rows are {NOT_MEASURED_GPU}"
        return [
            f"- Date (UTC): {self.date}",
            f"- Machine: {self.machine}, CPU {self.cpu}, {self.cpu_count} logical cores, "
            f"{self.torch_threads} torch threads, Python {self.python}",
            f"- GPU: {gpu}",
            f"- Libraries: {vers}",
        ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> Environment:
    """Record the machine, device, library versions and date of this run."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    versions["torch"] = torch.__version__
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return Environment(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        machine=f"{platform.system()} {platform.machine()}",
        cpu=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        versions=versions,
        gpu=gpu,
    )


def resolve_devices(device: str) -> list[torch.device]:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CPU, plus CUDA when present) → devices to run on.
    ``"cuda"`` without a CUDA device raises ``ValueError``."""
    if device == "cpu":
        return [torch.device("cpu")]
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
        return [torch.device("cuda")]
    if device == "auto":
        devs = [torch.device("cpu")]
        if torch.cuda.is_available():
            devs.append(torch.device("cuda"))
        return devs
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn`` on ``device``: CUDA events between two
    synchronisations on CUDA, ``perf_counter`` on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end)) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(
    candidates: Mapping[str, Callable[[], object]],
    device: torch.device | Mapping[str, torch.device],
    *,
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds of every call of every candidate, timed round-robin: each repeat (round) calls
    every candidate once, in the same order, so slow drifts of a shared machine hit all of
    them; entry i of each list comes from round i.

    ``device``: one device for all, or one per candidate key (selects how each is timed).
    ``warmup`` untimed rounds come first (imports, caches, allocator). ``repeats`` ≥ 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for k, fn in candidates.items():
            dev = device if isinstance(device, torch.device) else device[k]
            times[k].append(time_call(fn, dev))
    return times


def interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    device: torch.device | Mapping[str, torch.device],
    *,
    repeats: int,
    warmup: int = 1,
) -> dict[str, float]:
    """Median seconds per call of every candidate, timed by :func:`interleaved_times`."""
    times = interleaved_times(candidates, device, repeats=repeats, warmup=warmup)
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(times: Mapping[str, Sequence[float]], key: str, ref: str) -> float:
    """Median over rounds of times[key][i] / times[ref][i] (both from round i of
    :func:`interleaved_times`): a load spike that hits one round cancels in its ratio."""
    return statistics.median(a / b for a, b in zip(times[key], times[ref], strict=True))


@dataclass(frozen=True)
class BandwidthResult:
    """Memory bandwidth of one device: GB/s (10⁹ B/s) of a full read (sum) and of a copy
    (read + write counted), over ``nbytes`` per tensor."""

    device: str
    nbytes: int
    read_gbs: float
    copy_gbs: float


def measure_bandwidth(device: torch.device, *, nbytes: int = 256 * 2**20,
                      repeats: int = 5) -> BandwidthResult:
    """Measure the memory bandwidth of ``device`` in this run.

    Read: ``x.sum()`` over a float32 tensor of ``nbytes`` (bytes read / median time). Copy:
    ``y.copy_(x)`` (2 × nbytes moved / median time). The tensor is far larger than any cache
    (256 MiB by default). Gram formation only reads τ, so the read figure is its reference.
    """
    n = nbytes // 4
    x = torch.rand(n, device=device)
    y = torch.empty_like(x)
    med = interleaved_medians(
        {"read": lambda: x.sum(), "copy": lambda: y.copy_(x)}, device, repeats=repeats
    )
    return BandwidthResult(str(device), nbytes, nbytes / med["read"] / 1e9,
                           2 * nbytes / med["copy"] / 1e9)


def fmt_seconds(s: float) -> str:
    """A duration with a readable unit (µs below 1 ms, ms below 1 s)."""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    """A ratio: 3 significant digits below 10, integers above."""
    return f"{r:.3g}" if r < 10 else f"{r:.0f}"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file (no half-written results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def markdown_document(title: str, env: Environment, notes: Sequence[str],
                      sections: Sequence[tuple[str, str]]) -> str:
    """Title, environment bullets, method notes, then (heading, body) sections."""
    parts = [f"# {title}", "", *env.header_lines(), "", *notes, ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    return "\n".join(parts)


def save_figure(fig: object, path: Path) -> Path:
    """Save a matplotlib figure as a small PNG (80 dpi)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=80, bbox_inches="tight")  # type: ignore[attr-defined]
    return path


def log_ticks(ax: object, values: Sequence[float]) -> None:
    """Label a log-scaled x axis at ``values`` only (plain numbers, no minor ticks)."""
    vals = sorted(set(values))
    ax.set_xticks(vals)  # type: ignore[attr-defined]
    ax.set_xticklabels([f"{v:g}" for v in vals], fontsize=7)  # type: ignore[attr-defined]
    ax.minorticks_off()  # type: ignore[attr-defined]


def log_y_labels(ax: object) -> None:
    """Label a log-scaled y axis at 1, 2 and 5 × 10^k (visible even within one decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    def fmt(v: float, _: object) -> str:
        return f"{v:g}"

    for which, subs in (("major", (1.0,)), ("minor", (2.0, 5.0))):
        axis = ax.yaxis  # type: ignore[attr-defined]
        if which == "major":
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            axis.set_major_formatter(FuncFormatter(fmt))
        else:
            axis.set_minor_locator(LogLocator(base=10, subs=subs))
            axis.set_minor_formatter(FuncFormatter(fmt))
    ax.tick_params(axis="y", which="both", labelsize=7)  # type: ignore[attr-defined]


def new_figure(
    ncols: int, *, width: float = 4.0, height: float = 3.2
) -> tuple[object, list[object]]:
    """A figure with ``ncols`` axes in a row (a plain ``matplotlib.figure.Figure``: no backend
    selection, no global pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])
