r"""Population (nonlinear mixed-effects) models of ODE subjects: FOCEI and Laplace.

Subject i has parameters φᵢ = μ + Bᵢβ + Sηᵢ (fixed effects μ, covariate effects β on the
baseline covariates, random effects ηᵢ ~ N(0, Ω) on the subset S of the parameters, Ω
diagonal with SDs ω, or full: Ω = CCᵀ by its log-Cholesky factor C) and observations
yᵢⱼ = fᵢⱼ(φᵢ) + εᵢⱼ with εᵢⱼ ~ N(0, Rᵢⱼ), where
Rᵢⱼ = R(fᵢⱼ) is the residual error model (additive σₐ², proportional (σₚf)², combined
σₐ² + σₚ²f²). The population parameters θ = (μ, β, ω, σ) are the hyperparameters.

**Inner problem.** Each subject's random effects are the MAP estimate

    ηᵢ*(θ) = argmin_η Lᵢ(η, θ),
    Lᵢ = ½ Σⱼ [(yᵢⱼ − fᵢⱼ)²/Rᵢⱼ + log 2πRᵢⱼ] + ½ ηᵀΩ⁻¹η,

found by Levenberg–Marquardt (:func:`invcal.solvers.marquardt.levenberg_marquardt`; this
module supplies Lᵢ, its curvature and the noise floor), vmapped over subjects, on the exact
Hessian ∇²_η Lᵢ where it is positive definite (quadratic convergence near ηᵢ*) and otherwise
on the Fisher-scoring matrix Hᵢ = Σⱼ Jⱼᵀ(1/Rⱼ + R′ⱼ²/(2Rⱼ²))Jⱼ + Ω⁻¹ (Gauss–Newton for
additive error); J = ∂f/∂η and the second derivatives come from diffrax forward-mode
sensitivities. Between outer steps the solve starts from the first-order prediction
ηᵢ* + (dηᵢ*/dθ)Δθ.

**Outer objective** (minus the approximate log-likelihood, summed over subjects):

    −ℓᵢ(θ) = Lᵢ(ηᵢ*, θ) + ½ log|Ω| + ½ log|Hᵢ(ηᵢ*, θ)|,

from the Laplace approximation ∫e^{−Lᵢ}dη ≈ e^{−Lᵢ(η*)}(2π)^{q/2}|Hᵢ|^{−½} after the prior's
normalization. ``FOCEI`` takes Hᵢ the expected-information matrix above (Beal & Sheiner's
first-order conditional estimation with interaction, NONMEM; Wang 2007, eq. for FOCEI; for
additive error it equals Lindstrom & Bates' (1990) linear-mixed-effects approximation at the
conditional modes, which nlme maximizes: Pinheiro & Bates 2000, §7.2); ``Laplace`` takes the
exact Hessian ∇²_η Lᵢ.

**Hypergradient.** By the implicit function theorem at ∇_η Lᵢ(ηᵢ*, θ) = 0,

    d(−ℓᵢ)/dθ = ∂_θ(−ℓᵢ) − ∂_θ[vᵢᵀ ∇_η Lᵢ],     vᵢ = (∇²_ηη Lᵢ)⁻¹ ∂_η(−ℓᵢ),

which carries the dependence of the log-determinant on η* (∂_η(−ℓᵢ) ≠ 0 there: only Lᵢ is
stationary). FOCEI needs second derivatives of the ODE predictions with respect to φ,
Laplace third ones; they come from nested forward-mode derivatives of the diffrax solve and
enter through a Taylor polynomial (:func:`invcal.ode.taylor`), so all the algebra above is
plain JAX on small arrays.

**Lindstrom–Bates.** nlme does not maximize −Σℓᵢ: it alternates between solving the inner
problems at θₖ and maximizing the likelihood of the model linearized there (a linear
mixed-effects model, whose FOCEI likelihood is exact) over θ. Its fixed point zeroes the
gradient with the linearization point held fixed, not the full gradient, which also follows
the linearization point through ηᵢ*(θ). ``fit_population(..., algorithm="lindstrom-bates")``
(the default for FOCEI with additive error) runs that algorithm; on Theoph it reproduces
nlme to 1e-4, while the exact maximum (``algorithm="lbfgs"``) has a log-likelihood higher by
0.03 and fixed effects up to 0.017 away.

:func:`population_problem` expresses the same model as an :class:`invcal.Problem`
(x = the stacked η, ``objective`` = Σ Lᵢ, ``criterion`` = −Σ ℓᵢ) with the
:class:`PopulationLM` inner solver (defined in :mod:`invcal.ode.population_lm`, importable
from here), so the engine's ``hypergradient``, ``check_hypergradient`` and ``tune`` apply to
it; :func:`fit_population` runs the fast path: one compiled L-BFGS loop whose every
evaluation solves the inner problems warm-started and returns the objective with its
hypergradient.
"""

from __future__ import annotations

import abc
import functools
import math
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..compilation_cache import checks_without_callbacks
from ..precision import computes_in_float64
from ..problem import Problem
from ..solvers.marquardt import levenberg_marquardt
from ..space import Identity, Log, Param, Space
from .events import Events, holdout_rows, subject_arrays
from .model import ODEModel
from .population_lm import PopulationLM
from .simulate import prediction_jets, taylor

__all__ = [
    "AbstractResidualError",
    "Additive",
    "Proportional",
    "Combined",
    "AbstractApproximation",
    "AbstractLaplace",
    "FOCEI",
    "Laplace",
    "HeldOut",
    "Population",
    "PopulationLM",
    "population_problem",
    "fit_population",
    "population_objective",
    "PopulationObjective",
    "SUBJECT_AXIS",
    "subject_mesh",
]

_LOG2PI = math.log(2.0 * math.pi)
#: Name of the mesh axis the subjects are split along (see :func:`subject_mesh`).
SUBJECT_AXIS = "subjects"
#: Subjects solved together (vmapped) per chunk on a device (see :func:`_by_chunks`).
CHUNK_SIZE = 128
#: Resolution of an inner objective Lᵢ computed from adaptive ODE solves, relative to
#: 1 + |Lᵢ|: an inner step may raise Lᵢ by this much and still be taken, and a rejected step
#: that promised less than this ends the solve (the noise floor; see
#: :meth:`Population.lm_solve` and :func:`invcal.solvers.marquardt.levenberg_marquardt`).
L_RESOLUTION = 1e-12
#: Largest change of any random effect in one inner step (on the declared scale: for a
#: log-parameter, a factor e² ≈ 7.4).
MAX_ETA_STEP = 2.0


# --------------------------------------------------------------------------------------
# Residual error models
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Marginal-likelihood approximations
# --------------------------------------------------------------------------------------
class AbstractApproximation(eqx.Module):
    """The outer criterion, a sum over subjects of a term evaluated at ηᵢ*(θ): an
    approximation of −log-likelihood (:class:`FOCEI`, :class:`Laplace`) or the held-out
    criterion (:class:`HeldOut`)."""

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


class HeldOut(AbstractApproximation):
    """The held-out criterion: minus the log predictive density of each subject's held-out
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


_METHODS = {"focei": FOCEI, "laplace": Laplace, "heldout": HeldOut}


def _approximation(method) -> AbstractApproximation:
    if isinstance(method, AbstractApproximation):
        return method
    if isinstance(method, str) and method.lower() in _METHODS:
        return _METHODS[method.lower()]()
    raise ValueError(
        f"method must be 'focei', 'laplace', 'heldout', invcal.ode.FOCEI(), "
        f"invcal.ode.Laplace() or invcal.ode.HeldOut(); got {method!r}."
    )


# --------------------------------------------------------------------------------------
# The population model
# --------------------------------------------------------------------------------------
def _logdet_spd(H):
    """log|H| by Cholesky; +inf where H is not positive definite."""
    C = jnp.linalg.cholesky(H)
    d = jnp.diagonal(C)
    ok = jnp.all(jnp.isfinite(d) & (d > 0))
    return jnp.where(ok, 2.0 * jnp.sum(jnp.log(jnp.where(ok, d, 1.0))), jnp.inf)


class Population(eqx.Module):
    """The structure of a population model: which parameters have random effects and
    covariates, the residual error model and the likelihood approximation. Holds no data.

    Hyperparameter names: the model's parameters (fixed effects μ, Identity), the
    random-effect covariance Ω, ``beta_<p>_<cov>`` (covariate effect, Identity) and the
    error model's ``sigma_add``/``sigma_prop`` (Log). Ω is

    - ``omega="diagonal"``: ``omega_<p>``, the SD of p's random effect (Log);
    - ``omega="full"`` (nlme's ``pdSymm``/``pdLogChol``): Ω = CCᵀ with C lower triangular
      in the order of ``random``, ``omega_chol_<p>`` = C_pp > 0 (Log, so the unconstrained
      coordinate is log C_pp: the log-Cholesky parametrization, positive definite for every
      z) and ``omega_chol_<p>_<r>`` = C_pr below the diagonal (Identity).
    """

    model: ODEModel = eqx.field(static=True)
    random: tuple[str, ...] = eqx.field(static=True)
    covariates: tuple[tuple[str, str], ...] = eqx.field(static=True)
    error: AbstractResidualError = eqx.field(static=True)
    approximation: AbstractApproximation = eqx.field(static=True)
    omega: str = eqx.field(static=True, default="diagonal")

    # -- structure -----------------------------------------------------------------
    @property
    def cov_names(self) -> tuple[str, ...]:
        """The covariate columns used, in the order of ``SubjectArrays.cov``."""
        seen = []
        for _, c in self.covariates:
            if c not in seen:
                seen.append(c)
        return tuple(seen)

    @property
    def n_random(self) -> int:
        return len(self.random)

    def names(self) -> tuple[str, ...]:
        return (
            tuple(self.model.params)
            + tuple(f"beta_{p}_{c}" for p, c in self.covariates)
            + self.omega_names()
            + tuple(self.error.names)
        )

    def omega_names(self) -> tuple[str, ...]:
        """The hyperparameters of Ω (see the class docstring)."""
        if self.omega == "diagonal":
            return tuple(f"omega_{p}" for p in self.random)
        names = [f"omega_chol_{p}" for p in self.random]
        for i, p in enumerate(self.random):
            names += [f"omega_chol_{p}_{r}" for r in self.random[:i]]
        return tuple(names)

    def space(self, init: Mapping) -> Space:
        params = {}
        for p in self.model.params:
            params[p] = Param(init[p], Identity())
        for p, c in self.covariates:
            params[f"beta_{p}_{c}"] = Param(init[f"beta_{p}_{c}"], Identity())
        diagonal = self.omega_names()[: self.n_random]
        for k in self.omega_names():
            params[k] = Param(init[k], Log() if k in diagonal else Identity())
        for s in self.error.names:
            params[s] = Param(init[s], Log())
        return Space(params)

    def phi(self, eta, theta, cov):
        """φ = μ + Bβ + Sη (d,) for one subject."""
        phi = jnp.stack([jnp.asarray(theta[p], dtype=float) for p in self.model.params])
        for p, c in self.covariates:
            k = self.model.params.index(p)
            phi = phi.at[k].add(theta[f"beta_{p}_{c}"] * cov[self.cov_names.index(c)])
        idx = jnp.asarray([self.model.params.index(p) for p in self.random], dtype=int)
        return phi.at[idx].add(eta) if self.random else phi

    def omega_sd(self, theta):
        """The SDs of the random effects, √diag Ω (q,)."""
        if self.omega == "diagonal":
            return jnp.stack([theta[f"omega_{p}"] for p in self.random])
        return jnp.sqrt(jnp.diagonal(self.omega_matrix(theta)))

    def omega_chol(self, theta):
        """The lower-triangular Cholesky factor C of Ω = CCᵀ (q, q)."""
        if self.omega == "diagonal":
            return jnp.diag(self.omega_sd(theta))
        q = self.n_random
        C = jnp.zeros((q, q))
        for i, p in enumerate(self.random):
            C = C.at[i, i].set(theta[f"omega_chol_{p}"])
            for j, r in enumerate(self.random[:i]):
                C = C.at[i, j].set(theta[f"omega_chol_{p}_{r}"])
        return C

    def omega_matrix(self, theta):
        """Ω (q, q)."""
        C = self.omega_chol(theta)
        return C @ C.T

    def omega_prior(self, eta, theta):
        """(ηᵀΩ⁻¹η, log|Ω|) for one subject's η."""
        if self.omega == "diagonal":
            w = self.omega_sd(theta)
            return jnp.sum((eta / w) ** 2), 2.0 * jnp.sum(jnp.log(w))
        C = self.omega_chol(theta)
        u = jax.scipy.linalg.solve_triangular(C, eta, lower=True)
        return jnp.sum(u * u), 2.0 * jnp.sum(jnp.log(jnp.diagonal(C)))

    def omega_inv(self, theta):
        """Ω⁻¹ (q, q)."""
        if self.omega == "diagonal":
            return jnp.diag(1.0 / self.omega_sd(theta) ** 2)
        C = self.omega_chol(theta)
        Ci = jax.scipy.linalg.solve_triangular(C, jnp.eye(self.n_random), lower=True)
        return Ci.T @ Ci

    # -- per-subject terms on a Taylor surrogate of the predictions ---------------------
    def surrogate(self, jets, phi0, theta, subject):
        """η ↦ f̃(φ(η, θ)): the Taylor polynomial of the predictions around φ0."""
        return lambda eta, th=theta: taylor(jets, self.phi(eta, th, subject.cov) - phi0)

    def inner_objective(self, f, eta, theta, subject):
        """Lᵢ = ½ Σⱼ [(y − f)²/R + log 2πR] + ½ ηᵀΩ⁻¹η over the observed entries; an
        observation below its limit of quantification (``subject.cens``; y holds the limit)
        contributes −2 log Φ((y − f)/√R) to the sum instead (Beal 2001's M3)."""
        R = self.error.variance(f, theta)
        m = subject.obs_mask
        R = jnp.where(m, R, 1.0)
        r = jnp.where(m, subject.dv - f, 0.0)
        terms = r * r / R + jnp.log(R) + _LOG2PI
        if subject.cens is not None:
            below = -2.0 * jax.scipy.special.log_ndtr(r / jnp.sqrt(R))
            terms = jnp.where(subject.cens, below, terms)
        data = jnp.sum(jnp.where(m, terms, 0.0))
        quad, _ = self.omega_prior(eta, theta)
        return 0.5 * (data + quad)

    def fisher(self, f_of_eta, eta, theta, subject):
        """Σⱼ Jⱼᵀ(1/Rⱼ + R′ⱼ²/(2Rⱼ²))Jⱼ + Ω⁻¹ at η."""
        f = f_of_eta(eta)
        J = jax.jacfwd(f_of_eta)(eta)
        R, dR = jax.jvp(
            lambda ff: self.error.variance(ff, theta), (f,), (jnp.ones_like(f),)
        )  # R is elementwise in f, so one JVP with ones gives R′ for every entry
        m = subject.obs_mask
        R = jnp.where(m, R, 1.0)
        W = jnp.where(m, 1.0 / R + 0.5 * (dR / R) ** 2, 0.0)
        if subject.cens is not None:  # M3 terms: no Gaussian information (Laplace uses ∇²L)
            W = jnp.where(subject.cens, 0.0, W)
        return J.T @ (W[:, None] * J) + self.omega_inv(theta)

    def neg_loglik(self, f_of_eta, eta, theta, subject):
        """Subject i's term of the outer criterion at η = ηᵢ*: −ℓᵢ = Lᵢ(η) + ½ log|Ω| +
        ½ log|Hᵢ(η)| for FOCEI/Laplace, the held-out term for :class:`HeldOut`."""
        return self.approximation.criterion(self, f_of_eta, eta, theta, subject)

    # -- one subject, given its jets at φ0 = φ(η*, θ) -------------------------------------
    def subject_value_grad(self, space, jets, eta, z, subject):
        """(−ℓᵢ, d(−ℓᵢ)/dz, dηᵢ*/dz) at ηᵢ* = ``eta`` by the implicit function theorem."""
        theta0 = space.to_theta(z)
        phi0 = self.phi(eta, theta0, subject.cov)

        def parts(e, zz):
            th = space.to_theta(zz)
            f_of_eta = lambda ee: taylor(jets, self.phi(ee, th, subject.cov) - phi0)  # noqa: E731
            return f_of_eta, th

        def nll(e, zz):
            f_of_eta, th = parts(e, zz)
            return self.neg_loglik(f_of_eta, e, th, subject)

        def L(e, zz):
            f_of_eta, th = parts(e, zz)
            return self.inner_objective(f_of_eta(e), e, th, subject)

        value, (g_eta, g_z) = jax.value_and_grad(nll, argnums=(0, 1))(eta, z)
        H = jax.hessian(L, argnums=0)(eta, z)
        # ∂(∇_η L)/∂z (q, n): the mixed term of the hypergradient and, through
        # dη*/dz = −H⁻¹ ∂(∇_η L)/∂z, a first-order prediction of η* at the next z.
        Lez = jax.jacfwd(lambda zz: jax.grad(L, argnums=0)(eta, zz))(z)
        v = jnp.linalg.solve(H, g_eta)
        deta_dz = -jnp.linalg.solve(H, Lez)
        return value, g_z - Lez.T @ v, deta_dz

    # -- the inner solve -------------------------------------------------------------
    def lm_eval(self, eta, theta, subject):
        """(Lᵢ, ∇Lᵢ, A, jets, ok) at η, with second-order jets of the predictions.

        A is the exact Hessian ∇²Lᵢ where it is positive definite (Newton steps converge
        quadratically near ηᵢ*), else the Fisher-scoring matrix (always positive definite:
        Gauss–Newton for additive error), so every step is a descent direction."""
        phi = self.phi(eta, theta, subject.cov)
        jets, ok = prediction_jets(self.model, subject, phi, 2)
        f_of_eta = self.surrogate(jets, phi, theta, subject)

        def L(e):
            return self.inner_objective(f_of_eta(e), e, theta, subject)

        val, g = jax.value_and_grad(L)(eta)
        H = jax.hessian(L)(eta)
        F = self.fisher(f_of_eta, eta, theta, subject)
        newton_ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(H)))
        A = jnp.where(newton_ok, H, F)
        ok = ok & jnp.isfinite(val) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(A))
        return jnp.where(ok, val, jnp.inf), g, A, jets, ok

    def lm_solve(self, eta0, theta, subject, tol, max_steps):
        """Levenberg–Marquardt on Lᵢ for one subject: (η*, step length, steps, ok, jets).

        The iteration is :func:`invcal.solvers.marquardt.levenberg_marquardt` (its docstring
        has the steps and stops) on :meth:`lm_eval` (Lᵢ, ∇Lᵢ, and the Hessian or the
        Fisher-scoring matrix), with steps capped at ‖δ‖∞ ≤ ``MAX_ETA_STEP`` and the noise
        floor ``L_RESOLUTION``·(1 + |Lᵢ|): a step may raise Lᵢ by that much and still be
        taken, and a rejected step that promised less ends the solve, converged. Lᵢ computed
        from an adaptive ODE solve carries noise of that order (at rtol 1e-7, Theoph: ~3e-11
        on Lᵢ ≈ 15 under a change of η by 1e-14), so below it no step can be told from a
        worse one; without this stop λ grows and the subject runs to ``max_steps`` (and a
        vmapped loop waits for it).

        Returns (η*, undamped step, steps, ok, jets, converged); ``jets`` are the
        second-order jets at the returned η. The first pass of the loop evaluates η0 itself,
        so the ODE solve appears once in the program (compile time)."""
        d = len(self.model.params)
        M = subject.obs_t.shape[0]
        dtype = jnp.result_type(eta0, float)
        jets0 = (
            jnp.zeros((M,), dtype),
            jnp.zeros((M, d), dtype),
            jnp.zeros((M, d, d), dtype),
        )
        sol = levenberg_marquardt(
            lambda e: self.lm_eval(e, theta, subject),
            eta0,
            jets0,
            tol,
            max_steps,
            resolution=L_RESOLUTION,
            max_step=MAX_ETA_STEP,
        )
        return sol.x, sol.step, sol.num_steps, sol.ok, sol.aux, sol.converged

    def solve_inner(self, eta0, theta, arrays, tol, max_steps):
        """vmapped :meth:`lm_solve` over subjects: (η* (N, q), step (N,), steps (N,), ok (N,),
        second-order jets at η*, converged (N,))."""
        return jax.vmap(lambda e, s: self.lm_solve(e, theta, s, tol, max_steps))(eta0, arrays)

    # -- the outer objective with its hypergradient ------------------------------------
    def subject_terms(self, space, z, eta0, arrays, tol, max_steps):
        """Per-subject terms at z with the inner solves from η0, with no reduction across
        subjects (so the subject axis can be sharded): (−ℓᵢ (N,), d(−ℓᵢ)/dz (N, n), ηᵢ*,
        info) where ``info`` has per-subject flags, predictions, ∂f/∂φ and dηᵢ*/dz."""
        theta = space.to_theta(z)
        eta, dec, steps, ok, jets, conv = self.solve_inner(eta0, theta, arrays, tol, max_steps)
        order = self.approximation.order + 1

        def one(e, s, jt):
            if order > 2:  # the inner solve's jets stop at order 2
                phi0 = self.phi(e, theta, s.cov)
                jt, ok_j = prediction_jets(self.model, s, phi0, order)
            else:
                ok_j = jnp.asarray(True)
            v, g, de = self.subject_value_grad(space, jt, e, z, s)
            return v, g, de, ok_j, jt[0], jt[1]

        vals, grads, deta_dz, ok_j, f, J = jax.vmap(one)(eta, arrays, jets)
        ok = ok & ok_j & jnp.isfinite(vals) & jnp.all(jnp.isfinite(grads), axis=1)
        info = {
            "ok": ok,
            "inner_converged": conv,
            "inner_step": dec,
            "inner_steps": steps,
            "ipred": f,
            "J": J,
            "nll": vals,
            "deta_dz": deta_dz,
        }
        return vals, grads, eta, info

    def value_and_grad(
        self, space, z, eta0, arrays, tol, max_steps, *, valid=None, mesh=None, chunk=None
    ):
        """(−Σℓᵢ, d/dz, η*, info) at z with the inner solve from η0 (``info`` as in
        :meth:`subject_terms`). ``valid`` (N,) marks real subjects (padding copies count for
        nothing); with a ``mesh`` the subject axis is split across its devices by
        ``jax.shard_map`` (each device runs its subjects' solves on its own), and only the
        sums cross devices; ``chunk``: see :func:`_by_chunks`."""
        z = jax.lax.stop_gradient(z)
        if valid is None:
            valid = jnp.ones(eta0.shape[0], bool)

        def masked(zz, e0, a, v):
            vals, grads, eta, info = self.subject_terms(space, zz, e0, a, tol, max_steps)
            info["ok"] = info["ok"] | ~v
            vals = jnp.where(v, vals, 0.0)
            return vals, jnp.where(v[:, None], grads, 0.0), eta, info

        def terms(zz, e0, a, v):
            return _by_chunks(lambda *args: masked(zz, *args), chunk, e0, a, v)

        if mesh is not None:
            spec = jax.sharding.PartitionSpec(SUBJECT_AXIS)
            terms = jax.shard_map(
                terms,
                mesh=mesh,
                in_specs=(jax.sharding.PartitionSpec(), spec, spec, spec),
                out_specs=spec,
                check_vma=False,
            )
        vals, grads, eta, info = terms(z, eta0, arrays, valid)
        ok = jnp.all(info["ok"])
        total = jnp.where(ok, jnp.sum(vals), jnp.inf)
        grad = jnp.where(ok, jnp.sum(grads, axis=0), 0.0)
        return total, grad, eta, info

    # -- Lindstrom & Bates: the likelihood of the model linearized at (θ̂, η̂) -----------
    def linearized_value(self, space, lin, z, subject):
        """(−ℓᵢ, ηᵢ) of the model linearized at φ̂ᵢ = φ(η̂ᵢ, θ̂): f ≈ F₀ + F₁(φ − φ̂).

        For additive error the linearized model is a linear mixed-effects model, whose
        η-posterior is Gaussian: one Newton step from η̂ gives its mode exactly, and the
        FOCEI formula gives its exact marginal likelihood (Lindstrom & Bates 1990)."""
        F0, F1, phi_hat, eta_hat = lin
        theta = space.to_theta(z)

        def f_of_eta(e):
            return F0 + F1 @ (self.phi(e, theta, subject.cov) - phi_hat)

        def L(e):
            return self.inner_objective(f_of_eta(e), e, theta, subject)

        g = jax.grad(L)(eta_hat)
        H = jax.hessian(L)(eta_hat)
        eta = eta_hat - jnp.linalg.solve(H, g)
        return self.neg_loglik(f_of_eta, eta, theta, subject), eta


def _by_chunks(fn, chunk, *args):
    """``fn(*args)`` (a function vmapped over the leading subject axis of every argument)
    run on consecutive chunks of ``chunk`` subjects one after another (``lax.map``).

    A vmapped while loop (the inner Levenberg–Marquardt iteration, the adaptive ODE solve
    inside it) runs in lockstep until its slowest subject finishes, so with N subjects in one
    batch a step costs N × (the most iterations any subject needs), and that maximum grows
    with N. In chunks, each chunk waits only for its own slowest subject: the cost stays
    proportional to N. ``chunk=None``, or a batch no larger than ``chunk``: one batch. The
    leading axis must be a multiple of ``chunk`` (:func:`_shard_subjects` pads it)."""
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    if chunk is None or n <= chunk:
        return fn(*args)
    k = n // chunk

    def split(x):
        return x.reshape((k, chunk) + x.shape[1:])

    def merge(x):
        return x.reshape((n,) + x.shape[2:])

    out = jax.lax.map(lambda a: fn(*a), jax.tree_util.tree_map(split, args))
    return jax.tree_util.tree_map(merge, out)


_OMEGAS = ("diagonal", "full")


def _population(model, random, covariates, error, method, omega="diagonal") -> Population:
    if not isinstance(model, ODEModel):
        raise TypeError(f"model must be an invcal.ode.ODEModel; got {type(model).__name__}.")
    random = tuple(model.params) if random is None else tuple(random)
    bad = [p for p in random if p not in model.params]
    if bad:
        raise ValueError(f"random {bad} are not parameters of the model ({model.params}).")
    if not random:
        raise ValueError("random must name at least one parameter with a random effect.")
    covs = []
    for p, cs in (covariates or {}).items():
        if p not in model.params:
            raise ValueError(
                f"covariates key {p!r} is not a parameter of the model ({model.params})."
            )
        for c in (cs,) if isinstance(cs, str) else tuple(cs):
            covs.append((p, str(c)))
    if not isinstance(omega, str) or omega.lower() not in _OMEGAS:
        raise ValueError(
            f"omega must be 'diagonal' (independent random effects, nlme's pdDiag) or 'full' "
            f"(a general positive-definite covariance, nlme's pdSymm); got {omega!r}."
        )
    approx = _approximation(method)
    model.check_order(approx.order + 1, f"{type(approx).__name__} hypergradients")
    return Population(
        model=model,
        random=random,
        covariates=tuple(covs),
        error=_error_model(error),
        approximation=approx,
        omega=omega.lower(),
    )


def _initial_theta(pop: Population, init: Mapping, events: Events) -> dict:
    if not isinstance(init, Mapping):
        raise TypeError(
            "init must be a dict of initial values: every model parameter's fixed effect, "
            f"e.g. {dict.fromkeys(pop.model.params, 0.0)}."
        )
    names = pop.names()
    sds = tuple(f"omega_{p}" for p in pop.random) if pop.omega == "full" else ()
    unknown = [k for k in init if k not in names + sds]
    if unknown:
        raise ValueError(
            f"init has unknown names {unknown}; the population parameters are {list(names)}"
            + (f" (or, to start from a diagonal Omega, the SDs {list(sds)})." if sds else ".")
        )
    given_sds = [k for k in sds if k in init]
    if given_sds and any(k.startswith("omega_chol_") for k in init):
        raise ValueError(
            f"init: give Omega either by its SDs {given_sds} (a diagonal start) or by its "
            "Cholesky factor omega_chol_*, not both."
        )
    missing = [p for p in pop.model.params if p not in init]
    if missing:
        raise ValueError(
            f"init needs a fixed-effect value for every model parameter; missing {missing}."
        )
    out = {k: float(v) for k, v in init.items()}
    for p in pop.random:  # full Omega from SDs: the diagonal Cholesky factor C = diag(ω)
        if f"omega_{p}" in sds and f"omega_{p}" in out:
            out[f"omega_chol_{p}"] = out.pop(f"omega_{p}")
    obs = events.dv[events.is_observation]
    scale = float(np.mean(np.abs(obs))) if obs.size else 1.0
    defaults = {"sigma_add": 0.1 * max(scale, 1e-12), "sigma_prop": 0.1}
    n_diag = pop.n_random
    for k in pop.omega_names()[:n_diag]:
        out.setdefault(k, 0.5)
    for k in pop.omega_names()[n_diag:]:
        out.setdefault(k, 0.0)
    for p, c in pop.covariates:
        out.setdefault(f"beta_{p}_{c}", 0.0)
    for s in pop.error.names:
        out.setdefault(s, defaults[s])
    return {k: out[k] for k in names}


# --------------------------------------------------------------------------------------
# The engine's view: an invcal.Problem (its inner solver, PopulationLM, is in
# invcal/ode/population_lm.py)
# --------------------------------------------------------------------------------------
def _taylor_at(pop, order, x, theta, data):
    """Per-subject surrogates f̃ built at stop_gradient(φ(ηᵢ, θ)), exact to ``order``."""

    def one(e, s):
        phi = pop.phi(e, theta, s.cov)
        phi0 = jax.lax.stop_gradient(phi)
        jets, _ = prediction_jets(pop.model, s, phi0, order)
        jets = jax.lax.stop_gradient(jets)
        return jets, phi0

    return jax.vmap(one)(x, data)


def population_problem(
    model,
    events,
    *,
    init,
    random=None,
    error="additive",
    method="focei",
    covariates=None,
    name="population",
    holdout=None,
    holdout_seed: int = 0,
    omega="diagonal",
):
    """(problem, solver): the population model as an :class:`invcal.Problem` whose x is the
    stacked random effects η (N, q), ``objective`` Σᵢ Lᵢ and ``criterion`` −Σᵢ ℓᵢ, with
    :class:`PopulationLM` as its inner solver. Derivatives of the ODE predictions enter
    through Taylor polynomials built at the current point (exact to the order the implicit
    hypergradient needs), so ``invcal.Implicit()`` in either mode applies."""
    pop = _population(model, random, covariates, error, method, omega)
    if not isinstance(events, Events):
        raise TypeError("events must come from invcal.ode.read_events(...).")
    rows = _holdout_mask(pop, events, holdout, holdout_seed)
    arrays = subject_arrays(events, model, covariates=pop.cov_names, holdout=rows)
    space = pop.space(_initial_theta(pop, init, events))
    obj_order = 2
    crit_order = pop.approximation.order + 1

    def objective(x, theta, data):
        jets, phi0 = _taylor_at(pop, obj_order, x, theta, data)

        def one(e, s, jt, p0):
            f = taylor(jt, pop.phi(e, theta, s.cov) - p0)
            return pop.inner_objective(f, e, theta, s)

        return jnp.sum(jax.vmap(one)(x, data, jets, phi0))

    def criterion(x, theta, data):
        jets, phi0 = _taylor_at(pop, crit_order, x, theta, data)

        def one(e, s, jt, p0):
            f_of_eta = lambda ee: taylor(jt, pop.phi(ee, theta, s.cov) - p0)  # noqa: E731
            return pop.neg_loglik(f_of_eta, e, theta, s)

        return jnp.sum(jax.vmap(one)(x, data, jets, phi0))

    problem = Problem(
        space=space,
        criterion=criterion,
        x0=jnp.zeros((arrays.n_subjects, pop.n_random)),
        data=arrays,
        objective=objective,
        name=name,
    )
    return problem, PopulationLM(population=pop)


# --------------------------------------------------------------------------------------
# The fast path: a compiled L-BFGS over z
# --------------------------------------------------------------------------------------
def _two_loop(g, S, Y, rho, count, head, m):
    """L-BFGS two-loop recursion: −H_k g from the last ``count`` pairs (ring buffer)."""
    q = g
    idx = (head - 1 - jnp.arange(m)) % m  # newest first
    valid = jnp.arange(m) < count

    def first(q, i):
        k, ok = idx[i], valid[i]
        a = jnp.where(ok, rho[k] * jnp.vdot(S[k], q), 0.0)
        return q - a * Y[k], a

    q, alphas = jax.lax.scan(first, q, jnp.arange(m))
    newest = idx[0]
    gamma = jnp.where(
        count > 0, jnp.vdot(S[newest], Y[newest]) / jnp.vdot(Y[newest], Y[newest]), 1.0
    )
    r = gamma * q

    def second(r, i):
        k, ok, a = idx[i], valid[i], alphas[i]
        b = jnp.where(ok, rho[k] * jnp.vdot(Y[k], r), 0.0)
        return r + jnp.where(ok, a - b, 0.0) * S[k], None

    r, _ = jax.lax.scan(second, r, jnp.arange(m)[::-1])
    return -r


def _info0(pop, arrays, q, n):
    N, M = arrays.obs_t.shape
    d = len(pop.model.params)
    return {
        "ok": jnp.zeros(N, bool),
        "inner_converged": jnp.zeros(N, bool),
        "inner_step": jnp.zeros(N),
        "inner_steps": jnp.zeros(N, int),
        "ipred": jnp.zeros((N, M)),
        "J": jnp.zeros((N, M, d)),
        "nll": jnp.zeros(N),
        "deta_dz": jnp.zeros((N, q, n)),
    }


@eqx.filter_jit
def _fit_lbfgs(pop, space, arrays, z0, eta0, opts, valid, mesh=None, chunk=None):
    """The exact maximum of the approximate likelihood by :func:`_lbfgs`; every evaluation
    solves the inner problems from the first-order prediction of η* at the trial point.
    ``valid``/``mesh``: see :meth:`Population.value_and_grad` and :func:`_shard_subjects`."""
    inner_tol, inner_max = opts["inner_tol"], opts["inner_max_steps"]

    def evaluate(z_t, z, eta, info):
        # Warm start at η* + (dη*/dz)Δz: first-order accurate, so Newton needs ~2 steps.
        eta_guess = eta + info["deta_dz"] @ (z_t - z)
        return pop.value_and_grad(
            space, z_t, eta_guess, arrays, inner_tol, inner_max, valid=valid, mesh=mesh, chunk=chunk
        )

    info0 = _info0(pop, arrays, eta0.shape[1], z0.shape[0])
    progress = opts.get("progress")
    on_step = None if progress is None else functools.partial(progress, "lbfgs")
    out = _lbfgs(evaluate, z0, eta0, info0, opts, on_step)
    out["n_history"] = out["iter"] + 1
    out["n_inner"] = out["evals"]
    return out


@eqx.filter_jit
def _fit_lindstrom_bates(pop, space, arrays, z0, eta0, opts, valid, mesh=None, chunk=None):
    """nlme's algorithm (Lindstrom & Bates 1990; Pinheiro & Bates 2000, §7.2): solve the
    inner problems at θ_k, linearize the predictions there, maximize the linear
    mixed-effects likelihood over θ by :func:`_lbfgs` (no ODE solve in that loop), repeat
    until θ stops moving. Its fixed point zeroes the gradient of the likelihood with the
    linearization held fixed: not the maximum of the FOCEI objective (which also follows
    the linearization point), but what nlme reports."""
    inner_tol, inner_max = opts["inner_tol"], opts["inner_max_steps"]
    n, q = z0.shape[0], eta0.shape[1]
    info0 = _info0(pop, arrays, q, n)
    hist = opts["history"]

    def relinearize(c):
        theta = space.to_theta(c["z"])

        def solve(e0, a):
            return _by_chunks(
                lambda e, s: pop.solve_inner(e, theta, s, inner_tol, inner_max), chunk, e0, a
            )

        if mesh is not None:
            spec = jax.sharding.PartitionSpec(SUBJECT_AXIS)
            solve = jax.shard_map(
                solve, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False
            )
        eta, dec, steps, ok, jets, conv = solve(c["eta"], arrays)
        ok = ok | ~valid
        conv = conv | ~valid
        phi_hat = jax.vmap(lambda e, s: pop.phi(e, theta, s.cov))(eta, arrays)
        lin = (jets[0], jets[1], phi_hat, eta)

        def evaluate(z_t, z, e, info):
            def total(zz):
                vals, eta_lin = jax.vmap(
                    lambda l0, l1, ph, eh, s: pop.linearized_value(space, (l0, l1, ph, eh), zz, s)
                )(*lin, arrays)
                vals = jnp.where(valid, vals, 0.0)  # padding copies count for nothing
                ok_i = ok & jnp.isfinite(vals)
                return jnp.where(jnp.all(ok_i), jnp.sum(vals), jnp.inf), (vals, eta_lin, ok_i)

            (f, (vals, eta_lin, ok_i)), g = jax.value_and_grad(total, has_aux=True)(z_t)
            g = jnp.where(jnp.isfinite(f), g, 0.0)
            new = dict(info)
            new.update(
                ok=ok_i,
                inner_converged=conv,
                inner_step=dec,
                inner_steps=steps,
                ipred=jets[0],
                J=jets[1],
                nll=vals,
            )
            return f, g, eta_lin, new

        run = _lbfgs(evaluate, c["z"], eta, info0, opts)
        th_old = jnp.stack(list(theta.values()))
        th_new = jnp.stack(list(space.to_theta(run["z"]).values()))
        change = jnp.max(jnp.abs(th_new - th_old) / (1.0 + jnp.abs(th_old)))
        k = c["k"]
        if opts.get("progress") is not None:
            step = functools.partial(opts["progress"], "lindstrom-bates")
            _report(step, jnp.asarray(True), k + 1, run["f"])
        return {
            "z": run["z"],
            "eta": run["eta"],
            "f": run["f"],
            "info": run["info"],
            "k": k + 1,
            "change": change,
            "evals": c["evals"] + run["evals"],
            "lme_iter": c["lme_iter"] + run["iter"],
            "history": c["history"].at[jnp.minimum(k, hist - 1)].set(run["f"]),
            "inner_history": c["inner_history"].at[jnp.minimum(k, hist - 1)].set(jnp.max(steps)),
            "lme_status": run["status"],
        }

    def cond(c):
        return (c["k"] < opts["max_iter"]) & (c["change"] > opts["xtol"]) & jnp.isfinite(c["f"])

    c0 = {
        "z": z0,
        "eta": eta0,
        "f": jnp.asarray(0.0),
        "info": info0,
        "k": jnp.asarray(0),
        "change": jnp.asarray(jnp.inf),
        "evals": jnp.asarray(0),
        "lme_iter": jnp.asarray(0),
        "history": jnp.full((hist,), jnp.nan),
        "inner_history": jnp.zeros((hist,), int),
        "lme_status": jnp.asarray(0),
    }
    c = jax.lax.while_loop(cond, relinearize, c0)
    status = jnp.where(~jnp.isfinite(c["f"]), 4, jnp.where(c["change"] <= opts["xtol"], 6, 5))
    return {
        "z": c["z"],
        "f": c["f"],
        "eta": c["eta"],
        "info": c["info"],
        "iter": c["k"],
        "evals": c["evals"],
        "history": c["history"],
        "inner_history": c["inner_history"],
        "status": status,
        "n_history": c["k"],
        "n_inner": c["k"],
    }


def _report(callback, accepted, iteration, objective):
    """``callback(iteration, objective)`` on the host, from inside the compiled loop, when
    ``accepted`` (progress of a long fit; the loop does not wait for it)."""

    def host(acc, it, f):
        if bool(acc):
            callback(int(it), float(f))

    jax.debug.callback(host, accepted, iteration, objective)


def _lbfgs(evaluate, z0, eta0, info0, opts, on_step=None):
    """L-BFGS (memory 10) with backtracking (Armijo) line search, as one ``while_loop``
    with one call of ``evaluate(z_trial, z, eta, info) -> (f, g, eta, info)`` per pass (so
    the objective, and the ODE solves in it, are compiled once). The first pass evaluates
    z0 itself; trial steps are capped at ``max_step`` in every coordinate. ``on_step``
    (host callback): called with (iteration, objective) after each accepted step."""
    m = 10
    n = z0.shape[0]
    max_iter, gtol, ftol, max_step = (
        opts["max_iter"],
        opts["gtol"],
        opts["ftol"],
        opts["max_step"],
    )

    state = {
        "z": z0,
        "f": jnp.asarray(jnp.inf),
        "g": jnp.zeros(n),
        "eta": eta0,
        "d": jnp.zeros(n),
        "alpha": jnp.asarray(0.0),
        "started": jnp.asarray(False),
        "S": jnp.zeros((m, n)),
        "Y": jnp.zeros((m, n)),
        "rho": jnp.zeros(m),
        "count": jnp.asarray(0),
        "head": jnp.asarray(0),
        "iter": jnp.asarray(0),
        "evals": jnp.asarray(0),
        "ls": jnp.asarray(0),
        "done": jnp.asarray(False),
        "status": jnp.asarray(0),
        "small": jnp.asarray(0),
        "history": jnp.full((opts["history"],), jnp.nan),
        "inner_history": jnp.zeros((opts["history"],), int),
        "info": info0,
    }

    def cond(s):
        return ~s["done"]

    def body(s):
        z_t = s["z"] + s["alpha"] * s["d"]
        f_t, g_t, eta_t, info_t = evaluate(z_t, s["z"], s["eta"], s["info"])
        slope = jnp.vdot(s["g"], s["d"])
        armijo = jnp.isfinite(f_t) & (f_t <= s["f"] + 1e-4 * s["alpha"] * slope)
        accept = armijo | ~s["started"]
        # -- accepted: update the memory and the direction -------------------------
        sv, yv = z_t - s["z"], g_t - s["g"]
        sy = jnp.vdot(sv, yv)
        push = accept & s["started"] & (sy > 1e-12 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv))
        head = s["head"]
        S = jnp.where(push, s["S"].at[head].set(sv), s["S"])
        Y = jnp.where(push, s["Y"].at[head].set(yv), s["Y"])
        rho = jnp.where(push, s["rho"].at[head].set(1.0 / jnp.where(push, sy, 1.0)), s["rho"])
        head = jnp.where(push, (head + 1) % m, head)
        count = jnp.where(push, jnp.minimum(s["count"] + 1, m), s["count"])
        d_new = _two_loop(g_t, S, Y, rho, count, head, m)
        descent = jnp.vdot(d_new, g_t) < 0
        d_new = jnp.where(descent, d_new, -g_t)
        count = jnp.where(descent, count, 0)
        dmax = jnp.max(jnp.abs(d_new))
        alpha_new = jnp.where(dmax > 0, jnp.minimum(1.0, max_step / jnp.maximum(dmax, 1e-300)), 0.0)
        # -- rejected: backtrack by safeguarded quadratic interpolation ---------------
        a = s["alpha"]
        denom = 2.0 * (f_t - s["f"] - a * slope)
        a_q = jnp.where(jnp.isfinite(f_t) & (denom > 0), -slope * a * a / denom, 0.1 * a)
        a_back = jnp.clip(a_q, 0.1 * a, 0.5 * a)
        f_prev = s["f"]
        new = {
            "z": jnp.where(accept, z_t, s["z"]),
            "f": jnp.where(accept, f_t, s["f"]),
            "g": jnp.where(accept, g_t, s["g"]),
            "eta": jnp.where(accept, eta_t, s["eta"]),
            "d": jnp.where(accept, d_new, s["d"]),
            "alpha": jnp.where(accept, alpha_new, a_back),
            "started": jnp.asarray(True),
            "S": S,
            "Y": Y,
            "rho": rho,
            "count": count,
            "head": head,
            "iter": s["iter"] + jnp.where(accept & s["started"], 1, 0),
            "evals": s["evals"] + 1,
            "ls": jnp.where(accept, 0, s["ls"] + 1),
            "info": jax.tree_util.tree_map(
                lambda a_, b_: jnp.where(accept, a_, b_), info_t, s["info"]
            ),
        }
        rel = jnp.abs(f_prev - f_t) / (1.0 + jnp.abs(f_t))
        small = jnp.where(
            accept & s["started"], jnp.where(rel <= ftol, s["small"] + 1, 0), s["small"]
        )
        gmax = jnp.max(jnp.abs(new["g"]))
        history = jnp.where(
            accept,
            s["history"].at[jnp.minimum(new["iter"], opts["history"] - 1)].set(f_t),
            s["history"],
        )
        status = jnp.where(
            ~jnp.isfinite(new["f"]),
            4,  # the starting point failed
            jnp.where(
                gmax <= gtol,
                1,
                jnp.where(
                    small >= 3,
                    2,
                    jnp.where(new["ls"] >= 30, 3, jnp.where(new["iter"] >= max_iter, 5, 0)),
                ),
            ),
        )
        inner_history = (
            s["inner_history"]
            .at[jnp.minimum(s["evals"], opts["history"] - 1)]
            .set(jnp.max(info_t["inner_steps"]))
        )
        new.update(
            history=history,
            inner_history=inner_history,
            small=small,
            status=status,
            done=status > 0,
        )
        if on_step is not None:
            _report(on_step, accept, new["iter"], new["f"])
        return new

    return jax.lax.while_loop(cond, body, state)


_STATUS = {
    1: "converged: gradient norm below gtol",
    2: "converged: relative change of the objective below ftol",
    3: "stopped: the line search failed to decrease the objective",
    4: "failed: the objective is not finite at the starting point",
    5: "stopped: max_iter reached",
    6: "converged: Lindstrom-Bates fixed point (relative change of theta below xtol)",
}


def _holdout_mask(pop, events, holdout, holdout_seed):
    """The rows held out (None for none), checked against the method."""
    heldout = isinstance(pop.approximation, HeldOut)
    if heldout and holdout is None:
        raise ValueError(
            "method='heldout' needs holdout=: a fraction of each subject's observations to "
            "hold out (e.g. 0.2) or a boolean array over the table's rows."
        )
    if not heldout and holdout is not None:
        raise ValueError(
            f"holdout= is for method='heldout'; the {type(pop.approximation).__name__} "
            "likelihood uses every observation. Drop holdout=, or set method='heldout'."
        )
    return None if holdout is None else holdout_rows(events, holdout, seed=holdout_seed)


def _prepare(
    model,
    events,
    init,
    random,
    error,
    method,
    covariates,
    holdout=None,
    holdout_seed=0,
    omega="diagonal",
):
    if not isinstance(events, Events):
        from .events import read_events

        events = read_events(events)
    pop = _population(model, random, covariates, error, method, omega)
    rows = _holdout_mask(pop, events, holdout, holdout_seed)
    arrays = subject_arrays(events, model, covariates=pop.cov_names, holdout=rows)
    space = pop.space(_initial_theta(pop, init, events))
    return pop, events, arrays, space


def _options(
    max_iter,
    gtol,
    ftol,
    inner_tol,
    inner_max_steps,
    max_step,
    *,
    min_iter=1,
    xtol=1e-7,
    progress=None,
):
    for name, v, lo in (("max_iter", max_iter, min_iter), ("inner_max_steps", inner_max_steps, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}.")
    for name, v in (
        ("gtol", gtol),
        ("ftol", ftol),
        ("inner_tol", inner_tol),
        ("max_step", max_step),
        ("xtol", xtol),
    ):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number; got {v!r}.")
    # Arrays, not Python numbers: changing an option must not recompile the fit.
    return {
        "max_iter": jnp.asarray(int(max_iter)),
        "gtol": jnp.asarray(float(gtol)),
        "ftol": jnp.asarray(float(ftol)),
        "inner_tol": jnp.asarray(float(inner_tol)),
        "inner_max_steps": jnp.asarray(int(inner_max_steps)),
        "max_step": jnp.asarray(float(max_step)),
        "xtol": jnp.asarray(float(xtol)),
        "history": 512,
        "progress": _progress_callback(progress),
    }


def _print_progress(algorithm, iteration, objective):
    print(
        f"fit_population [{algorithm}] iteration {iteration}: objective {objective:.10g}",
        file=sys.stderr,
        flush=True,
    )


def _progress_callback(progress):
    """``progress`` of :func:`fit_population` as a host callback, or None. A module-level
    function for ``True``, so repeated fits reuse the compiled loop."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return _print_progress
    if not callable(progress):
        raise TypeError(
            "progress must be None, True (a line per iteration on stderr) or a callable "
            f"progress(algorithm, iteration, objective); got {progress!r}."
        )
    return progress


def subject_mesh(devices=None):
    """The 1-D ``jax.sharding.Mesh`` (axis ``"subjects"``) that population fits split their
    subjects across, or ``None`` (no sharding) for a single device.

    ``devices``: ``None`` (every device of the default backend, ``jax.devices()``), a
    number k (the first k of them), a sequence of devices, or a Mesh with a ``"subjects"``
    axis. On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=k`` (set before JAX
    starts) splits the host into k devices."""
    if isinstance(devices, jax.sharding.Mesh):
        if devices.axis_names != (SUBJECT_AXIS,):
            raise ValueError(
                f"devices: a Mesh must have the single axis {SUBJECT_AXIS!r}; got axis names "
                f"{devices.axis_names}."
            )
        return devices if devices.size > 1 else None
    available = jax.devices()
    if devices is None:
        devs = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} available device(s); "
                f"got {devices}."
            )
        devs = available[: int(devices)]
    else:
        try:
            devs = list(devices)
        except TypeError:
            devs = None
        if not devs or not all(isinstance(d, jax.Device) for d in devs):
            raise TypeError(
                "devices must be None, a number of devices, a sequence of jax devices or a "
                f"jax.sharding.Mesh; got {devices!r}."
            )
    if len(devs) == 1:
        return None
    return jax.sharding.Mesh(np.asarray(devs), (SUBJECT_AXIS,))


def _shard_subjects(arrays, eta0, mesh, chunk=None):
    """(arrays, η0, valid): the subject axis padded with copies of the last subject
    (``valid`` False there) to a multiple of the mesh size (× ``chunk`` where a device holds
    more than ``chunk`` subjects) and, with a mesh, split across it."""
    n = eta0.shape[0]
    k = 1 if mesh is None else mesh.size
    if chunk is not None and n > k * chunk:
        k *= chunk
    pad = (-n) % k
    valid = jnp.arange(n + pad) < n
    if pad:
        arrays = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), arrays
        )
        eta0 = jnp.concatenate([eta0, jnp.repeat(eta0[-1:], pad, axis=0)])
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(SUBJECT_AXIS))
        arrays, eta0, valid = jax.device_put((arrays, eta0, valid), sharding)
    return arrays, eta0, valid


def _unpad(out, n):
    """Drop the padding subjects from a run's per-subject outputs (NumPy arrays)."""
    out = dict(out)
    out["eta"] = out["eta"][:n]
    out["info"] = {k: v[:n] for k, v in out["info"].items()}
    return out


def _chunk(chunk_size):
    if chunk_size is None:
        return None
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an integer >= 1; got {chunk_size!r}.")
    return int(chunk_size)


def _bad_subjects(events, ok) -> list:
    return [events.subjects[i] for i in np.flatnonzero(~np.asarray(ok))]


def _warn_unconverged(where, events, info, inner_tol, inner_max_steps):
    """Warn (naming the subjects) when an inner MAP fit stopped unconverged: its η* and
    the hypergradient through it are then inexact, and that must not pass silently."""
    conv = np.asarray(info["inner_converged"]) | ~np.asarray(info["ok"])
    bad = _bad_subjects(events, conv)
    if bad:
        step = np.asarray(info["inner_step"])[~conv]
        warnings.warn(
            f"{where}: the inner MAP fit of subject(s) {bad[:20]}"
            + (f" (and {len(bad) - 20} more)" if len(bad) > 20 else "")
            + f" did not converge within inner_max_steps={inner_max_steps} (largest "
            f"undamped Newton step {float(np.max(step)):.3g} > inner_tol={inner_tol:g}); "
            "their random effects, and the hypergradient through them, are inexact. Raise "
            "inner_max_steps or inner_tol, or check those subjects' data.",
            RuntimeWarning,
            stacklevel=3,
        )
    return bad


@computes_in_float64
def fit_population(
    model,
    events,
    *,
    init,
    random=None,
    error="additive",
    method="focei",
    covariates=None,
    max_iter: int = 200,
    gtol: float = 1e-5,
    ftol: float = 1e-10,
    inner_tol: float = 1e-9,
    inner_max_steps: int = 50,
    max_step: float = 1.0,
    algorithm: str = "auto",
    xtol: float = 1e-7,
    devices=None,
    chunk_size: int | None = CHUNK_SIZE,
    holdout=None,
    holdout_seed: int = 0,
    omega: str = "diagonal",
    progress=None,
):
    """Fit a population ODE model by maximizing the FOCEI or Laplace likelihood.

    **Arguments**

    - ``model``: an :class:`invcal.ode.ODEModel`; ``events``: from :func:`read_events` (or a
      path / DataFrame, read with default options).
    - ``init``: initial values by hyperparameter name: a fixed effect for every model
      parameter (required); optionally ``omega_<p>`` (random-effect SD, default 0.5),
      ``sigma_add``/``sigma_prop`` (residual SDs; default 0.1·mean|DV| / 0.1) and
      ``beta_<p>_<cov>`` (default 0).
    - ``random``: the parameters with random effects (default all).
    - ``omega``: ``"diagonal"`` (default; nlme's ``pdDiag``: ``omega_<p>`` SDs) or
      ``"full"`` (nlme's ``pdSymm``: Ω = CCᵀ by its log-Cholesky factor
      ``omega_chol_<p>``, ``omega_chol_<p>_<r>``; ``init`` may give the SDs ``omega_<p>``
      instead, for a diagonal start). The fit reports ``random_sd``, ``random_corr`` and
      ``omega_matrix``.
    - ``error``: ``"additive"``, ``"proportional"``, ``"combined"`` or an error model object.
    - ``method``: ``"focei"`` or ``"laplace"`` (or ``FOCEI()``/``Laplace()``), or
      ``"heldout"`` (:class:`HeldOut`): minimize −log predictive density of held-out
      observations (``holdout``: a fraction of each subject's observations, drawn with
      ``holdout_seed``, or a boolean array over the table's rows) at the MAP random
      effects fitted to the others.
    - ``covariates``: ``{param: (column, ...)}``: φ_p gains β·(baseline covariate value);
      center or log-transform the column in the table as the model needs.
    - ``max_iter``, ``gtol`` (on ‖∂/∂z‖∞ of −log-likelihood), ``ftol`` (relative change of
      the objective, three accepted steps in a row): outer L-BFGS stops; ``inner_tol``
      (largest Newton step of η), ``inner_max_steps``: inner solves; ``max_step``: largest
      change of any unconstrained parameter in one trial step (keeps line-search trials away
      from parameter values that make the ODE stiff).

    - ``algorithm``: ``"auto"`` (default): ``"lindstrom-bates"`` for FOCEI with additive
      error and no censored observations (nlme's estimates; should its iteration not
      settle within ``max_iter``, the fit goes on by ``"lbfgs"`` from where it stopped),
      ``"lbfgs"`` otherwise.
      ``"lbfgs"``: the exact maximum (or, for ``"heldout"``, minimum) of the criterion
      by L-BFGS (memory 10, Armijo backtracking) in the unconstrained coordinates z (log
      SDs) with implicit hypergradients, compiled as one loop; every evaluation starts the
      inner solves from the first-order prediction η* + (dη*/dz)Δz of the last accepted
      point. ``"lindstrom-bates"``: nlme's alternating algorithm (FOCEI, additive error
      only): relinearize at the current θ and η*, maximize the linear mixed-effects
      likelihood (L-BFGS, no ODE solve), repeat until θ changes by less than ``xtol``
      (relative); ``max_iter`` then bounds both loops. Its fixed point is what nlme
      reports, not the maximum of the FOCEI objective (see the module docstring).
    - ``devices``: the devices the subjects are split across (:func:`subject_mesh`; default
      every device, so a single device runs unsharded). Each device solves its subjects'
      inner problems on its own; results equal the unsharded ones up to the order of the
      sums over subjects (rounding).
    - ``chunk_size``: each device solves its subjects this many at a time (vmapped within a
      chunk, chunks one after another), so one slow subject holds up only its chunk;
      ``None``: all at once.

    - ``progress``: ``True`` prints a line per outer iteration (algorithm, iteration,
      objective) to stderr as the compiled fit runs; a callable receives
      ``(algorithm, iteration, objective)`` instead (pass the same function to later fits:
      a new one compiles the fit again).

    Returns a :class:`PopulationFit`. Computes in float64 whatever JAX's global
    ``jax_enable_x64`` (scoped to the call, :mod:`invcal.precision`): FOCEI's second
    derivatives through the ODE solves need it. Its estimates are NumPy float64 arrays.
    """
    from .summary import PopulationFit

    pop, events, arrays, space = _prepare(
        model, events, init, random, error, method, covariates, holdout, holdout_seed, omega
    )
    opts = _options(
        max_iter, gtol, ftol, inner_tol, inner_max_steps, max_step, xtol=xtol, progress=progress
    )
    if algorithm not in ("auto", "lbfgs", "lindstrom-bates"):
        raise ValueError(
            f"algorithm must be 'auto', 'lbfgs' or 'lindstrom-bates'; got {algorithm!r}."
        )
    linear_mixed = (
        isinstance(pop.approximation, FOCEI)
        and isinstance(pop.error, Additive)
        and arrays.cens is None  # censored (M3) terms make the linearized model non-Gaussian
    )
    auto = algorithm == "auto"
    if auto:
        algorithm = "lindstrom-bates" if linear_mixed else "lbfgs"
    if algorithm == "lindstrom-bates" and not linear_mixed:
        raise ValueError(
            "algorithm='lindstrom-bates' is nlme's algorithm for FOCEI with additive error "
            "and no censored observations (where the linearized model is a linear "
            "mixed-effects model); got method="
            f"{type(pop.approximation).__name__}, error={type(pop.error).__name__}"
            f"{', censored observations' if arrays.cens is not None else ''}. Use "
            "algorithm='lbfgs'."
        )
    mesh = subject_mesh(devices)
    chunk = _chunk(chunk_size)
    z0 = space.to_z(space.init())
    eta0 = jnp.zeros((arrays.n_subjects, pop.n_random))
    fitter = _fit_lbfgs if algorithm == "lbfgs" else _fit_lindstrom_bates
    t0 = time.perf_counter()
    run_arrays, eta0, valid = _shard_subjects(arrays, eta0, mesh, chunk)
    with checks_without_callbacks():  # so that JAX's persistent cache keeps the fit
        out = fitter(pop, space, run_arrays, z0, eta0, opts, valid, mesh, chunk)
    out = _unpad(jax.tree_util.tree_map(np.asarray, out), arrays.n_subjects)
    status = int(out["status"])
    if auto and algorithm == "lindstrom-bates" and status == 5:
        # nlme's iteration did not settle (it can cycle): finish at the exact maximum
        algorithm = "lbfgs"
        _, eta0, _ = _shard_subjects(arrays, jnp.asarray(out["eta"]), mesh, chunk)
        z0 = jnp.asarray(out["z"])
        with checks_without_callbacks():
            out = _fit_lbfgs(pop, space, run_arrays, z0, eta0, opts, valid, mesh, chunk)
        out = _unpad(jax.tree_util.tree_map(np.asarray, out), arrays.n_subjects)
        status = int(out["status"])
    seconds = time.perf_counter() - t0
    ok = out["info"]["ok"]
    if status == 4 or not np.all(ok):
        bad = _bad_subjects(events, ok)
        raise RuntimeError(
            "fit_population: the objective is not finite"
            + (f" for subject(s) {bad}" if bad else "")
            + " (an ODE solve failed: max_steps reached or a non-finite state, or the "
            "inner fit failed); check the initial values, the model's max_steps and the "
            "solver (Kvaerno5() for stiff systems)."
        )
    _warn_unconverged("fit_population", events, out["info"], inner_tol, inner_max_steps)
    return PopulationFit._from_run(
        population=pop,
        space=space,
        events=events,
        arrays=arrays,
        run=out,
        status=status,
        message=_STATUS[status],
        seconds=seconds,
        algorithm=algorithm,
    )


@dataclass(frozen=True)
class PopulationObjective:
    """The approximate marginal likelihood at θ and its hypergradient.

    ``value`` = −log-likelihood (−Σℓᵢ); ``grad``: d value/dθ by name (user values);
    ``grad_z``: d value/dz in the unconstrained coordinates (ordered as ``names``);
    ``eta``: ηᵢ* (N, q); ``subject_value``: −ℓᵢ; ``ok``/``inner_converged``: per subject
    (a subject whose inner fit did not converge also raises a ``RuntimeWarning``);
    ``failed``: IDs of the subjects whose terms are not finite.
    """

    value: float
    grad: dict
    grad_z: np.ndarray
    z: np.ndarray
    names: tuple
    eta: np.ndarray
    subject_value: np.ndarray
    ok: np.ndarray
    inner_converged: np.ndarray
    failed: list

    @property
    def loglik(self) -> float:
        return -self.value


@computes_in_float64
def population_objective(
    model,
    events,
    theta,
    *,
    random=None,
    error="additive",
    method="focei",
    covariates=None,
    eta0=None,
    inner_tol: float = 1e-9,
    inner_max_steps: int = 50,
    raise_on_failure: bool = True,
    devices=None,
    chunk_size: int | None = CHUNK_SIZE,
    holdout=None,
    holdout_seed: int = 0,
    omega: str = "diagonal",
) -> PopulationObjective:
    """The FOCEI or Laplace objective −Σℓᵢ(θ) and its implicit hypergradient at ``theta``
    (a dict of every population parameter by name, user values), with the inner solves
    from ``eta0`` (default zeros).

    It runs the compiled program of :func:`fit_population` for zero iterations, so the two
    share one compilation. A subject whose ODE solve or inner fit fails makes the value
    infinite without touching the other subjects' terms; it raises ``RuntimeError`` naming
    those subjects, or with ``raise_on_failure=False`` lists them in ``failed``.
    ``devices``, ``chunk_size``, ``holdout``, ``holdout_seed``, ``omega``: as for
    :func:`fit_population` (``theta`` names Ω's parameters: ``Population.omega_names``).
    """
    pop, events, arrays, space = _prepare(
        model, events, theta, random, error, method, covariates, holdout, holdout_seed, omega
    )
    names = tuple(space.names)
    missing = [k for k in names if k not in theta]
    if missing:
        raise ValueError(f"theta lacks {missing}; pass every population parameter {names}.")
    opts = _options(0, 1.0, 1.0, inner_tol, inner_max_steps, 1.0, min_iter=0)
    z = space.to_z(space.validate(dict(theta)))
    if eta0 is None:
        eta0 = jnp.zeros((arrays.n_subjects, pop.n_random))
    eta0 = jnp.asarray(eta0, dtype=float)
    if eta0.shape != (arrays.n_subjects, pop.n_random):
        raise ValueError(
            f"eta0 must have shape ({arrays.n_subjects}, {pop.n_random}) (subjects, random "
            f"effects); got {eta0.shape}."
        )
    mesh = subject_mesh(devices)
    chunk = _chunk(chunk_size)
    run_arrays, eta0, valid = _shard_subjects(arrays, eta0, mesh, chunk)
    out = _fit_lbfgs(pop, space, run_arrays, z, eta0, opts, valid, mesh, chunk)
    out = _unpad(jax.tree_util.tree_map(np.asarray, out), arrays.n_subjects)
    info = out["info"]
    failed = _bad_subjects(events, info["ok"])
    if failed and raise_on_failure:
        raise RuntimeError(
            f"population_objective: not finite for subject(s) {failed} (an ODE solve failed: "
            "max_steps reached or a non-finite state, or the inner fit failed)."
        )
    if not failed:
        _warn_unconverged("population_objective", events, info, inner_tol, inner_max_steps)
    g_z = out["g"]

    def flat_theta(zz):
        th = space.to_theta(zz)
        return jnp.stack([th[k] for k in names])

    dtheta_dz = np.asarray(jax.jacfwd(flat_theta)(z)).diagonal()
    grad = {k: float(g_z[i] / dtheta_dz[i]) for i, k in enumerate(names)}
    return PopulationObjective(
        value=float(out["f"]),
        grad=grad,
        grad_z=g_z,
        z=np.asarray(z),
        names=names,
        eta=out["eta"],
        subject_value=info["nll"],
        ok=info["ok"],
        inner_converged=info["inner_converged"],
        failed=failed,
    )
