"""Newton's method on the optimality residual F(x, θ) = 0 (dense Jacobian, small x)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .base import AbstractInnerSolver, as_iterate, tree_norm

__all__ = ["Newton"]


class Newton(AbstractInnerSolver):
    """Damped Newton: x ← x − s·J_F(x)⁻¹F(x) with s halved (up to ``max_halvings`` times)
    until ‖F‖ decreases. The Jacobian is materialised, so use it for x with up to a few
    thousand entries. Converges quadratically near a regular solution."""

    tol: float | None = None
    _none_tol_ok = True
    max_steps: int = 50
    max_halvings: int = 20

    def check_problem(self, problem):
        if not problem.has_optimality and problem.fixed_point is None:
            raise ValueError("Newton needs optimality=, objective= or fixed_point= on the problem.")

    def residual(self, problem, x, theta, data):
        return tree_norm(problem.residual(x, theta, data))

    def init(self, problem, x0, theta, data):
        return as_iterate(problem, x0, theta, data)

    def current(self, state):
        return state

    def solve(self, problem, x0, theta, data=None, *, tol=None):
        sol = super().solve(problem, x0, theta, data, tol=tol)
        if problem.objective is None or problem.optimality is not None:
            return sol  # a root of F, not a minimization: no curvature to ask for
        # The minimizer of f has a positive semi-definite Hessian; Newton's iteration finds
        # any stationary point (an indefinite ridge at λ = −5 converged to the maximum).
        data = problem.data if data is None else data
        flat, unravel = ravel_pytree(jax.lax.stop_gradient(sol.x))
        th, dt = jax.lax.stop_gradient((theta, data))
        H = jax.hessian(lambda v: problem.objective(unravel(v), th, dt))(flat)
        eig = jnp.linalg.eigvalsh(0.5 * (H + H.T))
        scale = jnp.maximum(jnp.max(jnp.abs(eig)), jnp.finfo(eig.dtype).tiny)
        curvature = eig[0] / scale
        minimum = curvature > -jnp.sqrt(jnp.finfo(eig.dtype).eps)
        return eqx.tree_at(
            lambda s: (s.converged, s.curvature), sol, (sol.converged & minimum, curvature)
        )

    def step(self, problem, x, theta, data):
        flat, unravel = ravel_pytree(x)

        def F(v):
            return ravel_pytree(problem.residual(unravel(v), theta, data))[0]

        r = F(flat)
        J = jax.jacfwd(F)(flat)
        d = jnp.linalg.solve(J, r)
        # The step length is chosen on stop-gradient copies: unrolled differentiation then
        # treats s as a constant (as the iteration map's derivative should).
        theta_c, data_c = jax.lax.stop_gradient((theta, data))
        flat_c, d_c = jax.lax.stop_gradient((flat, d))

        def F_c(v):
            return ravel_pytree(problem.residual(unravel(v), theta_c, data_c))[0]

        n0 = jnp.linalg.norm(F_c(flat_c))

        def cond(c):
            s, i, n = c
            return (n >= n0) & (i < self.max_halvings)

        def body(c):
            s, i, _ = c
            s = s / 2
            return s, i + 1, jnp.linalg.norm(F_c(flat_c - s * d_c))

        s, _, _ = jax.lax.while_loop(
            cond, body, (jnp.asarray(1.0), 0, jnp.linalg.norm(F_c(flat_c - d_c)))
        )
        return unravel(flat - s * d)
