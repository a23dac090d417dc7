"""The held-out-observations criterion: its value against a direct computation from the
simulated predictions at the MAP random effects, its implicit hypergradient against
central finite differences, a short fit, and argument checks (seed model, one
compilation)."""

import jax.numpy as jnp
import numpy as np
import pytest

from invcal import ode
from invcal.ode.population import _prepare
from problems.hierarchical_ode import SEED_TRUTH, seed_events, seed_model

THETA = {**SEED_TRUTH, "omega_p": 0.4, "omega_q": 0.3, "sigma_add": 0.15}


@pytest.fixture(scope="module")
def setting():
    events, _ = seed_events(8, times=np.arange(0.0, 3.01, 0.5), seed=3)
    return seed_model(rtol=1e-10, atol=1e-12), events


def test_heldout_value_is_the_predictive_density_of_the_held_out_rows(setting):
    model, events = setting
    rows = ode.holdout_rows(events, 0.3, seed=1)
    obj = ode.population_objective(model, events, THETA, approximation="heldout", holdout=rows)
    # each subject keeps >= 1 observation and holds out round(0.3 * 7) = 2
    for s in events.subjects:
        assert rows[events.id == s].sum() == 2
    phi = {"p": THETA["p"] + obj.eta[:, 0], "q": THETA["q"] + obj.eta[:, 1]}
    sim = ode.simulate(model, events, phi)
    total = 0.0
    for s in events.subjects:
        m = (events.id == s) & events.is_observation
        f = sim[s][1][rows[m]]
        y = events.dv[m][rows[m]]
        R = THETA["sigma_add"] ** 2
        total += 0.5 * np.sum((y - f) ** 2 / R + np.log(2 * np.pi * R))
    assert obj.value == pytest.approx(total, rel=1e-9)
    # the inner fits ignore the held-out rows: changing their DV leaves eta* alone
    ev2 = ode.read_events(
        {
            "ID": events.id,
            "TIME": events.time,
            "DV": np.where(rows, events.dv + 5.0, events.dv),
        }
    )
    obj2 = ode.population_objective(model, ev2, THETA, approximation="heldout", holdout=rows)
    np.testing.assert_allclose(obj2.eta, obj.eta, atol=1e-12)
    assert obj2.value > obj.value + 10


def test_heldout_hypergradient_matches_finite_differences(setting):
    model, events = setting
    kw = {"approximation": "heldout", "holdout": 0.3, "holdout_seed": 1, "inner_tol": 1e-12}
    obj = ode.population_objective(model, events, THETA, **kw)
    _, _, _, space = _prepare(model, events, THETA, None, "additive", "heldout", None, 0.3, 1)
    eps = 1e-5
    fd = np.zeros(obj.z.shape[0])
    for i in range(fd.shape[0]):
        vals = []
        for sign in (1.0, -1.0):
            z = obj.z.copy()
            z[i] += sign * eps
            th = {k: float(v) for k, v in space.to_theta(jnp.asarray(z)).items()}
            vals.append(ode.population_objective(model, events, th, eta0=obj.eta, **kw).value)
        fd[i] = (vals[0] - vals[1]) / (2 * eps)
    assert np.linalg.norm(obj.grad_z - fd) / np.linalg.norm(fd) < 1e-5
    # every population parameter moves the criterion (omegas only through eta*)
    assert np.all(np.abs(fd) > 1e-3)


@pytest.mark.slow  # the held-out value and its hypergradient (FD) stay in the default leg
def test_heldout_fit(setting):
    model, events = setting
    init = {"p": 1.5, "q": 0.5}
    fit = ode.fit_population(
        model, events, init=init, approximation="heldout", holdout=0.3, holdout_seed=1, max_iter=100
    )
    assert fit.method == "HeldOutDensity" and fit.n_holdout == 16 and fit.n_obs == 56 - 16
    assert np.isnan(fit.loglik) and np.isnan(fit.aic)
    start = ode.population_objective(
        model, events, {**fit.theta, **init}, approximation="heldout", holdout=0.3, holdout_seed=1
    )
    assert fit.criterion < start.value
    assert "Held-out -log predictive density" in fit.summary()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"approximation": "heldout"}, "needs holdout="),
        ({"holdout": 0.2}, "holdout= is for approximation='heldout'"),
        ({"approximation": "heldout", "holdout": 1.5}, r"fraction must be in \(0, 1\)"),
        ({"approximation": "heldout", "holdout": np.ones(3, bool)}, r"shape \(56,\)"),
        ({"approximation": "heldout", "holdout": np.zeros(56, bool)}, "selects no observation"),
    ],
)
def test_heldout_arguments(setting, kwargs, match):
    model, events = setting
    with pytest.raises(ValueError, match=match):
        ode.fit_population(model, events, init={"p": 1.0, "q": 0.0}, **kwargs)


def test_holdout_of_a_dose_row_is_refused():
    from problems.hierarchical_ode import load_theoph

    ev = load_theoph()
    rows = np.zeros(ev.id.shape[0], bool)
    rows[0] = True  # Theoph's first row is subject 1's dose
    with pytest.raises(ValueError, match=r"row 1 \(ID 1\).*not an observation"):
        ode.holdout_rows(ev, rows)
