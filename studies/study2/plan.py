"""The ordered job list of the study (a profile), balanced so that a partial run is usable:
seed 0 of every method before seed 1 of any, and the short lengths before the long one.

Order of the "full" profile (``parts`` selects which of them are included):

1. per seed k = 0, 1, 2: the 400-step runs of the four methods (part 1), then the fine-tuning
   runs of seed k of the seven methods (part 2; seeds 3 and 4 follow seed 2). The pre-trained
   SMoE is the length study's 400-step SMoE of seed 0 (shared, not retrained): the shortest
   pre-training, so that fine-tuning results arrive early on a shared machine (a longer
   pre-training is one constant, ``PRETRAIN_LENGTH``, away). These come first because they are
   cheap: on a machine shared with other work, a partial result then has every 400-step and
   fine-tuning cell at n = 3 before any 1,600-step run starts;
2. per seed k = 0, 1, 2: the 1,600-step runs of the four methods;
3. per seed k = 0, 1, 2: the 6,400-step runs and the segment-length points (16 and 64 tokens)
   of the three segment-routed methods;
4. the knobs (part 3, :mod:`studies.study2.knobs`): only with ``parts`` naming "knobs".

The "smoke" profile is the same plan with a few steps, one seed and a slice of the corpus (the
tests run it).
"""

from __future__ import annotations

from typing import Literal

from studies.study2.jobs import Job
from studies.study2.length import METHODS, SEGMENT_METHODS, length_job, length_key, segment_lengths

Profile = Literal["full", "smoke"]
PARTS: tuple[str, ...] = ("length", "finetune", "knobs")
DEFAULT_PARTS: tuple[str, ...] = ("length", "finetune")

LENGTHS: dict[str, tuple[int, int, int]] = {"full": (400, 1600, 6400), "smoke": (4, 8, 16)}
LENGTH_SEEDS: dict[str, tuple[int, ...]] = {"full": (0, 1, 2), "smoke": (0,)}
FINETUNE_SEEDS: dict[str, tuple[int, ...]] = {"full": (0, 1, 2, 3, 4), "smoke": (0,)}


PRETRAIN_LENGTH = 0
"""Index into ``LENGTHS`` of the pre-training run of part 2 (0: the shortest)."""


def pretrain_key(profile: Profile) -> str:
    """The run whose final checkpoint is the pre-trained SMoE of part 2."""
    return length_key(LENGTHS[profile][PRETRAIN_LENGTH], "smoe", 0)


def build_plan(profile: Profile = "full", parts: tuple[str, ...] = DEFAULT_PARTS) -> list[Job]:
    """The jobs of ``profile`` restricted to ``parts``, in run order (see module docstring)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    smoke = profile == "smoke"
    short, middle, long = LENGTHS[profile]
    jobs: list[Job] = []
    ft_seeds = list(FINETUNE_SEEDS[profile])
    need_pretrain = "finetune" in parts or "knobs" in parts
    seeds = LENGTH_SEEDS[profile]
    for steps in (short, middle):
        for seed in seeds:
            for method in METHODS:
                key = length_key(steps, method, seed)
                if "length" in parts or (need_pretrain and key == pretrain_key(profile)):
                    jobs.append(length_job(method, seed, steps, smoke=smoke))
            if "finetune" in parts and steps == short:
                from studies.study2.finetune import finetune_jobs

                mine = [s for s in ft_seeds if s == seed or (seed == seeds[-1] and s > seed)]
                jobs += finetune_jobs(mine, pretrain_key(profile), smoke=smoke)
    if "length" in parts:
        for seed in seeds:
            for method in METHODS:
                jobs.append(length_job(method, seed, long, smoke=smoke))
            for seg in segment_lengths():
                for method in SEGMENT_METHODS:
                    jobs.append(length_job(method, seed, long, segment_len=seg, smoke=smoke))
    if "knobs" in parts:
        from studies.study2.knobs import knob_jobs

        jobs += knob_jobs(profile, pretrain_key(profile))
    return jobs
