r"""The result of a population fit, reported the way nlme reports one.

Standard errors of the fixed effects are those of the linear mixed-effects approximation at
the conditional modes (Lindstrom & Bates 1990; Pinheiro & Bates 2000, §7.2), as nlme gives
them: with Xᵢ = ∂fᵢ/∂(μ, β) and Zᵢ = ∂fᵢ/∂η at ηᵢ*, Vᵢ = ZᵢΩZᵢᵀ + diag(Rᵢ),

    Cov(μ̂, β̂) ≈ (Σᵢ XᵢᵀVᵢ⁻¹Xᵢ)⁻¹.

AIC = −2ℓ + 2k and BIC = −2ℓ + k log n with k the number of population parameters and n the
number of observations (nlme's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import numpy as np

from ..precision import computes_in_float64

__all__ = ["PopulationFit"]


@dataclass
class PopulationFit:
    """A fitted population model (learned attributes as plain Python/NumPy values).

    - ``fixed_effects``: name → value (model parameters on their declared scale, then
      covariate effects ``beta_<p>_<cov>``); ``standard_errors``: name → SE of each.
    - ``random_sd``: parameter → SD of its random effect; ``random_corr``: (p, r) → the
      correlation of p's and r's random effects (``omega="full"`` only; empty for a
      diagonal Ω); ``omega_matrix``: Ω (q × q, in the order of ``random_sd``);
      ``residual_sd``: float (a dict for combined error: ``{"sigma_add": …,
      "sigma_prop": …}``).
    - ``loglik``, ``aic``, ``bic``, ``n_params``, ``n_obs``, ``n_subjects``; ``criterion``:
      the minimized outer criterion (−loglik, or for method HeldOutDensity the held-out −log
      predictive density on ``n_holdout`` observations, when loglik, AIC and BIC are NaN).
    - ``individual``: ``{"ID": [...], p: array}`` per-subject parameters φᵢ;
      ``eta``: ``{p: array}`` random effects ηᵢ*.
    - Inter-occasion variability (``fit_population(iov=...)``): ``iov_sd``: parameter → SD
      π of its occasion effects; ``kappa``: ``{p: array (N, K)}`` the occasion effects
      κᵢₖ* (NaN where subject i has no occasion k; ``occasions`` (N, K) marks those it
      has). φᵢ above is the subject's value; on occasion k, p is φᵢ + κᵢₖ. Empty without.
    - ``theta``: every population parameter by name; ``converged``, ``message``,
      ``iterations``, ``evaluations``, ``seconds``, ``history`` (objective per iteration),
      ``inner_steps`` (most inner steps of any subject, per evaluation),
      ``inner_converged`` (per subject, at the returned θ; ``fit_population`` warns when
      one is False).
    - ``ipred``: ``{ID: (time, DV, IPRED)}`` individual predictions at the observations.
    """

    method: str
    error: str
    fixed_effects: dict
    standard_errors: dict
    random_sd: dict
    residual_sd: Any
    loglik: float
    n_params: int
    n_obs: int
    n_subjects: int
    individual: dict
    eta: dict
    theta: dict
    converged: bool
    message: str
    iterations: int
    evaluations: int
    seconds: float
    history: np.ndarray
    ipred: dict
    source: str = ""
    model_params: tuple = ()
    subject_nll: np.ndarray = field(default_factory=lambda: np.zeros(0))
    inner_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    inner_converged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    random_corr: dict = field(default_factory=dict)
    omega_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    omega: str = "diagonal"
    algorithm: str = "lbfgs"
    iov_sd: dict = field(default_factory=dict)
    kappa: dict = field(default_factory=dict)
    occasions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    criterion: float = float("nan")
    n_holdout: int = 0
    _context: Any = field(default=None, repr=False)

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + self.n_params * math.log(self.n_obs)

    # ------------------------------------------------------------------------------
    @classmethod
    def _from_run(
        cls, *, population, space, events, arrays, run, status, message, seconds, algorithm
    ):
        pop = population
        z = run["z"]
        theta = {k: float(np.asarray(v)) for k, v in space.to_theta(z).items()}
        params = tuple(pop.model.params)
        fixed = {p: theta[p] for p in params}
        for p, c in pop.covariates:
            fixed[f"beta_{p}_{c}"] = theta[f"beta_{p}_{c}"]
        th = {k: np.asarray(v) for k, v in theta.items()}
        omega, variances = (np.asarray(a) for a in _covariances(pop, th, run["info"]["ipred"]))
        sd = np.sqrt(np.diagonal(omega))
        random_sd = {p: float(sd[k]) for k, p in enumerate(pop.random)}
        random_corr = {
            (p, r): float(omega[i, j] / (sd[i] * sd[j]))
            for i, p in enumerate(pop.random)
            for j, r in enumerate(pop.random[:i])
            if pop.omega == "full"
        }
        names = pop.error.names
        residual = theta[names[0]] if len(names) == 1 else {s: theta[s] for s in names}
        eta_all = np.asarray(run["eta"])
        eta = eta_all[:, : pop.n_random]
        kappa, present = {}, np.zeros((eta.shape[0], 0), bool)
        if pop.iov:
            from .occasions import occasions_present

            present = occasions_present(events)
            ks = eta_all[:, pop.n_random :].reshape(eta.shape[0], pop.n_occasions, len(pop.iov))
            kappa = {p: np.where(present, ks[:, :, j], np.nan) for j, p in enumerate(pop.iov)}
        cov = np.asarray(arrays.cov)
        phi = np.tile(np.array([theta[p] for p in params]), (eta.shape[0], 1))
        for p, c in pop.covariates:
            phi[:, params.index(p)] += theta[f"beta_{p}_{c}"] * cov[:, pop.cov_names.index(c)]
        ridx = [params.index(p) for p in pop.random]
        phi[:, ridx] += eta
        individual = {"ID": list(events.subjects)}
        individual.update({p: phi[:, k] for k, p in enumerate(params)})
        info = run["info"]
        mask = np.asarray(arrays.obs_mask)
        ipred = {
            sid: (
                np.asarray(arrays.obs_t)[i][mask[i]],
                np.asarray(arrays.dv)[i][mask[i]],
                np.asarray(info["ipred"])[i][mask[i]],
            )
            for i, sid in enumerate(events.subjects)
        }
        se = _fixed_effect_se(pop, th, omega, variances, arrays, info, fixed)
        heldout = type(pop.approximation).__name__ == "HeldOutDensity"
        n_iter = int(run["iter"])
        hist = np.asarray(run["history"])[: int(run["n_history"])]
        return cls(
            method=type(pop.approximation).__name__,
            error=type(pop.error).__name__.lower(),
            fixed_effects=fixed,
            standard_errors=se,
            random_sd=random_sd,
            random_corr=random_corr,
            omega_matrix=omega,
            omega=pop.omega,
            iov_sd={p: theta[f"iov_{p}"] for p in pop.iov},
            kappa=kappa,
            occasions=present,
            residual_sd=residual,
            loglik=float("nan") if heldout else -float(run["f"]),
            criterion=float(run["f"]),
            n_holdout=int(np.asarray(arrays.holdout).sum()),
            n_params=int(z.shape[0]),
            n_obs=int(mask.sum()),
            n_subjects=len(events.subjects),
            individual=individual,
            eta={p: eta[:, k] for k, p in enumerate(pop.random)},
            theta=theta,
            converged=status in (1, 2, 6),
            message=message,
            iterations=n_iter,
            evaluations=int(run["evals"]),
            seconds=float(seconds),
            history=hist,
            ipred=ipred,
            source=events.source,
            model_params=params,
            subject_nll=np.asarray(info["nll"]),
            inner_steps=np.asarray(run["inner_history"])[: int(run["n_inner"])],
            inner_converged=np.asarray(info["inner_converged"]),
            _context=(pop, space, events, arrays, run),
            algorithm=algorithm,
        )

    # ------------------------------------------------------------------------------
    @computes_in_float64
    def predictions(self, *, population: bool = False) -> dict:
        """``{ID: (time, DV, prediction)}`` at the observations: individual predictions
        (IPRED, φᵢ with ηᵢ*) or, with ``population=True``, population predictions (PRED,
        η = 0)."""
        if not population:
            return self.ipred
        from .simulate import simulate

        pop, _, events, _, _ = self._context
        sim = simulate(pop.model, events, self.population_parameters())
        return {sid: (self.ipred[sid][0], self.ipred[sid][1], sim[sid][1]) for sid in sim}

    def population_parameters(self) -> dict:
        """Per-subject parameters with η = 0 (μ + Bᵢβ): what PRED uses."""
        return {
            p: np.asarray(self.individual[p]) - (self.eta[p] if p in self.eta else 0.0)
            for p in self.model_params
        }

    def individual_parameters(self) -> dict:
        """Per-subject parameters φᵢ (without the ID column): what IPRED uses (with the
        occasion effects ``kappa`` on top, if any)."""
        return {p: np.asarray(self.individual[p]) for p in self.model_params}

    def plot_subjects(self, **kwargs):
        """Observations with IPRED and PRED curves per subject (see
        :func:`invcal.ode.plots.plot_subjects`)."""
        from .plots import plot_subjects

        pop, _, events, _, _ = self._context
        return plot_subjects(
            pop.model,
            events,
            self.individual_parameters(),
            self.population_parameters(),
            occasion_effects=self.kappa or None,
            **kwargs,
        )

    @computes_in_float64
    def plot_goodness_of_fit(self):
        """DV vs PRED/IPRED and IWRES vs time (see
        :func:`invcal.ode.plots.plot_goodness_of_fit`)."""
        import jax.numpy as jnp

        from .plots import plot_goodness_of_fit

        pop, _, events, _, _ = self._context
        th = {k: jnp.asarray(v) for k, v in self.theta.items()}
        return plot_goodness_of_fit(
            pop.model,
            events,
            self.individual_parameters(),
            self.population_parameters(),
            lambda f: pop.error.variance(jnp.asarray(f), th),
            occasion_effects=self.kappa or None,
        )

    def summary(self) -> str:
        """A text summary in the layout of nlme's ``summary()``."""
        lines = [
            f"Nonlinear mixed-effects ODE model fit by {self.method} (invcal, "
            + (
                "Lindstrom-Bates algorithm"
                if self.algorithm != "lbfgs"
                else "L-BFGS"
                if self.n_holdout
                else "exact maximum"
            )
            + ")",
            f"  Data: {self.source}; {self.n_subjects} subjects, {self.n_obs} observations; "
            f"{self.error} residual error",
            "",
        ]
        if self.n_holdout:
            lines += [
                f"Held-out -log predictive density: {self.criterion:.4f} on "
                f"{self.n_holdout} held-out observations",
                "",
            ]
        else:
            lines += [
                f"{'AIC':>12s} {'BIC':>12s} {'logLik':>12s}",
                f"{self.aic:12.4f} {self.bic:12.4f} {self.loglik:12.4f}",
                "",
            ]
        lines += [
            "Random effects ("
            + ("diagonal Omega" if self.omega == "diagonal" else "general Omega, log-Cholesky")
            + "):",
            "  " + " ".join(f"{p:>11s}" for p in self.random_sd) + f" {'Residual':>11s}",
        ]
        res = self.residual_sd
        res_txt = (
            f"{res:11.4g}"
            if not isinstance(res, dict)
            else " ".join(f"{k}={v:.4g}" for k, v in res.items())
        )
        lines.append("  " + " ".join(f"{v:11.4g}" for v in self.random_sd.values()) + " " + res_txt)
        lines += ["  (standard deviations)"]
        if self.iov_sd:
            lines += [
                f"Inter-occasion variability ({self.occasions.shape[1]} occasions at most; SDs):",
                "  " + " ".join(f"{p:>11s}" for p in self.iov_sd),
                "  " + " ".join(f"{v:11.4g}" for v in self.iov_sd.values()),
            ]
        if self.random_corr:
            names = list(self.random_sd)
            lines += ["  Correlation:", "  " + " " * 11 + " ".join(f"{p:>8s}" for p in names[:-1])]
            for i, p in enumerate(names[1:], start=1):
                cells = " ".join(f"{self.random_corr[(p, r)]:8.3f}" for r in names[:i])
                lines.append(f"  {p:>11s}{cells}")
        lines += ["", "Fixed effects:"]
        lines.append(f"  {'':>14s} {'Value':>11s} {'Std.Error':>11s} {'z-value':>9s}")
        for k, v in self.fixed_effects.items():
            se = self.standard_errors.get(k, float("nan"))
            zval = v / se if se and math.isfinite(se) and se > 0 else float("nan")
            lines.append(f"  {k:>14s} {v:11.5f} {se:11.5f} {zval:9.3f}")
        lines += [
            "",
            f"Number of observations: {self.n_obs}; groups: {self.n_subjects}; "
            f"parameters: {self.n_params}",
            (
                f"Optimizer: L-BFGS, {self.iterations} iterations, "
                if self.algorithm == "lbfgs"
                else f"Lindstrom-Bates: {self.iterations} linearizations, "
            )
            + f"{self.evaluations} evaluations, {self.seconds:.2f} s; {self.message}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@eqx.filter_jit
def _covariances(pop, theta, ipred):
    """(Ω, the residual variances at the predictions ``ipred`` (N, M)) at ``theta``: one
    compiled program, where the eager operations of the two (stack, diag, products, powers)
    compiled about ten small ones in a fresh process (~15 ms each from the persistent
    cache)."""
    return pop.omega_matrix(theta), pop.error.variance(ipred, theta)


def _fixed_effect_se(pop, theta, omega, variances, arrays, info, fixed) -> dict:
    """nlme-style SEs of the fixed effects from the LME approximation at η*; ``omega`` and
    ``variances``: :func:`_covariances` at ``theta`` and the predictions ``info["ipred"]``."""
    params = tuple(pop.model.params)
    J = np.asarray(info["J"])  # (N, M, d) = ∂f/∂φ at φᵢ* (occasions: (N, M, d + r·K))
    mask = np.asarray(arrays.obs_mask)
    cov = np.asarray(arrays.cov)
    names = list(fixed)
    info_mat = np.zeros((len(names), len(names)))
    omega = pop.eta_covariance(theta, omega)  # with occasions: diag(Ω, Π, …, Π)
    for i in range(J.shape[0]):
        m = mask[i]
        Ji = J[i][m]
        R = variances[i][m]
        X = np.zeros((Ji.shape[0], len(names)))
        X[:, : len(params)] = Ji[:, : len(params)]
        for j, (p, c) in enumerate(pop.covariates):
            X[:, len(params) + j] = Ji[:, params.index(p)] * cov[i, pop.cov_names.index(c)]
        Z = pop.random_design(Ji)
        V = Z @ omega @ Z.T + np.diag(R)
        info_mat += X.T @ np.linalg.solve(V, X)
    try:
        covm = np.linalg.inv(info_mat)
        se = np.sqrt(np.maximum(np.diag(covm), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(len(names), np.nan)
    return {k: float(s) for k, s in zip(names, se, strict=True)}
