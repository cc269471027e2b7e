"""Validation of scalar hyper-parameters: one rule for "an int", "a real", "a complex number".

Every configuration class and every public function of the package checks its scalar arguments
here, so the same value is accepted or refused everywhere, and every refusal is a
``ValueError`` that names the parameter and shows the bad value (``got name=value``). This module
imports nothing from :mod:`namex_ref`, so every layer can use it.

The rules (bool is never a number here, although Python's ``bool`` subclasses ``int``):

- an int is a Python ``int``;
- a real is a Python ``int`` or ``float`` (subclasses included, e.g. ``numpy.float64``; not
  ``numpy.float32`` or ``numpy.int64``, which configuration files could not store as JSON);
- a complex number is any :class:`numbers.Number` that ``complex()`` converts (numpy scalars
  included), for the spectral and momentum formulas that take β, γ ∈ ℂ.

A refusal says which rule failed: the type (``x must be an int``), finiteness (``x must be
finite``) or the range (``x must be >= 1``, ``x must be in [0, 1)``).
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

__all__ = ["as_finite_complex", "is_int", "is_real", "require_int", "require_real"]


def is_int(value: object) -> TypeGuard[int]:
    """True for a Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """True for a Python ``int`` or ``float`` (or subclass) that is not a ``bool``; NaN and ±inf
    included (see :func:`require_real` for finiteness)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(name: str, value: object, requirement: str, note: str) -> ValueError:
    why = f" ({note})" if note else ""
    return ValueError(f"{name} must be {requirement}{why}, got {name}={value!r}")


def _interval(
    low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    """The range as text: ">= 1", "> 0", "<= 2", "in [0, 1)", ..."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    assert high is not None
    return f"{'<' if high_open else '<='} {high}"


def require_int(
    name: str, value: object, *, low: int, high: int | None = None, note: str = ""
) -> int:
    """Return ``value`` if it is an int (:func:`is_int`) with low <= value (<= high if given).

    name: the parameter as the caller knows it (``"steps"``, ``"--batch-size"``); note: optional
    text shown in parentheses after the requirement (e.g. an equation tag). ValueError otherwise.
    """
    if not is_int(value):
        raise _refuse(name, value, "an int", note)
    if value < low or (high is not None and value > high):
        raise _refuse(name, value, _interval(low, high, False, False), note)
    return value


def require_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> float:
    """Return ``float(value)`` if it is a finite real (:func:`is_real`) within the bounds.

    low/high: optional bounds, closed unless ``low_open``/``high_open`` (then strict). name and
    note as in :func:`require_int`. ValueError naming the parameter and the value otherwise.
    """
    if not is_real(value):
        raise _refuse(name, value, "a real number", note)
    x = float(value)
    if not math.isfinite(x):
        raise _refuse(name, value, "finite", note)
    below = low is not None and (x <= low if low_open else x < low)
    above = high is not None and (x >= high if high_open else x > high)
    if below or above:
        raise _refuse(name, value, _interval(low, high, low_open, high_open), note)
    return x


def as_finite_complex(name: str, value: object) -> complex:
    """Return ``complex(value)`` for a finite real or complex number (bool excluded).

    Accepts any :class:`numbers.Number` that ``complex()`` converts (Python and numpy scalars);
    a bool, a string, an array or a tensor is refused. ValueError naming the parameter otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise _refuse(name, value, "a real or complex number", "")
    try:
        z: complex = complex(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise _refuse(name, value, "a real or complex number", "") from exc
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise _refuse(name, value, "finite", "")
    return z
