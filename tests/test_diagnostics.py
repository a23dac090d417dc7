"""Never silent: an unconverged inner or linear solve raises by default, warns or records on
request, and still stops the computation under jit and vmap."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic
from invcal.diagnostics import HypergradientNotConvergedWarning

_rng = np.random.default_rng(0)
A = jnp.asarray(_rng.normal(size=(30, 10)))
B = jnp.asarray(_rng.normal(size=30))
C = jnp.asarray(_rng.normal(size=(20, 10)))
D = jnp.asarray(_rng.normal(size=20))
LIP = float(jnp.linalg.norm(A, 2) ** 2)
TOL = dict(rtol=1e-12, atol=1e-14)


def objective(x, theta, data):
    a, b, _, _ = data
    return 0.5 * jnp.sum((a @ x - b) ** 2) + 0.5 * theta["lam"] * x @ x


def criterion(x, theta, data):
    _, _, c, d = data
    return 0.5 * jnp.sum((c @ x - d) ** 2)


PROBLEM = ic.Problem(
    space=ic.Space(lam=ic.Param(1.0, ic.Log())),
    criterion=criterion,
    x0=jnp.zeros(10),
    data=(A, B, C, D),
    objective=objective,
    fixed_point=lambda x, th, d: x - jax.grad(objective)(x, th, d) / (LIP + th["lam"]),
    name="ridge",
)
THETA = {"lam": jnp.asarray(2.0)}
GOOD = ic.FISTA(tol=1e-12)
SHORT = ic.FISTA(tol=1e-12, max_steps=3)  # stops far from x*
CG = ic.Implicit(lx.CG(**TOL))
CG_ONE_STEP = ic.Implicit(lx.CG(**TOL, max_steps=1))

# An error raised inside compiled code: equinox's runtime error, which eager JAX may wrap.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


def _hg(solver, method, **kwargs):
    return ic.hypergradient(PROBLEM, THETA, solver=solver, method=method, **kwargs)


@pytest.mark.parametrize(
    "solver,method,match",
    [
        (SHORT, CG, "inner solve stopped after 3 steps.*raise the solver's max_steps"),
        (GOOD, CG_ONE_STEP, "linear solve stopped after 1 steps.*raise the linear solver's"),
        (GOOD, ic.Implicit(ic.NeumannSeries(3)), "linear solve stopped after 3 steps"),
        (ic.FixedPointIteration(), ic.Unrolled(5), "inner solve stopped after 5 steps"),
    ],
    ids=["inner", "linear", "neumann", "unrolled"],
)
def test_unconverged_raises_warns_or_records(solver, method, match):
    with pytest.raises(ic.HypergradientNotConverged, match=match):
        _hg(solver, method)
    with pytest.warns(HypergradientNotConvergedWarning, match=match):
        warned = _hg(solver, method, on_failure="warn")
    recorded = _hg(solver, method, on_failure=ic.OnFailure.RECORD)
    np.testing.assert_array_equal(warned.grad["lam"], recorded.grad["lam"])
    assert not bool(recorded.diagnostics.converged)
    flags = recorded.diagnostics.as_dict()
    inner_failed = "inner" in match
    assert flags["inner_converged"] is not inner_failed
    assert flags["linear_converged"] is inner_failed
    if inner_failed:
        assert flags["inner_residual"] > 1e-12
    else:
        assert flags["linear_residual"] > 1e-12


def test_converged_hypergradient_passes_every_policy():
    for policy in ("raise", "warn", "record"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hg = _hg(GOOD, CG, on_failure=policy)
        assert bool(hg.diagnostics.converged)


def test_bad_policy_is_refused_before_work():
    with pytest.raises(ValueError, match="on_failure must be one of 'raise', 'warn', 'record'"):
        _hg(GOOD, CG, on_failure="bogus")


# --------------------------------------------------------------------------------------
# Under jit and vmap the raise policy still stops the computation
# --------------------------------------------------------------------------------------
def _grad_fn(solver, method, on_failure="raise"):
    def g(lam):
        hg = ic.hypergradient(
            PROBLEM, {"lam": lam}, solver=solver, method=method, on_failure=on_failure
        )
        return hg.grad["lam"], hg.diagnostics.converged

    return g


def test_raise_policy_under_jit_and_vmap():
    g = _grad_fn(SHORT, CG)
    with pytest.raises(RUNTIME_ERRORS, match="unconverged inner or linear solve"):
        jax.block_until_ready(jax.jit(g)(2.0))
    with pytest.raises(RUNTIME_ERRORS, match="unconverged inner or linear solve"):
        jax.block_until_ready(jax.vmap(g)(jnp.array([1.0, 2.0])))
    # One unconverged linear solve in a batch stops the whole batch.
    g = _grad_fn(GOOD, CG_ONE_STEP)
    with pytest.raises(RUNTIME_ERRORS, match="unconverged inner or linear solve"):
        jax.block_until_ready(jax.jit(jax.vmap(g))(jnp.array([1.0, 2.0])))


def test_record_policy_under_vmap_flags_each_entry():
    g = _grad_fn(SHORT, CG, on_failure="record")
    # A tiny λ is hard for three steps, a huge one easy (x* ≈ 0 from x0 = 0).
    _, converged = jax.jit(jax.vmap(g))(jnp.array([1e-3, 1e8]))
    assert converged.tolist() == [False, True]


def test_warn_policy_under_jit():
    g = jax.jit(_grad_fn(SHORT, CG, on_failure="warn"))
    with pytest.warns(HypergradientNotConvergedWarning, match="unconverged solve"):
        jax.block_until_ready(g(2.0))


# --------------------------------------------------------------------------------------
# jax.grad of ic.solve
# --------------------------------------------------------------------------------------
def _solve_objective(solver, method):
    def f(lam):
        theta = {"lam": lam}
        return criterion(
            ic.solve(PROBLEM, theta, solver=solver, method=method), theta, PROBLEM.data
        )

    return f


def test_grad_of_solve_with_unconverged_inner_solve_raises():
    f = _solve_objective(SHORT, CG)
    with pytest.raises(RUNTIME_ERRORS, match="inner solve did not reach its tolerance"):
        jax.block_until_ready(jax.grad(f)(2.0))
    with pytest.raises(RUNTIME_ERRORS, match="inner solve did not reach its tolerance"):
        jax.block_until_ready(jax.jit(jax.grad(f))(2.0))


@pytest.mark.parametrize(
    "method,transform",
    [
        (CG_ONE_STEP, jax.grad),
        (CG_ONE_STEP, jax.jacfwd),
        (ic.Implicit(ic.NeumannSeries(3), system="fixed_point"), jax.grad),
    ],
    ids=["CG-grad", "CG-jacfwd", "Neumann-grad"],
)
def test_grad_of_solve_with_unconverged_linear_solve_raises(method, transform):
    # lineax's throw=True inside the custom JVP; reverse mode transposes that solve.
    f = _solve_objective(GOOD, method)
    with pytest.raises(RUNTIME_ERRORS, match="maximum number of solver steps"):
        jax.block_until_ready(jax.jit(transform(f))(2.0))


def test_diagnostics_as_dict():
    d = _hg(GOOD, CG).diagnostics.as_dict()
    assert set(d) == {
        "inner_steps",
        "inner_residual",
        "inner_converged",
        "linear_steps",
        "linear_residual",
        "linear_converged",
        "finite",
        "inner_curvature",
        "linear_condition",
    }
    assert d["inner_converged"] and d["linear_converged"]
    assert 0 < d["inner_steps"] < GOOD.max_steps and 0 < d["linear_steps"] <= 20
    assert d["inner_residual"] <= 1e-12 and d["linear_residual"] <= 1e-12


@pytest.mark.parametrize(
    "residual, hint",
    [(0.3, "lx.GMRES or lx.Normal"), (float("nan"), "singular or indefinite")],
)
def test_linear_failure_message_fits_the_failure(residual, hint):
    from invcal.diagnostics import Diagnostics, HypergradientNotConverged, enforce

    diag = Diagnostics(
        inner_steps=jnp.asarray(5),
        inner_residual=jnp.asarray(1e-13),
        inner_converged=jnp.asarray(True),
        linear_steps=jnp.asarray(1),
        linear_residual=jnp.asarray(residual),
        linear_converged=jnp.asarray(False),
    )
    with pytest.raises(HypergradientNotConverged, match=hint):
        enforce(diag, "raise", 0.0)


def test_a_diverging_inner_solve_is_reported_as_divergence():
    # Gradient steps of length 3/L overshoot: the iterates blow up to inf/NaN, and the
    # message must say so instead of suggesting more steps.
    overshoot = ic.Problem(
        space=PROBLEM.space,
        criterion=criterion,
        x0=jnp.zeros(10),
        data=(A, B, C, D),
        objective=objective,
        fixed_point=lambda x, th, d: x - 3.0 * jax.grad(objective)(x, th, d) / LIP,
    )
    sol = ic.FixedPointIteration(max_steps=3000).solve(overshoot, overshoot.x0, THETA)
    assert int(sol.result) == ic.SolveResult.DIVERGED
    with pytest.raises(ic.HypergradientNotConverged, match="inner solve diverged.*will not help"):
        ic.hypergradient(overshoot, THETA, solver=ic.FixedPointIteration(max_steps=3000), method=CG)


def test_result_codes_of_inner_solves():
    ok = GOOD.solve(PROBLEM, PROBLEM.x0, THETA)
    short = SHORT.solve(PROBLEM, PROBLEM.x0, THETA)
    assert int(ok.result) == ic.SolveResult.SUCCESSFUL
    assert int(short.result) == ic.SolveResult.MAX_STEPS_REACHED
    rec = _hg(SHORT, CG, on_failure="record")
    assert int(rec.diagnostics.inner_result) == ic.SolveResult.MAX_STEPS_REACHED
    # Under vmap the code is an array, one entry per θ.
    lams = jnp.array([1.0, 2.0])
    codes = jax.vmap(lambda lam: SHORT.solve(PROBLEM, PROBLEM.x0, {"lam": lam}).result)(lams)
    assert codes.tolist() == [ic.SolveResult.MAX_STEPS_REACHED] * 2
