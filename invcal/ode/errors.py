"""Residual error models of a population ODE model: the variance R(f) of an observation
whose prediction is f (additive σₐ², proportional (σₚf)², combined σₐ² + σₚ²f²)."""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

__all__ = ["AbstractResidualError", "Additive", "Proportional", "Combined"]


class AbstractResidualError(eqx.Module):
    """Residual variance R(f) of an observation with prediction f."""

    @property
    @abc.abstractmethod
    def names(self) -> tuple[str, ...]:
        """Names of the residual SD parameters (hyperparameters, Log transform)."""

    @abc.abstractmethod
    def variance(self, f, theta):
        """R(f) given θ's residual SDs."""


class Additive(AbstractResidualError):
    """R = σₐ²."""

    @property
    def names(self):
        return ("sigma_add",)

    def variance(self, f, theta):
        return jnp.broadcast_to(theta["sigma_add"] ** 2, jnp.shape(f))


class Proportional(AbstractResidualError):
    """R = (σₚ f)² (needs predictions away from 0 at every observation)."""

    @property
    def names(self):
        return ("sigma_prop",)

    def variance(self, f, theta):
        return (theta["sigma_prop"] * f) ** 2


class Combined(AbstractResidualError):
    """R = σₐ² + σₚ² f²."""

    @property
    def names(self):
        return ("sigma_add", "sigma_prop")

    def variance(self, f, theta):
        return theta["sigma_add"] ** 2 + (theta["sigma_prop"] * f) ** 2


_ERRORS = {"additive": Additive, "proportional": Proportional, "combined": Combined}


def _error_model(error) -> AbstractResidualError:
    if isinstance(error, AbstractResidualError):
        return error
    if isinstance(error, str) and error.lower() in _ERRORS:
        return _ERRORS[error.lower()]()
    raise ValueError(
        f"error must be 'additive', 'proportional', 'combined' or an "
        f"invcal.ode residual error model (Additive(), ...); got {error!r}."
    )
