"""``--overwrite`` (issue 26 item 6): a fresh run in a folder that holds one. The old run's
files stay in ``OUT/.replaced`` until the new run's first checkpoint is written, then go; a new
run that fails before that puts the old files back, byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from namex_ref.models.gpt import MoEGPT
from namex_ref.train import NonFiniteLossError, load_checkpoint, read_result, train
from namex_ref.train.run import ASIDE_NAME
from tests.faults import nan_loss_at
from tests.train_runs import quick


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_overwrite_replaces_the_run_after_its_first_checkpoint(cache: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(quick(cache, out, steps=2, ckpt_every=2, eval_every=2))
    new = quick(cache, out, steps=2, ckpt_every=2, eval_every=2, seed=1)
    # the message a CLI user reads names the flags first (issue 26: it said "resume=True")
    with pytest.raises(ValueError, match=r"already holds a checkpoint: continue it with --resume "
                       r"\(API: resume=True\), replace it with --overwrite"):
        train(new)
    seen: dict[str, Any] = {}
    real = MoEGPT.forward

    def forward(self: MoEGPT, idx: Any, targets: Any = None, **k: Any) -> Any:
        seen.setdefault("aside", (out / ASIDE_NAME / "checkpoint.safetensors").is_file())
        return real(self, idx, targets, **k)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(MoEGPT, "forward", forward)
        res = train(new, resume="overwrite")
    assert seen["aside"]  # the old run was kept aside while the new one had no checkpoint
    assert not (out / ASIDE_NAME).exists()
    assert read_result(out) == res and res.config.seed == 1
    assert load_checkpoint(out / "checkpoint.safetensors").config["seed"] == 1


def test_a_new_run_that_fails_before_its_first_checkpoint_puts_the_old_one_back(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train(quick(cache, out, steps=2, ckpt_every=2, eval_every=2))
    before = _files(out)
    nan_loss_at(monkeypatch, 1)  # NonFiniteLossError at the first log step, before a checkpoint
    with pytest.raises(NonFiniteLossError):
        train(quick(cache, out, steps=2, ckpt_every=2, eval_every=2, seed=1),
              resume="overwrite")
    assert _files(out) == before
    assert not (out / ASIDE_NAME).exists()
