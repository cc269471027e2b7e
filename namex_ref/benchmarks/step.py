"""Benchmark 3 — the training step: time and memory of every merging method of the MoE layer
(docs/math.md §3) relative to SMoE and EP-CAMEx, per model preset; a profile of NAMEx-Full against
EP-CAMEx; and a count of the operators that synchronise the host with the device.

One step = forward (``MoEGPT``), backward and an AdamW step on a random token batch.

Memory, three measures, each saying what it is (:mod:`namex_ref.benchmarks.memory`):
- ``state``: parameters + gradients + AdamW's two moments, 4 × 4 bytes per parameter (exact).
- ``saved``: bytes of the tensors autograd saves for backward during the forward, de-duplicated
  by storage, leaving out parameters (exact, device independent; this is the part that differs
  between methods).
- CUDA: ``torch.cuda.max_memory_allocated`` over one step (after a warm-up step).
  CPU: the growth of the peak RSS (VmHWM after two steps minus VmRSS before them), in a fresh
  subprocess per method (includes allocator caching and the optimizer state allocated at the
  first step; noisy to a few MiB).

Host synchronisation: counted by :mod:`namex_ref.benchmarks.syncs` (the operators that make the
host wait for a CUDA device, found by the profiler on any device).

Where the step goes: ATen calls per region of one step on the GPU code path, the proxy of a
launch-bound GPU step, and CUDA time per region where a GPU is present
(:mod:`namex_ref.benchmarks.launches`).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from namex_ref.benchmarks.common import (
    NOT_MEASURED_GPU,
    environment,
    fmt_seconds,
    interleaved_times,
    markdown_document,
    new_figure,
    paired_ratio,
    resolve_devices,
    save_figure,
    write_text_atomic,
)
from namex_ref.benchmarks.launches import LAUNCH_NOTE, launch_markdown
from namex_ref.benchmarks.memory import cuda_peak_mib, rss_growth_mib, saved_tensor_bytes
from namex_ref.benchmarks.syncs import step_sync_events, sync_sources
from namex_ref.merging.config import METHODS
from namex_ref.merging.plan import bargain_alpha
from namex_ref.models.gpt import ModelConfig, MoEGPT, preset
from namex_ref.nash.gram import domain_vectors, gram_matrix
from namex_ref.nash.newton import solve_newton
from namex_ref.tables import format_table

__all__ = [
    "CPU_SHAPES",
    "CUDA_SHAPES",
    "TARGETS",
    "StepRow",
    "StepShape",
    "bench_step",
    "make_step",
    "profile_step",
    "step_report",
]

#: The performance targets: time per step relative to EP-CAMEx at most these ratios.
TARGETS = {"namex-full": 1.05, "namex": 1.02}
REFERENCES = ("smoe", "ep-camex")


@dataclass(frozen=True)
class StepShape:
    """What was run for one preset on one device: batch B × sequence T tokens; ``repeats``
    overrides the benchmark's repeat count for this shape (None: keep it)."""

    preset: str
    device: str
    batch: int
    seq: int
    repeats: int | None = None


#: Shapes run by default. CPU: the small preset with a reduced batch/sequence so 9 methods fit
#: in minutes on 2 cores; medium only on a GPU.
CPU_SHAPES = (StepShape("tiny", "cpu", 8, 128, repeats=15), StepShape("small", "cpu", 2, 256))
CUDA_SHAPES = (StepShape("tiny", "cuda", 16, 128), StepShape("small", "cuda", 8, 512),
               StepShape("medium", "cuda", 8, 512))


@dataclass(frozen=True)
class StepRow:
    """One (preset, device, method): median step seconds, ratios against the references timed
    in the same group, and memory (MiB; ``peak`` is CUDA max allocated or CPU RSS growth).
    ``sync_ops``: GPU waits in one whole step (:func:`~namex_ref.benchmarks.syncs.
    step_sync_events`)."""

    preset: str
    device: str
    method: str
    batch: int
    seq: int
    params: int
    seconds: float
    vs_smoe: float
    vs_ep_camex: float
    state_mib: float
    saved_mib: float
    peak_mib: float | None
    sync_ops: int | None


def make_step(model: MoEGPT, opt: torch.optim.Optimizer, idx: Tensor,
              tgt: Tensor) -> Callable[[], None]:
    """One training step: forward, backward, AdamW step, gradients cleared."""

    def step() -> None:
        out = model(idx, tgt)
        assert out.loss is not None
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _inputs(cfg: ModelConfig, shape: StepShape, seed: int = 0) -> tuple[Tensor, Tensor]:
    dev = torch.device(shape.device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (shape.batch, shape.seq), generator=g).to(dev)
    tgt = torch.randint(0, cfg.vocab_size, (shape.batch, shape.seq), generator=g).to(dev)
    return idx, tgt


def _build(cfg: ModelConfig, shape: StepShape, seed: int = 0) -> tuple[MoEGPT, Callable[[], None]]:
    """A model of ``cfg`` on the shape's device with AdamW (lr 1e-4) and a fixed random batch."""
    torch.manual_seed(seed)
    model = MoEGPT(cfg).to(torch.device(shape.device))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx, tgt = _inputs(cfg, shape, seed)
    return model, make_step(model, opt, idx, tgt)


def bench_step(
    shapes: Sequence[StepShape],
    methods: Sequence[str] = METHODS,
    *,
    repeats: int = 5,
    rss: bool = True,
    sync_counts: bool = True,
    all_resident: Sequence[str] = ("tiny",),
) -> list[StepRow]:
    """Time every method's training step per shape. Presets in ``all_resident`` keep all
    methods' models in memory and time them round-robin in one group; larger presets time each
    method in a group with the two references (SMoE, EP-CAMEx) so that at most three models are
    resident, and ratios come from the method's own group. The references are always run.
    ``rss``: CPU peak-RSS probe per method (a subprocess each); ``sync_counts``: profile one
    training step per method under the device tracker (GPU waits)."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    refs = list(REFERENCES)
    others = [m for m in methods if m not in refs]
    rows: list[StepRow] = []
    for shape in shapes:
        dev = torch.device(shape.device)
        if shape.preset in all_resident:
            groups = [[*refs, *others]]
        else:
            groups = [[*refs, m] for m in others] or [list(refs)]
        med: dict[str, float] = {}
        ratio: dict[str, dict[str, float]] = {}
        ref_meds: dict[str, list[float]] = {r: [] for r in refs}
        ref_pairs: list[float] = []
        mem: dict[str, tuple[int, float, float, float | None, int | None]] = {}
        for group in groups:
            built = {m: _build(preset(shape.preset, m), shape) for m in group}
            reps = shape.repeats if shape.repeats is not None else repeats
            all_t = interleaved_times({m: b[1] for m, b in built.items()}, dev,
                                      repeats=reps, warmup=1)
            times = {m: statistics.median(v) for m, v in all_t.items()}
            ref_pairs.append(paired_ratio(all_t, "smoe", "ep-camex"))
            for m in group:
                if m in refs:
                    ref_meds[m].append(times[m])
                else:
                    med[m] = times[m]
                    ratio[m] = {r: paired_ratio(all_t, m, r) for r in refs}
                if m not in mem:
                    model, step = built[m]
                    n_par = sum(p.numel() for p in model.parameters())
                    idx, tgt = _inputs(model.config, shape, seed=1)
                    saved = saved_tensor_bytes(model, idx, tgt) / 2**20
                    peak = cuda_peak_mib(step, dev) if dev.type == "cuda" else None
                    syncs = step_sync_events(model, idx, tgt) if sync_counts else None
                    mem[m] = (n_par, 16 * n_par / 2**20, saved, peak, syncs)
                    del model, step
            del built
            gc.collect()
        for r in refs:
            med[r] = statistics.median(ref_meds[r])
        smoe_vs_ep = statistics.median(ref_pairs)
        ratio["smoe"] = {"smoe": 1.0, "ep-camex": smoe_vs_ep}
        ratio["ep-camex"] = {"smoe": 1.0 / smoe_vs_ep, "ep-camex": 1.0}
        for m in [*refs, *others]:
            n_par, state, saved, peak, syncs = mem[m]
            if peak is None and rss and dev.type == "cpu":
                peak = rss_growth_mib(shape.preset, m, shape.batch, shape.seq)
            rows.append(StepRow(
                shape.preset, shape.device, m, shape.batch, shape.seq, n_par, med[m],
                ratio[m]["smoe"], ratio[m]["ep-camex"], state, saved, peak, syncs))
    return rows


# ------------------------------------------------------------------------------------------
# Profile and overhead analysis
# ------------------------------------------------------------------------------------------


def profile_step(shape: StepShape, method: str, *, row_limit: int = 12) -> str:
    """torch.profiler table (top operators by self time) of one training step, after one
    warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    _, step = _build(preset(shape.preset, method), shape)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if shape.device == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    key = "self_cuda_time_total" if shape.device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=row_limit,
                                      max_name_column_width=40)
    return str(table)


def merge_plan_times(
    shape: StepShape, methods: Sequence[str], *, repeats: int
) -> dict[str, list[float]]:
    """Seconds of ``model.merge_plan()`` (the base-expert chain, curvature and bargains of
    S14–S18, built once per forward) per method and round, autograd on as in training."""
    dev = torch.device(shape.device)
    models = {m: _build(preset(shape.preset, m), shape)[0] for m in methods}
    return interleaved_times({m: mo.merge_plan for m, mo in models.items()}, dev,
                             repeats=repeats)


def bargain_share(shape: StepShape, *, repeats: int) -> list[list[str]]:
    """Step time of EP-CAMEx and NAMEx-Full against ``bargain_alpha`` alone, called once per MoE
    layer on NAMEx-Full's domain vectors (the α solves one NAMEx-Full step makes with
    ``alpha_interval`` 1), timed interleaved. Rows of a table: what, median, × EP-CAMEx step."""
    dev = torch.device(shape.device)
    steps = {m: _build(preset(shape.preset, m), shape)[1] for m in ("ep-camex", "namex-full")}
    model, _ = _build(preset(shape.preset, "namex-full"), shape)
    with torch.no_grad():  # each layer bargains over τ = E − its propagated base (S14–S18)
        plan = model.merge_plan()
        layer_taus = []
        for layer, terms in zip(model.moe_layers(), plan.terms, strict=True):
            assert terms.base is not None
            layer_taus.append(domain_vectors(layer.experts(), terms.base))

    def bargains() -> None:
        for taus in layer_taus:
            bargain_alpha(taus, newton_iterations=20)

    cands: dict[str, Callable[[], object]] = {
        "ep-camex step": steps["ep-camex"], "namex-full step": steps["namex-full"],
        f"bargain_alpha × {len(layer_taus)} layers (20 Newton steps, ridge policy)": bargains}
    all_t = interleaved_times(cands, dev, repeats=repeats, warmup=1)
    def fmt(r: float) -> str:  # the fused bargains are ~1e-3 of a step: keep 2 digits
        return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"

    return [[k, fmt_seconds(statistics.median(v)), fmt(paired_ratio(all_t, k, "ep-camex step"))]
            for k, v in all_t.items()]


def bargain_variants(shape: StepShape, *, repeats: int) -> list[list[str]]:
    """Time ways of solving one layer's bargain at this preset's shapes (rows of a table):
    ``bargain_alpha`` as the layers call it (Newton and ridge-policy solve, 20 steps) against
    Newton alone with 20 and 8 steps, the two solves batched into one call, the Gram, and the
    eager torch path of both (on CPU the default runs the fused kernel)."""
    dev = torch.device(shape.device)
    model, _ = _build(preset(shape.preset, "namex-full"), shape)
    layer = model.moe_layers()[0]
    base = layer.base()
    assert base is not None
    with torch.no_grad():
        taus = domain_vectors(layer.experts(), base)
    K = gram_matrix(taus).to(torch.float64)
    lam = 1e-3 * K.diagonal().mean()
    K2 = torch.stack([K, K + lam * torch.eye(K.shape[-1], dtype=K.dtype, device=dev)])
    ref_name = "bargain_alpha (as the layers call it, 20 Newton steps)"
    cands: dict[str, Callable[[], object]] = {
        ref_name: lambda: bargain_alpha(taus, newton_iterations=20),
        "Gram only": lambda: gram_matrix(taus),
        "Newton, 20 fixed steps": lambda: solve_newton(K, fixed_iterations=20),
        "Newton, 8 fixed steps": lambda: solve_newton(K, fixed_iterations=8),
        "Newton + ridge batched in one call (2, N, N), 20 steps":
            lambda: solve_newton(K2, fixed_iterations=20),
        "bargain_alpha, eager torch path (backend='eager', the previous default)":
            lambda: bargain_alpha(taus, newton_iterations=20, backend="eager"),
        "Newton, 20 fixed steps, eager torch path":
            lambda: solve_newton(K, fixed_iterations=20, backend="eager"),
    }
    all_t = interleaved_times(cands, dev, repeats=repeats)
    res8 = float(solve_newton(K, fixed_iterations=8).residual)
    res20 = float(solve_newton(K, fixed_iterations=20).residual)
    rows = []
    for k, v in all_t.items():
        note = ""
        if k.startswith("Newton, 8"):
            note = f"residual {res8:.1e}"
        elif k.startswith("Newton, 20"):
            note = f"residual {res20:.1e}"
        rows.append([k, fmt_seconds(statistics.median(v)),
                     f"{paired_ratio(all_t, k, ref_name):.2f}", note])
    return rows


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _target_lines(rows: Sequence[StepRow]) -> list[str]:
    lines = []
    for (pre, dev) in sorted({(r.preset, r.device) for r in rows}):
        for m, tgt in TARGETS.items():
            rs = [r for r in rows if r.preset == pre and r.device == dev and r.method == m]
            if rs:
                v = rs[0].vs_ep_camex
                lines.append(f"- {pre} ({dev}): {m} = {v:.2f}× EP-CAMEx — target ≤ {tgt:.2f}×: "
                             f"**{'met' if v <= tgt else 'not met'}**")
    return lines


def step_report(out: str | Path, rows: Sequence[StepRow], shapes: Sequence[StepShape], *,
                quick: bool = False, repeats: int = 5, profile: str = "", launches: str = "",
                plot: bool = True) -> tuple[Path, str]:
    """Write ``step.md`` (+ ``step.png``) in ``out``; ``launches`` and ``profile`` (markdown)
    are appended."""
    out = Path(out)
    body = []
    for r in rows:
        peak = "—" if r.peak_mib is None else f"{r.peak_mib:.1f}"
        body.append([r.preset, r.device, f"{r.batch}×{r.seq}", r.method, f"{r.params:,}",
                     fmt_seconds(r.seconds), f"{r.vs_smoe:.2f}", f"{r.vs_ep_camex:.2f}",
                     f"{r.state_mib:.1f}", f"{r.saved_mib:.1f}", peak,
                     "—" if r.sync_ops is None else str(r.sync_ops)])
    measured = {(r.preset, r.device) for r in rows}
    if not any(r.device == "cuda" for r in rows):
        for s in CUDA_SHAPES:
            body.append([s.preset, "cuda", f"{s.batch}×{s.seq}", "all", "—", NOT_MEASURED_GPU,
                         "—", "—", "—", "—", "—", "—"])
    if ("medium", "cpu") not in measured:
        body.append(["medium", "cpu", "—", "all", "—", "not measured (GPU-only preset)", "—",
                     "—", "—", "—", "—", "—"])
    table = format_table(
        ["preset", "device", "B×T", "method", "params", "step (median)", "× SMoE",
         "× EP-CAMEx", "state MiB", "saved MiB", "peak MiB", "GPU waits (step)"], body)
    shapes_txt = "; ".join(f"{s.preset} on {s.device}: batch {s.batch} × {s.seq} tokens"
                           for s in shapes)
    notes = [
        f"Step = forward + backward + AdamW (lr 1e-4) on random tokens. Run: {shapes_txt}. "
        "Presets otherwise as in namex_ref.models.gpt.PRESETS (MergeConfig defaults: "
        "newton_iterations 20, singular_policy ridge, alpha_interval 1).",
        "Timing: methods timed round-robin in the same process after one warm-up round ("
        + "; ".join(f"{s.preset}: {s.repeats if s.repeats is not None else repeats} rounds"
                    for s in shapes)
        + "); tiny: all 9 models resident; small: each method in a group with SMoE and "
        "EP-CAMEx. `step` = median step time; ratios = median over rounds of the per-round "
        "ratio (method / reference in the same round), so a load spike cancels. The CPU is "
        "shared with other jobs: absolute times are noisy; read the ratios.",
        "Small preset: the `step` column of a non-reference method is its median within its "
        "own group; SMoE/EP-CAMEx rows give the median over all groups; ratios are always "
        "within one group (so step/step of two rows need not equal the ratio column when the "
        "machine's load changed between groups).",
        "Memory: `state` = parameters + gradients + AdamW moments (16 B/parameter, exact); "
        "`saved` = tensors saved for backward in one forward (saved_tensors_hooks, parameters "
        "excluded, exact); `peak` = CPU: growth of the peak RSS of a fresh process over two "
        "steps (VmHWM after − VmRSS before, peak reset via /proc/self/clear_refs; includes "
        "AdamW state allocation and allocator caching), CUDA: "
        "max_memory_allocated over one step. `GPU waits`: host syncs, host-to-device copies "
        "and host tensors mixed into device operations in one whole step (forward, backward, "
        "AdamW), as namex_ref.devicecheck's tracker sees them on any device (0 = capturable "
        "and sync-free; see the sync-source table for the solver's pieces).",
        *(["**Quick mode** (tests/smoke): reduced run — not for quoting."] if quick else []),
    ]
    sections = [("Targets", "\n".join(_target_lines(rows)) or "references not in this run"),
                ("Training step per method", table)]
    if launches:
        sections.append(("Where the step goes (operator launches, GPU code path)", launches))
    if profile:
        sections.append(("Profile and overhead analysis", profile))
    doc = markdown_document("Training-step benchmark", environment(), notes, sections)
    path = write_text_atomic(out / "step.md", doc)
    if plot:
        _plot(out / "step.png", rows)
    return path, table


def _plot(path: Path, rows: Sequence[StepRow]) -> None:
    groups = sorted({(r.preset, r.device) for r in rows})
    fig, axes = new_figure(2, width=5.0)
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    width = 0.8 / max(len(groups), 1)
    for gi, (pre, dev) in enumerate(groups):
        rs = {r.method: r for r in rows if r.preset == pre and r.device == dev}
        xs = [i + gi * width for i in range(len(methods))]
        axes[0].bar(xs, [rs[m].vs_ep_camex if m in rs else 0 for m in methods], width,  # type: ignore[attr-defined]
                    label=f"{pre} ({dev})")
        axes[1].bar(xs, [rs[m].saved_mib if m in rs else 0 for m in methods], width,  # type: ignore[attr-defined]
                    label=f"{pre} ({dev})")
    for ax, yl in zip(axes, ("step time / EP-CAMEx", "saved for backward (MiB)"), strict=True):
        ax.set_xticks(range(len(methods)))  # type: ignore[attr-defined]
        ax.set_xticklabels(methods, rotation=60, fontsize=7)  # type: ignore[attr-defined]
        ax.set_ylabel(yl)  # type: ignore[attr-defined]
        ax.legend(fontsize=6)  # type: ignore[attr-defined]
    axes[0].axhline(1.0, color="k", lw=0.5)  # type: ignore[attr-defined]
    save_figure(fig, path)


def profile_markdown(shape: StepShape, *, repeats: int) -> str:
    """Profiles of EP-CAMEx and NAMEx-Full, merge_plan times, the bargain alternatives and the
    sync-source table for one shape, as markdown."""
    parts = []
    for m in ("ep-camex", "namex-full"):
        parts += [f"### {shape.preset} ({shape.device}), {m}: top operators by self time", "",
                  "```", profile_step(shape, m), "```", ""]
    plan = merge_plan_times(shape, ["ep-camex", "namex", "namex-full"],
                            repeats=max(repeats, 10))
    parts += [f"### {shape.preset} ({shape.device}): `merge_plan()` per forward "
              "(base chain + curvature + bargains)", "",
              format_table(["method", "merge_plan (median)", "× EP-CAMEx (paired)"],
                           [[m, fmt_seconds(statistics.median(v)),
                             f"{paired_ratio(plan, m, 'ep-camex'):.2f}"]
                            for m, v in plan.items()]), ""]
    parts += [f"### {shape.preset} ({shape.device}): one layer's bargain, alternatives "
              f"(median of {max(repeats, 20)})", "",
              format_table(["what", "time (median)", "× bargain_alpha (paired)", "note"],
                           bargain_variants(shape, repeats=max(repeats, 20))), ""]
    if shape.device == "cuda":
        from namex_ref.benchmarks.graphs import graph_vs_eager_rows

        model, _ = _build(preset(shape.preset, "namex-full"), shape)
        idx, tgt = _inputs(model.config, shape)
        parts += [f"### {shape.preset} ({shape.device}): NAMEx-Full forward, eager against its "
                  "CUDA graph (benchmarks/graphs.py)", "",
                  format_table(["what", "median ms", "× eager"],
                               graph_vs_eager_rows(model, idx, tgt, repeats=max(repeats, 20))),
                  ""]
    parts += [f"### {shape.preset} ({shape.device}): the bargains' share of a NAMEx-Full step",
              "",
              format_table(["what", "time (median)", "× EP-CAMEx step (paired)"],
                           bargain_share(shape, repeats=repeats)), ""]
    return "\n".join(parts)


def run(out: str | Path, *, quick: bool = False, device: str = "auto",
        repeats: int | None = None, rss: bool | None = None) -> tuple[Path, str]:
    """Entry point of ``namex bench step``."""
    from namex_ref.nash import fused

    fused.warmup()  # compile (or load) the CPU kernels before anything is timed
    reps = repeats if repeats is not None else (2 if quick else 5)
    shapes: list[StepShape] = []
    devs = resolve_devices(device)
    for dev in devs:
        if dev.type == "cpu":
            shapes += [StepShape("tiny", "cpu", 2, 64)] if quick else list(CPU_SHAPES)
        else:
            shapes += [StepShape("tiny", "cuda", 2, 64)] if quick else list(CUDA_SHAPES)
    rows = bench_step(shapes, repeats=reps, rss=(not quick) if rss is None else rss)
    where = launch_markdown(["tiny"] if quick else ["tiny", "small"],
                            cuda=[(s.preset, s.batch, s.seq) for s in shapes if s.device == "cuda"])
    prof_parts = [profile_markdown(s, repeats=reps) for s in shapes]
    for dev in devs:
        prof_parts += [f"### Host-sync sources ({dev.type})", "",
                       format_table(["call", "_local_scalar_dense", "nonzero"],
                                    sync_sources(dev)), ""]
    return step_report(out, rows, shapes, quick=quick, repeats=reps,
                       profile="\n".join(prof_parts), launches=LAUNCH_NOTE + "\n\n" + where)
