"""Outer criteria: held-out, K-fold (vmapped folds, one λ), SURE (Monte-Carlo divergence)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invcal as ic
from invcal import criteria, sparse
from problems import bpdn

SOLVER = sparse.WorkingSetFISTA(tol=1e-14)
SUPPORT = sparse.SupportImplicit()


@pytest.fixture(scope="module")
def cs():
    return bpdn.compressed_sensing(n=40, p=120, k=5, seed=4)


def test_held_out_ignores_padding_rows():
    crit = criteria.held_out()
    x = jnp.array([1.0, 2.0])
    data = {
        "A_val": jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
        "y_val": jnp.array([0.0, 0.0, 0.0]),
        "val_weight": jnp.array([1.0, 1.0, 0.0]),
    }
    assert float(crit(x, None, data)) == pytest.approx(2.5)
    del data["val_weight"]
    assert float(crit(x, None, data)) == pytest.approx(5.0 / 3.0)
    assert criteria.held_out() == crit  # equal criteria share compiled code


def test_kfold_data_matches_sklearn_kfold_and_centers_per_fold():
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(0)
    A, y = rng.normal(size=(23, 4)), rng.normal(size=23)
    data = criteria.kfold_data(A, y, 5, center=True)
    assert data["A"].shape == (5, 19, 4) and data["A_val"].shape == (5, 5, 4)
    for k, (tr, va) in enumerate(KFold(5).split(A)):
        n_tr, n_va = len(tr), len(va)
        assert float(data["n_train"][k]) == n_tr
        xm, ym = A[tr].mean(0), y[tr].mean()
        np.testing.assert_allclose(data["A"][k, :n_tr], A[tr] - xm)
        np.testing.assert_allclose(data["y"][k, :n_tr], y[tr] - ym)
        np.testing.assert_allclose(data["A_val"][k, :n_va], A[va] - xm)
        np.testing.assert_allclose(data["y_val"][k, :n_va], y[va] - ym)
        assert np.all(np.asarray(data["A"][k, n_tr:]) == 0)  # zero rows: same least squares
        assert float(np.sum(data["val_weight"][k])) == n_va
    with pytest.raises(ValueError, match="2 <= folds"):
        criteria.kfold_data(A, y, 1)
    with pytest.raises(ValueError, match="A must be"):
        criteria.kfold_data(A, y[:-1], 5)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_kfold_data_copies_contiguous_and_scattered_folds(center, shuffle):
    # contiguous folds are copied run by run, shuffled ones (runs of one row) gathered
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(1)
    A, y = rng.normal(size=(700, 6)), rng.normal(size=700)
    splits = list(KFold(5, shuffle=shuffle, random_state=0 if shuffle else None).split(A))
    data = criteria.kfold_data(A, y, splits, center=center)
    for k, (tr, va) in enumerate(splits):
        xm = A[tr].mean(0) if center else 0.0
        np.testing.assert_allclose(data["A"][k, : len(tr)], A[tr] - xm, rtol=0, atol=1e-13)
        np.testing.assert_allclose(data["A_val"][k, : len(va)], A[va] - xm, rtol=0, atol=1e-13)
        if center:
            np.testing.assert_allclose(data["x_mean"][k], xm, rtol=0, atol=1e-14)


def test_kfold_stacks_are_shared_with_jax_not_copied():
    # The fold stacks (K copies of the design) are written into 64-byte aligned buffers,
    # which XLA's CPU client uses in place: device_put shares them, uncommitted (so that
    # jit's compiled programs are reused across fits), instead of copying 100+ MB per fit.
    if jax.default_backend() != "cpu" or not jax.config.jax_enable_x64:
        pytest.skip("host buffers are shared on a CPU backend, in float64")
    a = criteria._host_stack((3, 50, 40))
    assert a.ctypes.data % 64 == 0
    a[:] = 1.0
    shared = jax.device_put(a)
    assert shared.unsafe_buffer_pointer() == a.ctypes.data and not shared.committed
    A = np.random.default_rng(0).normal(size=(50, 40))
    data = criteria.kfold_data(A, A[:, 0], 5, center=True)
    assert not data["A"].committed and not data["A_val"].committed


def test_kfold_equals_the_mean_of_separate_folds(cs):
    A, y = np.asarray(cs["A"]), np.asarray(cs["y"])
    lam = sparse.lambda_max(A, y) / 4
    cv = bpdn.build(A, y, criterion="kfold", folds=5, lam=lam)
    theta = cv.space.init()
    hg = ic.hypergradient(cv, theta, solver=SOLVER, method=SUPPORT)
    values, grads = [], []
    from sklearn.model_selection import KFold

    for tr, va in KFold(5).split(A):
        one = bpdn.build(A[tr], y[tr], A_val=A[va], y_val=y[va], lam=lam)
        h = ic.hypergradient(one, theta, solver=SOLVER, method=SUPPORT)
        values.append(float(h.value))
        grads.append(float(h.grad["lam"]))
    assert float(hg.value) == pytest.approx(np.mean(values), rel=1e-10)
    assert float(hg.grad["lam"]) == pytest.approx(np.mean(grads), rel=1e-8)


# --------------------------------------------------------------------------------------
# SURE
# --------------------------------------------------------------------------------------
def test_sure_is_unbiased_for_a_linear_smoother():
    # Ridge fit f(y) = H y, H = A(AᵀA + μI)⁻¹Aᵀ: div f = tr H exactly, E[SURE] = E‖f(y) − μ‖².
    rng = np.random.default_rng(1)
    n, p, sigma = 30, 10, 0.7
    A = rng.normal(size=(n, p))
    mu = A @ rng.normal(size=p)
    H = A @ np.linalg.solve(A.T @ A + 3.0 * np.eye(p), A.T)
    draws = 4000
    Y = mu + sigma * rng.normal(size=(draws, n))
    sure = [float(criteria.sure_value(yy, H @ yy, np.trace(H), sigma)) for yy in Y[:200]]
    risk = np.mean(np.sum((Y @ H.T - mu) ** 2, axis=1)) / n
    assert np.mean(sure) == pytest.approx(risk, rel=0.1)
    # The Monte-Carlo divergence of a linear map: δᵀHδ averaged over probes → tr H.
    div = criteria.monte_carlo_divergence(lambda v: jnp.asarray(H) @ v, Y[0], num_probes=2000)
    assert float(div) == pytest.approx(np.trace(H), rel=0.05)


@pytest.mark.slow  # ~20 s: compiles the JVP of a solve with respect to the data
def test_lasso_divergence_by_exact_jvp_is_the_projection_on_the_support(cs):
    # For the Lasso, J = A_S(A_SᵀA_S)⁻¹A_Sᵀ (Zou et al. 2007): δᵀJδ = ‖P_S δ‖².
    A, y = jnp.asarray(cs["A"]), jnp.asarray(cs["y"])
    prob = bpdn.build(A, y, criterion="held_out", A_val=A, y_val=y)
    theta = prob.space.init()

    @jax.jit
    def fitted(y_):
        p_ = eqx.tree_at(lambda p: p.data["y"], prob, y_)
        return A @ ic.solve(p_, theta, solver=SOLVER, method=SUPPORT)

    div = criteria.monte_carlo_divergence(fitted, y, key=7, num_probes=3)
    x = eqx.filter_jit(lambda p: SOLVER.solve(p, p.x0, theta).x)(prob)
    S = np.flatnonzero(np.asarray(x))
    AS = np.asarray(A)[:, S]
    P = AS @ np.linalg.solve(AS.T @ AS, AS.T)
    probes = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (3, 40)))
    expected = np.mean([d @ P @ d for d in probes])
    assert float(div) == pytest.approx(expected, rel=1e-8)


def test_finite_difference_sure_hypergradient(cs):
    prob = bpdn.build(cs["A"], cs["y"], criterion="sure", sigma=cs["sigma"])
    assert prob.x0.shape == (2, 120)  # x*(y) and x*(y + εδ), solved side by side
    res = ic.check_hypergradient(prob, prob.space.init(), SUPPORT, solver=SOLVER, eps=1e-6)
    assert res.relative_error < 1e-6


def test_sure_with_several_probes_averages_their_divergences():
    # A linear smoother f(y) = H y: the finite-difference divergence of probe k is δₖᵀHδₖ
    # exactly, so the criterion of the stacked copies is known in closed form.
    rng = np.random.default_rng(2)
    n, p, sigma = 12, 5, 0.3
    A = rng.normal(size=(n, p))
    H = A @ np.linalg.solve(A.T @ A + np.eye(p), A.T)
    y = A @ rng.normal(size=p) + sigma * rng.normal(size=n)
    one = criteria.sure_pair({"y": y}, sigma=sigma, seed=5)
    four = criteria.sure_pair({"y": y}, sigma=sigma, seed=5, probes=4)
    assert one["y"].shape == (2, n) and four["y"].shape == (5, n)
    # One probe is the pair of before; the first of four probes is that same δ.
    np.testing.assert_array_equal(four["sure_probes"].delta[1], one["sure_probes"].delta[1])
    np.testing.assert_array_equal(one["sure_probes"].delta[0], one["sure_probes"].delta[1])
    crit = criteria.sure(predict=lambda x, d: x, normalize=False)
    for data in (one, four):
        fits = jnp.asarray(np.asarray(data["y"]) @ H.T)  # f(y), f(y + εδₖ)
        deltas = np.asarray(criteria.sure_probes(data).delta[1:])
        div = np.mean([d @ H @ d for d in deltas])
        expected = np.sum((y - H @ y) ** 2) - n * sigma**2 + 2 * sigma**2 * div
        assert float(crit(fits, None, data)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        criteria.sure_pair({"y": y}, sigma=sigma, probes=0)


def test_sure_rejects_bad_sigma_and_data():
    data = {"y": jnp.ones(5)}
    for sigma in (0.0, -1.0, np.inf, np.nan, None, "abc"):
        with pytest.raises(ValueError, match="sigma > 0"):
            criteria.sure_pair(data, sigma=sigma)
        with pytest.raises(ValueError, match="sigma > 0"):
            criteria.sure_value(jnp.ones(3), jnp.ones(3), 1.0, sigma)
    with pytest.raises(ValueError, match="NaN or inf"):
        criteria.sure_pair({"y": jnp.array([1.0, jnp.nan])}, sigma=1.0)
    with pytest.raises(ValueError, match="measurements under 'y'"):
        criteria.sure_pair({"b": jnp.ones(3)}, sigma=1.0)
    with pytest.raises(TypeError, match="predict must be"):
        criteria.held_out(predict=3)


def test_sure_probes_are_one_typed_entry():
    y = np.random.default_rng(3).normal(size=6)
    pair = criteria.sure_pair({"y": y, "w": np.ones(6)}, sigma=0.2, eps=0.01, probes=3)
    probes = criteria.sure_probes(pair)
    assert isinstance(probes, criteria.SureProbes)
    assert sorted(pair) == ["sure_probes", "w", "y"]  # the user's entries and the probes
    assert probes.delta.shape == (4, 6) and probes.eps.shape == probes.sigma.shape == (4,)
    np.testing.assert_allclose(pair["y"][1:] - y, 0.01 * probes.delta[1:], atol=1e-12)
    crit = criteria.sure(predict=lambda x, d: x)
    with pytest.raises(KeyError, match=r"sure_pair.*has none: \['y'\]"):
        crit(jnp.ones((2, 6)), None, {"y": jnp.ones((2, 6))})
    with pytest.raises(ValueError, match="already holds SURE probes"):
        criteria.sure_pair(pair, sigma=0.2)


def test_every_criterion_is_one_abstraction_with_a_preparation_step():
    from invcal import imaging

    made = [
        criteria.held_out(),
        criteria.kfold(criteria.held_out()),
        criteria.sure(),
        criteria.mse_to_truth(),
        imaging.MSE(),
        imaging.PSNR(),
        imaging.SURE(0.1),
    ]
    for crit in made:
        assert isinstance(crit, criteria.AbstractCriterion), crit
    data = {"A_val": jnp.eye(2), "y_val": jnp.zeros(2)}
    assert criteria.held_out().prepare(data) is data  # nothing to prepare
    # SURE's preparation is sure_pair with the criterion's settings.
    y = np.random.default_rng(1).normal(size=7)
    crit = criteria.sure(predict=lambda x, d: x, sigma=0.3, seed=5, probes=2)
    prepared, direct = (
        crit.prepare({"y": y}),
        criteria.sure_pair({"y": y}, sigma=0.3, seed=5, probes=2),
    )
    assert prepared.keys() == direct.keys()
    assert jax.tree_util.tree_structure(prepared) == jax.tree_util.tree_structure(direct)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(prepared), leaves(direct), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="SURE.prepare needs the noise level"):
        criteria.sure().prepare({"y": y})
    with pytest.raises(ValueError, match="sigma > 0"):
        criteria.sure(sigma=-1.0)
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        criteria.sure(sigma=1.0, probes=0)
    # The preparation settings do not enter the call, so they do not split compiled code.
    assert criteria.sure(sigma=0.1) == criteria.sure(sigma=0.2)
    assert hash(criteria.sure(sigma=0.1)) == hash(criteria.sure(sigma=0.2))
    assert criteria.sure(normalize=False) != criteria.sure()
    # One spelling: the old class name still works, with a warning naming the new one.
    with pytest.warns(DeprecationWarning, match="criteria.SURE"):
        assert criteria.Sure is criteria.SURE


@pytest.mark.slow  # 30 s (two compilations of the support method); the equality it rests on
# is checked in the default leg (test_every_criterion_is_one_abstraction_...)
def test_sure_at_another_noise_level_compiles_nothing(cs):
    from invcal.testing import count_compilations

    base = {"A": cs["A"], "y": cs["y"]}
    space = ic.Space(lam=ic.Param(0.1 * float(sparse.lambda_max(cs["A"], cs["y"])), ic.Log()))

    def hypergradient(sigma):
        crit = criteria.sure("A", "y", sigma=sigma)
        problem = sparse.lasso_problem(space, crit, crit.prepare(base), batched=True)
        return ic.hypergradient(problem, space.init(), solver=SOLVER, method=SUPPORT)

    first = hypergradient(cs["sigma"])
    with count_compilations() as count:
        second = hypergradient(2.0 * cs["sigma"])
    assert count.compiles == 0, count
    assert float(first.value) != float(second.value)
