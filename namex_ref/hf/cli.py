"""``namex convert``: convert a local Hugging Face MoE model directory (``save_pretrained``
output: config and safetensors) to a merging method and save it for :func:`namex_ref.hf.load`.
``namex generate``: reload a converted model (``OUT/model`` of ``namex train --hf-model``, or a
``namex convert`` folder) and continue a prompt greedily. Call :func:`namex_ref.hf.convert`,
:func:`namex_ref.hf.save`, :func:`namex_ref.hf.load` and :func:`namex_ref.hf.generate_text`;
``namex eval``: lm-evaluation-harness tasks and perplexity (:mod:`namex_ref.hf.evaluate`);
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
    from namex_ref.hf.convert import convert, save
    from namex_ref.hf.extra import require_transformers
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
    from namex_ref.hf.convert import is_converted_folder, load
    from namex_ref.hf.training import generate_text

    run_model = Path(args.model) / "model"  # OUT/model of namex train --hf-model
    if not is_converted_folder(args.model) and is_converted_folder(run_model):
        raise ValueError(
            f"{str(args.model)!r} is a training run folder; its model is in {str(run_model)!r}: "
            f"namex generate {run_model} --prompt ..."
        )
    model = load(args.model)
    print(generate_text(model, args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                        use_cache=args.cache))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from namex_ref.hf.evaluate import load_model, perplexity, run_lm_eval

    if not args.tasks and args.perplexity is None:
        raise ValueError("namex eval: give --tasks TASK[,TASK] and/or --perplexity FILE")
    out: dict[str, Any] = {"model": str(args.model)}
    if args.perplexity is not None:
        out["perplexity"] = _file_perplexity(args, load_model, perplexity)
    if args.tasks:
        out["results"] = run_lm_eval(
            args.model, [t for t in args.tasks.split(",") if t], include_path=args.include_path,
            limit=args.limit, batch_size=args.batch_size, device=args.device,
        )
    print(json.dumps(out))
    return 0


def _file_perplexity(args: argparse.Namespace, load_model: Any, perplexity: Any) -> float:
    """Perplexity of ``args.perplexity`` in the folder's tokens (its tokenizer.json, the one
    training used), windows of ``--seq-len`` (default: the run's window from namex_run.json,
    else min(128, max_position_embeddings))."""
    import torch
    from tokenizers import Tokenizer

    from namex_ref.data.tokenizer import BPETokenizer

    path = Path(args.perplexity)
    if not path.is_file():
        raise FileNotFoundError(f"--perplexity: {str(path)!r} is not a file")
    tok_file = Path(args.model) / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(
            f"{str(tok_file)!r} not found: perplexity is measured in the tokens the model was "
            "trained with (namex convert and namex train --hf-model write tokenizer.json)")
    ids = BPETokenizer(Tokenizer.from_file(str(tok_file))).encode(
        path.read_text(encoding="utf-8"))
    if len(ids) < 2:
        raise ValueError(f"--perplexity: {str(path)!r} has fewer than 2 tokens")
    model = load_model(args.model).to(args.device)
    seq_len = args.seq_len
    if seq_len is None:
        run = Path(args.model) / "namex_run.json"
        max_pos = int(getattr(model.config, "max_position_embeddings", 128) or 128)
        seq_len = (int(json.loads(run.read_text(encoding="utf-8"))["seq_len"]) if run.is_file()
                   else min(128, max_pos))
    return float(perplexity(model, torch.tensor(ids), seq_len))


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
    e = sub.add_parser(
        "eval",
        help="evaluate a converted (or original) model folder: lm-evaluation-harness tasks "
        "(needs the eval extra; namex_verse_cloze is built in and offline) and/or perplexity "
        "on a local text file",
    )
    e.add_argument("model", type=Path, help="model folder with config.json and tokenizer.json")
    e.add_argument("--tasks", default=None,
                   help="comma-separated lm-eval task names, e.g. namex_verse_cloze or "
                   "arc_easy,piqa (those download their data)")
    e.add_argument("--perplexity", type=Path, default=None, metavar="FILE",
                   help="a local text file: perplexity in the model folder's tokens")
    e.add_argument("--seq-len", type=int, default=None,
                   help="perplexity window (default: the run's window, else min(128, positions))")
    e.add_argument("--include-path", type=Path, default=None,
                   help="a folder of further lm-eval task YAML files")
    e.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    e.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size (default: 1)")
    e.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    e.set_defaults(func=_cmd_eval)
