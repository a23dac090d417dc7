"""ℓ2-regularized logistic regression (problems/logreg_l2.py): every hypergradient method
against central finite differences, forward vs reverse, truncation bias, and JAX transforms.

Measured at λ = −1 (split 50/50, seed 0, float64, CPU), relative errors against central
differences (ε = 1e-5 in z, `check_hypergradient`): implicit with CG, GMRES, Normal(CG),
BiCGStab, LU, Neumann and forward mode all 8.1e-11; unrolled and forward-unrolled through 600
FISTA steps 2.1e-10 (their differences use the FISTA solve; against Newton-based differences
both are within 1e-15 of the implicit value).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invcal as ic
from invcal.catalog import Setup
from invcal.testing import check_hypergradient, finite_difference
from problems import logreg_l2

THETA = {"lam": jnp.asarray(-1.0)}
NEWTON = ic.Newton(tol=1e-10)
EXACT_METHODS = [
    "implicit-cg",
    "implicit-gmres",
    "implicit-normalcg",
    "implicit-bicgstab",
    "implicit-dense",
    "implicit-neumann",
    "implicit-forward",
    "unrolled",
    "forward-unrolled",
]


@pytest.fixture(scope="module")
def setup():
    return logreg_l2.setup()


@pytest.fixture(scope="module")
def problem(setup):
    return setup.problem


@pytest.fixture(scope="module")
def fd(problem):
    """Central differences of E at λ = −1 with the Newton solve (quadratic: exact to 1e-16)."""
    return finite_difference(problem, THETA, solver=NEWTON)[0]


@pytest.fixture(scope="module")
def reverse(setup, problem):
    """The default: Newton, then one CG solve with the Hessian (compiled once, shared)."""
    return ic.hypergradient(problem, THETA, solver=setup.solver, method=setup.method)


# --------------------------------------------------------------------------------------
# Every method against finite differences
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXACT_METHODS)
def test_method_matches_finite_differences(setup, problem, fd, name):
    method, solver = setup.methods[name], setup.solver_for(name)
    result = check_hypergradient(problem, THETA, method, solver=solver)
    assert result.diagnostics["inner_converged"] and result.diagnostics["linear_converged"]
    assert result.relative_error <= 1e-6, (name, result)
    # Also against the Newton-based differences, which are free of inner-solve error.
    assert abs(result.gradient[0] - fd) <= 1e-6 * abs(fd), (name, result.gradient, fd)


def test_default_method_and_solver(setup, reverse, fd):
    assert isinstance(setup.solver, ic.Newton) and isinstance(setup.method, ic.Implicit)
    assert bool(reverse.diagnostics.converged)
    assert abs(float(reverse.grad["lam"]) - fd) <= 1e-6 * abs(fd)


def test_forward_and_reverse_implicit_agree(setup, problem, reverse):
    # Measured: 2.3e-15. (The forward method is the catalogue's, compiled by the matrix above.)
    forward = ic.hypergradient(
        problem, THETA, solver=NEWTON, method=setup.methods["implicit-forward"]
    )
    g_rev, g_fwd = float(reverse.grad["lam"]), float(forward.grad["lam"])
    assert abs(g_rev - g_fwd) <= 1e-10 * abs(g_rev)
    assert float(forward.value) == pytest.approx(float(reverse.value), rel=1e-14)


def test_truncation_bias_shrinks_with_k(problem, fd):
    # Reverse mode through the last k of 1500 gradient steps. Measured relative errors:
    # k=1: 0.613, k=10: 1.45e-2, k=100: 2.45e-5 (contraction factor ≈ 0.96 per step).
    solver = ic.FixedPointIteration(tol=1e-11, max_steps=1500)
    errors = []
    for k in (1, 10, 100):
        hg = ic.hypergradient(
            problem, THETA, solver=solver, method=ic.Truncated(num_steps=1500, k=k)
        )
        errors.append(abs(float(hg.grad["lam"]) - fd) / abs(fd))
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] > 0.1 and errors[2] < 1e-3


# --------------------------------------------------------------------------------------
# JAX transformations of the solution
# --------------------------------------------------------------------------------------
def test_vmap_of_hypergradient_matches_loop(setup, problem):
    lams = jnp.linspace(-4.0, 1.0, 16)

    def grad_at(lam):
        hg = ic.hypergradient(problem, {"lam": lam}, solver=setup.solver, method=setup.method)
        return hg.grad["lam"]

    batched = np.asarray(jax.vmap(grad_at)(lams))
    looped = np.array([float(grad_at(lam)) for lam in lams])
    # Measured: max relative difference 3.9e-14.
    np.testing.assert_allclose(batched, looped, rtol=1e-10, atol=0)
    # E is increasing in λ over this range (the optimum is near λ = −7).
    assert np.all(looped > 0)


@pytest.mark.parametrize("transform", [jax.grad, jax.jacfwd], ids=["grad", "jacfwd"])
def test_autodiff_of_solve_matches_hypergradient(setup, problem, reverse, transform):
    def criterion_at(lam):
        theta = {"lam": lam}
        x = ic.solve(problem, theta, solver=setup.solver, method=setup.method)
        return problem.criterion(x, theta, problem.data)

    g = float(jax.jit(transform(criterion_at))(THETA["lam"]))
    expected = float(reverse.grad["lam"])
    # Measured: 0 (grad) and 2.3e-15 (jacfwd).
    assert abs(g - expected) <= 1e-10 * abs(expected)


# --------------------------------------------------------------------------------------
# Data, setup and bad input
# --------------------------------------------------------------------------------------
def test_data_split_and_standardization():
    data = logreg_l2.load_data(test_size=0.5, seed=0)
    n, p = data["A_train"].shape
    assert (n, p) == (284, 30) and data["A_test"].shape == (285, 30)
    np.testing.assert_allclose(np.mean(data["A_train"], axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.std(data["A_train"], axis=0), 1.0, atol=1e-12)
    assert set(np.unique(data["y_train"])) == {-1.0, 1.0}
    # L bounds the Hessian of the training loss (ψ'' ≤ 1/4).
    ones = jnp.ones((n, 1))
    lip = np.linalg.norm(np.hstack([data["A_train"], ones]), 2) ** 2 / (4 * n)
    assert float(data["lip_loss"]) == pytest.approx(lip)
    small = logreg_l2.build(n_features=5, seed=3)
    assert small.x0.shape == (6,)


def test_gradient_step_fixed_point_is_stationary(problem, reverse):
    x, data = reverse.x, problem.data
    assert float(jnp.linalg.norm(logreg_l2.gradient_step(x, THETA, data) - x)) < 1e-12
    assert float(jnp.linalg.norm(jax.grad(logreg_l2.objective)(x, THETA, data))) < 1e-10


def test_setup_defaults(setup):
    assert isinstance(setup, Setup)
    assert setup.description == logreg_l2.setup.__doc__.strip().splitlines()[0]
    assert "Pedregosa" in setup.description
    assert set(EXACT_METHODS) | {"truncated-10", "truncated-100"} <= set(setup.methods)
    assert setup.optimizer in ("adam", "gd") and 30 <= setup.steps <= 60
    grid = setup.grid["lam"]
    # The held-out optimum (λ ≈ −7, measured on a Newton grid) lies inside the grid.
    assert grid.min() < -7.0 < grid.max()
    for name in ("unrolled", "forward-unrolled", "truncated-10", "truncated-100"):
        assert isinstance(setup.solver_for(name), (ic.FISTA, ic.FixedPointIteration))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"test_size": 1.5}, "test_size"),
        ({"test_size": 0.0}, "test_size"),
        ({"test_size": "half"}, "test_size"),
        ({"seed": -1}, "seed"),
        ({"n_features": 0}, "n_features"),
        ({"n_features": 31}, "n_features"),
        ({"lam0": float("nan")}, "lam0"),
    ],
)
def test_bad_build_options(options, match):
    with pytest.raises(ValueError, match=match):
        logreg_l2.build(**options)


def test_unknown_setup_option():
    with pytest.raises(ValueError, match="unknown option.*'tets_size'"):
        logreg_l2.setup(tets_size=0.3)
