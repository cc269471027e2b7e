"""namex eval (namex_ref.hf.evaluate): lm-evaluation-harness on the shipped local cloze task and
perplexity on a local file, offline, on a tiny converted model with a small BPE (docs/hf.md).

Oracles: the harness's accuracy is checked against :func:`cloze_accuracy` (our own loop over
log P(choice | context), not lm-eval's code) on the same items; perplexity against a written-out
window loop (log-softmax gather, one forward per window). Tolerances: accuracy exactly (a count
over 8 items; the two sums of float32 log-probabilities would need to tie within rounding to
differ); perplexity rtol 1e-5 (float32 sums in another order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from namex_ref.cli import main
from namex_ref.hf import convert, save
from namex_ref.hf.evaluate import (
    CLOZE_TASK,
    cloze_accuracy,
    cloze_items,
    load_model,
    load_tokenizer,
    run_lm_eval,
)
from tests.test_hf_families import tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-MoE converted to namex-full-mom (segments of 8) with a 300-token BPE."""
    from namex_ref.data.corpus import load_builtin_corpus
    from namex_ref.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("eval") / "model"
    model = convert(tiny_model("qwen3_moe", vocab=320), "namex-full-mom", segment_len=8)
    save(model, out)
    train_tokenizer(load_builtin_corpus()[:50000], 300).save(out / "tokenizer.json")
    return out


def test_cloze_items_are_deterministic_four_way_with_the_answer_among_them() -> None:
    a, b = cloze_items(30, seed=2), cloze_items(30, seed=2)
    assert a == b and a != cloze_items(30, seed=3)
    for it in a:
        assert len(set(it["choices"])) == 4 and 0 <= it["label"] < 4
        assert it["context"] and not it["context"].endswith(" ")
        assert all(c.startswith(" ") and c[1:].isalpha() for c in it["choices"])


@pytest.mark.slow
def test_lm_eval_reports_the_accuracy_of_the_cloze_and_follows_the_answer_key(
    folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("lm_eval")
    items = cloze_items(8, seed=0)
    model, tok = load_model(folder), load_tokenizer(folder)
    want = cloze_accuracy(model, tok, items)
    got = run_lm_eval(folder, [CLOZE_TASK], items=items, work_dir=tmp_path / "a")
    assert got[CLOZE_TASK]["acc"] == pytest.approx(want, abs=0)
    # a wrong key: the model's own favourite choice of each item (so the harness must now
    # report 1.0, and it differs from the true key's accuracy unless the model is always right)
    fav = [_favourite(model, tok, it) for it in items]
    wrong = [{**it, "label": f} for it, f in zip(items, fav, strict=True)]
    assert cloze_accuracy(model, tok, wrong) == 1.0
    moved = run_lm_eval(folder, [CLOZE_TASK], items=wrong, work_dir=tmp_path / "b")
    assert moved[CLOZE_TASK]["acc"] == 1.0 != got[CLOZE_TASK]["acc"]


def _favourite(model: Any, tok: Any, item: dict[str, Any]) -> int:
    one = [{**item, "label": k} for k in range(4)]
    return next(k for k in range(4) if cloze_accuracy(model, tok, [one[k]]) == 1.0)


def test_perplexity_command_matches_a_written_out_loop(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "In the beginning God created the heavens and the earth. " * 6
    (tmp_path / "t.txt").write_text(text)
    assert main(["eval", str(folder), "--perplexity", str(tmp_path / "t.txt"),
                 "--seq-len", "16"]) == 0
    ppl = json.loads(capsys.readouterr().out)["perplexity"]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    model = load_model(folder)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, 16):
        x = torch.tensor([ids[start : start + 16]])
        y = ids[start + 1 : start + 17]
        x = x[:, : len(y)]
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
        nll -= sum(float(logp[t, y[t]]) for t in range(len(y)))
        count += len(y)
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_eval_errors_are_one_line(folder: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(folder)]) == 2
    assert "--tasks" in capsys.readouterr().err
    assert main(["eval", str(folder), "--perplexity", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err
    assert "none.txt" in err and err.count("\n") == 1
