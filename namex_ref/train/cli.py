"""Sub-commands of ``namex`` contributed by this package (wired in :mod:`namex_ref.cli`).

``namex train [--<TrainConfig field> VALUE ...] [--resume | --resume-if-present]`` and
``namex compare --methods a,b --seeds 0,1,2 --out DIR [--<TrainConfig field> VALUE ...]``.
The flags come from :class:`~namex_ref.train.config.TrainConfig`; nothing is computed here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from namex_ref.merging.config import METHODS
from namex_ref.train.builder import GPT_BUILDER, ModelBuilder
from namex_ref.train.config import TrainConfig
from namex_ref.train.flags import add_config_arguments, config_from_args
from namex_ref.train.interrupt import TrainingInterrupted
from namex_ref.train.resume import StartMode

__all__ = ["parse_methods", "parse_seeds", "register"]


def parse_methods(text: str) -> list[str]:
    """``"smoe,ep-camex"`` -> ``["smoe", "ep-camex"]``; ``"all"`` -> every method."""
    if text.strip() == "all":
        return list(METHODS)
    return [m.strip() for m in text.split(",") if m.strip()]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` -> ``[0, 1, 2]``."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            raise ValueError(f"--seeds: cannot read {part!r} as a seed or range a-b") from exc
    return seeds


def _cmd_train(args: argparse.Namespace) -> int:
    from namex_ref.train.loop import NonFiniteLossError, train

    config = config_from_args(args)
    resume: StartMode = (
        "if-present" if args.resume_if_present else "overwrite" if args.overwrite
        else bool(args.resume)
    )
    try:
        res = train(config, resume=resume, builder=args.builder_for(config) or GPT_BUILDER)
    except NonFiniteLossError as exc:
        print(f"namex train: error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:  # the loop has said where it stopped
        return exc.exit_status
    if res.world_size > 1 and _rank() != 0:
        return 0
    print(
        f"{config.method} seed {config.seed}: valid ppl {res.valid_ppl:.2f} (loss "
        f"{res.valid_loss:.4f}; unigram ppl {res.unigram_ppl:.1f}), "
        f"{res.seconds_per_step * 1e3:.1f} ms/step, fallbacks {res.fallbacks}; wrote {res.out}"
    )
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _cmd_compare(args: argparse.Namespace) -> int:
    from namex_ref.train.comparison import compare
    from namex_ref.train.loop import NonFiniteLossError

    base = config_from_args(args, out=str(args.out))
    try:
        res = compare(
            base, parse_methods(args.methods), parse_seeds(args.seeds), args.out, jobs=args.jobs,
            builder=args.builder_for(base),
        )
    except NonFiniteLossError as exc:
        print(f"namex compare: error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print("namex compare: interrupted; run the same command again to continue (finished "
              "runs are reused, the interrupted one resumes from its checkpoint)",
              file=sys.stderr)
        return exc.exit_status
    print(res.table)
    print(f"wrote {res.out}/results.md, summary.json, compare.png")
    return 0


def _default_builder(config: TrainConfig) -> ModelBuilder | None:
    return None


def register(sub: argparse._SubParsersAction[Any], *,
             builder_for: Callable[[TrainConfig], ModelBuilder | None] = _default_builder
             ) -> None:
    """Add this package's sub-commands to the ``namex`` parser. ``builder_for`` picks the model
    builder of a ``namex train`` / ``compare`` run (``None``: the GPT presets);
    :mod:`namex_ref.cli` passes one that knows Hugging Face models, which this package does
    not import."""
    t = sub.add_parser(
        "train", help="train the MoE GPT with one merging method (flags = TrainConfig fields)",
    )
    add_config_arguments(t)
    how = t.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.safetensors (or the previous checkpoint "
                     "if that is corrupt); an error when OUT holds none; --steps may grow")
    how.add_argument("--resume-if-present", action="store_true",
                     help="like --resume, but start a fresh run when OUT holds no checkpoint")
    how.add_argument("--overwrite", action="store_true",
                     help="start a fresh run in an OUT that holds one; the old run is kept in "
                     "OUT/.replaced until the new run's first checkpoint (moved back if the new "
                     "run fails before)")
    t.set_defaults(func=_cmd_train, builder_for=builder_for)
    c = sub.add_parser(
        "compare", help="train methods x seeds; validation perplexity mean ± 95%% CI table",
    )
    c.add_argument("--methods", default="smoe,ep-camex,namex-full-mom",
                   help=f"comma-separated, or 'all' ({', '.join(METHODS)})")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or a range a-b")
    c.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, one process each (2 on a 2-core machine); "
                   "s/step is then labelled as measured under --jobs N")
    add_config_arguments(c, exclude=frozenset({"method", "seed", "out"}))
    c.add_argument("--out", default="runs/compare", help="root folder of the runs")
    c.set_defaults(func=_cmd_compare, builder_for=builder_for)


