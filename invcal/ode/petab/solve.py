r"""Simulating a PEtab problem: the ODE solves behind its objective.

Every number the objective uses is gathered from one vector v = (θ in linear scale,
constants) by the problem's integer index arrays (:func:`values`). :func:`simulate` solves
every experiment (pre-equilibrated ones from their steady state) and :func:`observe` gives
one observable's measurements, model values y and noise σ. The solves are differentiated as
the sensitivity object says (:mod:`.sensitivities`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx

from .sensitivities import Adjoint

__all__ = ["Simulation", "observe", "simulate", "unscale", "values"]


def unscale(x, scale):
    """A parameter's linear-scale value from its value on ``scale`` (lin, log, log10)."""
    if scale == "log10":
        return jnp.power(10.0, x)
    if scale == "log":
        return jnp.exp(x)
    return x


class Simulation(NamedTuple):
    """The solves of every experiment: ``v`` (the values vector), ``p`` (E, P) the model's
    inputs, ``ys`` (E, T, X) the states at the save times, ``ok`` (E,) success."""

    v: jax.Array
    p: jax.Array
    ys: jax.Array
    ok: jax.Array


class _Dynamics(eqx.Module):
    """What a solve needs from the problem (all static: hashable for custom_vjp)."""

    rhs: object = eqx.field(static=True)
    solver: dfx.AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def field(self, t, y, args):
        return self.rhs(jnp.asarray(t), y, args)

    def solve(self, t0, t1, y0, args, *, saveat, adjoint=None, field=None, solver=None):
        return dfx.diffeqsolve(
            dfx.ODETerm(self.field if field is None else field),
            self.solver if solver is None else solver,
            t0,
            t1,
            None,
            y0,
            args=args,
            saveat=saveat,
            stepsize_controller=dfx.PIDController(rtol=self.rtol, atol=self.atol),
            adjoint=dfx.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
            max_steps=self.max_steps,
            throw=False,
        )


class _LinearStages(optx.AbstractRootFinder):
    """The root finder of an implicit solver's stages when the ODE is linear in its state
    (the adjoint ODE): a stage equation k − f(tᵢ, yᵢ + γh·k) = 0 is then affine in k, and
    one Newton step with its Jacobian at the stage solves it (to rounding).

    Why not diffrax's VeryChord: it stops when an iterate's change is below the step
    controller's tolerance, or declares divergence when a change is more than twice the
    previous one. On Boehm_JProteomeRes2014 the adjoint's fast mode (eigenvalue ≈ 5e4)
    makes −(∂f/∂x)ᵀλ a difference of terms ≈ 5e4·|λ|, so its rounding (≈ 1e-10) is at the
    tolerance (rtol 1e-10, atol 1e-12): once the first chord step has solved the linear
    stage, the next changes are rounding noise, their ratio exceeds 2 at random and the
    stage "diverges". Every step longer than ~1e-6 was rejected, and the backward solve
    crept on until max_steps (a NaN gradient). ``rtol``/``atol``/``norm`` are unused; diffrax
    reads them."""

    rtol: float = 0.0
    atol: float = 0.0
    norm: object = optx.max_norm
    linear_solver: lx.AbstractLinearSolver = lx.AutoLinearSolver(well_posed=None)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return (jnp.array(0), optx.RESULTS.successful)

    def step(self, fn, y, args, options, state, tags):
        jac = lx.JacobianLinearOperator(_NoAux(fn), y, args)
        value, aux = fn(y, args)
        sol = lx.linear_solve(jac, value, self.linear_solver, throw=False)
        new_y = jax.tree_util.tree_map(lambda a, b: a - b, y, sol.value)
        return new_y, (state[0] + 1, optx.RESULTS.promote(sol.result)), aux

    def terminate(self, fn, y, args, options, state, tags):
        return state[0] >= 1, state[1]

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


class _NoAux(eqx.Module):
    fn: object

    def __call__(self, y, args):
        return self.fn(y, args)[0]


def _adjoint_solver(solver):
    """The problem's solver with :class:`_LinearStages` as root finder if it is implicit."""
    if isinstance(solver, dfx.AbstractImplicitSolver):
        return eqx.tree_at(lambda s: s.root_finder, solver, _LinearStages())
    return solver


def _dynamics(problem) -> _Dynamics:
    return _Dynamics(problem.rhs, problem.solver, problem.rtol, problem.atol, problem.max_steps)


def _solve(problem, sensitivities, x0, p, ts, t1):
    """(x at ts, success) of one experiment."""
    dyn = _dynamics(problem)
    if isinstance(sensitivities, Adjoint):
        return _solve_adjoint(dyn, x0, p, ts, t1)
    sol = dyn.solve(
        0.0, t1, x0, p, saveat=dfx.SaveAt(ts=ts), adjoint=sensitivities.diffrax_adjoint()
    )
    return sol.ys, sol.result == dfx.RESULTS.successful


def _state_at(sol):
    """t ↦ x(t) for the adjoint ODE: the forward solve's dense output, held at x(t₀) before
    t₀ and at x(t₁) after t₁. An implicit stage can lie beyond its step's end (Kvaerno5 has
    c = 1.23), so the last segment's steps onto t = 0 asked for the state before 0, where
    diffrax's dense output is NaN: every step onto 0 was rejected and the solve crept
    towards 0 (steps down to 1e-308) until max_steps, a NaN gradient (Boehm_JProteomeRes2014)."""
    return lambda t: sol.evaluate(jnp.clip(t, sol.t0, sol.t1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve_adjoint(dyn, x0, p, ts, t1):
    sol = dyn.solve(0.0, t1, x0, p, saveat=dfx.SaveAt(ts=ts))
    return sol.ys, sol.result == dfx.RESULTS.successful


def _solve_adjoint_fwd(dyn, x0, p, ts, t1):
    sol = dyn.solve(0.0, t1, x0, p, saveat=dfx.SaveAt(ts=ts, dense=True))
    return (sol.ys, sol.result == dfx.RESULTS.successful), (sol, p, ts, t1)


def _solve_adjoint_bwd(dyn, residuals, cotangents):
    """λ, μ backwards from the last save time, λ jumping by ȳₖ at each save time tₖ."""
    sol, p, ts, t1 = residuals
    ys_bar = cotangents[0]

    state = _state_at(sol)

    def field(t, z, args):
        lam, _ = z
        x = state(t)
        _, vjp = jax.vjp(lambda xx, pp: dyn.field(t, xx, pp), x, p)
        dx, dp = vjp(lam)
        return -dx, -dp

    def segment(carry, k):
        (lam, mu), ok = carry
        lam = lam + ys_bar[k]
        t_lo = jnp.where(k > 0, ts[jnp.maximum(k - 1, 0)], 0.0)
        seg = dyn.solve(
            ts[k],
            t_lo,
            (lam, mu),
            None,
            saveat=dfx.SaveAt(t1=True),
            field=field,
            solver=_adjoint_solver(dyn.solver),
        )
        z = jax.tree_util.tree_map(lambda a: a[-1], seg.ys)
        return (z, ok & (seg.result == dfx.RESULTS.successful)), None

    z0 = (jnp.zeros_like(sol.ys[0]), jnp.zeros_like(p))
    ks = jnp.arange(ts.shape[0] - 1, -1, -1)
    ((lam, mu), ok), _ = jax.lax.scan(segment, (z0, jnp.asarray(True)), ks)
    # A failed backward solve must not pass for a gradient.
    lam = jnp.where(ok, lam, jnp.nan)
    mu = jnp.where(ok, mu, jnp.nan)
    return lam, mu, jnp.zeros_like(ts), jnp.zeros_like(t1)


_solve_adjoint.defvjp(_solve_adjoint_fwd, _solve_adjoint_bwd)


def _steady_state(problem, x0, p):
    """x̄ with f(x̄, p) = 0: integrate to a steady state (no derivatives), then Newton's
    method, differentiated by the implicit function theorem (optimistix)."""
    x_start = jax.lax.stop_gradient(x0)
    p_start = jax.lax.stop_gradient(p)
    dyn = _dynamics(problem)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(dyn.field),
        problem.solver,
        0.0,
        jnp.inf,
        1e-3,
        x_start,
        args=p_start,
        stepsize_controller=dfx.PIDController(rtol=problem.rtol, atol=problem.atol),
        event=dfx.Event(dfx.steady_state_event(rtol=problem.rtol, atol=problem.atol)),
        max_steps=problem.max_steps,
        throw=False,
    )
    t_end = jax.lax.stop_gradient(sol.ts[-1])
    root = optx.root_find(
        lambda y, args: problem.rhs(t_end, y, args),
        optx.Newton(rtol=problem.rtol, atol=problem.atol),
        sol.ys[-1],
        args=p,
        max_steps=100,
        throw=False,
    )
    ok = (sol.result == dfx.RESULTS.event_occurred) & (root.result == optx.RESULTS.successful)
    return root.value, ok


def values(problem, x):
    """v = (θ linear, constants) for x on the parameters' scales."""
    x = jnp.asarray(x)
    dtype = jnp.result_type(x, float)
    theta = [unscale(x[k], s) for k, s in enumerate(problem.scales)]
    return jnp.concatenate(
        [
            jnp.stack(theta).astype(dtype) if theta else jnp.zeros(0, dtype),
            jnp.asarray(problem.constants, dtype),
        ]
    )


def simulate(problem, x, sensitivities) -> Simulation:
    """Solve every experiment at x (estimated parameters on their scales)."""
    v = values(problem, x)
    dtype = v.dtype
    p = v[problem.inputs_index]
    base = jax.vmap(problem.initial)(p)
    ok = jnp.ones(len(problem.experiments), bool)
    if problem.preequilibrated:
        pre = np.asarray(problem.preequilibrated)
        pp = v[problem.pre_inputs_index]
        xp0 = jnp.where(problem.pre_x0_mask, v[problem.pre_x0_index], jax.vmap(problem.initial)(pp))
        x_ss, ok_ss = jax.vmap(lambda a, b: _steady_state(problem, a, b))(xp0, pp)
        base = base.at[pre].set(x_ss)
        ok = ok.at[pre].set(ok_ss)
    x0 = jnp.where(problem.x0_mask, v[problem.x0_index], base)
    ts = jnp.asarray(problem.save_times, dtype)
    ys, ok_solve = jax.vmap(lambda a, b, c, d: _solve(problem, sensitivities, a, b, c, d))(
        x0, p, ts, jnp.asarray(problem.end_times, dtype)
    )
    ok = ok & ok_solve & jnp.all(jnp.isfinite(ys), axis=(1, 2))
    return Simulation(v, p, ys, ok)


def observe(problem, sim: Simulation, k: int, v=None):
    """(m, y, σ) of the k-th observable's measurements (``problem.rows[k]``); ``v``
    replaces ``sim.v`` in the observable and noise formulas (not in the solves)."""
    v = sim.v if v is None else v
    rows, fn = problem.rows[k], problem.observables[k]
    out = jax.vmap(fn, in_axes=(0, 0, 0, 0, 0, None))(
        sim.ys[rows.experiment, rows.time_index],
        sim.p[rows.experiment],
        jnp.asarray(rows.time, v.dtype),
        v[rows.observable_parameters],
        v[rows.noise_parameters],
        v[rows.globals_],
    )
    return jnp.asarray(rows.measurement, v.dtype), out[:, 0], out[:, 1]
