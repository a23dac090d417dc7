"""``invcal calibrate`` and :mod:`invcal.ode.calibrate`: built-in models against closed
forms, the Theoph calibration against R's nlme through the command, residuals and shrinkage
against a hand computation, the VPC against direct simulation, and bad input refused in one
line before any compilation.

One Theoph fit (nlme's Lindstrom-Bates algorithm, lme covariance) is compiled once per
module: the command and the API share it (same model, shapes and options)."""

import json
import math

import numpy as np
import pytest
import scipy.linalg

from invcal import ode
from invcal.cli import main
from invcal.ode.calibrate import calibrate
from invcal.ode.models import MODELS, builtin_model, describe_models
from invcal.testing import count_compilations
from problems.hierarchical_ode import THEOPH_CSV

# R nlme 3.1-162, ML, pdDiag (tests/test_ode_population.py; benchmarks/theoph_vs_nlme.py).
NLME = {
    "lKe": -2.4546457747,
    "lKa": 0.4655047601,
    "lCl": -3.2271983419,
    "omega_lKa": 0.6438571,
    "omega_lCl": 0.1669212,
    "sigma_add": 0.7092257363,
    "loglik": -177.0235,
}
# nlme's standard errors of the fixed effects: the issue's (0.0525, 0.1986, 0.0600) and those
# nlme 3.1-162 printed for this ML fit (benchmarks/results/theoph_vs_nlme.json).
NLME_SE_ISSUE = {"lKe": 0.0525, "lKa": 0.1986, "lCl": 0.0600}
NLME_SE_ML = {"lKe": 0.05188859607, "lKa": 0.1963627824, "lCl": 0.05932128167}
THEOPH_ARGS = ["--model", "1cmt-oral-ke", "--error", "additive", "--omega", "diagonal"]


# --------------------------------------------------------------------------------------
# Built-in models against closed forms
# --------------------------------------------------------------------------------------
def _single_dose(dose, times, cmt=1, rate=0.0):
    n = len(times)
    return ode.read_events(
        {
            "ID": [1] * (n + 1),
            "TIME": [0.0, *times],
            "DV": [".", *([1.0] * n)],
            "AMT": [dose, *([0.0] * n)],
            "EVID": [1, *([0] * n)],
            "CMT": [cmt, *([1] * n)],
            "RATE": [rate, *([0.0] * n)],
        }
    )


TIMES = [0.3, 1.0, 2.5, 6.0, 12.0, 24.0]


def _sim(name, params, events):
    return ode.simulate(builtin_model(name).build(), events, params)[1][1]


def test_one_compartment_models_match_closed_forms():
    t, D = np.asarray(TIMES), 100.0
    cl, v, ka = 2.0, 30.0, 1.3
    k = cl / v
    ev = _single_dose(D, TIMES)
    p = {"lCl": math.log(cl), "lV": math.log(v)}
    np.testing.assert_allclose(_sim("1cmt-iv", p, ev), D / v * np.exp(-k * t), rtol=1e-6)
    oral = D * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))
    np.testing.assert_allclose(_sim("1cmt-oral", {**p, "lKa": math.log(ka)}, ev), oral, rtol=1e-6)
    pk = {"lKe": math.log(k), "lKa": math.log(ka), "lCl": math.log(cl)}
    np.testing.assert_allclose(_sim("1cmt-oral-ke", pk, ev), oral, rtol=1e-6)
    # zero-order infusion over T = AMT/RATE = 4 (RATE column)
    R, T = 25.0, 4.0
    inf = np.where(
        t <= T,
        R / cl * (1 - np.exp(-k * t)),
        R / cl * (1 - np.exp(-k * T)) * np.exp(-k * (t - T)),
    )
    np.testing.assert_allclose(_sim("1cmt-iv", p, _single_dose(D, TIMES, rate=R)), inf, rtol=1e-6)


def test_two_compartment_models_match_closed_forms():
    t, D = np.asarray(TIMES), 100.0
    cl, v1, q, v2, ka = 2.0, 10.0, 3.0, 40.0, 0.9
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    alpha = 0.5 * (s + math.sqrt(s * s - 4 * k10 * k21))
    beta = 0.5 * (s - math.sqrt(s * s - 4 * k10 * k21))
    iv = (
        D
        / v1
        * (
            (alpha - k21) / (alpha - beta) * np.exp(-alpha * t)
            + (k21 - beta) / (alpha - beta) * np.exp(-beta * t)
        )
    )
    p = {"lCl": math.log(cl), "lV1": math.log(v1), "lQ": math.log(q), "lV2": math.log(v2)}
    np.testing.assert_allclose(_sim("2cmt-iv", p, _single_dose(D, TIMES)), iv, rtol=1e-6)
    A = np.array([[-ka, 0, 0], [ka, -(k10 + k12), k21], [0, k12, -k21]])
    oral = [(scipy.linalg.expm(A * tk) @ [D, 0, 0])[1] / v1 for tk in t]
    got = _sim("2cmt-oral", {**p, "lKa": math.log(ka)}, _single_dose(D, TIMES))
    np.testing.assert_allclose(got, oral, rtol=1e-6)


def _seed_by_hand(p, q, knots_t, knots_u, times, linear):
    """x' = -x + p u(t), x(0) = q, u piecewise constant (value from each knot on) or linear
    between knots, solved in closed form piece by piece."""
    grid = sorted(set([0.0, *knots_t, *times]))
    ku = np.interp if linear else None

    def u_at(t):
        if linear:
            return float(ku(t, knots_t, knots_u))
        return float(knots_u[max(k for k, tk in enumerate(knots_t) if tk <= t)])

    x, out = q, {}
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        ua = u_at(a)
        slope = (u_at(b) - ua) / (b - a) if linear else 0.0
        # x' + x = p(ua + slope·τ): particular p(ua + slope·τ − slope)
        xp0 = p * (ua - slope)
        tau = b - a
        x = p * (ua + slope * tau - slope) + (x - xp0) * math.exp(-tau)
        out[b] = x
    return np.array([out[t] for t in times])


@pytest.mark.parametrize("linear", [False, True])
def test_seed_model_input_and_initial_time(linear):
    # samples start after t0 = 0; u given on the records (before the first: its first value)
    times = [1.0, 2.0, 3.0, 4.5]
    u = [1.0, -1.0, 2.0, 0.5]
    ev = ode.read_events({"ID": [1] * 4, "TIME": times, "DV": [0.0] * 4, "U": u})
    m = builtin_model("seed")
    prepared = m.prepare(ev, interpolation="linear" if linear else "constant")
    got = ode.simulate(m.build(), prepared, {"p": 2.0, "q": 1.0})[1][1]
    want = _seed_by_hand(2.0, 1.0, [0.0, *times], [u[0], *u], times, linear)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="column 'V'.*--input"):
        m.prepare(ev, input="V")


def test_list_models_names_parameters(capsys):
    assert main(["calibrate", "--list-models"]) == 0
    text = capsys.readouterr().out
    for name, m in MODELS.items():
        assert name in text and ", ".join(m.params) in text
    assert text.strip() == describe_models().strip()


# --------------------------------------------------------------------------------------
# Bad input: one line, status 2, nothing compiled
# --------------------------------------------------------------------------------------
@pytest.fixture
def bad_table(tmp_path):
    path = tmp_path / "bad.csv"
    text = THEOPH_CSV.read_text().splitlines()
    cells = text[3].split(",")
    cells[2] = "abc"  # DV of the table's third data row
    text[3] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "1cmt-oral-kee"], "unknown model '1cmt-oral-kee'.*1cmt-iv, 1cmt-oral,"),
        ([*THEOPH_ARGS, "--covariate", "lCl~WEIGHT"], "column 'WEIGHT' is not in theoph.csv"),
        ([*THEOPH_ARGS, "--covariate", "lVV~WT"], "--covariate: unknown parameter 'lVV'"),
        ([*THEOPH_ARGS, "--random", "lKa,lKx"], "--random: unknown parameter 'lKx'"),
        ([*THEOPH_ARGS, "--init", "lKe=-2,lV=3"], "--init: unknown parameter 'lV'"),
        ([*THEOPH_ARGS, "--init", "lKe=abc"], "--init lKe: 'abc' is not a number"),
        ([*THEOPH_ARGS, "--error", "log"], "error must be one of additive"),
        ([*THEOPH_ARGS, "--covariance", "hessian"], "covariance must be one of"),
        (["--model", "/nonexistent/m.py:model"], "no file '/nonexistent/m.py'"),
    ],
)
def test_bad_input_one_line_before_compiling(extra, match, tmp_path, capsys):
    with count_compilations() as c:
        rc = main(["calibrate", str(THEOPH_CSV), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("invcal: error:"), err
    assert __import__("re").search(match, err), err
    assert c.total == 0, c.names
    assert not (tmp_path / "o").exists()  # no folder made for a bad command


def test_malformed_table_names_row_and_column(bad_table, tmp_path, capsys):
    with count_compilations() as c:
        rc = main(["calibrate", str(bad_table), *THEOPH_ARGS, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and c.total == 0
    assert (
        err == "invcal: error: bad.csv: row 3 (ID 1): column DV has 'abc', which is not a number."
    ), err


def test_user_model_file_and_yaml(tmp_path, capsys):
    broken = tmp_path / "m.py"
    broken.write_text("import not_a_module_anywhere\n")
    rc = main(["calibrate", str(THEOPH_CSV), "--model", f"{broken}:model"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "ModuleNotFoundError" in err and "not_a_module_anywhere" in err
    rc = main(["calibrate", str(tmp_path / "problem.yaml"), "--model", "seed"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no such PEtab problem file" in err  # a .yaml goes to invcal.ode.petab


# --------------------------------------------------------------------------------------
# Theoph through the command, against nlme
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def theoph_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theoph")
    argv = ["calibrate", str(THEOPH_CSV), *THEOPH_ARGS, "--covariance", "lme"]
    argv += ["--simulations", "100", "--pcvpc", "--no-progress", "--out", str(out)]
    rc = main(argv)
    return rc, out, argv


def test_command_reproduces_nlme_on_theoph(theoph_run):
    rc, out, _ = theoph_run
    assert rc == 0
    for f in ("results.json", "estimates.csv", "report.md", "diagnostics.csv", "gof.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    for key in (
        "fixed_effects",
        "standard_errors",
        "random_sd",
        "residual_sd",
        "loglik",
        "aic",
        "bic",
        "shrinkage",
        "condition_number",
    ):
        assert key in res, key
    assert res["status"] == "done" and res["converged"]
    # issue 6's tolerances for the Lindstrom-Bates fit (tests/test_ode_population.py)
    assert res["loglik"] == pytest.approx(NLME["loglik"], abs=0.01)
    for p in ("lKe", "lKa", "lCl"):
        assert res["fixed_effects"][p] == pytest.approx(NLME[p], abs=1e-3)
    for p in ("lKa", "lCl"):
        assert res["random_sd"][p] == pytest.approx(NLME[f"omega_{p}"], rel=0.01)
    assert res["random_sd"]["lKe"] < 1e-3
    assert res["residual_sd"] == pytest.approx(NLME["sigma_add"], rel=0.01)
    # --covariance lme: nlme's standard errors of the fixed effects
    for p in ("lKe", "lKa", "lCl"):
        assert res["standard_errors"][p] == pytest.approx(NLME_SE_ISSUE[p], rel=0.05)
        assert res["standard_errors"][p] == pytest.approx(NLME_SE_ML[p], rel=1e-3)
    assert res["aic"] == pytest.approx(-2 * res["loglik"] + 14, abs=1e-9)
    report = (out / "report.md").read_text()
    for text in ("RSE %", "95% CI", "Condition number", "Shrinkage", "nlme's linear mixed"):
        assert text in report, text
    rows = (out / "estimates.csv").read_text().splitlines()
    assert rows[0].startswith("parameter,kind,estimate,se,rse_percent,ci95_low,ci95_high")
    assert len(rows) == 1 + 7


def test_existing_run_refused_then_resumed(theoph_run, capsys):
    rc, out, argv = theoph_run
    assert rc == 0
    capsys.readouterr()
    assert main(argv) == 2  # a previous run: neither --resume nor --overwrite
    assert "holds a previous run" in capsys.readouterr().err
    before = json.loads((out / "results.json").read_text())
    assert before["fit_record"]["kind"] == "fit_population" and before["fit_record"]["finished"]
    assert main([*argv, "--resume"]) == 0
    assert "resuming the fit saved in" in capsys.readouterr().err
    after = json.loads((out / "results.json").read_text())
    # the finished fit runs no iteration again: the same estimates, the same record
    assert after["theta"] == before["theta"]
    assert after["fit_record"]["history"] == before["fit_record"]["history"]
    # resuming with other settings is refused, naming them, before any compilation
    with count_compilations() as c:
        assert main([*argv, "--resume", "--error", "combined"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("invcal: error: cannot resume from") and c.total == 0
    assert "other settings" in err[-1] and "error: 'Additive' -> 'Combined'" in err[-1], err
    # an earlier invcal's results.json (no fit record): the fit restarts from its estimates
    old = {k: v for k, v in before.items() if k != "fit_record"}
    (out / "results.json").write_text(json.dumps(old))
    assert main([*argv, "--resume"]) == 0
    assert "resuming from the estimates recorded in" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    for p in ("lKe", "lKa", "lCl"):
        assert again["fixed_effects"][p] == pytest.approx(before["fixed_effects"][p], abs=1e-4)


@pytest.fixture(scope="module")
def theoph_cal():
    return calibrate(str(THEOPH_CSV), "1cmt-oral-ke", covariance="lme", n_simulations=100, seed=3)


def test_cwres_iwres_and_shrinkage_by_hand(theoph_cal):
    """CWRES (Hooker et al. 2007) and shrinkage recomputed from ode.simulate with
    finite-difference Jacobians, subject by subject."""
    cal = theoph_cal
    fit, d = cal.fit, cal.diagnostics
    model = builtin_model("1cmt-oral-ke").build(rtol=1e-11, atol=1e-13)  # for the differences
    events = cal.events
    sigma = fit.residual_sd
    omega = np.diag([fit.random_sd[p] ** 2 for p in fit.model_params])
    indiv = fit.individual_parameters()
    iwres_all = []
    for i, sid in enumerate(events.subjects[:4]):
        phi = np.array([indiv[p][i] for p in fit.model_params])
        eta = np.array([fit.eta[p][i] for p in fit.model_params])
        keep = np.isin(events.id, [sid])
        sub = ode.read_events(
            {
                "ID": events.id[keep],
                "TIME": events.time[keep],
                "DV": np.where(np.isnan(events.dv[keep]), 0.0, events.dv[keep]),
                "AMT": events.amt[keep],
                "EVID": events.evid[keep],
                "MDV": events.mdv[keep],
            }
        )

        def f(ph, sub=sub):
            return ode.simulate(model, sub, dict(zip(fit.model_params, ph, strict=True)))[sid][1]

        f0 = f(phi)
        h = 1e-5
        Z = np.stack(
            [(f(phi + h * e) - f(phi - h * e)) / (2 * h) for e in np.eye(len(phi))], axis=1
        )
        y = events.dv[keep & events.is_observation]
        C = Z @ omega @ Z.T + sigma**2 * np.eye(len(y))
        cwres = np.real(scipy.linalg.inv(scipy.linalg.sqrtm(C))) @ (y - (f0 - Z @ eta))
        rows = d["ID"] == sid
        np.testing.assert_allclose(d["CWRES"][rows], cwres, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(d["IPRED"][rows], f0, rtol=1e-6, atol=1e-8)
        iwres_all.append((y - f0) / sigma)
    np.testing.assert_allclose(
        np.concatenate(iwres_all), d["IWRES"][np.isin(d["ID"], events.subjects[:4])], atol=1e-6
    )
    for p in ("lKa", "lCl"):
        want = 1 - np.std(fit.eta[p], ddof=1) / fit.random_sd[p]
        assert cal.shrinkage["eta"][p] == pytest.approx(want, rel=1e-12)
    assert cal.shrinkage["epsilon"] == pytest.approx(1 - np.std(d["IWRES"], ddof=1), rel=1e-12)
    # PRED: η = 0
    pop = fit.predictions(population=True)
    pred = np.concatenate([pop[s][2] for s in events.subjects])
    np.testing.assert_allclose(d["PRED"], pred, rtol=1e-6, atol=1e-8)


def test_vpc_percentiles_against_direct_simulation(theoph_cal):
    """The VPC's simulated percentiles from K replicates drawn again with the same seed and
    simulated subject by subject with ode.simulate."""
    cal = theoph_cal
    fit = cal.fit
    K = cal.vpc["n_simulations"]
    rng = np.random.default_rng(3)
    sd = np.array([fit.random_sd[p] for p in fit.model_params])
    events = cal.events
    N = events.n_subjects
    eta = rng.standard_normal((K, N, 3)) * sd
    base = fit.population_parameters()
    model = builtin_model("1cmt-oral-ke").build()
    f = np.stack(
        [
            np.concatenate(
                [
                    v[1]
                    for v in ode.simulate(
                        model,
                        events,
                        {p: base[p] + eta[k, :, j] for j, p in enumerate(fit.model_params)},
                    ).values()
                ]
            )
            for k in range(K)
        ]
    )
    # the noise draws follow the (K, N, M) padded layout of the batch: redraw it so
    N_, M = np.asarray(fit._context[3].obs_mask).shape
    noise = rng.standard_normal((K, N_, M))[:, np.asarray(fit._context[3].obs_mask)]
    y = f + fit.residual_sd * noise
    t = cal.diagnostics["TIME"]
    labels = np.asarray(cal.vpc["bin"])
    assert len(cal.vpc["bins"]) == 11  # Theoph's 11 nominal times
    for b, row in enumerate(cal.vpc["bins"]):
        sel = labels == b
        assert row["n"] == sel.sum() and row["time"] == np.median(t[sel])
        np.testing.assert_allclose(
            row["observed"], np.percentile(cal.diagnostics["DV"][sel], (5, 50, 95))
        )
        s = np.percentile(y[:, sel], (5, 50, 95), axis=1)
        np.testing.assert_allclose(row["simulated_lo"], np.percentile(s, 5, axis=1), rtol=1e-6)
        np.testing.assert_allclose(row["simulated_hi"], np.percentile(s, 95, axis=1), rtol=1e-6)
    npde = cal.diagnostics["NPDE"]
    assert np.all(np.isfinite(npde)) and abs(np.mean(npde)) < 0.3


NOMINAL = [0.0, 0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 24.0]


def _theoph_like_times(n=12, seed=0):
    """Theoph's design: 11 nominal times per subject, the actual times jittered around them
    (by up to 4% of the nominal time plus 0.05 h; the first sample at exactly 0)."""
    rng = np.random.default_rng(seed)
    nominal = np.tile(NOMINAL, n)
    jitter = (0.04 * nominal + 0.05) * rng.uniform(-1.0, 1.0, nominal.size)
    return np.where(nominal > 0, nominal + jitter, 0.0), nominal


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vpc_bins_follow_nominal_times(seed):
    """Bins are the nominal times' clusters: the last holds only the ~24 h samples (quantile
    bins mixed ~12 h and ~24 h samples on Theoph), each is drawn at its median time, and the
    observed percentiles per bin equal a direct computation."""
    from invcal.ode.residuals import _vpc, vpc_bins

    t, nominal = _theoph_like_times(seed=seed)
    labels = vpc_bins(t)
    assert labels.max() + 1 == len(NOMINAL)
    for b, nom in enumerate(NOMINAL):  # one bin per nominal time, in time order
        np.testing.assert_array_equal(labels == b, nominal == nom)
    rng = np.random.default_rng(seed)
    dv = np.exp(-0.1 * t) * rng.lognormal(0.0, 0.3, t.size)
    ys = np.exp(-0.1 * t) * rng.lognormal(0.0, 0.3, (50, t.size))
    vpc = _vpc({"TIME": t, "DV": dv, "PRED": np.exp(-0.1 * t)}, ys, None, False)
    last = vpc["bins"][-1]
    assert last["t_min"] > 20.0 and last["n"] == 12
    for b, row in enumerate(vpc["bins"]):
        sel = nominal == NOMINAL[b]
        assert row["time"] == np.median(t[sel])
        np.testing.assert_allclose(row["observed"], np.percentile(dv[sel], (5, 50, 95)))
    # distinct times only (a simulated design): one bin per time, as before
    np.testing.assert_array_equal(vpc_bins(nominal), np.searchsorted(NOMINAL, nominal))
    # a given number of bins: clusters too (contiguous, no nominal time split between two)
    four = vpc_bins(t, 4)
    assert four.max() == 3 and np.all(np.diff(four[np.argsort(t)]) >= 0)
    assert all(len(set(four[nominal == nom])) == 1 for nom in NOMINAL)


def test_pcvpc_against_the_formula():
    """Prediction-corrected VPC (Bergstrand et al. 2011, lower bound 0): y·PRED_bin/PRED with
    PRED_bin the bin's median PRED, for the observed and every simulated value, by hand on a
    small case of two nominal times."""
    from invcal.ode.residuals import _vpc

    t = np.array([1.0, 1.1, 0.9, 1.05, 8.0, 8.2, 7.9])
    pred = np.array([2.0, 1.8, 2.2, 1.9, 0.5, 0.4, 0.6])
    dv = np.array([2.5, 1.5, 2.0, 2.1, 0.7, 0.3, 0.5])
    rng = np.random.default_rng(0)
    ys = pred * rng.lognormal(0.0, 0.2, (40, t.size))
    vpc = _vpc({"TIME": t, "DV": dv, "PRED": pred}, ys, 2, True)
    assert vpc["prediction_corrected"] and vpc["bin"] == [0, 0, 0, 0, 1, 1, 1]
    for b, sel in enumerate([slice(0, 4), slice(4, 7)]):
        pb = np.median(pred[sel])  # 1.95, then 0.5
        pc_obs = dv[sel] * pb / pred[sel]
        pc_sim = ys[:, sel] * pb / pred[sel]
        row = vpc["bins"][b]
        np.testing.assert_allclose(vpc["dv"][sel], pc_obs, rtol=1e-14)
        np.testing.assert_allclose(row["observed"], np.percentile(pc_obs, (5, 50, 95)))
        s = np.percentile(pc_sim, (5, 50, 95), axis=1)
        np.testing.assert_allclose(row["simulated_lo"], np.percentile(s, 5, axis=1))
        np.testing.assert_allclose(row["simulated_median"], np.percentile(s, 50, axis=1))
        np.testing.assert_allclose(row["simulated_hi"], np.percentile(s, 95, axis=1))
    plain = _vpc({"TIME": t, "DV": dv, "PRED": pred}, ys, 2, False)
    np.testing.assert_allclose(plain["bins"][1]["observed"], np.percentile(dv[4:], (5, 50, 95)))


def test_pcvpc_through_the_command(theoph_run):
    """--pcvpc: results.json's VPC rows from diagnostics.csv's DV and PRED by the formula."""
    rc, out, argv = theoph_run
    assert rc == 0 and "--pcvpc" in argv
    vpc = json.loads((out / "results.json").read_text())["vpc"]
    assert vpc["prediction_corrected"] and len(vpc["bins"]) == 11
    rows = (out / "diagnostics.csv").read_text().splitlines()
    head = rows[0].split(",")
    cols = {k: np.array([float(r.split(",")[head.index(k)]) for r in rows[1:]]) for k in head}
    for b, row in enumerate(vpc["bins"]):
        sel = cols["VPC_BIN"] == b
        pred, dv = cols["PRED"][sel], cols["DV"][sel]
        pc = [y if p == 0 else y * np.median(pred) / p for y, p in zip(dv, pred, strict=True)]
        np.testing.assert_allclose(row["observed"], np.percentile(pc, (5, 50, 95)), rtol=1e-9)
        assert row["time"] == pytest.approx(np.median(cols["TIME"][sel]))
    assert vpc["bins"][-1]["t_min"] > 20.0  # the 24 h samples alone


# --------------------------------------------------------------------------------------
# Longer checks
# --------------------------------------------------------------------------------------
def _seed_table(n=30, seed=1, truth=None):
    """A population of the seed model with per-subject inputs u(t) (steps at subject-specific
    times) and samples from t = 1 on (after t0 = 0)."""
    truth = truth or {"p": 2.0, "q": 1.0, "omega_p": 0.3, "omega_q": 0.5, "sigma_add": 0.1}
    rng = np.random.default_rng(seed)
    times = np.arange(1.0, 8.01, 0.5)
    rows = {"ID": [], "TIME": [], "DV": [], "U": []}
    for i in range(n):
        t_step = rng.uniform(2.0, 5.0)
        level = rng.uniform(-1.0, 2.0)
        for tt in times:
            rows["ID"].append(i + 1)
            rows["TIME"].append(tt)
            rows["DV"].append(0.0)
            rows["U"].append(1.0 if tt < t_step else level)
    ev = ode.read_events(rows)
    m = builtin_model("seed")
    params = {
        "p": truth["p"] + truth["omega_p"] * rng.standard_normal(n),
        "q": truth["q"] + truth["omega_q"] * rng.standard_normal(n),
    }
    sim = ode.simulate(m.build(), m.prepare(ev), params)
    dv = np.concatenate([sim[i + 1][1] for i in range(n)])
    noise = truth["sigma_add"] * rng.standard_normal(dv.size)
    rows["DV"] = list(dv + noise)
    realized = {
        "p": params["p"].mean(),
        "q": params["q"].mean(),
        "omega_p": params["p"].std(ddof=1),
        "omega_q": params["q"].std(ddof=1),
        "sigma_add": noise.std(ddof=1),
    }
    return rows, truth, realized


@pytest.mark.slow
def test_seed_model_recovers_population_parameters(tmp_path):
    rows, truth, realized = _seed_table()
    path = tmp_path / "seed.csv"
    keys = list(rows)
    path.write_text(
        "\n".join(
            [",".join(keys)]
            + [",".join(str(rows[k][i]) for k in keys) for i in range(len(rows["ID"]))]
        )
        + "\n"
    )
    out = tmp_path / "out"
    argv = ["calibrate", str(path), "--model", "seed", "--init", "p=1,q=0"]
    assert main([*argv, "--simulations", "50", "--no-progress", "--out", str(out)]) == 0
    est = {r["name"]: r for r in json.loads((out / "results.json").read_text())["estimates"]}
    # Within their 95% CIs: the fixed effects and the residual SD around the truth; the SDs
    # of the random effects around the SDs the 30 drawn subjects realized (seed 1 draws p
    # with SD 0.239 for a population SD of 0.3: the estimate 0.236 follows the draw, and
    # the population value lies outside its interval [0.19, 0.29]).
    for name in ("p", "q", "sigma_add"):
        r = est[name]
        assert r["ci_low"] <= truth[name] <= r["ci_high"], (name, truth[name], r)
    for name in ("omega_p", "omega_q"):
        r = est[name]
        assert r["ci_low"] <= realized[name] <= r["ci_high"], (name, realized[name], r)


@pytest.mark.slow
def test_covariate_power_model(tmp_path):
    cal = calibrate(
        str(THEOPH_CSV), "1cmt-oral-ke", covariates=["lCl~WT"], covariance="R", n_simulations=0
    )
    assert "beta_lCl_WT" in cal.fit.fixed_effects
    assert cal.covariate_medians["WT"] == pytest.approx(
        np.median(ode.read_events(THEOPH_CSV).baseline()["WT"])
    )
    assert any(r["name"] == "beta_lCl_WT" and np.isfinite(r["se"]) for r in cal.estimates)


@pytest.mark.slow
def test_api_in_fresh_process_with_jax_defaults(tmp_path):
    import subprocess
    import sys

    code = (
        "import jax; assert not jax.config.jax_enable_x64\n"
        "from invcal.ode.calibrate import calibrate\n"
        f"c = calibrate({str(THEOPH_CSV)!r}, '1cmt-oral-ke', covariance='lme', n_simulations=0)\n"
        "print(c.fit.fixed_effects['lKe'], c.standard_errors['lKa'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lke, se = map(float, out.stdout.split())
    assert lke == pytest.approx(NLME["lKe"], abs=1e-3)
    assert se == pytest.approx(NLME_SE_ML["lKa"], rel=1e-3)


# --------------------------------------------------------------------------------------
# Censored observations (CENS / LLOQ, M3)
# --------------------------------------------------------------------------------------
CENS_TABLE = {
    "ID": [1, 1, 1, 1, 2, 2, 2],
    "TIME": [0.0, 1.0, 4.0, 8.0, 0.0, 2.0, 6.0],
    "DV": [".", 3.2, 0.8, ".", ".", 2.5, 0.4],
    "AMT": [100, 0, 0, 0, 100, 0, 0],
    "EVID": [1, 0, 0, 0, 1, 0, 0],
}


def test_cens_and_lloq_columns():
    ev = ode.read_events({**CENS_TABLE, "LLOQ": [".", 0.5, 0.5, 0.5, ".", 0.5, 0.5]})
    # DV missing (row 4) or below LLOQ (row 7): censored at LLOQ
    np.testing.assert_array_equal(np.flatnonzero(ev.is_censored), [3, 6])
    np.testing.assert_allclose(ev.dv[[3, 6]], [0.5, 0.5])
    ev = ode.read_events({**CENS_TABLE, "DV": [".", 3.2, 0.8, 0.3, ".", 2.5, 0.4],
                          "CENS": [0, 0, 0, 1, 0, 0, 0]})  # fmt: skip
    np.testing.assert_array_equal(np.flatnonzero(ev.is_censored), [3])
    assert ev.dv[3] == 0.3
    with pytest.raises(ValueError, match=r"row 4 \(ID 1\).*CENS is -1"):
        ode.read_events({**CENS_TABLE, "DV": [".", 3.2, 0.8, 0.3, ".", 2.5, 0.4],
                         "CENS": [0, 0, 0, -1, 0, 0, 0]})  # fmt: skip
    with pytest.raises(ValueError, match="CENS=1 needs the limit"):
        ode.read_events({**CENS_TABLE, "CENS": [0, 0, 0, 1, 0, 0, 0]})
    assert ode.read_events({**CENS_TABLE, "DV": [".", 3.2, 0.8, 0.3, ".", 2.5, 0.4]}).cens is None


def test_m3_likelihood_term_by_hand():
    """L = ½[Σ_observed ((y − f)²/R + log 2πR) − 2 Σ_censored log Φ((LLOQ − f)/√R)] + ½ηᵀΩ⁻¹η,
    from Population.inner_objective on the padded arrays, against scipy."""
    import jax.numpy as jnp
    from scipy.stats import norm

    from invcal.ode.population import _population

    ev = ode.read_events({**CENS_TABLE, "LLOQ": [".", 0.5, 0.5, 0.5, ".", 0.5, 0.5]})
    model = builtin_model("1cmt-iv").build()
    arrays = ode.subject_arrays(ev, model)
    pop = _population(model, None, None, "additive", "laplace")
    theta = {"lCl": 0.0, "lV": 3.0, "omega_lCl": 0.3, "omega_lV": 0.4, "sigma_add": 0.7}
    eta = jnp.asarray([0.1, -0.2])
    for i, (f, y, cens) in enumerate(
        [([3.0, 1.0, 0.6], [3.2, 0.8, 0.5], [0, 0, 1]), ([2.0, 0.3], [2.5, 0.5], [0, 1])]
    ):
        subj = jax_tree_index(arrays, i)
        m = int(np.asarray(subj.obs_mask).sum())
        fp = np.zeros(subj.obs_t.shape[0])
        fp[:m] = f
        got = float(pop.inner_objective(jnp.asarray(fp), eta, theta, subj))
        y, f, cens = np.asarray(y), np.asarray(f), np.asarray(cens, bool)
        s = 0.7
        want = 0.5 * np.sum(((y - f) ** 2 / s**2 + np.log(2 * np.pi * s**2))[~cens])
        want -= np.sum(norm.logcdf((y[cens] - f[cens]) / s))
        want += 0.5 * ((0.1 / 0.3) ** 2 + (0.2 / 0.4) ** 2)
        assert got == pytest.approx(want, rel=1e-12)


def jax_tree_index(tree, i):
    import jax

    return jax.tree_util.tree_map(lambda a: a[i], tree)


def test_m3_needs_laplace_before_compiling(tmp_path, capsys):
    path = tmp_path / "c.csv"
    rows = {**CENS_TABLE, "LLOQ": [".", 0.5, 0.5, 0.5, ".", 0.5, 0.5]}
    keys = list(rows)
    lines = [",".join(keys)] + [
        ",".join(str(rows[k][i]) for k in keys) for i in range(len(rows["ID"]))
    ]
    path.write_text("\n".join(lines) + "\n")
    with count_compilations() as c:
        rc = main(["calibrate", str(path), "--model", "1cmt-iv", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and c.total == 0
    assert "2 observation(s) below the limit" in err and "--approximation laplace" in err


def _censored_table(n=40, seed=0, sigma=0.5, fraction=0.3):
    """1cmt-iv population (Cl 2, V 20, ω 0.3 each, additive σ), 100 units at t = 0, nine
    samples to 24 h; the lowest ``fraction`` of the observations censored at their quantile."""
    truth = {
        "lCl": math.log(2.0),
        "lV": math.log(20.0),
        "omega_lCl": 0.3,
        "omega_lV": 0.3,
        "sigma_add": sigma,
    }
    rng = np.random.default_rng(seed)
    times = [0.25, 1, 2, 4, 6, 8, 12, 16, 24.0]
    k = len(times) + 1
    ids = np.repeat(np.arange(1, n + 1), k)
    evid = np.tile([1] + [0] * len(times), n)
    cols = {"ID": ids, "TIME": np.tile([0.0, *times], n), "AMT": np.where(evid == 1, 100.0, 0)}
    ev = ode.read_events({**cols, "DV": np.where(evid == 1, np.nan, 1.0), "EVID": evid})
    params = {p: truth[p] + 0.3 * rng.standard_normal(n) for p in ("lCl", "lV")}
    sim = ode.simulate(builtin_model("1cmt-iv").build(), ev, params)
    y = np.concatenate([sim[i][1] for i in ev.subjects]) + sigma * rng.standard_normal(n * (k - 1))
    lloq = float(np.quantile(y, fraction))
    dv = np.full(ids.size, np.nan)
    dv[evid == 0] = np.maximum(y, lloq)  # a censored observation holds the limit
    cens = np.zeros(ids.size, int)
    cens[evid == 0] = y < lloq
    return {**cols, "DV": dv, "EVID": evid, "CENS": cens}, truth


@pytest.mark.slow
def test_m3_recovers_truth_where_m1_is_biased():
    """30% of the observations censored: M3's 95% CIs hold the truth; dropping them (M1)
    biases Cl (measured: lCl 0.707 ± 0.046 by M3, 0.576 ± 0.052 by M1, truth 0.693)."""
    table, truth = _censored_table()
    fits = {
        cm: calibrate(
            table,
            "1cmt-iv",
            approximation="laplace",
            censoring=cm,
            covariance="R",
            n_simulations=0,
            init={"lCl": 0.0, "lV": 2.5},
        )
        for cm in ("m3", "m1")
    }
    m3 = {r["name"]: r for r in fits["m3"].estimates}
    m1 = {r["name"]: r for r in fits["m1"].estimates}
    assert fits["m3"].options["n_censored"] == 108 and fits["m3"].options["censoring"] == "M3"
    for name, value in truth.items():
        assert m3[name]["ci_low"] <= value <= m3[name]["ci_high"], (name, m3[name])
    assert not m1["lCl"]["ci_low"] <= truth["lCl"] <= m1["lCl"]["ci_high"], m1["lCl"]
    assert abs(m1["lCl"]["value"] - truth["lCl"]) > 2 * abs(m3["lCl"]["value"] - truth["lCl"])


def test_addl_ii_equal_explicit_dose_rows():
    """ADDL=3, II=12 (boluses, then infusions) give the same predictions as four dose rows."""
    obs = [1.0, 11.0, 13.0, 30.0, 40.0, 50.0]

    def table(doses, addl=None):
        rows = [(t, 1, 50.0) for t in doses] + [(t, 0, 0.0) for t in obs]
        rows.sort(key=lambda r: (r[0], -r[1]))
        cols = {
            "ID": [1] * len(rows),
            "TIME": [r[0] for r in rows],
            "DV": [1.0 if r[1] == 0 else "." for r in rows],
            "AMT": [r[2] for r in rows],
            "EVID": [r[1] for r in rows],
        }
        if addl is not None:
            cols["ADDL"] = [addl if r[1] == 1 else 0 for r in rows]
            cols["II"] = [12.0 if r[1] == 1 else 0 for r in rows]
        return cols

    p = {"lKa": 0.0, "lCl": math.log(2.0), "lV": math.log(20.0)}
    m = builtin_model("1cmt-oral").build()
    for rate in (0.0, 25.0):
        a, b = table([0.0], addl=3), table([0.0, 12.0, 24.0, 36.0])
        for t in (a, b):
            t["RATE"] = [rate if e == 1 else 0.0 for e in t["EVID"]]
        got = ode.simulate(m, ode.read_events(a), p)[1][1]
        want = ode.simulate(m, ode.read_events(b), p)[1][1]
        np.testing.assert_allclose(got, want, rtol=1e-7)
    with pytest.raises(ValueError, match=r"row 1 \(ID 1\).*ADDL=2 additional doses need"):
        ode.read_events({**table([0.0], addl=2), "II": [0.0] * 7})


def test_user_model_file(theoph_run, tmp_path):
    """path/to/file.py:NAME: a user's ODEModel (here the built-in one, so the compiled fit
    is shared) gives the built-in model's results."""
    rc, out, argv = theoph_run
    assert rc == 0
    f = tmp_path / "mymodel.py"
    f.write_text(
        "from invcal.ode.models import builtin_model\n"
        "def make():\n    return builtin_model('1cmt-oral-ke').build()\n"
        "model = make()\n"
    )
    init = "lKe=-2.44,lKa=0.77,lCl=-3.25"  # a user's model has no default initial values
    for name in ("model", "make"):
        dest = tmp_path / name
        user = ["calibrate", str(THEOPH_CSV), "--model", f"{f}:{name}", "--init", init]
        user += ["--covariance", "lme", "--simulations", "100", "--no-progress", "--out", str(dest)]
        assert main(user) == 0
        a = json.loads((out / "results.json").read_text())
        b = json.loads((dest / "results.json").read_text())
        for p in ("lKe", "lKa", "lCl"):
            assert b["fixed_effects"][p] == pytest.approx(a["fixed_effects"][p], abs=1e-4)
            assert b["standard_errors"][p] == pytest.approx(a["standard_errors"][p], rel=1e-3)
        assert b["model"] == f"{f}:{name}"


def test_second_calibration_compiles_nothing(theoph_cal):
    with count_compilations() as c:
        again = calibrate(
            str(THEOPH_CSV), "1cmt-oral-ke", covariance="lme", n_simulations=100, seed=3
        )
    assert c.total == 0, c.names
    assert again.standard_errors == theoph_cal.standard_errors


# --------------------------------------------------------------------------------------
# Proportional error where the prediction is 0: one line naming the rows
# --------------------------------------------------------------------------------------
def test_zero_variance_observations_are_named():
    from invcal.ode.screening import describe_zero_variance, zero_variance_observations

    ev = ode.read_events(THEOPH_CSV)
    N, M = ev.n_subjects, 11
    R = np.ones((N, M))
    R[:, 0] = 0.0  # every subject's first observation (TIME 0, with its oral dose)
    R[1, 1] = 0.0
    mask = np.ones((N, M), bool)
    mask[3, 0] = False  # held out: not the fit's
    rows = zero_variance_observations(ev, R, mask)
    assert len(rows) == N and [int(ev.row[i]) for i in rows[:3]] == [2, 14, 15]
    assert all(ev.is_observation[i] for i in rows)
    text = describe_zero_variance(ev, rows, "proportional")
    assert text.startswith("with proportional error the residual variance")
    assert "12 observation(s) of theoph.csv" in text
    assert "row 2 (ID 1, TIME 0), row 14 (ID 2, TIME 0), row 15 (ID 2, TIME 0.27)" in text
    assert "and 6 more" in text and "--error combined" in text and "MDV=1" in text


@pytest.mark.slow
def test_proportional_error_with_zero_predictions_names_the_rows(tmp_path, capsys):
    """Theoph's TIME 0 samples (taken with the oral dose) and, with --lag, those within the
    lag time are predicted 0: proportional error has no likelihood there."""
    out = tmp_path / "o"
    argv = ["calibrate", str(THEOPH_CSV), "--model", "1cmt-oral", "--error", "proportional"]
    rc = main([*argv, "--lag", "--simulations", "0", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1, err
    assert "with proportional error the residual variance (sigma_prop*IPRED)^2 is 0" in err
    assert "row 2 (ID 1, TIME 0)" in err and "--error combined" in err, err


# --------------------------------------------------------------------------------------
# A killed invcal calibrate resumes to the uninterrupted estimates (slow)
# --------------------------------------------------------------------------------------
KILL_AFTER = r"""
import os, signal, sys
from invcal.ode import fit_record

add = fit_record.FitRecord.add

def add_then_die(self, *args):
    add(self, *args)  # results.json written: then killed, as a job is (no cleanup)
    if len(self.results["history"]) >= int(os.environ["KILL_AFTER_ROWS"]):
        os.kill(os.getpid(), signal.SIGKILL)

fit_record.FitRecord.add = add_then_die
from invcal.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_calibration_resumes_to_the_uninterrupted_estimates(tmp_path):
    """Fresh processes with JAX's defaults: invcal calibrate on Theoph (Lindstrom-Bates, 8
    relinearizations) killed by SIGKILL after the 3rd iteration's results.json, then
    --resume, against an uninterrupted run: the same estimates to 1e-8, the same
    iterations, each recorded once."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("JAX_ENABLE_X64", None)
    args = ["calibrate", str(THEOPH_CSV), *THEOPH_ARGS, "--covariance", "lme"]
    args += ["--simulations", "0", "--no-progress"]

    def run(out, *extra, kill=None):
        e = {**env, "KILL_AFTER_ROWS": str(kill or 10**6)}
        cmd = [sys.executable, "-c", KILL_AFTER, *args, "--out", str(out), *extra]
        return subprocess.run(cmd, env=e, capture_output=True, text=True)

    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = run(tmp_path / "run", kill=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["kind"] == "fit_population" and saved["finished"] is False
    assert [r["iteration"] for r in saved["history"]] == [1, 2, 3]
    resumed = run(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the fit saved in" in resumed.stderr
    a = json.loads((tmp_path / "ref" / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert b["iterations"] == a["iterations"] > 3
    for k in a["theta"]:
        assert b["theta"][k] == pytest.approx(a["theta"][k], rel=1e-8, abs=1e-8), k
    assert b["loglik"] == pytest.approx(a["loglik"], rel=1e-10)
    its = [r["iteration"] for r in b["fit_record"]["history"]]
    assert its == list(range(1, a["iterations"] + 1))  # each iteration recorded once
