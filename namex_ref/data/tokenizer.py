"""Tokenizers for the language-model experiments: a locally trained byte-level BPE and a
trivial byte tokenizer, both behind the :class:`Tokenizer` protocol.

The BPE is trained here, on the training split, with the HuggingFace ``tokenizers``
library (no pretrained vocabulary is fetched). It has no normalizer and no special
tokens, and its base alphabet is all 256 bytes, so ``decode(encode(s)) == s`` holds for
every string ``s``. Training is deterministic for a given text and ``vocab_size``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "cache_key",
    "encode_to_tensor",
    "train_tokenizer",
]

_MIN_BPE_VOCAB = 256
_TRAIN_CHUNK_CHARS = 1 << 16
_FORMAT_TAG = "namex-bpe-v1"


@runtime_checkable
class Tokenizer(Protocol):
    """What the training code needs from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids; every id is in ``[0, vocab_size)``."""
        ...

    def encode(self, text: str) -> list[int]:
        """Text to ids, ``(L,)`` as a list."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text; ``decode(encode(s)) == s``."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids (vocabulary 256): the no-training fallback.

    ``decode`` replaces invalid UTF-8 (e.g. a sequence cut mid-character) with U+FFFD.
    """

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> list[int]:
        """``(L,)`` byte values of ``text.encode("utf-8")``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of :meth:`encode`; ids must be in ``[0, 256)``."""
        return bytes(ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE (wraps a ``tokenizers.Tokenizer``); build with
    :func:`train_tokenizer` or :meth:`load`."""

    def __init__(self, hf: HFTokenizer) -> None:
        self._hf = hf

    @property
    def hf(self) -> HFTokenizer:
        """The underlying HuggingFace ``tokenizers.Tokenizer``."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary (256 bytes + learned merges)."""
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Text to ``(L,)`` ids."""
        return [int(i) for i in self._hf.encode(text, add_special_tokens=False).ids]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts (in parallel inside ``tokenizers``); one id list per text."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [[int(i) for i in enc.ids] for enc in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text."""
        return str(self._hf.decode([int(i) for i in ids], skip_special_tokens=False))

    def vocab(self) -> dict[str, int]:
        """Token string (byte-level alphabet) to id."""
        return {str(k): int(v) for k, v in self._hf.get_vocab(with_added_tokens=True).items()}

    def to_json(self) -> str:
        """The full tokenizer as a JSON string (``tokenizers`` format)."""
        return str(self._hf.to_str(pretty=False))

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """Inverse of :meth:`to_json`."""
        return cls(HFTokenizer.from_str(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer JSON to ``path`` atomically; parent folders are created.

        Returns:
            The path written.
        """
        target = Path(path)
        _atomic_write_text(target, self.to_json())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` via a temporary file in the same folder + ``os.replace``,
    so readers never see a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


_SAFE_CUT = re.compile(r"\n(?=\S)")


def _chunks(text: str) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``_TRAIN_CHUNK_CHARS`` for the trainer.

    Each cut is placed just before a newline that is followed by a non-space character.
    The byte-level pre-tokenizer (GPT-2 pattern) always makes such a newline a word of its
    own, and ends the preceding whitespace word right before it, so training on the pieces
    counts exactly the same words as training on the whole text.
    """
    start = 0
    n = len(text)
    while start < n:
        end = n
        if start + _TRAIN_CHUNK_CHARS < n:
            match = _SAFE_CUT.search(text, start + _TRAIN_CHUNK_CHARS)
            if match is not None:
                end = match.start()
        yield text[start:end]
        start = end


def cache_key(text: str, vocab_size: int, min_frequency: int = 2) -> str:
    """File name under which :func:`train_tokenizer` caches a trained tokenizer.

    Depends on the training text (SHA-256), the settings and the ``tokenizers`` version.
    """
    import tokenizers

    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [_FORMAT_TAG, vocab_size, min_frequency, tokenizers.__version__], sort_keys=True
        ).encode("utf-8")
    )
    digest.update(b"\0")
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return f"bpe-{vocab_size}-{digest.hexdigest()[:20]}.json"


def _train(text: str, vocab_size: int, min_frequency: int) -> BPETokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(_chunks(text), trainer=trainer)
    return BPETokenizer(hf)


def train_tokenizer(
    text: str,
    vocab_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    min_frequency: int = 2,
) -> BPETokenizer:
    """Train a byte-level BPE on ``text`` (use the training split only).

    Deterministic: the same ``text`` and settings give the same vocabulary and merges.
    With ``cache_dir``, a tokenizer trained earlier on the same text and settings is
    loaded from ``cache_dir / cache_key(...)``; otherwise it is trained and written there
    atomically (temporary file + ``os.replace``), so concurrent runs are safe.

    Args:
        text: training text.
        vocab_size: target vocabulary size, ``>= 256`` (the byte alphabet); the result can
            be smaller when the text has too few mergeable pairs.
        cache_dir: optional folder for the JSON cache.
        min_frequency: a pair must occur at least this often to be merged.

    Returns:
        The trained :class:`BPETokenizer`.

    Raises:
        ValueError: if ``vocab_size < 256``, ``min_frequency < 1`` or ``text`` is empty.
    """
    if vocab_size < _MIN_BPE_VOCAB:
        raise ValueError(
            f"vocab_size must be >= {_MIN_BPE_VOCAB} (the byte alphabet), got {vocab_size}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if not text:
        raise ValueError("cannot train a tokenizer on empty text")
    if cache_dir is None:
        return _train(text, vocab_size, min_frequency)
    path = Path(cache_dir) / cache_key(text, vocab_size, min_frequency)
    if path.is_file():
        try:
            return BPETokenizer.load(path)
        except Exception:  # corrupt or foreign file: retrain and overwrite
            pass
    tokenizer = _train(text, vocab_size, min_frequency)
    tokenizer.save(path)
    return tokenizer


def encode_to_tensor(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Encode ``text`` into a ``(N,)`` int64 tensor of ids."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)
