"""The baselines: :func:`grid_search` and :func:`random_search`, with the same history rows
and results.json as :func:`invcal.tune`."""

from __future__ import annotations

import itertools
import math
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .record import TuneResult, _Recorder, _theta_json, _warm_start

__all__ = ["grid_search", "random_search"]


def _check_inner(problem, solver):
    """The checks of ``hypergradient`` that concern the inner solve only (baselines need no
    hypergradient method, so they also serve fixed-step problems)."""
    from ..problem import Problem
    from ..solvers.base import AbstractInnerSolver

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an invcal.Problem; got {type(problem).__name__}.")
    if not isinstance(solver, AbstractInnerSolver):
        raise TypeError(f"solver must be an invcal inner solver; got {solver!r}.")
    solver.check_problem(problem)


@eqx.filter_jit
def _value_at(problem, solver, theta, x0):
    sol = solver.solve(problem, x0, theta)
    return problem.criterion(sol.x, theta, problem.data), sol


def _evaluate_points(problem, solver, thetas, kind, out, resume, meta, progress):
    total = len(thetas)
    rec = _Recorder(
        problem,
        method=kind,
        optimizer_name=kind,
        learning_rate=0.0,
        steps=total,
        out=out,
        resume=resume,
        meta=meta,
    )
    done = rec.history
    if len(done) > len(thetas):
        raise ValueError(
            f"cannot resume from {rec.path}: it holds {len(done)} evaluated points, this search "
            f"has {len(thetas)}. Use another out directory, or drop resume to start over."
        )
    for i, row in enumerate(done):
        planned = np.asarray(problem.space.to_z(thetas[i]), dtype=float)
        if not np.allclose(np.asarray(row["z"], dtype=float), planned, rtol=1e-12, atol=1e-12):
            raise ValueError(
                f"cannot resume from {rec.path}: its point {i} is θ={row['theta']}, this search's "
                f"point {i} is θ={_theta_json(thetas[i])} (a different grid or seed). Use another "
                "out directory, or drop resume to start over."
            )
    x0 = problem.x0
    last_x = None
    for theta in thetas[len(rec.history) :]:
        t = time.perf_counter()
        theta = problem.space.validate(theta)
        value, sol = _value_at(problem, solver, theta, x0)
        if not bool(sol.converged):
            res = float(sol.residual)
            hint = (
                "raise the solver's max_steps"
                if math.isfinite(res)
                else "it diverged; more steps will not help: check the solver's step size and "
                "that this θ gives a well-posed inner problem"
            )
            raise RuntimeError(
                f"grid/random search: the inner solve did not converge at θ={_theta_json(theta)} "
                f"(residual {res:.3g} after {int(sol.num_steps)} steps); {hint}."
            )
        last_x = sol.x
        x0 = _warm_start(problem, sol.x)
        row = rec.add(
            z=problem.space.to_z(theta),
            theta=theta,
            value=value,
            wall=time.perf_counter() - t,
            inner_steps=int(sol.num_steps),
            inner_residual=float(sol.residual),
            linear_steps=0,
            linear_residual=0.0,
            converged=True,
        )
        if progress is not None:
            progress(row.step + 1, total, row)
    return rec.finish(last_x, None)


def grid_search(
    problem, *, solver, grid: dict, out=None, resume=False, progress=None, meta=None
) -> TuneResult:
    """Evaluate E at every point of the product grid ``{name: values}`` (user values),
    warm-starting each inner solve from the previous point. Array-valued θ entries are set
    to the same value in every component."""
    _check_inner(problem, solver)
    unknown = set(grid) - set(problem.space.names)
    if unknown or not grid:
        raise ValueError(
            f"grid must map hyperparameter names {list(problem.space.names)} to 1-D value arrays; "
            f"got names {sorted(grid)}."
        )
    axes = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in grid.items()}
    base = problem.space.init()
    thetas = []
    for combo in itertools.product(*axes.values()):
        theta = dict(base)
        for name, v in zip(axes, combo, strict=True):
            theta[name] = jnp.full(base[name].shape, v)
        thetas.append(theta)
    return _evaluate_points(problem, solver, thetas, "grid", out, resume, meta, progress)


def random_search(
    problem,
    *,
    solver,
    bounds: dict,
    num: int = 20,
    seed: int = 0,
    out=None,
    resume=False,
    progress=None,
    meta=None,
) -> TuneResult:
    """Evaluate E at ``num`` points drawn uniformly in z between the transformed ``bounds``
    ``{name: (lo, hi)}`` (user values; log-uniform for Log-transformed entries)."""
    _check_inner(problem, solver)
    if set(bounds) - set(problem.space.names):
        raise ValueError(
            f"bounds names {sorted(bounds)} are not all in {list(problem.space.names)}."
        )
    rng = np.random.default_rng(seed)
    base = problem.space.init()
    thetas = []
    for _ in range(int(num)):
        theta = dict(base)
        for name, (lo, hi) in bounds.items():
            tr = problem.space.params[name].transform
            zlo, zhi = float(tr.inverse(jnp.asarray(lo))), float(tr.inverse(jnp.asarray(hi)))
            zs = rng.uniform(zlo, zhi, size=base[name].shape)
            theta[name] = tr.forward(jnp.asarray(zs))
        thetas.append(theta)
    return _evaluate_points(problem, solver, thetas, "random", out, resume, meta, progress)
