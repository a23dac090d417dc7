"""Hypergradient methods: strategies that say how x*(θ) is differentiated.

Every method works on every problem/solver pair (where the maths allows) in two ways:

* :func:`solve` returns x*(θ) as a differentiable function, so ``jax.grad``,
  ``jax.jacfwd``, ``jit`` and ``vmap`` of any function of the solution just work;
* :func:`hypergradient` returns E, dE/dθ and :class:`~invcal.Diagnostics` (inner and
  linear-solve work and residuals), applies the failure policy, and supports warm starts of
  both the inner solve and the adjoint solve. This is what :func:`invcal.tune` uses.

Methods: :class:`Implicit` (implicit function theorem; reverse or forward mode; any lineax
linear solver or :class:`~invcal.NeumannSeries`; optional active-set restriction),
:class:`Unrolled` (REVERSE-HG with √T checkpointing; Maclaurin et al. 2015, Franceschi et al.
2017), :class:`ForwardUnrolled` (FORWARD-HG: Z_t = A_t Z_{t−1} + B_t by JVPs; Franceschi et al.
2017) and :class:`Truncated` (reverse through the last k iterations; Shaban et al. 2019).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree

from .diagnostics import Diagnostics, OnFailure, enforce, no_linear_solve
from .implicit import (
    AbstractMode,
    AbstractSystem,
    ActiveSet,
    Forward,
    Reverse,
    adjoint_solve,
    as_mode,
    as_system,
    implicit_solution,
    system_spec,
    tangent_solve,
)
from .precision import default_linear_rtol, float_dtype
from .solvers.base import AbstractInnerSolver
from .solvers.fixed_point import FixedSteps

__all__ = [
    "AbstractHypergradient",
    "AbstractImplicitMethod",
    "Implicit",
    "Unrolled",
    "ForwardUnrolled",
    "Truncated",
    "Hypergradient",
    "hypergradient",
    "solve",
]


def _tree_vdot(a, b):
    return sum(
        jnp.vdot(u, v)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


class Hypergradient(eqx.Module):
    """E(x*(θ), θ), dE/dθ (same structure as θ), the solution x*, diagnostics, and the
    adjoint vector (to warm-start the next implicit solve; ``None`` for other methods)."""

    value: jax.Array
    grad: Any
    x: Any
    diagnostics: Diagnostics
    adjoint: Any = None


class AbstractHypergradient(eqx.Module):
    """A hypergradient method."""

    @abc.abstractmethod
    def solution(self, problem, theta, solver, x0):
        """x*(θ) (or x_T(θ)), differentiable in θ and data by this method."""

    @abc.abstractmethod
    def compute(self, problem, theta, solver, x0, adjoint0, tol, linear_tol) -> Hypergradient:
        """E, dE/dθ, x, diagnostics and the adjoint to carry, at θ."""

    def check(self, problem, solver) -> None:
        """Raise a clear error, before any work, if the method cannot serve this pair."""

    def initial_adjoint(self, x0):
        """The adjoint a cold start carries (zeros for a warm-started adjoint solve, so that
        the first and later outer steps share one compilation), or ``None``."""
        return None


class AbstractImplicitMethod(AbstractHypergradient):
    """Implicit differentiation as a template: :meth:`compute` solves the inner problem,
    takes the criterion's gradients and asks the method for the implicit term
    −(∂F/∂θ)ᵀA⁻ᵀ∇ₓE, whose linear system every method solves with
    :func:`invcal.implicit.solve_system`; the diagnostics are assembled here, once."""

    @abc.abstractmethod
    def implicit_term(self, problem, x, theta, grad_x, adjoint0, linear_tol):
        """(the implicit part of dE/dθ, the :class:`~invcal.implicit.LinearSolve` whose
        statistics are reported, the adjoint to carry to the next step)."""

    def compute(self, problem, theta, solver, x0, adjoint0, tol, linear_tol) -> Hypergradient:
        sol = solver.solve(problem, x0, theta, tol=tol)
        criterion = jax.value_and_grad(problem.criterion, argnums=(0, 1))
        value, (gx, gth) = criterion(sol.x, theta, problem.data)
        term, lin, adjoint = self.implicit_term(problem, sol.x, theta, gx, adjoint0, linear_tol)
        diag = Diagnostics(
            inner_steps=sol.num_steps,
            inner_residual=sol.residual,
            inner_converged=sol.converged,
            linear_steps=jnp.asarray(lin.steps),
            linear_residual=lin.residual,
            linear_converged=lin.ok,
            inner_curvature=sol.curvature,
            linear_condition=lin.condition,
        )
        grad = jax.tree_util.tree_map(jnp.add, gth, term)
        return Hypergradient(value=value, grad=grad, x=sol.x, diagnostics=diag, adjoint=adjoint)


# --------------------------------------------------------------------------------------
# Implicit differentiation
# --------------------------------------------------------------------------------------
class Implicit(AbstractImplicitMethod):
    r"""Implicit differentiation: dx*/dθ = −A⁻¹ ∂F/∂θ with A = ∂F/∂x at x*.

    **Arguments**

    - ``linear_solver``: a lineax solver (``lx.CG`` for symmetric systems;
      ``lx.Normal(lx.CG(...))``, ``lx.GMRES``, ``lx.BiCGStab`` for any; ``lx.LU`` for dense
      direct) or :class:`invcal.NeumannSeries`. ``None`` picks CG for symmetric systems and GMRES
      otherwise.
    - ``mode``: ``Reverse()`` (one adjoint solve Aᵀv = ∇ₓE; best for many θ) or
      ``Forward()`` (one solve per θ entry; best for few θ), from :mod:`invcal.implicit`;
      the names ``"reverse"`` and ``"forward"`` are accepted too.
    - ``system``: ``OptimalitySystem()`` (F or ∇f), ``FixedPointSystem()`` (x − T(x)),
      ``ActiveSet(inner)`` (``inner`` restricted to ``problem.support``, for non-smooth
      inner problems) or ``None`` (chosen from the problem and the linear solver); the names
      ``"optimality"`` and ``"fixed_point"`` are accepted too.
    - ``active_set``: the same as ``system=ActiveSet(system)``.
    - ``warm_start``: start the adjoint solve from the previous outer step's adjoint.

    Reference: Pedregosa (2016), "Hyperparameter optimization with approximate gradient";
    Blondel et al. (2022), "Efficient and modular implicit differentiation".
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    mode: AbstractMode = eqx.field(default=Reverse(), static=True, converter=as_mode)
    active_set: bool = eqx.field(default=False, static=True)
    system: AbstractSystem | None = eqx.field(default=None, static=True, converter=as_system)
    warm_start: bool = eqx.field(default=True, static=True)

    def __post_init__(self):
        # active_set=True and system=ActiveSet(...) say the same thing: one representation
        system = as_system(self.system)
        if isinstance(system, ActiveSet):
            object.__setattr__(self, "active_set", True)
        elif self.active_set:
            object.__setattr__(self, "system", ActiveSet(system))

    def __check_init__(self):
        if self.linear_solver is not None and not isinstance(
            self.linear_solver, lx.AbstractLinearSolver
        ):
            raise TypeError(
                "Implicit linear_solver must be a lineax solver (lx.CG(rtol, atol), "
                "lx.GMRES(...), lx.Normal(lx.CG(...)), lx.BiCGStab(...), lx.LU()) or "
                f"invcal.NeumannSeries(k); got {self.linear_solver!r}."
            )

    def _spec(self, problem, lin):
        return system_spec(problem, lin, self.system, active_set=self.active_set)

    def _linear(self, problem, linear_tol=None, dtype=None):
        lin = self.linear_solver
        if lin is None:
            # rtol 1e-10 in float64, 100·eps in float32 (1e-10 is out of its reach).
            rtol = default_linear_rtol(float_dtype(problem.x0) if dtype is None else dtype)
            atol = rtol * 1e-2
            sym = self._spec(problem, lx.GMRES(rtol, atol)).symmetric
            lin = (
                lx.CG(rtol=rtol, atol=atol, max_steps=10_000)
                if sym
                else lx.GMRES(rtol=rtol, atol=atol, restart=50, max_steps=10_000)
            )
        if linear_tol is not None:
            # lx.Normal wraps the iterative solver that owns the tolerance (HOAG's linear_tol
            # was silently ignored for lx.Normal(lx.CG(...))). Direct solvers have none.
            if hasattr(lin, "rtol"):
                lin = eqx.tree_at(lambda s: s.rtol, lin, linear_tol)
            elif isinstance(lin, lx.Normal) and hasattr(lin.inner_solver, "rtol"):
                lin = eqx.tree_at(lambda s: s.inner_solver.rtol, lin, linear_tol)
        return lin

    def check(self, problem, solver):
        if self.active_set and problem.support is None:
            raise ValueError(
                f"Implicit(active_set=True) needs problem {problem.name!r} to define "
                "support=(x, theta, data) -> bool mask of the active set."
            )
        if isinstance(solver, FixedSteps) and not problem.fixed_steps:
            # FixedSteps reports every run as converged, so the implicit derivative would be
            # taken at x_n instead of x* without any diagnostic saying so.
            raise ValueError(
                "Implicit() differentiates the fixed point x*(θ), but "
                f"FixedSteps({solver.num_steps}) stops after a fixed number of steps without "
                "checking convergence. Use a solver with a tolerance (FISTA(), "
                "FixedPointIteration(), Newton()), or differentiate the steps themselves with "
                "Unrolled(), ForwardUnrolled() or Truncated(k)."
            )
        self._spec(problem, self._linear(problem))

    def solution(self, problem, theta, solver, x0):
        sol = solver.solve(problem, x0, theta)
        lin = self._linear(problem, dtype=float_dtype(sol.x))
        spec = self._spec(problem, lin)
        x = eqx.error_if(
            sol.x,
            ~sol.converged,
            "invcal.solve: the inner solve did not reach its tolerance; the implicit "
            "derivative would be wrong. Raise the solver's max_steps or loosen its tol.",
        )
        stripped = eqx.filter(problem, eqx.is_array, inverse=True)
        stripped = eqx.tree_at(lambda p: p.data, stripped, None, is_leaf=lambda z: z is None)
        return implicit_solution(
            stripped, x, theta, problem.data, spec=spec, linear_solver=lin, use_mask=self.active_set
        )

    def initial_adjoint(self, x0):
        if not isinstance(self.mode, Reverse):
            return None
        return jax.tree_util.tree_map(
            lambda a: jnp.zeros(jnp.shape(a), jnp.result_type(a, float)), x0
        )

    def implicit_term(self, problem, x, theta, gx, adjoint0, linear_tol):
        data = problem.data
        lin = self._linear(problem, linear_tol, float_dtype(x))
        spec = self._spec(problem, lin)
        mask = problem.support(x, theta, data) if self.active_set else None
        if isinstance(self.mode, Reverse):
            y0 = None
            if self.warm_start and adjoint0 is not None:
                # lineax wants y0 exactly like the right-hand side (the zero cold start is
                # made from x0, whose dtype may differ).
                y0 = jax.tree_util.tree_map(lambda y, g: jnp.asarray(y, g.dtype), adjoint0, gx)
            sol, term = adjoint_solve(
                problem, spec, x, theta, data, gx, linear_solver=lin, mask=mask, y0=y0
            )
            return term, sol, sol.value
        flat, unravel = ravel_pytree(theta)
        sol = tangent_solve(problem, spec, x, flat, unravel, data, linear_solver=lin, mask=mask)
        term = unravel(jax.vmap(lambda z: _tree_vdot(z, gx))(sol.value))
        return term, sol, adjoint0


# --------------------------------------------------------------------------------------
# Differentiation through the iterations
# --------------------------------------------------------------------------------------
def _run_steps(solver, problem, state, theta, data, n: int, checkpoint: bool):
    """n steps of ``solver.step``; with ``checkpoint``, √n segments are rematerialised in
    the backward pass so memory grows like √n instead of n (Griewank & Walther)."""
    if n <= 0:
        return state

    def one(s, _):
        return solver.step(problem, s, theta, data), None

    if not checkpoint or n < 4:
        return jax.lax.scan(one, state, None, length=n)[0]
    seg = int(math.isqrt(n))
    n_seg, rem = divmod(n, seg)

    @jax.checkpoint
    def segment(s, _):
        return jax.lax.scan(one, s, None, length=seg)[0], None

    state = jax.lax.scan(segment, state, None, length=n_seg)[0]
    return jax.lax.scan(one, state, None, length=rem)[0] if rem else state


def _unrolled_solution(solver, problem, theta, x0, n_total, n_diff, checkpoint):
    data = problem.data
    state = solver.init(problem, x0, theta, data)
    if n_total > n_diff:
        theta_c = jax.lax.stop_gradient(theta)
        state = jax.lax.stop_gradient(
            _run_steps(solver, problem, state, theta_c, data, n_total - n_diff, False)
        )
    state = _run_steps(solver, problem, state, theta, data, n_diff, checkpoint)
    return solver.current(state)


def _unrolled_diag(solver, problem, x, theta, n_total, tol):
    res = solver.residual(
        problem, jax.lax.stop_gradient(x), jax.lax.stop_gradient(theta), problem.data
    )
    if problem.fixed_steps or isinstance(solver, FixedSteps):
        conv = jnp.asarray(True)
    else:
        conv = res <= (solver.tolerance(res.dtype) if tol is None else tol)
    return no_linear_solve(n_total, res, conv)


class _AbstractUnrolled(AbstractHypergradient):
    num_steps: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.num_steps is not None and int(self.num_steps) < 1:
            raise ValueError(
                f"{type(self).__name__} num_steps must be >= 1 (or None for the solver's "
                f"max_steps); got {self.num_steps!r}."
            )

    def _n(self, solver) -> int:
        n = solver.max_steps if self.num_steps is None else self.num_steps
        if int(n) < 1:
            raise ValueError(f"{type(self).__name__} num_steps must be >= 1; got {n!r}.")
        return int(n)

    def _n_diff(self, solver) -> int:
        return self._n(solver)

    # Keyword-only, so positional arguments read (num_steps, k) for Truncated as documented.
    checkpoint: bool = eqx.field(default=True, static=True, kw_only=True)

    def solution(self, problem, theta, solver, x0):
        return _unrolled_solution(
            solver, problem, theta, x0, self._n(solver), self._n_diff(solver), self.checkpoint
        )

    def _objective(self, problem, solver, x0):
        def f(theta):
            x = self.solution(problem, theta, solver, x0)
            return problem.criterion(x, theta, problem.data), x

        return f

    def compute(self, problem, theta, solver, x0, adjoint0, tol, linear_tol):
        f = self._objective(problem, solver, x0)
        (value, x), grad = jax.value_and_grad(f, has_aux=True)(theta)
        diag = _unrolled_diag(solver, problem, x, theta, self._n(solver), tol)
        return Hypergradient(value=value, grad=grad, x=x, diagnostics=diag, adjoint=adjoint0)


class Unrolled(_AbstractUnrolled):
    """Reverse-mode differentiation through ``num_steps`` solver iterations from the warm
    start (REVERSE-HG), checkpointed so memory grows like √num_steps. ``num_steps=None``
    unrolls the solver's ``max_steps`` (the step count of :class:`FixedSteps`)."""


class ForwardUnrolled(_AbstractUnrolled):
    """Forward-mode differentiation through the iterations (FORWARD-HG): the tangent
    recursion Z_t = A_t Z_{t−1} + B_t is carried by JVPs alongside the iterates, one
    direction per hyperparameter entry; memory does not grow with the number of steps."""

    checkpoint: bool = eqx.field(default=False, static=True, kw_only=True)

    def compute(self, problem, theta, solver, x0, adjoint0, tol, linear_tol):
        flat, unravel = ravel_pytree(theta)
        f = self._objective(problem, solver, x0)

        def g(t):
            value, x = f(unravel(t))
            return value, (value, x)

        grad_flat, (value, x) = jax.jacfwd(g, has_aux=True)(flat)
        diag = _unrolled_diag(solver, problem, x, theta, self._n(solver), tol)
        grad = unravel(grad_flat)
        return Hypergradient(value=value, grad=grad, x=x, diagnostics=diag, adjoint=adjoint0)


class Truncated(_AbstractUnrolled):
    """Reverse-mode differentiation through only the last ``k`` of ``num_steps`` iterations
    (truncated back-propagation, Shaban et al. 2019): cheaper, biased; the bias shrinks as
    k grows."""

    k: int = eqx.field(default=10, static=True)

    def __check_init__(self):
        if int(self.k) < 1:
            raise ValueError(f"Truncated k must be >= 1; got {self.k!r}.")

    def _n_diff(self, solver):
        return min(int(self.k), self._n(solver))


def describe(method) -> str:
    """A short name of a hypergradient method and its settings, e.g.
    ``Implicit[CG][forward]`` or ``Truncated[k=10][num_steps=300]`` (reports, tables)."""
    name = type(method).__name__
    lin = getattr(method, "linear_solver", None)
    if lin is not None:
        inner = getattr(lin, "inner_solver", None)
        lin_name = type(lin).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
        name += f"[{lin_name}]"
    if isinstance(getattr(method, "mode", None), Forward):
        name += "[forward]"
    for attr in ("k", "num_steps"):
        v = getattr(method, attr, None)
        if v is not None:
            name += f"[{attr}={v}]"
    return name


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------
def _check_args(problem, theta, solver, method, argument="theta"):
    from .problem import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an invcal.Problem; got {type(problem).__name__}.")
    if not isinstance(solver, AbstractInnerSolver):
        raise TypeError(
            "solver must be an invcal inner solver (invcal.FISTA(), invcal.Newton(), "
            f"invcal.FixedPointIteration(), invcal.FixedSteps(n), ...); got {solver!r}."
        )
    if not isinstance(method, AbstractHypergradient):
        raise TypeError(
            "method must be a hypergradient method (invcal.Implicit(), invcal.Unrolled(), "
            f"invcal.ForwardUnrolled(), invcal.Truncated(k)); got {method!r}."
        )
    solver.check_problem(problem)
    method.check(problem, solver)
    return problem.space.validate(theta, argument=argument)


def _check_x0(problem, x0) -> None:
    """An explicit x0 must have the problem's x0 structure and shapes (checked without
    tracing, so that a repeated call stays free)."""
    if x0 is None:
        return
    want = jax.tree_util.tree_structure(problem.x0)
    got = jax.tree_util.tree_structure(x0)
    if want != got:
        raise ValueError(f"x0 has the structure {got}; the problem's x0 has {want}.")
    for a, b in zip(
        jax.tree_util.tree_leaves(x0), jax.tree_util.tree_leaves(problem.x0), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"x0 has shape {jnp.shape(a)}; the problem's x0 (what its maps take) has shape "
                f"{jnp.shape(b)}."
            )


def _explain(problem, theta, x0, error) -> None:
    """After a failure while tracing, find the argument at fault and raise one clear line
    naming it (called only on failure, so a working call pays nothing)."""
    data = problem.data
    fn = problem.fixed_point if problem.fixed_point is not None else problem.residual
    which = "fixed_point" if problem.fixed_point is not None else "the optimality map"
    try:
        out = jax.eval_shape(lambda x: fn(x, theta, data), x0)
    except Exception as e:  # the map itself does not accept x0
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the problem's {which} fails on x0 (shapes "
            f"{[jnp.shape(a) for a in jax.tree_util.tree_leaves(x0)]}): {first}. Check that "
            "x0 has the shape the maps expect (the number of unknowns)."
        ) from error
    shapes_in = [jnp.shape(a) for a in jax.tree_util.tree_leaves(x0)]
    shapes_out = [a.shape for a in jax.tree_util.tree_leaves(out)]
    if shapes_in != shapes_out:
        raise ValueError(
            f"the problem's {which} maps x0 of shapes {shapes_in} to shapes {shapes_out}; a "
            "fixed point or optimality map must return arrays shaped like x."
        ) from error
    try:
        e = jax.eval_shape(lambda x: problem.criterion(x, theta, data), x0)
    except Exception:
        return
    if jnp.shape(e) != ():
        raise ValueError(
            f"the criterion must return a scalar; it returned shape {jnp.shape(e)} "
            "(reduce it, e.g. with jnp.mean)."
        ) from error


def solve(problem, theta, *, solver, method=None, x0=None):
    """x*(θ), differentiable in θ (and in ``problem.data``) by ``method``.

    ``jax.grad(lambda th: E(solve(problem, th, ...)))`` is reverse mode,
    ``jax.jacfwd`` forward mode; both work under ``jit`` and ``vmap``. Failures raise
    (inner non-convergence via ``eqx.error_if``; linear-solve failure via lineax).
    """
    method = Implicit() if method is None else method
    theta = _check_args(problem, theta, solver, method)
    _check_x0(problem, x0)
    x0 = problem.x0 if x0 is None else x0
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((theta, x0))):
        return _solution(method, problem, theta, solver, x0)
    try:
        return _solution(method, problem, theta, solver, x0)
    except (TypeError, ValueError) as e:
        _explain(problem, theta, x0, e)
        raise


@eqx.filter_jit
def _solution(method, problem, theta, solver, x0):
    return method.solution(problem, theta, solver, x0)


@eqx.filter_jit
def _compute(method, problem, theta, solver, x0, adjoint0, tol, linear_tol):
    hg = method.compute(problem, theta, solver, x0, adjoint0, tol, linear_tol)
    finite = jnp.all(jnp.isfinite(hg.value)) & _all_finite(hg.grad)
    return eqx.tree_at(lambda h: h.diagnostics.finite, hg, finite)


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def hypergradient(
    problem,
    theta,
    *,
    solver,
    method=None,
    x0=None,
    warm: Hypergradient | None = None,
    tol=None,
    linear_tol=None,
    on_failure: OnFailure | str = OnFailure.RAISE,
) -> Hypergradient:
    """E(x*(θ), θ) and dE/dθ at θ with diagnostics.

    **Arguments**

    - ``problem``, ``theta`` (a dict in user values), ``solver``, ``method`` (default
      ``Implicit()``).
    - ``x0``: inner starting point (default ``problem.x0``); ``warm``: a previous
      :class:`Hypergradient`, whose x* and adjoint warm-start this one.
    - ``tol`` / ``linear_tol``: override the inner / linear-solve tolerance (HOAG).
    - ``on_failure``: ``"raise"`` (default), ``"warn"`` or ``"record"`` when the inner or
      linear solve did not converge.
    """
    method = Implicit() if method is None else method
    policy = OnFailure.parse(on_failure)
    theta = _check_args(problem, theta, solver, method)
    _check_x0(problem, x0)
    if warm is not None:
        # A fixed-step solution is defined by its start: warm-starting it would change
        # what x_T(θ) means (T more steps of training), so only the adjoint is reused.
        if x0 is None and not problem.fixed_steps:
            x0 = warm.x
        adjoint0 = warm.adjoint
    else:
        adjoint0 = None
    x0 = problem.x0 if x0 is None else x0
    # Normalise the arguments that vary between outer steps so that the compiled
    # computation is reused: a cold start and a warm start (zero initial adjoint, lineax's
    # own default) or a default and an explicit tolerance would otherwise trace twice.
    if adjoint0 is None:
        adjoint0 = method.initial_adjoint(x0)
    # The tolerance is an array, so neither its value nor default-vs-explicit recompiles;
    # the default is the solver's for the dtype the iterates will have.
    if tol is None:
        tol = solver.tolerance(float_dtype((x0, problem.data)))
    tol = jnp.asarray(tol, dtype=float)
    linear_tol = None if linear_tol is None else jnp.asarray(linear_tol, dtype=float)
    try:
        out = _compute(method, problem, theta, solver, x0, adjoint0, tol, linear_tol)
    except (TypeError, ValueError) as e:
        _explain(problem, theta, x0, e)
        raise
    return enforce(
        out.diagnostics, policy, out, where=f"invcal.hypergradient({type(method).__name__})"
    )
