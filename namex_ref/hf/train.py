"""A minimal fine-tuning loop for converted Hugging Face models (next-token cross-entropy on a
token stream, AdamW). Not the full ``namex train`` loop: no metrics files, plots, checkpoints,
resume or DDP for Hugging Face models yet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from namex_ref.checks import require_int, require_real
from namex_ref.data.corpus import load_builtin_corpus, token_batches

__all__ = ["corpus_tokens", "finetune"]


def corpus_tokens(
    model_dir: str | Path | None,
    vocab_size: int,
    chars: int = 200_000,
    *,
    wikitext: str | Path | None = None,
) -> Tensor:
    """The first ``chars`` characters of the built-in corpus (or, with ``wikitext``, of the
    WikiText raw train file in that folder, :func:`namex_ref.data.wikitext.load_wikitext`) as a
    (n,) int64 token stream.

    The tokenizer is the model directory's own (``tokenizer.json`` read by transformers'
    ``AutoTokenizer``, offline) when it has one, otherwise the built-in byte tokenizer (256 ids,
    so the model's vocabulary must have at least 256 entries). Raises ``ValueError`` when an id
    would fall outside ``vocab_size``.
    """
    from namex_ref.data.tokenizer import ByteTokenizer
    from namex_ref.hf.convert import require_transformers

    if wikitext is not None:
        from namex_ref.data.wikitext import load_wikitext

        text = load_wikitext(wikitext, max_chars=chars).train
    else:
        text = load_builtin_corpus()[:chars]
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        transformers = require_transformers()
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        ids = tok(text)["input_ids"]
    else:
        ids = ByteTokenizer().encode(text)
    t = torch.tensor(ids, dtype=torch.long)
    if int(t.max()) >= vocab_size:
        raise ValueError(
            f"token id {int(t.max())} is outside the model's vocabulary ({vocab_size}); the "
            "model directory has no tokenizer.json and the built-in byte tokenizer needs a "
            "vocabulary of at least 256"
        )
    return t


def finetune(
    model: Any,
    tokens: Tensor,
    *,
    steps: int = 20,
    batch_size: int = 4,
    seq_len: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """``steps`` AdamW steps of next-token loss (the model's own ``labels=`` loss) on random
    windows of ``tokens`` (:func:`namex_ref.data.corpus.token_batches`); returns the losses.
    Raises ``ValueError`` on a non-finite loss (lower ``lr``)."""
    require_int("steps", steps, low=1)
    require_int("batch_size", batch_size, low=1)
    require_int("seq_len", seq_len, low=2)
    require_real("lr", lr, low=0, low_open=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses: list[float] = []
    for step in range(steps):
        batch = token_batches(tokens, batch_size, seq_len + 1, generator=gen).x.to(device)
        loss = model(batch, labels=batch).loss
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"non-finite loss {value} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(value)
    model.eval()
    return losses
