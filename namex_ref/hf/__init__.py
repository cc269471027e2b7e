"""NAMEx on Hugging Face transformers MoE models.

Optional extra ``hf``: ``pip install -e '.[hf]'``.

:func:`convert` replaces every sparse MoE block of a Qwen2-MoE, Mixtral or OLMoE model (the
transformers 5.x layout: experts as 3-D ``gate_up_proj`` (N, 2I, H) and ``down_proj`` (N, H, I)
tensors, a top-k router module ``gate``) in place by :class:`HFMergedMoE`, which calls the merging
core of :mod:`namex_ref.merging.functional` (S13–S18). :func:`save` and :func:`load` write and read
a converted model. Fine-tuning runs the training loop of :mod:`namex_ref.train` with
``TrainConfig(hf_model=DIR)`` (CLI ``namex train --hf-model DIR``; :mod:`namex_ref.hf.training`).
This module imports without transformers; the functions that need it raise
:class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

from namex_ref.hf.convert import (
    BASE_RULES,
    FAMILIES,
    HF_EXTRA_HINT,
    HFMergedMoE,
    MissingExtraError,
    convert,
    converted_blocks,
    initial_base,
    load,
    require_transformers,
    save,
)

__all__ = [
    "BASE_RULES",
    "FAMILIES",
    "HF_EXTRA_HINT",
    "HFMergedMoE",
    "MissingExtraError",
    "convert",
    "converted_blocks",
    "initial_base",
    "load",
    "require_transformers",
    "save",
]
