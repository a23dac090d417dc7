"""Real-time hyperparameter optimization (RTHO, Franceschi et al. 2017): the inner
iteration and its forward tangents advance together and θ moves every few inner steps. It
needs no hypergradient method and no outer solver, so it has its own entry point,
:func:`rtho` (``tune(optimizer=RTHO(...))`` calls it)."""

from __future__ import annotations

import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..solvers.fixed_point import FixedSteps
from .record import (
    TuneResult,
    _check_run,
    _Recorder,
    _run_folder,
    _to_json,
    _tree_from_json,
    _tree_to_json,
)
from .search import _check_inner
from .solvers import _optax_update, check_optax_state

__all__ = ["RTHO", "rtho"]


class RTHO(eqx.Module):
    r"""Real-time hyperparameter optimization (Franceschi et al., ICML 2017).

    The inner iteration and its forward-mode tangent Z_t = ∂s_t/∂z are advanced together
    (Z_t = A_t Z_{t−1} + B_t, one JVP per hyperparameter entry); every ``delta`` inner steps
    θ is updated from the current hypergradient ∂E/∂z + Z_tᵀ∇ₓE(x_t) without waiting for the
    inner solve to finish. For a problem whose solution is a fixed number of steps (a
    training run), the run restarts from x0 (with Z = 0) once it reaches its length. The
    hypergradients are approximate by design; rows record the inner residual at x_t.
    ``optimizer`` (an optax transformation) defaults to SGD with tune's learning rate.
    """

    delta: int = eqx.field(default=10, static=True)
    optimizer: Any = eqx.field(default=None, static=True)

    def __check_init__(self):
        if int(self.delta) < 1:
            raise ValueError(f"RTHO delta must be >= 1; got {self.delta!r}.")


def rtho(
    problem,
    *,
    solver,
    settings: RTHO | None = None,
    learning_rate: float = 0.1,
    steps: int = 50,
    theta0: dict | None = None,
    out=None,
    resume: bool = False,
    progress=None,
    meta: dict | None = None,
) -> TuneResult:
    """Tune θ by RTHO (``settings``: an :class:`RTHO`, default ``RTHO()``), ``steps``
    hyperparameter updates with step size ``learning_rate`` (SGD unless ``settings``
    names an optax optimizer); ``out``/``resume``/``progress``/``meta`` as in
    :func:`invcal.tune`."""
    settings = RTHO() if settings is None else settings
    _check_run(steps, learning_rate)
    _check_inner(problem, solver)
    theta0 = problem.space.init() if theta0 is None else theta0
    theta0 = problem.space.validate(theta0, argument="theta0")
    with _run_folder(out, resume):
        rec = _Recorder(
            problem,
            method="RTHO",
            optimizer_name="rtho",
            learning_rate=float(learning_rate),
            steps=int(steps),
            out=out,
            resume=resume,
            meta=meta,
            check_state=check_optax_state,
        )
        return _rtho_loop(
            problem, solver, settings, float(learning_rate), int(steps), theta0, rec, progress
        )


def _rtho_loop(problem, solver, rtho, learning_rate, steps, theta0, rec, progress):
    space = problem.space
    solver.check_problem(problem)
    if problem.fixed_point is None:
        raise ValueError(
            f"RTHO advances the inner iteration step by step and needs problem {problem.name!r} "
            "to define fixed_point=T(x, theta, data)."
        )
    import optax  # not at import: see invcal.outer.solvers

    opt = optax.sgd(learning_rate) if rtho.optimizer is None else rtho.optimizer
    z = space.to_z(theta0)
    opt_state = opt.init(z)
    saved = rec.resumed_state
    if saved is not None and rec.history:
        z = jnp.asarray(saved["z"], dtype=z.dtype)
        opt_state = _tree_from_json(opt_state, saved["opt_state"])
    run_length = solver.num_steps if isinstance(solver, FixedSteps) else None
    p = z.shape[0]
    data = problem.data
    state = solver.init(problem, problem.x0, space.to_theta(z), data)
    Z = jax.tree_util.tree_map(
        lambda a: jnp.zeros((p,) + jnp.shape(a), a.dtype),
        eqx.filter(state, eqx.is_inexact_array),
    )
    t_run = 0
    for _ in range(len(rec.history), steps):
        t = time.perf_counter()
        n = rtho.delta if run_length is None else min(rtho.delta, run_length - t_run)
        state, Z, value, gz, res = _rtho_chunk(problem, solver, state, Z, z, n)
        t_run += n
        updates, opt_state = _optax_update(opt, gz, opt_state, z)
        z_next = optax.apply_updates(z, updates)
        theta = space.to_theta(z)
        row = rec.add(
            z=z,
            theta=theta,
            value=value,
            grad_z_=gz,
            diag=None,
            wall=time.perf_counter() - t,
            state={"z": _to_json(z_next), "opt_state": _tree_to_json(opt_state)},
            inner_steps=int(t_run),
            inner_residual=float(res),
            linear_steps=0,
            linear_residual=0.0,
            converged=run_length is not None and t_run == run_length,
        )
        z = z_next
        if run_length is not None and t_run >= run_length:
            state = solver.init(problem, problem.x0, space.to_theta(z), data)
            Z = jax.tree_util.tree_map(jnp.zeros_like, Z)
            t_run = 0
        if progress is not None:
            progress(row.step + 1, steps, row)
    return rec.finish(solver.current(state), None)


@eqx.filter_jit
def _rtho_chunk(problem, solver, state, Z, z, n):
    # Tangents are carried for the floating-point leaves of the state only (step counters and
    # other integer leaves have none), so Z has the structure of the state's float part.
    space, data = problem.space, problem.data
    eye = jnp.eye(z.shape[0], dtype=z.dtype)

    def one(carry, _):
        s, Zs = carry
        dyn, static = eqx.partition(s, eqx.is_inexact_array)

        def f(d, z_):
            out = solver.step(problem, eqx.combine(d, static), space.to_theta(z_), data)
            return eqx.partition(out, eqx.is_inexact_array)

        dyn_new, f_lin, static_new = jax.linearize(f, dyn, z, has_aux=True)
        Zs_new = jax.vmap(f_lin)(Zs, eye)
        return (eqx.combine(dyn_new, static_new), Zs_new), None

    (state, Z), _ = jax.lax.scan(one, (state, Z), None, length=n)
    x, Zx = solver.current(state), solver.current(Z)
    x_dyn, x_static = eqx.partition(x, eqx.is_inexact_array)

    def E(xd, z_):
        return problem.criterion(eqx.combine(xd, x_static), space.to_theta(z_), data)

    value, (gx, gz_direct) = jax.value_and_grad(E, argnums=(0, 1))(x_dyn, z)
    gz = gz_direct + jax.vmap(
        lambda zx: sum(
            jnp.vdot(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(zx), jax.tree_util.tree_leaves(gx), strict=True
            )
        )
    )(Zx)
    res = solver.residual(problem, x, space.to_theta(z), data)
    return state, Z, value, gz, res
