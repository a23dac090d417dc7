"""Lag times and steady-state doses (:mod:`invcal.ode.dosing`): lagged predictions against
closed forms and against the same table with its doses moved by hand, their derivatives in
lTlag against central differences, steady state against the superposition of many doses,
and (slow leg) a simulated lag recovered by ``invcal calibrate --lag``."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal import ode
from invcal.cli import main
from invcal.ode.models import builtin_model
from invcal.ode.simulate import predict, prediction_jets

P = {
    "lKa": math.log(0.8),
    "lCl": math.log(2.0),
    "lV": math.log(30.0),
    "lV1": math.log(10.0),
    "lQ": math.log(3.0),
    "lV2": math.log(40.0),
    "lTlag": math.log(0.7),
}


def _params(model, **over):
    return {k: over.get(k, P[k]) for k in model.params}


def _table(doses, obs, **extra):
    """One subject: dose rows (time, amt, cmt, rate[, ss, ii]) and observation times."""
    rows = [(d[0], 1, d) for d in doses] + [(t, 0, None) for t in obs]
    rows.sort(key=lambda r: (r[0], -r[1]))  # a dose before an observation at its time
    cols = {k: [] for k in ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "RATE", "SS", "II")}
    for t, e, d in rows:
        d = d or (t, 0.0, 1, 0.0, 0, 0.0)
        d = (*d, 0, 0.0)[:6] if len(d) < 6 else d
        for k, v in zip(
            cols, (1, t, "." if e else 1.0, d[1], e, d[2], d[3], d[4], d[5]), strict=True
        ):
            cols[k].append(v)
    return ode.read_events(cols)


def _sim(model, events, params):
    return ode.simulate(model, events, params)[1][1]


def test_lag_is_the_shifted_closed_form():
    """1cmt-oral with Tlag: C(t) = D·ka/(V(ka − k))·(e^{−k(t−Tlag)} − e^{−ka(t−Tlag)}) after
    Tlag, 0 before (samples on both sides of t = Tlag)."""
    m = builtin_model("1cmt-oral").build(lag=True)
    times = np.array([0.1, 0.3, 0.5, 1.0, 2.0, 6.0, 12.0])
    cl, v, ka, tl = 2.0, 30.0, 1.3, 0.4
    k = cl / v
    p = {"lKa": math.log(ka), "lCl": math.log(cl), "lV": math.log(v), "lTlag": math.log(tl)}
    got = _sim(m, _table([(0.0, 100.0, 1, 0.0)], times), p)
    s = times - tl
    want = np.where(s > 0, 100 * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s)), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert m.params == ("lKa", "lCl", "lV", "lTlag")
    with pytest.raises(ValueError, match="--lag: model '1cmt-iv' has no depot"):
        builtin_model("1cmt-iv").build(lag=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["1cmt-oral", "2cmt-oral"])
def test_lag_equals_doses_moved_by_hand(name):
    """Oral boluses and an oral infusion (lagged: the depot) mixed with an IV bolus into the
    central compartment (not lagged), a lag long enough to move the second oral dose past
    the IV dose and past observations: the same predictions as the unlagged model on the
    table whose depot doses are moved by Tlag."""
    tl = 1.5
    lagged = builtin_model(name).build(lag=True)
    plain = builtin_model(name).build()
    obs = [0.5, 1.0, 2.0, 3.0, 4.2, 5.0, 6.5, 9.0, 14.0]
    doses = [(0.0, 100.0, 1, 0.0), (4.0, 50.0, 1, 0.0), (4.5, 30.0, 2, 0.0), (8.0, 60.0, 1, 20.0)]
    moved = [(t + tl if c == 1 else t, a, c, r) for t, a, c, r in doses]
    got = _sim(lagged, _table(doses, obs), _params(lagged, lTlag=math.log(tl)))
    want = _sim(plain, _table(moved, obs), _params(plain))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_lag_derivatives_against_central_differences():
    """∂f/∂lTlag by forward mode through the traced segment bounds, and the second
    derivative (the jets FOCEI uses), against central differences of the solve; two doses,
    samples before and after each lagged dose."""
    m = builtin_model("1cmt-oral").build(lag=True, rtol=1e-11, atol=1e-13)
    ev = _table([(0.0, 100.0, 1, 0.0), (6.0, 100.0, 1, 0.0)], [0.2, 0.6, 1.0, 3.0, 6.3, 7.0, 12.0])
    subj = jax.tree_util.tree_map(lambda a: a[0], ode.subject_arrays(ev, m))
    phi = jnp.asarray([P["lKa"], P["lCl"], P["lV"], math.log(0.45)])
    f = jax.jit(lambda q: predict(m, subj, q)[0])
    jets, ok = jax.jit(lambda q: prediction_jets(m, subj, q, 2))(phi)
    assert bool(ok)
    h, e = 1e-5, jnp.eye(4)[3]
    fd = (f(phi + h * e) - f(phi - h * e)) / (2 * h)
    np.testing.assert_allclose(jets[1][:, 3], fd, rtol=1e-6, atol=1e-9)
    assert float(jnp.max(jnp.abs(jets[1][:, 3]))) > 0.1  # the lag matters at these samples
    assert float(jets[1][0, 3]) == 0.0  # t = 0.2 < Tlag: nothing absorbed yet
    d1 = jax.jit(lambda q: jax.jacfwd(lambda r: predict(m, subj, r)[0])(q)[:, 3])
    fd2 = (d1(phi + h * e) - d1(phi - h * e)) / (2 * h)
    np.testing.assert_allclose(jets[2][:, 3, 3], fd2, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------
# Steady state
# --------------------------------------------------------------------------------------
OBS = [0.5, 1.0, 3.0, 8.0, 11.9, 13.0, 20.0]


def _ss_tables(amt, cmt, rate, ii, n_prior):
    """(SS=1 dose at t0 = n_prior·II, the same regime written as n_prior + 1 dose rows)."""
    t0 = n_prior * ii
    obs = [t0 + t for t in OBS]
    ss = _table([(t0, amt, cmt, rate, 1, ii)], obs)
    rows = [(k * ii, amt, cmt, rate) for k in range(n_prior + 1)]
    return ss, _table(rows, obs)


def test_lagged_steady_state_against_matrix_exponentials():
    """2cmt-oral, SS=1 with a lag (the default leg's check): the ODE solve against the sum
    of e^{A(t − t_k − Tlag)}b over 400 earlier doses and the record's own, by SciPy."""
    import scipy.linalg

    m = builtin_model("2cmt-oral").build(lag=True)
    p = _params(m)
    ka, cl, v1, q, v2, tl = (math.exp(p[k]) for k in ("lKa", "lCl", "lV1", "lQ", "lV2", "lTlag"))
    A = np.array([[-ka, 0, 0], [ka, -(cl + q) / v1, q / v2], [0, q / v1, -q / v2]])
    ii, obs = 12.0, np.array([0.3, 1.0, 3.0, 11.9, 12.5, 20.0])  # 12.5: the next dose is due
    got = _sim(m, _table([(0.0, 100.0, 1, 0.0, 1, ii)], obs), p)
    want = [
        sum(scipy.linalg.expm(A * (t - tk - tl))[1, 0] * 100.0
            for tk in ii * np.arange(-400, 1) if t > tk + tl) / v1
        for t in obs
    ]  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, lag, cmt, rate",
    [
        ("1cmt-oral", False, 1, 0.0),
        ("1cmt-oral", True, 1, 0.0),
        ("1cmt-iv", False, 1, 25.0),
        ("2cmt-iv", False, 1, 0.0),
        ("2cmt-oral", True, 1, 0.0),
        ("2cmt-oral", False, 2, 30.0),
    ],
)
def test_steady_state_equals_superposition(name, lag, cmt, rate):
    """SS=1 (boluses, lagged boluses, infusions; one and two compartments) against 120 doses
    given one by one before the record: relative difference below 1e-6."""
    m = builtin_model(name).build(lag=lag)
    ss, many = _ss_tables(100.0, cmt, rate, 12.0, 120)
    got, want = _sim(m, ss, _params(m)), _sim(m, many, _params(m))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    single = _sim(m, _table([(0.0, 100.0, cmt, rate)], OBS), _params(m))
    assert np.all(got > 1.2 * single)  # the regime's accumulation is there


@pytest.mark.slow
def test_steady_state_reset_and_added():
    """SS=1 discards the doses before it (the state is reset); SS=2 adds the regime to them."""
    m = builtin_model("1cmt-oral").build()
    p = _params(m)
    early = (2.0, 500.0, 1, 0.0)
    obs = [1200.0 + t for t in OBS]
    reset = _sim(m, _table([early, (1200.0, 100.0, 1, 0.0, 1, 12.0)], obs), p)
    alone = _sim(m, _table([(1200.0, 100.0, 1, 0.0, 1, 12.0)], obs), p)
    np.testing.assert_allclose(reset, alone, rtol=1e-12)
    early = (1195.0, 500.0, 1, 0.0)  # recent enough to matter
    added = _sim(m, _table([early, (1200.0, 100.0, 1, 0.0, 2, 12.0)], obs), p)
    rows = [early] + [(12.0 * k, 100.0, 1, 0.0) for k in range(101)]
    np.testing.assert_allclose(added, _sim(m, _table(rows, obs), p), rtol=1e-6)


@pytest.mark.slow
def test_steady_state_derivatives_and_refusals():
    """Derivatives through the steady state (matrix exponentials and the periodic solve)
    against central differences; SS with a model not declared linear, and an SS infusion
    longer than II, refused naming the row."""
    m = builtin_model("1cmt-oral").build(lag=True, rtol=1e-11, atol=1e-13)
    ev = _table([(0.0, 100.0, 1, 0.0, 1, 12.0)], OBS)
    subj = jax.tree_util.tree_map(lambda a: a[0], ode.subject_arrays(ev, m))
    phi = jnp.asarray([P[k] for k in m.params])
    f = jax.jit(lambda q: predict(m, subj, q)[0])
    J = jax.jit(jax.jacfwd(lambda q: predict(m, subj, q)[0]))(phi)
    for j in range(4):
        e, h = jnp.eye(4)[j], 1e-5
        np.testing.assert_allclose(J[:, j], (f(phi + h * e) - f(phi - h * e)) / (2 * h),
                                   rtol=1e-6, atol=1e-9)  # fmt: skip
    nonlinear = ode.ODEModel(
        lambda t, y, p: -jnp.exp(p["k"]) * y**2, states=("x",), params=("k",),
        observe=lambda y, p: y[0],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"row 1 \(ID 1\).*SS=1\) needs a linear model"):
        ode.subject_arrays(ev, nonlinear)
    with pytest.raises(ValueError, match=r"row 1 \(ID 1\).*AMT/RATE = 10 overlaps.*II = 8"):
        _table([(0.0, 100.0, 1, 10.0, 1, 8.0)], OBS)


def test_calibrate_refuses_lag_and_ss_before_compiling(tmp_path, capsys):
    from invcal.testing import count_compilations
    from problems.hierarchical_ode import THEOPH_CSV

    with count_compilations() as c:
        rc = main(["calibrate", str(THEOPH_CSV), "--model", "1cmt-iv", "--lag",
                   "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and c.total == 0 and "--lag: model '1cmt-iv' has no depot" in err, err
    path = tmp_path / "seed.csv"
    path.write_text("ID,TIME,DV,AMT,EVID,SS,II,U\n1,0,.,1,1,1,12,1\n1,1,0.5,0,0,0,0,1\n")
    with count_compilations() as c:
        rc = main(["calibrate", str(path), "--model", "seed", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and c.total == 0 and "(SS) are not supported with the seed model" in err, err


# --------------------------------------------------------------------------------------
# A lag recovered from simulated data
# --------------------------------------------------------------------------------------
def _lag_population(n=24, seed=4):
    """1cmt-oral with Tlag = 0.6 h (no random effect on it), ω = 0.25 on lKa, lCl, lV,
    combined error (10% and 0.05: the samples before Tlag have f = 0, where a proportional
    error alone has no variance); 320 mg at t = 0, 12 samples to 24 h (five in the first
    1.5 h)."""
    truth = {"lKa": math.log(1.2), "lCl": math.log(2.5), "lV": math.log(35.0),
             "lTlag": math.log(0.6)}  # fmt: skip
    rng = np.random.default_rng(seed)
    times = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0]
    k = len(times) + 1
    ids = np.repeat(np.arange(1, n + 1), k)
    evid = np.tile([1] + [0] * len(times), n)
    cols = {"ID": ids, "TIME": np.tile([0.0, *times], n), "AMT": np.where(evid == 1, 320.0, 0)}
    ev = ode.read_events({**cols, "DV": np.where(evid == 1, np.nan, 1.0), "EVID": evid})
    params = {p: truth[p] + 0.25 * rng.standard_normal(n) for p in ("lKa", "lCl", "lV")}
    params["lTlag"] = np.full(n, truth["lTlag"])
    m = builtin_model("1cmt-oral").build(lag=True)
    sim = ode.simulate(m, ev, params)
    f = np.concatenate([sim[i][1] for i in ev.subjects])
    dv = np.full(ids.size, np.nan)
    dv[evid == 0] = f * (1 + 0.1 * rng.standard_normal(f.size)) + 0.05 * rng.standard_normal(f.size)
    return {**cols, "DV": dv, "EVID": evid}, truth


@pytest.mark.slow
def test_calibrate_recovers_a_simulated_lag(tmp_path):
    table, truth = _lag_population()
    path = tmp_path / "lag.csv"
    keys = list(table)
    lines = [",".join(keys)] + [
        ",".join("." if (k == "DV" and not np.isfinite(table[k][i])) else str(table[k][i])
                 for k in keys)
        for i in range(len(table["ID"]))
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["calibrate", str(path), "--model", "1cmt-oral", "--lag", "--random", "lKa,lCl,lV",
            "--error", "combined", "--covariance", "R", "--simulations", "50",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    est = {r["name"]: r for r in res["estimates"]}
    for name, value in truth.items():
        r = est[name]
        assert r["ci_low"] <= value <= r["ci_high"], (name, value, r)
    assert est["lTlag"]["se"] < 0.1  # the lag is well determined by the early samples
    assert res["options"]["lag"] is True
    assert "lag time Tlag = exp(lTlag)" in (out / "report.md").read_text()
