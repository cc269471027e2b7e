"""Part 2: the paper's fine-tuning protocol at small scale.

1. Pre-train an SMoE (part 1's SMoE of seed 0, :func:`studies.study2.plan.pretrain_key`: the
   language-model training split).
2. Upcycle it into each method from the same weights (:func:`upcycle`): every tensor the two
   models share (embeddings, attention, norms, the experts ``w1``/``w2`` and the router) is
   copied; the base expert E_m (the first MoE layer's for the propagating methods, every layer's
   for CAMEx) is set by the documented rule of a converted model,
   :func:`namex_ref.hf.initial_base` with ``"perturbed-mean"`` (docs/math.md §6: Ē + u, u ⟂ the
   centred experts with ‖u‖² the experts' mean squared spread), seeded by the fine-tuning seed;
   the curvature operators M_i start at the identity (their own init). So with η = 1 every
   merging method starts as the router-weighted average expert (S13 = S14 at M_i = I).
   :func:`namex_ref.hf.convert` itself is not used: it replaces the sparse MoE blocks of
   Hugging Face models (Qwen2-MoE, Mixtral, OLMoE), and the pre-trained model here is the
   project's own GPT (:class:`namex_ref.models.gpt.MoEGPT`), whose merging layer already exists;
   the rule is the same function.
3. Fine-tune on the labelled task of :mod:`studies.study2.task` (a class-balanced batch of
   passages per step), with a linear head on the mean over tokens of the final layer norm's
   output (the language-model head is replaced by the identity, so the model returns that
   output and no vocabulary projection is computed); loss = cross-entropy of the head + the
   model's auxiliary loss (SMoE's balance loss). AdamW (β = (0.9, 0.999), weight decay 0.01),
   linear warmup and cosine decay (:func:`namex_ref.train.lr_at`), gradient clip 1, one thread.
4. Score held-out accuracy and macro-F1 on the held-out chapters' windows.

A run folder holds ``metrics.jsonl`` (a line per ``log_every`` steps: loss, lr, cumulative
singular-bargain fallbacks) and ``result.json`` (written atomically at the end: the spec, the
scores, the confusion matrix, the fallbacks). An interrupted run restarts from its beginning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.models.gpt import MoEGPT
from namex_ref.train import TrainConfig
from studies.study2.jobs import Job
from studies.study2.task import (
    Task,
    build_passages,
    chapters,
    heldout_windows,
    macro_f1,
    train_batch,
)

METHODS: tuple[str, ...] = (
    "smoe", "smear", "camex", "ep-camex", "namex", "namex-full-mom", "namex-q",
)
"""The seven methods of part 2 (issue 29)."""
CHECKPOINT_FILE = "checkpoint.safetensors"
"""The final checkpoint of a finished training run (TrainConfig's ``out`` documentation)."""
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
NEW_PARAMETER = re.compile(r"blocks\.\d+\.moe\.(base[12]|bias[12]|curvature\..*)$")
"""Parameters an upcycled merging model has and the SMoE has not: the base expert and the
curvature operators. Anything else missing is an error (a renamed parameter would otherwise
silently keep its random init)."""


@dataclass(frozen=True)
class FinetuneSpec:
    """One fine-tuning run. overrides: MergeConfig overrides by TrainConfig field name
    (``gamma``, ``beta_abs``, ``newton_iterations``, ...; part 3)."""

    method: str
    seed: int
    task: Task = "division"
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 30
    window: int = 128
    test_every: int = 5
    test_per_chapter: int = 2
    chapters_per_book: int = 0
    log_every: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finetune_key(method: str, seed: int, tag: str = "") -> str:
    return f"finetune{'-' + tag if tag else ''}/{method}/seed{seed}"


def smoke_spec(method: str, seed: int) -> FinetuneSpec:
    """Seconds: short windows, two chapters per book, a few steps."""
    return FinetuneSpec(method, seed, steps=3, warmup=1, window=32, chapters_per_book=2,
                        test_every=2, test_per_chapter=1, batch_size=4, log_every=1)


def finetune_jobs(seeds: list[int], pretrain: str, *, smoke: bool = False, tag: str = "",
                  methods: tuple[str, ...] = METHODS) -> list[Job]:
    """``methods`` (default: every method of part 2) for ``seeds`` (seed-major), each needing
    the pre-trained run ``pretrain``; ``tag`` names another pre-training's group of runs."""
    jobs = []
    for seed in seeds:
        for method in methods:
            spec = smoke_spec(method, seed) if smoke else FinetuneSpec(method, seed)
            jobs.append(Job(finetune_key(method, seed, tag), "finetune", spec.to_dict(),
                            (pretrain,)))
    return jobs


def finetune_done(payload: dict[str, Any], out: Path) -> bool:
    path = out / RESULT_FILE
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text())["spec"] == FinetuneSpec(**payload).to_dict())


def upcycle(state: dict[str, Tensor], train_config: TrainConfig, method: str, seed: int,
            overrides: dict[str, Any]) -> MoEGPT:
    """A :class:`MoEGPT` of ``method`` holding the pre-trained SMoE ``state`` (see module
    docstring). train_config: the pre-training's TrainConfig (preset, seq_len)."""
    from namex_ref.hf import initial_base

    cfg = dataclasses.replace(train_config, method=method, segment_len=None, **overrides)
    model = MoEGPT(cfg.model_config())
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in missing if not NEW_PARAMETER.search(k)]
    extra = [k for k in state if k not in own]
    if wrong or extra:
        raise ValueError(f"upcycling {method}: unexpected parameters missing {wrong}, "
                         f"left over {extra}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    with torch.no_grad():
        for layer, moe in enumerate(model.moe_layers()):
            if moe.base1 is None or moe.base2 is None:
                continue
            b1, b2 = initial_base([moe.w1.detach(), moe.w2.detach()], "perturbed-mean",
                                  seed=seed * 1000 + layer)
            moe.base1.copy_(b1)
            moe.base2.copy_(b2)
    return model


def _evaluate(model: nn.Module, head: nn.Module, x: Tensor, batch: int) -> list[int]:
    model.eval()
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            feats = model(x[i:i + batch]).logits.mean(1)  # (B, C): the head is the identity
            preds += head(feats).argmax(-1).tolist()
    model.train()
    return preds


def run_finetune(payload: dict[str, Any], out: Path, *, pretrained: Path) -> dict[str, Any]:
    """Fine-tune ``payload``'s method from the pre-trained run folder; write and return the
    result record (see module docstring). Runs on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _finetune(FinetuneSpec(**payload), out, pretrained)
    finally:
        torch.set_num_threads(threads)


def _finetune(spec: FinetuneSpec, out: Path, pretrained: Path) -> dict[str, Any]:
    from namex_ref.data import load_builtin_corpus
    from namex_ref.train import load_checkpoint, lr_at, read_result
    from namex_ref.train.data import data_tokenizer

    pre = read_result(pretrained)
    if pre is None:
        raise FileNotFoundError(f"the pre-training {str(pretrained)!r} has not finished")
    ckpt = load_checkpoint(pretrained / CHECKPOINT_FILE)
    tok = data_tokenizer(pre.config, pre.config.model_config().vocab_size)
    passages = build_passages(chapters(load_builtin_corpus()), tok.encode, task=spec.task,
                              window=spec.window, test_every=spec.test_every,
                              chapters_per_book=spec.chapters_per_book)
    x_test, y_test = heldout_windows(passages, window=spec.window,
                                     per_chapter=spec.test_per_chapter)
    torch.manual_seed(spec.seed)
    model = upcycle(ckpt.model_state, pre.config, spec.method, spec.seed, spec.overrides)
    head = nn.Linear(model.config.d_model, passages.n_classes)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    # features, not token logits (the embedding stays tied to tok); a deliberate type change
    model.head = nn.Identity()  # type: ignore[assignment]
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.01)
    sched = TrainConfig(lr=spec.lr, warmup=spec.warmup, steps=spec.steps, out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / METRICS_FILE
    metrics.unlink(missing_ok=True)
    fallbacks = torch.zeros((), dtype=torch.int64)
    loss_sum, n_sum, t0 = 0.0, 0, time.perf_counter()
    for step in range(1, spec.steps + 1):
        lr = lr_at(step, sched)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = train_batch(passages, seed=spec.seed, step=step, batch_size=spec.batch_size,
                           window=spec.window)
        res = model(x)
        loss = F.cross_entropy(head(res.logits.mean(1)), y) + res.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        fallbacks += res.stats.fallbacks.sum()
        loss_sum, n_sum = loss_sum + float(loss.detach()), n_sum + 1
        if step % spec.log_every == 0 or step == spec.steps:
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"non-finite fine-tuning loss by step {step}")
            with open(metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "loss": loss_sum / n_sum, "lr": lr,
                                         "fallbacks": int(fallbacks)}) + "\n")
            loss_sum, n_sum = 0.0, 0
    seconds = time.perf_counter() - t0
    preds = _evaluate(model, head, x_test, 32)
    truth = y_test.tolist()
    f1, per = macro_f1(truth, preds)
    confusion = [[0] * passages.n_classes for _ in range(passages.n_classes)]
    for t, q in zip(truth, preds, strict=True):
        confusion[t][q] += 1
    record = {
        "spec": spec.to_dict(), "pretrained": str(pretrained), "pretrain_steps": pre.steps,
        "accuracy": sum(t == q for t, q in zip(truth, preds, strict=True)) / len(truth),
        "macro_f1": f1, "per_class_f1": {str(k): v for k, v in per.items()},
        "confusion": confusion, "n_test": len(truth), "n_train_chapters": len(passages.train),
        "n_test_chapters": len(passages.test), "fallbacks": int(fallbacks),
        "train_seconds": seconds,
    }
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / RESULT_FILE)
    return record
