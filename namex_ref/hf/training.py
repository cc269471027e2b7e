"""Hugging Face MoE models in the ``namex train`` loop: :func:`train` (or
:func:`namex_ref.train.train` with ``builder=HF_BUILDER``) of a ``TrainConfig(hf_model=DIR)``;
CLI ``namex train --hf-model DIR``.

:func:`build_model` reads the local model folder (no download), converts it with
:func:`namex_ref.hf.convert` and wraps it in :class:`HFCausalLM`, which speaks the loop's model
interface: ``forward(idx, targets, collect_stats=...)`` returns a
:class:`~namex_ref.models.gpt.ModelOutput`, and ``config`` is a
:class:`~namex_ref.models.gpt.ModelConfig` describing the converted model. So the fine-tuning of a
Hugging Face model has the loop's metrics, plots, checksummed checkpoints, exact resume and DDP,
with no second training loop. :func:`export` writes the fine-tuned model (:func:`namex_ref.hf.save`)
and its tokenizer for :func:`namex_ref.hf.load`. :data:`HF_BUILDER` hands both to the loop (a
:class:`~namex_ref.train.builder.ModelBuilder`; the training package never imports this one).

Objective: mean next-token cross-entropy over the window (the same as the GPT's; the targets are
the window shifted by one token), plus, for "smoe", the model's own load-balancing loss weighted
by ``balance_coef`` when given, otherwise by the model's ``router_aux_loss_coef`` when its config
sets ``output_router_logits`` (the transformers fine-tuning default), otherwise none. Merging
methods have no token router and no balance loss, except the noisy gate's
(``gate="noisy-top-k"``, weighted by ``balance_coef``): each converted block keeps the loss of
its last forward in ``aux_loss`` and :class:`HFCausalLM` adds their sum.

The weights are trained in float32 whatever dtype the folder stores (AdamW on bfloat16 weights
loses updates below 2⁻⁸ of a weight); :func:`export` writes float32.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.hf.convert import converted_blocks, is_converted_folder, save
from namex_ref.hf.extra import require_transformers
from namex_ref.merging.functional import MergePlan, cosine_matrix
from namex_ref.models.gpt import LayerStats, ModelConfig, ModelOutput
from namex_ref.nash.gram import domain_vectors, off_diagonal_mean
from namex_ref.train.builder import GPT_BUILDER, ModelBuilder
from namex_ref.train.config import TrainConfig, flag_name
from namex_ref.train.loop import train as train_loop
from namex_ref.train.resume import StartMode
from namex_ref.train.run import TrainResult

__all__ = ["DEFAULT_SEGMENT_LEN", "DEFAULT_SEQ_LEN", "HF_BUILDER", "MODEL_DIR", "HFCausalLM",
           "build_model", "export", "generate_text", "read_model_config", "train"]

MODEL_DIR = "model"
"""Sub-folder of a run folder where a ``hf_model`` run writes its converted, fine-tuned model."""
DEFAULT_SEQ_LEN = 128
"""Training window of a ``hf_model`` run when ``seq_len`` is 0 (capped by the model's
``max_position_embeddings``)."""
DEFAULT_SEGMENT_LEN = 32
"""Routing segment of a ``hf_model`` run when ``segment_len`` is not given (the tiny preset's)."""

_HF_FIELDS = ("hf_model", "base_rule", "merge_top_k")


def read_model_config(folder: str | os.PathLike[str], what: str = "--hf-model") -> Any:
    """The transformers config of a local model folder (``config.json``), offline; ``what``
    names the folder in errors (the flag or argument it came from).

    Raises:
        FileNotFoundError: the folder has no ``config.json`` (names ``what``).
        ValueError: the folder was written by :func:`namex_ref.hf.save` (already converted).
        MissingExtraError: transformers is not installed.
    """
    src = Path(folder)
    if is_converted_folder(src):
        raise ValueError(
            f"{what}: {str(src)!r} holds a model already converted by namex (namex_hf.json or "
            f"a namex_* model_type); "
            f"pass the original save_pretrained folder it came from (a converted model is "
            f"reloaded with namex generate or namex_ref.hf.load)"
        )
    if not (src / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: {str(src / 'config.json')!r} not found; pass a folder written by "
            f"save_pretrained (config.json and *.safetensors)"
        )
    transformers = require_transformers()
    return transformers.AutoConfig.from_pretrained(str(src), local_files_only=True)


class HFCausalLM(nn.Module):
    """A converted Hugging Face causal LM behind the training loop's model interface.

    ``hf``: the converted transformers model (its parameters are this module's).
    ``config``: a :class:`ModelConfig` describing it: vocab_size, d_model = hidden size,
    n_layer = the number of converted MoE blocks, n_head, d_ff = the expert width, seq_len = the
    training window, merge = the blocks' :class:`~namex_ref.merging.config.MergeConfig`.
    ``aux_coef``: weight of the model's load-balancing loss ("smoe" only; see module docstring).
    For merging methods the blocks' own ``aux_loss`` (the noisy gate's, already weighted) is
    added to the objective.
    """

    def __init__(self, hf: nn.Module, seq_len: int, aux_coef: float = 0.0) -> None:
        super().__init__()
        blocks = converted_blocks(hf)
        if not blocks:
            raise ValueError("HFCausalLM wraps a model converted by namex_ref.hf.convert")
        self.hf = hf
        cfg: Any = getattr(hf, "config")  # noqa: B009 - nn.Module attribute typing
        self.config = ModelConfig(
            vocab_size=int(cfg.vocab_size),
            d_model=int(cfg.hidden_size),
            n_layer=len(blocks),
            n_head=int(cfg.num_attention_heads),
            d_ff=blocks[0].intermediate,
            seq_len=seq_len,
            merge=blocks[0].config,
        )
        self.aux_coef = float(aux_coef)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, collect_stats: bool = False
    ) -> ModelOutput:
        """idx: (B, T) token ids, T ≤ ``config.seq_len``; targets: (B, T) or None. Same
        contract as :meth:`namex_ref.models.gpt.MoEGPT.forward` (cosine as there: between the
        domain vectors τ_i of methods with a base expert, else between the experts)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.seq_len:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds the training window "
                f"{self.config.seq_len} ({flag_name('seq_len')})"
            )
        merging = self.config.merge.spec.kind != "topk"
        want_aux = not merging and self.aux_coef > 0
        kwargs: dict[str, Any] = {"use_cache": False}
        if want_aux:
            kwargs["output_router_logits"] = True
        out = self.hf(input_ids=idx, **kwargs)
        logits: Tensor = out.logits
        aux = logits.new_zeros((), dtype=torch.float32)
        if want_aux and getattr(out, "aux_loss", None) is not None:
            aux = self.aux_coef * out.aux_loss.float()
        if merging:  # the noisy gate's balance loss (balance_coef included; 0 for softmax)
            for blk in converted_blocks(self.hf):
                if blk.aux_loss is not None:
                    aux = aux + blk.aux_loss.float()
        ce = loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
            loss = ce + aux
        return ModelOutput(logits, loss, ce, aux, self._stats(idx.device, collect_stats))

    def _stats(self, device: torch.device, collect: bool) -> LayerStats:
        blocks = converted_blocks(self.hf)
        L, N = len(blocks), self.config.merge.n_experts
        plan: MergePlan | None = None
        if self.config.merge.spec.kind != "topk":
            plan = self.hf.__dict__.get("namex_plan")
        if plan is not None:
            alphas, residuals = plan.alphas, plan.residuals
            fallbacks, base_norms = plan.fallbacks, plan.base_norms
        else:  # token top-k routing: no merge, no bargain
            nan = torch.full((L,), math.nan, dtype=torch.float64, device=device)
            alphas = torch.full((L, N), math.nan, dtype=torch.float64, device=device)
            residuals, base_norms = nan, nan.clone()
            fallbacks = torch.zeros(L, dtype=torch.bool, device=device)
        cos = torch.full((L,), math.nan, dtype=torch.float64, device=device)
        if collect:
            with torch.no_grad():
                for l, blk in enumerate(blocks):
                    base = None if plan is None else plan.terms[l].base
                    mats = (blk.experts_list() if base is None
                            else domain_vectors(blk.experts_list(), base))
                    cos[l] = off_diagonal_mean(cosine_matrix(mats))
        return LayerStats(alphas, residuals, fallbacks, base_norms, cos)


def build_model(config: TrainConfig) -> HFCausalLM:
    """``config.hf_model`` read (float32, offline), converted with ``config.method``,
    ``base_rule``, ``merge_top_k``, ``seed`` and the merge overrides, and wrapped.

    Raises:
        FileNotFoundError: no ``config.json`` in the folder.
        MissingExtraError: transformers is not installed.
        ValueError: the folder holds no supported MoE model, or an option the conversion
            refuses (named by its flag), or a window longer than the model's positions.
    """
    from namex_ref.hf.convert import convert

    hf_cfg = read_model_config(config.hf_model)
    transformers = require_transformers()
    max_pos = int(getattr(hf_cfg, "max_position_embeddings", DEFAULT_SEQ_LEN) or DEFAULT_SEQ_LEN)
    seq_len = config.seq_len or min(DEFAULT_SEQ_LEN, max_pos)
    if seq_len > max_pos:
        raise ValueError(
            f"{flag_name('seq_len')} {seq_len} exceeds the model's max_position_embeddings "
            f"{max_pos}; choose at most {max_pos}"
        )
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # the loop reports progress; no "Loading weights" bar in logs
    try:
        model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
            str(config.hf_model), config=hf_cfg, local_files_only=True, dtype=torch.float32
        )
    finally:
        if shown:
            bars.enable_progress_bar()
    model.to(torch.float32)
    options = dict(config.merge_overrides())
    options.setdefault("segment_len", DEFAULT_SEGMENT_LEN)
    if config.method == "smoe":
        options.pop("balance_coef", None)  # the weight of the model's own router loss, below
        options.pop("segment_len")  # token routing: unused (and refused if given explicitly)
    try:
        convert(model, config.method, base_rule=config.base_rule, seed=config.seed,
                merge_top_k=config.merge_top_k or None, **options)
    except ValueError as exc:
        if "supported sparse MoE block" in str(exc):
            raise ValueError(f"--hf-model: {exc}") from exc
        keys = [k for k in (*options, *_HF_FIELDS) if k in str(exc)]
        where = flag_name(keys[0]) if keys else "--method"
        if keys and config.merge_preset and getattr(config, keys[0], 0) is None:
            where = f"--merge-preset {config.merge_preset} (sets {keys[0]})"
        raise ValueError(f"{where}: {exc}") from exc
    coef = 0.0
    if config.method == "smoe":
        if config.balance_coef is not None:
            coef = config.balance_coef
        elif getattr(hf_cfg, "output_router_logits", False):
            coef = float(getattr(hf_cfg, "router_aux_loss_coef", 0.0) or 0.0)
    return HFCausalLM(model, seq_len, coef)


def export(model: HFCausalLM, config: TrainConfig, directory: str | os.PathLike[str]) -> Path:
    """Write the converted, fine-tuned model to ``directory`` for :func:`namex_ref.hf.load`
    (:func:`namex_ref.hf.save`), with the tokenizer the run used: the model folder's tokenizer
    files when it has them, else the built-in BPE as ``tokenizer.json``. Written to a temporary
    folder beside it, then renamed into place (an existing ``directory`` is replaced)."""
    from namex_ref.train.data import data_tokenizer, model_tokenizer_file

    target = Path(directory)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    own = model_tokenizer_file(config)
    save(model.hf, tmp, tokenizer_from=None if own is None else own.parent)
    if own is None:
        data_tokenizer(config, model.config.vocab_size).save(tmp / "tokenizer.json")
    meta = {"source": str(config.hf_model), "method": config.method, "seq_len":
            model.config.seq_len, "tokenizer": "model" if own is not None else "builtin-bpe"}
    (tmp / "namex_run.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _export_run(model: nn.Module, config: TrainConfig, out: Path) -> str:
    """The builder's export: the fine-tuned model to ``out/model`` (:func:`export`)."""
    if not isinstance(model, HFCausalLM):
        raise TypeError(f"expected the HFCausalLM of build_model, got {type(model).__name__}")
    export(model, config, out / MODEL_DIR)
    return f"{MODEL_DIR}/ (namex_ref.hf.load)"


def _describe(config: TrainConfig) -> str:
    return f"model {config.hf_model!r}"


HF_BUILDER = ModelBuilder(build=build_model, describe=_describe, export=_export_run)
"""The model builder of ``hf_model`` runs for :func:`namex_ref.train.train` (``builder=``)."""


def train(config: TrainConfig, *, resume: StartMode = False) -> TrainResult:
    """:func:`namex_ref.train.train` with :data:`HF_BUILDER` for a ``hf_model`` run (the GPT
    builder otherwise); same arguments, result and errors."""
    builder = HF_BUILDER if config.hf_model else GPT_BUILDER
    return train_loop(config, resume=resume, builder=builder)


def generate_text(
    model: nn.Module,
    folder: str | os.PathLike[str],
    prompt: str,
    *,
    max_new_tokens: int = 32,
    use_cache: bool = True,
) -> str:
    """Greedy continuation of ``prompt`` by a converted model, with the ``tokenizer.json`` of
    ``folder`` (as :func:`export` writes it; no special tokens added). Returns the prompt and
    the continuation as text. Generation stops at the model's end-of-sequence token when the
    tokenizer is the model's own; with the built-in BPE (``namex_run.json`` says
    "builtin-bpe") that id is an ordinary byte pair, so exactly ``max_new_tokens`` are made.

    Raises:
        FileNotFoundError: ``folder`` has no ``tokenizer.json``.
        ValueError: an empty prompt, or ``max_new_tokens`` < 1.
    """
    from tokenizers import Tokenizer

    from namex_ref.checks import require_int
    from namex_ref.data.tokenizer import BPETokenizer

    require_int("--max-new-tokens", max_new_tokens, low=1)
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: generation needs the tokenizer the model was trained "
            f"with (namex train --hf-model writes it to OUT/model)"
        )
    tok = BPETokenizer(Tokenizer.from_file(str(path)))
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("--prompt: the prompt is empty; give some text to continue")
    transformers = require_transformers()
    run = Path(folder) / "namex_run.json"
    builtin = run.is_file() and json.loads(run.read_text(encoding="utf-8")).get(
        "tokenizer") == "builtin-bpe"
    own: Any = getattr(model, "generation_config", None)
    eos = None if builtin or own is None else own.eos_token_id
    pad = getattr(own, "pad_token_id", None)
    if pad is None:  # one unpadded sequence: never used, but generate wants an id
        pad = eos if isinstance(eos, int) else 0
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
        eos_token_id=eos, pad_token_id=pad,
    )
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    model.eval()
    with torch.no_grad():
        out = getattr(model, "generate")(  # noqa: B009 - transformers' generate
            x, generation_config=config, attention_mask=torch.ones_like(x),
        )
    return tok.decode(out[0].tolist())
