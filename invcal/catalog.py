"""The catalogue of ready-made problems that ``invcal list/run/check`` know.

A problem module (``problems/*.py``) exposes a function returning a :class:`Setup` and
registers it under the entry-point group ``invcal.problems`` in ``pyproject.toml``.
``invcal`` itself never imports ``problems``; entry points are loaded only when the command
line asks for a problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

__all__ = ["Setup", "available", "load"]

GROUP = "invcal.problems"


@dataclass
class Setup:
    """Everything needed to tune, check and report a problem from the command line.

    - ``problem``, ``solver``: the bilevel problem and its default inner solver.
    - ``method``: the default hypergradient method; ``methods``: every method ``invcal
      check`` compares (name → method), each with the solver it needs in ``method_solvers``
      (defaults to ``solver``).
    - ``optimizer`` / ``learning_rate`` / ``steps``: defaults for ``invcal run``.
    - ``grid``: name → 1-D array of user values spanning each hyperparameter, for the
      criterion landscape plot (θ with one or two entries).
    - ``description``: one line for ``invcal list``.
    - ``extra_report``: optional ``f(result, outdir) -> list[(caption, filename)]`` for
      problem-specific figures, called at the end of a run.
    """

    problem: Any
    solver: Any
    method: Any
    description: str
    methods: dict[str, Any] = field(default_factory=dict)
    method_solvers: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float = 0.1
    steps: int = 50
    grid: dict[str, Any] = field(default_factory=dict)
    extra_report: Callable | None = None

    def solver_for(self, name: str):
        return self.method_solvers.get(name, self.solver)


def _entries() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> dict[str, str]:
    """Registered problem names → their one-line descriptions (loads each module)."""
    out = {}
    for name, ep in sorted(_entries().items()):
        try:
            fn = ep.load()
        except Exception as e:  # one broken module must not hide the others
            out[name] = f"(cannot be loaded: {type(e).__name__}: {e})"
            continue
        out[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return out


def load(name: str, **options) -> Setup:
    """Build the :class:`Setup` registered as ``name`` (``-`` and ``_`` are interchangeable)."""
    entries = _entries()
    key = name if name in entries else name.replace("-", "_")
    if key not in entries:
        alt = {k.replace("_", "-") for k in entries} | set(entries)
        raise KeyError(
            f"unknown problem {name!r}; known problems: {', '.join(sorted(alt & set(entries)))} "
            "(see `invcal list`)."
        )
    setup = entries[key].load()(**options)
    if not isinstance(setup, Setup):
        raise TypeError(
            f"entry point {key!r} returned {type(setup).__name__}, not invcal.catalog.Setup."
        )
    return setup
