"""Loader for WikiText-103 (or WikiText-2) in its *raw* file layout.

WikiText cannot be downloaded here, so the loader only reads files the user provides.
Expected layout, as in the ``wikitext-103-raw-v1`` release (Merity et al., 2016; text from
Wikipedia, CC BY-SA)::

    DIR/wiki.train.raw
    DIR/wiki.valid.raw
    DIR/wiki.test.raw

(``DIR/wikitext-103-raw/`` is also accepted.) Each file is UTF-8 text, one paragraph per
line: article titles are lines `` = Title = ``, section headings `` = = Section = = `` (one
more ``=`` per level), paragraphs are lines starting with a space, and blank lines hold a
single space. The loader returns each file's text unchanged (newlines normalised to
``"\\n"``); :func:`iter_articles` and :func:`parse_heading` read the structure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from namex_ref.data.corpus import CorpusSplits

__all__ = [
    "WIKITEXT_FILES",
    "iter_articles",
    "load_wikitext",
    "parse_heading",
    "resolve_wikitext_dir",
]

WIKITEXT_FILES: dict[str, str] = {
    "train": "wiki.train.raw",
    "valid": "wiki.valid.raw",
    "test": "wiki.test.raw",
}
"""Split name to file name, in the raw release layout."""

_SUBDIRS = ("wikitext-103-raw", "wikitext-2-raw")
_HEADING = re.compile(r"^ ((?:= )+)(\S.*?) ((?:= )*=) ?$")


def resolve_wikitext_dir(directory: str | os.PathLike[str]) -> Path:
    """Return the folder holding the three ``wiki.*.raw`` files.

    Looks in ``directory`` itself, then in its ``wikitext-103-raw`` / ``wikitext-2-raw``
    subfolder.

    Raises:
        FileNotFoundError: naming the missing files and what to provide.
    """
    base = Path(directory)
    candidates = [base, *(base / sub for sub in _SUBDIRS)]
    for folder in candidates:
        if all((folder / name).is_file() for name in WIKITEXT_FILES.values()):
            return folder
    missing = [name for name in WIKITEXT_FILES.values() if not (base / name).is_file()]
    where = "does not exist" if not base.exists() else "lacks " + ", ".join(missing)
    raise FileNotFoundError(
        f"WikiText raw files not found: {str(base)!r} {where}. Provide the WikiText-103 raw "
        f"release (wikitext-103-raw-v1; WikiText-2 raw works too): unpack it so that "
        f"{', '.join(WIKITEXT_FILES.values())} lie directly in that folder (or in its "
        f"'wikitext-103-raw' subfolder). This project cannot download it; the built-in "
        f"corpus (namex_ref.data.load_builtin_corpus) is the offline alternative."
    )


def _read(path: Path, max_chars: int | None) -> str:
    with path.open("r", encoding="utf-8") as handle:
        if max_chars is None:
            return handle.read()
        text = handle.read(max_chars)
    cut = text.rfind("\n")
    # Keep whole lines; a single overlong line is cut at max_chars.
    return text if len(text) < max_chars or cut < 0 else text[: cut + 1]


def load_wikitext(directory: str | os.PathLike[str], max_chars: int | None = None) -> CorpusSplits:
    """Read the WikiText raw train/valid/test files.

    Args:
        directory: folder with ``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``
            (or its ``wikitext-103-raw`` subfolder).
        max_chars: if given, read at most this many characters of each file, cut back to
            the last whole line (for quick CPU runs; the full train file is ~540 MB).

    Returns:
        :class:`~namex_ref.data.corpus.CorpusSplits` with each file's text.

    Raises:
        FileNotFoundError: if any of the three files is missing (the message lists them).
        ValueError: if ``max_chars`` is not positive.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    folder = resolve_wikitext_dir(directory)
    texts = {split: _read(folder / name, max_chars) for split, name in WIKITEXT_FILES.items()}
    return CorpusSplits(train=texts["train"], valid=texts["valid"], test=texts["test"])


def parse_heading(line: str) -> tuple[int, str] | None:
    """Parse a WikiText heading line.

    Args:
        line: one line, with or without its trailing newline.

    Returns:
        ``(level, title)`` with level 1 for an article title (`` = Title = ``), 2 for
        `` = = Section = = `` and so on; ``None`` for any other line.
    """
    match = _HEADING.match(line.rstrip("\n"))
    if match is None:
        return None
    opening = match.group(1).count("=")
    closing = match.group(3).count("=")
    if opening != closing:
        return None
    return opening, match.group(2)


def iter_articles(raw: str) -> Iterator[tuple[str, str]]:
    """Split a WikiText raw text into articles.

    Args:
        raw: the content of a ``wiki.*.raw`` file.

    Yields:
        ``(title, body)`` per article, in file order; ``body`` is the article's lines after
        its title line (section headings included), unchanged. Text before the first
        title, if not blank, is yielded with the title ``""``.
    """
    title: str | None = None
    body: list[str] = []
    for line in raw.splitlines(keepends=True):
        heading = parse_heading(line)
        if heading is not None and heading[0] == 1:
            if title is not None or "".join(body).strip():
                yield (title or "", "".join(body))
            title, body = heading[1], []
        else:
            body.append(line)
    if title is not None or "".join(body).strip():
        yield (title or "", "".join(body))
