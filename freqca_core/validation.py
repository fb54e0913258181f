"""Early, explicit checks of user-facing parameters: every error names the input and its allowed range."""
from __future__ import annotations

import math
import numbers


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as int if it is an integer in ``[low, high]``; else raise ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
            isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be an integer in {_range(low, high)}, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer in {_range(low, high)}, got {value}")
    return value


def check_float(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """Return ``value`` as float if finite and in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {_range(low, high, low_open)}, got {value!r}")
    value = float(value)
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{name} must be in {_range(low, high, low_open)}, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value  # type: ignore[return-value]


def _range(low: float, high: float | None, low_open: bool = False) -> str:
    return f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
