"""Training a user can leave running: progress lines without a terminal, resume semantics,
checksummed checkpoints, and fault injection (each fault: nothing is lost and the resumed run
equals the uninterrupted one bit for bit; CPU, one thread, so kernels reduce in one order).

Reference run: 8 steps, a checkpoint every 2 steps, metrics every step, evaluation every 4.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import namex_ref.train.checkpoint as ckpt_mod
from namex_ref.cli import main
from namex_ref.models.gpt import MoEGPT
from namex_ref.train import (
    CheckpointWriteError,
    CorruptCheckpointError,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    load_checkpoint,
    lr_at,
    read_result,
    save_checkpoint,
    train,
)
from namex_ref.train.metrics import read_jsonl
from tests import train_runs
from tests.faults import die_at, nan_loss_at
from tests.train_runs import QUICK_CHARS

STEPS = 8


quick = functools.partial(train_runs.quick, steps=STEPS, ckpt_every=2)
"""The reference run's configuration (tests/train_runs.py, a checkpoint every 2 steps)."""


@pytest.fixture(scope="module")
def reference(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    TrainResult, list[dict[str, Any]]
]:
    """The uninterrupted run every fault is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(quick(cache, out))
    finally:
        torch.set_num_threads(threads)
    return res, read_jsonl(out / "metrics.jsonl")


def _observables(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["alpha"], r.get("valid_loss"))
            for r in records]


def _assert_equals_reference(out: Path, res: TrainResult,
                             reference: tuple[TrainResult, list[dict[str, Any]]]) -> None:
    ref_res, ref_rec = reference
    got = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # nothing lost, no duplicate
    assert _observables(got) == _observables(ref_rec)  # exact float equality
    assert res.valid_loss == ref_res.valid_loss
    assert read_result(out) == res
    assert not list(out.glob(".*.tmp"))


def _crash_at_step(cache: Path, out: Path, step: int = 7) -> TrainConfig:
    """A run that dies in ``step`` (7 or 8): checkpoint of step 6 (latest) and 4 (previous),
    metrics lines up to ``step - 1``."""
    cfg = quick(cache, out)
    with pytest.MonkeyPatch.context() as m:
        die_at(m, step)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    assert load_checkpoint(out / "checkpoint.safetensors").step == 6
    assert load_checkpoint(out / "checkpoint.prev.safetensors").step == 4
    return cfg


# ------------------------------------------------------------------ progress without a terminal

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[namex-full-mom s0\] step (\d+)/6 loss \d+\.\d{4} "
    r"lr [0-9.e-]+ tokens/s \d+ elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d$"
)
EVAL = re.compile(r"\] step 4/6 evaluation: valid loss \d+\.\d{4} perplexity \d+\.\d\d$")


def test_namex_train_writes_progress_lines_to_a_file(cache: Path, tmp_path: Path) -> None:
    """`namex train` with stdout and stderr redirected to a file (as under nohup): a line every
    --log-every steps, the evaluation, and the announcements, in the file and in train.log."""
    out = tmp_path / "run"
    log = tmp_path / "stdout.txt"
    argv = [sys.executable, "-m", "namex_ref.cli", "train", "--steps", "6", "--batch-size", "2",
            "--log-every", "2", "--eval-every", "4", "--eval-batches", "1",
            "--final-eval-batches", "1", "--ckpt-every", "2", "--device", "cpu",
            "--corpus-chars", str(QUICK_CHARS), "--cache-dir", str(cache), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, check=True,
                       timeout=300)
    printed = log.read_text().splitlines()
    steps = [int(m.group(1)) for m in map(LINE.match, printed) if m]
    assert steps == [2, 4, 6]
    assert sum(bool(EVAL.search(line)) for line in printed) == 1
    text = "\n".join(printed)
    assert "] fresh start: 6 steps, method namex-full-mom, preset tiny" in text
    # the default --warmup 40 is longer than this run: clamped, with a note
    assert "note: --warmup 40 is longer than the 6-step lr schedule; warmup clamped to 6" in text
    assert "] final evaluation on 1 validation batches" in text
    assert re.search(r"\] final: valid loss \d+\.\d{4} perplexity \d+\.\d\d", text)
    assert f"] wrote {str(out)!r}: result.json, metrics.jsonl, train.log" in text
    assert printed[-1].startswith("namex-full-mom seed 0: valid ppl")  # the CLI's summary
    logged = (out / "train.log").read_text().splitlines()
    assert [int(m.group(1)) for m in map(LINE.match, logged) if m] == [2, 4, 6]
    assert {line for line in printed if "] " in line} <= set(logged)


def test_resume_is_announced_with_the_step_and_the_file(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    cfg = quick(cache, out, steps=4, eval_every=0)
    train(cfg)
    capsys.readouterr()
    train(dataclasses.replace(cfg, steps=6, progress=True), resume=True)
    printed = capsys.readouterr().out
    assert f"resuming from step 4 of 6 (checkpoint {str(out / 'checkpoint.safetensors')!r})" in (
        printed
    )
    assert "extending a run of 4 steps to 6; the lr schedule keeps its length of 4 steps" in (
        printed
    )
    assert "resuming from step 4 of 6" in (out / "train.log").read_text()


def test_on_a_terminal_tqdm_shows_the_steps_and_the_log_keeps_them(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both streams a TTY: a tqdm bar on stderr instead of step lines on stdout; evaluations
    and announcements are still printed (through tqdm), and train.log has every line."""
    out = tmp_path / "tty"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(quick(cache, out, steps=4, log_every=2, eval_every=4, progress=True))
    captured = capsys.readouterr()
    assert "4/4" in captured.err  # the bar
    assert not re.search(r"\] step \d+/4 loss", captured.out)
    assert "] step 4/4 evaluation: valid loss" in captured.out
    assert "] fresh start: 4 steps" in captured.out
    logged = (out / "train.log").read_text()
    assert len(re.findall(r"\] step \d+/4 loss", logged)) == 2


# ----------------------------------------------------------------------------- resume semantics


def test_resume_without_a_checkpoint_is_an_error(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "empty"
    assert main(["train", "--out", str(out), "--resume", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"namex: error: --resume: {str(out)!r} holds no checkpoint (checkpoint.safetensors or "
        f"checkpoint.prev.safetensors) to resume; drop --resume to start a fresh run there, or "
        f"pass --resume-if-present to resume only when there is one"
    )
    assert not out.exists()
    res = train(quick(cache, out, steps=2, eval_every=0), resume="if-present")
    assert res.steps == 2 and (out / "checkpoint.safetensors").is_file()


def test_extending_a_finished_run_equals_a_fresh_run_with_the_old_schedule(
    cache: Path, tmp_path: Path
) -> None:
    """Schedule rule: the lr schedule keeps the checkpoint's length H (schedule_steps = H), the
    extra steps run at lr · min_lr_ratio. So a run of 6 steps extended to 8 equals a fresh run
    with --steps 8 --schedule-steps 6, bit for bit."""
    out = tmp_path / "ext"
    short = quick(cache, out, steps=6, eval_every=0)
    train(short)
    extended = train(dataclasses.replace(short, steps=8), resume=True)
    fresh = train(quick(cache, tmp_path / "fresh", steps=8, schedule_steps=6, eval_every=0))
    assert extended.config == dataclasses.replace(fresh.config, out=str(out))
    assert extended.config.schedule_steps == 6
    a, b = read_jsonl(out / "metrics.jsonl"), read_jsonl(tmp_path / "fresh" / "metrics.jsonl")
    assert _observables(a) == _observables(b)
    assert extended.valid_loss == fresh.valid_loss
    floor = short.lr * short.min_lr_ratio
    assert [r["lr"] for r in a if r["step"] > 6] == [floor, floor]
    assert [r["lr"] for r in a if r["step"] <= 6] == [lr_at(s, short) for s in range(1, 7)]


def test_resume_refuses_trajectory_changes_naming_the_flag(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = quick(cache, out, steps=4, eval_every=0)
    train(cfg)
    for change, flag in (({"lr": 1e-2}, "--lr"), ({"schedule_steps": 9}, "--schedule-steps"),
                         ({"batch_size": 4}, "--batch-size"), ({"seed": 1}, "--seed"),
                         ({"warmup": 1}, "--warmup"), ({"method": "namex"}, "--method")):
        with pytest.raises(ValueError, match=f"different configuration: {flag}: checkpoint"):
            train(dataclasses.replace(cfg, **change), resume=True)
    with pytest.raises(ValueError, match=r"--steps: the checkpoint is at step 4, beyond"):
        train(dataclasses.replace(cfg, steps=3), resume=True)


# ------------------------------------------------------------------------ checkpoint integrity


def _safetensors_checksum(path: Path) -> tuple[str, str]:
    """(stored, recomputed) checksum from the raw file: an oracle that parses the safetensors
    layout itself (8-byte little-endian header length, JSON header with data offsets) and
    follows the documented algorithm, without torch or namex_ref."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n:]
    h = hashlib.sha256()
    for name in sorted(header):
        lo, hi = header[name]["data_offsets"]
        h.update(name.encode() + b"\0" + data[lo:hi])
    for key in sorted(meta):
        if key != "checksum":
            h.update(key.encode() + b"\0" + meta[key].encode() + b"\0")
    return meta["checksum"], "sha256:" + h.hexdigest()


def _small_model() -> tuple[MoEGPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = MoEGPT(TrainConfig().model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 2048, (2, 16))
    model(x, x).loss.backward()  # type: ignore[union-attr]
    opt.step()
    return model, opt


def test_checksum_covers_every_byte_and_matches_an_independent_digest(tmp_path: Path) -> None:
    model, opt = _small_model()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, step=3,
                           config={"a": 1})
    stored, recomputed = _safetensors_checksum(path)
    assert stored == recomputed and stored.startswith("sha256:")
    assert load_checkpoint(path).verified
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for offset in (8 + n + 5, len(raw) // 2, len(raw) - 3):  # first, middle and last tensors
        bad = bytearray(raw)
        bad[offset] ^= 0x40
        target = tmp_path / f"flip{offset}.safetensors"
        target.write_bytes(bytes(bad))
        with pytest.raises(CorruptCheckpointError, match=re.escape(repr(str(target)))):
            load_checkpoint(target)


def test_a_non_finite_state_is_never_written(tmp_path: Path) -> None:
    model, opt = _small_model()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, step=1,
                           config={})
    before = path.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite state: tensor 'model\.tok\.weight'"):
        save_checkpoint(path, model=model, optimizer=opt, step=2, config={})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["c.safetensors"]


def test_non_finite_parameters_stop_before_the_checkpoint(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss of step 4 is finite but its update makes a weight infinite: no checkpoint of
    step 4 is written and the hint names the checkpoint of step 2."""
    out = tmp_path / "inf"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self: torch.optim.AdamW, *a: Any, **k: Any) -> Any:
        result = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(NonFiniteLossError) as info:
        train(quick(cache, out, eval_every=0))
    msg = str(info.value)
    assert msg.startswith("non-finite parameters or optimizer state at step 4")
    ckpt = out / "checkpoint.safetensors"
    assert f"the last checkpoint, {str(ckpt)!r} (step 2), was written before it" in msg
    assert load_checkpoint(ckpt).step == 2


def test_nan_hint_names_the_checkpoint_before_the_nan(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at(monkeypatch, 5)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        train(quick(cache, out, log_every=2, ckpt_every=2, eval_every=0))
    msg = str(info.value)
    assert msg.startswith("non-finite training loss at step 5")
    ckpt = out / "checkpoint.safetensors"
    assert f"{str(ckpt)!r} (step 4), was written before it" in msg
    assert load_checkpoint(ckpt).step == 4


# ---------------------------------------------------------------------------- fault injection

_KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from namex_ref.train import TrainConfig, train

    mode, cfg = sys.argv[1], TrainConfig.from_dict(json.loads(sys.argv[2]))
    real = os.replace
    seen = {"n": 0}

    def replace(src, dst):
        src, dst = Path(src), Path(dst)
        if mode == "before-rename" and dst.name == "checkpoint.prev.safetensors":
            os.kill(os.getpid(), signal.SIGKILL)  # the 2nd save: temp file written, no rename
        if (mode == "between-renames" and dst.name == "checkpoint.safetensors"
                and src.name.endswith(".tmp")):
            seen["n"] += 1
            if seen["n"] == 2:  # latest already moved to .prev, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace
    train(cfg)
""")


@pytest.mark.parametrize("mode", ["before-rename", "between-renames"])
def test_sigkill_while_publishing_a_checkpoint(
    cache: Path, tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str],
    reference: tuple[TrainResult, list[dict[str, Any]]],
) -> None:
    """SIGKILL during the second checkpoint (step 4), after its temporary file was written:
    before any rename (the latest is step 2) or between the two renames (the latest is gone,
    the previous is step 2). Resume continues from step 2 and equals the reference."""
    out = tmp_path / "run"
    cfg = quick(cache, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, mode, json.dumps(cfg.to_dict())],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(out.glob(".checkpoint.safetensors.*.tmp"))) == 1  # the unpublished file
    latest, previous = out / "checkpoint.safetensors", out / "checkpoint.prev.safetensors"
    if mode == "before-rename":
        assert load_checkpoint(latest).step == 2 and not previous.exists()
    else:
        assert not latest.exists() and load_checkpoint(previous).step == 2
    capsys.readouterr()
    res = train(cfg, resume=True)
    if mode == "between-renames":
        assert f"resuming from the previous checkpoint {str(previous)!r} (step 2)" in (
            capsys.readouterr().err
        )
    _assert_equals_reference(out, res, reference)


def test_truncated_last_metrics_line(
    cache: Path, tmp_path: Path, reference: tuple[TrainResult, list[dict[str, Any]]]
) -> None:
    """A kill in the middle of writing the line of step 7 (after the checkpoint of step 6)
    leaves it truncated; the resumed run drops it and writes it again."""
    out = tmp_path / "run"
    cfg = _crash_at_step(cache, out, 8)
    metrics = out / "metrics.jsonl"
    text = metrics.read_text()
    assert text.endswith("\n") and text.count("\n") == 7
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # cut step 7
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3, 4, 5, 6]
    res = train(cfg, resume=True)
    _assert_equals_reference(out, res, reference)


def test_lost_metrics_lines_before_the_checkpoint_are_reported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncation that reaches the checkpoint's own line (step 6) cannot be repaired without
    retraining; the resume says which lines are missing instead of hiding the gap."""
    out = tmp_path / "run"
    cfg = _crash_at_step(cache, out, 8)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:5]) + lines[5][:10])  # steps 1-5, then half of step 6
    capsys.readouterr()
    train(cfg, resume=True)
    assert ("warning: metrics.jsonl lacks the lines of steps 6 (at or before the checkpoint"
            in capsys.readouterr().err)
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3, 4, 5, 7, 8]


def test_flipped_bytes_in_the_latest_checkpoint(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reference: tuple[TrainResult, list[dict[str, Any]]],
) -> None:
    """The latest checkpoint (step 6) has flipped data bytes: the checksum catches it, the run
    says so, keeps the file as .corrupt and resumes from the previous checkpoint (step 4)."""
    out = tmp_path / "run"
    cfg = _crash_at_step(cache, out)
    latest = out / "checkpoint.safetensors"
    raw = bytearray(latest.read_bytes())
    for k in range(4):
        raw[len(raw) // 2 + k] ^= 0xFF
    latest.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="checksum does not match"):
        load_checkpoint(latest)
    capsys.readouterr()
    res = train(cfg, resume=True)
    err = capsys.readouterr().err
    assert f"warning: {str(latest)!r} is corrupt: its checksum does not match" in err
    assert "resuming from the previous checkpoint" in err and "(step 4)" in err
    assert (out / "checkpoint.safetensors.corrupt").read_bytes() == bytes(raw)
    _assert_equals_reference(out, res, reference)


def test_corrupt_latest_without_a_previous_is_a_named_error(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptCheckpointError, match="no previous checkpoint to fall back to"):
        train(quick(cache, out), resume=True)


def test_disk_full_while_writing_a_checkpoint(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reference: tuple[TrainResult, list[dict[str, Any]]],
) -> None:
    """OSError(ENOSPC) from the writer at the second checkpoint: a one-line error (exit 2 from
    the CLI), the checkpoint of step 2 intact and verified, no temporary file; the resumed run
    equals the reference."""
    out = tmp_path / "run"
    cfg = quick(cache, out)
    real = ckpt_mod.save_file
    calls = {"n": 0}

    def full_disk(tensors: Any, filename: str, metadata: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tensors, filename, metadata=metadata)

    argv = ["train", "--steps", str(STEPS), "--batch-size", "2", "--warmup", "2",
            "--log-every", "1", "--eval-every", "4", "--eval-batches", "1",
            "--final-eval-batches", "2", "--ckpt-every", "2", "--device", "cpu", "--threads", "1",
            "--no-progress", "--corpus-chars", str(QUICK_CHARS), "--cache-dir", str(cache),
            "--out", str(out)]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ckpt_mod, "save_file", full_disk)
        assert main(argv) == 2
    err = capsys.readouterr().err
    latest = out / "checkpoint.safetensors"
    assert err == (
        f"namex: error: could not write the checkpoint of step 4 to {str(latest)!r}: [Errno "
        f"{errno.ENOSPC}] {os.strerror(errno.ENOSPC)}; the previous checkpoint is left as it "
        f"was (free some space, then continue with --resume)\n"
    )
    ck = load_checkpoint(latest)
    assert ck.step == 2 and ck.verified
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(CheckpointWriteError):  # the API raises the same error (an OSError)
        with pytest.MonkeyPatch.context() as m:
            calls["n"] = 1
            m.setattr(ckpt_mod, "save_file", full_disk)
            train(quick(cache, tmp_path / "api"))
    res = train(cfg, resume=True)
    _assert_equals_reference(out, res, reference)


def test_legacy_v1_checkpoints_load_unverified(tmp_path: Path) -> None:
    """Backward compatibility: a checkpoint written before checksums (format v1, no checksum
    key) loads with ``verified=False``; the same bytes tagged v2 without a checksum fail."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, opt = _small_model()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, step=5,
                           config={"a": 1})
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    del meta["checksum"]
    tensors = load_file(str(path))
    v1 = tmp_path / "v1.safetensors"
    save_file(tensors, str(v1), metadata={**meta, "format": "namex-train-ckpt-v1"})
    old = load_checkpoint(v1)
    assert not old.verified and old.step == 5 and old.config == {"a": 1}
    assert all(torch.equal(old.model_state[k], v) for k, v in model.state_dict().items())
    unsigned = tmp_path / "unsigned.safetensors"
    save_file(tensors, str(unsigned), metadata=meta)
    with pytest.raises(CorruptCheckpointError, match="checksum does not match"):
        load_checkpoint(unsigned)
