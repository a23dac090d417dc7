"""The per-subject inner solve of a population model as an invcal inner solver:
:class:`PopulationLM`, Levenberg–Marquardt (:func:`invcal.solvers.levenberg_marquardt`)
vmapped over subjects."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..solvers.base import AbstractInnerSolver, InnerSolution, no_gradient

__all__ = ["PopulationLM"]


# --------------------------------------------------------------------------------------
# The engine's view of the population solve
# --------------------------------------------------------------------------------------
class PopulationLM(AbstractInnerSolver):
    """The vmapped Levenberg–Marquardt solve of every subject's Lᵢ of a population model
    (:mod:`invcal.ode.population`) as an invcal inner solver (x = η stacked (N, q)).
    ``residual`` is the largest undamped step ‖A⁻¹∇Lᵢ‖∞ (A the Hessian, or the Fisher matrix
    where the Hessian is not positive definite); the solution is smooth in θ, so
    differentiate it with :class:`invcal.Implicit` (unrolling would need reverse-mode
    derivatives of the ODE solve inside the iteration). Build it with
    :func:`invcal.ode.population_problem`; also importable as ``invcal.ode.PopulationLM``."""

    tol: float = 1e-10
    max_steps: int = 100
    population: Any = eqx.field(static=True, default=None)

    def __check_init__(self):
        # what this solver calls on the population (a Population; checked by what it does,
        # so that this module need not import invcal.ode.population, which imports it)
        if not all(hasattr(self.population, a) for a in ("lm_solve", "lm_eval", "solve_inner")):
            raise TypeError(
                "PopulationLM needs population=Population(...); build both with "
                "invcal.ode.population_problem(...)."
            )

    def init(self, problem, x0, theta, data):
        return x0

    def step(self, problem, state, theta, data):
        def one(e, s):
            return self.population.lm_solve(e, theta, s, 0.0, 1)[0]

        return jax.vmap(one)(state, data)

    def current(self, state):
        return state

    def residual(self, problem, x, theta, data):
        pop = self.population

        def one(e, s):
            _, g, A, _, ok = pop.lm_eval(e, theta, s)
            return jnp.where(ok, jnp.max(jnp.abs(jnp.linalg.solve(A, g))), jnp.inf)

        return jnp.max(jax.vmap(one)(x, data))

    def solve(self, problem, x0, theta, data=None, *, tol=None) -> InnerSolution:
        data = problem.data if data is None else data
        tol = jnp.asarray(self.tol if tol is None else tol)
        x0, theta, data = no_gradient((x0, theta, data))
        eta, dec, steps, ok, _, conv = self.population.solve_inner(
            x0, theta, data, tol, self.max_steps
        )
        res = jnp.where(jnp.all(ok), jnp.max(dec), jnp.inf)
        # converged: every subject met tol or stopped at the noise floor of its Lᵢ
        # (:func:`levenberg_marquardt`), where ``residual`` may exceed tol
        return InnerSolution(
            x=eta, num_steps=jnp.max(steps), residual=res, converged=jnp.all(conv), tol=tol
        )
