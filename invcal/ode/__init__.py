"""Hierarchical ODE models: subjects' ODEs solved with diffrax, calibrated at two levels.

``ODEModel`` declares a subject's ODE, ``read_events`` reads a NONMEM-style event table, and
``fit_population`` fits the population parameters by FOCEI or Laplace marginal likelihood
with implicit hypergradients through each subject's MAP random effects. ``calibrate`` (the
command ``invcal calibrate``) runs a whole calibration of a user's table with a built-in
model (:mod:`invcal.ode.models`) or their own: estimates with their uncertainty,
shrinkage, residuals, NPDE and a visual predictive check.
"""

from . import models, plots
from .approximations import FOCEI, AbstractApproximation, AbstractLaplace, HeldOutDensity, Laplace
from .calibrate import Calibration, calibrate
from .errors import AbstractResidualError, Additive, Combined, Proportional
from .events import Events, SubjectArrays, holdout_rows, read_events, subject_arrays
from .fit import FitNotConverged, FitNotConvergedWarning, fit_population
from .model import ODEModel
from .models import BuiltinModel, builtin_model, describe_models
from .objective import PopulationObjective, population_objective, population_problem
from .population import AbstractOmega, DiagonalOmega, FullOmega, Population
from .population_lm import PopulationLM
from .sharding import subject_mesh
from .simulate import predict, prediction_jets, simulate, taylor
from .summary import PopulationFit

__all__ = [
    "AbstractApproximation",
    "AbstractLaplace",
    "AbstractResidualError",
    "Additive",
    "BuiltinModel",
    "builtin_model",
    "calibrate",
    "Calibration",
    "Combined",
    "describe_models",
    "Events",
    "FOCEI",
    "HeldOutDensity",
    "holdout_rows",
    "Laplace",
    "Population",
    "AbstractOmega",
    "DiagonalOmega",
    "FullOmega",
    "PopulationFit",
    "PopulationLM",
    "Proportional",
    "FitNotConverged",
    "FitNotConvergedWarning",
    "fit_population",
    "models",
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
