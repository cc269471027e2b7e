"""``namex eval``: a converted (or original) Hugging Face model on lm-evaluation-harness tasks,
and perplexity on a local text file (docs/hf.md, "Evaluation").

lm-evaluation-harness (``lm-eval``, optional extra ``eval``) runs through its Hugging Face model
wrapper (``HFLM``) on the model object :func:`load_model` returns, so a converted model is
evaluated with its own merging layers. The folder's ``tokenizer.json`` is the tokenizer (the
one it was trained with). One local task ships with the package, :data:`CLOZE_TASK`: a 4-way
cloze of the last word of a verse of the built-in corpus (:func:`cloze_items`), written to a
folder with its YAML file (:func:`write_cloze_task`), so the path runs offline. The standard
zero-shot tasks are lm-eval's own (they download their data sets: docs/hf.md).

:func:`cloze_accuracy` scores the same items without lm-eval (sum of the choice tokens' log
probabilities given the context, the largest wins: lm-eval's ``acc`` for ``multiple_choice``);
the tests use it as an independent check of the harness path.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.hf.extra import from_pretrained_quietly, require_transformers

__all__ = ["CLOZE_TASK", "EVAL_EXTRA_HINT", "cloze_accuracy", "cloze_items", "load_model",
           "load_tokenizer", "perplexity", "run_lm_eval", "write_cloze_task"]

CLOZE_TASK = "namex_verse_cloze"
"""The shipped local lm-eval task: 4-way cloze of the last word of a verse."""
EVAL_EXTRA_HINT = "pip install -e '.[eval]'"
"""The install command of the optional extra that brings lm-evaluation-harness."""

_SENTENCE = re.compile(r"[^.!?]*[.!?]")
_LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]+)[.!?]$")


def cloze_items(n: int = 200, *, seed: int = 0, text: str | None = None) -> list[dict[str, Any]]:
    """n cloze items from the verses (sentences) of ``text`` (default: the built-in corpus).

    A verse of 8–40 words ending in a plain word gives context = the verse without its last
    word, answer = " " + that word; three distractors are last words of other chosen verses,
    distinct from the answer. Items: {"context", "choices" (4 str), "label" (answer index)}.
    Deterministic for (n, seed, text).
    """
    if text is None:
        from namex_ref.data.corpus import load_builtin_corpus

        text = load_builtin_corpus()
    pool = []
    for para in text.split("\n\n"):
        for sent in _SENTENCE.findall(para):
            m = _LAST_WORD.match(sent.strip())
            if m and 8 <= len(sent.split()) <= 40:
                pool.append((m["context"], m["word"]))
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(len(pool), 4 * n))
    words = sorted({w for _, w in chosen})
    items = []
    for context, word in chosen[:n]:
        others = rng.sample([w for w in words if w.lower() != word.lower()], 3)
        label = rng.randrange(4)
        choices = [f" {w}" for w in others]
        choices.insert(label, f" {word}")
        items.append({"context": context, "choices": choices, "label": label})
    return items


def write_cloze_task(directory: str | Path, items: list[dict[str, Any]] | None = None) -> Path:
    """Write :data:`CLOZE_TASK` to ``directory``: ``verse_cloze.jsonl`` (``items``, default
    :func:`cloze_items`) and ``namex_verse_cloze.yaml`` (lm-eval ``multiple_choice``, metric
    ``acc``, the data file by absolute path). Returns the folder, for lm-eval's include path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "verse_cloze.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items or cloze_items()),
                    encoding="utf-8")
    (out / f"{CLOZE_TASK}.yaml").write_text(
        f"task: {CLOZE_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "target_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return out


def load_model(folder: str | Path) -> nn.Module:
    """A converted folder (:func:`namex_ref.hf.save`) or an original ``save_pretrained`` folder,
    read offline with ``AutoModelForCausalLM.from_pretrained`` in eval mode."""
    import namex_ref.hf  # noqa: F401  (registers the converted model types)

    src = Path(folder)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{str(src / 'config.json')!r} not found: pass a model folder")
    model: nn.Module = from_pretrained_quietly(str(src))
    return model.eval()


def load_tokenizer(folder: str | Path) -> Any:
    """The folder's ``tokenizer.json`` as a transformers fast tokenizer (for lm-eval). A
    tokenizer without an end-of-sequence token (the built-in BPE) gets its id 0 as eos and pad:
    lm-eval needs one to pad batches and to start an empty context (never used by the cloze)."""
    transformers = require_transformers()
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found: evaluation needs the tokenizer the model was trained "
            "with (namex convert and namex train --hf-model write it)")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    if tok.eos_token is None:
        first = tok.convert_ids_to_tokens(0)
        tok.eos_token = first
        tok.pad_token = first
    return tok


def run_lm_eval(
    folder: str | Path,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    work_dir: str | Path | None = None,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """lm-eval's ``simple_evaluate`` on the model of ``folder`` (its tokenizer), ``tasks`` by
    name; :data:`CLOZE_TASK` (``items``, default :func:`cloze_items`) is written to ``work_dir``
    (default: ``folder``/lm_eval_tasks) and put on the include path with ``include_path``.
    Returns {task: {metric: value}} (numbers).

    Raises:
        ImportError: lm-eval is not installed (names :data:`EVAL_EXTRA_HINT`).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            f"namex eval --tasks needs lm-evaluation-harness; install `{EVAL_EXTRA_HINT}` "
            "(or use --perplexity, which does not)") from err
    paths = [str(write_cloze_task(work_dir or Path(folder) / "lm_eval_tasks", items))]
    if include_path is not None:
        paths.append(str(include_path))
    model = load_model(folder).to(device)
    lm = HFLM(pretrained=model, tokenizer=load_tokenizer(folder), batch_size=batch_size,
              device=device)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=paths),
                          limit=limit, log_samples=False)
    results: dict[str, dict[str, float]] = {}
    for task, values in (out or {}).get("results", {}).items():
        results[task] = {k.split(",")[0]: float(v) for k, v in values.items()
                         if isinstance(v, int | float) and not isinstance(v, bool)}
    return results


def _choice_logprob(model: nn.Module, ctx: list[int], cont: list[int], device: Any) -> float:
    ids = torch.tensor([ctx + cont], device=device)
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (L-1, V)
    pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
    return float(logp[pos, ids[0, len(ctx):]].sum())


def cloze_accuracy(model: nn.Module, tokenizer: Any, items: list[dict[str, Any]]) -> float:
    """Fraction of ``items`` whose answer has the largest log P(choice | context) (the choice's
    tokens given the context's, each tokenised on its own as lm-eval does; ties to the first)."""
    device = next(model.parameters()).device
    right = 0
    for it in items:
        ctx = tokenizer.encode(it["context"], add_special_tokens=False)
        scores = [_choice_logprob(model, ctx, tokenizer.encode(c, add_special_tokens=False), device)
                  for c in it["choices"]]
        right += int(max(range(len(scores)), key=scores.__getitem__) == it["label"])
    return right / len(items)


def perplexity(model: nn.Module, ids: Tensor, seq_len: int) -> float:
    """exp of the mean next-token cross-entropy over ``ids`` (N,) in non-overlapping windows of
    ``seq_len`` (:func:`namex_ref.data.corpus.eval_windows`: every target predicted once)."""
    from namex_ref.data.corpus import eval_windows

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_windows(ids, seq_len):
            logits: Tensor = model(batch.x.to(device), use_cache=False).logits
            total += float(F.cross_entropy(logits.flatten(0, 1).float(),
                                           batch.y.to(device).flatten(), reduction="sum"))
            count += batch.y.numel()
    return math.exp(total / count)
