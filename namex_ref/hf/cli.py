"""``namex convert``: convert a local Hugging Face MoE model directory (``save_pretrained``
output: config and safetensors), optionally fine-tune it on the built-in corpus, and save it for
:func:`namex_ref.hf.load`. Calls :func:`namex_ref.hf.convert`, :func:`namex_ref.hf.train.finetune`
and :func:`namex_ref.hf.save`; nothing is computed here.
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
    from namex_ref.hf.train import corpus_tokens, finetune

    transformers = require_transformers()
    src = Path(args.model)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src / 'config.json'} not found: pass a save_pretrained folder")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    options: dict[str, Any] = {"segment_len": args.segment_len}
    convert(
        model, args.method, base_rule=args.base_rule, seed=args.seed,
        merge_top_k=args.merge_top_k, **options,
    )
    losses: list[float] = []
    if args.steps > 0:
        tokens = corpus_tokens(src, int(model.config.vocab_size), wikitext=args.wikitext)
        losses = finetune(
            model, tokens, steps=args.steps, batch_size=args.batch_size,
            seq_len=args.seq_len, lr=args.lr, seed=args.seed,
        )
    out = save(model, args.out)
    print(json.dumps({"out": str(out), "method": args.method, "losses": losses}))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``namex convert`` to the ``namex`` parser."""
    c = sub.add_parser(
        "convert",
        help="convert a local Hugging Face MoE model (Qwen2-MoE, Mixtral, OLMoE) to a merging "
        "method, optionally fine-tune it, and save it (needs the hf extra)",
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
    c.add_argument("--steps", type=int, default=0,
                   help="fine-tuning steps on the built-in corpus before saving (default: 0)")
    c.add_argument("--wikitext", type=Path, default=None,
                   help="fine-tune on the WikiText raw files in this folder (wiki.train.raw, "
                   "...) instead of the built-in corpus")
    c.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    c.add_argument("--batch-size", type=int, default=4,
                   help="sequences per fine-tuning step (default: 4)")
    c.add_argument("--seq-len", type=int, default=64,
                   help="tokens per fine-tuning sequence (default: 64)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the base-expert direction and the batches (default: 0)")
    c.set_defaults(func=_cmd_convert)
