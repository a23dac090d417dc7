"""One typed row of a run's history, and its JSON form in ``results.json``.

:class:`HistoryRow` is what the outer loop records after each evaluation, what the progress
bar shows and what the report and the command line read back. The JSON form is flat (the
solver's own fields, e.g. HOAG's ``tol`` and ``L``, sit beside the common ones), so files
written before this type existed read back unchanged; :meth:`HistoryRow.from_json` is
tolerant (a missing or mistyped field reads as ``None``), because the report must render
whatever a run left behind, and the strict checks of a file to resume from live in
:mod:`invcal.outer.record`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["HistoryRow"]


def _number(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _integer(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _flag(v) -> bool | None:
    return v if isinstance(v, bool) else None


_READERS = {
    "step": _integer,
    "value": _number,
    "grad_norm": _number,
    "accepted": _flag,
    "wall_time": _number,
    "elapsed": _number,
    "inner_steps": _integer,
    "inner_residual": _number,
    "linear_steps": _integer,
    "linear_residual": _number,
    "converged": _flag,
}


@dataclass(frozen=True)
class HistoryRow:
    """One evaluation of a run: where (``z``, ``theta`` in user values), what
    (``value`` = E, ``grad_z`` = dE/dz and its norm), whether the outer solver accepted it,
    the time it took (``wall_time``) and since the run started (``elapsed``, across resumes),
    the inner and linear-solve work and residuals, ``converged`` (both solves converged and
    the result is finite; ``None`` where not known) and the solver's own fields (``extra``)."""

    step: int | None
    z: Any
    theta: Mapping
    value: float | None
    grad_z: Any = None
    grad_norm: float | None = None
    accepted: bool | None = True
    wall_time: float | None = None
    elapsed: float | None = None
    inner_steps: int | None = None
    inner_residual: float | None = None
    linear_steps: int | None = None
    linear_residual: float | None = None
    converged: bool | None = None
    extra: Mapping = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """The evaluation is known not to have converged (an approximate hypergradient)."""
        return self.converged is False

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    def to_json(self) -> dict:
        """The flat JSON object of ``results.json``'s history."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, row: Mapping | HistoryRow | None) -> HistoryRow:
        """A row read back from JSON (or any mapping with some of the fields)."""
        if isinstance(row, HistoryRow):
            return row
        row = row if isinstance(row, Mapping) else {}
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {}
        for name in known:
            v = row.get(name)
            kwargs[name] = _READERS[name](v) if name in _READERS else v
        theta = row.get("theta")
        kwargs["theta"] = theta if isinstance(theta, Mapping) else {}
        if "accepted" in row:
            kwargs["accepted"] = _flag(row.get("accepted"))
        else:
            kwargs["accepted"] = True  # rows of searches that reject nothing
        extra = {k: v for k, v in row.items() if k not in known}
        return cls(**kwargs, extra=extra)
