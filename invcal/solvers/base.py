"""Inner solvers: they only iterate. ``init/step`` make the iteration explicit (so the
unrolled hypergradients can differentiate through it); ``solve`` runs it to a tolerance
under ``lax.while_loop`` and returns an :class:`InnerSolution` with its diagnostics."""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ..diagnostics import SolveResult
from ..precision import default_tol, float_dtype

__all__ = ["AbstractInnerSolver", "InnerSolution", "tree_norm", "as_iterate"]


def as_iterate(problem, x0, theta, data):
    """``x0`` with the dtypes of the iterates: integer leaves become floating point, then
    each leaf takes the dtype that the problem's map gives it. Loops need a carry of a
    fixed type, and ``x0=jnp.array([0, 0])`` (int) or a float32 ``x0`` with float64 data
    would otherwise stop with a raw while-loop type error."""
    x0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.result_type(a, float)), x0)
    fn = problem.fixed_point if problem.fixed_point is not None else problem.residual
    out = jax.eval_shape(lambda x: fn(x, theta, data), x0)
    return jax.tree_util.tree_map(lambda a, o: jnp.asarray(a, o.dtype), x0, out)


def no_gradient(tree):
    """``stop_gradient`` on the array leaves of ``tree`` (other leaves, e.g. ints used as
    sizes, pass through). A solve to a tolerance is differentiated by the implicit function
    theorem or not at all; without this, a derivative with respect to θ or the data would
    be pushed through every iteration of the while loop and then thrown away."""
    return jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, tree
    )


def tree_norm(tree) -> jax.Array:
    """Euclidean norm of a pytree of arrays."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in leaves))


class InnerSolution(eqx.Module):
    """Result of an inner solve.

    ``residual`` is ‖F(x, θ)‖₂ (or ‖x − T(x, θ)‖₂) at the returned ``x``; ``converged`` is
    ``residual <= tol`` (always ``True`` for solutions defined by a fixed number of steps).
    """

    x: Any
    num_steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    tol: jax.Array
    # Newton on an objective: the smallest eigenvalue of the Hessian at x, relative to the
    # largest (NaN where not computed). A stationary point with a negative one is a saddle
    # or a maximum, not the minimizer the problem asks for, and is reported unconverged.
    curvature: jax.Array = eqx.field(default_factory=lambda: jnp.asarray(jnp.nan))

    @property
    def result(self) -> jax.Array:
        """:class:`invcal.SolveResult` code: successful, max_steps reached, or diverged."""
        return SolveResult.classify(self.converged, self.residual)


class AbstractInnerSolver(eqx.Module):
    """Base class: subclasses define ``init``, ``step``, ``current`` and ``residual``.

    ``tol`` is an absolute bound on the residual norm (``None``: derived from the iterate's
    dtype, :func:`invcal.precision.default_tol`: 1e-10 in float64, 1e-5 in float32);
    ``max_steps`` bounds the iteration.
    """

    tol: float | None
    max_steps: int
    # FixedSteps defines its solution by a step count, with tol = 0.
    _zero_tol_ok: ClassVar[bool] = False
    # Generic solvers take tol=None: a default derived from the iterate's dtype.
    _none_tol_ok: ClassVar[bool] = False

    def tolerance(self, dtype) -> float:
        """The residual tolerance in ``dtype``: ``tol``, or the dtype's default if None."""
        return default_tol(dtype) if self.tol is None else self.tol

    def __check_init__(self):
        name = type(self).__name__
        tol, steps = self.tol, self.max_steps
        if isinstance(tol, jax.core.Tracer) or isinstance(steps, jax.core.Tracer):
            return  # rebuilt inside a transformation; checked when it was first made
        low = "a finite number >= 0" if self._zero_tol_ok else "a finite number > 0"
        if tol is None and self._none_tol_ok:
            tol = 1.0  # the dtype's default, resolved at solve time
        try:
            value = float(tol) if not isinstance(tol, bool | str) and jnp.ndim(tol) == 0 else None
        except (TypeError, ValueError):
            value = None
        if (
            value is None
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not self._zero_tol_ok)
        ):
            raise ValueError(f"{name} tol must be {low} (a bound on the residual); got {tol!r}.")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"{name} max_steps must be an integer >= 1; got {steps!r}.")

    @abc.abstractmethod
    def init(self, problem, x0, theta, data) -> Any:
        """Iteration state at x0."""

    @abc.abstractmethod
    def step(self, problem, state, theta, data) -> Any:
        """One iteration: state → state. Must be differentiable in θ for unrolling."""

    @abc.abstractmethod
    def current(self, state):
        """The current iterate x of a state."""

    def cheap_residual(self, problem, state, theta, data) -> jax.Array:
        """A residual norm available from the state (used by the stopping test)."""
        return self.residual(problem, self.current(state), theta, data)

    def residual(self, problem, x, theta, data) -> jax.Array:
        """The residual norm that defines convergence of ``x``."""
        return tree_norm(problem.fixed_point_residual(x, theta, data))

    def check_problem(self, problem) -> None:
        """Raise a clear error if this solver cannot iterate on ``problem``."""

    def solve(self, problem, x0, theta, data=None, *, tol=None) -> InnerSolution:
        """Iterate from ``x0`` until the residual is below ``tol`` or ``max_steps``."""
        self.check_problem(problem)
        data = problem.data if data is None else data
        x0, theta, data = no_gradient((x0, theta, data))
        state0 = self.init(problem, x0, theta, data)
        if tol is None:
            tol = self.tolerance(float_dtype(self.current(state0)))
        tol = jnp.asarray(tol)

        def cond(carry):
            k, _, res = carry
            return (k < self.max_steps) & (res > tol)

        def body(carry):
            k, state, _ = carry
            state = self.step(problem, state, theta, data)
            return k + 1, state, self.cheap_residual(problem, state, theta, data)

        res0 = self.cheap_residual(problem, state0, theta, data)
        k, state, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), state0, res0))
        x = self.current(state)
        res = self.residual(problem, x, theta, data)
        return InnerSolution(x=x, num_steps=k, residual=res, converged=res <= tol, tol=tol)
