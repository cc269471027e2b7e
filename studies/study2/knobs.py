"""Part 3: the merge's own knobs, on NAMEx-Full-Mom, on the fine-tuning task (5 seeds) and on the
1,600-step pre-training (3 seeds; :mod:`studies.study2.plan` orders them). Each knob moves one
MergeConfig field away from the main runs' value; the main runs (parts 1 and 2) are the
reference row, paired by seed.

- γ (propagation step, the paper calls it sensitive): 0.25, 0.5, 2 against 1.
- |β|: 0.25, 0.75 against 0.5; the phase φ: 0 (real β) and π/12 against π/6.
- Newton budget: 5, 10 fixed steps against 20 (the paper's), and 50. The training path has no
  uncapped solver (it never synchronises with the host); converged problems freeze inside the
  budget, so 50 is "adaptive" in effect: it differs from 20 only where 20 steps did not converge.
- singular policy: "uniform" against "ridge" (the default); both count their fallbacks, and the
  report gives the count of every run, so a policy row with zero fallbacks is the same model.
  With 20 steps no bargain falls back, so the policy is also compared where fallbacks occur:
  5 Newton steps with "uniform" against 5 with "ridge" (the newton-5 row). On the pre-training
  "uniform" at 20 steps is not run (:data:`PRETRAIN_SKIP`): the policy acts only on a fallback,
  the main 1,600-step runs have none, so it would train the main runs again. The report checks
  that premise from the main runs' own fallback counts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from studies.study2.finetune import FinetuneSpec, finetune_key, smoke_spec
from studies.study2.jobs import Job
from studies.study2.length import length_config

METHOD = "namex-full-mom"
KNOBS: tuple[tuple[str, str, Any], ...] = (
    ("gamma-0.25", "gamma", 0.25),
    ("gamma-0.5", "gamma", 0.5),
    ("gamma-2", "gamma", 2.0),
    ("beta-0.25", "beta_abs", 0.25),
    ("beta-0.75", "beta_abs", 0.75),
    ("phi-0", "beta_phase", 0.0),
    ("phi-pi12", "beta_phase", math.pi / 12),
    ("newton-5", "newton_iterations", 5),
    ("newton-10", "newton_iterations", 10),
    ("newton-50", "newton_iterations", 50),
    ("uniform", "singular_policy", "uniform"),
    ("newton-5-uniform", "newton_iterations", 5),
)
"""(tag, TrainConfig override field, value): the config list of part 3 (``EXTRA`` adds a second
override to a knob)."""
EXTRA: dict[str, dict[str, Any]] = {"newton-5-uniform": {"singular_policy": "uniform"}}
PRETRAIN_SKIP: frozenset[str] = frozenset({"uniform"})
"""Knobs not run on the pre-training: the same model as the main runs when those never fall
back (dropped in session 8 to keep the study near its budget; see the module docstring)."""


def finetune_knob_jobs(profile: str, seeds: tuple[int, ...], pretrain: str) -> list[Job]:
    """The fine-tuning knobs of ``seeds``, seed-major, each needing the pre-trained run."""
    smoke = profile == "smoke"
    jobs: list[Job] = []
    for seed in seeds:
        for tag, name, value in KNOBS:
            base = smoke_spec(METHOD, seed) if smoke else FinetuneSpec(METHOD, seed)
            spec = dataclasses.replace(base, overrides={name: value, **EXTRA.get(tag, {})})
            jobs.append(Job(finetune_key(METHOD, seed, f"knob-{tag}"), "finetune",
                            spec.to_dict(), (pretrain,)))
    return jobs


def pretrain_knob_jobs(profile: str, seeds: tuple[int, ...]) -> list[Job]:
    """The 1,600-step pre-training knobs of ``seeds`` (8 steps in the smoke profile)."""
    smoke = profile == "smoke"
    steps = 8 if smoke else 1600
    jobs: list[Job] = []
    for seed in seeds:
        for tag, name, value in KNOBS:
            if tag in PRETRAIN_SKIP:
                continue
            cfg = dataclasses.replace(length_config(METHOD, seed, steps, smoke=smoke),
                                      **{name: value, **EXTRA.get(tag, {})})
            payload = {k: v for k, v in cfg.to_dict().items() if k != "out"}
            jobs.append(Job(f"knobs/{steps}/{tag}/seed{seed}", "train", payload))
    return jobs
