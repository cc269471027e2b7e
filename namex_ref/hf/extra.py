"""The optional ``hf`` extra: import transformers, or say which install command brings it."""

from __future__ import annotations

from typing import Any

__all__ = ["HF_EXTRA_HINT", "MissingExtraError", "from_pretrained_quietly", "require_transformers"]

HF_EXTRA_HINT = "pip install -e '.[hf]'"
"""The install command of the optional extra that brings transformers."""


class MissingExtraError(ImportError):
    """transformers is not installed: the ``hf`` extra is missing."""


def require_transformers() -> Any:
    """Import and return transformers, or raise :class:`MissingExtraError` naming the extra."""
    try:
        import transformers
    except ImportError as err:
        raise MissingExtraError(
            "namex_ref.hf needs Hugging Face transformers, which is not installed; install the "
            f"optional extra with `{HF_EXTRA_HINT}` (transformers==5.23.0)"
        ) from err
    return transformers


def from_pretrained_quietly(folder: str, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)`` without
    transformers' "Loading weights" progress bar (commands report in one line)."""
    transformers = require_transformers()
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, **kwargs)
    finally:
        if shown:
            bars.enable_progress_bar()
