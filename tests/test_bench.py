"""Benchmark suite (namex_ref.benchmarks): the reports are produced, well-formed and internally
consistent. No test here asserts a speed — speed claims live in the benchmark tables."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from namex_ref.benchmarks import (
    common,
    gram,
    memory,
    merge_memory,
    scaling,
    solvers,
    step,
    syncs,
)
from namex_ref.benchmarks.common import NOT_MEASURED_GPU
from namex_ref.cli import main
from namex_ref.models.gpt import count_parameters, preset
from namex_ref.nash.newton import RESIDUAL_TOL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Benchmarks in tests run on one torch thread (the suite runs 2 workers on 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Committed plots must stay small: they live in the repository.
MAX_PNG_BYTES = 300_000
#: Relative slack for re-deriving a reported ratio from the reported numbers: the inputs are
#: the same floats, so only rounding of the division (1e-15) separates them.
RATIO_RTOL = 1e-9


def tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of ``md`` as (header, rows); asserts each is well-formed."""
    out = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                cells = [c.strip() for c in lines[j].strip("|").split("|")]
                assert len(cells) == len(header), (lines[i], lines[j])
                rows.append(cells)
                j += 1
            out.append((header, rows))
            i = j
        else:
            i += 1
    return out


def check_header(md: str) -> None:
    assert "- Date (UTC): " in md
    assert "- Machine: " in md and "torch threads" in md
    assert "- GPU: " in md
    assert "- Libraries: torch " in md and "numpy " in md
    if not torch.cuda.is_available():
        assert NOT_MEASURED_GPU in md


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 1000 < len(data) < MAX_PNG_BYTES


# ------------------------------------------------------------------------------------------
# common
# ------------------------------------------------------------------------------------------


def test_interleaved_medians_calls_round_robin() -> None:
    calls: list[str] = []
    med = common.interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 interleaved rounds
    assert set(med) == {"a", "b"} and all(v >= 0 for v in med.values())


def test_interleaved_medians_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        common.interleaved_medians({"a": lambda: None}, torch.device("cpu"), repeats=0)


def test_paired_ratio_cancels_round_spikes() -> None:
    # round 2 is 10× slower for both candidates (a load spike): per-round ratios stay 2
    times = {"a": [2.0, 20.0, 2.0], "b": [1.0, 10.0, 1.0]}
    assert common.paired_ratio(times, "a", "b") == 2.0
    assert common.paired_ratio(times, "b", "b") == 1.0


def test_resolve_devices() -> None:
    assert common.resolve_devices("cpu") == [torch.device("cpu")]
    assert common.resolve_devices("auto")[0] == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        common.resolve_devices("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            common.resolve_devices("cuda")


def test_measure_bandwidth_positive() -> None:
    bw = common.measure_bandwidth(torch.device("cpu"), nbytes=4 * 2**20, repeats=1)
    assert bw.nbytes == 4 * 2**20
    assert bw.read_gbs > 0 and bw.copy_gbs > 0 and math.isfinite(bw.read_gbs)


def test_environment_records_versions() -> None:
    env = common.environment()
    assert env.versions["torch"] == torch.__version__
    assert env.torch_threads == torch.get_num_threads()
    assert (env.gpu is None) == (not torch.cuda.is_available())


# ------------------------------------------------------------------------------------------
# 1. solvers
# ------------------------------------------------------------------------------------------


def test_random_grams_are_psd_gram_matrices() -> None:
    K = solvers.random_grams(5, 300, d=16, seed=3)
    assert K.shape == (300, 5, 5) and K.dtype == torch.float64
    torch.testing.assert_close(K, K.mT, rtol=0, atol=0)
    assert bool((torch.linalg.eigvalsh(K) > -1e-12).all())
    norms = K.diagonal(dim1=-2, dim2=-1).sqrt()
    # norms 2^u, u ∈ [-1, 1), times a chi variable ~ 1 ± 0.5 at d = 16
    assert float(norms.min()) > 0.05 and float(norms.max()) < 6
    torch.testing.assert_close(K, solvers.random_grams(5, 300, d=16, seed=3))
    with pytest.raises(ValueError, match="n >= 2"):
        solvers.random_grams(1, 3)


def test_solver_rows_are_consistent() -> None:
    rows = solvers.bench_solvers((2, 3), (1, 4), variants=("newton", "newton-fixed",
                                 "closed_form", "ccp"), oracle_problems=1, repeats=1,
                                 device="cpu", fixed_iterations=20, max_batch={3: 1})
    keys = {(r.variant, r.n, r.batch) for r in rows}
    assert ("newton", 2, 4) in keys and ("newton", 3, 1) in keys
    assert not any(r.n == 3 and r.batch == 4 for r in rows)  # capped
    assert ("closed_form", 2, 4) in keys and not any(r.variant == "closed_form" and r.n == 3
                                                     for r in rows)
    assert {(r.variant, r.batch) for r in rows if r.variant == "ccp"} == {("ccp", 1)}
    for r in rows:
        assert r.seconds_per_problem > 0
        if r.variant.startswith("newton"):
            assert r.max_residual <= RESIDUAL_TOL and r.converged == 1.0
        if r.variant == "newton-fixed":
            assert r.iterations == 20


def test_solver_bench_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown solver variant"):
        solvers.bench_solvers((2,), (1,), variants=("magic",))


def test_cli_bench_solvers_quick(tmp_path: Path) -> None:
    assert main(["bench", "solvers", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "solvers.md").read_text(encoding="utf-8")
    check_header(md)
    check_png(tmp_path / "solvers.png")
    assert "## Target" in md
    (h, rows), (h2, sweep), (h3, latency), (h4, gpu_rows) = tables(md)
    assert h4[1] == "target" and len(gpu_rows) == 7  # issue 25's target table, every row
    col = {c: i for i, c in enumerate(h)}
    ccp_us = {r[col["N"]]: float(r[col["µs / problem"]]) for r in rows if r[0] == "ccp"}
    assert set(ccp_us) == {"2", "8"}
    for r in rows:
        if r[col["device"]] != "cpu":
            continue
        assert r[0] in solvers.VARIANTS
        us = float(r[col["µs / problem"]])
        ratio = float(r[col["× faster than ccp"]])
        # the ratio is ccp's time over this row's, from the same run (3 significant digits)
        assert ratio == pytest.approx(ccp_us[r[col["N"]]] / us, rel=0.06)
        if r[0].startswith("newton"):
            assert float(r[col["max residual"]]) <= RESIDUAL_TOL
            assert r[col["converged"]] == "100%"
    assert h2[:3] == ["solver", "device", "N"] and h2[3:] == ["b=1", "b=16"]
    assert len(sweep) == 5  # newton ×2 N, newton-fixed ×2 N, closed_form at N = 2
    # latency of one training-loop bargain: one row per N, ratios from the row's own numbers
    assert [r[0] for r in latency] == ["2", "8"] and "One bargain at batch 1" in md
    c3 = {c: i for i, c in enumerate(h3)}
    for r in latency:
        us, chol = float(r[c3["fused solve µs"]]), float(r[c3["20 cholesky_ex µs"]])
        assert float(r[c3["fused / 20 chol"]]) == pytest.approx(us / chol, rel=0.06, abs=0.006)
        assert float(r[c3["residual"]]) <= RESIDUAL_TOL


# ------------------------------------------------------------------------------------------
# 2. Gram formation
# ------------------------------------------------------------------------------------------


def test_gram_rows_are_consistent(tmp_path: Path) -> None:
    rows, bws = gram.bench_gram((3,), (1000, 4000), presets=("tiny",), repeats=1,
                                device="cpu", bandwidth_bytes=4 * 2**20)
    assert set(bws) == {"cpu"}
    itemsize = {"float32": 4, "bfloat16": 2}
    tiny = preset("tiny")
    for r in rows:
        if r.label == "synthetic":
            assert r.bytes_read == r.n * r.params * itemsize[r.dtype]
        else:
            assert r.params == 2 * tiny.d_model * tiny.d_ff and r.n == tiny.merge.n_experts
        assert r.gbs == pytest.approx(r.bytes_read / r.gram_s / 1e9, rel=RATIO_RTOL)
        assert r.fraction == pytest.approx(r.gbs / bws["cpu"].read_gbs, rel=RATIO_RTOL)
        assert r.solve_s > 0 and r.bargain_s > 0
    assert len(rows) == (2 + 1) * 2  # (2 synthetic + 1 preset) × 2 dtypes
    path, _ = gram.gram_report(tmp_path, rows, bws, quick=True, repeats=1)
    md = path.read_text(encoding="utf-8")
    check_header(md)
    check_png(tmp_path / "gram.png")
    assert "## Summary" in md
    h, body = tables(md)[1]
    assert h[0] == "device" and all(len(r) == len(h) for r in body)


# ------------------------------------------------------------------------------------------
# 3. training step
# ------------------------------------------------------------------------------------------


def test_count_sync_ops_counts_item_and_nonzero() -> None:
    x = torch.arange(5.0)

    def fn() -> None:
        for _ in range(3):
            x.sum().item()
        torch.nonzero(x > 2)

    counts = syncs.count_sync_ops(fn)
    assert counts == {"aten::_local_scalar_dense": 3, "aten::nonzero": 1}
    assert syncs.count_sync_ops(lambda: x * 2) == {"aten::_local_scalar_dense": 0,
                                                   "aten::nonzero": 0}


def test_saved_tensor_bytes_grows_with_batch() -> None:
    cfg = preset("tiny", "ep-camex")
    model = step.MoEGPT(cfg)
    one, two = step.StepShape("tiny", "cpu", 1, 32), step.StepShape("tiny", "cpu", 2, 32)
    small = memory.saved_tensor_bytes(model, *step._inputs(cfg, one))
    big = memory.saved_tensor_bytes(model, *step._inputs(cfg, two))
    assert 0 < small < big <= 2 * small


@pytest.mark.parametrize("mode", ["eager", "recompute"])
def test_saved_by_node_adds_up_to_saved_tensor_bytes(mode: str) -> None:
    """The per-node breakdown covers what the pack hook counts (1%), and the recomputing merge
    keeps no Kronecker intermediates: no BmmBackward0 node saves anything for ep-camex."""
    cfg = dataclasses.replace(preset("tiny", "ep-camex", merge_memory=mode), n_layer=2)
    model = step.MoEGPT(cfg)
    ins = step._inputs(cfg, step.StepShape("tiny", "cpu", 2, 64))
    by = memory.saved_by_node(model, *ins)
    assert sum(by.values()) == pytest.approx(memory.saved_tensor_bytes(model, *ins), rel=1e-2)
    assert ("BmmBackward0" in by) == (mode == "eager")


def test_step_rows_are_consistent(tmp_path: Path) -> None:
    shape = step.StepShape("tiny", "cpu", 1, 16)
    methods = ("smoe", "ep-camex", "namex-full")
    rows = step.bench_step([shape], methods, repeats=1, rss=False, sync_counts=False)
    by = {r.method: r for r in rows}
    assert set(by) == set(methods)
    assert by["ep-camex"].vs_ep_camex == 1.0 and by["smoe"].vs_smoe == 1.0
    assert by["smoe"].vs_ep_camex == pytest.approx(1 / by["ep-camex"].vs_smoe, rel=RATIO_RTOL)
    for r in rows:
        assert r.params == count_parameters(preset("tiny", r.method))
        assert r.state_mib == pytest.approx(16 * r.params / 2**20, rel=RATIO_RTOL)
        assert r.saved_mib > 0 and r.seconds > 0 and r.peak_mib is None
        assert r.sync_ops is None
    path, _ = step.step_report(tmp_path, rows, [shape], quick=True, repeats=1)
    md = path.read_text(encoding="utf-8")
    check_header(md)
    check_png(tmp_path / "step.png")
    assert "namex-full = " in md and "× EP-CAMEx" in md
    h, body = tables(md)[0]
    assert "× EP-CAMEx" in h and any("GPU-only" in " ".join(r) for r in body)


def test_memory_rows_are_consistent(tmp_path: Path) -> None:
    """The merge-memory benchmark's rows: SMoE is its own reference, every mode is timed
    against the eager path of its own group, and recomputing keeps less than eager."""
    shape = step.StepShape("tiny", "cpu", 1, 40, repeats=1)
    meth = merge_memory.method_rows(shape, ("smear", "ep-camex"), rss=False)
    assert [(r.method, r.mode) for r in meth] == [
        ("smoe", "—"), ("smear", "eager"), ("smear", "recompute"), ("ep-camex", "eager"),
        ("ep-camex", "recompute")]
    assert meth[0].saved_vs_smoe == 1.0 and all(r.peak_mib is None for r in meth)
    by = {(r.method, r.mode): r for r in meth}
    assert by[("ep-camex", "recompute")].saved_mib < by[("ep-camex", "eager")].saved_mib
    trade = merge_memory.tradeoff_rows(shape, (8, 16), repeats=1, rss=False)
    assert [(r.segment_len, r.mode) for r in trade] == [
        (s, m) for s in (8, 16) for m in merge_memory.MEMORY_MODES]
    for r in trade:
        assert r.seconds is not None and r.seconds > 0 and r.vs_smoe is not None
        assert r.saved_vs_smoe == pytest.approx(r.saved_mib / meth[0].saved_mib, rel=RATIO_RTOL)
        if r.mode == "eager":
            assert r.vs_eager == 1.0
    # shorter segments: more (B, S, out, in) merged weights kept by the eager path
    assert trade[0].saved_mib > trade[3].saved_mib
    path, _ = merge_memory.memory_report(tmp_path, meth, trade, quick=True, profile="x")
    md = path.read_text(encoding="utf-8")
    check_header(md)
    check_png(tmp_path / "memory.png")
    assert "Quick mode" in md and "Where EP-CAMEx's step time goes" in md
    assert len(tables(md)) == 2


@pytest.mark.slow
def test_cli_bench_memory_quick(tmp_path: Path) -> None:
    assert main(["bench", "memory", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    md = (tmp_path / "memory.md").read_text(encoding="utf-8")
    assert "operators by CPU total" in md and "SMoE → SMEAR → EP-CAMEx" in md


def test_forward_sync_ops_by_method() -> None:
    """The profiler count (a real CPU run): SMoE's CPU dispatch gathers each expert's tokens
    with nonzero; the merged methods solve with fixed-iteration Newton and the "ridge" policy,
    with no host sync (docs/math.md §2 "Solvers")."""
    shape = step.StepShape("tiny", "cpu", 1, 16)
    counts = {}
    for m in ("smoe", "ep-camex", "namex-full", "namex-q"):
        cfg = dataclasses.replace(preset("tiny", m), n_layer=2)
        model = step.MoEGPT(cfg)
        counts[m] = syncs.forward_sync_ops(model, *step._inputs(cfg, shape))
    assert counts["ep-camex"] == 0
    assert counts["namex-full"] == 0 and counts["namex-q"] == 0
    assert counts["smoe"] >= preset("tiny").merge.top_k


def test_step_sync_events_by_method() -> None:
    """The GPU view of a whole step (forward, backward, AdamW): nothing for any method, SMoE
    included (its dispatch off the host has static shapes). A Python number written into a
    device tensor would count; the test of the counter itself is tests/test_devicecheck.py."""
    shape = step.StepShape("tiny", "cpu", 1, 16)
    for m in ("smoe", "ep-camex", "namex-full", "namex-q"):
        cfg = dataclasses.replace(preset("tiny", m), n_layer=2)
        model = step.MoEGPT(cfg)
        assert syncs.step_sync_events(model, *step._inputs(cfg, shape)) == 0, m


def test_sync_sources_table_on_cpu() -> None:
    rows = syncs.sync_sources(torch.device("cpu"))
    assert len(rows) == 4
    assert rows[2][1:] == ["0", "0"]  # triangular solves never read a scalar back


@pytest.mark.slow
def test_rss_probe_reports_growth() -> None:
    grow = memory.rss_growth_mib("tiny", "ep-camex", 2, 32)
    assert grow >= 0 and math.isfinite(grow)


@pytest.mark.slow
def test_cli_bench_step_quick(tmp_path: Path) -> None:
    assert main(["bench", "step", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "step.md").read_text(encoding="utf-8")
    assert "Host-sync sources (cpu)" in md and "top operators by self time" in md
    assert "the bargains' share of a NAMEx-Full step" in md
    assert "Where the step goes" in md and "tiny: ATen calls per training step" in md
    assert len(tables(md)[0][1]) >= 9


def test_bargain_share_rows() -> None:
    """The table that times ``bargain_alpha`` itself against whole steps: one row per step
    method and one for the per-layer bargains; the reference's paired ratio is exactly 1."""
    rows = step.bargain_share(step.StepShape("tiny", "cpu", 1, 16), repeats=1)
    assert [r[0] for r in rows[:2]] == ["ep-camex step", "namex-full step"]
    assert rows[2][0].startswith("bargain_alpha × ") and len(rows) == 3
    assert rows[0][2] == "1.00" and all(float(r[2]) > 0 for r in rows)


# ------------------------------------------------------------------------------------------
# 4. scaling
# ------------------------------------------------------------------------------------------


def test_fit_exponent_recovers_power_law() -> None:
    xs = [2.0, 4.0, 8.0, 16.0]
    assert scaling.fit_exponent(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5, abs=1e-12)
    assert scaling.fit_exponent(xs, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two"):
        scaling.fit_exponent([1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_exponent([0.0, 1.0], [1.0, 2.0])


def test_scaling_config_changes_one_axis() -> None:
    base = preset("tiny", "namex")
    assert scaling.scaling_config("namex", "N", 8).merge.n_experts == 8
    d = scaling.scaling_config("namex", "d", 32)
    assert (d.d_model, d.d_ff, d.n_layer) == (32, 64, base.n_layer)
    assert scaling.scaling_config("namex", "L", 2).n_layer == 2
    with pytest.raises(ValueError, match="axis"):
        scaling.scaling_config("namex", "vocab", 2)


def test_cli_bench_scaling_quick(tmp_path: Path) -> None:
    assert main(["bench", "scaling", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    md = (tmp_path / "scaling.md").read_text(encoding="utf-8")
    check_header(md)
    check_png(tmp_path / "scaling.png")
    (h, exps), (_, times) = tables(md)
    assert h == ["device", "axis", "ep-camex", "namex"]
    cpu = [r for r in exps if r[0] == "cpu"]
    assert [r[1] for r in cpu] == ["N", "d", "L"]
    assert all(np.isfinite(float(c)) for r in cpu for c in r[2:])
    assert len(times) == 6  # 3 axes × 2 values


# ------------------------------------------------------------------------------------------
# CLI and the module entry point
# ------------------------------------------------------------------------------------------


def test_cli_bench_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "everything"])
    assert main(["bench", "gram", "--quick", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert main(["bench", "gram", "--quick", "--repeats", "0", "--out", str(tmp_path)]) == 2


def test_module_entry_point_runs_gram_quick(tmp_path: Path) -> None:
    """``python -m namex_ref.benchmarks.cli`` is ``namex bench`` without the installed script."""
    res = subprocess.run(
        [sys.executable, "-m", "namex_ref.benchmarks.cli", "gram", "--quick", "--device", "cpu",
         "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "gram.md").exists() and (tmp_path / "gram.png").exists()


@pytest.mark.parametrize("name", ["solvers", "gram", "step", "scaling", "memory"])
def test_committed_results_are_well_formed(name: str) -> None:
    md_path = ROOT / "results" / f"{name}.md"
    if not md_path.exists():
        pytest.skip(f"results/{name}.md not generated yet")
    md = md_path.read_text(encoding="utf-8")
    for line in ("- Date (UTC): ", "- GPU: ", "- Libraries: torch "):
        assert line in md
    assert "Quick mode" not in md  # committed results come from full runs
    assert tables(md)
    check_png(ROOT / "results" / f"{name}.png")
    if name == "solvers":
        h, rows = tables(md)[0]
        col = {c: i for i, c in enumerate(h)}
        newton = [r for r in rows if r[0].startswith("newton") and r[col["device"]] == "cpu"]
        assert {r[col["N"]] for r in newton} == {"2", "4", "8", "16", "32", "64"}
        assert all(float(r[col["max residual"]]) <= RESIDUAL_TOL for r in newton)
    if name == "memory":  # issue 18 target 3: saved ≤ 1.5× SMoE at small with "recompute"
        h, rows = tables(md)[1]
        small = [r for r in rows if r[h.index("preset")] == "small"
                 and r[h.index("merge_memory")] == "recompute"]
        assert small and all(float(r[h.index("× SMoE")]) <= 1.5 for r in small)
    if name == "step":
        h, rows = tables(md)[0]
        methods = {r[h.index("method")] for r in rows if r[h.index("preset")] == "tiny"}
        assert set(step.METHODS) <= methods
