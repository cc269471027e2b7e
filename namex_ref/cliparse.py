"""The command line's conventions, shared by every ``namex`` parser (and the stand-alone
``python -m`` entry points): every ``--help`` shows each option's default, and a bad flag is
one line on stderr with exit status 2, not a usage dump.

This module imports nothing from :mod:`namex_ref`, so every command's module can use it.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

__all__ = ["DefaultsFormatter", "Parser"]


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says its default
    (it mentions "default"), the option takes no value (``store_true``, ``--help``,
    ``--version``) or its default is ``None`` (the help says what the absence means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        no_value = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if (
            "default" in text.lower()
            or not action.option_strings
            or no_value
            or action.default is None
            or action.default is argparse.SUPPRESS
        ):
            return action.help
        return f"{text} (default: %(default)s)".strip()


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`DefaultsFormatter` (also for its sub-commands:
    ``add_subparsers`` makes parsers of this class) and a one-line error: ``PROG: error: MSG
    (PROG --help lists the options)``, exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")
