"""The labelled task of part 2, built from the shipped corpus: which division of the canon (or
which testament) a passage of the World English Bible comes from.

The corpus (:func:`namex_ref.data.load_builtin_corpus`) is the 66 books in canonical order, each
introduced by its title on a block of its own, one block per chapter, blocks separated by a
blank line. :func:`chapters` recovers (book, chapter, text); its tests check the canon's own
counts (66 books, 1,189 chapters: 929 in the Old Testament, 260 in the New).

Labels (``DIVISIONS``, the traditional Protestant divisions; book numbers 0-based):
Law 0-4 (Genesis-Deuteronomy), History 5-16 (Joshua-Esther), Wisdom 17-21 (Job-Song of
Solomon), Prophets 22-38 (Isaiah-Malachi), Gospels and Acts 39-43, Epistles and Revelation
44-65. ``testament``: 0-38 Old, 39-65 New.

Held-out passages: within each book, every ``test_every``-th chapter (1-based chapters
``test_every // 2 + 1``, ``+ test_every``, ...) is held out; the model is fine-tuned on windows
of the other chapters and scored on windows of the held-out ones, so no held-out passage is seen
with its label. The pre-training (part 1's SMoE) read the language-model training split, which
holds most chapters of both kinds as unlabelled text; that is the paper's protocol too (GLUE
sentences may occur in the pre-training corpus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Task = Literal["division", "testament"]
DIVISIONS: tuple[tuple[str, int, int], ...] = (
    ("law", 0, 4),
    ("history", 5, 16),
    ("wisdom", 17, 21),
    ("prophets", 22, 38),
    ("gospels-acts", 39, 43),
    ("epistles-revelation", 44, 65),
)
"""(name, first book, last book), 0-based, inclusive."""
N_BOOKS = 66
TITLE_MAX_CHARS = 40
"""A block this short with no full stop is a book title (the shortest chapter, Psalm 117, has
two verses and about 150 characters)."""


@dataclass(frozen=True)
class Chapter:
    book: int      # 0-based canonical order
    chapter: int   # 1-based within the book
    text: str


def chapters(corpus: str) -> list[Chapter]:
    """The corpus's chapters in order. Raises ValueError when the layout is not 66 books."""
    out: list[Chapter] = []
    book, chapter = -1, 0
    for block in corpus.strip("\n").split("\n\n"):
        if len(block) <= TITLE_MAX_CHARS and "." not in block:
            book, chapter = book + 1, 0
            continue
        if book < 0:
            raise ValueError("the corpus does not start with a book title")
        chapter += 1
        out.append(Chapter(book, chapter, block))
    if book + 1 != N_BOOKS:
        raise ValueError(f"expected {N_BOOKS} books in the corpus, found {book + 1}")
    return out


def class_names(task: Task) -> tuple[str, ...]:
    if task == "testament":
        return ("old", "new")
    if task == "division":
        return tuple(name for name, _, _ in DIVISIONS)
    raise ValueError(f"unknown task {task!r}; choose 'division' or 'testament'")


def label(book: int, task: Task) -> int:
    """The class of 0-based ``book`` under ``task``."""
    if not 0 <= book < N_BOOKS:
        raise ValueError(f"book must be in [0, {N_BOOKS}), got {book}")
    if task == "testament":
        return int(book >= 39)
    for k, (_, first, last) in enumerate(DIVISIONS):
        if first <= book <= last:
            return k
    raise AssertionError("DIVISIONS cover every book")


def held_out(chapter: int, test_every: int) -> bool:
    """Whether 1-based ``chapter`` is a held-out chapter (every ``test_every``-th one)."""
    return chapter % test_every == (test_every // 2 + 1) % test_every if test_every > 1 else False


@dataclass(frozen=True)
class Passages:
    """Token ids per chapter and the split. ids[i]: (L_i,) int64; labels[i]: class."""

    ids: tuple[Tensor, ...]
    labels: tuple[int, ...]
    train: tuple[int, ...]   # chapter indices with at least one window
    test: tuple[int, ...]
    n_classes: int


def build_passages(chs: list[Chapter], encode: object, *, task: Task, window: int,
                   test_every: int, chapters_per_book: int = 0) -> Passages:
    """Tokenise the chapters (``encode``: str -> list[int]); chapters shorter than ``window``
    tokens are dropped; ``chapters_per_book`` > 0 keeps only the first chapters of each book."""
    assert callable(encode)
    ids: list[Tensor] = []
    labels: list[int] = []
    train: list[int] = []
    test: list[int] = []
    for ch in chs:
        if chapters_per_book and ch.chapter > chapters_per_book:
            continue
        t = torch.tensor(encode(ch.text), dtype=torch.int64)
        if t.numel() < window:
            continue
        (test if held_out(ch.chapter, test_every) else train).append(len(ids))
        ids.append(t)
        labels.append(label(ch.book, task))
    return Passages(tuple(ids), tuple(labels), tuple(train), tuple(test),
                    len(class_names(task)))


def train_batch(p: Passages, *, seed: int, step: int, batch_size: int,
                window: int) -> tuple[Tensor, Tensor]:
    """A class-balanced batch, a pure function of (seed, step): class uniform (among classes
    with training chapters), chapter uniform within it, window start uniform. ((B, T), (B,))."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    by_class: dict[int, list[int]] = {}
    for i in p.train:
        by_class.setdefault(p.labels[i], []).append(i)
    classes = sorted(by_class)
    xs, ys = [], []
    for _ in range(batch_size):
        c = classes[int(torch.randint(len(classes), (), generator=gen))]
        i = by_class[c][int(torch.randint(len(by_class[c]), (), generator=gen))]
        start = int(torch.randint(p.ids[i].numel() - window + 1, (), generator=gen))
        xs.append(p.ids[i][start:start + window])
        ys.append(c)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def heldout_windows(p: Passages, *, window: int, per_chapter: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows from the start of each held-out chapter, at most
    ``per_chapter`` of them: ((M, T), (M,))."""
    xs, ys = [], []
    for i in p.test:
        n = min(p.ids[i].numel() // window, per_chapter)
        for k in range(n):
            xs.append(p.ids[i][k * window:(k + 1) * window])
            ys.append(p.labels[i])
    if not xs:
        raise ValueError("no held-out window: use a smaller window or more chapters")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def macro_f1(truth: list[int], pred: list[int]) -> tuple[float, dict[int, float]]:
    """Macro-averaged F1 over the classes in ``truth`` ∪ ``pred`` (F1 = 2PR/(P+R), 0 when a
    class has no true positive), and the per-class F1."""
    labels = sorted(set(truth) | set(pred))
    per: dict[int, float] = {}
    for c in labels:
        tp = sum(1 for t, q in zip(truth, pred, strict=True) if t == c and q == c)
        fp = sum(1 for t, q in zip(truth, pred, strict=True) if t != c and q == c)
        fn = sum(1 for t, q in zip(truth, pred, strict=True) if t == c and q != c)
        per[c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return (sum(per.values()) / len(per) if per else 0.0), per
