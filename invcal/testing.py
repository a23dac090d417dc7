"""Checks for hypergradients: central finite differences in the unconstrained space.

Finite differences are taken in ``z`` (the outer optimizer's unconstrained coordinates), so
the step is scale-free for log- or bound-transformed hyperparameters; the method's dE/dθ is
mapped to dE/dz by the chain rule before comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .hypergradient import AbstractHypergradient, Implicit, describe, hypergradient
from .precision import computes_in_float64, to_float64

__all__ = [
    "CheckResult",
    "CompileCount",
    "check_hypergradient",
    "central_difference4",
    "count_compilations",
    "finite_difference",
    "grad_z",
]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_hypergradient` (gradients are dE/dz)."""

    method: str
    relative_error: float
    gradient: np.ndarray
    finite_difference: np.ndarray
    value: float
    seconds: float
    diagnostics: dict

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "relative_error": self.relative_error,
            "value": self.value,
            "gradient": self.gradient.tolist(),
            "finite_difference": self.finite_difference.tolist(),
            "seconds": self.seconds,
            **{f"diag_{k}": v for k, v in self.diagnostics.items()},
        }


@eqx.filter_jit
def _value_z(problem, solver, z, x0):
    theta = problem.space.to_theta(z)
    sol = solver.solve(problem, x0, theta)
    return problem.criterion(sol.x, theta, problem.data), sol.converged


def finite_difference(problem, theta, *, solver, eps: float = 1e-5, x0=None) -> np.ndarray:
    """Central differences (E(z + εeᵢ) − E(z − εeᵢ)) / 2ε of the criterion at the inner
    solution, for each entry of z. Raises if any inner solve did not converge."""
    theta = problem.space.validate(theta)
    z = problem.space.to_z(theta)
    x0 = problem.x0 if x0 is None else x0
    out = np.zeros(z.shape[0])
    for i in range(z.shape[0]):
        e = jnp.zeros_like(z).at[i].set(eps)
        vp, cp = _value_z(problem, solver, z + e, x0)
        vm, cm = _value_z(problem, solver, z - e, x0)
        if not (bool(cp) and bool(cm)):
            raise RuntimeError(
                f"finite_difference: the inner solve did not converge at z[{i}] ± {eps}; "
                "tighten the solver (more max_steps) before trusting the comparison."
            )
        out[i] = (float(vp) - float(vm)) / (2 * eps)
    return out


def central_difference4(f, x, h: float) -> np.ndarray:
    """∇f(x) by fourth-order central differences (truncation O(h⁴)), one coordinate at a
    time: (−f(x + 2h eᵢ) + 8f(x + h eᵢ) − 8f(x − h eᵢ) + f(x − 2h eᵢ)) / 12h. For strongly
    curved objectives whose values carry a solver's tolerance, where second-order differences
    need an h so small that the tolerance dominates them."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        v = [float(f(x + k * e)) for k in (2, 1, -1, -2)]
        g[i] = (-v[0] + 8 * v[1] - 8 * v[2] + v[3]) / (12 * h)
    return g


def grad_z(problem, theta, grad_theta) -> jax.Array:
    """Map dE/dθ (a dict like θ) to dE/dz through the space's transforms
    (:meth:`Space.grad_to_z`)."""
    return problem.space.grad_to_z(theta, grad_theta)


@computes_in_float64
def check_hypergradient(
    problem,
    theta,
    method: AbstractHypergradient | None = None,
    *,
    solver,
    eps: float = 1e-5,
    x0=None,
    on_failure="raise",
) -> CheckResult:
    """Compare ``method``'s hypergradient with central finite differences at θ.

    Returns a :class:`CheckResult` whose ``relative_error`` is ‖g − g_fd‖ / s (in z), with
    s = max(‖g_fd‖, ‖g‖, |E|·ε_mach/eps): the larger gradient, or the finite difference's
    own resolution when both are below it (a gradient that is 0 to rounding on both sides is
    an agreement, not an error of 1e284).
    In float64 with tight solves, exact methods reach 1e-7 or better.

    Central differences need float64: the check runs with JAX's 64-bit mode on, whatever the
    global flag (:mod:`invcal.precision`), on float64 copies of the problem's arrays.
    """
    problem, x0 = to_float64((problem, x0))
    method = Implicit() if method is None else method
    theta = problem.space.validate(theta)
    t0 = time.perf_counter()
    hg = hypergradient(problem, theta, solver=solver, method=method, x0=x0, on_failure=on_failure)
    g = np.asarray(grad_z(problem, theta, hg.grad))
    seconds = time.perf_counter() - t0
    fd = finite_difference(problem, theta, solver=solver, eps=eps, x0=x0)
    resolution = abs(float(hg.value)) * float(np.finfo(np.float64).eps) / eps
    denom = max(float(np.linalg.norm(fd)), float(np.linalg.norm(g)), resolution, 1e-300)
    return CheckResult(
        method=describe(method),
        relative_error=float(np.linalg.norm(g - fd) / denom),
        gradient=g,
        finite_difference=fd,
        value=float(hg.value),
        seconds=seconds,
        diagnostics=hg.diagnostics.as_dict(),
    )


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclass
class CompileCount:
    """What :func:`count_compilations` saw: ``traces`` (functions traced to a jaxpr),
    ``compiles`` (XLA compilations, persistent-cache hits included) and their names."""

    traces: int = 0
    compiles: int = 0
    names: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.traces + self.compiles


class count_compilations:  # noqa: N801 (used as a context manager, like a function)
    """Count JAX's traces and XLA compilations inside a ``with`` block, through JAX's own
    monitoring events (``jax.monitoring``), not by timing::

        with ic.testing.count_compilations() as c:
            fit()
        assert c.total == 0, c.names   # a repeated call compiles nothing
    """

    def __enter__(self) -> CompileCount:
        self.count = CompileCount()

        def listener(event, duration, **kwargs):
            if event == _TRACE_EVENT:
                self.count.traces += 1
            elif event == _COMPILE_EVENT:
                self.count.compiles += 1
            else:
                return
            self.count.names.append(kwargs.get("fun_name", "?"))

        self._listener = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self.count

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)
        return False
