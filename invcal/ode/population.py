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

import math
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .. import batching
from ..implicit import LinearSolve, solve_system
from ..solvers.marquardt import levenberg_marquardt
from ..space import Identity, Log, Param, Space
from .approximations import (
    FOCEI,
    AbstractApproximation,
    AbstractLaplace,
    HeldOutDensity,
    Laplace,
    _approximation,
)
from .errors import AbstractResidualError, Additive, Combined, Proportional, _error_model
from .events import Events, holdout_rows, subject_arrays
from .model import ODEModel
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
    "HeldOutDensity",
    "Population",
    "AbstractOmega",
    "DiagonalOmega",
    "FullOmega",
    "solve_dense_ift",
    "L_RESOLUTION",
    "MAX_ETA_STEP",
]

_LOG2PI = math.log(2.0 * math.pi)
#: Resolution of an inner objective Lᵢ computed from adaptive ODE solves, relative to
#: 1 + |Lᵢ|: an inner step may raise Lᵢ by this much and still be taken, and a rejected step
#: that promised less than this ends the solve (the noise floor; see
#: :meth:`Population.lm_solve` and :func:`invcal.solvers.marquardt.levenberg_marquardt`).
L_RESOLUTION = 1e-12
#: Largest change of any random effect in one inner step (on the declared scale: for a
#: log-parameter, a factor e² ≈ 7.4).
MAX_ETA_STEP = 2.0
#: Initial SD of an occasion effect (``iov_<p>``) unless ``init`` gives one.
IOV_SD0 = 0.3


def solve_dense_ift(H, B) -> LinearSolve:
    """H⁻¹B for one subject's implicit system (H = ∇²_ηη Lᵢ, q × q; B, q × k: the
    right-hand sides as columns), through :func:`invcal.implicit.solve_system` (the one place
    where the IFT's linear system is solved) with lineax's dense LU. Returns the solution
    (q × k) with the worst relative residual over the columns and ``ok`` for all of them."""
    op = lx.MatrixLinearOperator(H, lx.symmetric_tag)
    sols = jax.vmap(lambda b: solve_system(op, b, lx.LU()), in_axes=1)(B)
    return LinearSolve(
        value=sols.value.T,
        steps=jnp.max(sols.steps),
        residual=jnp.max(sols.residual),
        ok=jnp.all(sols.ok),
    )


# --------------------------------------------------------------------------------------
# The population model
# --------------------------------------------------------------------------------------
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

    Inter-occasion variability (:mod:`invcal.ode.occasions`): the parameters ``iov`` gain an
    occasion effect κ ~ N(0, π²) on each of ``n_occasions`` occasions, ``iov_<p>`` = π_p
    (Log). A subject's random-effect vector is then (η (q), κ₁ (r), …, κ_K (r)), of length
    :attr:`n_eta`, with the block-diagonal prior diag(Ω, Π, …, Π), and :meth:`phi` returns
    (φ, κ₁, …, κ_K), the parameter vector the ODE solver takes for a subject with
    occasions (:class:`invcal.ode.SubjectArrays`).
    """

    model: ODEModel = eqx.field(static=True)
    random: tuple[str, ...] = eqx.field(static=True)
    covariates: tuple[tuple[str, str], ...] = eqx.field(static=True)
    error: AbstractResidualError = eqx.field(static=True)
    approximation: AbstractApproximation = eqx.field(static=True)
    omega: str = eqx.field(static=True, default="diagonal")
    iov: tuple[str, ...] = eqx.field(static=True, default=())
    n_occasions: int = eqx.field(static=True, default=0)

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
        """q: the subject-level random effects η."""
        return len(self.random)

    @property
    def n_eta(self) -> int:
        """The length of a subject's random-effect vector: q + r·K with occasions."""
        return self.n_random + len(self.iov) * self.n_occasions

    @property
    def n_phi(self) -> int:
        """The length of the parameter vector the ODE solver takes: d + r·K."""
        return len(self.model.params) + len(self.iov) * self.n_occasions

    def names(self) -> tuple[str, ...]:
        return (
            tuple(self.model.params)
            + tuple(f"beta_{p}_{c}" for p, c in self.covariates)
            + self.omega_names()
            + self.iov_names()
            + tuple(self.error.names)
        )

    def iov_names(self) -> tuple[str, ...]:
        """``iov_<p>``: the SD of p's occasion effects."""
        return tuple(f"iov_{p}" for p in self.iov)

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
        for k in self.iov_names():
            params[k] = Param(init[k], Log())
        for s in self.error.names:
            params[s] = Param(init[s], Log())
        return Space(params)

    def phi(self, eta, theta, cov):
        """φ = μ + Bβ + Sη (d,) for one subject; with occasions (φ, κ₁, …, κ_K) (n_phi,)."""
        phi = jnp.stack([jnp.asarray(theta[p], dtype=float) for p in self.model.params])
        for p, c in self.covariates:
            k = self.model.params.index(p)
            phi = phi.at[k].add(theta[f"beta_{p}_{c}"] * cov[self.cov_names.index(c)])
        idx = jnp.asarray([self.model.params.index(p) for p in self.random], dtype=int)
        if not self.iov:
            return phi.at[idx].add(eta) if self.random else phi
        q = self.n_random
        return jnp.concatenate([phi.at[idx].add(eta[:q]), eta[q:]])

    def iov_sd(self, theta):
        """The SDs of the occasion effects, π (r,)."""
        return jnp.stack([theta[k] for k in self.iov_names()])

    def random_design(self, J):
        """The columns of ∂f/∂φ (..., n_phi) that are ∂f/∂(η, κ) (..., n_eta)."""
        ridx = [self.model.params.index(p) for p in self.random]
        d = len(self.model.params)
        return np.concatenate([np.asarray(J)[..., ridx], np.asarray(J)[..., d:]], axis=-1)

    def eta_covariance(self, theta, omega=None):
        """The prior covariance of a subject's whole random-effect vector, diag(Ω, Π, …, Π)
        (n_eta, n_eta; NumPy); ``omega``: Ω at ``theta`` if already computed."""
        omega = np.asarray(self.omega_matrix(theta) if omega is None else omega)
        if not self.iov:
            return omega
        pi2 = np.asarray(self.iov_sd(theta)) ** 2
        return np.asarray(
            jax.scipy.linalg.block_diag(omega, np.diag(np.tile(pi2, self.n_occasions)))
        )

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
        """(ηᵀΩ⁻¹η, log|Ω|) for one subject's η; with occasions, of the whole vector
        (η, κ₁, …, κ_K) under diag(Ω, Π, …, Π)."""
        if self.iov:
            q = self.n_random
            quad, logdet = self._omega_prior(eta[:q], theta)
            pi = self.iov_sd(theta)
            kappa = jnp.reshape(eta[q:], (self.n_occasions, len(self.iov)))
            quad = quad + jnp.sum((kappa / pi) ** 2)
            return quad, logdet + 2.0 * self.n_occasions * jnp.sum(jnp.log(pi))
        return self._omega_prior(eta, theta)

    def _omega_prior(self, eta, theta):
        if self.omega == "diagonal":
            w = self.omega_sd(theta)
            return jnp.sum((eta / w) ** 2), 2.0 * jnp.sum(jnp.log(w))
        C = self.omega_chol(theta)
        u = jax.scipy.linalg.solve_triangular(C, eta, lower=True)
        return jnp.sum(u * u), 2.0 * jnp.sum(jnp.log(jnp.diagonal(C)))

    def omega_inv(self, theta):
        """Ω⁻¹ (q, q); with occasions, diag(Ω, Π, …, Π)⁻¹ (n_eta, n_eta)."""
        if self.omega == "diagonal":
            inv = jnp.diag(1.0 / self.omega_sd(theta) ** 2)
        else:
            C = self.omega_chol(theta)
            Ci = jax.scipy.linalg.solve_triangular(C, jnp.eye(self.n_random), lower=True)
            inv = Ci.T @ Ci
        if not self.iov:
            return inv
        pi_inv = jnp.tile(1.0 / self.iov_sd(theta) ** 2, self.n_occasions)
        return jax.scipy.linalg.block_diag(inv, jnp.diag(pi_inv))

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
        ½ log|Hᵢ(η)| for FOCEI/Laplace, the held-out term for :class:`HeldOutDensity`."""
        return self.approximation.criterion(self, f_of_eta, eta, theta, subject)

    # -- one subject, given its jets at φ0 = φ(η*, θ) -------------------------------------
    def subject_system(self, space, jets, eta, z, subject):
        """(−ℓᵢ, ∂_z(−ℓᵢ), H, B) at ηᵢ* = ``eta``: the pieces of the implicit hypergradient,
        H = ∇²_ηη Lᵢ (q, q) and its right-hand sides B = [∂_η(−ℓᵢ), ∂(∇_η Lᵢ)/∂z] (q, 1 + n),
        solved by :func:`solve_dense_ift` and put together by :meth:`ift_terms`."""
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
        return value, g_z, H, jnp.concatenate([g_eta[:, None], Lez], axis=1)

    @staticmethod
    def ift_terms(g_z, B, X):
        """(d(−ℓᵢ)/dz, dηᵢ*/dz) from X = H⁻¹B: ∂_z(−ℓᵢ) − (∂(∇_η L)/∂z)ᵀ v and −H⁻¹∂(∇_η L)/∂z."""
        v, W = X[:, 0], X[:, 1:]
        return g_z - B[:, 1:].T @ v, -W

    def subject_value_grad(self, space, jets, eta, z, subject):
        """(−ℓᵢ, d(−ℓᵢ)/dz, dηᵢ*/dz, the IFT solve's :class:`invcal.implicit.LinearSolve`)
        at ηᵢ* = ``eta`` by the implicit function theorem (:func:`solve_dense_ift`)."""
        value, g_z, H, B = self.subject_system(space, jets, eta, z, subject)
        sol = solve_dense_ift(H, B)
        grad, deta_dz = self.ift_terms(g_z, B, sol.value)
        return value, grad, deta_dz, sol

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
        d = self.n_phi
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
        info) where ``info`` has per-subject flags, predictions, ∂f/∂φ, dηᵢ*/dz and the
        relative residual of each subject's IFT solve."""
        return self.finish_terms(*self.subject_parts(space, z, eta0, arrays, tol, max_steps))

    def subject_parts(self, space, z, eta0, arrays, tol, max_steps):
        """:meth:`subject_terms` up to the IFT solves: (−ℓᵢ, ∂_z(−ℓᵢ), H, B, η*, info)."""
        theta = space.to_theta(z)
        eta, dec, steps, ok, jets, conv = self.solve_inner(eta0, theta, arrays, tol, max_steps)
        order = self.approximation.order + 1

        def one(e, s, jt):
            if order > 2:  # the inner solve's jets stop at order 2
                phi0 = self.phi(e, theta, s.cov)
                jt, ok_j = prediction_jets(self.model, s, phi0, order)
            else:
                ok_j = jnp.asarray(True)
            v, g_z, H, B = self.subject_system(space, jt, e, z, s)
            return v, g_z, H, B, ok_j, jt[0], jt[1]

        vals, g_z, H, B, ok_j, f, J = jax.vmap(one)(eta, arrays, jets)
        info = {
            "ok": ok & ok_j,
            "inner_converged": conv,
            "inner_step": dec,
            "inner_steps": steps,
            "ipred": f,
            "J": J,
            "nll": vals,
        }
        return vals, g_z, H, B, eta, info

    def finish_terms(self, vals, g_z, H, B, eta, info):
        """The IFT solves of :meth:`subject_parts`' systems (:func:`solve_dense_ift`, one
        per subject, vmapped) and the terms of :meth:`subject_terms`. Outside any
        ``shard_map`` (see :meth:`value_and_grad`): lineax compares the structures of its
        operator and vector, shardings included, and inside a ``shard_map`` they differ."""
        sol = jax.vmap(solve_dense_ift)(H, B)
        grads, deta_dz = jax.vmap(self.ift_terms)(g_z, B, sol.value)
        info = dict(info)
        info["ok"] = info["ok"] & sol.ok & jnp.isfinite(vals) & jnp.all(jnp.isfinite(grads), axis=1)
        info["deta_dz"] = deta_dz
        info["ift_residual"] = sol.residual
        return vals, grads, eta, info

    def value_and_grad(
        self, space, z, eta0, arrays, tol, max_steps, *, valid=None, mesh=None, chunk=None
    ):
        """(−Σℓᵢ, d/dz, η*, info) at z with the inner solve from η0 (``info`` as in
        :meth:`subject_terms`). ``valid`` (N,) marks real subjects (padding copies count for
        nothing); with a ``mesh`` the subject axis is split across its devices
        (:func:`invcal.batching.map_batched`: each device runs its subjects' inner solves
        on its own; the small dense IFT solves follow on the sharded results), and only the
        sums cross devices; ``chunk``: subjects solved together (vmapped) per chunk, chunks
        one after another (see :func:`invcal.batching.map_batched`)."""
        z = jax.lax.stop_gradient(z)
        if valid is None:
            valid = jnp.ones(eta0.shape[0], bool)

        parts = batching.map_batched(
            lambda zz, e0, a: self.subject_parts(space, zz, e0, a, tol, max_steps),
            z,
            eta0,
            arrays,
            in_axes=(None, 0, 0),
            chunk=chunk,
            mesh=mesh,
            vectorized=True,
        )
        vals, grads, eta, info = self.finish_terms(*parts)
        info["ok"] = info["ok"] | ~valid
        vals = jnp.where(valid, vals, 0.0)
        grads = jnp.where(valid[:, None], grads, 0.0)
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


_OMEGAS = ("diagonal", "full")


class AbstractOmega(eqx.Module):
    """The structure of the random effects' covariance Ω, the ``omega=`` of the population
    fits: :class:`DiagonalOmega` or :class:`FullOmega` (the strings ``"diagonal"`` and
    ``"full"`` name them)."""

    name: ClassVar[str]


class DiagonalOmega(AbstractOmega):
    """Independent random effects (nlme's ``pdDiag``): Ω = diag(ω²) by the SDs
    ``omega_<p>``."""

    name: ClassVar[str] = "diagonal"


class FullOmega(AbstractOmega):
    """A general positive-definite Ω = CCᵀ by its log-Cholesky factor (nlme's ``pdSymm``):
    ``omega_chol_<p>`` (diagonal, Log) and ``omega_chol_<p>_<r>`` (below it)."""

    name: ClassVar[str] = "full"


def _omega_name(omega) -> str:
    """``"diagonal"`` or ``"full"`` from an :class:`AbstractOmega` or its string."""
    if isinstance(omega, AbstractOmega):
        return omega.name
    if isinstance(omega, type) and issubclass(omega, AbstractOmega):
        raise TypeError(f"omega: pass an instance, {omega.__name__}(), not the class.")
    if not isinstance(omega, str) or omega.lower() not in _OMEGAS:
        raise ValueError(
            f"omega must be 'diagonal' (independent random effects, nlme's pdDiag) or 'full' "
            f"(a general positive-definite covariance, nlme's pdSymm), or DiagonalOmega() / "
            f"FullOmega(); got {omega!r}."
        )
    return omega.lower()


def _population(
    model, random, covariates, error, method, omega="diagonal", iov=(), events=None
) -> Population:
    """The :class:`Population`, checked; ``iov`` (the parameters with inter-occasion
    variability) needs ``events`` with an OCC column (its occasions are counted there)."""
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
    omega = _omega_name(omega)
    approx = _approximation(method)
    model.check_order(approx.order + 1, f"{type(approx).__name__} hypergradients")
    iov = () if iov is None else ((iov,) if isinstance(iov, str) else tuple(iov))
    bad = [p for p in iov if p not in model.params]
    if bad:
        raise ValueError(
            f"iov: {bad[0]!r} is not a parameter of the model ({', '.join(model.params)})."
        )
    if len(set(iov)) != len(iov):
        raise ValueError(f"iov names a parameter twice: {list(iov)}.")
    n_occ = 0
    if iov:
        from .occasions import occasion_index

        _, n_occ = occasion_index(events)
    return Population(
        model=model,
        random=random,
        covariates=tuple(covs),
        error=_error_model(error),
        approximation=approx,
        omega=omega,
        iov=iov,
        n_occasions=n_occ,
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
    for k in pop.iov_names():
        out.setdefault(k, IOV_SD0)
    for p, c in pop.covariates:
        out.setdefault(f"beta_{p}_{c}", 0.0)
    for s in pop.error.names:
        out.setdefault(s, defaults[s])
    return {k: out[k] for k in names}


def _holdout_mask(pop, events, holdout, holdout_seed):
    """The rows held out (None for none), checked against the method."""
    heldout = isinstance(pop.approximation, HeldOutDensity)
    if heldout and holdout is None:
        raise ValueError(
            "approximation='heldout' needs holdout=: a fraction of each subject's observations to "
            "hold out (e.g. 0.2) or a boolean array over the table's rows."
        )
    if not heldout and holdout is not None:
        raise ValueError(
            f"holdout= is for approximation='heldout'; the {type(pop.approximation).__name__} "
            "likelihood uses every observation. Drop holdout=, or set approximation='heldout'."
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
    iov=(),
):
    if not isinstance(events, Events):
        from .events import read_events

        events = read_events(events)
    pop = _population(model, random, covariates, error, method, omega, iov, events)
    rows = _holdout_mask(pop, events, holdout, holdout_seed)
    arrays = subject_arrays(events, model, covariates=pop.cov_names, holdout=rows, iov=pop.iov)
    space = pop.space(_initial_theta(pop, init, events))
    return pop, events, arrays, space
