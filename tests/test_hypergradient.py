"""Hypergradient methods against closed forms and finite differences.

Oracle: ridge regression, x*(λ) = (AᵀA + λI)⁻¹Aᵀb, E = ½‖Cx* − d‖², whose dE/dλ is
``jax.grad`` of the closed form. A consistency matrix (as diffrax's ``test_adjoint.py`` does
for ODE adjoints) runs every method with every inner solver it applies to and compares each
with the closed form and with central finite differences (``check_hypergradient``).
"""

import functools

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic

N, P, M = 30, 10, 20
LAM = 2.0
TOL = dict(rtol=1e-12, atol=1e-14)

_rng = np.random.default_rng(0)
A = jnp.asarray(_rng.normal(size=(N, P)))
B = jnp.asarray(_rng.normal(size=N))
C = jnp.asarray(_rng.normal(size=(M, P)))
D = jnp.asarray(_rng.normal(size=M))
LIP = float(jnp.linalg.norm(A, 2) ** 2)


def objective(x, theta, data):
    a, b, _, _ = data
    return 0.5 * jnp.sum((a @ x - b) ** 2) + 0.5 * jnp.sum(theta["lam"] * x**2)


def gradient_step(x, theta, data):
    # Step 1/(L + max λ): a contraction for every λ > 0, scalar or per coefficient.
    return x - jax.grad(objective)(x, theta, data) / (LIP + jnp.max(theta["lam"]))


def criterion(x, theta, data):
    _, _, c, d = data
    return 0.5 * jnp.sum((c @ x - d) ** 2)


def ridge(lam_init=1.0, **overrides):
    kwargs = dict(
        space=ic.Space(lam=ic.Param(lam_init, ic.Log())),
        criterion=criterion,
        x0=jnp.zeros(P),
        data=(A, B, C, D),
        objective=objective,
        fixed_point=gradient_step,
        name="ridge",
    )
    return ic.Problem(**(kwargs | overrides))


def closed_form_x(lam, b=B):
    lam = jnp.broadcast_to(lam, (P,))
    return jnp.linalg.solve(A.T @ A + jnp.diag(lam), A.T @ b)


def closed_form_value(lam):
    return criterion(closed_form_x(lam), None, (A, B, C, D))


PROBLEM = ridge()
THETA = {"lam": jnp.asarray(LAM)}
G_EXACT = float(jax.grad(closed_form_value)(LAM))

SOLVERS = {
    "FISTA": ic.FISTA(tol=1e-13),
    "FixedPointIteration": ic.FixedPointIteration(tol=1e-13),
    "Newton": ic.Newton(tol=1e-13),
}
METHODS = {
    "Implicit[CG]": ic.Implicit(lx.CG(**TOL)),
    "Implicit[GMRES,fixed_point]": ic.Implicit(lx.GMRES(**TOL), system="fixed_point"),
    "Implicit[Normal(CG)]": ic.Implicit(lx.Normal(lx.CG(**TOL))),
    "Implicit[BiCGStab]": ic.Implicit(lx.BiCGStab(**TOL)),
    "Implicit[LU]": ic.Implicit(lx.LU()),
    "Implicit[Neumann]": ic.Implicit(ic.NeumannSeries(1000, rtol=1e-12)),
    "Implicit[default]": ic.Implicit(),
    "Implicit[CG,forward]": ic.Implicit(lx.CG(**TOL), mode="forward"),
    "Implicit[default,forward]": ic.Implicit(mode="forward"),
    "Unrolled": ic.Unrolled(600),
    "ForwardUnrolled": ic.ForwardUnrolled(600),
    "Unrolled[20]": ic.Unrolled(20),
}
# Every linear solver with one inner solver; the method families with every inner solver
# (the inner solver only changes x*, and compiling each cell costs about a second).
CELLS = [("FISTA", m) for m in METHODS if not m.startswith(("Implicit[default", "Unrolled[20"))]
CELLS += [
    ("FixedPointIteration", "Implicit[default]"),
    ("FixedPointIteration", "Unrolled"),
    ("FixedPointIteration", "ForwardUnrolled"),
    ("Newton", "Implicit[default]"),
    ("Newton", "Implicit[default,forward]"),
    # Newton converges in a few steps, so 20 unrolled steps are already exact.
    pytest.param("Newton", "Unrolled[20]", marks=pytest.mark.slow),
]


@functools.cache
def _hypergradient(solver_name, method_name):
    return ic.hypergradient(
        PROBLEM, THETA, solver=SOLVERS[solver_name], method=METHODS[method_name]
    )


@functools.cache
def _check(solver_name, method_name):
    return ic.check_hypergradient(
        PROBLEM, THETA, METHODS[method_name], solver=SOLVERS[solver_name], eps=1e-4
    )


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Measured relative errors (float64): implicit methods 4e-16 .. 7e-13 to the closed form
# (limited by the inner tolerance), unrolled ones 0 .. 4e-16; against finite differences
# (eps = 1e-4 in z) 2.6e-10 .. 3.3e-10, the differences' own error.
@pytest.mark.parametrize("solver_name,method_name", CELLS)
def test_matches_closed_form(solver_name, method_name):
    hg = _hypergradient(solver_name, method_name)
    assert bool(hg.diagnostics.converged)
    assert _rel(hg.grad["lam"], G_EXACT) < 1e-9
    assert float(hg.value) == pytest.approx(float(closed_form_value(LAM)), rel=1e-12)
    np.testing.assert_allclose(hg.x, closed_form_x(LAM), rtol=0, atol=1e-11)


@pytest.mark.parametrize("solver_name,method_name", CELLS)
def test_matches_finite_differences(solver_name, method_name):
    result = _check(solver_name, method_name)
    assert result.relative_error <= 1e-6, result.as_dict()
    assert result.diagnostics["inner_converged"] and result.diagnostics["linear_converged"]


def test_forward_mode_equals_reverse_mode():
    for solver_name, (fwd, rev) in [
        ("FISTA", ("Implicit[CG,forward]", "Implicit[CG]")),
        ("FISTA", ("ForwardUnrolled", "Unrolled")),
        ("Newton", ("Implicit[default,forward]", "Implicit[default]")),
    ]:
        g_fwd = _hypergradient(solver_name, fwd).grad["lam"]
        g_rev = _hypergradient(solver_name, rev).grad["lam"]
        assert abs(float(g_fwd - g_rev)) <= 1e-10 * abs(float(g_rev))


def test_default_linear_solver_is_cg_for_a_hessian_and_gmres_for_a_fixed_point():
    assert isinstance(ic.Implicit()._linear(PROBLEM), lx.CG)
    assert isinstance(ic.Implicit(system="fixed_point")._linear(PROBLEM), lx.GMRES)
    fp_only = ridge(objective=None)
    assert isinstance(ic.Implicit()._linear(fp_only), lx.GMRES)


# --------------------------------------------------------------------------------------
# jax.grad / jax.jacfwd of a function of ic.solve(...) equal ic.hypergradient(...)
# --------------------------------------------------------------------------------------
SOLVE_CASES = [
    ("FISTA", "Implicit[CG]"),
    pytest.param("FISTA", "Implicit[GMRES,fixed_point]", marks=pytest.mark.slow),
    ("FISTA", "Implicit[Normal(CG)]"),
    pytest.param("FISTA", "Implicit[Neumann]", marks=pytest.mark.slow),
    ("Newton", "Implicit[LU]"),
    ("FixedPointIteration", "Unrolled"),
    ("FixedPointIteration", "ForwardUnrolled"),
]


def _solve_objective(solver, method, problem=PROBLEM):
    def f(lam):
        theta = {"lam": lam}
        x = ic.solve(problem, theta, solver=solver, method=method)
        return problem.criterion(x, theta, problem.data)

    return f


@functools.cache
def _grad_and_jacfwd(solver_name, method_name):
    f = _solve_objective(SOLVERS[solver_name], METHODS[method_name])
    # One compilation for both transformations.
    return jax.jit(lambda t: (jax.grad(f)(t), jax.jacfwd(f)(t)))


@pytest.mark.parametrize("solver_name,method_name", SOLVE_CASES)
def test_grad_and_jacfwd_of_solve_equal_hypergradient(solver_name, method_name):
    g_rev, g_fwd = _grad_and_jacfwd(solver_name, method_name)(jnp.asarray(LAM))
    g_explicit = float(_hypergradient(solver_name, method_name).grad["lam"])
    assert abs(float(g_rev) - g_explicit) <= 1e-10 * abs(g_explicit)
    assert abs(float(g_fwd) - g_explicit) <= 1e-10 * abs(g_explicit)
    assert _rel(g_rev, G_EXACT) < 1e-9


def test_eager_grad_of_solve():
    # Outside jit too (the solution is compiled once and reused across calls).
    f = _solve_objective(SOLVERS["FISTA"], METHODS["Implicit[CG]"])
    g = jax.grad(f)
    assert _rel(g(LAM), G_EXACT) < 1e-9
    g3 = float(jax.grad(closed_form_value)(3.0))
    assert _rel(g(3.0), g3) < 1e-9


def test_truncated_error_decreases_with_k():
    solver = SOLVERS["FixedPointIteration"]
    errors = []
    for k in (1, 8, 64):
        hg = ic.hypergradient(PROBLEM, THETA, solver=solver, method=ic.Truncated(300, k=k))
        errors.append(abs(float(hg.grad["lam"]) - G_EXACT) / abs(G_EXACT))
    # Measured: 0.71, 0.13, 3.8e-6 (the bias decays like the contraction factor to the k).
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.1 and errors[2] < 1e-5, errors


def test_warm_start_reuses_solution_and_adjoint():
    solver, method = SOLVERS["FISTA"], METHODS["Implicit[CG]"]
    cold = _hypergradient("FISTA", "Implicit[CG]")
    warm = ic.hypergradient(PROBLEM, THETA, solver=solver, method=method, warm=cold)
    assert int(warm.diagnostics.inner_steps) < int(cold.diagnostics.inner_steps)
    assert int(warm.diagnostics.linear_steps) < int(cold.diagnostics.linear_steps)
    assert _rel(warm.grad["lam"], G_EXACT) < 1e-9


# --------------------------------------------------------------------------------------
# Array-valued hyperparameters: one λ per coefficient, reverse mode
# --------------------------------------------------------------------------------------
LAM_VEC = jnp.linspace(0.5, 3.0, P)


@pytest.fixture(scope="module")
def vector_problem():
    return ridge(lam_init=np.ones(P))


@pytest.mark.parametrize(
    "solver_name,method",
    [("FISTA", ic.Implicit(lx.CG(**TOL))), ("FixedPointIteration", ic.Unrolled(600))],
    ids=["Implicit[CG]", "Unrolled"],
)
def test_vector_hyperparameter_reverse_mode(vector_problem, solver_name, method):
    theta = {"lam": LAM_VEC}
    hg = ic.hypergradient(vector_problem, theta, solver=SOLVERS[solver_name], method=method)
    exact = jax.grad(closed_form_value)(LAM_VEC)
    assert hg.grad["lam"].shape == (P,)
    assert _rel(hg.grad["lam"], exact) < 1e-9
    if solver_name == "FISTA" and isinstance(method.linear_solver, lx.CG):
        check = ic.check_hypergradient(
            vector_problem, theta, method, solver=SOLVERS[solver_name], eps=1e-4
        )
        assert check.relative_error <= 1e-6
        assert check.gradient.shape == (P,)


# --------------------------------------------------------------------------------------
# jit and vmap
# --------------------------------------------------------------------------------------
LAMS = jnp.logspace(-1, 1, 16)


@pytest.fixture(scope="module")
def loop_reference():
    solver, method = SOLVERS["FISTA"], METHODS["Implicit[CG]"]
    return np.array(
        [
            float(ic.hypergradient(PROBLEM, {"lam": t}, solver=solver, method=method).grad["lam"])
            for t in LAMS
        ]
    )


def test_loop_reference_is_right(loop_reference):
    exact = jax.jit(jax.vmap(jax.grad(closed_form_value)))(LAMS)
    assert _rel(loop_reference, exact) < 1e-9


def test_vmap_of_hypergradient(loop_reference):
    solver, method = SOLVERS["FISTA"], METHODS["Implicit[CG]"]

    def g(t):
        return ic.hypergradient(PROBLEM, {"lam": t}, solver=solver, method=method).grad["lam"]

    batched = jax.vmap(g)(LAMS)
    np.testing.assert_allclose(batched, loop_reference, rtol=1e-10, atol=0)


def test_vmap_of_grad_of_solve(loop_reference):
    f = _solve_objective(SOLVERS["FISTA"], METHODS["Implicit[CG]"])
    batched = jax.jit(jax.vmap(jax.grad(f)))(LAMS)
    np.testing.assert_allclose(batched, loop_reference, rtol=1e-10, atol=0)


def test_grad_of_vmap_of_solve(loop_reference):
    f = _solve_objective(SOLVERS["FISTA"], METHODS["Implicit[CG]"])
    g = jax.jit(jax.grad(lambda ts: jnp.sum(jax.vmap(f)(ts))))(LAMS)
    np.testing.assert_allclose(g, loop_reference, rtol=1e-10, atol=0)


def test_jit_of_grad_of_solve(loop_reference):
    derivs = _grad_and_jacfwd("FISTA", "Implicit[CG]")  # jax.jit(grad and jacfwd)
    for i in (0, 7, 15):
        g_rev, g_fwd = derivs(LAMS[i])
        assert abs(float(g_rev) - loop_reference[i]) <= 1e-10 * abs(loop_reference[i])
        assert abs(float(g_fwd) - loop_reference[i]) <= 1e-10 * abs(loop_reference[i])


# --------------------------------------------------------------------------------------
# Compilation is reused across outer steps
# --------------------------------------------------------------------------------------
def test_hypergradient_compiles_once_across_outer_steps():
    traces = []

    def counting_criterion(x, theta, data):
        traces.append(1)  # runs only while tracing
        return criterion(x, theta, data)

    problem = ridge(criterion=counting_criterion)
    solver, method = SOLVERS["FISTA"], METHODS["Implicit[CG]"]
    hg = None
    # A Python float, a NumPy scalar, an int and an array; cold then warm; default and
    # explicit inner tolerances: one trace for all of them.
    for lam, tol in [(2.0, None), (np.float64(3.0), None), (1, 1e-12), (jnp.asarray(2.5), 1e-11)]:
        hg = ic.hypergradient(problem, {"lam": lam}, solver=solver, method=method, warm=hg, tol=tol)
    assert len(traces) == 1


# --------------------------------------------------------------------------------------
# Several named hyperparameters, one of them also in the criterion
# --------------------------------------------------------------------------------------
def _two_objective(x, theta, data):
    a, b, _, _ = data
    return objective(x, {"lam": theta["zeta"]}, data) + theta["mu"] * jnp.sum(x)


def _two_criterion(x, theta, data):
    return criterion(x, theta, data) + 0.01 * theta["zeta"] ** 2


def _two_closed_form(zeta, mu):
    x = jnp.linalg.solve(A.T @ A + zeta * jnp.eye(P), A.T @ B - mu)
    return _two_criterion(x, {"zeta": zeta}, (A, B, C, D))


@pytest.mark.parametrize(
    "method",
    [ic.Implicit(lx.CG(**TOL)), ic.Implicit(lx.CG(**TOL), mode="forward")],
    ids=["reverse", "forward"],
)
def test_several_hyperparameters_in_space_order(method):
    # Names deliberately not in sorted order: "zeta" before "mu".
    problem = ic.Problem(
        space=ic.Space(zeta=ic.Param(1.0, ic.Log()), mu=ic.Param(0.0)),
        criterion=_two_criterion,
        x0=jnp.zeros(P),
        data=(A, B, C, D),
        objective=_two_objective,
        name="two",
    )
    theta = {"zeta": jnp.asarray(LAM), "mu": jnp.asarray(0.3)}
    exact = jax.grad(_two_closed_form, argnums=(0, 1))(LAM, 0.3)
    solver = ic.Newton(tol=1e-13)
    check = ic.check_hypergradient(problem, theta, method, solver=solver, eps=1e-4)
    assert check.relative_error <= 1e-6
    hg = ic.hypergradient(problem, theta, solver=solver, method=method)
    assert _rel(hg.grad["zeta"], exact[0]) < 1e-9
    assert _rel(hg.grad["mu"], exact[1]) < 1e-9
    # dE/dz in the space's order: (λ·dE/dλ for the Log entry, dE/dμ).
    np.testing.assert_allclose(check.gradient, [LAM * exact[0], exact[1]], rtol=1e-9)
