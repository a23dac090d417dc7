"""Full (pdSymm) random-effect covariance Ω = CCᵀ by its log-Cholesky factor, and the
inner solves' convergence flags.

Default run (no compilation of a population program): the algebra of Ω against NumPy and
the diagonal model, the log-Cholesky space, argument checks. The default run checks the
FOCEI hypergradient with a full Ω against finite differences in tests/test_ode_sharding.py
(on the program that test compiles anyway). Slow: FOCEI and Laplace hypergradients with a
full Ω on the seed model, Theoph fits (full Ω vs diagonal and against nlme's ``pdSymm``)."""

import jax.numpy as jnp
import numpy as np
import pytest

from invcal import ode
from invcal.ode.population import _population, _prepare
from problems.hierarchical_ode import INIT, load_theoph, seed_events, seed_model, theophylline_model

# seed model, full Omega: C = [[0.4, 0], [0.15, 0.3]] (correlation 0.45)
THETA = {
    "p": 2.0,
    "q": 1.0,
    "omega_chol_p": 0.4,
    "omega_chol_q": 0.3,
    "omega_chol_q_p": 0.15,
    "sigma_add": 0.15,
}

# R nlme 3.1-162, ML: nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), Theoph,
# fixed = lKe + lKa + lCl ~ 1, random = pdSymm(lKe + lKa + lCl ~ 1)), run here.
NLME_PDSYMM = {
    "lKe": -2.4326779,
    "lKa": 0.4514158,
    "lCl": -3.2144547,
    "sd": {"lKe": 0.1310338, "lKa": 0.6377396, "lCl": 0.2511798},
    "corr": {("lKa", "lKe"): 0.012, ("lCl", "lKe"): 0.995, ("lCl", "lKa"): -0.089},
    "sigma_add": 0.6818331,
    "loglik": -173.3201,
}


@pytest.fixture(scope="module")
def setting():
    events, _ = seed_events(6, times=np.arange(0.0, 3.01, 0.5), seed=5)
    return seed_model(rtol=1e-10, atol=1e-12), events


# directions in z: the off-diagonal Cholesky entry alone, and every coordinate at once
DIRECTIONS = (np.eye(6)[4], np.array([0.3, -0.5, 0.7, 0.2, -0.4, 0.6]))


def fd_check(model, events, theta, eps=1e-5, **kw):
    """(largest relative error of the directional derivatives, objective, FD values)."""
    obj = ode.population_objective(model, events, theta, inner_tol=1e-12, omega="full", **kw)
    method = kw.get("approximation", "focei")
    _, _, _, space = _prepare(model, events, theta, None, "additive", method, None, omega="full")
    errors, fds = [], []
    for d in DIRECTIONS:
        vals = []
        for sign in (1.0, -1.0):
            th = space.to_theta(jnp.asarray(obj.z + sign * eps * d))
            th = {k: float(v) for k, v in th.items()}
            vals.append(
                ode.population_objective(
                    model, events, th, inner_tol=1e-12, eta0=obj.eta, omega="full", **kw
                ).value
            )
        fd = (vals[0] - vals[1]) / (2 * eps)
        errors.append(abs(float(obj.grad_z @ d) - fd) / abs(fd))
        fds.append(fd)
    return max(errors), obj, fds


def test_full_omega_algebra_matches_the_diagonal_model():
    model = seed_model()
    full = _population(model, None, None, "additive", "focei", "full")
    diag = _population(model, None, None, "additive", "focei", "diagonal")
    th_full = {k: jnp.asarray(v) for k, v in THETA.items()}
    eta = jnp.asarray([0.3, -0.2])
    C = np.array([[0.4, 0.0], [0.15, 0.3]])
    omega = C @ C.T
    np.testing.assert_allclose(full.omega_matrix(th_full), omega, rtol=1e-14)
    np.testing.assert_allclose(full.omega_inv(th_full), np.linalg.inv(omega), rtol=1e-12)
    quad, logdet = full.omega_prior(eta, th_full)
    assert float(quad) == pytest.approx(float(eta @ np.linalg.solve(omega, eta)), rel=1e-12)
    assert float(logdet) == pytest.approx(np.linalg.slogdet(omega)[1], rel=1e-12)
    np.testing.assert_allclose(full.omega_sd(th_full), np.sqrt(np.diag(omega)), rtol=1e-14)
    # no correlation: the full model's prior terms equal the diagonal model's
    th0 = dict(th_full, omega_chol_q_p=jnp.asarray(0.0))
    th_d = {"omega_p": th0["omega_chol_p"], "omega_q": th0["omega_chol_q"]}
    for a, b in zip(full.omega_prior(eta, th0), diag.omega_prior(eta, th_d), strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-14)
    # log-Cholesky: the diagonal is Log (positive for every z), the rest Identity
    events = ode.read_events({"ID": [1, 1], "TIME": [0.0, 1.0], "DV": [1.0, 0.5]})
    _, _, _, space = _prepare(
        model, events, {"p": 2.0, "q": 1.0}, None, "additive", "focei", None, omega="full"
    )
    assert space.init()["omega_chol_p"] == 0.5 and space.init()["omega_chol_q_p"] == 0.0
    z = space.to_z(space.init())
    th = space.to_theta(z.at[:].set(-50.0))
    assert float(th["omega_chol_p"]) > 0 and float(th["omega_chol_q_p"]) == -50.0


def test_full_omega_bad_arguments():
    model = seed_model()
    events = ode.read_events({"ID": [1, 1], "TIME": [0.0, 1.0], "DV": [1.0, 0.5]})
    with pytest.raises(ValueError, match="omega must be 'diagonal'.*'full'.*pdSymm"):
        ode.fit_population(model, events, init={"p": 2.0, "q": 1.0}, omega="pdSymm")
    with pytest.raises(ValueError, match="either by its SDs.*not both"):
        ode.fit_population(
            model,
            events,
            init={"p": 2.0, "q": 1.0, "omega_p": 0.3, "omega_chol_q_p": 0.1},
            omega="full",
        )
    with pytest.raises(ValueError, match=r"unknown names \['omega_chol_p'\]"):
        ode.fit_population(model, events, init={"p": 2.0, "q": 1.0, "omega_chol_p": 0.3})


def test_omega_objects_name_the_structures():
    """omega=DiagonalOmega() / FullOmega() build the same population as the strings."""
    model = seed_model()
    for obj, name in ((ode.DiagonalOmega(), "diagonal"), (ode.FullOmega(), "full")):
        assert _population(model, None, None, "additive", "focei", obj) == _population(
            model, None, None, "additive", "focei", name
        )
    with pytest.raises(TypeError, match=r"FullOmega\(\), not the class"):
        _population(model, None, None, "additive", "focei", ode.FullOmega)


# --------------------------------------------------------------------------------------
# Slow: Theoph with a full Omega
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_theoph_full_omega_matches_nlme_pdsymm_and_nests_the_diagonal_fit():
    model = theophylline_model(rtol=1e-7, atol=1e-9)
    theoph = load_theoph()
    diag = ode.fit_population(model, theoph, init=INIT)
    full = ode.fit_population(model, theoph, init=INIT, omega="full")
    assert full.converged and diag.converged
    # nested models: a full Omega can only raise the maximized likelihood
    assert full.loglik >= diag.loglik
    assert full.n_params == diag.n_params + 3
    ref = NLME_PDSYMM
    assert full.loglik == pytest.approx(ref["loglik"], abs=0.01)
    for p in ("lKe", "lKa", "lCl"):
        assert full.fixed_effects[p] == pytest.approx(ref[p], abs=1e-3)
        assert full.random_sd[p] == pytest.approx(ref["sd"][p], rel=0.01)
    for k, r in ref["corr"].items():
        assert full.random_corr[k] == pytest.approx(r, abs=0.005)
    assert full.residual_sd == pytest.approx(ref["sigma_add"], rel=0.01)
    np.testing.assert_allclose(np.diag(full.omega_matrix), [v**2 for v in full.random_sd.values()])
    text = full.summary()
    assert "general Omega" in text and "Correlation" in text
    # the exact FOCEI maximum by L-BFGS with implicit hypergradients: at least as high
    exact = ode.fit_population(model, theoph, init=INIT, omega="full", algorithm="lbfgs")
    assert exact.loglik >= full.loglik - 1e-3
    assert exact.inner_converged.all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["focei", "laplace"])
def test_full_omega_hypergradient_matches_finite_differences(setting, method):
    model, events = setting
    rel, obj, fd = fd_check(model, events, THETA, approximation=method)
    assert obj.names == ("p", "q", "omega_chol_p", "omega_chol_q", "omega_chol_q_p", "sigma_add")
    assert rel < 1e-5, (rel, obj.grad_z, fd)
    assert obj.inner_converged.all()
    assert abs(fd[0]) > 1e-2  # the off-diagonal Cholesky entry moves the likelihood
