"""The solve of one dose-free segment of a subject's ODE: the step that both the plain event
segments (:mod:`.simulate`) and the traced dose events (:mod:`.dosing`) scan over."""

from __future__ import annotations

import diffrax as dfx
import jax.numpy as jnp

__all__ = ["solve_segment"]


def solve_segment(model, y, t0, t1, obs_t, p, rate):
    """One dose-free segment [t0, t1] from state y, with zero-order input ``rate``: the
    segment's end state, and (the states at ``obs_t`` clipped into the segment, success).
    The one place a subject's ODE is solved."""

    def field(t, y, args):
        params, r = args
        return model.vector_field(t, y, params) + r

    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        model.solver,
        t0,
        t1,
        model.dt0,
        y,
        args=(p, rate),
        saveat=dfx.SaveAt(ts=jnp.clip(obs_t, t0, t1), t1=True),
        stepsize_controller=dfx.PIDController(rtol=model.rtol, atol=model.atol),
        max_steps=model.max_steps,
        adjoint=model.adjoint,
        throw=False,
    )
    return sol.ys[-1], (sol.ys[:-1], sol.result == dfx.RESULTS.successful)
