"""Per-rank device generator states in checkpoints (GPU-correctness issue, DDP resume).

Before: only rank 0 wrote ``torch.cuda.get_rng_state_all()``, and every rank restored
``rng_cuda[i]`` into GPU i, a state rank 0 never advanced: a resumed multi-GPU run drew other
dropout, noise and DARE masks on ranks ≥ 1. Now every rank's own state is saved by rank and
rank r restores entry r into its device. No GPU here: torch.cuda.set_rng_state is replaced by
a recorder, and the states are distinct byte tensors standing in for CUDA generator states.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from namex_ref.train import checkpoint as ck


def _states() -> list[torch.Tensor]:
    out = []
    for seed in (11, 22, 33):
        torch.manual_seed(seed)
        out.append(torch.get_rng_state())
    return out


def _save(tmp_path: Path, device_rng: list[torch.Tensor]) -> ck.Checkpoint:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "ckpt.safetensors"
    ck.save_checkpoint(path, model=model, optimizer=opt, step=3, config={},
                       device_rng=device_rng)
    return ck.load_checkpoint(path)


def test_every_ranks_device_state_round_trips(tmp_path: Path) -> None:
    states = _states()
    got = _save(tmp_path, states).rng_device
    assert len(got) == 3
    for g, s in zip(got, states, strict=True):
        assert torch.equal(g, s)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_rank_r_restores_its_own_state(tmp_path: Path, rank: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    states = _states()
    ckpt = _save(tmp_path, states)
    calls: list[tuple[torch.Tensor, object]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, d="cuda": calls.append((s, d)))
    dev = torch.device("cuda", rank)
    ck.restore_rng(ckpt, device=dev, rank=rank)
    assert len(calls) == 1
    assert torch.equal(calls[0][0], states[rank]) and calls[0][1] == dev


def test_cpu_runs_touch_no_device_generator(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _save(tmp_path, [])
    assert ckpt.rng_device == []
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: calls.append(a))
    torch.manual_seed(99)  # another state than the saved one
    ck.restore_rng(ckpt, device=torch.device("cpu"), rank=0)
    assert calls == []
    assert torch.equal(torch.get_rng_state(), ckpt.rng_torch)
