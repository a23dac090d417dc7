"""Inner solvers reach known solutions, report their work honestly, and refuse problems they
cannot iterate on; fixed-step solutions are differentiated through their steps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic
from invcal.solvers.marquardt import levenberg_marquardt

N, P = 30, 10
_rng = np.random.default_rng(0)
A = jnp.asarray(_rng.normal(size=(N, P)))
B = jnp.asarray(_rng.normal(size=N))
LIP = float(jnp.linalg.norm(A, 2) ** 2)
LAM = 2.0
THETA = {"lam": jnp.asarray(LAM)}
X_EXACT = jnp.linalg.solve(A.T @ A + LAM * jnp.eye(P), A.T @ B)


def objective(x, theta, data):
    a, b = data
    return 0.5 * jnp.sum((a @ x - b) ** 2) + 0.5 * theta["lam"] * x @ x


def gradient_step(x, theta, data):
    return x - jax.grad(objective)(x, theta, data) / (LIP + theta["lam"])


def criterion(x, theta, data):
    return 0.5 * jnp.sum(x**2)


RIDGE = ic.Problem(
    space=ic.Space(lam=ic.Param(1.0, ic.Log())),
    criterion=criterion,
    x0=jnp.zeros(P),
    data=(A, B),
    objective=objective,
    fixed_point=gradient_step,
    name="ridge",
)


@eqx.filter_jit
def _solve(solver, problem, x0, theta):
    return solver.solve(problem, x0, theta)


@pytest.mark.parametrize(
    "solver",
    [ic.FISTA(tol=1e-12), ic.FISTA(tol=1e-12, restart=False), ic.FixedPointIteration(tol=1e-12)]
    + [ic.Newton(tol=1e-12)],
    ids=["FISTA", "FISTA-no-restart", "FixedPointIteration", "Newton"],
)
def test_solver_reaches_the_ridge_solution(solver):
    sol = _solve(solver, RIDGE, RIDGE.x0, THETA)
    assert bool(sol.converged)
    assert float(sol.residual) <= 1e-12
    assert 0 < int(sol.num_steps) < solver.max_steps
    np.testing.assert_allclose(sol.x, X_EXACT, rtol=0, atol=1e-10)
    # Warm-started at the solution, at most one step is taken.
    again = _solve(solver, RIDGE, sol.x, THETA)
    assert int(again.num_steps) <= 1 and bool(again.converged)


def test_fista_is_faster_than_plain_iteration():
    fista = _solve(ic.FISTA(tol=1e-12), RIDGE, RIDGE.x0, THETA)
    plain = _solve(ic.FixedPointIteration(tol=1e-12), RIDGE, RIDGE.x0, THETA)
    assert int(fista.num_steps) < int(plain.num_steps)


def test_unconverged_solve_says_so():
    sol = _solve(ic.FISTA(tol=1e-12, max_steps=3), RIDGE, RIDGE.x0, THETA)
    assert int(sol.num_steps) == 3
    assert not bool(sol.converged) and float(sol.residual) > 1e-12


def test_solve_carries_no_derivative():
    # A solve to tolerance is differentiated by the implicit function theorem, never by
    # pushing tangents through its while loop.
    def x_of(lam, b):
        return ic.FISTA(tol=1e-12).solve(RIDGE, RIDGE.x0, {"lam": lam}, (A, b)).x

    _, tangent = jax.jit(lambda: jax.jvp(x_of, (LAM, B), (1.0, jnp.ones(N))))()
    assert not np.any(np.asarray(tangent))


# --------------------------------------------------------------------------------------
# Newton: damping, and an optimality map that is not a gradient
# --------------------------------------------------------------------------------------
ARCTAN = ic.Problem(
    space=ic.Space(t=ic.Param(0.5)),
    criterion=lambda x, theta, data: x[0],
    x0=jnp.array([10.0]),  # undamped Newton on arctan diverges from here
    optimality=lambda x, theta, data: jnp.arctan(x) - theta["t"],
    name="arctan",
)


def test_damped_newton_converges_where_plain_newton_diverges():
    sol = _solve(ic.Newton(tol=1e-13), ARCTAN, ARCTAN.x0, {"t": jnp.asarray(0.5)})
    assert bool(sol.converged)
    assert float(sol.x[0]) == pytest.approx(np.tan(0.5), rel=1e-12)


@pytest.mark.parametrize("method", [ic.Implicit(lx.LU()), ic.Implicit()], ids=["LU", "default"])
def test_newton_hypergradient_of_a_non_symmetric_optimality_map(method):
    # x*(t) = tan t, so dE/dt = 1/cos²t; an optimality= map is not assumed symmetric, so
    # the default linear solver is GMRES (CG is refused).
    hg = ic.hypergradient(ARCTAN, {"t": 0.5}, solver=ic.Newton(tol=1e-13), method=method)
    assert float(hg.grad["t"]) == pytest.approx(1 / np.cos(0.5) ** 2, rel=1e-10)
    with pytest.raises(ValueError, match="not known to be symmetric"):
        ic.Implicit(lx.CG(rtol=1e-10, atol=1e-12)).check(ARCTAN, ic.Newton())


# --------------------------------------------------------------------------------------
# FixedSteps: a solution defined by its steps (a learning-rate schedule)
# --------------------------------------------------------------------------------------
STEPS = 25


def _descent(x, theta, data):
    a, b = data
    return x - theta["lr"] * a.T @ (a @ x - b)


SCHEDULE = ic.Problem(
    space=ic.Space(lr=ic.Param(0.5 / LIP, ic.Bounded(0.0, 2.0 / LIP))),
    criterion=lambda x, theta, data: 0.5 * jnp.sum((x - 1.0) ** 2),
    x0=jnp.zeros(P),
    data=(A, B),
    fixed_point=_descent,
    fixed_steps=True,
    name="schedule",
)
LR = {"lr": jnp.asarray(1.0 / LIP)}


def _loop_value(lr):
    x = SCHEDULE.x0
    for _ in range(STEPS):
        x = _descent(x, {"lr": lr}, SCHEDULE.data)
    return SCHEDULE.criterion(x, None, None), x


def test_fixed_steps_is_exactly_n_steps():
    sol = _solve(ic.FixedSteps(STEPS), SCHEDULE, SCHEDULE.x0, LR)
    np.testing.assert_allclose(sol.x, _loop_value(LR["lr"])[1], rtol=1e-13)
    assert int(sol.num_steps) == STEPS and bool(sol.converged)


@pytest.mark.parametrize(
    "method",
    [ic.Unrolled(), ic.ForwardUnrolled(), ic.Truncated(k=STEPS), ic.Unrolled(checkpoint=False)],
    ids=["Unrolled", "ForwardUnrolled", "Truncated[k=n]", "Unrolled-no-checkpoint"],
)
def test_fixed_steps_hypergradient_equals_grad_of_the_loop(method):
    hg = ic.hypergradient(SCHEDULE, LR, solver=ic.FixedSteps(STEPS), method=method)
    g = jax.grad(lambda lr: _loop_value(lr)[0])(LR["lr"])
    assert float(hg.grad["lr"]) == pytest.approx(float(g), rel=1e-12)
    assert int(hg.diagnostics.inner_steps) == STEPS and bool(hg.diagnostics.converged)


# --------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------
OPT_ONLY = ic.Problem(
    space=RIDGE.space, criterion=criterion, x0=jnp.zeros(P), data=(A, B), objective=objective
)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: ic.FixedSteps(0), ValueError, "FixedSteps num_steps must be >= 1"),
        (lambda: ic.FISTA(tol=-1e-8), ValueError, "FISTA tol must be a finite number > 0"),
        (lambda: ic.Newton(tol=float("nan")), ValueError, "Newton tol must be a finite number"),
        (lambda: ic.FISTA(tol="1e-8"), ValueError, "FISTA tol must be"),
        (lambda: ic.FixedPointIteration(tol=0.0), ValueError, "tol must be a finite number > 0"),
        (lambda: ic.FISTA(max_steps=0), ValueError, "FISTA max_steps must be an integer >= 1"),
        (lambda: ic.Newton(max_steps=2.5), ValueError, "Newton max_steps must be an integer"),
        (lambda: ic.Truncated(k=0), ValueError, "Truncated k must be >= 1"),
        (lambda: ic.Unrolled(0), ValueError, "Unrolled num_steps must be >= 1"),
        (lambda: ic.Implicit(mode="backward"), ValueError, "mode must be 'reverse' or 'forward'"),
        (lambda: ic.Implicit(system="hessian"), ValueError, "system must be None, 'optimality'"),
        (lambda: ic.Implicit("cg"), TypeError, "linear_solver must be a lineax solver"),
    ],
)
def test_bad_method_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_unrolled_positional_arguments_read_as_documented():
    # Truncated(num_steps, k) as in the README; checkpoint is keyword-only (it used to be
    # the second positional field, so Truncated(100, 5) silently meant checkpoint=5).
    t = ic.Truncated(100, 5)
    assert (t.num_steps, t.k, t.checkpoint) == (100, 5, True)
    with pytest.raises(TypeError):
        ic.Unrolled(100, False)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(solver="fista"), TypeError, "solver must be an invcal inner solver"),
        (dict(solver=lx.CG(rtol=1e-8, atol=1e-8)), TypeError, "solver must be an invcal inner"),
        (dict(method=lx.CG(rtol=1e-8, atol=1e-8)), TypeError, "method must be a hypergradient"),
        (dict(problem={"A": A}), TypeError, "problem must be an invcal.Problem"),
        (dict(on_failure="bogus"), ValueError, "on_failure must be one of"),
        (dict(theta={"mu": 1.0}), ValueError, "theta has names"),
        (dict(theta={"lam": -1.0}), ValueError, "'lam' has transform Log and must be > 0"),
        (dict(solver=ic.FISTA(), problem=OPT_ONLY), ValueError, "has no fixed_point=T"),
    ],
)
def test_bad_hypergradient_arguments(kwargs, error, match):
    args = dict(problem=RIDGE, theta=THETA, solver=ic.FISTA(), method=ic.Implicit()) | kwargs
    problem, theta = args.pop("problem"), args.pop("theta")
    with pytest.raises(error, match=match):
        ic.hypergradient(problem, theta, **args)
    if "on_failure" not in args:
        with pytest.raises(error, match=match):
            ic.solve(problem, theta, **args)


def _shifted_half(x, theta, data):
    return 0.5 * x + theta["lam"] * data  # float64 whatever x is


@pytest.mark.parametrize("dtype", [int, np.float32])
def test_x0_takes_the_dtype_of_the_iterates(dtype):
    # x0=jnp.array([0, 0, 0]) is an int array, and a float32 x0 meets float64 data: the
    # loops' carry used to fail with a raw while-loop type error.
    problem = ic.Problem(
        space=RIDGE.space,
        criterion=lambda x, theta, data: jnp.sum(x**2),
        x0=np.zeros(3, dtype=dtype),
        data=jnp.arange(3.0),
        fixed_point=_shifted_half,
    )
    for solver in (ic.FISTA(), ic.FixedPointIteration(), ic.Newton()):
        sol = _solve(solver, problem, problem.x0, THETA)
        assert sol.x.dtype == jnp.float64
        np.testing.assert_allclose(sol.x, 2 * LAM * jnp.arange(3.0), atol=1e-9)
    # x* = 2λ·data, E = 4λ²‖data‖², dE/dλ = 8λ‖data‖² = 80 at λ = 2.
    hg = ic.hypergradient(problem, THETA, solver=ic.FISTA(), method=ic.Implicit())
    warm = ic.hypergradient(problem, THETA, solver=ic.FISTA(), method=ic.Implicit(), warm=hg)
    unrolled = ic.hypergradient(problem, THETA, solver=ic.FixedSteps(60), method=ic.Unrolled())
    for g in (hg, warm, unrolled):
        assert float(g.grad["lam"]) == pytest.approx(80.0, rel=1e-9)


# --------------------------------------------------------------------------------------
# Levenberg–Marquardt (the population models' inner solver)
# --------------------------------------------------------------------------------------
def _pseudo_huber(x):
    """Σ √(1 + xᵢ²): convex, minimum 0 at x = 0; Newton's step −xᵢ(1 + xᵢ²) overshoots
    wherever |xᵢ| > 1."""
    return jnp.sum(jnp.sqrt(1.0 + x**2))


@pytest.mark.parametrize("max_step", [100.0, 10.0])
def test_marquardt_shrinks_its_trust_radius_after_a_rejected_step(max_step):
    trials = []

    def evaluate(x):
        jax.debug.callback(lambda v: trials.append(np.asarray(v)), x, ordered=True)
        L = _pseudo_huber(x)
        return L, jax.grad(_pseudo_huber)(x), jax.hessian(_pseudo_huber)(x), x, jnp.isfinite(L)

    x0 = jnp.array([3.0, -5.0, 8.0])
    sol = levenberg_marquardt(evaluate, x0, x0, 1e-10, 100, resolution=1e-12, max_step=max_step)
    jax.effects_barrier()
    assert bool(sol.converged) and float(jnp.max(jnp.abs(sol.x))) < 1e-9
    assert len(trials) == int(sol.num_steps) + 1  # the start point, then one per step
    # Replay the acceptance rule: a step after a rejected one is at most a quarter of it.
    x, rejected, last = trials[0], 0, None
    for t in trials[1:]:
        size = float(np.max(np.abs(t - x)))
        assert size <= max_step * (1 + 1e-12)
        if last is not None:
            assert size <= last / 4 * (1 + 1e-12), (size, last)
        fx, ft = float(_pseudo_huber(x)), float(_pseudo_huber(t))
        if ft <= fx + 1e-12 * (1 + abs(fx)):
            x, last = t, None
        else:
            rejected, last = rejected + 1, size
    assert rejected >= 1  # the rule above was exercised
    np.testing.assert_allclose(x, sol.x, atol=0)
