"""Inner solvers (see :class:`AbstractInnerSolver`)."""

from .base import AbstractInnerSolver, InnerSolution, tree_norm
from .fixed_point import FISTA, FixedPointIteration, FixedSteps
from .newton import Newton
from .working_set import WorkingSetFISTA

__all__ = [
    "AbstractInnerSolver",
    "InnerSolution",
    "tree_norm",
    "FixedPointIteration",
    "FISTA",
    "FixedSteps",
    "Newton",
    "WorkingSetFISTA",
]
