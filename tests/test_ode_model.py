"""ODEModel and simulation: the Theoph ODE against R's closed form SSfol, multiple doses,
infusions, dose/observation record order, and forward-mode derivatives (jets)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal import ode
from problems.hierarchical_ode import load_theoph, ssfol, theophylline_model

PHI = {"lKe": -2.4546, "lKa": 0.4655, "lCl": -3.2272}


@pytest.fixture(scope="module")
def model():
    return theophylline_model()


@pytest.fixture(scope="module")
def theoph():
    return load_theoph()


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_theoph_matches_ssfol(model, theoph):
    sim = ode.simulate(model, theoph, PHI)
    assert set(sim) == set(theoph.subjects)
    for sid, (t, f) in sim.items():
        dose = theoph.amt[(theoph.id == sid) & theoph.is_dose][0]
        ref = np.asarray(ssfol(dose, t, PHI["lKe"], PHI["lKa"], PHI["lCl"]))
        assert t.shape == (11,)
        assert _rel(f, ref) < 1e-6
        pos = ref > 0
        assert np.max(np.abs(f[pos] / ref[pos] - 1)) < 1e-6


def test_dense_times_and_per_subject_params(model, theoph):
    lka = np.linspace(0.2, 0.8, 12)
    times = np.linspace(0.0, 30.0, 7)  # past the last sample: the last segment is extended
    sim = ode.simulate(model, theoph, {**PHI, "lKa": lka}, times=times)
    for k, sid in enumerate(theoph.subjects):
        dose = theoph.amt[(theoph.id == sid) & theoph.is_dose][0]
        ref = np.asarray(ssfol(dose, times, PHI["lKe"], lka[k], PHI["lCl"]))
        assert _rel(sim[sid][1], ref) < 1e-6


def test_multiple_doses_infusion_and_record_order(model):
    ke, ka, cl = (np.exp(PHI[k]) for k in ("lKe", "lKa", "lCl"))
    V = cl / ke
    ev = ode.read_events(
        {
            # subject 1: oral doses at 0 and 12; subject 2: infusion into central from t=1
            # (AMT 2 at RATE 1: until t=3), an IV bolus of 1.5 at t=8 with one sample
            # recorded before and one after the dose row.
            "ID": [1] * 8 + [2] * 8,
            "TIME": [0, 1, 6, 12, 12, 13, 18, 24] + [0.5, 1, 2, 5, 8, 8, 8, 10],
            "DV": [".", 1, 1, ".", 1, 1, 1, 1] + [0, ".", 1, 1, 1, ".", 1, 1],
            "AMT": [4, 0, 0, 3, 0, 0, 0, 0] + [0, 2, 0, 0, 0, 1.5, 0, 0],
            "RATE": [0] * 8 + [0, 1, 0, 0, 0, 0, 0, 0],
            "EVID": [1, 0, 0, 1, 0, 0, 0, 0] + [0, 1, 0, 0, 0, 1, 0, 0],
            "CMT": [1, 2, 2, 1, 2, 2, 2, 2] + [2, 2, 2, 2, 2, 2, 2, 2],
        }
    )
    sim = ode.simulate(model, ev, PHI)
    t1, f1 = sim[1]
    ref1 = ssfol(4.0, t1, *PHI.values()) + np.where(
        t1 >= 12, ssfol(3.0, np.maximum(t1 - 12, 0), *PHI.values()), 0.0
    )
    assert _rel(f1, ref1) < 1e-6

    t2, f2 = sim[2]

    def infusion(t):
        on = np.clip(t - 1.0, 0.0, 2.0)  # time infused so far
        c_end = (1.0 / cl) * (1 - np.exp(-ke * on))
        return np.where(t <= 3.0, c_end, c_end * np.exp(-ke * (t - 3.0)))

    bolus = np.array([0, 0, 0, 0, 1, 1]) * 1.5 / V * np.exp(-ke * (t2 - 8.0))
    ref2 = infusion(t2) + bolus
    np.testing.assert_allclose(t2, [0.5, 2, 5, 8, 8, 10])
    assert _rel(f2, ref2) < 1e-6
    assert f2[4] - f2[3] == pytest.approx(1.5 / V, rel=1e-6)  # record order decides


@pytest.fixture(scope="module")
def jets_subject1(model, theoph):
    arrays = ode.subject_arrays(theoph, model)
    subj = jax.tree_util.tree_map(lambda a: a[0], arrays)
    phi = jnp.array(list(PHI.values()))
    jets, ok = jax.jit(lambda p: ode.prediction_jets(model, subj, p, 2))(phi)
    return subj, phi, jets, ok


def test_jets_match_closed_form_derivatives(jets_subject1, theoph):
    subj, phi, jets, ok = jets_subject1
    assert bool(ok)
    t = subj.obs_t
    dose = theoph.amt[(theoph.id == 1) & theoph.is_dose][0]

    def closed(p):
        return ssfol(dose, t, p[0], p[1], p[2])

    ref = jax.jit(lambda p: (closed(p), jax.jacfwd(closed)(p), jax.hessian(closed)(p)))(phi)
    for got, want in zip(jets, ref, strict=True):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-6


def test_taylor_polynomial(model, jets_subject1):
    subj, phi, jets, _ = jets_subject1
    d = jnp.array([1e-3, -2e-3, 5e-4])
    exact, _ = jax.jit(lambda p: ode.predict(model, subj, p))(phi + d)
    # second-order Taylor: error O(|d|^3)
    assert _rel(ode.taylor(jets, d), exact) < 1e-7
    assert _rel(ode.taylor(jets[:2], d), exact) > 1e-7


@pytest.mark.slow
def test_reverse_adjoint_first_derivatives_only(jets_subject1):
    subj, phi, jets, _ = jets_subject1
    model = theophylline_model(adjoint=dfx.RecursiveCheckpointAdjoint())
    (f, J), ok = jax.jit(lambda p: ode.prediction_jets(model, subj, p, 1))(phi)
    assert bool(ok) and _rel(J, jets[1]) < 1e-6
    with pytest.raises(ValueError, match="RecursiveCheckpointAdjoint.*ForwardMode"):
        ode.prediction_jets(model, subj, phi, 2)


def test_unsupported_order_is_refused(jets_subject1):
    subj, phi, _, _ = jets_subject1
    model = theophylline_model(adjoint=dfx.BacksolveAdjoint())
    with pytest.raises(ValueError, match="BacksolveAdjoint.*ForwardMode"):
        ode.prediction_jets(model, subj, phi, 2)


def test_failed_solve_names_the_subject(theoph):
    model = theophylline_model(max_steps=4)
    with pytest.raises(RuntimeError, match="subject 1"):
        ode.simulate(model, theoph, PHI)


def _vf(t, y, p):
    return -y


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"states": "ab"}, TypeError, "tuple of names"),
        ({"states": ("a", "a")}, ValueError, "duplicate names"),
        ({"params": ("a",)}, ValueError, "both states and params"),
        ({"solver": "tsit5"}, TypeError, "diffrax solver"),
        ({"adjoint": "forward"}, TypeError, "ForwardMode"),
        ({"rtol": 0.0}, ValueError, "rtol and atol must be > 0"),
        ({"observe": 3}, TypeError, "observe must be a function"),
    ],
)
def test_model_arguments(kwargs, err, match):
    args = {"states": ("a", "b"), "params": ("k",), "observe": lambda y, p: y[0]}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ode.ODEModel(_vf, **args)


def test_initial_state_shape_checked(theoph):
    model = ode.ODEModel(
        lambda t, y, p: -y,
        states=("a", "b"),
        params=("lKe", "lKa", "lCl"),
        observe=lambda y, p: y[1],
        initial=lambda p: jnp.zeros(3),
    )
    with pytest.raises(ValueError, match=r"initial\(p\) must return shape \(2,\)"):
        ode.simulate(model, theoph, PHI)
