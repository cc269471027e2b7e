"""SIGINT / SIGTERM during training (issue 26 item 1): the run finishes its step, writes a
checkpoint, says where it stopped (terminal and train.log), exits 130 / 143 from the CLI with no
traceback, and the resumed run equals the uninterrupted one bit for bit (CPU, one thread). A
second signal exits at once; the previous handlers are restored.

The signals are real: ``signal.raise_signal`` from inside a training forward (deterministic
step) and ``os.kill`` of a ``namex train`` child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from namex_ref.train import load_checkpoint, read_result, train
from namex_ref.train.interrupt import TrainingInterrupted
from namex_ref.train.metrics import read_jsonl
from tests.faults import signal_at
from tests.train_runs import QUICK_CHARS, quick

STEPS = 8
MESSAGE = "interrupted at step {} of {}; checkpoint written; continue with --resume"
CHILD_DEADLINE_S = 180.0  # generous: the machine is shared


def _observables(out: Path) -> list[tuple[Any, ...]]:
    return [(r["step"], r["loss"], r["ce"], r["grad_norm"], r["lr"], r["alpha"],
             r["residual_max"], r.get("valid_loss")) for r in read_jsonl(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: 8 steps, metrics every 2, checkpoint every 4."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(quick(cache, out, log_every=2, ckpt_every=4))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_interval_checkpoints_and_the_resume_is_exact(
    sig: signal.Signals, cache: Path, reference: Path, tmp_path: Path
) -> None:
    """Signal during step 3 (between the log steps 2 and 4, the checkpoints 0 and 4): step 3
    completes, its checkpoint carries the interval's partial sums, and the resumed run's
    metrics (step 4's mean over steps 3-4 included) equal the reference's exactly."""
    out = tmp_path / "run"
    cfg = quick(cache, out, log_every=2, ckpt_every=4)
    before = signal.getsignal(sig)
    with pytest.MonkeyPatch.context() as m:
        signal_at(m, 3, sig)
        with pytest.raises(TrainingInterrupted) as info:
            train(cfg)
    assert signal.getsignal(sig) is before  # handlers restored
    assert info.value.step == 3 and info.value.exit_status == 128 + sig
    assert load_checkpoint(out / "checkpoint.safetensors").step == 3
    assert MESSAGE.format(3, STEPS) in (out / "train.log").read_text()
    res = train(cfg, resume=True)
    assert _observables(out) == _observables(reference)
    ref = read_result(reference)
    assert ref is not None and res.valid_loss == ref.valid_loss


def test_a_signal_at_a_checkpoint_step_stops_there(cache: Path, reference: Path,
                                                   tmp_path: Path) -> None:
    """Signal during step 4 (a checkpoint step): that checkpoint is the one kept."""
    out = tmp_path / "run"
    cfg = quick(cache, out, log_every=2, ckpt_every=4)
    with pytest.MonkeyPatch.context() as m:
        signal_at(m, 4, signal.SIGINT)
        with pytest.raises(TrainingInterrupted):
            train(cfg)
    assert load_checkpoint(out / "checkpoint.safetensors").step == 4
    train(cfg, resume=True)
    assert _observables(out) == _observables(reference)


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt),
                                             (signal.SIGTERM, SystemExit)])
def test_a_second_signal_exits_at_once(sig: signal.Signals, raised: type[BaseException],
                                       cache: Path, tmp_path: Path) -> None:
    """Two signals in step 2: the second raises inside the forward (no checkpoint of step 2),
    SIGTERM as SystemExit(143); the previous handlers are back."""
    out = tmp_path / "run"
    before = signal.getsignal(sig)
    with pytest.MonkeyPatch.context() as m:
        signal_at(m, 2, sig, sig)
        with pytest.raises(raised) as info:
            train(quick(cache, out, log_every=1, ckpt_every=1))
    if raised is SystemExit:
        assert info.value.code == 143
    assert signal.getsignal(sig) is before
    assert load_checkpoint(out / "checkpoint.safetensors").step == 1


def _argv(cache: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "namex_ref.cli", "train", "--steps", str(steps),
            "--batch-size", "2", "--warmup", "2", "--log-every", "2", "--eval-every", "0",
            "--ckpt-every", str(steps), "--final-eval-batches", "2", "--device", "cpu",
            "--threads", "1", "--no-progress", "--corpus-chars", str(QUICK_CHARS),
            "--cache-dir", str(cache), "--out", str(out)]


@pytest.mark.slow  # two Python start-ups and a reference run: ~30-60 s on a shared machine
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_cli_exits_with_the_signal_status_and_resumes_exactly(
    sig: signal.Signals, status: int, cache: Path, tmp_path: Path
) -> None:
    """``namex train`` in a child process, signalled once training has begun: exit status
    128 + signum, the one-line message on stderr and in train.log, no traceback; then
    ``--resume`` in a child equals an uninterrupted child run bit for bit."""
    steps = 60
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref, out = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_argv(cache, ref, steps), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_argv(cache, out, steps), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    try:
        while not (out / "metrics.jsonl").is_file():  # the first log step is done
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("training child ended or stalled before its first metrics line")
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=CHILD_DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert "Traceback" not in err
    step = load_checkpoint(out / "checkpoint.safetensors").step
    assert 2 <= step < steps
    assert MESSAGE.format(step, steps) in err
    assert MESSAGE.format(step, steps) in (out / "train.log").read_text()
    subprocess.run([*_argv(cache, out, steps), "--resume"], check=True, env=env,
                   capture_output=True)
    assert _observables(out) == _observables(ref)
    a, b = read_result(out), read_result(ref)
    assert a is not None and b is not None and a.valid_loss == b.valid_loss


def test_resume_may_change_the_run_settings_and_says_so(cache: Path, reference: Path,
                                                        tmp_path: Path) -> None:
    """Issue 26 item 2: log / eval / checkpoint intervals and progress may change on resume
    (announced in train.log, each flag with its old and new value) and the trajectory stays
    the reference's bit for bit (final parameters and validation loss); threads and device are
    run settings too (announced); trajectory fields are still refused."""
    from namex_ref.train.resume import operational_changes

    out = tmp_path / "run"
    first = quick(cache, out, steps=4, schedule_steps=8, log_every=1, eval_every=2,
                  ckpt_every=2)
    train(first)
    again = quick(cache, out, log_every=2, eval_every=4, ckpt_every=4, progress=True)
    res = train(again, resume=True)
    log = (out / "train.log").read_text()
    assert ("run settings changed since the checkpoint (they do not change the trajectory): "
            "--ckpt-every 2 -> 4, --eval-every 2 -> 4, --log-every 1 -> 2, --progress False -> "
            "True") in log
    assert "lacks the lines" not in log  # the lines of steps 1-4 were written every step
    ref_res = read_result(reference)
    assert ref_res is not None and res.valid_loss == ref_res.valid_loss
    a = load_checkpoint(out / "checkpoint.safetensors").model_state
    b = load_checkpoint(reference / "checkpoint.safetensors").model_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 6, 8]
    import dataclasses

    assert operational_changes(first.to_dict(), dataclasses.replace(
        first, threads=2, device="auto")) == ["--device 'cpu' -> 'auto'", "--threads 1 -> 2"]
    with pytest.raises(ValueError, match="different configuration: --eval-batches"):
        train(dataclasses.replace(again, eval_batches=2), resume=True)
