"""PEtab parameter-estimation problems (SBML models) as JAX objectives.

    from invcal.ode import petab

    problem = petab.load("Boehm_JProteomeRes2014.yaml")
    problem.log_likelihood(problem.nominal)            # PEtab's log-likelihood, float64
    x = problem.x_nominal                              # on the parameters' scales
    J, g = problem.value_and_gradient(x, sensitivities=petab.Adjoint())

    result = petab.calibrate(problem, starts=20, hierarchical=True, out="runs/boehm")

``petab.calibrate`` is a multistart calibration (:mod:`.multistart`; report in
:mod:`.report`), optionally hierarchical (:mod:`.hierarchical`: scaling, offset and noise
parameters solved in closed form). ``petab.neg_log_likelihood(problem, x,
sensitivities=...)`` is the pure JAX function behind them. Sensitivity methods:
:class:`Forward` (forward sensitivities), :class:`Adjoint` (continuous adjoint, backsolve),
:class:`Checkpointed` (discrete adjoint with checkpoints).
"""

from .errors import PEtabError, UnsupportedModelError
from .hierarchical import HierarchicalProblem, hierarchical_problem
from .multistart import MultistartResult, StartResult, calibrate, start_points
from .problem import PEtabProblem, load, neg_log_likelihood
from .sensitivities import AbstractSensitivities, Adjoint, Checkpointed, Forward

__all__ = [
    "AbstractSensitivities",
    "Adjoint",
    "Checkpointed",
    "Forward",
    "HierarchicalProblem",
    "MultistartResult",
    "PEtabError",
    "PEtabProblem",
    "StartResult",
    "calibrate",
    "hierarchical_problem",
    "UnsupportedModelError",
    "load",
    "neg_log_likelihood",
    "start_points",
]
