r"""The implicit-function-theorem core.

At a solution F(x*, θ) = 0 with A = ∂F/∂x invertible,

    dx*/dθ = −A⁻¹ ∂F/∂θ,      dE/dθ = ∂E/∂θ − (A⁻ᵀ ∇ₓE)ᵀ ∂F/∂θ.

Two entry points share the linear operator built here:

* :func:`implicit_solution` wraps an already-computed x* in a ``custom_jvp`` whose tangent
  rule solves A ẋ = −(∂F/∂θ θ̇ + ∂F/∂d ḋ) with lineax. Reverse mode comes from lineax's
  transposition of that solve, so ``jax.grad``, ``jax.jacfwd``, ``jit`` and ``vmap`` all
  work on any function of the solution.
* :func:`adjoint_solve` / :func:`tangent_solve` do the reverse (one solve with Aᵀ) and
  forward (one solve per hyperparameter) computations explicitly, warm-startable and
  returning the linear-solve diagnostics that ``custom_jvp`` cannot carry out.

Both, and the support-restricted system of :mod:`invcal.sparse`, solve their linear system
in one place, :func:`solve_system`, which also computes the statistics every hypergradient
reports (steps, the recomputed relative residual, success).

For non-smooth inner problems the Jacobian lives on the active set: with a mask m the
system becomes m⊙A(m⊙v) + (1−m)⊙v = m⊙b, which pins the inactive entries to zero and, for
proximal-gradient fixed points (A_SS = ηH_SS), is symmetric positive definite.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from lineax import RESULTS

from .solvers.base import tree_norm

__all__ = [
    "AbstractMode",
    "AbstractSystem",
    "ActiveSet",
    "FixedPointSystem",
    "Forward",
    "OptimalitySystem",
    "Reverse",
    "as_mode",
    "as_system",
    "LinearSolve",
    "NeumannSeries",
    "adjoint_solve",
    "implicit_solution",
    "solve_system",
    "system_operator",
    "tangent_solve",
]


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


class NeumannSeries(lx.AbstractLinearSolver):
    r"""Truncated Neumann series (Richardson iteration) for A v = b:

        v_{j+1} = v_j + s (b − A v_j),   v_0 = y0 (default 0),

    so that from zero v_k = s Σ_{j<k} (I − sA)^j b. For the fixed-point residual
    A = I − ∂T/∂x with s = 1 this is v_k = Σ_{j<k} (∂T/∂x)^j b, converging when T is a
    contraction. The solve reports success only if ‖b − A v_k‖ ≤ atol + rtol‖b‖; pass
    ``rtol=float('inf')`` to accept a fixed number of terms as an approximation.
    """

    num_terms: int = 100
    step: float = 1.0
    rtol: float = 1e-8
    atol: float = 0.0

    def __check_init__(self):
        if int(self.num_terms) < 1:
            raise ValueError(f"NeumannSeries num_terms must be >= 1; got {self.num_terms!r}.")
        if not self.step > 0:
            raise ValueError(f"NeumannSeries step must be > 0; got {self.step!r}.")
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError(
                "NeumannSeries tolerances must be >= 0; got "
                f"rtol={self.rtol!r}, atol={self.atol!r}."
            )

    def init(self, operator, options):
        if operator.in_structure() != operator.out_structure():
            raise ValueError("NeumannSeries needs a square operator.")
        return operator

    def compute(self, state, vector, options):
        operator = state
        y0 = options.get("y0", _tmap(jnp.zeros_like, vector))
        bn = tree_norm(vector)
        # where(): rtol=inf with b = 0 would give inf·0 = nan and report a failure.
        tol = self.atol + jnp.where(bn > 0, self.rtol * bn, 0.0)
        # rtol=inf asks for exactly num_terms terms (an approximation); otherwise stop as soon
        # as the residual, which each step computes anyway, is within tolerance.
        stop_early = not math.isinf(self.rtol)

        def residual(v):
            return _tmap(jnp.subtract, vector, operator.mv(v))

        def cond(carry):
            j, _, r = carry
            more = j < self.num_terms
            return (more & (tree_norm(r) > tol)) if stop_early else more

        def body(carry):
            j, v, r = carry
            v = _tmap(lambda a, b: a + self.step * b, v, r)
            return j + 1, v, residual(v)

        j, v, r = jax.lax.while_loop(cond, body, (jnp.asarray(0), y0, residual(y0)))
        ok = tree_norm(r) <= tol
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.max_steps_reached)
        return v, result, {"num_steps": j}

    def transpose(self, state, options):
        return state.transpose(), {}

    def conj(self, state, options):
        return lx.conj(state), {}

    def assume_full_rank(self):
        return True


# --------------------------------------------------------------------------------------
# What is differentiated, and in which direction: objects (strings are accepted as aliases)
# --------------------------------------------------------------------------------------
class AbstractMode(eqx.Module):
    """The direction of the implicit computation."""


class Reverse(AbstractMode):
    """One adjoint solve Aᵀv = ∇ₓE for all hyperparameters (best for many θ)."""


class Forward(AbstractMode):
    """One tangent solve A ż = −∂F/∂θᵢ per hyperparameter entry (best for few θ)."""


class AbstractSystem(eqx.Module):
    """Which residual's Jacobian A = ∂F/∂x defines the implicit system."""


class OptimalitySystem(AbstractSystem):
    """F(x, θ) = 0: the problem's ``optimality`` map, or ∇ₓf of its ``objective``."""


class FixedPointSystem(AbstractSystem):
    """F(x, θ) = x − T(x, θ): the problem's ``fixed_point`` map."""


class ActiveSet(AbstractSystem):
    """``inner`` (default: chosen from the problem and solver) restricted to
    ``problem.support``, for non-smooth inner problems."""

    inner: AbstractSystem | None = None


_MODE_NAMES = {"reverse": Reverse, "forward": Forward}
_SYSTEM_NAMES = {"optimality": OptimalitySystem, "fixed_point": FixedPointSystem}


def as_mode(mode, who: str = "Implicit") -> AbstractMode:
    """A mode object from an object or its name (``"reverse"``, ``"forward"``)."""
    if isinstance(mode, AbstractMode):
        return mode
    if isinstance(mode, str) and mode in _MODE_NAMES:
        return _MODE_NAMES[mode]()
    raise ValueError(
        f"{who} mode must be 'reverse' or 'forward' (or invcal.implicit.Reverse() / "
        f"Forward()); got {mode!r}."
    )


def as_system(system) -> AbstractSystem | None:
    """A system object from an object, its name (``"optimality"``, ``"fixed_point"``) or
    ``None`` (chosen from the problem and the linear solver)."""
    if system is None or isinstance(system, AbstractSystem):
        return system
    if isinstance(system, str) and system in _SYSTEM_NAMES:
        return _SYSTEM_NAMES[system]()
    raise ValueError(
        "Implicit system must be None, 'optimality' or 'fixed_point' (or "
        "invcal.implicit.OptimalitySystem(), FixedPointSystem(), ActiveSet(...)); got "
        f"{system!r}."
    )


def _system_name(system) -> str | None:
    if isinstance(system, ActiveSet):
        system = as_system(system.inner)
    if isinstance(system, FixedPointSystem):
        return "fixed_point"
    if isinstance(system, OptimalitySystem):
        return "optimality"
    return system


class SystemSpec(eqx.Module):
    """Which residual defines the implicit system, and its structure."""

    use_fixed_point: bool = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)


def _is_plain_cg(linear_solver) -> bool:
    # lx.CG needs a symmetric (positive definite) operator. lx.Normal(lx.CG(...)) (what the
    # deprecated lx.NormalCG returns) is not a CG instance: it runs CG on AᵀA, which is
    # symmetric for any A, so it is fine for non-symmetric systems.
    return isinstance(linear_solver, lx.CG)


def system_spec(problem, linear_solver, system: str | None, active_set: bool = False) -> SystemSpec:
    """Pick the residual for the implicit system and check the linear solver fits it.

    ``active_set`` says whether the system will be restricted to ``problem.support``: a
    problem that defines ``support`` declares ``symmetric=True`` for the restricted system
    only (a proximal-gradient fixed point is symmetric on its support, not off it).
    """
    system = _system_name(system)
    if problem.fixed_steps:
        raise ValueError(
            f"problem {problem.name!r} defines its solution as a fixed number of steps "
            "(fixed_steps=True), which is not a fixed point of anything that depends on θ: "
            "implicit differentiation does not apply. Use Unrolled(), ForwardUnrolled(), "
            "Truncated(k) or RTHO."
        )
    if system is None:
        prefer_fp = isinstance(linear_solver, NeumannSeries) and problem.fixed_point is not None
        use_fp = prefer_fp or not problem.has_optimality
    elif system == "fixed_point":
        if problem.fixed_point is None:
            raise ValueError(
                f"system='fixed_point' but problem {problem.name!r} has no fixed_point."
            )
        use_fp = True
    elif system == "optimality":
        if not problem.has_optimality:
            raise ValueError(
                f"system='optimality' but problem {problem.name!r} has neither optimality= "
                "nor objective=."
            )
        use_fp = False
    else:
        raise ValueError(f"system must be None, 'optimality' or 'fixed_point'; got {system!r}.")
    # The declared symmetry holds for the whole system only when the problem has no support;
    # with a support it holds on the active set, so it counts only when the system is
    # restricted to it. Tagging the unrestricted system symmetric would make lineax use A for
    # Aᵀ in reverse mode: a wrong hypergradient with a tiny linear residual (found by the
    # Lasso tests: GMRES on the full prox fixed point was 5% off, silently).
    declared = problem.symmetric and (problem.support is None or active_set)
    if use_fp:
        # x − T(x, θ) of a proximal map: symmetric only on the support, so insist on one.
        symmetric = declared and problem.support is not None
    else:
        hessian = problem.optimality is None and problem.objective is not None
        symmetric = hessian or declared
    if _is_plain_cg(linear_solver) and not symmetric:
        if use_fp and problem.symmetric and problem.support is not None:
            why = (
                "declares symmetric=True for its support only, and Implicit(active_set=False) "
                "differentiates the full fixed-point map, whose Jacobian is not symmetric. "
                "Pass Implicit(..., active_set=True), or "
            )
        elif use_fp:
            why = (
                "differentiates a fixed-point map x − T(x, θ), whose Jacobian is not symmetric "
                "(plain CG then returns wrong hypergradients). Pass symmetric=True with "
                "support= and Implicit(active_set=True) for a proximal fixed point, give the "
                "problem objective= (a Hessian is symmetric), or "
            )
        else:
            why = "declares an optimality map that is not known to be symmetric. "
        raise ValueError(
            f"Implicit(linear_solver=CG) needs a symmetric system, but problem {problem.name!r} "
            + why
            + "use lx.GMRES(...), lx.BiCGStab(...) or lx.Normal(lx.CG(...)), which do not "
            "need symmetry."
        )
    _check_scaled_tolerance(linear_solver)
    return SystemSpec(use_fixed_point=use_fp, symmetric=symmetric)


_ELEMENTWISE = (lx.CG, lx.GMRES, lx.BiCGStab)


def _check_scaled_tolerance(linear_solver):
    # lineax's Krylov solvers stop when |r_i| <= atol + rtol·|b_i| for every entry i, by
    # dividing r by that scale. With atol = 0 an entry where b_i = 0 (every entry off an
    # active set, a zero gradient component) gives 0/0 = NaN, which the test reads as
    # "converged": CG stopped after one step reporting success with a relative residual of
    # 1.66 (found on the elastic-net imaging problem).
    inner = linear_solver.inner_solver if isinstance(linear_solver, lx.Normal) else linear_solver
    if isinstance(inner, _ELEMENTWISE) and isinstance(inner.atol, (int, float)):
        if inner.atol == 0:
            raise ValueError(
                f"linear_solver {type(inner).__name__}(atol=0) cannot be trusted here: lineax "
                "scales its stopping test entry by entry by atol + rtol·|b|, so a zero entry "
                "of the right-hand side (every entry off the active set, for instance) gives "
                "0/0 and the solve stops at once reporting success. Pass atol > 0, e.g. "
                f"{type(inner).__name__}(rtol={inner.rtol!r}, atol=1e-14)."
            )


def _floored_tolerance(linear_solver, b):
    """``linear_solver`` with its absolute tolerance raised to at least rtol·RMS(b).

    lineax's Krylov solvers stop when |r_i| <= atol + rtol·|b_i| for every entry i, so an
    entry where b_i = 0 must reach |r_i| <= atol: an absolute target blind to the scale of
    the system. The forward right-hand side ∂F/∂θ is exactly zero on coefficients θ does not
    act on (the unpenalised coarse wavelet coefficients for an ℓ1 weight), and a tiny atol
    (1e-14, meant only to avoid 0/0) then sits below the rounding floor of A v: CG iterates
    past convergence, loses conjugacy and breaks down with NaN (elastic-net imaging, forward
    mode: 9126 steps). With the floor, ‖r‖ <= 2·rtol‖b‖ is what success means, the promise
    :func:`_residual_bound` checks."""
    if not isinstance(linear_solver, _ELEMENTWISE):
        return linear_solver
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(b))
    floor = linear_solver.rtol * tree_norm(b) / math.sqrt(n)
    atol = jnp.maximum(jnp.asarray(linear_solver.atol, floor.dtype), floor)
    return eqx.tree_at(lambda s: s.atol, linear_solver, atol)


def _residual_bound(linear_solver, b, bn):
    """Relative residual ‖Av − b‖/‖b‖ that a solve reporting success may have at most.

    lineax's Krylov solvers and NeumannSeries promise |r_i| <= atol + rtol·|b_i| (or the same in
    norm), hence ‖r‖ <= √n·atol + rtol‖b‖; a factor 10 allows for the difference between their
    recursively updated residual and the one recomputed here. Solvers without a tolerance
    (direct ones) and lx.Normal (whose tolerance is on the normal equations) get no bound
    beyond finiteness."""
    if not isinstance(linear_solver, (*_ELEMENTWISE, NeumannSeries)):
        return jnp.inf
    n = sum(leaf.size for leaf in jax.tree_util.tree_leaves(b))
    slack = linear_solver.atol * math.sqrt(n) / jnp.where(bn > 0, bn, 1.0)
    return 10.0 * (linear_solver.rtol + slack)


def _residual_fn(problem, spec: SystemSpec):
    if spec.use_fixed_point:
        return problem.fixed_point_residual
    return problem.residual


def system_operator(
    problem, spec: SystemSpec, x, theta, data, mask=None
) -> lx.AbstractLinearOperator:
    """A = ∂F/∂x at (x, θ), restricted to ``mask`` when given, as a lineax operator."""
    F = _residual_fn(problem, spec)

    def Fx(v):
        return F(v, theta, data)

    _, jvp_fn = jax.linearize(Fx, x)
    if mask is None:
        mv = jvp_fn
    else:

        def mv(v):
            inner = jvp_fn(_tmap(lambda m, a: jnp.where(m, a, 0.0), mask, v))
            return _tmap(lambda m, a, b: jnp.where(m, a, b), mask, inner, v)

    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if spec.symmetric else ()
    structure = jax.eval_shape(lambda: x)
    return lx.FunctionLinearOperator(mv, structure, tags)


def _masked(mask, tree):
    if mask is None:
        return tree
    return _tmap(lambda m, a: jnp.where(m, a, 0.0), mask, tree)


def _none_like(tree):
    return jax.tree_util.tree_map(lambda _: None, tree)


@eqx.filter_custom_jvp
def _implicit(x_star, theta, data, *, problem, spec, linear_solver, use_mask):
    return x_star


@_implicit.def_jvp
def _implicit_jvp(primals, tangents, *, problem, spec, linear_solver, use_mask):
    x_star, theta, data = primals
    _, t_theta, t_data = tangents
    F = _residual_fn(problem, spec)
    # None marks a symbolic-zero tangent (for a whole argument or for one leaf).
    t_theta = _none_like(theta) if t_theta is None else t_theta
    t_data = _none_like(data) if t_data is None else t_data
    _, rhs = eqx.filter_jvp(lambda th, d: F(x_star, th, d), (theta, data), (t_theta, t_data))
    mask = problem.support(x_star, theta, data) if use_mask else None
    op = system_operator(problem, spec, x_star, theta, data, mask)
    return x_star, solve_system_in_rule(op, _tmap(jnp.negative, _masked(mask, rhs)), linear_solver)


def implicit_solution(problem, x_star, theta, data, *, spec, linear_solver, use_mask=False):
    """x* as a differentiable function of (θ, data) via the implicit function theorem."""
    x_star = jax.lax.stop_gradient(x_star)
    return _implicit(
        x_star,
        theta,
        data,
        problem=problem,
        spec=spec,
        linear_solver=linear_solver,
        use_mask=use_mask,
    )


class LinearSolve(eqx.Module):
    """The solution v of an implicit system and what the solve reports: lineax's step
    count, the relative residual ‖Av − b‖/‖b‖ recomputed at v, and ``ok`` (lineax reported
    success AND the recomputed residual is finite and within the solver's promise)."""

    value: Any
    steps: jax.Array
    residual: jax.Array
    ok: jax.Array
    # the 2-norm condition number of the system, computed for dense (direct) solves only
    # (NaN otherwise): their residual says little about the error of the solution
    condition: jax.Array = eqx.field(default_factory=lambda: jnp.asarray(jnp.nan))


#: A dense solve whose condition number times the machine epsilon exceeds this has lost all
#: but about three digits of its solution (the forward error is of order cond·eps).
MAX_CONDITION_EPS = 1e-3


def _is_direct(linear_solver) -> bool:
    return not isinstance(linear_solver, (*_ELEMENTWISE, NeumannSeries, lx.Normal))


def solve_system(
    operator: lx.AbstractLinearOperator, b, linear_solver, *, y0: Any = None
) -> LinearSolve:
    """Solve ``operator`` v = b: the one place where the implicit function theorem's linear
    system is solved, for every system (the optimality or fixed-point Jacobian, restricted to
    an active set or not, and :mod:`invcal.sparse`'s support system) and both modes.

    The solver's absolute tolerance is floored at rtol·RMS(b) (:func:`_floored_tolerance`);
    ``y0`` warm-starts an iterative solver. A reported success is checked against the
    residual recomputed here: never trusted alone."""
    options = {} if y0 is None else {"y0": y0}
    sol = lx.linear_solve(
        operator, b, _floored_tolerance(linear_solver, b), options=options, throw=False
    )
    return _checked(operator, sol.value, b, sol, linear_solver)


def _checked(operator, v, b, sol: lx.Solution, linear_solver) -> LinearSolve:
    """v with the statistics of the lineax solution ``sol``: its success is accepted only if
    the residual recomputed at v is finite and within the solver's promise."""
    r = tree_norm(_tmap(jnp.subtract, operator.mv(v), b))
    bn = tree_norm(b)
    rel = jnp.where(bn > 0, r / jnp.where(bn > 0, bn, 1.0), r)
    bound = _residual_bound(linear_solver, b, bn)
    ok = (sol.result == RESULTS.successful) & jnp.isfinite(rel) & (rel <= bound)
    steps = jnp.asarray(sol.stats.get("num_steps", jnp.asarray(1)))
    condition = jnp.asarray(jnp.nan, rel.dtype)
    if _is_direct(linear_solver):
        # A factorization reports success whatever the conditioning: a nearly singular
        # system (a duplicated column, λ = 1e-14) gave a hypergradient 1e-4 off with a
        # relative residual of 2e-3 and "success". Dense solves materialise the matrix
        # anyway; its condition number bounds the error of v (about cond·eps), and a
        # backward-stable factorization leaves a residual near eps, not 2e-3.
        eps = jnp.finfo(rel.dtype).eps
        condition = jnp.linalg.cond(operator.as_matrix()).astype(rel.dtype)
        ok = ok & (condition * eps <= MAX_CONDITION_EPS) & (rel <= jnp.sqrt(eps))
    return LinearSolve(value=v, steps=steps, residual=rel, ok=ok, condition=condition)


def solve_system_in_rule(operator: lx.AbstractLinearOperator, b, linear_solver):
    """:func:`solve_system` inside a ``custom_jvp`` rule, where the solve must stay linear in
    the tangent b (reverse mode transposes it): no tolerance floor and no recomputed
    residual (both are functions of b); lineax raises on a failed solve instead."""
    return lx.linear_solve(operator, b, linear_solver, throw=True).value


def adjoint_solve(
    problem, spec, x_star, theta, data, grad_x, *, linear_solver, mask=None, y0: Any = None
):
    """Solve Aᵀ v = ∇ₓE (restricted to ``mask``).

    Returns (the :class:`LinearSolve` of v, −(∂F/∂θ)ᵀ v)."""
    op = system_operator(problem, spec, x_star, theta, data, mask).transpose()
    b = _masked(mask, grad_x)
    sol = solve_system(op, b, linear_solver, y0=None if y0 is None else _masked(mask, y0))
    F = _residual_fn(problem, spec)
    _, vjp_theta = jax.vjp(lambda th: F(x_star, th, data), theta)
    (g,) = vjp_theta(sol.value)
    return sol, _tmap(jnp.negative, g)


def tangent_solve(problem, spec, x_star, theta_flat, unravel, data, *, linear_solver, mask=None):
    """Forward mode: Z[:, i] = −A⁻¹ ∂F/∂θ_i for each of the p hyperparameters (vmapped).

    Returns a :class:`LinearSolve` whose value is Z (a pytree with a leading axis of size p)
    and whose statistics are the worst case over the p solves."""
    F = _residual_fn(problem, spec)
    op = system_operator(problem, spec, x_star, unravel(theta_flat), data, mask)
    p = theta_flat.shape[0]

    def one(e):
        _, b = jax.jvp(lambda t: F(x_star, unravel(t), data), (theta_flat,), (e,))
        return solve_system(op, _tmap(jnp.negative, _masked(mask, b)), linear_solver)

    sols = jax.vmap(one)(jnp.eye(p, dtype=theta_flat.dtype))
    return LinearSolve(
        value=sols.value,
        steps=jnp.max(sols.steps),
        residual=jnp.max(sols.residual),
        ok=jnp.all(sols.ok),
        condition=jnp.max(sols.condition),
    )
