"""``--tensorboard``: the event files under ``out/tensorboard`` hold the scalars of
``metrics.jsonl`` (the independent reader: the JSONL itself, read back with ``json``, and the
events read back with TensorBoard's own ``EventAccumulator``), nothing is written by default,
and a missing extra is a one-line error naming it.

Tolerance: TensorBoard stores scalars as float32, so each event value must equal the JSONL
value rounded to float32 exactly (``numpy.float32``), no further slack."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_runs import quick

from namex_ref.cli import main
from namex_ref.train import train
from namex_ref.train.config import RUN_CONTROL_FIELDS
from namex_ref.train.tensorboard import TENSORBOARD_EXTRA_HINT, require_tensorboard

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)


def _jsonl(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _events(out: Path) -> EventAccumulator:
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return acc


def test_event_files_hold_the_jsonl_scalars(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(quick(tmp_path / "cache", out, steps=4, tensorboard=True))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    records, acc = _jsonl(out), _events(out)
    tags = set(acc.Tags()["scalars"])
    for key in ("loss", "ce", "aux", "lr", "grad_norm", "tokens_per_s", "valid_loss",
                "valid_ppl", "fallbacks", "residual_max"):
        logged = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        assert logged, key
        assert key in tags, key
        events = [(e.step, e.value) for e in acc.Scalars(key)]
        assert events == [(s, float(np.float32(v))) for s, v in logged], key
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "alpha" not in tags and "cosine" not in tags  # lists stay in the JSONL only


def test_off_by_default(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(quick(tmp_path / "cache", out, steps=2, eval_every=0, ckpt_every=0))
    assert (out / "metrics.jsonl").exists()
    assert not (out / "tensorboard").exists()
    assert "tensorboard" in RUN_CONTROL_FIELDS  # may change on resume


def test_missing_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError) as info:
        require_tensorboard()
    message = str(info.value)
    assert "\n" not in message and TENSORBOARD_EXTRA_HINT in message
    out = tmp_path / "run"
    with pytest.raises(ImportError, match="namex-ref\\[tensorboard\\]"):
        train(quick(tmp_path / "cache", out, steps=2, tensorboard=True))
    assert not (out / "metrics.jsonl").exists()  # refused before any work
    code = main(["train", "--tensorboard", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and TENSORBOARD_EXTRA_HINT in err


def test_resume_shows_each_step_once(tmp_path: Path) -> None:
    """A run resumed from step 2 (its latest checkpoint removed, so the previous one is used)
    after events up to step 4 were written: TensorBoard purges the old 3..4, so the loss curve
    is steps 1..4 once each, equal to the (cut back and rewritten) JSONL."""
    out = tmp_path / "run"
    config = quick(tmp_path / "cache", out, steps=4, ckpt_every=2, tensorboard=True)
    train(config)
    (out / "checkpoint.safetensors").unlink()
    train(config, resume=True)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    records = _jsonl(out)
    events = [(e.step, e.value) for e in _events(out).Scalars("loss")]
    assert events == [(r["step"], float(np.float32(r["loss"]))) for r in records]
    assert [s for s, _ in events] == [1, 2, 3, 4]
