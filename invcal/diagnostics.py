"""Diagnostics that travel with every hypergradient, and the policy for failures.

A hypergradient computed from an unconverged inner solve or linear solve is never
returned silently: ``on_failure`` chooses to raise (default), to warn, or to record the
failure in the returned :class:`Diagnostics` (for an outer loop that adapts tolerances).
"""

from __future__ import annotations

import enum
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .precision import float32_hint

__all__ = ["OnFailure", "Diagnostics", "HypergradientNotConverged", "SolveResult", "enforce"]


class HypergradientNotConverged(RuntimeError):
    """Raised when the inner or linear solve behind a hypergradient did not converge."""


class HypergradientNotConvergedWarning(RuntimeWarning):
    """Warned when the inner or linear solve behind a hypergradient did not converge."""


class OnFailure(enum.Enum):
    """What to do when an inner or linear solve did not reach its tolerance."""

    RAISE = "raise"
    WARN = "warn"
    RECORD = "record"

    @classmethod
    def parse(cls, value) -> OnFailure:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"on_failure must be one of 'raise', 'warn', 'record' (or invcal.OnFailure); "
                f"got {value!r}."
            ) from None


class SolveResult(enum.IntEnum):
    """Result code of an inner solve (``InnerSolution.result``, ``Diagnostics.inner_result``),
    as an integer array so that it survives ``jit`` and ``vmap``: compare with
    ``sol.result == SolveResult.DIVERGED``."""

    SUCCESSFUL = 0
    MAX_STEPS_REACHED = 1  # stopped at max_steps with a finite residual above tol
    DIVERGED = 2  # the residual is NaN or inf: more steps will not help

    @classmethod
    def classify(cls, converged, residual) -> jax.Array:
        finite = jnp.isfinite(residual)
        return jnp.where(
            converged & finite,
            int(cls.SUCCESSFUL),
            jnp.where(finite, int(cls.MAX_STEPS_REACHED), int(cls.DIVERGED)),
        )


class Diagnostics(eqx.Module):
    """Work and accuracy of one hypergradient.

    ``inner_residual`` is the inner residual norm at the returned x; ``linear_residual`` the
    relative residual ‖A v − b‖/‖b‖ of the implicit linear solve (0 for unrolled methods,
    which solve none). ``converged`` is both flags together.
    """

    inner_steps: jax.Array
    inner_residual: jax.Array
    inner_converged: jax.Array
    linear_steps: jax.Array
    linear_residual: jax.Array
    linear_converged: jax.Array
    # The criterion value and the hypergradient are finite (set by invcal.hypergradient): a
    # NaN or inf result is never reported as converged, whatever the solves said.
    finite: jax.Array = eqx.field(default_factory=lambda: jnp.asarray(True))
    # The inner solution's smallest relative Hessian eigenvalue (Newton on an objective;
    # NaN elsewhere): negative means a saddle or maximum, reported as not converged.
    inner_curvature: jax.Array = eqx.field(default_factory=lambda: jnp.asarray(jnp.nan))
    # The implicit system's condition number, for dense (direct) linear solves (NaN
    # otherwise): the error of their solution is about cond·eps whatever the residual.
    linear_condition: jax.Array = eqx.field(default_factory=lambda: jnp.asarray(jnp.nan))

    @property
    def converged(self):
        return self.inner_converged & self.linear_converged & self.finite

    @property
    def inner_result(self) -> jax.Array:
        """The inner solve's :class:`SolveResult` code."""
        return SolveResult.classify(self.inner_converged, self.inner_residual)

    def as_dict(self) -> dict:
        return {
            "inner_steps": int(np.max(np.asarray(self.inner_steps))),
            "inner_residual": float(np.max(np.asarray(self.inner_residual))),
            "inner_converged": bool(np.all(np.asarray(self.inner_converged))),
            "linear_steps": int(np.max(np.asarray(self.linear_steps))),
            "linear_residual": float(np.max(np.asarray(self.linear_residual))),
            "linear_converged": bool(np.all(np.asarray(self.linear_converged))),
            "finite": bool(np.all(np.asarray(self.finite))),
            "inner_curvature": float(np.nanmin(np.asarray(self.inner_curvature)))
            if np.any(np.isfinite(np.asarray(self.inner_curvature)))
            else None,
            "linear_condition": float(np.nanmax(np.asarray(self.linear_condition)))
            if not np.all(np.isnan(np.asarray(self.linear_condition)))
            else None,
        }


def no_linear_solve(inner_steps, inner_residual, inner_converged) -> Diagnostics:
    return Diagnostics(
        inner_steps=jnp.asarray(inner_steps),
        inner_residual=jnp.asarray(inner_residual),
        inner_converged=jnp.asarray(inner_converged),
        linear_steps=jnp.asarray(0),
        linear_residual=jnp.asarray(0.0),
        linear_converged=jnp.asarray(True),
    )


def _eps(dtype) -> float:
    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):
        return float(np.finfo(np.float64).eps)


def _message(d: dict, where: str, dtype=None) -> str:
    parts = []
    if not d["inner_converged"] and not math.isfinite(d["inner_residual"]):
        parts.append(
            f"the inner solve diverged: its residual is {d['inner_residual']} after "
            f"{d['inner_steps']} steps (more steps will not help: look for a step size above "
            "2/L in a fixed-point map, a θ at which the inner problem is not well posed, e.g. "
            "a zero or negative regularization weight, or NaN in the data)"
        )
    elif not d["inner_converged"] and (d.get("inner_curvature") or 0.0) < 0:
        parts.append(
            f"the inner solve reached a stationary point that is not a minimum (the Hessian's "
            f"smallest eigenvalue is {d['inner_curvature']:.3g} of its largest): the inner "
            "objective is not convex at this θ (a negative regularization weight, say; use a "
            "transform such as Log() that keeps it positive)"
        )
    elif not d["inner_converged"]:
        parts.append(
            f"the inner solve stopped after {d['inner_steps']} steps with residual "
            f"{d['inner_residual']:.3g} above its tolerance (raise the solver's max_steps or "
            "loosen its tol" + float32_hint(dtype) + ")"
        )
    if not d.get("finite", True) and not parts:
        parts.append(
            "the criterion value or its hypergradient is NaN or inf although the inner solve "
            "finished (the criterion is not defined at x*(θ), e.g. the log of a negative "
            "number; or a fixed number of steps overflowed: a step size above 2/L)"
        )
    cond = d.get("linear_condition")
    if not d["linear_converged"] and cond is not None and (cond * _eps(dtype) > 1e-3):
        parts.append(
            f"the implicit linear system is nearly singular (condition number {cond:.3g}): a "
            "dense solve of it has lost nearly all its digits whatever its residual (a "
            "duplicated or collinear column, a regularization weight near 0, say; check "
            "the problem at this θ, or bound θ away from it with the space's transform)"
        )
    elif not d["linear_converged"]:
        if math.isfinite(d["linear_residual"]):
            hint = (
                "raise the linear solver's max_steps, or use a solver suited to the system: "
                "lx.GMRES or lx.Normal(lx.CG(...)) for a non-symmetric Jacobian"
            )
        else:  # e.g. a direct factorization of a singular or indefinite system
            hint = (
                "the solution is not finite: the system is singular or indefinite for this "
                "solver (a Cholesky or LU factorization of collinear columns, say); a Krylov "
                "solver (lx.CG for a symmetric positive semi-definite system, lx.GMRES "
                "otherwise) solves consistent singular systems"
            )
        parts.append(
            f"the implicit linear solve stopped after {d['linear_steps']} steps with relative "
            f"residual {d['linear_residual']:.3g} ({hint}{float32_hint(dtype)})"
        )
    return f"{where}: hypergradient is not reliable: " + "; ".join(parts) + "."


def enforce(diag: Diagnostics, on_failure: OnFailure, value, *, where: str = "invcal"):
    """Apply the failure policy to ``value`` (returned unchanged when all converged)."""
    on_failure = OnFailure.parse(on_failure)
    if on_failure is OnFailure.RECORD:
        return value
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(diag))
    if not traced:
        if not bool(np.all(np.asarray(diag.converged))):
            msg = _message(diag.as_dict(), where, jnp.result_type(diag.inner_residual))
            if on_failure is OnFailure.RAISE:
                raise HypergradientNotConverged(msg)
            warnings.warn(msg, HypergradientNotConvergedWarning, stacklevel=3)
        return value
    bad = ~jnp.all(diag.converged)
    if on_failure is OnFailure.RAISE:
        return eqx.error_if(
            value,
            bad,
            f"{where}: hypergradient from an unconverged inner or linear solve (see "
            "Diagnostics; pass on_failure='record' to inspect it)",
        )

    def _warn(is_bad, steps, res, lsteps, lres):
        if bool(is_bad):
            warnings.warn(
                f"{where}: hypergradient from an unconverged solve "
                f"(inner steps {int(np.max(steps))}, "
                f"residual {float(np.max(res)):.3g}; linear steps {int(np.max(lsteps))}, "
                f"residual {float(np.max(lres)):.3g}).",
                HypergradientNotConvergedWarning,
                stacklevel=2,
            )

    jax.debug.callback(
        _warn, bad, diag.inner_steps, diag.inner_residual, diag.linear_steps, diag.linear_residual
    )
    return value
