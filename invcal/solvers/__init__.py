"""Inner solvers (see :class:`AbstractInnerSolver`).

Solvers only iterate; the problems they solve (energies, criteria, data) live with their
domains, and so do the solvers of one domain: working-set FISTA in :mod:`invcal.sparse`,
Split Bregman in :mod:`invcal.imaging.bregman`, the population models' per-subject solver
:class:`invcal.ode.PopulationLM`; :mod:`.marquardt` (Levenberg–Marquardt) is generic.
"""

from .base import AbstractInnerSolver, InnerSolution, tree_norm
from .fixed_point import FISTA, FixedPointIteration, FixedSteps
from .marquardt import LMSolution, levenberg_marquardt
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
    "levenberg_marquardt",
]
