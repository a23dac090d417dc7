"""Momentum gradient descent with a learning-rate schedule (problems/gdm_schedule.py): REVERSE-HG
vs FORWARD-HG vs finite differences, truncation, refusal of implicit differentiation, input
validation.

Measured on the test configuration (T = 50 steps, 3 cyclic mini-batches, degree-2 features,
μ₀ = 0.6, seed 0, float64), relative errors against central differences (ε = 1e-5 in z):
Unrolled and ForwardUnrolled 1.9e-10 for the constant and exponential schedules, 1.1e-8 for
inverse time (its gradient there is small, ‖g‖ ≈ 3e-4, so the differences' rounding shows);
the two methods agree to 1e-15 and Truncated(k=T) reproduces Unrolled exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invcal as ic
from invcal.catalog import Setup
from invcal.testing import check_hypergradient
from problems import gdm_schedule

T = 50
SOLVER = ic.FixedSteps(T)


@pytest.fixture(scope="module", params=gdm_schedule.SCHEDULES)
def problem(request):
    return gdm_schedule.build(schedule=request.param, num_steps=T, num_batches=3, mu0=0.6)


@pytest.fixture(scope="module")
def constant_problem():
    return gdm_schedule.build(num_steps=T, num_batches=3, mu0=0.6)


@pytest.fixture(scope="module")
def unrolled_constant(constant_problem):
    theta = constant_problem.space.init()
    return ic.hypergradient(constant_problem, theta, solver=SOLVER, method=ic.Unrolled())


# --------------------------------------------------------------------------------------
# Hypergradients
# --------------------------------------------------------------------------------------
def test_reverse_forward_and_finite_differences_agree(problem):
    theta = problem.space.init()
    reverse = check_hypergradient(problem, theta, ic.Unrolled(), solver=SOLVER)
    forward = check_hypergradient(problem, theta, ic.ForwardUnrolled(), solver=SOLVER)
    # Measured: 1.9e-10, 1.9e-10, 1.1e-8 (constant, exponential, inverse time), both methods.
    assert reverse.relative_error <= 1e-6, reverse
    assert forward.relative_error <= 1e-6, forward
    np.testing.assert_allclose(forward.gradient, reverse.gradient, rtol=1e-10, atol=1e-14)
    assert reverse.diagnostics["inner_steps"] == T
    assert forward.value == pytest.approx(reverse.value, rel=1e-14)


def test_schedule_parameters_are_learned(problem):
    names = set(problem.space.names)
    if problem.name == "gdm_schedule":
        assert names == {"eta", "mu"}
    else:
        assert names == {"eta0", "kappa", "mu"}


def test_truncated_with_k_equal_to_horizon_is_unrolled(constant_problem, unrolled_constant):
    theta = constant_problem.space.init()
    truncated = ic.hypergradient(constant_problem, theta, solver=SOLVER, method=ic.Truncated(k=T))
    for name in theta:
        # Measured: identical (the same T differentiated steps).
        assert float(truncated.grad[name]) == pytest.approx(
            float(unrolled_constant.grad[name]), rel=1e-13, abs=1e-16
        )


@pytest.mark.parametrize("transform", [jax.grad, jax.jacfwd], ids=["grad", "jacfwd"])
def test_autodiff_of_solve_matches_hypergradient(constant_problem, unrolled_constant, transform):
    prob = constant_problem
    mu = prob.space.init()["mu"]

    def criterion_at(eta):
        theta = {"eta": eta, "mu": mu}
        x = ic.solve(prob, theta, solver=SOLVER, method=ic.ForwardUnrolled())
        return prob.criterion(x, theta, prob.data)

    g = float(jax.jit(transform(criterion_at))(prob.space.init()["eta"]))
    expected = float(unrolled_constant.grad["eta"])
    assert g == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", [ic.Implicit(), ic.Implicit(mode="forward")])
def test_implicit_is_refused(constant_problem, method):
    theta = constant_problem.space.init()
    with pytest.raises(ValueError, match=r"fixed_steps=True.*Unrolled\(\), ForwardUnrolled\(\)"):
        ic.hypergradient(constant_problem, theta, solver=SOLVER, method=method)
    with pytest.raises(ValueError, match="fixed_steps"):
        ic.solve(constant_problem, theta, solver=SOLVER)


# --------------------------------------------------------------------------------------
# The iteration itself
# --------------------------------------------------------------------------------------
def test_step_matches_heavy_ball_recursion(constant_problem):
    """Two steps of the map against the recursion written out with NumPy (batches 0, 1)."""
    data = constant_problem.data
    theta = {"eta": jnp.asarray(0.02), "mu": jnp.asarray(0.7)}
    A, y, W = (np.asarray(data[k]) for k in ("A_train", "y_train", "batch_weights"))
    w, v = np.zeros(A.shape[1]), np.zeros(A.shape[1])
    x = constant_problem.x0
    step = jax.jit(constant_problem.fixed_point)
    for b in range(2):
        v = 0.7 * v + A.T @ (W[b] * (A @ w - y))
        w = w - 0.02 * v
        x = step(x, theta, data)
    np.testing.assert_allclose(np.asarray(x[0]), w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(x[1]), v, rtol=1e-12, atol=1e-15)
    assert float(x[2]) == 2.0


def test_schedules():
    k, horizon = jnp.asarray(25.0), 50.0
    theta = {"eta0": 0.1, "kappa": 2.0}
    assert float(gdm_schedule.learning_rate("exponential", theta, k, horizon)) == pytest.approx(
        0.1 * np.exp(-1.0)
    )
    assert float(gdm_schedule.learning_rate("inverse_time", theta, k, horizon)) == pytest.approx(
        0.05
    )
    assert float(gdm_schedule.learning_rate("constant", {"eta": 0.3}, k, horizon)) == 0.3


def test_mini_batches_partition_the_training_rows():
    data = gdm_schedule.load_data(num_batches=4)
    W = np.asarray(data["batch_weights"])
    assert W.shape == (4, data["A_train"].shape[0])
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert np.all((W > 0).sum(axis=0) == 1)
    assert data["A_train"].shape[1] == 65
    assert gdm_schedule.load_data(degree=1)["A_train"].shape[1] == 10


# --------------------------------------------------------------------------------------
# Setup and bad input
# --------------------------------------------------------------------------------------
def test_setup_defaults():
    s = gdm_schedule.setup()
    assert isinstance(s, Setup)
    assert s.description == gdm_schedule.setup.__doc__.strip().splitlines()[0]
    assert isinstance(s.solver, ic.FixedSteps) and s.solver.num_steps == 100
    assert isinstance(s.method, ic.ForwardUnrolled)
    assert {"unrolled", "forward-unrolled"} <= set(s.methods)
    assert not any(isinstance(m, ic.Implicit) for m in s.methods.values())
    assert set(s.grid) == {"eta", "mu"}
    s3 = gdm_schedule.setup(schedule="exponential", num_steps=20)
    assert s3.solver.num_steps == 20 and s3.grid == {}
    assert set(s3.problem.space.names) == {"eta0", "kappa", "mu"}


@pytest.mark.parametrize(
    "options, match",
    [
        ({"schedule": "cosine"}, "schedule"),
        ({"num_steps": 0}, "num_steps"),
        ({"val_size": 1.5}, "val_size"),
        ({"num_batches": 0}, "num_batches"),
        ({"degree": 4}, "degree"),
        ({"mu0": 1.0}, "mu0"),
        ({"eta0": -0.1}, "eta0"),
        ({"schedule": "inverse_time", "kappa0": 0.0}, "kappa0"),
    ],
)
def test_bad_build_options(options, match):
    with pytest.raises(ValueError, match=match):
        gdm_schedule.build(**options)


def test_unknown_setup_option():
    with pytest.raises(ValueError, match="unknown option.*'learning_rate'"):
        gdm_schedule.setup(learning_rate=0.1)
