"""studies/study2/task.py: the labelled task of issue 29's fine-tuning study.

Oracles: the canon's own counts (66 books, 1,189 chapters, 929 of them in the Old Testament;
Genesis 50 chapters, Psalms 150, Revelation 22; books per division), and macro-F1 worked out by
hand from its definition.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # studies/ is a folder of scripts beside the package
    sys.path.insert(0, str(ROOT))

from studies.study2.task import (  # noqa: E402
    Chapter,
    build_passages,
    chapters,
    class_names,
    held_out,
    heldout_windows,
    label,
    macro_f1,
    train_batch,
)


@pytest.fixture(scope="module")
def bible() -> list[Chapter]:
    from namex_ref.data import load_builtin_corpus

    return chapters(load_builtin_corpus())


def test_chapters_match_the_canon(bible: list[Chapter]) -> None:
    assert len(bible) == 1189
    assert sum(ch.book < 39 for ch in bible) == 929
    per_book = [sum(ch.book == b for ch in bible) for b in range(66)]
    assert (per_book[0], per_book[18], per_book[65]) == (50, 150, 22)  # Genesis, Psalms, Rev.
    assert bible[0].text.startswith("In the beginning")
    assert [ch.chapter for ch in bible if ch.book == 0] == list(range(1, 51))


def test_chapters_refuse_another_layout() -> None:
    with pytest.raises(ValueError, match="expected 66 books"):
        chapters("Genesis\n\nIn the beginning. And so on.\n")


def test_division_sizes_in_books() -> None:
    sizes = [sum(label(b, "division") == k for b in range(66)) for k in range(6)]
    assert sizes == [5, 12, 5, 17, 5, 22]  # Law, History, Wisdom, Prophets, Gospels+Acts, rest
    assert sum(label(b, "testament") for b in range(66)) == 27  # New Testament books
    assert class_names("testament") == ("old", "new")
    with pytest.raises(ValueError, match="book must be"):
        label(66, "division")


def test_held_out_every_fifth_chapter() -> None:
    picked = [c for c in range(1, 51) if held_out(c, 5)]
    assert picked == [3, 8, 13, 18, 23, 28, 33, 38, 43, 48]
    assert [c for c in range(1, 7) if held_out(c, 2)] == [2, 4, 6]
    assert not any(held_out(c, 1) for c in range(1, 10))


def test_macro_f1_by_hand() -> None:
    # class 0: tp 2, fp 1, fn 0 -> F1 = 4/5; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 0 -> 0
    truth = [0, 0, 1, 1, 2]
    pred = [0, 0, 1, 0, 1]
    f1, per = macro_f1(truth, pred)
    # class 1 has fp 1 (the 2 predicted as 1): tp 1, fp 1, fn 1 -> 1/2
    assert per == pytest.approx({0: 0.8, 1: 0.5, 2: 0.0})
    assert f1 == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert macro_f1([1, 1], [1, 1]) == (1.0, {1: 1.0})


def _toy() -> list[Chapter]:
    text = " ".join(f"w{i}" for i in range(40))
    return [Chapter(b, c, text) for b in (0, 5, 40) for c in range(1, 5)]


def test_passages_split_and_batches() -> None:
    encode = lambda s: [int(w[1:]) for w in s.split()]  # noqa: E731 - a toy tokenizer
    p = build_passages(_toy(), encode, task="division", window=8, test_every=2)
    assert len(p.test) == 6 and len(p.train) == 6  # chapters 2 and 4 of each book
    assert {p.labels[i] for i in p.test} == {0, 1, 4}
    x, y = train_batch(p, seed=3, step=7, batch_size=64, window=8)
    x2, y2 = train_batch(p, seed=3, step=7, batch_size=64, window=8)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a pure function of (seed, step)
    assert x.shape == (64, 8) and set(y.tolist()) <= {0, 1, 4}
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(64, 7, dtype=torch.int64))  # windows
    assert not torch.equal(train_batch(p, seed=3, step=8, batch_size=64, window=8)[0], x)
    xt, yt = heldout_windows(p, window=8, per_chapter=2)
    assert yt.tolist() == [p.labels[i] for i in p.test for _ in range(2)]
    assert xt.shape == (12, 8) and xt[0].tolist() == list(range(8))
    assert xt[1].tolist() == list(range(8, 16))
    short = build_passages(_toy(), encode, task="division", window=41, test_every=2)
    assert short.ids == ()
