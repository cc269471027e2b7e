"""The Hugging Face model families whose sparse MoE blocks :func:`namex_ref.hf.convert` replaces."""

from __future__ import annotations

__all__ = ["FAMILIES"]

FAMILIES: dict[str, str] = {
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "MixtralSparseMoeBlock": "mixtral",
    "OlmoeSparseMoeBlock": "olmoe",
}
"""Sparse MoE block classes that :func:`convert` replaces, and their model family."""
