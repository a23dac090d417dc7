"""Inner solvers (see :class:`AbstractInnerSolver`).

Solvers only iterate; the problems they solve (energies, criteria, data) live with their
domains, and so do the solvers of one domain: working-set FISTA in :mod:`invcal.sparse`;
:mod:`.bregman` (Split Bregman) serves the total-variation problems of
:mod:`invcal.imaging`, :mod:`.marquardt` (Levenberg–Marquardt, :class:`PopulationLM`) the
per-subject fits of :mod:`invcal.ode.population`.
"""

from .base import AbstractInnerSolver, InnerSolution, tree_norm
from .bregman import (
    AbstractTVNorm,
    AbstractUStep,
    Anisotropic,
    GaussSeidel,
    Isotropic,
    SpectralSolve,
    SplitBregman,
    SplitBregmanState,
    TVSolution,
    split_bregman,
)
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
    "AbstractTVNorm",
    "AbstractUStep",
    "Anisotropic",
    "GaussSeidel",
    "Isotropic",
    "SpectralSolve",
    "SplitBregman",
    "SplitBregmanState",
    "TVSolution",
    "split_bregman",
    "LMSolution",
    "PopulationLM",
    "levenberg_marquardt",
]
