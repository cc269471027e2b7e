"""The quick training run shared by the training tests: the tiny preset, 8 steps of batch 2 on
a 300k-character slice of the built-in corpus (its tokenizer trains in well under a second), a
metrics line every step, an evaluation every 4 steps, a checkpoint every 4 (the fault tests
pass ``ckpt_every=2``), CPU, one thread (``tests/conftest.py`` sets one thread per test, so
kernels reduce in one order and resumed runs can be compared bit for bit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namex_ref.train import TrainConfig

QUICK_CHARS = 300_000
"""Characters of the built-in corpus the quick runs use."""


def quick(cache: Path, out: Path, **kw: Any) -> TrainConfig:
    """The quick run's configuration writing to ``out`` with the token cache ``cache``;
    ``kw`` overrides any field."""
    base: dict[str, Any] = dict(
        preset="tiny", method="namex-full-mom", steps=8, batch_size=2, warmup=2, log_every=1,
        eval_every=4, eval_batches=1, final_eval_batches=2, ckpt_every=4, device="cpu",
        progress=False, threads=1, corpus_chars=QUICK_CHARS, cache_dir=str(cache), out=str(out),
    )
    base.update(kw)
    return TrainConfig(**base)
