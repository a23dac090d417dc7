"""The support-restricted implicit hypergradient of Lasso-type problems,
:class:`SupportImplicit` (see the package docstring, :mod:`invcal.sparse`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree

from ..hypergradient import AbstractImplicitMethod
from ..implicit import (
    AbstractMode,
    LinearSolve,
    Reverse,
    _check_scaled_tolerance,
    as_mode,
    solve_system,
    solve_system_in_rule,
)
from .problem import (
    AbstractLinearMap,
    _require_lasso,
    _shape,
    lasso_fields,
    matvec,
    rmatvec,
)

__all__ = ["SupportImplicit"]


# --------------------------------------------------------------------------------------
# Support-restricted implicit hypergradient
# --------------------------------------------------------------------------------------
def _support_slots(x, K: int):
    """Indices of the nonzeros of x in K slots (padding points at 0) and the valid mask."""
    nnz = jnp.sum(x != 0)
    (idx,) = jnp.nonzero(x != 0, size=K, fill_value=0)
    valid = jnp.arange(K) < nnz
    return idx, valid, nnz > K


class _Restricted(eqx.Module):
    """The support-restricted system of one problem: H = A_SᵀA_S (+ I on empty slots)."""

    A_S: jax.Array | None
    A: object
    idx: jax.Array
    valid: jax.Array
    p: int = eqx.field(static=True)

    @classmethod
    def build(cls, A, x, K):
        idx, valid, overflow = _support_slots(x, K)
        p = _shape(A)[1]
        if isinstance(A, AbstractLinearMap):
            A_S = None
        else:
            A_S = A[:, idx] * valid[None, :].astype(A.dtype)
        return cls(A_S=A_S, A=A, idx=idx, valid=valid, p=p), overflow

    def gather(self, full):
        return jnp.where(self.valid, full[self.idx], 0.0)

    def scatter(self, u):
        return jnp.zeros(self.p, u.dtype).at[self.idx].add(jnp.where(self.valid, u, 0.0))

    def mv(self, u):
        u_valid = jnp.where(self.valid, u, 0.0)
        if self.A_S is None:
            Hu = self.gather(rmatvec(self.A, matvec(self.A, self.scatter(u_valid))))
        else:
            Hu = (self.A_S @ u_valid) @ self.A_S
        return jnp.where(self.valid, Hu, u)

    def operator(self, like):
        return lx.FunctionLinearOperator(
            self.mv, jax.eval_shape(lambda: like), (lx.symmetric_tag, lx.positive_semidefinite_tag)
        )


def _slot_sizes(K: int, fixed: bool = False) -> tuple:
    """Support slot counts :class:`SupportImplicit` compiles: K/8, K/2 and K (K alone when it
    is below 64 or set by ``max_support``). Each is one more compiled linear solve (about
    0.5 s); sparse solutions mostly fit K/8."""
    if fixed or K < 64:
        return (K,)
    return (K // 8, K // 2, K)


def _signs(x_S, nonneg):
    return jnp.ones_like(x_S) if nonneg else jnp.sign(x_S)


@eqx.filter_custom_jvp
def _support_solution(x_star, theta, data, *, fb, K, linear_solver):
    return x_star


@_support_solution.def_jvp
def _support_solution_jvp(primals, tangents, *, fb, K, linear_solver):
    x, theta, data = primals
    _, t_theta, t_data = tangents
    t_theta = jax.tree_util.tree_map(lambda _: None, theta) if t_theta is None else t_theta
    t_data = jax.tree_util.tree_map(lambda _: None, data) if t_data is None else t_data
    sys, overflow = _Restricted.build(lasso_fields(data)[0], x, K)
    p = x.shape[-1]

    def residual_S(th, d):
        # F_S = gather(Aᵀ(Ax − y)) + w_S ⊙ s_S at the fixed x* (a full-size product: one per
        # tangent, the CG iterations below use the gathered columns).
        A, y, _ = lasso_fields(d)
        full = rmatvec(A, matvec(A, x) - y)
        w = fb.penalty(th, d, p)
        return sys.gather(full + w * _signs(x, fb.nonneg))

    _, rhs = eqx.filter_jvp(residual_S, (theta, data), (t_theta, t_data))
    v = solve_system_in_rule(sys.operator(rhs), -rhs, linear_solver)
    tangent = eqx.error_if(
        sys.scatter(v),
        overflow,
        "SupportImplicit: the support of x* is larger than max_support; raise max_support.",
    )
    return x, tangent


class SupportImplicit(AbstractImplicitMethod):
    r"""Implicit hypergradient of Lasso-type problems restricted to the support of x*
    (Bertrand, Klopfenstein, Massias, Blondel, Vaiter, Gramfort & Salmon 2020/2022).

    Solves (A_SᵀA_S) v = ∇_{x_S}E (reverse) or one such system per hyperparameter entry
    (``mode="forward"``) on the gathered columns A_S — |S|-dimensional instead of p — for
    problems from :func:`lasso_problem` (plain or batched). See the module docstring.

    **Arguments**

    - ``linear_solver``: a lineax solver for the symmetric positive-definite |S|×|S| system
      (default ``lx.CG(rtol=1e-10, atol=1e-14)``); direct solvers (``lx.Cholesky()``)
      materialise it.
    - ``mode``: ``Reverse()`` (one solve; the only sensible choice for one λ per feature) or
      ``Forward()`` (:mod:`invcal.implicit`; the names ``"reverse"``/``"forward"`` too).
    - ``max_support``: number of slots K for the support (static); ``None``: the smallest
      of min(n, p)/8, min(n, p)/2 and min(n, p) that holds the support (one compiled
      branch each; see :func:`_slot_sizes`).
    - ``warm_start``: start the adjoint solve from the previous step's adjoint (off by
      default: the |S|-dimensional solve is cheap, and carrying the adjoint makes the outer
      loop compile a second time, since its first step has none).
    """

    linear_solver: lx.AbstractLinearSolver = lx.CG(rtol=1e-10, atol=1e-14, max_steps=100_000)
    mode: AbstractMode = eqx.field(
        default=Reverse(), static=True, converter=lambda m: as_mode(m, "SupportImplicit")
    )
    max_support: int | None = eqx.field(default=None, static=True)
    warm_start: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        _check_scaled_tolerance(self.linear_solver)
        if not isinstance(self.linear_solver, lx.AbstractLinearSolver):
            raise TypeError(
                "SupportImplicit linear_solver must be a lineax solver (lx.CG(rtol, atol), "
                f"lx.Cholesky(), ...); got {self.linear_solver!r}."
            )
        if self.max_support is not None and int(self.max_support) < 1:
            raise ValueError(f"SupportImplicit max_support must be >= 1; got {self.max_support!r}.")

    def check(self, problem, solver):
        _require_lasso(problem, "SupportImplicit")

    def _K(self, A):
        n, p = _shape(A)
        return min(n, p) if self.max_support is None else min(int(self.max_support), p)

    def _linear(self, linear_tol):
        lin = self.linear_solver
        if linear_tol is not None and hasattr(lin, "rtol"):
            lin = eqx.tree_at(lambda s: s.rtol, lin, linear_tol)
        return lin

    def solution(self, problem, theta, solver, x0):
        fb, batched = _require_lasso(problem, "SupportImplicit")
        sol = solver.solve(problem, x0, theta)
        x = eqx.error_if(
            sol.x,
            ~sol.converged,
            "invcal.solve: the inner solve did not reach its tolerance; the implicit "
            "derivative would be wrong. Raise the solver's max_steps or loosen its tol.",
        )
        x = jax.lax.stop_gradient(x)
        K = self._K(lasso_fields(problem.data)[0])

        def one(x, d):
            return _support_solution(x, theta, d, fb=fb, K=K, linear_solver=self.linear_solver)

        if batched:
            return jax.vmap(one)(x, problem.data)
        return one(x, problem.data)

    def implicit_term(self, problem, x, theta, gx, adjoint0, linear_tol):
        fb, batched = _require_lasso(problem, "SupportImplicit")
        data = problem.data
        lin = self._linear(linear_tol)
        p = x.shape[-1]
        # The support's slots: the smallest of a few static sizes that holds the largest
        # support (of all folds), one compiled branch each. A linear solve on K slots costs
        # n·K per iteration, and the default K = min(n, p) is far above a typical support
        # (diabetes: 30 of 247 slots; 2.1 → 0.9 ms for the whole computation).
        sizes = _slot_sizes(self._K(lasso_fields(data)[0]), fixed=self.max_support is not None)
        nnz = jnp.max(jnp.sum(x != 0, axis=-1))
        level = jnp.minimum(jnp.sum(jnp.asarray(sizes) < nnz), len(sizes) - 1)

        def signed_weights(th, d, sys, x):
            # w_S(θ) ⊙ s_S: the only θ-dependent part of F_S.
            return sys.gather(fb.penalty(th, d, p) * _signs(x, fb.nonneg))

        if isinstance(self.mode, Reverse):
            v0 = adjoint0 if (self.warm_start and adjoint0 is not None) else None

            def reverse(K):
                def adjoint(x, g, d, v0):
                    sys, overflow = _Restricted.build(d["A"], x, K)
                    b = sys.gather(g)
                    y0 = None if v0 is None else sys.gather(v0)
                    s = solve_system(sys.operator(b), b, lin, y0=y0)
                    return s.value, sys, s.steps, s.residual, s.ok & ~overflow

                def run():
                    if batched:
                        axes = (0, 0, 0, None if v0 is None else 0)
                        V, sys, steps, rel, ok = jax.vmap(adjoint, in_axes=axes)(x, gx, data, v0)

                        def phi(th):
                            ws = jax.vmap(lambda d, s, xx: signed_weights(th, d, s, xx))(
                                data, sys, x
                            )
                            return jnp.sum(V * ws)

                        v_full = jax.vmap(lambda s, v: s.scatter(v))(sys, V)
                        steps, rel, ok = jnp.max(steps), jnp.max(rel), jnp.all(ok)
                    else:
                        V, sys, steps, rel, ok = adjoint(x, gx, data, v0)

                        def phi(th):
                            return jnp.vdot(V, signed_weights(th, data, sys, x))

                        v_full = sys.scatter(V)
                    return jax.grad(phi)(theta), v_full, jnp.asarray(steps), rel, ok

                return run

            g_impl, v_full, steps, rel, ok = jax.lax.switch(level, [reverse(K) for K in sizes])
            term = jax.tree_util.tree_map(jnp.negative, g_impl)
            adjoint_out = v_full if self.warm_start else None
        else:
            flat, unravel = ravel_pytree(theta)

            def forward(K):
                def tangents(x, g, d):
                    sys, overflow = _Restricted.build(d["A"], x, K)
                    op = sys.operator(sys.gather(g))

                    def one(e):
                        _, b = jax.jvp(
                            lambda t: signed_weights(unravel(t), d, sys, x), (flat,), (e,)
                        )
                        s = solve_system(op, -b, lin)
                        return jnp.vdot(sys.gather(g), s.value), s.steps, s.residual, s.ok

                    dE, st, rl, k = jax.vmap(one)(jnp.eye(flat.shape[0], dtype=flat.dtype))
                    return dE, jnp.max(st), jnp.max(rl), jnp.all(k) & ~overflow

                def run():
                    if batched:
                        dE, steps, rel, ok = jax.vmap(tangents)(x, gx, data)
                        return jnp.sum(dE, 0), jnp.max(steps), jnp.max(rel), jnp.all(ok)
                    return tangents(x, gx, data)

                return run

            dE, steps, rel, ok = jax.lax.switch(level, [forward(K) for K in sizes])
            term = unravel(dE)
            v_full, adjoint_out = None, adjoint0
        stats = LinearSolve(value=v_full, steps=jnp.asarray(steps), residual=rel, ok=ok)
        return term, stats, adjoint_out
