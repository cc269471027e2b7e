"""namex_ref.checks: the one rule for scalar hyper-parameters (int, finite real, finite complex).

Oracles: the rules as stated in the module docstring, written out case by case here (which Python
and numpy values are ints / reals / numbers, which comparisons hold at open and closed bounds).
"""

from __future__ import annotations

import fractions
import math
import numbers
import re

import numpy as np
import pytest

from namex_ref.checks import as_finite_complex, is_int, is_real, require_int, require_real

# ----------------------------------------------------------------------------- predicates

INTS = [0, -3, 7, 2**70]
NOT_INTS = [True, False, 1.0, 2.5, np.int64(3), np.bool_(True), "3", None, 1 + 0j,
            fractions.Fraction(1, 1)]
REALS = [0, -3, 2**70, 0.5, -1e300, math.nan, math.inf, np.float64(0.25)]
NOT_REALS = [True, False, np.float32(0.5), np.int64(3), np.bool_(False), "0.5", None, 0.5j,
             fractions.Fraction(1, 2), np.array(0.5)]


@pytest.mark.parametrize("value", INTS)
def test_is_int_accepts_python_ints(value: object) -> None:
    assert is_int(value)


@pytest.mark.parametrize("value", NOT_INTS)
def test_is_int_refuses_bool_float_numpy_and_text(value: object) -> None:
    assert not is_int(value)


@pytest.mark.parametrize("value", REALS)
def test_is_real_accepts_int_float_and_float_subclasses(value: object) -> None:
    assert is_real(value)


@pytest.mark.parametrize("value", NOT_REALS)
def test_is_real_refuses_bool_other_numbers_and_text(value: object) -> None:
    assert not is_real(value)


# ----------------------------------------------------------------------------- require_int


def test_require_int_returns_the_value_at_and_inside_closed_bounds() -> None:
    assert require_int("n", 1, low=1) == 1
    assert require_int("n", 10**6, low=1) == 10**6
    assert require_int("k", 1, low=1, high=4) == 1
    assert require_int("k", 4, low=1, high=4) == 4
    assert require_int("d", 0, low=0) == 0
    assert require_int("d", -2, low=-5) == -2


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        (0, 1, None, "n must be >= 1, got n=0"),
        (-1, 0, None, "n must be >= 0, got n=-1"),
        (5, 1, 4, "n must be in [1, 4], got n=5"),
        (0, 1, 4, "n must be in [1, 4], got n=0"),
        (True, 0, None, "n must be an int, got n=True"),
        (False, 0, None, "n must be an int, got n=False"),
        (2.0, 1, None, "n must be an int, got n=2.0"),
        (math.nan, 1, None, "n must be an int, got n=nan"),
        (np.int64(3), 1, None, f"n must be an int, got n={np.int64(3)!r}"),
        ("3", 1, None, "n must be an int, got n='3'"),
    ],
)
def test_require_int_refusals_name_the_rule_and_value(
    value: object, low: int, high: int | None, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        require_int("n", value, low=low, high=high)
    assert str(info.value) == message


def test_require_int_note_and_flag_style_name() -> None:
    with pytest.raises(ValueError) as info:
        require_int("--batch-size", -2, low=1, note="tokens per step")
    assert str(info.value) == "--batch-size must be >= 1 (tokens per step), got --batch-size=-2"


# ----------------------------------------------------------------------------- require_real


def test_require_real_returns_a_float() -> None:
    out = require_real("x", 3)
    assert out == 3.0 and type(out) is float
    assert type(require_real("x", np.float64(0.5))) is float
    assert require_real("x", -1e300) == -1e300


@pytest.mark.parametrize(
    ("kwargs", "inside", "outside"),
    [
        ({"low": 0.0}, [0.0, 1e-300, 5], [-1e-300, -1.0]),
        ({"low": 0.0, "low_open": True}, [1e-300, 2.0], [0.0, -0.0, -1.0]),
        ({"high": 1.0}, [1.0, -5.0], [1.0 + 2**-52]),
        ({"high": 1.0, "high_open": True}, [1.0 - 2**-53, -5.0], [1.0, 2.0]),
        ({"low": 0, "high": 1, "high_open": True}, [0, 0.0, 0.999], [1, 1.0, -0.001]),
        ({"low": 0, "high": 0.5, "low_open": True, "high_open": True}, [0.25, 1e-9],
         [0, 0.5, 0.7]),
        ({"low": 0, "high": 1}, [0, 1, 0.5], [1.5, -0.5]),
    ],
)
def test_require_real_bounds_open_and_closed(
    kwargs: dict[str, object], inside: list[float], outside: list[float]
) -> None:
    for v in inside:
        assert require_real("x", v, **kwargs) == float(v)  # type: ignore[arg-type]
    for v in outside:
        with pytest.raises(ValueError, match=re.escape(f"got x={v!r}")):
            require_real("x", v, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (math.nan, {}, "x must be finite, got x=nan"),
        (math.inf, {"low": 0}, "x must be finite, got x=inf"),
        (-math.inf, {"high": 0}, "x must be finite, got x=-inf"),
        (True, {}, "x must be a real number, got x=True"),
        ("0.1", {}, "x must be a real number, got x='0.1'"),
        (1j, {}, "x must be a real number, got x=1j"),
        (0.0, {"low": 0, "low_open": True}, "x must be > 0, got x=0.0"),
        (-0.1, {"low": 0.0}, "x must be >= 0.0, got x=-0.1"),
        (2.0, {"high": 1, "high_open": True}, "x must be < 1, got x=2.0"),
        (2.0, {"high": 1}, "x must be <= 1, got x=2.0"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, "x must be in [0, 1), got x=1.0"),
        (0, {"low": 0, "high": 0.5, "low_open": True, "high_open": True},
         "x must be in (0, 0.5), got x=0"),
        (1.5, {"low": 0, "high": 1, "low_open": True}, "x must be in (0, 1], got x=1.5"),
        (0.0, {"low": 0, "low_open": True, "note": "S16"}, "x must be > 0 (S16), got x=0.0"),
    ],
)
def test_require_real_refusals_name_the_rule_and_value(
    value: object, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        require_real("x", value, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_require_real_refuses_numpy_float32() -> None:
    """float32 is not a float subclass: the JSON configurations could not store it."""
    with pytest.raises(ValueError, match="must be a real number"):
        require_real("lr", np.float32(0.1))


# ----------------------------------------------------------------------------- complex


class _Opaque(numbers.Number):
    """Registered as a number, but complex() cannot convert it."""

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0j),
        (-2, -2 + 0j),
        (0.5, 0.5 + 0j),
        (0.3 - 0.4j, 0.3 - 0.4j),
        (np.float32(0.5), 0.5 + 0j),
        (np.complex128(1 - 2j), 1 - 2j),
        (np.int64(7), 7 + 0j),
        (fractions.Fraction(1, 4), 0.25 + 0j),
    ],
)
def test_as_finite_complex_accepts_numbers(value: object, expected: complex) -> None:
    out = as_finite_complex("beta", value)
    assert out == expected and type(out) is complex


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "beta must be a real or complex number, got beta=True"),
        ("0.5", "beta must be a real or complex number, got beta='0.5'"),
        (None, "beta must be a real or complex number, got beta=None"),
        (np.array(0.5), "beta must be a real or complex number, got beta=array(0.5)"),
        (math.nan, "beta must be finite, got beta=nan"),
        (complex(0.5, math.inf), "beta must be finite, got beta=(0.5+infj)"),
        (complex(math.nan, 0.0), "beta must be finite, got beta=(nan+0j)"),
    ],
)
def test_as_finite_complex_refusals(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        as_finite_complex("beta", value)
    assert str(info.value) == message


def test_as_finite_complex_refuses_an_unconvertible_number() -> None:
    with pytest.raises(ValueError, match="beta must be a real or complex number") as info:
        as_finite_complex("beta", _Opaque())
    assert isinstance(info.value.__cause__, TypeError)
