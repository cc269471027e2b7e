"""Resume after SIGKILL is exact: a training subprocess is killed once a checkpoint exists, then
resumed; every later step's logged loss equals the uninterrupted run's bit for bit (CPU, one
thread in every process, so the kernels reduce in the same order)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from namex_ref.train import TrainConfig, load_checkpoint, read_result
from namex_ref.train.data import load_token_data
from namex_ref.train.metrics import read_jsonl

STEPS = 40
CKPT_EVERY = 5
KILL_DEADLINE_S = 120.0  # generous: the machine is shared


def _argv(cache: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "namex_ref.cli", "train", "--preset", "tiny",
        "--method", "namex-full-mom", "--steps", str(STEPS), "--batch-size", "2",
        "--warmup", "4", "--log-every", "1", "--eval-every", "10", "--eval-batches", "1",
        "--ckpt-every", str(CKPT_EVERY), "--final-eval-batches", "1", "--device", "cpu",
        "--threads", "1", "--no-progress", "--corpus-chars", "300000",
        "--cache-dir", str(cache), "--out", str(out),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_resume_after_sigkill_is_bit_exact(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_token_data(TrainConfig(corpus_chars=300_000, cache_dir=str(cache)))  # warm the cache
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_argv(cache, ref_out), check=True, env=_env(), capture_output=True)
    ref = read_jsonl(ref_out / "metrics.jsonl")
    assert [r["step"] for r in ref] == list(range(1, STEPS + 1))

    proc = subprocess.Popen(_argv(cache, run_out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run_out / "checkpoint.safetensors"
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while not ckpt.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("training subprocess ended or stalled before its first checkpoint")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(ckpt).step
    assert read_result(run_out) is None and killed_at < STEPS

    done = subprocess.run([*_argv(cache, run_out), "--resume"], env=_env(), check=True,
                          capture_output=True, text=True)
    assert "valid ppl" in done.stdout
    assert not list(run_out.glob(".*.tmp"))  # no partial file of the atomic writers is left
    got = read_jsonl(run_out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    later = [(r["step"], r["loss"], r["grad_norm"], r["alpha"], r.get("valid_loss"))
             for r in got if r["step"] > killed_at]
    expected = [(r["step"], r["loss"], r["grad_norm"], r["alpha"], r.get("valid_loss"))
                for r in ref if r["step"] > killed_at]
    assert later == expected  # exact equality of the floats, not a tolerance
    a, b = read_result(run_out), read_result(ref_out)
    assert a is not None and b is not None and a.valid_loss == b.valid_loss
