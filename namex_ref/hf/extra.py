"""The optional ``hf`` extra: import transformers, or say which install command brings it."""

from __future__ import annotations

from typing import Any

__all__ = ["HF_EXTRA_HINT", "MissingExtraError", "require_transformers"]

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
