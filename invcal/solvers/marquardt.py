r"""Levenberg–Marquardt for small smooth minimizations with a noisy objective (the
per-subject inner solver of population models, :class:`invcal.ode.PopulationLM`, is built on
it in :mod:`invcal.ode.population_lm`).

**The iteration** (Levenberg 1944; Marquardt 1963, "An algorithm for least-squares
estimation of nonlinear parameters", SIAM J. Appl. Math. 11(2)): to minimize L(x) over a
small x ∈ ℝ^q, given at each x the value L, the gradient ∇L and a positive-definite
curvature A (the Hessian where it is positive definite, else a Gauss–Newton or Fisher
matrix: the caller's choice), take

    δ = −(A + λ diag A)⁻¹ ∇L,     scaled down to ‖δ‖∞ ≤ ``max_step``,

accept it if L does not rise by more than the objective's ``resolution``·(1 + |L|) (then
λ /= 10, and λ is set to 0 below 1e-8: pure Newton steps near the minimum), otherwise keep x
and raise λ tenfold (to at least 1e-3).

**The step cap is a trust radius** Δ (in the ∞-norm, at most ``max_step``; Moré 1983,
"Recent developments in algorithms and software for trust region methods", §2): with the
gain ratio ρ = (actual decrease)/(the quadratic model's predicted decrease) of the step δ,
a rejected step sets Δ = ‖δ‖∞/4, an accepted one with ρ > 3/4 sets Δ = max(Δ, 2‖δ‖∞)
(capped at ``max_step``) and one with ρ < 1/4 sets Δ = ‖δ‖∞/4 (only where the predicted
decrease is above the resolution of L: below it ρ is noise). Far from the minimum the
undamped step can overshoot by orders of magnitude (the Theoph subjects at nlme's starting
values: L 246 → 5079 for a step of 2); raising λ alone needed five rejections there before
a step was taken and then damped the next steps, and the radius halves the evaluations of
those subjects (14 → 8; the vmapped loop waits for its slowest subject).

**Stopping.** Converged when the undamped step ‖A⁻¹∇L‖∞ ≤ ``tol``, or at the *noise floor* of
L: a step is rejected (its evaluation succeeded but L rose) although the quadratic model's
predicted decrease ½∇LᵀA⁻¹∇L is below ``resolution``·(1 + |L|) and the undamped step is below
√``tol``. An L computed from an adaptive ODE solve carries noise of that order, so below it no
step can be told from a worse one; without this stop λ grows and the solve runs to
``max_steps`` (and a vmapped loop waits for it). Otherwise it stops, not converged, after
``max_steps`` steps, or at once (``ok`` false) when an evaluation fails at the start point.

This module only iterates. The objective, its curvature and what a failed evaluation means
come from the model: :meth:`invcal.ode.Population.lm_eval` for the population models of
:mod:`invcal.ode.population`, which also holds their noise floor ``L_RESOLUTION`` and step
cap ``MAX_ETA_STEP``, the vmapping over subjects (:meth:`invcal.ode.Population.solve_inner`)
and the reporting of unconverged or failed subjects by their ID.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["LMSolution", "levenberg_marquardt"]


class LMSolution(eqx.Module):
    """Result of :func:`levenberg_marquardt` for one problem: the last accepted ``x``, the
    undamped ``step`` ‖A⁻¹∇L‖∞ there (inf if ``ok`` is false), ``num_steps``, ``ok`` (the
    evaluation at the start point succeeded), the ``aux`` output of the evaluation at ``x``
    and ``converged`` (``ok`` and the step below ``tol`` or the noise floor reached)."""

    x: jax.Array
    step: jax.Array
    num_steps: jax.Array
    ok: jax.Array
    aux: Any
    converged: jax.Array


def levenberg_marquardt(
    evaluate, x0, aux0, tol, max_steps, *, resolution: float, max_step: float
) -> LMSolution:
    """Levenberg–Marquardt from ``x0`` (q,) (see the module docstring).

    ``evaluate(x)`` returns ``(L, ∇L, A, aux, ok)``: the value (inf where the evaluation
    failed), the gradient (q,), a positive-definite curvature (q, q), any pytree ``aux`` the
    caller wants back at the solution (e.g. the ODE jets it was computed from) and a success
    flag. ``aux0`` is a pytree of zeros shaped like ``aux`` (the loop carries it). ``tol`` and
    ``max_steps`` may be traced; the function is pure and vmaps over problems. The first pass
    of the loop evaluates ``x0`` itself, so ``evaluate`` appears once in the program (compile
    time)."""
    q = x0.shape[0]
    dtype = jnp.result_type(x0, float)

    def step_of(g, A, lam):
        return -jnp.linalg.solve(A + lam * jnp.diag(jnp.diagonal(A)), g)

    def cond(c):
        return c["ok"] & (c["dec"] > tol) & ~c["floor"] & (c["k"] <= max_steps)

    def body(c):
        started = c["k"] > 0
        step = step_of(c["g"], c["A"], c["lam"])
        # Cap the step at the trust radius: a wild first step far from the minimum can make
        # an ODE stiff, and a vmapped solve waits for its slowest problem.
        step = step * jnp.minimum(1.0, c["radius"] / jnp.maximum(jnp.max(jnp.abs(step)), 1e-300))
        x_t = c["x"] + jnp.where(started, step, 0.0)
        val_t, g_t, A_t, aux_t, ok_t = evaluate(x_t)
        noise = resolution * (1.0 + jnp.abs(c["val"]))
        accept = ~started | (ok_t & (val_t <= c["val"] + noise))
        # the trust radius from the gain ratio of this step (see the module docstring)
        size = jnp.max(jnp.abs(step))
        model = -(jnp.vdot(c["g"], step) + 0.5 * jnp.vdot(step, c["A"] @ step))
        gain = (c["val"] - val_t) / jnp.where(model > 0, model, 1.0)
        resolved = model > noise
        shrink = ~accept | (resolved & (gain < 0.25))
        grow = accept & resolved & (gain > 0.75)
        radius = jnp.where(
            shrink,
            size / 4.0,
            jnp.where(
                grow, jnp.minimum(max_step, jnp.maximum(c["radius"], 2.0 * size)), c["radius"]
            ),
        )
        radius = jnp.where(started, radius, c["radius"])
        # a rejected step whose promised decrease is below the noise of L: x is at the
        # minimum as far as L can resolve it (see the module docstring)
        floor = started & ok_t & ~accept & (c["pred"] <= noise) & (c["dec"] <= jnp.sqrt(tol))
        new = jax.tree_util.tree_map(
            lambda a, b: jnp.where(accept, a, b),
            {"x": x_t, "val": val_t, "g": g_t, "A": A_t, "aux": aux_t},
            {k: c[k] for k in ("x", "val", "g", "A", "aux")},
        )
        lam = jnp.where(accept, c["lam"] * 0.1, jnp.maximum(c["lam"] * 10.0, 1e-3))
        new["lam"] = jnp.where(started & (lam >= 1e-8), lam, 0.0)
        new["ok"] = jnp.where(started, c["ok"], ok_t)
        full = step_of(new["g"], new["A"], 0.0)
        new["dec"] = jnp.where(new["ok"], jnp.max(jnp.abs(full)), jnp.inf)
        new["pred"] = jnp.where(new["ok"], -0.5 * jnp.vdot(new["g"], full), jnp.inf)
        new["floor"] = floor
        new["radius"] = radius
        new["k"] = c["k"] + 1
        return new

    c0 = {
        "x": x0,
        "val": jnp.asarray(jnp.inf, dtype),
        "g": jnp.zeros(q, dtype),
        "A": jnp.eye(q, dtype=dtype),
        "aux": aux0,
        "lam": jnp.asarray(0.0, dtype),
        "k": jnp.asarray(0),
        "ok": jnp.asarray(True),
        "dec": jnp.asarray(jnp.inf, dtype),
        "pred": jnp.asarray(jnp.inf, dtype),
        "floor": jnp.asarray(False),
        "radius": jnp.asarray(max_step, dtype),
    }
    c = jax.lax.while_loop(cond, body, c0)
    converged = c["ok"] & ((c["dec"] <= tol) | c["floor"])
    return LMSolution(
        x=c["x"],
        step=c["dec"],
        num_steps=c["k"] - 1,
        ok=c["ok"],
        aux=c["aux"],
        converged=converged,
    )
