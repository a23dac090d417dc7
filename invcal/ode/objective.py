"""The population model's outer objective: as an :class:`invcal.Problem` for the engine
(:func:`population_problem`) and evaluated with its implicit hypergradient at given θ
(:func:`population_objective`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..precision import computes_in_float64
from ..problem import Problem
from .approximations import approximation_argument
from .events import Events, subject_arrays
from .loops import _fit_lbfgs, _options
from .population import _holdout_mask, _initial_theta, _population, _prepare
from .population_lm import PopulationLM
from .sharding import CHUNK_SIZE, _chunk, _shard_subjects, _unpad, subject_mesh
from .simulate import prediction_jets, taylor

__all__ = ["population_problem", "population_objective", "PopulationObjective"]


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
    approximation="focei",
    method=None,
    covariates=None,
    name="population",
    holdout=None,
    holdout_seed: int = 0,
    omega="diagonal",
    iov=None,
):
    """(problem, solver): the population model as an :class:`invcal.Problem` whose x is the
    stacked random effects η (N, q; with occasions, ``iov``, (η, κ₁, …, κ_K) per subject),
    ``objective`` Σᵢ Lᵢ and ``criterion`` −Σᵢ ℓᵢ, with :class:`PopulationLM` as its inner
    solver. Derivatives of the ODE predictions enter through Taylor polynomials built at
    the current point (exact to the order the implicit hypergradient needs), so
    ``invcal.Implicit()`` in either mode applies."""
    if not isinstance(events, Events):
        raise TypeError("events must come from invcal.ode.read_events(...).")
    approximation = approximation_argument(approximation, method, "population_problem")
    pop = _population(model, random, covariates, error, approximation, omega, iov, events)
    rows = _holdout_mask(pop, events, holdout, holdout_seed)
    arrays = subject_arrays(events, model, covariates=pop.cov_names, holdout=rows, iov=pop.iov)
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
        x0=jnp.zeros((arrays.n_subjects, pop.n_eta)),
        data=arrays,
        objective=objective,
        name=name,
    )
    return problem, PopulationLM(population=pop)


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


@dataclass(frozen=True)
class PopulationObjective:
    """The approximate marginal likelihood at θ and its hypergradient.

    ``value`` = −log-likelihood (−Σℓᵢ); ``grad``: d value/dθ by name (user values);
    ``grad_z``: d value/dz in the unconstrained coordinates (ordered as ``names``);
    ``eta``: ηᵢ* (N, q); ``subject_value``: −ℓᵢ; ``ok``/``inner_converged``: per subject
    (a subject whose inner fit did not converge also raises a ``RuntimeWarning``);
    ``failed``: IDs of the subjects whose terms are not finite; ``linear_residual``: per
    subject, the relative residual of its implicit-function-theorem solve
    (:func:`invcal.implicit.solve_system`, the engine's one IFT solve).
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
    linear_residual: np.ndarray | None = None

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
    approximation="focei",
    method=None,
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
    iov=None,
) -> PopulationObjective:
    """The FOCEI or Laplace objective −Σℓᵢ(θ) and its implicit hypergradient at ``theta``
    (a dict of every population parameter by name, user values), with the inner solves
    from ``eta0`` (default zeros).

    It runs the compiled program of :func:`fit_population` for zero iterations, so the two
    share one compilation. A subject whose ODE solve or inner fit fails makes the value
    infinite without touching the other subjects' terms; it raises ``RuntimeError`` naming
    those subjects, or with ``raise_on_failure=False`` lists them in ``failed``.
    ``devices``, ``chunk_size``, ``holdout``, ``holdout_seed``, ``omega``, ``iov``: as for
    :func:`fit_population` (``theta`` names Ω's parameters: ``Population.omega_names``, and
    the occasion SDs ``iov_<p>``); η (``eta0``, ``eta``) is then (η, κ₁, …, κ_K) per subject.
    """
    pop, events, arrays, space = _prepare(
        model,
        events,
        theta,
        random,
        error,
        approximation_argument(approximation, method, "population_objective"),
        covariates,
        holdout,
        holdout_seed,
        omega,
        iov,
    )
    names = tuple(space.names)
    missing = [k for k in names if k not in theta]
    if missing:
        raise ValueError(f"theta lacks {missing}; pass every population parameter {names}.")
    opts = _options(0, 1.0, 1.0, inner_tol, inner_max_steps, 1.0, min_iter=0)
    z = space.to_z(space.validate(dict(theta)))
    if eta0 is None:
        eta0 = jnp.zeros((arrays.n_subjects, pop.n_eta))
    eta0 = jnp.asarray(eta0, dtype=float)
    if eta0.shape != (arrays.n_subjects, pop.n_eta):
        raise ValueError(
            f"eta0 must have shape ({arrays.n_subjects}, {pop.n_eta}) (subjects, random "
            f"effects); got {eta0.shape}."
        )
    mesh = subject_mesh(devices)
    chunk = _chunk(chunk_size)
    run_arrays, eta0, valid = _shard_subjects(arrays, eta0, mesh)
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
        linear_residual=info["ift_residual"],
    )
