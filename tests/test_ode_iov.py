"""Inter-occasion variability (the OCC column, ``iov=``/``--iov``): occasion effects switch a
subject's parameters at the first record of each occasion (closed forms, plain segments and
lagged doses); the FOCEI and Laplace terms treat the occasion effects as further random
effects of the subject (exact on a linear model, padded occasions contributing nothing);
bad input is one line before any compilation; a simulated population's ω and π are
recovered through ``invcal calibrate --iov`` (slow leg)."""

import json
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal import ode
from invcal.cli import main
from invcal.ode.models import builtin_model
from invcal.ode.population import Population
from invcal.testing import count_compilations

DOSE = 100.0
SAMPLES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)


def _occasions_table(starts=(0.0, 48.0, 96.0), occ=(1, 2, 3), ids=(1,), with_occ=True):
    rows = {"ID": [], "TIME": [], "DV": [], "AMT": [], "EVID": [], "OCC": []}
    for i in ids:
        for t0, o in zip(starts, occ, strict=True):
            for t, amt, evid in [(t0, DOSE, 1)] + [(t0 + s, 0.0, 0) for s in SAMPLES]:
                rows["ID"].append(i)
                rows["TIME"].append(t)
                rows["DV"].append("." if evid else 1.0)
                rows["AMT"].append(amt)
                rows["EVID"].append(evid)
                rows["OCC"].append(o)
    if not with_occ:
        rows.pop("OCC")
    return rows


def test_occasion_effects_switch_the_parameters_at_each_occasion():
    """1cmt-iv with IOV on lCl and lV: the amount carries over between occasions (doses
    48 h apart, so it matters), the elimination rate and the volume are the occasion's."""
    ev = ode.read_events(_occasions_table())
    cl, v = 2.0, 30.0
    kappa = {"lCl": np.array([[0.3, -0.2, 0.1]]), "lV": np.array([[0.0, 0.25, -0.15]])}
    got = ode.simulate(
        builtin_model("1cmt-iv").build(),
        ev,
        {"lCl": math.log(cl), "lV": math.log(v)},
        occasion_effects=kappa,
    )[1][1]
    amount, t_prev, cl_prev, v_prev, want = 0.0, 0.0, cl, v, []
    for k, t0 in enumerate((0.0, 48.0, 96.0)):
        cl_k, v_k = cl * math.exp(kappa["lCl"][0, k]), v * math.exp(kappa["lV"][0, k])
        if k:  # the previous occasion's parameters until this occasion's first record
            amount *= math.exp(-cl_prev / v_prev * (t0 - t_prev))
        amount += DOSE
        want += [amount * math.exp(-cl_k / v_k * s) / v_k for s in SAMPLES]
        amount *= math.exp(-cl_k / v_k * SAMPLES[-1])
        t_prev, cl_prev, v_prev = t0 + SAMPLES[-1], cl_k, v_k
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lag_time_of_each_dose_is_its_occasions():
    """1cmt-oral with --lag and IOV on lTlag (the dose events sorted at run time): each
    occasion's doses enter after that occasion's Tlag (occasions far apart: no carry-over)."""
    starts = (0.0, 500.0)
    ev = ode.read_events(_occasions_table(starts=starts, occ=(1, 2)))
    ka, cl, v, tlag = 1.3, 2.0, 30.0, 0.4
    kappa = {"lTlag": np.array([[0.5, -0.7]])}
    p = {"lKa": math.log(ka), "lCl": math.log(cl), "lV": math.log(v), "lTlag": math.log(tlag)}
    got = ode.simulate(builtin_model("1cmt-oral").build(lag=True), ev, p, occasion_effects=kappa)
    k = cl / v
    want = []
    for j in range(2):
        tau = np.maximum(np.asarray(SAMPLES) - tlag * math.exp(kappa["lTlag"][0, j]), 0.0)
        want += list(DOSE * ka / (v * (ka - k)) * (np.exp(-k * tau) - np.exp(-ka * tau)))
    np.testing.assert_allclose(got[1][1], want, rtol=1e-6, atol=1e-12)


def _linear_case(omega, n_occ=3, present=2, seed=0):
    """A Population with IOV on lCl and lV, a linear prediction f = a + G·φ(η, κ), and one
    subject whose data see only the first ``present`` of ``n_occ`` occasions."""
    rng = np.random.default_rng(seed)
    model = builtin_model("1cmt-oral").build()
    pop = Population(
        model=model,
        random=("lKa", "lCl"),
        covariates=(),
        error=ode.Additive(),
        approximation=ode.FOCEI(),
        omega=omega,
        iov=("lCl", "lV"),
        n_occasions=n_occ,
    )
    n_obs, d = 7, 3
    G = rng.standard_normal((n_obs, d + 2 * n_occ))
    G[:, d + 2 * present :] = 0.0  # the padded occasions: no observation sees them
    a = rng.standard_normal(n_obs)
    theta = {"lKa": 0.1, "lCl": -0.2, "lV": 0.3, "iov_lCl": 0.3, "iov_lV": 0.2, "sigma_add": 0.4}
    if omega == "diagonal":
        theta.update(omega_lKa=0.5, omega_lCl=0.35)
    else:
        theta.update(omega_chol_lKa=0.5, omega_chol_lCl=0.3, omega_chol_lCl_lKa=0.2)
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    subject = types.SimpleNamespace(
        dv=jnp.asarray(rng.standard_normal(n_obs)),
        obs_mask=jnp.ones(n_obs, bool),
        cens=None,
        cov=jnp.zeros(0),
    )
    return pop, theta, subject, jnp.asarray(G), jnp.asarray(a)


@pytest.mark.parametrize("omega", ["diagonal", "full"])
def test_occasion_effects_are_random_effects_of_the_subject(omega):
    """On a linear model with additive error FOCEI and Laplace are exact: at the MAP of
    (η, κ₁, κ₂, κ₃) both equal −log N(y; a + Gφ(0), ZΣZᵀ + σ²I) with Σ = diag(Ω, Π, Π, Π),
    Z = ∂f/∂(η, κ); the third occasion, which no observation sees, changes nothing."""
    pop, theta, s, G, a = _linear_case(omega)
    assert pop.n_eta == 2 + 2 * 3 and pop.n_phi == 3 + 2 * 3
    assert "iov_lCl" in pop.names() and "iov_lV" in pop.names()
    Sigma = pop.eta_covariance(theta)  # NumPy from here to `exact`
    Z = pop.random_design(G)
    s2 = float(theta["sigma_add"]) ** 2
    phi0 = np.array([float(theta[p]) for p in ("lKa", "lCl", "lV")] + [0.0] * 6)
    r0 = np.asarray(s.dv) - np.asarray(a) - np.asarray(G) @ phi0
    H = Z.T @ Z / s2 + np.linalg.inv(Sigma)
    eta = np.linalg.solve(H, Z.T @ r0 / s2)  # the posterior mode
    V = Z @ Sigma @ Z.T + s2 * np.eye(r0.size)
    exact = 0.5 * (r0 @ np.linalg.solve(V, r0) + np.linalg.slogdet(2 * np.pi * V)[1])

    @jax.jit
    def terms(eta, theta):
        def f_of_eta(e):
            return a + G @ pop.phi(e, theta, s.cov)

        out = [pop.omega_inv(theta), jax.jacfwd(f_of_eta)(eta)]
        for approx in (ode.FOCEI(), ode.Laplace()):
            p = Population(**{**pop.__dict__, "approximation": approx})
            out.append(p.neg_loglik(f_of_eta, eta, theta, s))
        out.append(jax.grad(lambda e: pop.inner_objective(f_of_eta(e), e, theta, s))(eta))
        # the same subject without the occasion its data never see
        p2 = Population(**{**pop.__dict__, "n_occasions": 2})
        G2 = G[:, : 3 + 2 * 2]
        out.append(p2.neg_loglik(lambda e: a + G2 @ p2.phi(e, theta, s.cov), eta[:6], theta, s))
        return out

    inv, J, focei, laplace, grad, two = terms(jnp.asarray(eta), theta)
    np.testing.assert_allclose(np.linalg.inv(Sigma), inv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(J, Z, atol=1e-14)  # Z: the columns of G of (η, κ)
    assert float(np.max(np.abs(grad))) < 1e-10  # eta is the inner problem's minimum
    for value in (focei, laplace, two):
        assert float(value) == pytest.approx(float(exact), rel=1e-12)


@pytest.fixture
def iov_csv(tmp_path):
    rows = _occasions_table(starts=(0.0, 168.0), occ=(1, 2), ids=(1, 2, 3))
    keys = list(rows)
    path = tmp_path / "occ.csv"
    body = [",".join(str(rows[k][i]) for k in keys) for i in range(len(rows["ID"]))]
    path.write_text("\n".join([",".join(keys), *body]) + "\n")
    return path


def _with_cell(path, row, column, value, drop=None):
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    if drop:
        k = header.index(drop)
        lines = [",".join(c for j, c in enumerate(line.split(",")) if j != k) for line in lines]
    else:
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "change, extra, match",
    [
        (
            (9, "OCC", "1.5"),
            ["--iov", "lCl"],
            r"row 9 \(ID 1\) of occ.csv: OCC is 1.5, not an integer",
        ),
        ((4, "OCC", "."), ["--iov", "lCl"], r"row 4 \(ID 1\) of occ.csv: OCC is missing"),
        (("drop", None, None), ["--iov", "lCl"], r"occ.csv has no OCC column; inter-occasion"),
        (None, ["--iov", "lCl,lQ"], r"--iov: unknown parameter 'lQ'.*lKa, lCl, lV"),
        (None, ["--iov", "lCl,lCl"], r"--iov names a parameter twice"),
        (
            None,
            ["--iov", "lCl", "--init", "iov_lCl=0"],
            r"--init iov_lCl=0.0: a standard deviation",
        ),
    ],
)
def test_iov_bad_input_is_one_line_before_compiling(
    iov_csv, tmp_path, capsys, change, extra, match
):
    if change is not None:
        row, col, value = change
        _with_cell(iov_csv, row, col, value, drop="OCC" if row == "drop" else None)
    out = tmp_path / "o"
    with count_compilations() as c:
        rc = main(["calibrate", str(iov_csv), "--model", "1cmt-oral", *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("invcal: error:"), err
    assert re.search(match, err), err
    assert c.total == 0, c.names
    assert not out.exists()


def test_occ_without_iov_is_not_a_covariate(iov_csv):
    ev = ode.read_events(iov_csv)
    assert "OCC" not in ev.covariates and ev.occ is not None
    _with_cell(iov_csv, 9, "OCC", "1.5")
    ev = ode.read_events(iov_csv)  # read as it is; checked when occasions are asked for
    with pytest.raises(ValueError, match=r"row 9 \(ID 1\) of occ.csv: OCC is 1.5"):
        ode.subject_arrays(ev, builtin_model("1cmt-oral").build(), iov=("lCl",))
    with pytest.raises(ValueError, match=r"iov: 'lQ' is not a parameter of the model"):
        ode.fit_population(builtin_model("1cmt-oral").build(), ev, init={}, iov="lQ")


# --------------------------------------------------------------------------------------
# A simulated population with IIV and IOV, recovered through the command (slow)
# --------------------------------------------------------------------------------------
IOV_TRUTH = {
    "lKa": math.log(1.0),
    "lCl": math.log(2.0),
    "lV": math.log(30.0),
    "omega_lKa": 0.3,
    "omega_lCl": 0.25,
    "omega_lV": 0.2,
    "iov_lCl": 0.2,
    "sigma_prop": 0.1,
}


def iov_population_table(path, *, n=24, occasions=2, seed=0):
    """1cmt-oral, ``n`` subjects × ``occasions`` occasions a week apart (a 100 mg dose and
    8 samples over 24 h each), IIV on every parameter and IOV on lCl (IOV_TRUTH),
    proportional error. Writes the table; returns the realized SDs of the draws."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        for k in range(occasions):
            rows.append((i, 168.0 * k, None, DOSE, 1, k + 1))
            rows += [(i, 168.0 * k + t, 0.0, 0.0, 0, k + 1) for t in (0.5, 1, 2, 4, 6, 8, 12, 24)]
    cols = dict(
        zip(["ID", "TIME", "DV", "AMT", "EVID", "OCC"], zip(*rows, strict=True), strict=True)
    )
    cols["DV"] = ["." if v is None else v for v in cols["DV"]]
    ev = ode.read_events(cols)
    eta = {p: rng.standard_normal(n) * IOV_TRUTH[f"omega_{p}"] for p in ("lKa", "lCl", "lV")}
    kappa = rng.standard_normal((n, occasions)) * IOV_TRUTH["iov_lCl"]
    params = {p: IOV_TRUTH[p] + eta[p] for p in eta}
    sim = ode.simulate(
        builtin_model("1cmt-oral").build(), ev, params, occasion_effects={"lCl": kappa}
    )
    f = np.concatenate([sim[s][1] for s in ev.subjects])
    eps = rng.standard_normal(f.size)
    dv = iter(f * (1.0 + IOV_TRUTH["sigma_prop"] * eps))
    lines = ["ID,TIME,DV,AMT,EVID,OCC"]
    for i, t, _, amt, evid, o in rows:
        lines.append(f"{i},{t:g},{'.' if evid else f'{next(dv):.8g}'},{amt:g},{evid},{o}")
    path.write_text("\n".join(lines) + "\n")
    realized = {f"omega_{p}": float(np.std(e, ddof=1)) for p, e in eta.items()}
    realized["iov_lCl"] = float(np.std(kappa, ddof=1))
    realized["sigma_prop"] = float(IOV_TRUTH["sigma_prop"] * np.std(eps, ddof=1))
    return realized


@pytest.mark.slow
def test_iov_recovers_a_simulated_population(tmp_path):
    data = tmp_path / "iov.csv"
    iov_population_table(data)
    out = tmp_path / "out"
    argv = ["calibrate", str(data), "--model", "1cmt-oral", "--error", "proportional"]
    argv += ["--iov", "lCl", "--simulations", "50", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    est = {r["name"]: r for r in res["estimates"]}
    assert est["iov_lCl"]["kind"] == "iov" and res["iov_sd"]["lCl"] == est["iov_lCl"]["value"]
    assert res["occasions"] == {"max": 2, "per_subject": {"2": 24}, "parameters": ["lCl"]}
    assert set(res["shrinkage"]["iov"]) == {"lCl"}
    for name, truth in IOV_TRUTH.items():  # every estimate's 95% CI holds the truth
        r = est[name]
        assert r["ci_low"] <= truth <= r["ci_high"], (name, truth, r)
        assert abs(r["value"] - truth) / r["se"] < 1.96
    report = (out / "report.md").read_text()
    assert "inter-occasion variability on lCl" in report and "| iov_lCl | iov |" in report
    assert "kappa lCl (occasions)" in report
