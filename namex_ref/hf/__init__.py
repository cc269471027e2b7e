"""NAMEx on Hugging Face transformers MoE models.

Optional extra ``hf``: ``pip install -e '.[hf]'``.

:func:`convert` replaces every sparse MoE block of a Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE,
DeepSeek-V2, DeepSeek-V3 or GLM-4-MoE model (docs/hf.md; the
transformers 5.x layout: experts as 3-D ``gate_up_proj`` (N, 2I, H) and ``down_proj`` (N, H, I)
tensors, a top-k router module ``gate``) in place by :class:`HFMergedMoE`, which calls the merging
core of :mod:`namex_ref.merging.functional` (S13–S18). :func:`save` and :func:`load` write and read
a converted model; once this package is imported (with transformers installed)
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` reads it too (:mod:`~namex_ref.hf.auto`).
Fine-tuning runs the training loop of :mod:`namex_ref.train` with
``TrainConfig(hf_model=DIR)`` (CLI ``namex train --hf-model DIR``; :mod:`namex_ref.hf.training`).
This module imports without transformers; the functions that need it raise
:class:`MissingExtraError` naming the extra.

Modules: :mod:`~namex_ref.hf.families` (what is converted), :mod:`~namex_ref.hf.base` (the initial
base expert), :mod:`~namex_ref.hf.block` (the merging layer), :mod:`~namex_ref.hf.decode` (its
cached decoding), :mod:`~namex_ref.hf.convert` (conversion, save, load).
"""

from __future__ import annotations

import importlib.util

from namex_ref.hf.auto import register
from namex_ref.hf.base import BASE_RULES, initial_base
from namex_ref.hf.block import HFMergedMoE
from namex_ref.hf.convert import convert, converted_blocks, load, save
from namex_ref.hf.extra import HF_EXTRA_HINT, MissingExtraError, require_transformers
from namex_ref.hf.families import FAMILIES, Family, UnsupportedFamilyError, family_of

if importlib.util.find_spec("transformers") is not None:  # from_pretrained of converted folders
    register()

__all__ = [
    "BASE_RULES",
    "FAMILIES",
    "HF_EXTRA_HINT",
    "Family",
    "HFMergedMoE",
    "MissingExtraError",
    "UnsupportedFamilyError",
    "convert",
    "converted_blocks",
    "family_of",
    "initial_base",
    "load",
    "require_transformers",
    "save",
]
