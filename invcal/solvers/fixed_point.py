"""Solvers that iterate the problem's fixed-point map T(x, θ)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import AbstractInnerSolver, InnerSolution, as_iterate, no_gradient, tree_norm

__all__ = ["FixedPointIteration", "FISTA", "FixedSteps"]


def _tree_sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def _tree_vdot(a, b):
    return sum(
        jnp.vdot(u, v)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


class _NeedsFixedPoint(AbstractInnerSolver):
    def check_problem(self, problem):
        if problem.fixed_point is None:
            raise ValueError(
                f"{type(self).__name__} iterates the fixed-point map, but the problem "
                f"{problem.name!r} has no fixed_point=T(x, theta, data); pass one, or use Newton()."
            )


class FixedPointIteration(_NeedsFixedPoint):
    """x_{k+1} = T(x_k, θ) (gradient descent, ISTA, ... depending on T)."""

    tol: float | None = None
    _none_tol_ok = True
    max_steps: int = 10_000

    def init(self, problem, x0, theta, data):
        x0 = as_iterate(problem, x0, theta, data)
        return (x0, jnp.asarray(jnp.inf))

    def step(self, problem, state, theta, data):
        x, _ = state
        x_new = problem.fixed_point(x, theta, data)
        return (x_new, tree_norm(_tree_sub(x_new, x)))

    def current(self, state):
        return state[0]

    def cheap_residual(self, problem, state, theta, data):
        return state[1]


class FISTA(_NeedsFixedPoint):
    """Accelerated fixed-point iteration (Beck & Teboulle 2009) with gradient-based adaptive
    restart (O'Donoghue & Candès 2015): y_k = x_k + (t_{k−1} − 1)/t_k (x_k − x_{k−1}),
    x_{k+1} = T(y_k, θ); the momentum is reset when ⟨y_k − x_{k+1}, x_{k+1} − x_k⟩ > 0.

    With T the forward–backward map this is FISTA; with T a gradient step, Nesterov's method.
    The stopping test uses ‖T(y_k) − y_k‖; the reported residual is recomputed at the result.
    """

    tol: float | None = None
    _none_tol_ok = True
    max_steps: int = 10_000
    restart: bool = True

    def init(self, problem, x0, theta, data):
        x0 = as_iterate(problem, x0, theta, data)
        return (x0, x0, jnp.asarray(1.0), jnp.asarray(jnp.inf))

    def step(self, problem, state, theta, data):
        x, x_prev, t, _ = state
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        y = jax.tree_util.tree_map(lambda a, b: a + beta * (a - b), x, x_prev)
        x_new = problem.fixed_point(y, theta, data)
        res = tree_norm(_tree_sub(x_new, y))
        if self.restart:
            bad = _tree_vdot(_tree_sub(y, x_new), _tree_sub(x_new, x)) > 0
            t_next = jnp.where(bad, 1.0, t_next)
        return (x_new, x, t_next, res)

    def current(self, state):
        return state[0]

    def cheap_residual(self, problem, state, theta, data):
        return state[3]


class FixedSteps(_NeedsFixedPoint):
    """Exactly ``num_steps`` applications of T: the solution is *defined* as the final
    iterate (a training run with a learning-rate schedule), so it is always "converged"."""

    num_steps: int = 100
    tol: float = 0.0
    max_steps: int = -1
    _zero_tol_ok = True

    def __init__(self, num_steps: int = 100):
        if int(num_steps) < 1:
            raise ValueError(f"FixedSteps num_steps must be >= 1; got {num_steps!r}.")
        self.num_steps = int(num_steps)
        self.tol = 0.0
        self.max_steps = int(num_steps)

    def init(self, problem, x0, theta, data):
        x0 = as_iterate(problem, x0, theta, data)
        return (x0, jnp.asarray(jnp.inf))

    def step(self, problem, state, theta, data):
        x, _ = state
        x_new = problem.fixed_point(x, theta, data)
        return (x_new, tree_norm(_tree_sub(x_new, x)))

    def current(self, state):
        return state[0]

    def solve(self, problem, x0, theta, data=None, *, tol=None) -> InnerSolution:
        self.check_problem(problem)
        data = problem.data if data is None else data
        x0, theta, data = no_gradient((x0, theta, data))
        state = jax.lax.fori_loop(
            0,
            self.num_steps,
            lambda _, s: self.step(problem, s, theta, data),
            self.init(problem, x0, theta, data),
        )
        return InnerSolution(
            x=state[0],
            num_steps=jnp.asarray(self.num_steps),
            residual=state[1],
            converged=jnp.asarray(True),
            tol=jnp.asarray(0.0),
        )
