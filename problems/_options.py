"""Parsing of ``invcal run NAME -o key=value`` options shared by the problem modules.

Values arrive as Python objects from ``setup(**options)`` or as strings from the command
line; each parser accepts both and names the option in its error.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def choice(name, value, allowed):
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")
    return value.lower()


def integer(name, value, low, high=None):
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if (
        isinstance(value, bool)
        or not isinstance(value, Integral)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f">= {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be an integer {bound}; got {value!r}.")
    return int(value)


def positive(name, value, none_ok=False):
    if value is None and none_ok:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not (math.isfinite(float(value)) and float(value) > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
    return float(value)


def image_names(name, value, default):
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(value)
    if not names:
        raise ValueError(f"{name} needs at least one image name.")
    return names
