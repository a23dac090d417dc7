"""The implicit core: the Lasso on its support, the symmetric/non-symmetric system checks,
derivatives with respect to the data, and the Neumann solver.

Oracle: on a fixed support S with signs s the Lasso solution is
x_S = (A_SᵀA_S)⁻¹(A_Sᵀb − λs), x_{S^c} = 0, differentiable in λ and b.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic
from invcal.implicit import SystemSpec, _checked, adjoint_solve, system_operator, system_spec

N, P, M = 20, 8, 15
LAM = 5.0
TOL = dict(rtol=1e-12, atol=1e-14)

_rng = np.random.default_rng(0)
A = jnp.asarray(_rng.normal(size=(N, P)))
X_TRUE = np.zeros(P)
X_TRUE[:3] = [2.0, -1.5, 1.0]
B = A @ X_TRUE + 0.1 * jnp.asarray(_rng.normal(size=N))
C = jnp.asarray(_rng.normal(size=(M, P)))
D = C @ X_TRUE + 0.1 * jnp.asarray(_rng.normal(size=M))
LIP = float(jnp.linalg.norm(A, 2) ** 2)


def soft_threshold(z, t):
    return jnp.sign(z) * jnp.maximum(jnp.abs(z) - t, 0.0)


def forward_backward(x, theta, data):
    """T(x) = prox_{λ/L ‖·‖₁}(x − ∇f(x)/L) for f = ½‖Ax − b‖²."""
    a, b, _, _ = data
    return soft_threshold(x - a.T @ (a @ x - b) / LIP, theta["lam"] / LIP)


def support(x, theta, data):
    return x != 0


def criterion(x, theta, data):
    _, _, c, d = data
    return 0.5 * jnp.sum((c @ x - d) ** 2)


def lasso(**overrides):
    kwargs = dict(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        criterion=criterion,
        x0=jnp.zeros(P),
        data=(A, B, C, D),
        fixed_point=forward_backward,
        support=support,
        symmetric=True,
        name="lasso",
    )
    return ic.Problem(**(kwargs | overrides))


PROBLEM = lasso()
BARE = lasso(support=None, symmetric=False)  # the prox fixed point, nothing declared
SOLVER = ic.FISTA(tol=1e-12)
THETA = {"lam": jnp.asarray(LAM)}

_X_STAR = SOLVER.solve(PROBLEM, PROBLEM.x0, THETA).x
S = np.flatnonzero(np.asarray(_X_STAR))
SIGNS = jnp.sign(_X_STAR[S])


def closed_form_x(lam, b=B):
    a_s = A[:, S]
    x_s = jnp.linalg.solve(a_s.T @ a_s, a_s.T @ b - lam * SIGNS)
    return jnp.zeros(P).at[S].set(x_s)


def closed_form_value(lam):
    return criterion(closed_form_x(lam), None, PROBLEM.data)


G_EXACT = float(jax.grad(closed_form_value)(LAM))


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_oracle_support_is_nontrivial():
    # Three active coefficients, and the closed form is the FISTA solution.
    assert S.tolist() == [0, 1, 2]
    np.testing.assert_allclose(_X_STAR, closed_form_x(LAM), atol=1e-11)


LASSO_METHODS = {
    "CG,active_set": ic.Implicit(lx.CG(**TOL), active_set=True),
    "GMRES,active_set": ic.Implicit(lx.GMRES(**TOL), active_set=True),
    "CG,active_set,forward": ic.Implicit(lx.CG(**TOL), active_set=True, mode="forward"),
    # The full (non-symmetric) prox fixed point is also right with a solver that does not
    # need symmetry. Before the fix, the problem's symmetric=True (meant for the support)
    # tagged this system symmetric and GMRES returned 2.007 instead of 1.918.
    "GMRES,full": ic.Implicit(lx.GMRES(**TOL)),
    "Normal(CG),full": ic.Implicit(lx.Normal(lx.CG(**TOL))),
}


@functools.cache
def _lasso_check(name):
    return ic.check_hypergradient(PROBLEM, THETA, LASSO_METHODS[name], solver=SOLVER, eps=1e-4)


# Measured: 1.3e-12 relative to the closed form for each; 7.1e-9 to finite differences.
@pytest.mark.parametrize("name", list(LASSO_METHODS))
def test_lasso_matches_closed_form_and_finite_differences(name):
    hg = ic.hypergradient(PROBLEM, THETA, solver=SOLVER, method=LASSO_METHODS[name])
    assert _rel(hg.grad["lam"], G_EXACT) < 1e-9
    assert _lasso_check(name).relative_error <= 1e-6


def test_lasso_grad_of_solve_on_the_active_set():
    method = LASSO_METHODS["CG,active_set"]

    @jax.jit
    def derivs(lam):
        def f(t):
            theta = {"lam": t}
            x = ic.solve(PROBLEM, theta, solver=SOLVER, method=method)
            return criterion(x, theta, PROBLEM.data)

        return jax.grad(f)(lam), jax.jacfwd(f)(lam)

    g_rev, g_fwd = derivs(LAM)
    assert _rel(g_rev, G_EXACT) < 1e-9
    assert _rel(g_fwd, G_EXACT) < 1e-9
    # Empty support (λ above ‖Aᵀb‖∞): x* = 0 and the hypergradient is exactly 0.
    big = 2.0 * float(jnp.max(jnp.abs(A.T @ B)))
    g_rev, g_fwd = derivs(big)
    assert float(g_rev) == 0.0 and float(g_fwd) == 0.0


@pytest.mark.parametrize("name", ["CG,active_set", "GMRES,active_set", "CG,active_set,forward"])
def test_lasso_empty_support(name):
    big = 2.0 * float(jnp.max(jnp.abs(A.T @ B)))
    hg = ic.hypergradient(PROBLEM, {"lam": big}, solver=SOLVER, method=LASSO_METHODS[name])
    assert not np.any(np.asarray(hg.x))
    assert float(hg.grad["lam"]) == 0.0
    assert bool(hg.diagnostics.converged)
    assert float(hg.diagnostics.linear_residual) == 0.0


# --------------------------------------------------------------------------------------
# CG needs a symmetric system: refused where the system is not
# --------------------------------------------------------------------------------------
def test_plain_cg_on_prox_fixed_point_is_refused():
    cg = ic.Implicit(lx.CG(**TOL))
    # No support declared: the trap DESIGN.md records (CG gave 2.51 instead of 0.1734).
    with pytest.raises(ValueError, match="needs a symmetric system.*fixed-point map"):
        ic.hypergradient(BARE, THETA, solver=SOLVER, method=cg)
    with pytest.raises(ValueError, match="lx.Normal\\(lx.CG"):
        ic.solve(BARE, THETA, solver=SOLVER, method=cg)
    # Support declared but not used: symmetric=True holds on the support only.
    with pytest.raises(ValueError, match="active_set=True"):
        ic.hypergradient(PROBLEM, THETA, solver=SOLVER, method=cg)
    # Refused before any work, whatever the mode.
    with pytest.raises(ValueError, match="symmetric"):
        ic.Implicit(lx.CG(**TOL), mode="forward").check(BARE, SOLVER)


def test_system_spec_symmetry():
    cg, gmres, normal = lx.CG(**TOL), lx.GMRES(**TOL), lx.Normal(lx.CG(**TOL))
    assert system_spec(PROBLEM, cg, None, active_set=True).symmetric
    assert not system_spec(PROBLEM, gmres, None, active_set=False).symmetric
    assert not system_spec(BARE, gmres, None).symmetric
    # lx.Normal(lx.CG) solves AᵀA v = Aᵀb: fine for a non-symmetric system.
    spec = system_spec(BARE, normal, None)
    assert spec.use_fixed_point and not spec.symmetric
    # The deprecated lx.NormalCG builds the same thing.
    with pytest.warns(DeprecationWarning):
        legacy = lx.NormalCG(**TOL)
    assert not system_spec(BARE, legacy, None).symmetric
    # A Hessian is symmetric whatever the declaration.
    smooth = lasso(
        fixed_point=None,
        support=None,
        symmetric=False,
        objective=lambda x, th, d: 0.5 * jnp.sum((d[0] @ x - d[1]) ** 2) + th["lam"] * x @ x,
    )
    assert system_spec(smooth, cg, None).symmetric
    with pytest.raises(ValueError, match="system must be"):
        system_spec(PROBLEM, gmres, "bogus")
    with pytest.raises(ValueError, match="has no fixed_point"):
        system_spec(smooth, gmres, "fixed_point")
    with pytest.raises(ValueError, match="neither optimality= nor objective="):
        system_spec(PROBLEM, gmres, "optimality")


def test_default_linear_solver_follows_the_system():
    assert isinstance(ic.Implicit(active_set=True)._linear(PROBLEM), lx.CG)
    assert isinstance(ic.Implicit()._linear(PROBLEM), lx.GMRES)
    assert isinstance(ic.Implicit()._linear(BARE), lx.GMRES)


def test_active_set_needs_a_support():
    with pytest.raises(ValueError, match="needs problem 'lasso' to define support="):
        ic.hypergradient(
            lasso(support=None), THETA, solver=SOLVER, method=ic.Implicit(active_set=True)
        )


def test_linear_tol_reaches_the_solver_inside_normal():
    method = ic.Implicit(lx.Normal(lx.CG(rtol=1e-12, atol=1e-14)))
    assert method._linear(PROBLEM, 1e-3).inner_solver.rtol == 1e-3
    assert ic.Implicit(lx.GMRES(**TOL))._linear(PROBLEM, 1e-3).rtol == 1e-3
    assert isinstance(ic.Implicit(lx.LU())._linear(PROBLEM, 1e-3), lx.LU)  # direct: no tol
    steps = [
        int(
            ic.hypergradient(
                PROBLEM, THETA, solver=SOLVER, method=method, linear_tol=t, on_failure="record"
            ).diagnostics.linear_steps
        )
        for t in (1e-12, 1e-2)
    ]
    assert steps[1] < steps[0]


@pytest.mark.parametrize(
    "linear_solver",
    [lx.CG(rtol=1e-10, atol=0.0), lx.Normal(lx.GMRES(rtol=1e-10, atol=0)), lx.BiCGStab(1e-10, 0.0)],
    ids=["CG", "Normal(GMRES)", "BiCGStab"],
)
def test_krylov_solvers_with_zero_atol_are_refused(linear_solver):
    method = ic.Implicit(linear_solver, active_set=True)
    with pytest.raises(ValueError, match=r"atol=0\) cannot be trusted.*Pass atol > 0"):
        ic.hypergradient(PROBLEM, THETA, solver=SOLVER, method=method)


def test_a_reported_success_is_checked_against_the_recomputed_residual():
    # A lineax result "successful" is not trusted alone: the residual of the returned value,
    # recomputed, must be within the solver's tolerance (a wrong value here: zero).
    spec = SystemSpec(use_fixed_point=True, symmetric=True)
    mask = support(_X_STAR, THETA, PROBLEM.data)
    grad_x = jax.grad(criterion)(_X_STAR, THETA, PROBLEM.data)
    op = system_operator(PROBLEM, spec, _X_STAR, THETA, PROBLEM.data, mask).transpose()
    b = jnp.where(mask, grad_x, 0.0)
    lin = lx.CG(rtol=1e-10, atol=1e-14, max_steps=1000)
    sol = lx.linear_solve(op, b, lin)
    checked = _checked(op, sol.value, b, sol, lin)
    assert float(checked.residual) < 1e-9 and bool(checked.ok)
    checked = _checked(op, jnp.zeros_like(b), b, sol, lin)
    assert float(checked.residual) > 1e-3 and not bool(checked.ok)


@pytest.mark.parametrize("atol", [0.0, 1e-14, 1e-300])
def test_the_absolute_tolerance_is_floored_at_rtol_times_the_rms_of_b(atol):
    # b is 0 off the support: with lineax's elementwise test |r_i| <= atol + rtol·|b_i|, an
    # atol of 0 read 0/0 as converged after one step, and a tiny atol asks an absolute
    # residual below the rounding floor (CG then breaks down). adjoint_solve and
    # tangent_solve floor atol at rtol·‖b‖/√n, so every atol gives a true solution.
    spec = SystemSpec(use_fixed_point=True, symmetric=True)
    mask = support(_X_STAR, THETA, PROBLEM.data)
    grad_x = jax.grad(criterion)(_X_STAR, THETA, PROBLEM.data)
    sol, _ = adjoint_solve(
        PROBLEM,
        spec,
        _X_STAR,
        THETA,
        PROBLEM.data,
        grad_x,
        linear_solver=lx.CG(rtol=1e-10, atol=atol, max_steps=1000),
        mask=mask,
    )
    assert float(sol.residual) < 1e-9 and bool(sol.ok)
    assert int(sol.steps) <= int(mask.sum()) + 2


def test_implicit_refuses_fixed_step_solutions():
    with pytest.raises(ValueError, match="FixedSteps\\(50\\) stops after a fixed number"):
        ic.hypergradient(PROBLEM, THETA, solver=ic.FixedSteps(50), method=ic.Implicit())
    schedule = lasso(fixed_steps=True)
    with pytest.raises(ValueError, match="fixed_steps=True.*Unrolled"):
        ic.hypergradient(schedule, THETA, solver=ic.FixedSteps(50), method=ic.Implicit())


# --------------------------------------------------------------------------------------
# Derivatives with respect to the data (SURE needs the divergence of x*(y))
# --------------------------------------------------------------------------------------
def _with_observations(problem, y):
    return eqx.tree_at(lambda p: p.data[1], problem, y)


def _x_of_observations(method):
    def x_of(y):
        return ic.solve(_with_observations(PROBLEM, y), THETA, solver=SOLVER, method=method)

    return x_of


_U = jnp.asarray(np.random.default_rng(1).normal(size=N))


def test_lasso_derivatives_with_respect_to_observations():
    # On a fixed support dx*/db = (A_SᵀA_S)⁻¹A_Sᵀ, and tr(A dx*/db) = |S| (the Lasso's
    # degrees of freedom, what SURE estimates by a Monte-Carlo JVP).
    x_of = _x_of_observations(LASSO_METHODS["CG,active_set"])
    w = jnp.asarray(np.random.default_rng(2).normal(size=P))

    @jax.jit
    def derivs(y):
        _, tangent = jax.jvp(x_of, (y,), (_U,))
        _, vjp = jax.vjp(x_of, y)
        return tangent, vjp(w)[0], jnp.trace(A @ jax.jacfwd(x_of)(y))

    tangent, cotangent, dof = derivs(B)
    ref_t = jax.jvp(lambda y: closed_form_x(LAM, y), (B,), (_U,))[1]
    ref_c = jax.vjp(lambda y: closed_form_x(LAM, y), B)[1](w)[0]
    np.testing.assert_allclose(tangent, ref_t, rtol=0, atol=1e-11)
    np.testing.assert_allclose(cotangent, ref_c, rtol=0, atol=1e-11)
    assert float(dof) == pytest.approx(len(S), abs=1e-9)


def test_lasso_jvp_with_respect_to_observations_on_the_full_system():
    x_of = _x_of_observations(LASSO_METHODS["GMRES,full"])
    tangent = jax.jit(lambda y: jax.jvp(x_of, (y,), (_U,))[1])(B)
    ref = jax.jvp(lambda y: closed_form_x(LAM, y), (B,), (_U,))[1]
    np.testing.assert_allclose(tangent, ref, rtol=0, atol=1e-11)


def test_ridge_derivative_with_respect_to_observations():
    def objective(x, theta, data):
        a, b, _, _ = data
        return 0.5 * jnp.sum((a @ x - b) ** 2) + 0.5 * theta["lam"] * x @ x

    ridge = lasso(fixed_point=None, support=None, symmetric=False, objective=objective)
    u = jnp.asarray(np.random.default_rng(3).normal(size=N))

    def x_of(y):
        return ic.solve(
            _with_observations(ridge, y), THETA, solver=ic.Newton(), method=ic.Implicit()
        )

    def x_closed(y):
        return jnp.linalg.solve(A.T @ A + LAM * jnp.eye(P), A.T @ y)

    tangent = jax.jit(lambda y: jax.jvp(x_of, (y,), (u,))[1])(B)
    np.testing.assert_allclose(tangent, jax.jvp(x_closed, (B,), (u,))[1], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# Neumann series
# --------------------------------------------------------------------------------------
def test_neumann_series_solves_a_contraction_system():
    mat = jnp.eye(4) - 0.3 * jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (4, 4)))
    b = jnp.arange(1.0, 5.0)
    op = lx.MatrixLinearOperator(mat)
    sol = lx.linear_solve(op, b, ic.NeumannSeries(200, rtol=1e-12), throw=False)
    assert sol.result == lx.RESULTS.successful
    np.testing.assert_allclose(sol.value, jnp.linalg.solve(mat, b), rtol=1e-10)
    # It stops once the residual is within tolerance, well before the 200 terms allowed.
    steps = int(sol.stats["num_steps"])
    assert 5 < steps < 200
    tighter = lx.linear_solve(op, b, ic.NeumannSeries(200, rtol=1e-13), throw=False)
    assert int(tighter.stats["num_steps"]) > steps
    short = lx.linear_solve(op, b, ic.NeumannSeries(2, rtol=1e-12), throw=False)
    assert short.result != lx.RESULTS.successful
    # A fixed number of terms accepted as an approximation, even for b = 0 (no inf·0 = nan).
    for rhs in (b, jnp.zeros(4)):
        approx = lx.linear_solve(op, rhs, ic.NeumannSeries(2, rtol=float("inf")), throw=False)
        assert approx.result == lx.RESULTS.successful
        assert int(approx.stats["num_steps"]) == 2
    # Three terms from zero: v3 = v2 + (b − A v2) with v2 = 2b − Ab.
    three = lx.linear_solve(op, b, ic.NeumannSeries(3, rtol=float("inf")), throw=False).value
    v2 = 2 * b - mat @ b
    np.testing.assert_allclose(three, v2 + (b - mat @ v2), rtol=1e-14)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_terms=0), "num_terms must be >= 1"),
        (dict(step=0.0), "step must be > 0"),
        (dict(rtol=-1.0), "tolerances must be >= 0"),
    ],
)
def test_neumann_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ic.NeumannSeries(**kwargs)


def test_mode_and_system_objects_are_what_their_names_say():
    from invcal.implicit import ActiveSet, FixedPointSystem, Forward, Reverse

    lin = lx.GMRES(rtol=1e-12, atol=1e-14, max_steps=10_000)
    for mode_obj, mode_name in ((Reverse(), "reverse"), (Forward(), "forward")):
        by_object = ic.Implicit(lin, mode=mode_obj, system=ActiveSet(FixedPointSystem()))
        by_name = ic.Implicit(lin, mode=mode_name, active_set=True, system="fixed_point")
        assert by_object == by_name
        a = ic.hypergradient(PROBLEM, THETA, solver=SOLVER, method=by_object)
        b = ic.hypergradient(PROBLEM, THETA, solver=SOLVER, method=by_name)
        assert float(a.grad["lam"]) == float(b.grad["lam"])
    with pytest.raises(ValueError, match="mode must be 'reverse' or 'forward'"):
        ic.Implicit(mode="sideways")


def test_the_old_name_of_the_neumann_series_solver_still_works_and_says_so():
    with pytest.warns(DeprecationWarning, match="invcal.NeumannSeries"):
        old = ic.Neumann
    assert old is ic.NeumannSeries
