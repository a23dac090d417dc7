"""Keywords renamed so that ``method=`` names only the hypergradient method."""

from __future__ import annotations

import warnings


def renamed_from_method(value, method, *, who: str, new: str, default=None, stacklevel: int = 3):
    """``value`` (the argument under its new name ``new``), or ``method``, its old name, with a
    DeprecationWarning naming the new one; both given is a TypeError. ``default`` is the new
    keyword's default (an argument equal to it counts as not given); ``stacklevel`` points the
    warning at the user's call."""
    if method is None:
        return value
    if not (value is default or (isinstance(default, str) and value == default)):
        raise TypeError(f"{who}: pass {new}= only (method= is its old name).")
    warnings.warn(
        f"{who}(method=...) is now {who}({new}=...): method= names the hypergradient method "
        "elsewhere in invcal.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return method
