"""Sub-commands of ``namex`` contributed by this package (wired in :mod:`namex_ref.cli`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's sub-commands to the ``namex`` parser."""
