"""``namex convert``: convert a local Hugging Face MoE model directory (``save_pretrained``
output: config and safetensors) to a merging method and save it for :func:`namex_ref.hf.load`.
Calls :func:`namex_ref.hf.convert` and :func:`namex_ref.hf.save`; nothing is computed here.
Fine-tuning is ``namex train --hf-model DIR`` (the training loop of :mod:`namex_ref.train`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from namex_ref.merging.config import METHODS

__all__ = ["register"]


def _cmd_convert(args: argparse.Namespace) -> int:
    from namex_ref.hf.convert import convert, require_transformers, save
    from namex_ref.hf.training import read_model_config

    transformers = require_transformers()
    src = Path(args.model)
    read_model_config(src)  # a clear error when config.json is missing
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    options: dict[str, Any] = {}
    if args.method != "smoe":
        options["segment_len"] = args.segment_len
    convert(
        model, args.method, base_rule=args.base_rule, seed=args.seed,
        merge_top_k=args.merge_top_k, **options,
    )
    out = save(model, args.out)
    print(json.dumps({"out": str(out), "method": args.method}))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``namex convert`` to the ``namex`` parser."""
    c = sub.add_parser(
        "convert",
        help="convert a local Hugging Face MoE model (Qwen2-MoE, Mixtral, OLMoE) to a merging "
        "method and save it (needs the hf extra; fine-tune with namex train --hf-model)",
    )
    c.add_argument("model", type=Path, help="folder written by save_pretrained (config.json)")
    c.add_argument("out", type=Path, help="output folder, read back by namex_ref.hf.load")
    c.add_argument("--method", choices=METHODS, default="namex-full-mom",
                   help="merging method of docs/math.md §3 (default: namex-full-mom)")
    c.add_argument("--segment-len", type=int, default=32,
                   help="tokens per causal routing segment (default: 32)")
    c.add_argument("--base-rule", choices=["perturbed-mean", "mean", "zero"],
                   default="perturbed-mean",
                   help="initial base expert, docs/math.md §6 (default: perturbed-mean)")
    c.add_argument("--merge-top-k", type=int, default=None,
                   help="merge only the k highest-scored experts per segment (default: all)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the base-expert direction (default: 0)")
    c.set_defaults(func=_cmd_convert)
