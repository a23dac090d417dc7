"""invcal: tune the hyperparameters of inverse problems and ODE models by hypergradients."""

from . import _interrupt

if _interrupt.is_the_command():  # before JAX's import (about a second): Ctrl-C is one line
    _interrupt.install()

from . import compilation_cache as _compilation_cache
from . import outer
from ._version import __version__ as __version__
from .diagnostics import (
    Diagnostics,
    HypergradientNotConverged,
    HypergradientNotConvergedWarning,
    OnFailure,
    SolveResult,
)
from .hypergradient import (
    AbstractHypergradient,
    ForwardUnrolled,
    Hypergradient,
    Implicit,
    Truncated,
    Unrolled,
    hypergradient,
    solve,
)
from .implicit import NeumannSeries
from .outer import (
    HOAG,
    RTHO,
    AbstractOuterSolver,
    BarzilaiBorwein,
    Optax,
    Secant,
    TuneResult,
    grid_search,
    random_search,
    rtho,
    tune,
)
from .problem import Problem
from .solvers import (
    FISTA,
    AbstractInnerSolver,
    FixedPointIteration,
    FixedSteps,
    InnerSolution,
    Newton,
)
from .space import Bounded, Identity, Log, Param, Softplus, Space
from .testing import check_hypergradient

# Solvers that live with their domain (the core imports no domain), importable from the top
# level as before; the domain package is imported on first use, so `import invcal` stays light.
_DOMAIN_NAMES = {
    "WorkingSetFISTA": "invcal.sparse",
    "SplitBregman": "invcal.imaging",
    "PopulationLM": "invcal.ode",
}


def __getattr__(name):
    if name == "Neumann":  # renamed: invcal.imaging.Neumann is a boundary condition
        import warnings

        warnings.warn(
            "invcal.Neumann is now invcal.NeumannSeries (the truncated Neumann-series "
            "linear solver), named apart from invcal.imaging.Neumann (a boundary condition).",
            DeprecationWarning,
            stacklevel=2,
        )
        return NeumannSeries
    if name in _DOMAIN_NAMES:
        import importlib

        return getattr(importlib.import_module(_DOMAIN_NAMES[name]), name)
    raise AttributeError(f"module 'invcal' has no attribute {name!r}")


# JAX's persistent compilation cache in a per-user folder, unless the user chose otherwise
# (JAX_COMPILATION_CACHE_DIR; INVCAL_COMPILATION_CACHE=0 turns it off): invcal.compilation_cache.
_compilation_cache.enable_default_cache()

__all__ = [
    "AbstractHypergradient",
    "AbstractInnerSolver",
    "Bounded",
    "Diagnostics",
    "FISTA",
    "FixedPointIteration",
    "FixedSteps",
    "ForwardUnrolled",
    "Hypergradient",
    "HypergradientNotConverged",
    "HypergradientNotConvergedWarning",
    "Identity",
    "Implicit",
    "InnerSolution",
    "Log",
    "NeumannSeries",
    "Newton",
    "OnFailure",
    "PopulationLM",
    "SplitBregman",
    "WorkingSetFISTA",
    "Param",
    "Problem",
    "Softplus",
    "SolveResult",
    "Space",
    "Truncated",
    "Unrolled",
    "AbstractOuterSolver",
    "BarzilaiBorwein",
    "HOAG",
    "Optax",
    "outer",
    "rtho",
    "RTHO",
    "Secant",
    "TuneResult",
    "check_hypergradient",
    "grid_search",
    "hypergradient",
    "random_search",
    "solve",
    "tune",
]
