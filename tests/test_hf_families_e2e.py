"""End to end on the four newer families (Qwen3-MoE, DeepSeek-V2, DeepSeek-V3, GLM-4-MoE; issue
28): ``namex train --hf-model DIR`` fine-tunes, the exported ``OUT/model`` reloads with
``transformers.AutoModelForCausalLM.from_pretrained``, and ``namex eval OUT/model --perplexity
FILE`` measures it, all through the CLI entry point in-process. Offline: tiny random models from
the config classes (tests/test_hf_families.py's builders) with a vocabulary of 320, so the
built-in byte-level BPE fits.

Oracles, none of them the code under test: the loss from metrics.jsonl (first against last
logged value); the logits of a model built again from the source folder and the run's checkpoint
(another path than the export); the perplexity as a written-out loop over windows (log-softmax
gather from the reloaded model's logits, in float64, as tests/test_hf_eval.py).

Tolerances: the reloads are compared to the bit (the same float32 parameters through the same
code on the CPU, the standard of tests/test_hf_auto.py and tests/test_hf_train.py). Perplexity
rtol 1e-5: the command sums float32 cross-entropies, the oracle float64 log-probabilities of the
same float32 logits, in another order (measured below 1e-6 relative).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from namex_ref.cli import main
from namex_ref.train.metrics import read_jsonl
from tests.test_hf_families import NEW, tiny_model

transformers = pytest.importorskip("transformers")

VOCAB = 320  # ≥ 256: the built-in byte-level BPE needs the byte alphabet
SEQ, SEG = 32, 8
# 20 steps, as tests/test_hf_train.py's SHORT (eval only at the end, one checkpoint at the end).
TRAIN = ["--method", "namex-full-mom", "--steps", "20", "--batch-size", "4", "--seq-len",
         str(SEQ), "--segment-len", str(SEG), "--lr", "3e-3", "--warmup", "2", "--log-every", "5",
         "--eval-every", "0", "--final-eval-batches", "1", "--ckpt-every", "20",
         "--corpus-chars", "60000", "--device", "cpu", "--no-progress"]
TEXT = ("In the beginning God created the heavens and the earth. "
        "And the earth was without form. ") * 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the module (the BPE is trained once)."""
    return tmp_path_factory.mktemp("cache")


def _oracle_perplexity(model: torch.nn.Module, ids: list[int], seq_len: int) -> float:
    """exp of the mean of −log p(ids[t+1] | ids[:t+1]) over every target once, in
    non-overlapping windows of ``seq_len`` inputs (the last one partial), float64."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_len):
        y = ids[start + 1 : start + seq_len + 1]
        x = torch.tensor([ids[start : start + len(y)]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        nll -= sum(float(logp[t, y[t]]) for t in range(len(y)))
        count += len(y)
    return math.exp(nll / count)


@pytest.mark.parametrize("family", NEW)
def test_train_reload_and_eval_through_the_cli(
    family: str, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """namex train (20 steps, loss falls by > 0.2 nats from the first to the last logged value;
    measured drops 0.63-0.67) → from_pretrained(OUT/model) = namex_ref.hf.load(OUT/model) = the
    model rebuilt from the checkpoint, to the bit, and trained (≠ the untrained conversion) →
    namex eval --perplexity = the written-out perplexity of the reloaded model."""
    import namex_ref.hf  # registers the converted model types with transformers
    from namex_ref.hf.training import build_model
    from namex_ref.train import TrainConfig
    from namex_ref.train.checkpoint import load_checkpoint

    src, out = tmp_path / "src", tmp_path / "run"
    tiny_model(family, vocab=VOCAB).save_pretrained(src)
    assert main(["train", "--hf-model", str(src), *TRAIN, "--cache-dir", str(cache),
                 "--out", str(out)]) == 0
    capsys.readouterr()

    losses = [float(r["loss"]) for r in read_jsonl(out / "metrics.jsonl")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0] - 0.2, losses

    back = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model")).eval()
    assert namex_ref.hf.converted_blocks(back)
    cfg = TrainConfig(hf_model=str(src), out=str(tmp_path / "unused"), method="namex-full-mom",
                      seq_len=SEQ, segment_len=SEG, device="cpu", cache_dir=str(cache))
    rebuilt = build_model(cfg).eval()
    pristine = {k: v.clone() for k, v in rebuilt.state_dict().items()}
    trained = load_checkpoint(out / "checkpoint.safetensors").model_state
    assert any(not torch.equal(trained[k], pristine[k]) for k in pristine)  # it did train
    rebuilt.load_state_dict(trained)
    x = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = back(input_ids=x).logits
        assert torch.equal(got, namex_ref.hf.load(out / "model")(input_ids=x).logits)
        assert torch.equal(got, rebuilt(x).logits)

    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["eval", str(out / "model"), "--perplexity", str(tmp_path / "t.txt")]) == 0
    ppl = json.loads(capsys.readouterr().out)["perplexity"]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(out / "model" / "tokenizer.json")).encode(TEXT).ids
    assert len(ids) > 2 * SEQ  # several windows and a partial one
    assert math.isfinite(ppl) and ppl > 1
    assert ppl == pytest.approx(_oracle_perplexity(back, ids, SEQ), rel=1e-5)
