"""The bilevel problem: what x*(θ) and E(x*, θ) are — nothing about how to compute them.

A problem holds data (a pytree), an inner characterization of the solution and an outer
criterion, all pure functions of ``(x, theta, data)``:

* ``fixed_point(x, theta, data)`` → T(x, θ), with x* = T(x*, θ) (for proximal methods the
  forward–backward map), and/or
* ``optimality(x, theta, data)`` → F(x, θ), with F(x*, θ) = 0, and/or
* ``objective(x, theta, data)`` → f(x, θ), the smooth inner loss, with F = ∇ₓf.

Solvers iterate on whichever they need; implicit differentiation uses the residual
F (or x − T(x, θ) when only T is given). The criterion ``criterion(x, theta, data)`` is the
outer E. ``support(x, theta, data)`` optionally returns a boolean mask (same structure as x)
of the active set, where the Jacobian of a non-smooth solution lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .space import Space

__all__ = ["Problem"]


def _check_finite(name: str, tree) -> None:
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype"):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(arr)))} of {arr.size} "
                "entries); clean or impute the data before building the problem."
            )


class Problem(eqx.Module):
    """A bilevel problem: min_θ E(x*(θ), θ) with x*(θ) defined by a residual.

    **Arguments**

    - ``space``: the hyperparameters (:class:`invcal.Space`).
    - ``criterion``: E(x, θ, data) → scalar, the outer criterion.
    - ``x0``: the inner solver's starting point (a pytree; its structure is x's structure).
    - ``data``: a pytree of arrays passed to every function (may be ``None``).
    - ``fixed_point`` / ``optimality`` / ``objective``: at least one inner characterization.
    - ``support``: optional active-set mask function for non-smooth inner problems.
    - ``symmetric``: ``True`` if the implicit system's matrix is symmetric — always the case
      for ``objective`` (a Hessian); for a proximal-gradient ``fixed_point`` it holds on the
      support, so pass ``True`` together with ``support``. Conjugate gradients need it.
    - ``fixed_steps``: ``True`` if the solution is *defined* as a fixed number of steps of
      ``fixed_point`` (a learning schedule), not as its fixed point; implicit
      differentiation is then meaningless and is refused.
    """

    space: Space
    criterion: Callable = eqx.field(static=True)
    x0: Any
    data: Any = None
    fixed_point: Callable | None = eqx.field(default=None, static=True)
    optimality: Callable | None = eqx.field(default=None, static=True)
    objective: Callable | None = eqx.field(default=None, static=True)
    support: Callable | None = eqx.field(default=None, static=True)
    symmetric: bool = eqx.field(default=False, static=True)
    fixed_steps: bool = eqx.field(default=False, static=True)
    name: str = eqx.field(default="problem", static=True)

    def __check_init__(self):
        if not isinstance(self.space, Space):
            raise TypeError(
                f"Problem space must be an invcal.Space; got {type(self.space).__name__}."
            )
        if self.fixed_point is None and self.optimality is None and self.objective is None:
            raise ValueError(
                "Problem needs an inner characterization: pass fixed_point=T(x, theta, data), "
                "optimality=F(x, theta, data) or objective=f(x, theta, data)."
            )
        if not callable(self.criterion):
            raise TypeError(
                "Problem criterion must be a function criterion(x, theta, data) -> scalar."
            )
        if self.fixed_steps and self.fixed_point is None:
            raise ValueError("fixed_steps=True needs fixed_point=T(x, theta, data): the step map.")
        _check_finite("Problem data", self.data)
        _check_finite("Problem x0", self.x0)

    # -- residuals ---------------------------------------------------------------------
    @property
    def has_optimality(self) -> bool:
        return self.optimality is not None or self.objective is not None

    def residual(self, x, theta, data=None):
        """F(x, θ): zero at the solution. Prefers ``optimality``/∇``objective`` over x − T(x)."""
        data = self.data if data is None else data
        if self.optimality is not None:
            return self.optimality(x, theta, data)
        if self.objective is not None:
            return jax.grad(self.objective)(x, theta, data)
        return jax.tree_util.tree_map(jnp.subtract, x, self.fixed_point(x, theta, data))

    def fixed_point_residual(self, x, theta, data=None):
        """x − T(x, θ), or F(x, θ) when no fixed-point map is given."""
        data = self.data if data is None else data
        if self.fixed_point is None:
            return self.residual(x, theta, data)
        return jax.tree_util.tree_map(jnp.subtract, x, self.fixed_point(x, theta, data))

    def value(self, x, theta, data=None):
        data = self.data if data is None else data
        return self.criterion(x, theta, data)
