"""Hierarchical ODE models: subjects' ODEs solved with diffrax, calibrated at two levels.

``ODEModel`` declares a subject's ODE, ``read_events`` reads a NONMEM-style event table, and
``simulate`` predicts every subject's observations.
"""

from .events import Events, SubjectArrays, read_events, subject_arrays
from .model import ODEModel
from .simulate import predict, prediction_jets, simulate, taylor

__all__ = [
    "Events",
    "ODEModel",
    "SubjectArrays",
    "predict",
    "prediction_jets",
    "read_events",
    "simulate",
    "subject_arrays",
    "taylor",
]
