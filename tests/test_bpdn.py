"""BPDN / Lasso: the working-set solver against scikit-learn, the support-restricted
hypergradient against finite differences and the engine's methods, bad inputs, the CLI setup."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic
from invcal import sparse
from problems import bpdn

TOL = 1e-14
SOLVER = sparse.WorkingSetFISTA(tol=TOL)
SUPPORT = sparse.SupportImplicit()
ACTIVE_SET = ic.Implicit(lx.CG(rtol=1e-12, atol=1e-15, max_steps=10_000), active_set=True)


@pytest.fixture(scope="module")
def cs():
    return bpdn.compressed_sensing(n=40, p=120, k=5, n_val=30, seed=0)


@pytest.fixture(scope="module")
def held_out(cs):
    lam = sparse.lambda_max(cs["A"], cs["y"]) / 5
    return bpdn.build(cs["A"], cs["y"], A_val=cs["A_val"], y_val=cs["y_val"], lam=lam)


@eqx.filter_jit
def _solve(solver, problem, theta):
    return solver.solve(problem, problem.x0, theta)


def _sklearn_lasso(A, y, lam, positive=False):
    from sklearn.linear_model import Lasso

    n = A.shape[0]
    model = Lasso(
        alpha=lam / n, fit_intercept=False, tol=1e-14, max_iter=1_000_000, positive=positive
    )
    return model.fit(np.asarray(A), np.asarray(y)).coef_


@pytest.mark.parametrize("working_set", [None, 8])
def test_solver_matches_sklearn(held_out, working_set):
    theta = held_out.space.init()
    sol = _solve(sparse.WorkingSetFISTA(tol=TOL, working_set=working_set), held_out, theta)
    ref = _sklearn_lasso(held_out.data["A"], held_out.data["y"], float(theta["lam"]))
    assert bool(sol.converged) and float(sol.residual) <= TOL
    np.testing.assert_allclose(sol.x, ref, atol=1e-9)
    gap = sparse.duality_gap(sol.x, theta, held_out.data, fb=held_out.fixed_point)
    assert abs(float(gap)) <= 1e-9


def test_working_set_grows_to_the_support():
    # K = min(n, p) = 70 >= 64: from x = 0 the first pass takes 17 columns and the working
    # set grows through 35 and 52 as the support needs; the solution is scikit-learn's.
    from invcal.sparse.working_set import _working_set_sizes

    assert _working_set_sizes(70) == (17, 35, 52, 70)
    assert _working_set_sizes(63) == (63,)
    raw = bpdn.compressed_sensing(n=70, p=300, k=30, seed=3)
    lam = sparse.lambda_max(raw["A"], raw["y"]) / 100
    prob = bpdn.build(raw["A"], raw["y"], criterion="sure", sigma=raw["sigma"], lam=lam)
    theta = prob.space.init()
    sol = _solve(SOLVER, prob, theta)
    ref = _sklearn_lasso(raw["A"], raw["y"], lam)
    assert bool(sol.converged)
    assert int(np.sum(ref != 0)) > 35
    np.testing.assert_allclose(sol.x[0], ref, atol=1e-9)


def test_nonnegative_solver_matches_sklearn():
    raw = bpdn.compressed_sensing(n=40, p=120, k=5, nonneg=True, seed=1)
    prob = bpdn.build(raw["A"], raw["y"], criterion="sure", sigma=raw["sigma"], nonneg=True)
    theta = prob.space.init()
    sol = _solve(SOLVER, prob, theta)
    ref = _sklearn_lasso(raw["A"], raw["y"], float(theta["lam"]), positive=True)
    assert bool(sol.converged)
    assert np.all(np.asarray(sol.x) >= 0)
    np.testing.assert_allclose(sol.x[0], ref, atol=1e-9)


@pytest.mark.parametrize("shape", [(8, 5), (90, 300), (300, 90)])
def test_lipschitz_is_the_squared_spectral_norm_from_above(shape):
    # Small Grams take the full eigendecomposition, larger ones Lanczos: both to ~1e-10.
    A = np.random.default_rng(1).standard_normal(shape)
    exact = np.linalg.norm(A, 2) ** 2
    L = sparse.problem._lipschitz(A)
    assert exact <= L <= exact * (1 + 1e-9)


def test_duality_gap_bounds_suboptimality(held_out):
    theta = held_out.space.init()
    x_star = _solve(SOLVER, held_out, theta).x
    fb, data = held_out.fixed_point, held_out.data
    w = fb.penalty(theta, data, 120)
    P = lambda x: float(sparse.primal(x, w, data["A"], data["y"]))  # noqa: E731
    x = x_star + 0.01 * jax.random.normal(jax.random.PRNGKey(0), x_star.shape)
    gap = float(sparse.duality_gap(x, theta, data, fb=fb))
    assert 0 <= P(x) - P(x_star) <= gap


def test_support_implicit_matches_finite_differences(held_out):
    theta = held_out.space.init()
    res = ic.check_hypergradient(held_out, theta, SUPPORT, solver=SOLVER, eps=1e-6)
    assert res.relative_error < 1e-6, res
    forward = ic.hypergradient(
        held_out, theta, solver=SOLVER, method=sparse.SupportImplicit(mode="forward")
    )
    dE_dlam = res.gradient[0] / float(theta["lam"])  # the check reports dE/d(log λ)
    assert float(forward.grad["lam"]) == pytest.approx(dE_dlam, rel=1e-10)


def test_support_slot_branches_agree_with_finite_differences():
    # min(n, p) = 70 >= 64: the hypergradient compiles 8, 35 and 70 support slots and takes
    # the smallest that holds the support; it must match the single 70-slot branch and FD.
    # (p < 2n: the inner solver uses all columns, one compiled pass.)
    assert sparse.support._slot_sizes(70) == (8, 35, 70)
    raw = bpdn.compressed_sensing(n=70, p=120, k=12, n_val=30, seed=5)
    lam = sparse.lambda_max(raw["A"], raw["y"]) / 8
    prob = bpdn.build(raw["A"], raw["y"], A_val=raw["A_val"], y_val=raw["y_val"], lam=lam)
    theta = prob.space.init()
    res = ic.check_hypergradient(prob, theta, SUPPORT, solver=SOLVER, eps=1e-6)
    assert res.relative_error < 1e-6, res
    ours = ic.hypergradient(prob, theta, solver=SOLVER, method=SUPPORT)
    assert 8 < int(np.sum(ours.x != 0)) <= 35
    single = ic.hypergradient(
        prob, theta, solver=SOLVER, method=sparse.SupportImplicit(max_support=70)
    )
    np.testing.assert_allclose(ours.grad["lam"], single.grad["lam"], rtol=1e-10)


@pytest.mark.slow  # ~7 s; FD and the weighted engine cross-check stay in the default run
def test_support_implicit_matches_engine_and_solve(held_out):
    theta = held_out.space.init()
    ours = ic.hypergradient(held_out, theta, solver=SOLVER, method=SUPPORT)
    engine = ic.hypergradient(held_out, theta, solver=SOLVER, method=ACTIVE_SET)
    np.testing.assert_allclose(ours.grad["lam"], engine.grad["lam"], rtol=1e-10)
    assert int(ours.diagnostics.linear_steps) <= int(np.sum(ours.x != 0)) + 1

    def E(lam):
        x = ic.solve(held_out, {"lam": lam}, solver=SOLVER, method=SUPPORT)
        return held_out.criterion(x, None, held_out.data)

    g_rev, g_fwd = jax.jit(lambda t: (jax.grad(E)(t), jax.jacfwd(E)(t)))(theta["lam"])
    np.testing.assert_allclose(g_rev, ours.grad["lam"], rtol=1e-10)
    np.testing.assert_allclose(g_fwd, ours.grad["lam"], rtol=1e-10)


def test_unrolled_fista_approaches_the_implicit_value(held_out):
    theta = held_out.space.init()
    ours = ic.hypergradient(held_out, theta, solver=SOLVER, method=SUPPORT)
    unrolled = ic.hypergradient(
        held_out,
        theta,
        solver=ic.FISTA(tol=1e-10, max_steps=1500),
        method=ic.Unrolled(num_steps=1500),
    )
    np.testing.assert_allclose(unrolled.grad["lam"], ours.grad["lam"], rtol=1e-6)


@eqx.filter_jit
def _value_z(problem, z):
    theta = problem.space.to_theta(z)
    return problem.criterion(SOLVER.solve(problem, problem.x0, theta).x, theta, problem.data)


def test_weighted_lasso_matches_engine_and_fd(cs):
    lam = sparse.lambda_max(cs["A"], cs["y"]) / 5
    prob = bpdn.build(
        cs["A"], cs["y"], A_val=cs["A_val"], y_val=cs["y_val"], lam=lam, weighted=True
    )
    theta = prob.space.init()
    ours = ic.hypergradient(prob, theta, solver=SOLVER, method=SUPPORT)
    engine = ic.hypergradient(prob, theta, solver=SOLVER, method=ACTIVE_SET)
    g = np.asarray(ours.grad["lam"])
    assert g.shape == (120,)
    np.testing.assert_allclose(g, engine.grad["lam"], rtol=1e-9, atol=1e-14)
    # Off the support the hypergradient is exactly zero (the solution does not move).
    assert np.all(g[np.asarray(ours.x) == 0] == 0)
    # Directional central difference in z = log λ along a random direction.
    z = prob.space.to_z(theta)
    d = jax.random.normal(jax.random.PRNGKey(3), z.shape)
    eps = 1e-6
    fd = (float(_value_z(prob, z + eps * d)) - float(_value_z(prob, z - eps * d))) / (2 * eps)
    g_d = float(jnp.vdot(ic.testing.grad_z(prob, theta, ours.grad), d))
    assert g_d == pytest.approx(fd, rel=1e-6)


def test_fd_on_operator_and_nonneg():
    # A matrix-free subsampled DCT (no column gathering) with the constraint x >= 0.
    raw = bpdn.compressed_sensing(n=40, p=128, k=5, n_val=30, operator="dct", nonneg=True, seed=2)
    lam = sparse.lambda_max(raw["A"], raw["y"], nonneg=True) / 5
    prob = bpdn.build(
        raw["A"], raw["y"], A_val=raw["A_val"], y_val=raw["y_val"], lam=lam, nonneg=True
    )
    res = ic.check_hypergradient(prob, prob.space.init(), SUPPORT, solver=SOLVER, eps=1e-6)
    assert res.relative_error < 1e-6, res
    assert np.all(np.asarray(res.gradient) != 0)


def test_support_larger_than_max_support_is_reported(held_out):
    with pytest.raises(ic.HypergradientNotConverged, match="linear solve"):
        ic.hypergradient(
            held_out,
            held_out.space.init(),
            solver=SOLVER,
            method=sparse.SupportImplicit(max_support=2),
        )


def test_methods_refuse_other_problems():
    prob = ic.Problem(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        criterion=lambda x, th, d: jnp.sum(x**2),
        x0=jnp.zeros(3),
        fixed_point=lambda x, th, d: x / 2,
    )
    with pytest.raises(ValueError, match="lasso_problem"):
        ic.hypergradient(prob, {"lam": 1.0}, solver=SOLVER, method=SUPPORT)
    with pytest.raises(ValueError, match="lasso_problem"):
        ic.hypergradient(prob, {"lam": 1.0}, solver=ic.FISTA(), method=SUPPORT)


# --------------------------------------------------------------------------------------
# Bad inputs fail before any solve
# --------------------------------------------------------------------------------------
@pytest.fixture
def no_solve(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a solve ran before the input was validated")

    monkeypatch.setattr(sparse.WorkingSetFISTA, "solve", boom)


def test_bad_inputs_raise_before_any_solve(cs, no_solve):
    A, y = np.asarray(cs["A"]), np.asarray(cs["y"])
    with pytest.raises(ValueError, match=r"y must have shape \(40,\)"):
        bpdn.build(A, y[:-1], criterion="sure", sigma=0.1)
    bad = A.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or inf"):
        bpdn.build(bad, y, criterion="sure", sigma=0.1)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        bpdn.build(A, np.where(np.arange(40) == 0, np.inf, y), criterion="sure", sigma=0.1)
    with pytest.raises(ValueError, match="held-out data"):
        bpdn.build(A, y, A_val=cs["A_val"], y_val=np.asarray(cs["y_val"])[:-2])
    for lam in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="lam must be > 0"):
            bpdn.build(A, y, criterion="sure", sigma=0.1, lam=lam)
    with pytest.raises(ValueError, match="lam must be > 0"):
        bpdn.build(A, y, criterion="sure", sigma=0.1, weighted=True, lam=np.r_[-1.0, np.ones(119)])
    for sigma in (0.0, -0.5, None):
        with pytest.raises(ValueError, match="sigma > 0"):
            bpdn.build(A, y, criterion="sure", sigma=sigma)
    with pytest.raises(ValueError, match="criterion must be one of"):
        bpdn.build(A, y, criterion="aic")


def test_bad_theta_given_directly_raises(held_out):
    with pytest.raises(ValueError, match="must be > 0"):
        ic.hypergradient(held_out, {"lam": -1.0}, solver=SOLVER, method=SUPPORT)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
@pytest.mark.slow  # ~10 s: the CLI setup and its figures; the default suite must stay under 10 min
def test_setup_runs_and_draws_the_report(tmp_path):
    setup = bpdn.setup(case="cs-gaussian", small=True)
    assert setup.description.startswith("Sparse recovery")
    result = ic.tune(
        setup.problem,
        solver=setup.solver,
        method=setup.method,
        optimizer="adam",
        learning_rate=0.3,
        steps=4,
        out=tmp_path,
    )
    assert len(result.history) == 4
    figures = setup.extra_report(result, tmp_path)
    names = [f for _, f in figures]
    assert names == ["bpdn_path.png", "bpdn_signal.png", "bpdn_support.png"]
    for name in names:
        assert (tmp_path / name).stat().st_size > 0


def test_fixed_l1_weights_match_a_rescaled_design_and_fd(cs):
    # λ Σ cⱼ|xⱼ| on A is the plain Lasso on the columns Aⱼ/cⱼ, with x = x̃/c.
    c = np.random.default_rng(0).uniform(0.5, 2.0, 120)
    lam = sparse.lambda_max(cs["A"], cs["y"], weights=c) / 5
    prob = bpdn.build(cs["A"], cs["y"], A_val=cs["A_val"], y_val=cs["y_val"], lam=lam, l1_weights=c)
    x = np.asarray(_solve(SOLVER, prob, prob.space.init()).x)
    ref = _sklearn_lasso(np.asarray(cs["A"]) / c, cs["y"], lam) / c
    np.testing.assert_allclose(x, ref, atol=1e-8)
    res = ic.check_hypergradient(prob, prob.space.init(), SUPPORT, solver=SOLVER, eps=1e-6)
    assert res.relative_error < 1e-6, res
    with pytest.raises(ValueError, match=r"l1_weights must have shape \(120,\)"):
        bpdn.build(cs["A"], cs["y"], A_val=cs["A_val"], y_val=cs["y_val"], l1_weights=c[:5])
    with pytest.raises(ValueError, match="l1_weights must be positive"):
        bpdn.build(cs["A"], cs["y"], A_val=cs["A_val"], y_val=cs["y_val"], l1_weights=-c)


@pytest.mark.slow  # ~1 min: two SURE tunings (5 stacked solves each) and their compilation
def test_reweighted_sure_recovers_the_support():
    raw = bpdn.compressed_sensing(n=60, p=200, k=6, seed=1)
    out = bpdn.reweighted_sure(raw["A"], raw["y"], raw["sigma"], steps=20)
    f1_lasso = bpdn.support_f1(out["x_lasso"], raw["x_true"])
    f1 = bpdn.support_f1(out["x"], raw["x_true"])
    assert f1 >= 0.9 and f1 > f1_lasso, (f1, f1_lasso)
    assert out["problem"].x0.shape == (5, 200)  # y and 4 probes y + εδₖ


def test_problem_data_is_typed_and_reads_as_a_mapping(held_out, cs):
    data = held_out.data
    assert isinstance(data, sparse.LassoData)
    # The solvers read the fields; criteria read names; both see the same arrays.
    assert data["A"] is data.A and data["y"] is data.y and data["lipschitz"] is data.lipschitz
    np.testing.assert_array_equal(data["A_val"], cs["A_val"])
    assert set(data) == {"A", "y", "lipschitz", *data.extra} and "y_val" in data
    assert float(data.lipschitz) >= float(np.linalg.norm(np.asarray(cs["A"]), 2) ** 2) * (1 - 1e-12)
    with pytest.raises(KeyError, match="no entry 'nope'; it has"):
        data["nope"]
    with pytest.raises(ValueError, match="are fields, not extra entries"):
        sparse.LassoData(A=data.A, y=data.y, lipschitz=data.lipschitz, extra={"y": data.y})
    # Rebuilding from the typed data gives the same problem (and the same compiled code).
    fb = held_out.fixed_point
    again = sparse.lasso_problem(
        held_out.space, held_out.criterion, data, weights=fb.weights, name=held_out.name
    )
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(held_out)
