"""``namex convert``: convert a local Hugging Face MoE model directory (``save_pretrained``
output: config and safetensors) to a merging method and save it for :func:`namex_ref.hf.load`.
``namex generate``: reload a converted model (``OUT/model`` of ``namex train --hf-model``, or a
``namex convert`` folder) and continue a prompt greedily. Call :func:`namex_ref.hf.convert`,
:func:`namex_ref.hf.save`, :func:`namex_ref.hf.load` and :func:`namex_ref.hf.generate_text`;
nothing is computed here. Fine-tuning is ``namex train --hf-model DIR``.
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
    read_model_config(src, "namex convert MODEL")  # clear errors: no config.json, converted
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    options: dict[str, Any] = {}
    if args.method != "smoe":
        options["segment_len"] = args.segment_len
    convert(
        model, args.method, base_rule=args.base_rule, seed=args.seed,
        merge_top_k=args.merge_top_k, **options,
    )
    out = save(model, args.out, tokenizer_from=src)  # namex generate reads the tokenizer there
    print(json.dumps({"out": str(out), "method": args.method}))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from namex_ref.hf.convert import load
    from namex_ref.hf.training import generate_text

    run_model = Path(args.model) / "model"  # OUT/model of namex train --hf-model
    meta = "namex_hf.json"  # hf.convert's _META_FILE
    if not (Path(args.model) / meta).is_file() and (run_model / meta).is_file():
        raise ValueError(
            f"{str(args.model)!r} is a training run folder; its model is in {str(run_model)!r}: "
            f"namex generate {run_model} --prompt ..."
        )
    model = load(args.model)
    print(generate_text(model, args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                        use_cache=args.cache))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``namex convert`` and ``namex generate`` to the ``namex`` parser."""
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
    g = sub.add_parser(
        "generate",
        help="reload a converted model (OUT/model of namex train --hf-model) and continue a "
        "prompt greedily (needs the hf extra)",
    )
    g.add_argument("model", type=Path,
                   help="folder written by namex_ref.hf.save (with its tokenizer.json)")
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens to generate (default: 32)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode with the KV cache (exact for every method, docs/math.md §6); "
                   "--no-cache runs a full forward per token (default: cache)")
    g.set_defaults(func=_cmd_generate)
