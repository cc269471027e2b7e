"""Part 1: training length. The tiny preset at 400, 1,600 and 6,400 steps for SMoE, EP-CAMEx,
CAMEx and NAMEx-Full-Mom, and the routing segment halved and doubled at the longest length.

The schedule scales with the length: warmup = 10 % of the steps (the preset's 40 of 400), cosine
decay to 0.1·lr at the last step, evaluation every 1/8 of the run on 4 validation batches, the
final evaluation on the whole validation split, a checkpoint every 1/8 of the run (the resume
point), a metrics line every 1/40. Everything else is ``TrainConfig``'s default (batch 16,
lr 3e-3, AdamW, one thread), as in ``results/reproduction.md``.
"""

from __future__ import annotations

from typing import Any

from namex_ref.models.gpt import preset
from namex_ref.train import TrainConfig
from studies.study2.jobs import Job

METHODS: tuple[str, ...] = ("smoe", "ep-camex", "camex", "namex-full-mom")
"""The four methods of the length study (issue 29, part 1)."""
SEGMENT_METHODS: tuple[str, ...] = ("ep-camex", "camex", "namex-full-mom")
"""Methods that route per causal segment (SMoE routes each token: no segment length)."""
WARMUP_FRACTION = 0.1
"""The preset's warmup share (40 of 400 steps), kept at every length."""


def length_config(method: str, seed: int, steps: int, *, segment_len: int | None = None,
                  smoke: bool = False) -> TrainConfig:
    """The TrainConfig of one length-study run (``out`` is set by the job's key)."""
    log_every = max(steps // 40, 1)
    every = max(steps // 8 // log_every, 1) * log_every
    extra: dict[str, Any] = {}
    if smoke:  # seconds, not minutes: a slice of the corpus, two validation batches
        extra = {"corpus_chars": 200_000, "final_eval_batches": 2, "eval_batches": 1}
    return TrainConfig(
        preset="tiny", method=method, seed=seed, steps=steps,
        warmup=max(round(WARMUP_FRACTION * steps), 1), log_every=log_every, eval_every=every,
        ckpt_every=every, segment_len=segment_len, progress=False, threads=1, **extra,
    )


def length_key(steps: int, method: str, seed: int, segment_len: int | None = None) -> str:
    tag = method if segment_len is None else f"{method}-seg{segment_len}"
    return f"length/{steps}/{tag}/seed{seed}"


def length_job(method: str, seed: int, steps: int, *, segment_len: int | None = None,
               smoke: bool = False) -> Job:
    cfg = length_config(method, seed, steps, segment_len=segment_len, smoke=smoke)
    payload = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    return Job(length_key(steps, method, seed, segment_len), "train", payload)


def preset_segment_len() -> int:
    """The tiny preset's routing segment (tokens)."""
    return preset("tiny").merge.segment_len


def segment_lengths() -> tuple[int, int]:
    """Half and double the preset's segment (16 and 64 for the tiny preset's 32)."""
    seg = preset_segment_len()
    return seg // 2, seg * 2

