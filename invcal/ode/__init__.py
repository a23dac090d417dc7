"""Hierarchical ODE models: subjects' ODEs solved with diffrax, calibrated at two levels.

``ODEModel`` declares a subject's ODE, ``read_events`` reads a NONMEM-style event table, and
``fit_population`` fits the population parameters by FOCEI or Laplace marginal likelihood
with implicit hypergradients through each subject's MAP random effects.
"""

from . import plots
from .events import Events, SubjectArrays, holdout_rows, read_events, subject_arrays
from .model import ODEModel
from .population import (
    FOCEI,
    AbstractApproximation,
    AbstractLaplace,
    AbstractResidualError,
    Additive,
    Combined,
    HeldOut,
    Laplace,
    Population,
    PopulationLM,
    PopulationObjective,
    Proportional,
    fit_population,
    population_objective,
    population_problem,
    subject_mesh,
)
from .simulate import predict, prediction_jets, simulate, taylor
from .summary import PopulationFit

__all__ = [
    "AbstractApproximation",
    "AbstractLaplace",
    "AbstractResidualError",
    "Additive",
    "Combined",
    "Events",
    "FOCEI",
    "HeldOut",
    "holdout_rows",
    "Laplace",
    "Population",
    "PopulationFit",
    "PopulationLM",
    "Proportional",
    "fit_population",
    "plots",
    "population_objective",
    "PopulationObjective",
    "population_problem",
    "ODEModel",
    "SubjectArrays",
    "predict",
    "prediction_jets",
    "read_events",
    "simulate",
    "subject_arrays",
    "subject_mesh",
    "taylor",
]
