"""Marginal-likelihood approximations of a population model: the outer criterion's term of
one subject at its MAP random effects ηᵢ*(θ) (FOCEI, Laplace), or the held-out criterion
(:class:`HeldOutDensity`). See :mod:`invcal.ode.population` for the formulas."""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._renamed import renamed_from_method

__all__ = ["AbstractApproximation", "AbstractLaplace", "FOCEI", "Laplace", "HeldOutDensity"]

_LOG2PI = math.log(2.0 * math.pi)


class AbstractApproximation(eqx.Module):
    """The outer criterion, a sum over subjects of a term evaluated at ηᵢ*(θ): an
    approximation of −log-likelihood (:class:`FOCEI`, :class:`Laplace`) or the held-out
    criterion (:class:`HeldOutDensity`)."""

    #: Derivative order of the ODE predictions that the value needs (the gradient: +1).
    order: int = eqx.field(static=True, default=1)

    @abc.abstractmethod
    def criterion(self, pop, f_of_eta, eta, theta, subject):
        """Subject i's term at η = ηᵢ* (``f_of_eta``: η ↦ predictions)."""


class AbstractLaplace(AbstractApproximation):
    """−ℓᵢ = Lᵢ(η*) + ½ log|Ω| + ½ log|Hᵢ(η*)|; subclasses choose the matrix Hᵢ."""

    @abc.abstractmethod
    def hessian(self, pop, L, f_of_eta, eta, theta, subject):
        """Hᵢ at η (a q×q matrix)."""

    def criterion(self, pop, f_of_eta, eta, theta, subject):
        def L(e):
            return pop.inner_objective(f_of_eta(e), e, theta, subject)

        H = self.hessian(pop, L, f_of_eta, eta, theta, subject)
        _, logdet_omega = pop.omega_prior(eta, theta)
        return L(eta) + 0.5 * logdet_omega + 0.5 * _logdet_spd(H)


class FOCEI(AbstractLaplace):
    """First-order conditional estimation with interaction (Beal & Sheiner, NONMEM; Wang
    2007): Hᵢ = Σⱼ Jⱼᵀ(1/Rⱼ + R′ⱼ²/(2Rⱼ²))Jⱼ + Ω⁻¹, the expected information at ηᵢ*."""

    order: int = eqx.field(static=True, default=1)

    def hessian(self, pop, L, f_of_eta, eta, theta, subject):
        return pop.fisher(f_of_eta, eta, theta, subject)


class Laplace(AbstractLaplace):
    """Laplace's approximation with the exact Hessian Hᵢ = ∇²_η Lᵢ(ηᵢ*) (needs third
    derivatives of the ODE predictions for the hypergradient)."""

    order: int = eqx.field(static=True, default=2)

    def hessian(self, pop, L, f_of_eta, eta, theta, subject):
        return jax.hessian(L)(eta)


class HeldOutDensity(AbstractApproximation):
    """The held-out predictive density (named apart from :class:`invcal.criteria.HeldOut`,
    the held-out error of a regression): minus the log predictive density of each subject's held-out
    observations Hᵢ at the MAP random effects fitted to its other observations,

        Cᵢ(θ) = ½ Σ_{j∈Hᵢ} [(yᵢⱼ − fᵢⱼ(φ(ηᵢ*(θ), θ)))²/Rᵢⱼ + log 2πRᵢⱼ],

    (``SubjectArrays.holdout`` marks Hᵢ; the inner fit never sees them). θ reaches Cᵢ
    through ηᵢ* (the prior's shrinkage: Ω against R), through φ and through R; the
    hypergradient is implicit through ηᵢ* as for the likelihoods. It is not a likelihood:
    a fit by it reports no log-likelihood, AIC or BIC."""

    order: int = eqx.field(static=True, default=1)

    def criterion(self, pop, f_of_eta, eta, theta, subject):
        f = f_of_eta(eta)
        m = subject.holdout
        R = jnp.where(m, pop.error.variance(f, theta), 1.0)
        r = jnp.where(m, subject.dv - f, 0.0)
        return 0.5 * jnp.sum(jnp.where(m, r * r / R + jnp.log(R) + _LOG2PI, 0.0))


_METHODS = {"focei": FOCEI, "laplace": Laplace, "heldout": HeldOutDensity}


def _approximation(method) -> AbstractApproximation:
    if isinstance(method, AbstractApproximation):
        return method
    if isinstance(method, str) and method.lower() in _METHODS:
        return _METHODS[method.lower()]()
    raise ValueError(
        f"approximation must be 'focei', 'laplace', 'heldout', invcal.ode.FOCEI(), "
        f"invcal.ode.Laplace() or invcal.ode.HeldOutDensity(); got {method!r}."
    )


def approximation_argument(approximation, method, who: str):
    """The likelihood approximation asked for: ``approximation``, or the older keyword
    ``method`` (which elsewhere in invcal names the hypergradient method), with a
    DeprecationWarning naming the new one."""
    return renamed_from_method(
        approximation, method, who=who, new="approximation", default="focei", stacklevel=4
    )


def _logdet_spd(H):
    """log|H| by Cholesky; +inf where H is not positive definite."""
    C = jnp.linalg.cholesky(H)
    d = jnp.diagonal(C)
    ok = jnp.all(jnp.isfinite(d) & (d > 0))
    return jnp.where(ok, 2.0 * jnp.sum(jnp.log(jnp.where(ok, d, 1.0))), jnp.inf)
