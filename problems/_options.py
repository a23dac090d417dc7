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


def number(value, kind):
    """``value`` (a number or its string) as ``kind`` (int or float); None when it is not
    one (bools are not numbers here, and an int option refuses 3.0)."""
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, Integral if kind is int else Real):
        return None
    return kind(value)


def integer(name, value, low, high=None, none_ok=False):
    if value is None and none_ok:
        return None
    v = number(value, int)
    if v is None or v < low or (high is not None and v > high):
        bound = f">= {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{name} must be an integer {bound}; got {value!r}.")
    return v


def positive(name, value, none_ok=False):
    if value is None and none_ok:
        return None
    v = number(value, float)
    if v is None or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
    return v


def image_names(name, value, default):
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(value)
    if not names:
        raise ValueError(f"{name} needs at least one image name.")
    return names
