"""Fitting a population ODE model: :func:`fit_population`."""

from __future__ import annotations

import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..compilation_cache import checks_without_callbacks, to_device
from ..diagnostics import OnFailure
from ..precision import computes_in_float64
from ..runfolder import claim_run_folder
from .approximations import FOCEI, approximation_argument
from .errors import Additive
from .fit_record import FitRecord, decode_tree, result_json
from .loops import (
    _STATUS,
    _fit_lbfgs,
    _fit_lindstrom_bates,
    _info0,
    _options,
    _progress_callback,
    lbfgs_init,
    lindstrom_bates_init,
)
from .objective import _bad_subjects, _warn_unconverged
from .population import _prepare
from .screening import (
    describe_outliers,
    describe_zero_variance,
    outlying_observations,
    zero_variance_observations,
)
from .sharding import CHUNK_SIZE, _chunk, _shard_subjects, _unpad, subject_mesh

__all__ = ["FitNotConverged", "FitNotConvergedWarning", "fit_population"]


@computes_in_float64
def fit_population(
    model,
    events,
    *,
    init,
    random=None,
    error="additive",
    approximation="focei",
    method=None,
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
    iov=None,
    progress=None,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    on_failure: OnFailure | str = OnFailure.WARN,
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
    - ``omega``: ``"diagonal"``/``DiagonalOmega()`` (default; nlme's ``pdDiag``:
      ``omega_<p>`` SDs) or ``"full"``/``FullOmega()`` (nlme's ``pdSymm``: Ω = CCᵀ by its
      log-Cholesky factor ``omega_chol_<p>``, ``omega_chol_<p>_<r>``; ``init`` may give
      the SDs ``omega_<p>`` instead, for a diagonal start). The fit reports ``random_sd``,
      ``random_corr`` and ``omega_matrix``.
    - ``iov``: parameters with inter-occasion variability (a name or names; the table needs
      an OCC column, :mod:`invcal.ode.occasions`): each gets an occasion effect
      κ ~ N(0, π²) per occasion of a subject, ``iov_<p>`` = π (default start 0.3), the same
      on every occasion (NONMEM's BLOCK SAME); the κ are random effects of the subject like
      η (FOCEI/Laplace integrate over both). The fit reports ``iov_sd`` and ``kappa``.
    - ``error``: ``"additive"``, ``"proportional"``, ``"combined"`` or an error model object.
    - ``approximation``: ``"focei"`` or ``"laplace"`` (or ``FOCEI()``/``Laplace()``), or
      ``"heldout"`` (:class:`HeldOutDensity`): minimize −log predictive density of held-out
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
    - ``out``: a folder: the fit writes ``out/results.json`` after every outer iteration
      (θ, objective, gradient norm and the loop's state; :mod:`invcal.ode.fit_record`),
      holding the folder for the run (a folder with another run, or files no run wrote, is
      refused unless ``overwrite``). ``resume=True`` continues the fit saved there (same
      arguments; ``max_iter`` may grow) to the same estimates as an uninterrupted fit.
    - ``on_failure``: a fit that stops unconverged (``max_iter`` reached, or the line
      search could not decrease the objective) is never returned silently: ``"warn"``
      (default: a :class:`FitNotConvergedWarning`, and ``fit.converged`` is False),
      ``"raise"`` (:class:`FitNotConverged`, as nlme stops; with ``out`` the estimates so
      far are in results.json first) or ``"record"`` (only ``fit.converged``/``message``).

    Returns a :class:`PopulationFit`. Computes in float64 whatever JAX's global
    ``jax_enable_x64`` (scoped to the call, :mod:`invcal.precision`): FOCEI's second
    derivatives through the ODE solves need it. Its estimates are NumPy float64 arrays.
    """
    if not isinstance(resume, bool) or not isinstance(overwrite, bool):
        raise TypeError(
            f"resume and overwrite must be True or False; got {resume!r}, {overwrite!r}."
        )
    if resume and out is None:
        raise ValueError("resume=True continues the fit saved in out=DIR; pass out=.")
    policy = OnFailure.parse(on_failure)
    pop, events, arrays, space = _prepare(
        model,
        events,
        init,
        random,
        error,
        approximation_argument(approximation, method, "fit_population"),
        covariates,
        holdout,
        holdout_seed,
        omega,
        iov,
    )
    if algorithm not in ("auto", "lbfgs", "lindstrom-bates"):
        raise ValueError(
            f"algorithm must be 'auto', 'lbfgs' or 'lindstrom-bates'; got {algorithm!r}."
        )
    outliers = describe_outliers(outlying_observations(events))
    if outliers:  # before any compilation: the fit may well fail on them
        warnings.warn(f"fit_population: {outliers}.", stacklevel=3)
    linear_mixed = (
        isinstance(pop.approximation, FOCEI)
        and isinstance(pop.error, Additive)
        and arrays.cens is None  # censored (M3) terms make the linearized model non-Gaussian
    )
    requested = algorithm
    if algorithm == "auto":
        algorithm = "lindstrom-bates" if linear_mixed else "lbfgs"
    if algorithm == "lindstrom-bates" and not linear_mixed:
        raise ValueError(
            "algorithm='lindstrom-bates' is nlme's algorithm for FOCEI with additive error "
            "and no censored observations (where the linearized model is a linear "
            "mixed-effects model); got approximation="
            f"{type(pop.approximation).__name__}, error={type(pop.error).__name__}"
            f"{', censored observations' if arrays.cens is not None else ''}. Use "
            "algorithm='lbfgs'."
        )
    mesh = subject_mesh(devices)
    chunk = _chunk(chunk_size)
    options = {
        "max_iter": max_iter,
        "gtol": gtol,
        "ftol": ftol,
        "inner_tol": inner_tol,
        "inner_max_steps": inner_max_steps,
        "max_step": max_step,
        "xtol": xtol,
    }
    run = functools.partial(
        _run,
        pop,
        events,
        arrays,
        space,
        algorithm,
        requested == "auto",
        mesh,
        chunk,
        options,
    )
    if out is None:
        return _enforce(run(progress=progress), policy)
    header = {
        "problem": "population",
        "names": list(space.names),
        "model_params": list(pop.model.params),
        "random": list(pop.random),
        "covariates": [list(c) for c in pop.covariates],
        "error": type(pop.error).__name__,
        "approximation": type(pop.approximation).__name__,
        "omega": pop.omega,
        **({"iov": list(pop.iov), "n_occasions": pop.n_occasions} if pop.iov else {}),
        "algorithm": requested,
        "source": events.source,
        "n_subjects": int(arrays.n_subjects),
        "n_obs": int(np.sum(np.asarray(arrays.obs_mask))),
        "devices": 1 if mesh is None else int(mesh.size),
        "chunk_size": chunk,
        "options": {k: v for k, v in options.items() if k != "max_iter"},
    }
    with claim_run_folder(out, resume=resume, overwrite=overwrite, flag="out") as folder:
        rec = FitRecord(folder, header, resume=resume, progress=_progress_callback(progress))
        fit = run(progress=progress, record=rec, saved=rec.saved_state)
        rec.finish(result_json(fit))
    return _enforce(fit, policy, where=f" (estimates so far: {folder / 'results.json'})")


def _zero_variance(pop, space, events, arrays, run, *, at_start: bool) -> str:
    """The failure message when observations have residual variance 0 at the point where
    the objective failed (a proportional error model and predictions of 0), else ''."""
    if pop.error.names != ("sigma_prop",):
        return ""
    theta = space.to_theta(jnp.asarray(run["z"]))
    R = np.asarray(pop.error.variance(jnp.asarray(run["info"]["ipred"]), theta))
    rows = zero_variance_observations(events, R, arrays.obs_mask)
    where = "the initial estimates" if at_start else "the estimates where the fit stopped"
    return describe_zero_variance(events, rows, "proportional", where) if rows else ""


class FitNotConverged(RuntimeError):
    """``fit_population(on_failure="raise")``: the fit stopped before converging."""


class FitNotConvergedWarning(RuntimeWarning):
    """``fit_population`` (default ``on_failure="warn"``): the fit stopped unconverged."""


def _enforce(fit, policy: OnFailure, where: str = ""):
    """The failure policy on a fit that stopped unconverged (see ``on_failure``)."""
    if fit.converged or policy is OnFailure.RECORD:
        return fit
    msg = (
        f"fit_population: {fit.message} after {fit.iterations} iterations: the estimates are "
        "not converged; raise max_iter or continue the fit with out=DIR, resume=True"
        f"{where}."
    )
    if policy is OnFailure.RAISE:
        raise FitNotConverged(msg)
    warnings.warn(msg, FitNotConvergedWarning, stacklevel=4)
    return fit


def _run(
    pop,
    events,
    arrays,
    space,
    algorithm,
    auto,
    mesh,
    chunk,
    options,
    *,
    progress,
    record=None,
    saved=None,
):
    """The compiled fit (continued from the ``saved`` state of a results.json, if any)."""
    from .summary import PopulationFit

    opts = _options(**options)
    # After each accepted iteration the compiled loop pauses and the host writes the record
    # (which reports progress after the write) or reports progress: the same compiled
    # program with or without them (invcal.ode.loops._drive).
    on_accept = None
    if record is not None:
        on_accept = functools.partial(record.accept, space)
    elif progress is not None and progress is not False:
        report = _progress_callback(progress)

        def on_accept(phase, state):
            report(phase, int(state["iter"] if "iter" in state else state["k"]), float(state["f"]))

    z0 = space.to_z(space.init())
    eta0 = to_device(np.zeros((arrays.n_subjects, pop.n_eta)))
    t0 = time.perf_counter()
    run_arrays, eta0, valid = _shard_subjects(arrays, eta0, mesh)
    state0 = None
    if saved is not None:
        info0 = _info0(pop, run_arrays, pop.n_eta, z0.shape[0])
        phase = saved.get("phase")
        if phase == "lbfgs" and (auto or algorithm == "lbfgs"):
            algorithm, like = "lbfgs", lbfgs_init(z0, eta0, info0, opts)
        elif phase == "lindstrom-bates" and algorithm == "lindstrom-bates":
            like = lindstrom_bates_init(z0, eta0, info0, opts["history"])
        else:
            raise ValueError(
                f"cannot resume: the saved fit is in phase {phase!r}, this fit runs "
                f"algorithm={algorithm!r}."
            )
        state0 = decode_tree(like, saved.get("leaves"), "the saved results.json")
    fitter = _fit_lbfgs if algorithm == "lbfgs" else _fit_lindstrom_bates
    with checks_without_callbacks():  # so that JAX's persistent cache keeps the fit
        out = fitter(pop, space, run_arrays, z0, eta0, opts, valid, mesh, chunk, state0, on_accept)
    out = _unpad(jax.tree_util.tree_map(np.asarray, out), arrays.n_subjects)
    status = int(out["status"])
    if auto and algorithm == "lindstrom-bates" and status == 5:
        # nlme's iteration did not settle (it can cycle): finish at the exact maximum
        algorithm = "lbfgs"
        _, eta0, _ = _shard_subjects(arrays, jnp.asarray(out["eta"]), mesh)
        z0 = jnp.asarray(out["z"])
        with checks_without_callbacks():
            out = _fit_lbfgs(
                pop, space, run_arrays, z0, eta0, opts, valid, mesh, chunk, None, on_accept
            )
        out = _unpad(jax.tree_util.tree_map(np.asarray, out), arrays.n_subjects)
        status = int(out["status"])
    seconds = time.perf_counter() - t0
    ok = out["info"]["ok"]
    if status == 4 or not np.all(ok):
        bad = _bad_subjects(events, ok)
        where = "fit_population: the objective is not finite" + (
            f" for subject(s) {bad}" if bad else ""
        )
        outliers = describe_outliers(outlying_observations(events))
        if outliers:  # the likely cause, rather than a solver failure that may not be one
            raise RuntimeError(f"{where}; {outliers}.")
        zero = _zero_variance(pop, space, events, arrays, out, at_start=status == 4)
        if zero:
            raise RuntimeError(f"fit_population: {zero}.")
        raise RuntimeError(
            f"{where} (an ODE solve failed: max_steps reached or a non-finite state, or the "
            "inner fit failed); check the initial values, the model's max_steps and the "
            "solver (Kvaerno5() for stiff systems)."
        )
    _warn_unconverged(
        "fit_population",
        events,
        out["info"],
        options["inner_tol"],
        options["inner_max_steps"],
    )
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
