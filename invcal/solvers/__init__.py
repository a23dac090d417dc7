"""Inner solvers (see :class:`AbstractInnerSolver`).

Solvers only iterate; the problems they solve (energies, criteria, data) live with their
domains, and so do the solvers of one domain: working-set FISTA in :mod:`invcal.sparse`,
Split Bregman in :mod:`invcal.imaging.bregman`; :mod:`.marquardt` (Levenberg–Marquardt,
:class:`PopulationLM`) serves the per-subject fits of :mod:`invcal.ode.population`.
"""

from .base import AbstractInnerSolver, InnerSolution, tree_norm
from .fixed_point import FISTA, FixedPointIteration, FixedSteps
from .marquardt import LMSolution, PopulationLM, levenberg_marquardt
from .newton import Newton

__all__ = [
    "AbstractInnerSolver",
    "InnerSolution",
    "tree_norm",
    "FixedPointIteration",
    "FISTA",
    "FixedSteps",
    "Newton",
    "LMSolution",
    "PopulationLM",
    "levenberg_marquardt",
]
