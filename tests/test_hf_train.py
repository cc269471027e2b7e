"""Fine-tuning Hugging Face MoE models with the ``namex train`` loop (``TrainConfig(hf_model=DIR)``,
``namex train --hf-model DIR``; namex_ref/hf/training.py): the objective, the data and its
tokenizer, the loss falling in 20 steps, exact resume, the exported model reloading with the
trained logits, and the errors. Offline: tiny random models saved with ``save_pretrained``.

Tolerances. The objective check compares the wrapper's cross-entropy with one computed here from
the unconverted model's logits: "smoe" runs the same modules in the same order, so float32 gives
the same bits (bound 0: any difference is a different computation). Resume and reload are
bit-for-bit on the CPU (the loop's own standard, tests/test_train_resume.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from namex_ref.hf.training import train
from namex_ref.merging.config import METHODS
from namex_ref.train import TrainConfig, read_result
from namex_ref.train.metrics import read_jsonl
from tests.test_hf import FAMILIES, tiny_model

transformers = pytest.importorskip("transformers")  # skipped only where the extra is absent

VOCAB = 320  # ≥ 256: the built-in byte-level BPE needs the byte alphabet
# The twenty-step runs: small windows and batches, one periodic evaluation, a short corpus.
SHORT = dict(steps=20, batch_size=4, seq_len=32, segment_len=8, lr=3e-3, warmup=2,
             log_every=5, eval_every=10, eval_batches=1, ckpt_every=10, final_eval_batches=2,
             corpus_chars=60_000, device="cpu", progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the module (the BPE is trained once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A save_pretrained folder per family (vocabulary 320, no tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for family in FAMILIES:
        tiny_model(family, vocab=VOCAB).save_pretrained(root / family)
        out[family] = root / family
    return out


def _config(src: Path, out: Path, cache: Path, **kw: object) -> TrainConfig:
    values: dict[str, object] = {**SHORT, "hf_model": str(src), "out": str(out),
                                 "cache_dir": str(cache), **kw}
    if kw.get("method") == "smoe" and "segment_len" not in kw:
        del values["segment_len"]  # token routing has no segments (refused if given)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in read_jsonl(out / "metrics.jsonl")]


# ---- the objective ------------------------------------------------------------------------------


def test_smoe_objective_is_the_pretrained_models_next_token_loss(
    folders: dict[str, Path], cache: Path
) -> None:
    """The wrapper's ce for "smoe" = cross-entropy of the original model's logits against the
    next tokens, computed here from the unconverted model."""
    from namex_ref.hf.training import build_model

    cfg = _config(folders["qwen2_moe"], cache / "unused", cache, method="smoe")
    model = build_model(cfg).eval()
    original = transformers.AutoModelForCausalLM.from_pretrained(
        str(folders["qwen2_moe"]), local_files_only=True
    ).eval()
    x = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(3))
    idx, y = x[:, :-1], x[:, 1:]
    with torch.no_grad():
        out = model(idx, y)
        ref = F.cross_entropy(original(input_ids=idx).logits.reshape(-1, VOCAB), y.reshape(-1))
    assert out.ce is not None and out.loss is not None
    assert float(out.ce) == float(ref)
    assert float(out.loss) == float(ref)  # no router loss: the config leaves it off
    assert model.config.n_layer == 2 and model.config.merge.n_experts == 4


def test_smoe_balance_coef_adds_the_models_router_loss(
    folders: dict[str, Path], cache: Path
) -> None:
    """balance_coef weighs transformers' own load-balancing loss (aux_loss of the model)."""
    from namex_ref.hf.training import build_model

    cfg = _config(folders["mixtral"], cache / "unused", cache, method="smoe", balance_coef=0.5)
    model = build_model(cfg).eval()
    original = transformers.AutoModelForCausalLM.from_pretrained(
        str(folders["mixtral"]), local_files_only=True
    ).eval()
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(x[:, :-1], x[:, 1:])
        ref = original(input_ids=x[:, :-1], output_router_logits=True).aux_loss
    assert float(ref) > 0
    assert float(out.aux_loss) == pytest.approx(0.5 * float(ref), rel=1e-6)
    assert out.loss is not None and out.ce is not None
    assert float(out.loss) == pytest.approx(float(out.ce) + 0.5 * float(ref), rel=1e-6)


# ---- twenty steps ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_twenty_steps_of_namex_full_mom_lower_the_loss(
    family: str, folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """The user guide's fine-tuning (docs/guide.md), on each family: mean loss of steps 16-20
    below that of steps
    1-5 by a clear margin (measured drops ~0.7-1.0 nats; 0.2 is far above step noise)."""
    res = train(_config(folders[family], tmp_path / "run", cache, method="namex-full-mom"))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.2, losses
    assert math.isfinite(res.valid_loss) and res.fallbacks == 0
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rec[-1]["residual_max"] is not None and rec[-1]["residual_max"] < 1e-8
    assert len(rec[-1]["alpha"]) == 2 and len(rec[-1]["alpha"][0]) == 4  # (L, N)
    for name in ("loss.png", "alpha.png", "cosine.png", "train.log", "result.json",
                 "checkpoint.safetensors", "model/model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name


@pytest.mark.parametrize("method", METHODS)
def test_twenty_steps_per_method_lower_the_loss(
    method: str, folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    train(_config(folders["olmoe"], tmp_path / "run", cache, method=method))
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 0.2, losses


def test_bf16_fine_tuning_runs_the_forward_under_autocast(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """``--precision bf16`` on the Hugging Face path: the losses differ from the fp32 run's
    (autocast is applied), each by less than one bf16 unit roundoff 2^-8 relative (the bound of
    tests/test_train_precision.py), and the exported model is float32."""
    kw: dict[str, object] = dict(method="namex-full-mom", steps=2, log_every=1, eval_every=0,
                                 ckpt_every=0, final_eval_batches=1)
    train(_config(folders["olmoe"], tmp_path / "fp32", cache, **kw))
    train(_config(folders["olmoe"], tmp_path / "bf16", cache, precision="bf16", **kw))
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert a != b
    assert all(abs(x - y) <= 2.0**-8 * x for x, y in zip(a, b, strict=True)), (a, b)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


# ---- resume and reload --------------------------------------------------------------------------


def test_resume_is_exact_and_the_export_reloads_with_the_trained_logits(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """A run stopped at step 3 (schedule of 6) and resumed to 6 equals the uninterrupted run bit
    for bit; load(out/model) gives the logits of the checkpointed parameters (built again from
    the source folder and the checkpoint, another path than the export)."""
    from namex_ref.hf import load
    from namex_ref.hf.training import build_model
    from namex_ref.train.checkpoint import load_checkpoint

    kw = dict(method="namex-full-mom", steps=6, log_every=1, eval_every=0, ckpt_every=3)
    src = folders["qwen2_moe"]
    whole = train(_config(src, tmp_path / "a", cache, **kw))
    train(_config(src, tmp_path / "b", cache, **{**kw, "steps": 3, "schedule_steps": 6}))
    resumed = train(_config(src, tmp_path / "b", cache, **kw), resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert resumed.valid_loss == whole.valid_loss
    a = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors").model_state
    b = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors").model_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rebuilt = build_model(_config(src, tmp_path / "c", cache, **kw))
    rebuilt.load_state_dict(a)
    reloaded = load(tmp_path / "a" / "model")
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = rebuilt.eval()(x).logits
        got = reloaded(input_ids=x).logits
    assert torch.equal(got, want)
    trained = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors").model_state
    pristine = build_model(_config(src, tmp_path / "c", cache, **kw)).state_dict()
    assert any(not torch.equal(trained[k], pristine[k]) for k in pristine)  # it did train
    meta = json.loads((tmp_path / "a" / "model" / "namex_run.json").read_text())
    assert meta["method"] == "namex-full-mom" and meta["seq_len"] == 32


# ---- data and tokenizer ------------------------------------------------------------------------


def _tokenizer_json(path: Path, vocab: int) -> None:
    """A word-level tokenizer over the corpus's commonest words, written with the tokenizers
    library (a model folder's own tokenizer, unlike the built-in byte-level BPE)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from namex_ref.data.corpus import load_builtin_corpus

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["[UNK]"])
    tok.train_from_iterator([load_builtin_corpus()[:60_000]], trainer=trainer)
    tok.save(str(path))


def test_the_model_folders_tokenizer_is_used_and_exported(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    import shutil

    from tokenizers import Tokenizer

    from namex_ref.data import load_builtin_corpus, split_corpus
    from namex_ref.train.data import load_token_data

    src = tmp_path / "with-tok"
    shutil.copytree(folders["olmoe"], src)
    _tokenizer_json(src / "tokenizer.json", 200)
    cfg = _config(src, tmp_path / "run", cache, method="smear", steps=2, log_every=1,
                  eval_every=0, ckpt_every=0)
    from namex_ref.hf.training import build_model

    data = load_token_data(cfg, spec=build_model(cfg).config)
    splits = split_corpus(load_builtin_corpus()[:60_000], cfg.val_frac, cfg.test_frac)
    want = Tokenizer.from_file(str(src / "tokenizer.json")).encode(splits.train).ids
    assert data.train.tolist() == want
    train(cfg)
    exported = tmp_path / "run" / "model" / "tokenizer.json"
    assert exported.read_bytes() == (src / "tokenizer.json").read_bytes()


def test_a_tokenizer_wider_than_the_model_is_refused(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    import shutil

    src = tmp_path / "wide"
    shutil.copytree(folders["olmoe"], src)
    _tokenizer_json(src / "tokenizer.json", 2000)  # ids up to ~2000 > 320 embeddings
    with pytest.raises(ValueError, match=r"outside the model's vocabulary of 320"):
        train(_config(src, tmp_path / "run", cache, method="smear", steps=1, log_every=1,
                      eval_every=0, ckpt_every=0))


def test_without_a_tokenizer_the_built_in_bpe_is_trained_and_exported(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    from namex_ref.data.tokenizer import BPETokenizer

    train(_config(folders["mixtral"], tmp_path / "run", cache, method="smoe", steps=1,
                  log_every=1, eval_every=0, ckpt_every=0))
    tok = BPETokenizer.load(tmp_path / "run" / "model" / "tokenizer.json")
    assert 256 < tok.vocab_size <= VOCAB
    text = "In the beginning God created the heavens and the earth."
    assert tok.decode(tok.encode(text)) == text


# ---- errors ------------------------------------------------------------------------------------


def test_bad_hf_options_are_named(folders: dict[str, Path], cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--base-rule: applies to Hugging Face models only"):
        TrainConfig(base_rule="zero")
    with pytest.raises(ValueError, match=r"--merge-top-k: applies to Hugging Face models only"):
        TrainConfig(merge_top_k=2)
    with pytest.raises(ValueError, match=r"--preset: a --hf-model run"):
        TrainConfig(hf_model="x", preset="small")
    with pytest.raises(FileNotFoundError, match=r"--hf-model: .*config\.json"):
        train(_config(tmp_path, tmp_path / "run", cache))
    with pytest.raises(ValueError, match=r"--seq-len 512 exceeds .*max_position_embeddings 128"):
        train(_config(folders["olmoe"], tmp_path / "run", cache, seq_len=512))
    with pytest.raises(ValueError, match=r"--merge-preset|--gate"):
        train(_config(folders["olmoe"], tmp_path / "run", cache, method="ep-camex",
                      merge_preset="camex-paper"))
    with pytest.raises(ValueError, match=r"--merge-top-k: merge_top_k must be in \[1, 4\]"):
        train(_config(folders["olmoe"], tmp_path / "run", cache, method="smear",
                      merge_top_k=9))
    with pytest.raises(ValueError, match=r"--segment-len: method 'smoe' routes each token"):
        train(_config(folders["olmoe"], tmp_path / "run", cache, method="smoe", segment_len=8))


def test_cli_runs_and_reports_errors_in_one_line(
    folders: dict[str, Path], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from namex_ref.cli import main
    from namex_ref.hf import HF_EXTRA_HINT, load

    args = ["train", "--hf-model", str(folders["mixtral"]), "--method", "namex-full-mom",
            "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--segment-len", "8",
            "--log-every", "1", "--eval-every", "0", "--ckpt-every", "0",
            "--final-eval-batches", "1", "--corpus-chars", "60000", "--device", "cpu",
            "--no-progress", "--cache-dir", str(cache), "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "namex-full-mom seed 0: valid ppl" in capsys.readouterr().out
    assert read_result(tmp_path / "run") is not None
    load(tmp_path / "run" / "model")
    assert main([*args[:-1], str(tmp_path / "other"), "--seq-len", "999"]) == 2
    err = capsys.readouterr().err
    assert "--seq-len 999 exceeds" in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main([*args[:-1], str(tmp_path / "third")]) == 2
    err = capsys.readouterr().err
    assert HF_EXTRA_HINT in err and err.count("\n") == 1


# ---- DDP ---------------------------------------------------------------------------------------


@pytest.mark.slow  # three Python start-ups (launcher + 2 ranks) plus a reference run: ~30 s
def test_two_process_ddp_matches_one_process(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """As tests/test_ddp.py for the GPT, on a converted Qwen2-MoE: the two-rank losses equal
    the one-process ones up to reduction order (the same DDP_RTOL, same reason)."""
    from tests.test_ddp import DDP_RTOL

    def args(out: Path) -> list[str]:
        return ["train", "--hf-model", str(folders["qwen2_moe"]), "--method", "namex-full-mom",
                "--steps", "4", "--batch-size", "4", "--seq-len", "32", "--segment-len", "8",
                "--warmup", "2", "--log-every", "1", "--eval-every", "2", "--eval-batches", "2",
                "--ckpt-every", "2", "--final-eval-batches", "2", "--corpus-chars", "60000",
                "--device", "cpu", "--threads", "1", "--no-progress", "--cache-dir",
                str(cache), "--out", str(out)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "namex_ref.cli", *args(one)], check=True, env=env,
                   capture_output=True, timeout=300)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "namex_ref.cli", *args(two)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for r1, r2 in zip(a, b, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=DDP_RTOL), r1["step"]
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=DDP_RTOL)
    res1, res2 = read_result(one), read_result(two)
    assert res1 is not None and res2 is not None and res2.world_size == 2
    assert math.isclose(res2.valid_loss, res1.valid_loss, rel_tol=DDP_RTOL)
    assert (two / "model" / "model.safetensors").is_file()


def test_wikitext_files_feed_a_hf_run(
    folders: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """--data wikitext on a Hugging Face model: the ids are the exported tokenizer's encoding
    of the raw files (checked on the validation file)."""
    from namex_ref.data import load_builtin_corpus
    from namex_ref.data.tokenizer import BPETokenizer
    from namex_ref.hf.training import build_model
    from namex_ref.train.data import load_token_data

    text = load_builtin_corpus()
    wiki = tmp_path / "wt"
    wiki.mkdir()
    for split, part in (("train", text[:40_000]), ("valid", text[40_000:45_000]),
                        ("test", text[45_000:50_000])):
        (wiki / f"wiki.{split}.raw").write_text(part, encoding="utf-8")
    cfg = _config(folders["olmoe"], tmp_path / "run", cache, method="smear", steps=2,
                  log_every=1, eval_every=0, ckpt_every=0, data="wikitext",
                  wikitext_dir=str(wiki))
    train(cfg)
    data = load_token_data(cfg, spec=build_model(cfg).config)
    tok = BPETokenizer.load(tmp_path / "run" / "model" / "tokenizer.json")
    assert data.valid.tolist() == tok.encode(text[40_000:45_000])


def _deeper(family: str, layers: int) -> torch.nn.Module:
    """The tiny model of ``family`` with ``layers`` decoder layers (every one sparse)."""
    cfg = tiny_model(family, vocab=VOCAB).config
    cfg.num_hidden_layers = layers
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = [cfg.layer_types[0]] * layers
    torch.manual_seed(0)
    model: torch.nn.Module = transformers.AutoModelForCausalLM.from_config(cfg)
    return model


def test_the_namex_variants_differ_from_three_layers_on(cache: Path, tmp_path: Path) -> None:
    """With two MoE layers the base is propagated once, from layer 0 to layer 1: μ^(1) = 0
    makes the first momentum step the plain step (S17, S18) and the α of layer 0 is the only
    one used (S16), so namex, namex-full, namex-mom and namex-full-mom train bit for bit alike.
    With four layers momentum and re-solving act, and the trajectories part (this is why the
    the user guide's loss table uses four layers)."""
    finals: dict[tuple[int, str], float] = {}
    for layers in (2, 4):
        src = tmp_path / f"qwen{layers}"
        _deeper("qwen2_moe", layers).save_pretrained(src)
        for method in ("namex", "namex-full", "namex-mom", "namex-full-mom"):
            out = tmp_path / f"{layers}-{method}"
            train(_config(src, out, cache, method=method, steps=4, log_every=4, eval_every=0,
                          ckpt_every=0, final_eval_batches=1, alpha_interval=None))
            finals[layers, method] = _losses(out)[-1]
    two = {m: v for (n, m), v in finals.items() if n == 2}
    four = {m: v for (n, m), v in finals.items() if n == 4}
    assert len(set(two.values())) == 1, two
    assert len(set(four.values())) == 4, four


def test_compare_fine_tunes_several_methods_of_one_model(folders: dict[str, Path], cache: Path,
                                                          tmp_path: Path) -> None:
    """``namex compare --hf-model``: one run per method, each the same as a lone
    ``namex train --hf-model`` of that method (same final validation loss, bit for bit)."""
    from namex_ref.cli import main

    common = ["--hf-model", str(folders["olmoe"]), "--steps", "2", "--batch-size", "2",
              "--seq-len", "32", "--log-every", "1", "--eval-every", "0", "--ckpt-every", "0",
              "--final-eval-batches", "1", "--corpus-chars", "60000", "--device", "cpu",
              "--no-progress", "--cache-dir", str(cache)]
    assert main(["compare", "--methods", "smoe,namex-full-mom", "--seeds", "0",
                 "--out", str(tmp_path / "cmp"), *common]) == 0
    assert main(["train", "--method", "namex-full-mom", "--out", str(tmp_path / "one"),
                 *common]) == 0
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    runs = {r["method"]: r for r in summary["runs"]}
    assert set(runs) == {"smoe", "namex-full-mom"}
    lone = read_result(tmp_path / "one")
    assert lone is not None
    assert runs["namex-full-mom"]["valid_loss"] == lone.valid_loss


def test_dense_layers_between_sparse_ones_stay_and_the_chain_skips_them(
    cache: Path, tmp_path: Path
) -> None:
    """Qwen2-MoE with ``mlp_only_layers=[1]``: layer 1 keeps its dense MLP, layers 0 and 2 are
    converted; smoe gives the original logits bit for bit, and the base-expert chain (S15–S18)
    runs over the two MoE layers (one α row per converted block), through the training loop."""
    import copy

    from namex_ref.hf import convert, converted_blocks

    cfg = tiny_model("qwen2_moe", vocab=VOCAB).config
    cfg.num_hidden_layers, cfg.mlp_only_layers = 3, [1]
    cfg.layer_types = [cfg.layer_types[0]] * 3
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(input_ids=x).logits
        smoe = convert(copy.deepcopy(model), "smoe")
        assert torch.equal(smoe(input_ids=x).logits, ref)
    assert type(smoe.model.layers[1].mlp).__name__ == "Qwen2MoeMLP"
    assert len(converted_blocks(smoe)) == 2
    model.save_pretrained(tmp_path / "src")
    train(_config(tmp_path / "src", tmp_path / "run", cache, method="namex-full-mom", steps=2,
                  log_every=1, eval_every=0, ckpt_every=0, final_eval_batches=1))
    alpha = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["alpha"]
    assert len(alpha) == 2 and all(len(row) == 4 for row in alpha)


# ---- reload and generate ---------------------------------------------------------------------


@pytest.mark.parametrize("cache_on", [True, False])
def test_generate_is_the_greedy_argmax_of_the_reloaded_model(
    folders: dict[str, Path], cache: Path, tmp_path: Path, cache_on: bool
) -> None:
    """``namex generate`` / ``generate_text`` on OUT/model: the continuation is the argmax of
    full forwards on the reloaded model, token by token (a loop written here, no cache), for
    exactly max_new_tokens tokens (built-in BPE: the model's eos id is an ordinary token)."""
    from namex_ref.data.tokenizer import BPETokenizer
    from namex_ref.hf import load
    from namex_ref.hf.training import generate_text

    train(_config(folders["mixtral"], tmp_path / "run", cache, method="namex-full-mom",
                  steps=6, log_every=2, eval_every=0, ckpt_every=0, final_eval_batches=1))
    folder = tmp_path / "run" / "model"
    model = load(folder)
    prompt = "And God said, Let there be light"
    text = generate_text(model, folder, prompt, max_new_tokens=12, use_cache=cache_on)
    tok = BPETokenizer.load(folder / "tokenizer.json")
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(12):
            nxt = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()
            ids.append(int(nxt))
    assert text == tok.decode(ids)
    assert text.startswith(prompt)


def test_namex_generate_command_and_its_errors(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``namex convert`` keeps the source folder's tokenizer, so ``namex generate`` reloads the
    converted folder in one command; a folder without a tokenizer and an empty prompt are
    one-line errors."""
    import shutil

    from namex_ref.cli import main

    src = tmp_path / "src"
    shutil.copytree(folders["olmoe"], src)
    _tokenizer_json(src / "tokenizer.json", 200)
    assert main(["convert", str(src), str(tmp_path / "conv"), "--segment-len", "8"]) == 0
    assert (tmp_path / "conv" / "tokenizer.json").read_bytes() == (
        src / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "conv"), "--prompt", "and the",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.strip().split()  # a word-level tokenizer: words and spaces
    assert out[:2] == ["and", "the"] and 3 <= len(out) <= 6  # may stop early at the eos id
    assert main(["convert", str(folders["olmoe"]), str(tmp_path / "bare")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "bare"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and err.count("\n") == 1
    assert main(["generate", str(tmp_path / "conv"), "--prompt", ""]) == 2
    assert "--prompt" in capsys.readouterr().err
