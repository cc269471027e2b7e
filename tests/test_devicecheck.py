"""The CPU-side device detector (namex_ref/devicecheck.py) and what it guards.

A CPU run cannot fail on a tensor left on the host, a host-to-device copy in a CUDA-graph capture
or a device sync; :class:`DeviceTracker` shadows every tensor's placement as it would be on a GPU
machine and reports those events. These tests pin (1) each rule of the tracker on small
hand-made cases, and (2) that every merging method's forward, backward and optimizer step, and
the training loop's finiteness check, produce no event beyond the documented ones. On the code
before the fixes of the GPU-correctness issue, (2) fails at the three sites the H200 run met:
``segment_means`` (a Python number written into a device tensor), the quaternion step
(``torch.tensor(β, device=...)`` per layer) and ``state_is_finite`` (CUDA flags stacked with
AdamW's host ``step`` counters).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from namex_ref.devicecheck import DevicePlacementError, DeviceTracker, check_placement
from namex_ref.merging.config import METHODS
from namex_ref.merging.layers import top_k_dense, top_k_indexed
from namex_ref.merging.routing import segment_means
from namex_ref.models.gpt import MoEGPT, preset
from namex_ref.momentum import quaternion_momentum_step
from namex_ref.nash.gram import off_diagonal_mean
from namex_ref.train.health import state_is_finite


def _kinds(tr: DeviceTracker) -> list[str]:
    return [e.kind for e in tr.events]


# --- (1) the tracker's rules ------------------------------------------------------------------

def test_python_number_written_by_index_is_flagged() -> None:
    x = torch.zeros(3)  # made before the mode: a device tensor
    with DeviceTracker() as tr:
        x[-1] = 2.0
    assert _kinds(tr) == ["setitem"]


def test_tensor_from_python_data_on_the_device_is_a_copy() -> None:
    x = torch.zeros(3)
    with DeviceTracker() as tr:
        torch.tensor([1.0, 2.0], device=x.device)  # device read from a device tensor
        torch.tensor([1.0, 2.0])  # a host tensor: no event
        torch.full((2,), 3.0, device=x.device)  # a fill kernel: no copy
    assert _kinds(tr) == ["h2d"]


def test_mixing_host_and_device_is_flagged_but_host_scalars_are_allowed() -> None:
    x = torch.ones(3)
    with DeviceTracker() as tr:
        host = torch.ones(3)  # no device=: host
        x * torch.tensor(2.0)  # a 0-dim host tensor in an element-wise op: allowed on CUDA
        assert not tr.events
        torch.stack([x.sum(), torch.tensor(1.0)])  # stack refuses a CPU scalar on CUDA
        x + host
    assert _kinds(tr) == ["mix", "mix"]


def test_syncs_and_copies_are_counted() -> None:
    x = torch.randn(5)
    with DeviceTracker() as tr:
        x.sum().item()
        bool((x > 0).any())
        x.nonzero()
        x[x > 0]
        x.cpu()
        torch.ones(2).to(x.device)  # host to device
        h = torch.randn(5)
        h.sum().item()  # host only: free
    assert tr.counts() == {"mix": 0, "h2d": 1, "setitem": 0, "sync": 5}


def test_device_results_follow_their_inputs() -> None:
    x = torch.randn(4)
    with DeviceTracker() as tr:
        y = torch.zeros_like(x)  # device
        z = torch.zeros(4, device=tr.device())  # device
        w = y + z  # device
        assert tr.is_device(w)
        assert not tr.is_device(torch.zeros(4)) and not tr.is_device(x.cpu())
        assert x.device != torch.device("cpu")  # a device tensor's device is not the host's
    assert _kinds(tr) == ["sync"]  # the .cpu() above


def test_check_placement_raises_with_the_site() -> None:
    x = torch.zeros(3)

    def bad(tr: DeviceTracker) -> None:
        x[0] = 1.0

    with pytest.raises(DevicePlacementError, match=r"test_devicecheck\.py"):
        check_placement(bad)
    check_placement(bad, expect=[("setitem", "bad")])


# --- (2) the library under the tracker --------------------------------------------------------

def test_segment_means_makes_its_lengths_on_the_device() -> None:
    h = torch.randn(2, 10, 3)
    check_placement(lambda tr: segment_means(h, 4))
    # and is still the mean over each segment, the last one shorter (independent oracle)
    got = segment_means(h, 4)
    want = torch.stack([h[:, 0:4].mean(1), h[:, 4:8].mean(1), h[:, 8:10].mean(1)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_quaternion_step_with_a_constant_beta_copies_nothing() -> None:
    mu, delta, base = torch.randn(6, 4), torch.randn(6), torch.randn(6)
    check_placement(lambda tr: quaternion_momentum_step(
        mu, delta, base, beta=(0.5, 0.1, -0.2, 0.3), gamma=0.7))


def _step(model: MoEGPT, opt: torch.optim.Optimizer, idx: torch.Tensor,
          tgt: torch.Tensor) -> None:
    out = model(idx, tgt)
    assert out.loss is not None
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_of_every_method_stays_on_the_device(method: str) -> None:
    """Forward, backward and AdamW step: no host tensor mixed in, no copy, no sync (the
    bargain's fixed Newton budget, S5, and the sync-free SMoE dispatch make this hold)."""
    cfg = dataclasses.replace(preset("tiny", method), n_layer=2, seq_len=48)
    torch.manual_seed(0)
    model = MoEGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (2, 48), generator=g)
    tgt = torch.randint(0, cfg.vocab_size, (2, 48), generator=g)
    check_placement(lambda tr: [_step(model, opt, idx, tgt) for _ in range(2)])


def test_finiteness_check_with_optimizer_state_on_the_host() -> None:
    """AdamW keeps ``step`` on the host when the parameters are on CUDA; the check must reduce
    per device (its one sync per device is documented: checkpoint steps only)."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def run(tr: DeviceTracker) -> None:
        model(torch.randn(2, 4, device=tr.device())).sum().backward()
        opt.step()  # the first step makes the state: moments on the device, step on the host
        assert state_is_finite(model, opt)

    check_placement(run, expect=[("sync", "<genexpr>")])


def test_foreach_adamw_groups_with_unused_state_lists() -> None:
    """AdamW(foreach=True), CUDA's default, hands the grouping lists that are empty (no
    ``max_exp_avg_sqs`` without amsgrad): the tracker's split by placement keeps them empty
    (it raised IndexError before), and the step stays on the device."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)

    def run(tr: DeviceTracker) -> None:
        for _ in range(2):
            model(torch.randn(2, 4, device=tr.device())).sum().backward()
            opt.step()

    check_placement(run)


@pytest.mark.parametrize("where", ["exp_avg", "exp_avg_sq", "param"])
def test_finiteness_check_sees_a_bad_moment_on_another_device(where: str) -> None:
    """Fault injection: one non-finite entry in a moment that lives on the host (a CPU
    stand-in for offloaded optimizer state), or in a parameter, makes the check fail."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    w = model.weight
    with DeviceTracker() as tr:
        state = opt.state[w]
        state["exp_avg"] = state["exp_avg"].cpu()  # offloaded: a host tensor
        assert state_is_finite(model, opt)
        target = w if where == "param" else state[where]
        with torch.no_grad():
            target.view(-1)[3] = math.inf
        assert not state_is_finite(model, opt)
    assert not [e for e in tr.events if e.kind == "mix"]


# --- the sync-free pieces against independent oracles ------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 17), st.integers(0, 2**31 - 1))
def test_dense_top_k_equals_the_indexed_dispatch(n: int, k: int, t: int, seed: int) -> None:
    """S12, float64: both dispatches equal a per-token loop over the chosen experts."""
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    C, Fd = 5, 7
    flat = torch.randn(t, C, generator=g, dtype=torch.float64)
    w1 = torch.randn(n, Fd, C, generator=g, dtype=torch.float64)
    w2 = torch.randn(n, C, Fd, generator=g, dtype=torch.float64)
    scores = torch.randn(t, n, generator=g, dtype=torch.float64).softmax(-1)
    gates, experts = scores.topk(k, dim=-1)
    want = torch.zeros(t, C, dtype=torch.float64)
    for j in range(t):
        for s in range(k):
            i = int(experts[j, s])
            hid = torch.nn.functional.gelu(w1[i] @ flat[j])
            want[j] += float(gates[j, s]) * (w2[i] @ hid)
    # float64: both sum at most k products in another order than the loop: 1e-12 relative.
    torch.testing.assert_close(top_k_dense(flat, w1, w2, gates, experts), want,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(top_k_indexed(flat, w1, w2, gates, experts), want,
                               rtol=1e-12, atol=1e-12)


def test_dense_top_k_has_no_sync_and_the_indexed_one_does() -> None:
    g = torch.Generator().manual_seed(0)
    flat, w1, w2 = torch.randn(9, 4, generator=g), torch.randn(3, 5, 4), torch.randn(3, 4, 5)
    gates, experts = torch.rand(9, 3, generator=g).topk(2, dim=-1)
    check_placement(lambda tr: top_k_dense(flat, w1, w2, gates, experts))
    with pytest.raises(DevicePlacementError, match="nonzero"):
        check_placement(lambda tr: top_k_indexed(flat, w1, w2, gates, experts))


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_off_diagonal_mean_is_the_mean_of_the_off_diagonal(n: int, seed: int) -> None:
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m.diagonal().fill_(math.nan)  # the diagonal must not leak in
    entries = [float(m[i, j]) for i in range(n) for j in range(n) if i != j]
    got = off_diagonal_mean(m)
    if not entries:
        assert math.isnan(float(got))
    else:
        assert math.isclose(float(got), math.fsum(entries) / len(entries),
                            rel_tol=1e-12, abs_tol=1e-14)


def test_nash_mtl_update_copies_the_gram_to_the_host_once() -> None:
    """Nash-MTL on a GPU: per update, one device-to-host copy of the (n, n) task Gram and one
    copy of α back; the adaptive Newton and every check then run on the host (before: a sync
    per Newton iteration plus about six checks per update)."""
    from namex_ref.mtl import NashMTL

    torch.manual_seed(0)
    shared = torch.nn.Linear(6, 6)
    heads = [torch.nn.Linear(6, 1) for _ in range(3)]
    x = torch.randn(8, 6)
    mtl = NashMTL(n_tasks=3, max_norm=0.0)

    def run(tr: DeviceTracker) -> None:
        mtl.device = tr.device()
        mtl._set_alpha(mtl.alpha)  # α on the stand-in device
        tr.events.clear()
        z = shared(x).tanh()
        losses = torch.stack([h(z).pow(2).mean() for h in heads])
        mtl.backward(losses, shared.parameters())

    tr = check_placement(run, expect=[("sync", "_update"), ("h2d", "_set_alpha")])
    assert tr.counts()["sync"] == 1 and tr.counts()["h2d"] == 1
    assert mtl.last_residual <= mtl.tol


def _loop_events(tmp: Path, steps: int, precision: str = "fp32") -> DeviceTracker:
    """A whole ``train()`` run with the device resolved to the tracker's stand-in GPU; logs,
    evaluations and checkpoints only at the last step."""
    from namex_ref.train import TrainConfig, loop, train

    cfg = TrainConfig(preset="tiny", method="namex-full-mom", steps=steps, batch_size=2,
                      warmup=1, log_every=steps, eval_every=steps, eval_batches=1,
                      final_eval_batches=1, ckpt_every=steps, device="cpu", progress=False,
                      threads=1, corpus_chars=20_000, cache_dir=str(tmp / "cache"),
                      out=str(tmp / f"run{steps}-{precision}"), precision=precision)
    tracker = DeviceTracker()
    resolve = loop.resolve_device
    loop.resolve_device = lambda name, local_rank=0: tracker.device()  # type: ignore[assignment]
    try:
        with tracker:
            train(cfg)
    finally:
        loop.resolve_device = resolve  # type: ignore[assignment]
    return tracker


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_training_steps_wait_for_nothing(tmp_path: Path, precision: str) -> None:
    """The training loop on the stand-in GPU: its syncs (metrics, evaluation, checkpoint) happen
    at log, eval and checkpoint steps only, so four more steps between them add none, and each
    step's only copy is its batch (x and y: two host-to-device copies, the allowed data copy).
    No host tensor is ever mixed into a device operation."""
    four, eight = _loop_events(tmp_path, 4, precision), _loop_events(tmp_path, 8, precision)
    assert four.counts()["sync"] == eight.counts()["sync"] > 0
    assert eight.counts()["h2d"] - four.counts()["h2d"] == 2 * 4
    for tr in (four, eight):
        assert tr.counts()["mix"] == 0 and tr.counts()["setitem"] == 0
        per_step = [e for e in tr.events if e.kind == "h2d" and e.allowed is not None]
        assert len(per_step) == 2 * (4 if tr is four else 8)


@pytest.mark.slow
def test_fp16_steps_wait_once_each_in_the_grad_scaler(tmp_path: Path) -> None:
    """fp16: torch's GradScaler reads its found-inf flag on the host in every step (to skip the
    step on overflow); that one sync per step is the only difference from bf16 (documented in
    namex_ref/train/precision.py and docs/gpu.md)."""
    four, eight = _loop_events(tmp_path, 4, "fp16"), _loop_events(tmp_path, 8, "fp16")
    extra = [e for e in eight.events if e.kind == "sync" and e.function == "step"
             and e.file.endswith("train/precision.py")]
    assert eight.counts()["sync"] - four.counts()["sync"] == 4
    assert len(extra) == 8 and eight.counts()["mix"] == 0
