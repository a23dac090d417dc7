"""The outer loop on ridge regression with a held-out criterion (interior optimum, known by
a fine grid of closed-form solutions)."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import invcal as ic
import invcal.testing  # noqa: F401

RNG = np.random.default_rng(3)
N, P = 40, 12
_W = RNG.normal(size=P)
_X = RNG.normal(size=(2 * N, P))
_Y = _X @ _W + 2.0 * RNG.normal(size=2 * N)
DATA = tuple(jnp.asarray(a) for a in (_X[:N], _Y[:N], _X[N:], _Y[N:]))
LIP = float(np.linalg.norm(_X[:N], 2) ** 2) / N


def objective(x, th, data):
    A, b, _, _ = data
    return 0.5 * jnp.mean((A @ x - b) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)


def step(x, th, data):
    return x - jax.grad(objective)(x, th, data) / (LIP + th["lam"])


def held_out(x, th, data):
    _, _, C, d = data
    return 0.5 * jnp.mean((C @ x - d) ** 2)


PROBLEM = ic.Problem(
    space=ic.Space(lam=ic.Param(1.0, ic.Log())),
    criterion=held_out,
    x0=jnp.zeros(P),
    data=DATA,
    objective=objective,
    fixed_point=step,
    name="ridge",
)
SOLVER = ic.Newton(tol=1e-11)


def closed_form_value(lam):
    A, b, C, d = (np.asarray(a) for a in DATA)
    x = np.linalg.solve(A.T @ A / N + lam * np.eye(P), A.T @ b / N)
    return 0.5 * np.mean((C @ x - d) ** 2)


@pytest.fixture(scope="module")
def optimum():
    lams = np.logspace(-4, 2, 2001)
    vals = np.array([closed_form_value(v) for v in lams])
    i = int(np.argmin(vals))
    assert 0 < i < len(lams) - 1, "test problem must have an interior optimum"
    return lams[i], vals[i]


@pytest.mark.parametrize(
    "optimizer, lr, steps",
    [
        ("gd", 1.0, 60),
        ("adam", 0.3, 60),
        ("lbfgs", 1.0, 12),
        (ic.HOAG(tol0=1e-4), 1.0, 40),
        ("secant", 1.0, 30),
        (ic.BarzilaiBorwein(tol=1e-5), 1.0, 30),
    ],
    ids=["gd", "adam", "lbfgs", "hoag", "secant", "barzilai-borwein"],
)
def test_tune_reaches_grid_optimum(optimizer, lr, steps, optimum):
    res = ic.tune(PROBLEM, solver=SOLVER, optimizer=optimizer, learning_rate=lr, steps=steps)
    lam_star, val_star = optimum
    assert res.value <= val_star * 1.001
    assert abs(np.log(float(res.theta["lam"]) / lam_star)) < 0.1
    assert res.history[0]["value"] > res.value
    # every gradient row carries its diagnostics
    for row in res.history:
        assert row["converged"] and row["inner_steps"] >= 0 and row["grad_norm"] is not None


def test_hoag_rejects_too_long_steps_and_recovers(optimum):
    # From below the optimum, a step of 1/L = 100 (capped by max_step at 2 in log λ)
    # overshoots past it: rejected.
    res = ic.tune(
        PROBLEM,
        solver=SOLVER,
        optimizer=ic.HOAG(tol0=1e-4, step0=100.0),
        steps=30,
        theta0={"lam": 1e-3},
    )
    assert any(not row["accepted"] for row in res.history)
    assert res.value <= optimum[1] * 1.01
    tols = [row["tol"] for row in res.history]
    assert tols[-1] < tols[0]


def test_rtho_reaches_grid_optimum(optimum):
    res = ic.tune(
        PROBLEM,
        solver=ic.FixedPointIteration(),
        optimizer=ic.RTHO(delta=25),
        learning_rate=0.5,
        steps=150,
    )
    final_lam = float(res.history[-1]["theta"]["lam"])
    assert closed_form_value(final_lam) <= optimum[1] * 1.01
    assert res.history[-1]["inner_steps"] == 150 * 25


def test_secant_brackets_the_optimum_stops_and_resumes(tmp_path, optimum):
    straight = ic.tune(PROBLEM, solver=SOLVER, optimizer=ic.Secant(xtol=1e-4), steps=40)
    rows = straight.history
    assert len(rows) < 40  # stopped on its own: the bracket is shorter than xtol
    assert straight.results["state"]["z"] is None
    g = [r["grad_z"][0] for r in rows]
    assert min(g) < 0 < max(g)  # the derivative changed sign: a bracket was found
    # the least-E point solves dE/dz = 0: as close to the optimum as the 2001-point grid can tell
    assert abs(np.log(float(straight.theta["lam"]) / optimum[0])) < 0.02
    assert straight.value <= optimum[1] * (1 + 1e-6)
    # cut after 3 evaluations and resumed: the same points
    ic.tune(PROBLEM, solver=SOLVER, optimizer=ic.Secant(xtol=1e-4), steps=3, out=tmp_path)
    resumed = ic.tune(
        PROBLEM, solver=SOLVER, optimizer=ic.Secant(xtol=1e-4), steps=40, out=tmp_path, resume=True
    )
    np.testing.assert_allclose(
        [r["z"][0] for r in resumed.history], [r["z"][0] for r in rows], rtol=1e-10
    )


def test_barzilai_borwein_is_monotone_stops_resumes_and_reuses_a_start(tmp_path, optimum):
    bb = ic.BarzilaiBorwein(tol=1e-6)
    straight = ic.tune(PROBLEM, solver=SOLVER, optimizer=bb, steps=40, theta0={"lam": 1e-3})
    rows = straight.history
    assert len(rows) < 40  # stopped on its own
    accepted = [r["value"] for r in rows if r["accepted"]]
    assert accepted == sorted(accepted, reverse=True)  # E never increases
    assert abs(np.log(float(straight.theta["lam"]) / optimum[0])) < 0.02
    # cut after 4 evaluations and resumed: the same points
    ic.tune(PROBLEM, solver=SOLVER, optimizer=bb, steps=4, theta0={"lam": 1e-3}, out=tmp_path)
    resumed = ic.tune(
        PROBLEM,
        solver=SOLVER,
        optimizer=bb,
        steps=40,
        theta0={"lam": 1e-3},
        out=tmp_path,
        resume=True,
    )
    np.testing.assert_allclose(
        [r["z"][0] for r in resumed.history], [r["z"][0] for r in rows], rtol=1e-10
    )
    # a hypergradient already evaluated at θ₀ is used as the first row, not recomputed: the
    # same trajectory; and a start with a marked value shows it is the one recorded
    hg0 = ic.hypergradient(PROBLEM, {"lam": 1e-3}, solver=SOLVER)
    kw = dict(solver=SOLVER, optimizer=bb, theta0={"lam": 1e-3})
    started = ic.tune(PROBLEM, steps=40, start=hg0, **kw)
    np.testing.assert_allclose(
        [r["z"][0] for r in started.history], [r["z"][0] for r in rows], rtol=1e-8
    )
    marked = eqx.tree_at(lambda h: h.value, hg0, jnp.asarray(123.0))
    assert ic.tune(PROBLEM, steps=1, start=marked, **kw).history[0]["value"] == 123.0


def test_best_point_is_a_converged_one():
    """An unconverged evaluation (recorded under on_failure='record', or a rejected trial)
    can read lower than it is: it is never the reported best while a converged one exists;
    among approximate rows only (RTHO before its horizon), the lowest is."""
    from invcal.outer.record import _Recorder

    rec = _Recorder(
        PROBLEM,
        method="m",
        optimizer_name="o",
        learning_rate=1.0,
        steps=3,
        out=None,
        resume=False,
        meta=None,
    )
    z = jnp.zeros(1)
    theta = PROBLEM.space.to_theta(z)
    rec.add(z=z, theta=theta, value=5.0, wall=0.0, converged=False)
    assert rec.results["best"]["value"] == 5.0  # approximate rows only: the lowest
    rec.add(z=z, theta=theta, value=2.0, wall=0.0, converged=True)
    rec.add(z=z, theta=theta, value=1.0, wall=0.0, converged=False)
    assert rec.results["best"]["value"] == 2.0 and rec.results["best"]["converged"]


def test_secant_refuses_several_hyperparameters_and_bad_settings():
    two_params = ic.Space(lam=ic.Param(1.0, ic.Log()), mu=ic.Param(1.0, ic.Log()))
    two = eqx.tree_at(lambda p: p.space, PROBLEM, two_params)
    with pytest.raises(ValueError, match="one scalar hyperparameter.*'lam', 'mu'"):
        ic.tune(two, solver=SOLVER, optimizer="secant", steps=5)
    with pytest.raises(ValueError, match="Secant step must be a finite number > 0"):
        ic.Secant(step=-1.0)


def test_results_written_every_step_and_resume_matches(tmp_path):
    seen = []

    def progress(step, total, row):
        saved = json.loads((tmp_path / "results.json").read_text())
        seen.append((step, total, len(saved["history"])))

    ic.tune(PROBLEM, solver=SOLVER, optimizer="adam", steps=3, out=tmp_path, progress=progress)
    assert seen == [(1, 3, 1), (2, 3, 2), (3, 3, 3)]
    resumed = ic.tune(PROBLEM, solver=SOLVER, optimizer="adam", steps=6, out=tmp_path, resume=True)
    straight = ic.tune(PROBLEM, solver=SOLVER, optimizer="adam", steps=6)
    assert len(resumed.history) == 6
    np.testing.assert_allclose(
        [r["z"][0] for r in resumed.history], [r["z"][0] for r in straight.history], rtol=1e-10
    )
    with pytest.raises(ValueError, match="cannot resume"):
        ic.tune(PROBLEM, solver=SOLVER, optimizer="gd", steps=7, out=tmp_path, resume=True)


def test_grid_and_random_search_rows(tmp_path, optimum):
    grid = ic.grid_search(PROBLEM, solver=SOLVER, grid={"lam": np.logspace(-3, 1, 9)}, out=tmp_path)
    assert len(grid.history) == 9 and grid.history[0]["grad_norm"] is None
    assert grid.value == min(r["value"] for r in grid.history)
    assert (tmp_path / "results.json").exists()
    rnd = ic.random_search(PROBLEM, solver=SOLVER, bounds={"lam": (1e-3, 10.0)}, num=8, seed=1)
    lams = [r["theta"]["lam"] for r in rnd.history]
    assert len(lams) == 8 and all(1e-3 <= v <= 10.0 for v in lams)
    with pytest.raises(ValueError, match="grid must map"):
        ic.grid_search(PROBLEM, solver=SOLVER, grid={"mu": [1.0]})


def test_resume_refuses_another_run(tmp_path):
    grid = {"lam": np.logspace(-3, 1, 4)}
    ic.grid_search(PROBLEM, solver=SOLVER, grid=grid, out=tmp_path)
    again = ic.grid_search(PROBLEM, solver=SOLVER, grid=grid, out=tmp_path, resume=True)
    assert len(again.history) == 4
    with pytest.raises(ValueError, match="point 1 is"):
        ic.grid_search(
            PROBLEM, solver=SOLVER, grid={"lam": np.logspace(-3, 1, 5)}, out=tmp_path, resume=True
        )
    with pytest.raises(ValueError, match="holds 4 evaluated points, this search has 3"):
        ic.grid_search(
            PROBLEM, solver=SOLVER, grid={"lam": grid["lam"][:3]}, out=tmp_path, resume=True
        )
    run = tmp_path / "adam"
    adam = dict(solver=SOLVER, optimizer="adam", out=run)
    ic.tune(PROBLEM, **adam, learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match="learning_rate=0.1"):
        ic.tune(PROBLEM, **adam, learning_rate=0.2, steps=2, resume=True)
    with pytest.raises(ValueError, match="method="):
        ic.tune(PROBLEM, **adam, learning_rate=0.1, steps=2, resume=True, method=ic.Unrolled(50))
    assert not list(run.glob(".results-*")), "a temporary file was left behind"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive"),
        ({"optimizer": "sgdx"}, "optimizer must be"),
        ({"theta0": {"lam": -1.0}}, "must be > 0"),
        ({"theta0": {"lam": float("nan")}}, "NaN"),
        ({"theta0": {"mu": 1.0}}, "unknown"),
    ],
)
def test_bad_arguments_fail_before_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ic.tune(PROBLEM, solver=SOLVER, **kwargs)


def test_any_optax_transformation_is_accepted():
    res = ic.tune(PROBLEM, solver=SOLVER, optimizer=optax.rmsprop(0.05), steps=5)
    assert len(res.history) == 5 and res.history[-1]["value"] < res.history[0]["value"]


def _fixed_step_problem():
    # x_T after 5 steps of x ← x − η(x − 1) from 0: x_T = 1 − (1 − η)^5. Warm-starting would
    # silently turn it into 10, 15, ... steps.
    return ic.Problem(
        space=ic.Space(eta=ic.Param(0.1, ic.Bounded(0.0, 1.0))),
        criterion=lambda x, th, d: (x - 0.5) ** 2,
        x0=jnp.asarray(0.0),
        fixed_point=lambda x, th, d: x - th["eta"] * (x - 1.0),
        fixed_steps=True,
        name="five-steps",
    )


def test_fixed_step_solutions_are_never_warm_started():
    problem = _fixed_step_problem()
    solver = ic.FixedSteps(5)
    grid = ic.grid_search(problem, solver=solver, grid={"eta": [0.1, 0.1, 0.1]})
    expected = (1 - 0.9**5 - 0.5) ** 2
    np.testing.assert_allclose([r["value"] for r in grid.history], expected, rtol=1e-12)
    res = ic.tune(
        problem,
        solver=solver,
        method=ic.ForwardUnrolled(),
        optimizer="adam",
        learning_rate=0.1,
        steps=4,
    )
    for row in res.history:
        eta = row["theta"]["eta"]
        np.testing.assert_allclose(row["value"], (1 - (1 - eta) ** 5 - 0.5) ** 2, rtol=1e-12)


def test_rtho_with_an_integer_step_counter_matches_a_float_one():
    def problem_with(counter):
        return ic.Problem(
            space=ic.Space(eta=ic.Param(0.1, ic.Bounded(0.0, 1.0))),
            criterion=lambda x, th, d: (x[0] - 0.5) ** 2,
            x0=(jnp.asarray(0.0), counter),
            fixed_point=lambda x, th, d: (x[0] - th["eta"] * (x[0] - 1.0), x[1] + 1),
            fixed_steps=True,
            name="five-steps-counter",
        )

    runs = [
        ic.tune(
            problem_with(c),
            solver=ic.FixedSteps(5),
            optimizer=ic.RTHO(delta=2),
            learning_rate=0.5,
            steps=4,
        )
        for c in (jnp.asarray(0, jnp.int32), jnp.asarray(0.0))
    ]
    np.testing.assert_allclose(
        [r["grad_z"][0] for r in runs[0].history],
        [r["grad_z"][0] for r in runs[1].history],
        rtol=1e-12,
    )
    # The first update uses the exact hypergradient of the 2-step partial run.
    problem = problem_with(jnp.asarray(0.0))
    theta0 = problem.space.init()
    hg = ic.hypergradient(problem, theta0, solver=ic.FixedSteps(2), method=ic.ForwardUnrolled())
    expected = float(ic.testing.grad_z(problem, theta0, hg.grad)[0])
    np.testing.assert_allclose(runs[0].history[0]["grad_z"][0], expected, rtol=1e-12)


def test_names_out_of_sorted_order_survive_lbfgs_and_rtho():
    # Two hyperparameters whose names are not in sorted order: a regression guard for the
    # jitted outer paths (transforms rebuild dicts in sorted key order).
    def objective2(x, th, data):
        A, b, _, _ = data
        return (
            0.5 * jnp.mean((A @ x - b) ** 2)
            + 0.5 * th["zeta"] * jnp.sum(x[: P // 2] ** 2)
            + (0.5 * th["alpha"] * jnp.sum(x[P // 2 :] ** 2))
        )

    def step2(x, th, data):
        return x - jax.grad(objective2)(x, th, data) / (LIP + th["zeta"] + th["alpha"])

    problem = ic.Problem(
        space=ic.Space(zeta=ic.Param(1.0, ic.Log()), alpha=ic.Param(0.01, ic.Log())),
        criterion=held_out,
        x0=jnp.zeros(P),
        data=DATA,
        objective=objective2,
        fixed_point=step2,
        name="ridge2",
    )
    theta = problem.space.init()
    fd = ic.testing.finite_difference(problem, theta, solver=SOLVER, eps=1e-6)
    hg = ic.hypergradient(problem, theta, solver=SOLVER)
    np.testing.assert_allclose(ic.testing.grad_z(problem, theta, hg.grad), fd, rtol=1e-6)
    assert fd[0] != pytest.approx(fd[1], rel=0.1)
    rtho = ic.tune(
        problem,
        solver=ic.FixedPointIteration(),
        optimizer=ic.RTHO(delta=2000),
        learning_rate=0.1,
        steps=1,
    )
    np.testing.assert_allclose(rtho.history[0]["grad_z"], fd, rtol=1e-5)
    lb = ic.tune(problem, solver=SOLVER, optimizer="lbfgs", steps=6)
    assert lb.value < hg.value


def test_a_failed_results_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from invcal.outer import atomic_write_json

    path = tmp_path / "results.json"
    atomic_write_json(path, {"history": [1]})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"history": [object()]})
    assert json.loads(path.read_text()) == {"history": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_tune_accepts_optax_lbfgs_as_a_transformation():
    """optax.lbfgs() passed as an object reaches what optimizer="lbfgs" reaches (it failed
    with optax's raw "update_fn() missing 'value_fn'")."""
    import optax
    from test_default_config import _readme_code

    scope: dict = {}
    exec(compile(_readme_code().split("hg = ic.hypergradient")[0], "README", "exec"), scope)
    problem = scope["problem"]
    by_name = ic.tune(problem, solver=ic.Newton(), optimizer="lbfgs", steps=15)
    as_object = ic.tune(problem, solver=ic.Newton(), optimizer=optax.lbfgs(), steps=15)
    assert float(as_object.theta["lam"]) == pytest.approx(float(by_name.theta["lam"]), rel=1e-6)
    assert as_object.value == pytest.approx(by_name.value, rel=1e-10)


class _PlainGD(ic.AbstractOuterSolver):
    """A user's own outer solver: z ← z − rate·dE/dz, its state the current z."""

    rate: float = 1.0
    name = "plain-gd"

    def init(self, z0):
        return z0

    def point(self, state):
        return ic.outer.Request(z=state)

    def update(self, state, request, hg, gz, context):
        return state - self.rate * gz, ic.outer.StepInfo()

    def to_json(self, state):
        return {"z": np.asarray(state).tolist()}

    def from_json(self, saved, z0):
        return jnp.asarray(saved["z"], dtype=z0.dtype)


def test_a_users_outer_solver_runs_on_the_one_driver_and_resumes(tmp_path):
    """An AbstractOuterSolver subclass gets the driver's history, results.json and resume:
    its steps equal optax's SGD at the same rate, and 3 + 3 resumed steps equal 6."""
    mine = ic.tune(PROBLEM, solver=SOLVER, optimizer=_PlainGD(0.5), steps=6)
    sgd = ic.tune(PROBLEM, solver=SOLVER, optimizer="gd", learning_rate=0.5, steps=6)
    np.testing.assert_allclose(
        [r["z"] for r in mine.history], [r["z"] for r in sgd.history], rtol=1e-12
    )
    assert mine.results["optimizer"] == "plain-gd"
    ic.tune(PROBLEM, solver=SOLVER, optimizer=_PlainGD(0.5), steps=3, out=tmp_path)
    resumed = ic.tune(
        PROBLEM, solver=SOLVER, optimizer=_PlainGD(0.5), steps=6, out=tmp_path, resume=True
    )
    np.testing.assert_allclose(
        [r["z"] for r in resumed.history], [r["z"] for r in mine.history], rtol=1e-12
    )
