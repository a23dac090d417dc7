"""The outer loop: drive θ to the optimum of E(x*(θ), θ) by hypergradients.

:func:`tune` works in the space's unconstrained coordinates z (so positive and bounded
hyperparameters stay feasible) with an outer solver (:mod:`.solvers`): any optax
``GradientTransformation`` (``"gd"``, ``"adam"``, ``"lbfgs"`` by name, or ``Optax(tx)``),
:class:`HOAG` (Pedregosa 2016), :class:`Secant` or :class:`BarzilaiBorwein`; :func:`rtho`
runs :class:`RTHO` (Franceschi et al. 2017). Every outer step warm-starts the inner solve
from the previous x* (and the implicit adjoint solve from the previous adjoint), appends a
row to the history and writes ``results.json`` atomically, so a killed run resumes from its
last finished step. :func:`grid_search` and :func:`random_search` are the baselines, with
the same history rows.
"""

from .driver import tune
from .record import TuneResult, atomic_write_json
from .rtho import RTHO, rtho
from .search import grid_search, random_search
from .solvers import HOAG, AbstractOuterSolver, BarzilaiBorwein, Optax, Request, Secant, StepInfo

__all__ = [
    "AbstractOuterSolver",
    "BarzilaiBorwein",
    "HOAG",
    "Optax",
    "RTHO",
    "Request",
    "Secant",
    "StepInfo",
    "TuneResult",
    "atomic_write_json",
    "grid_search",
    "random_search",
    "rtho",
    "tune",
]
