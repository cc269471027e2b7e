"""The training loop: loss goes down, JSONL schema, plots, checkpoints, resume rules, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import namex_ref.train.checkpoint as ckpt_mod
from namex_ref.cli import main
from namex_ref.models.gpt import MoEGPT
from namex_ref.train import (
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    read_result,
    save_checkpoint,
    train,
)
from namex_ref.train.metrics import EVAL_FIELDS, LOG_FIELDS, read_jsonl
from tests.faults import die_at, nan_loss_at
from tests.train_runs import QUICK_CHARS, quick


def test_loss_decreases_on_a_short_tiny_run(cache: Path, tmp_path: Path) -> None:
    cfg = quick(cache, tmp_path / "run", steps=30, batch_size=4, warmup=5, log_every=5,
                eval_every=30, ckpt_every=30)
    res = train(cfg)
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rec] == [5, 10, 15, 20, 25, 30]
    # Initial loss ≈ ln(V) = ln 2048 ≈ 7.6; 30 AdamW steps at lr 3e-3 bring it well below.
    assert rec[0]["loss"] > rec[-1]["loss"] + 0.5
    assert res.valid_loss < math.log(2048) - 0.5
    assert math.isfinite(res.valid_ppl) and res.valid_ppl == pytest.approx(
        math.exp(res.valid_loss), rel=1e-12
    )
    assert read_result(tmp_path / "run") == res


def test_jsonl_schema_and_plots(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train(quick(cache, out, log_every=2, eval_every=4))
    rec = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rec] == [2, 4, 6, 8]
    L, N = 4, 4  # tiny preset: 4 MoE layers of 4 experts
    for r in rec:
        assert set(LOG_FIELDS) <= set(r)
        assert isinstance(r["step"], int) and isinstance(r["fallbacks"], int)
        for k in ("loss", "ce", "aux", "lr", "grad_norm", "tokens_per_s", "step_s"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), k
        assert r["loss"] == pytest.approx(r["ce"] + r["aux"], rel=1e-6)  # float32 sums
        alpha = r["alpha"]
        assert len(alpha) == L and all(len(row) == N and min(row) > 0 for row in alpha)
        assert r["residual_max"] is not None and r["residual_max"] >= 0
        has_eval = r["step"] % 4 == 0
        assert (set(EVAL_FIELDS) <= set(r)) == has_eval
        if has_eval:
            assert r["valid_ppl"] == pytest.approx(math.exp(r["valid_loss"]), rel=1e-12)
            assert len(r["cosine"]) == L and all(-1 <= c <= 1 for c in r["cosine"])
    counts = [r["fallbacks"] for r in rec]
    assert counts == sorted(counts) and res.fallbacks == counts[-1]
    for name in ("loss.png", "alpha.png", "cosine.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def test_smoe_logs_no_alpha_but_a_balance_loss(cache: Path, tmp_path: Path) -> None:
    train(quick(cache, tmp_path / "smoe", method="smoe", steps=2, eval_every=2, ckpt_every=2))
    rec = read_jsonl(tmp_path / "smoe" / "metrics.jsonl")
    assert all(v is None for row in rec[-1]["alpha"] for v in row)
    assert rec[-1]["residual_max"] is None and rec[-1]["aux"] > 0
    assert (tmp_path / "smoe" / "alpha.png").is_file()


def test_fallbacks_are_counted(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every singular-bargain fallback of every layer and step enters the cumulative count."""
    real = MoEGPT.forward
    per_step = torch.tensor([True, False, True, True])

    def forward(self: MoEGPT, *a: Any, **k: Any) -> Any:
        out = real(self, *a, **k)
        return out._replace(stats=out.stats._replace(fallbacks=per_step.clone()))

    monkeypatch.setattr(MoEGPT, "forward", forward)
    res = train(quick(cache, tmp_path / "fb", steps=4, eval_every=0, ckpt_every=2, log_every=2))
    rec = read_jsonl(tmp_path / "fb" / "metrics.jsonl")
    assert [r["fallbacks"] for r in rec] == [6, 12] and res.fallbacks == 12


def test_cli_and_api_give_the_same_run(cache: Path, tmp_path: Path) -> None:
    cfg = quick(cache, tmp_path / "api", steps=4, eval_every=4)
    api = train(cfg)
    argv = ["train", "--preset", "tiny", "--method", "namex-full-mom", "--steps", "4",
            "--batch-size", "2", "--warmup", "2", "--log-every", "1", "--eval-every", "4",
            "--eval-batches", "1", "--final-eval-batches", "2", "--ckpt-every", "4",
            "--device", "cpu", "--threads", "1", "--no-progress",
            "--corpus-chars", str(QUICK_CHARS),
            "--cache-dir", str(cache), "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    cli = read_result(tmp_path / "cli")
    assert cli is not None
    assert cli.config == dataclasses.replace(cfg, out=str(tmp_path / "cli"))
    assert cli.valid_loss == api.valid_loss  # same process, same config: bit-identical
    a = read_jsonl(tmp_path / "api" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "cli" / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_checkpoint_round_trip(cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MoEGPT(TrainConfig().model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 2048, (2, 16))
    model(x, x).loss.backward()  # type: ignore[union-attr]
    opt.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, step=7,
                           config={"a": 1}, counters={"fallbacks": 3})
    ck = load_checkpoint(path)
    assert torch.equal(ck.rng_torch, torch.get_rng_state())
    assert ck.step == 7 and ck.config == {"a": 1} and ck.counters == {"fallbacks": 3}
    ref = model.state_dict()
    assert set(ck.model_state) == set(ref)  # the tied head weight comes back as an alias
    assert all(torch.equal(ck.model_state[k], v) for k, v in ref.items())
    model2 = MoEGPT(TrainConfig().model_config())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    model2.load_state_dict(ck.model_state)
    opt2.load_state_dict(ck.optim_state)
    assert model2.head.weight.data_ptr() == model2.tok.weight.data_ptr()  # still tied
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i, st in s1["state"].items():
        assert all(torch.equal(v, s2["state"][i][k]) for k, v in st.items())


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    model = MoEGPT(TrainConfig().model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, step=1,
                           config={})
    before = path.read_bytes()

    def broken(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=opt, step=2, config={})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]
    assert load_checkpoint(path).step == 1


def test_resume_rules(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = quick(cache, out, steps=4, ckpt_every=2, eval_every=2)
    train(cfg)
    with pytest.raises(ValueError, match="--resume"):
        train(cfg)  # a folder with a checkpoint is not overwritten silently
    with pytest.raises(ValueError, match=r"different configuration.*--lr"):
        train(dataclasses.replace(cfg, lr=1e-2), resume=True)
    with pytest.raises(ValueError, match="--method"):
        train(dataclasses.replace(cfg, method="namex"), resume=True)
    assert main(["train", "--out", str(out), "--resume", "--steps", "5",
                 "--cache-dir", str(cache)]) == 2
    # run-control fields may change; a finished run resumes to the same result
    again = train(dataclasses.replace(cfg, progress=True), resume=True)
    assert again.valid_loss == read_result(out).valid_loss  # type: ignore[union-attr]


def test_non_finite_loss_raises_with_step_and_method(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at(monkeypatch, 3)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*namex-full-mom.*--lr"):
        train(quick(cache, tmp_path / "nan", steps=6, log_every=2, eval_every=0, ckpt_every=2))
    ck = load_checkpoint(tmp_path / "nan" / "checkpoint.safetensors")
    assert ck.step == 2  # the checkpoint of step 4 (after the NaN) was never written


def test_crash_then_resume_in_process(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that dies at step 5 (checkpoint of step 3, metrics up to 4 plus a torn line)
    resumes to the same metrics as an uninterrupted run, bit for bit (same process, CPU)."""
    ref = train(quick(cache, tmp_path / "ref", steps=6, ckpt_every=3, eval_every=3))
    full = read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    out = tmp_path / "run"
    cfg = quick(cache, out, steps=6, ckpt_every=3, eval_every=3)
    with monkeypatch.context() as m:
        die_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    assert load_checkpoint(out / "checkpoint.safetensors").step == 3
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # torn line of a killed writer
    assert read_result(out) is None
    res = train(cfg, resume=True)
    got = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(got, full, strict=True):
        assert (a["loss"], a["grad_norm"], a.get("valid_loss")) == (
            b["loss"], b["grad_norm"], b.get("valid_loss")
        )
    assert res.valid_loss == ref.valid_loss
    assert json.loads((out / "result.json").read_text())["valid_loss"] == res.valid_loss


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(cache: Path, tmp_path: Path) -> None:
    res = train(quick(cache, tmp_path / "gpu", device="cuda", steps=4, ckpt_every=4))
    assert res.device.startswith("cuda") and math.isfinite(res.valid_loss)
    auto = train(quick(cache, tmp_path / "auto", device="auto", steps=1, log_every=1,
                       eval_every=1, ckpt_every=1, warmup=1))
    assert auto.device.startswith("cuda")


def test_wikitext_source(cache: Path, tmp_path: Path) -> None:
    """The WikiText raw layout is read through namex_ref.data.load_wikitext (files made here)."""
    from namex_ref.data import load_builtin_corpus

    text = load_builtin_corpus()
    wt = tmp_path / "wikitext-103-raw"
    wt.mkdir()
    for name, piece in (("train", text[:200_000]), ("valid", text[200_000:230_000]),
                        ("test", text[230_000:260_000])):
        (wt / f"wiki.{name}.raw").write_text(piece, encoding="utf-8")
    res = train(quick(cache, tmp_path / "wt", data="wikitext", wikitext_dir=str(tmp_path),
                      steps=2, eval_every=2, ckpt_every=2))
    assert math.isfinite(res.valid_loss)
    with pytest.raises(FileNotFoundError, match="WikiText"):
        train(quick(cache, tmp_path / "missing", data="wikitext",
                    wikitext_dir=str(tmp_path / "nowhere"), steps=1, warmup=1))


@pytest.mark.slow  # the full default tiny run: about a minute on 2 CPU cores
def test_default_tiny_run_beats_the_unigram_model(tmp_path: Path) -> None:
    """The quick start's unit of work: default TrainConfig (tiny preset, whole built-in corpus).
    Measured: valid ppl ≈ 180 against a unigram perplexity of ≈ 509 (namex-full-mom, seed 0)."""
    res = train(TrainConfig(out=str(tmp_path / "run"), device="cpu", progress=False, threads=1,
                            cache_dir=str(tmp_path / "cache")))
    assert res.valid_ppl < 0.5 * res.unigram_ppl
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rec[-1]["loss"] < rec[0]["loss"] - 2.0


def test_corrupt_files(cache: Path, tmp_path: Path) -> None:
    """A corrupt checkpoint is a clear ValueError; a corrupt token cache is rebuilt."""
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    from namex_ref.train.data import load_token_data

    cfg = quick(cache, tmp_path / "x")
    good = load_token_data(cfg)
    path = cache / f"tokens-{good.key}.safetensors"
    path.write_bytes(b"garbage")
    again = load_token_data(cfg)
    assert torch.equal(again.train, good.train) and path.stat().st_size > 1000


def test_the_gpt_builder_refuses_a_hugging_face_run() -> None:
    """train/ does not know Hugging Face models: a hf_model run handed the default builder is
    refused with the way to run it (the Hugging Face package's builder)."""
    from namex_ref.train.builder import build_gpt

    with pytest.raises(ValueError, match=r"--hf-model.*namex_ref\.hf\.training\.train"):
        build_gpt(TrainConfig(hf_model="some/folder"))


def test_the_training_package_never_imports_the_hugging_face_one() -> None:
    """The floors run one way (train -> hf, never back): no module of namex_ref/train imports
    namex_ref.hf, at module level or inside a function."""
    import ast

    root = Path(__file__).resolve().parents[1] / "namex_ref" / "train"
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("namex_ref.hf")]
    assert not offenders
