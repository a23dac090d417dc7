"""The problem module: the command-line setup for Theoph and the seed model's synthetic
population (initial condition with a population model)."""

import numpy as np
import pytest

import invcal as ic
from invcal import ode
from invcal.catalog import Setup
from problems import hierarchical_ode as h


def test_setup_contract():
    s = h.setup(subjects=3)
    assert isinstance(s, Setup)
    assert isinstance(s.problem, ic.Problem) and isinstance(s.solver, ode.PopulationLM)
    assert s.optimizer == "lbfgs" and callable(s.extra_report)
    assert set(s.methods) == {"implicit-cg", "implicit-forward", "implicit-dense"}
    assert s.problem.x0.shape == (3, 3)
    assert list(s.problem.space.names) == [
        "lKe", "lKa", "lCl", "omega_lKe", "omega_lKa", "omega_lCl", "sigma_add"
    ]  # fmt: skip
    assert s.description.startswith("Theophylline")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"solver": 1}, r"unknown option\(s\) \['solver'\]"),
        ({"method": "foce"}, "approximation must be 'focei' or 'laplace'"),
        ({"subjects": 13}, r"subjects must be an integer >= 1 and <= 12; got 13"),
        ({"omega": "pdSymm"}, r"omega must be one of \['diagonal', 'full'\]; got 'pdSymm'"),
        ({"omega": 1}, r"omega must be one of \['diagonal', 'full'\]; got 1"),
    ],
)
def test_setup_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        h.setup(**options)


def test_cli_bad_omega_is_one_line(tmp_path, capsys):
    from invcal.cli import main

    rc = main(["run", "theophylline", "-o", "omega=pdsymm", "--out", str(tmp_path / "r"),
               "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "omega must be one of ['diagonal', 'full']; got 'pdsymm'" in err[0]
    assert not (tmp_path / "r").exists()


def test_setup_full_omega_and_its_report_lines():
    s = h.setup(subjects=2, omega="Full")  # case as typed on the command line
    pop = s.solver.population
    assert pop.omega == "full"
    names = list(s.problem.space.names)
    assert names == [
        "lKe", "lKa", "lCl", "omega_chol_lKe", "omega_chol_lKa", "omega_chol_lCl",
        "omega_chol_lKa_lKe", "omega_chol_lCl_lKe", "omega_chol_lCl_lKa", "sigma_add",
    ]  # fmt: skip
    # a correlated Omega = C C^T; the report's SDs and correlations against NumPy
    C = np.array([[0.13, 0.0, 0.0], [0.01, 0.64, 0.0], [0.25, -0.02, 0.03]])
    theta = dict(s.problem.space.init())
    for i, p in enumerate(pop.random):
        theta[f"omega_chol_{p}"] = C[i, i]
        for j, r in enumerate(pop.random[:i]):
            theta[f"omega_chol_{p}_{r}"] = C[i, j]
    om = C @ C.T
    sd = np.sqrt(np.diag(om))
    extra = h._report_extra(pop, theta)
    assert extra["random effects (best theta)"].startswith("general Omega")
    np.testing.assert_allclose(extra["omega_matrix"], om, rtol=1e-14)
    for i, p in enumerate(pop.random):
        assert extra[f"random-effect SD {p}"] == pytest.approx(sd[i], rel=1e-14)
        for j, r in enumerate(pop.random[:i]):
            rho = om[i, j] / (sd[i] * sd[j])
            assert extra[f"random-effect correlation ({p}, {r})"] == pytest.approx(rho, rel=1e-12)
    assert len([k for k in extra if k.startswith("random-effect correlation")]) == 3

    diag = h.setup(subjects=2)
    th = dict(diag.problem.space.init())
    extra = h._report_extra(diag.solver.population, th)
    assert extra["random effects (best theta)"].startswith("diagonal Omega")
    assert not any(k.startswith("random-effect correlation") for k in extra)
    assert extra["random-effect SD lKa"] == th["omega_lKa"]


def test_load_theoph_subset():
    ev = h.load_theoph(subjects=2)
    assert ev.subjects == (1, 2) and ev.n_observations == 22
    assert "first 2 subjects" in ev.source


@pytest.mark.slow
def test_seed_model_recovers_population():
    events, true = h.seed_events(40, seed=1)
    assert events.n_subjects == 40 and events.n_observations == 40 * 13
    model = h.seed_model(rtol=1e-8, atol=1e-10)
    fit = ode.fit_population(
        model, events, init={"p": 1.0, "q": 0.0, "sigma_add": 0.5}, random=("p", "q")
    )
    assert fit.converged, fit.message
    t = h.SEED_TRUTH
    se = fit.standard_errors
    assert abs(fit.fixed_effects["p"] - t["p"]) < 3 * se["p"]
    assert abs(fit.fixed_effects["q"] - t["q"]) < 3 * se["q"]
    assert fit.residual_sd == pytest.approx(t["sigma_add"], rel=0.15)
    # the SD of the drawn q_i (not omega_q itself: 40 draws scatter by ~10%)
    assert fit.random_sd["q"] == pytest.approx(np.std(true["q"]), rel=0.15)
    # individual initial conditions are recovered (shrinkage aside)
    assert np.corrcoef(fit.individual["q"], true["q"])[0, 1] > 0.95


@pytest.mark.slow
def test_cli_run_small(tmp_path):
    from invcal.cli import main

    out = tmp_path / "run"
    rc = main(["run", "theophylline", "--steps", "3", "--out", str(out), "--no-progress",
               "-o", "subjects=3"])  # fmt: skip
    assert rc == 0
    assert (out / "subjects.png").exists() and (out / "goodness_of_fit.png").exists()


@pytest.mark.slow
def test_cli_run_full_omega_reports_correlations(tmp_path):
    import json

    from invcal.cli import main

    out = tmp_path / "run"
    rc = main(["run", "theophylline", "--steps", "3", "--out", str(out), "--no-progress",
               "-o", "subjects=3", "-o", "omega=full"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["options"] == {"subjects": 3, "omega": "full"}
    extra = results["extra"]
    omega = np.array(extra["omega_matrix"])
    sd = np.sqrt(np.diag(omega))
    assert extra["random-effect correlation (lCl, lKa)"] == pytest.approx(
        omega[2, 1] / (sd[2] * sd[1]), rel=1e-12
    )
    # the report escapes Markdown's punctuation (invcal.report._plain): read it as rendered
    report = (out / "report.md").read_text().replace("\\", "")
    assert "general Omega (log-Cholesky)" in report
    for pair in ("(lKa, lKe)", "(lCl, lKe)", "(lCl, lKa)"):
        assert f"random-effect correlation {pair}" in report


def test_the_likelihood_approximation_has_its_own_keyword():
    from invcal.ode.approximations import approximation_argument

    assert approximation_argument("laplace", None, "fit_population") == "laplace"
    with pytest.warns(DeprecationWarning, match=r"fit_population\(approximation=...\)"):
        assert approximation_argument("focei", "laplace", "fit_population") == "laplace"
    with pytest.raises(TypeError, match="pass approximation= only"):
        approximation_argument("laplace", "focei", "fit_population")
    # the public entry points take it, and refuse a bad one in one line naming it
    with pytest.raises(ValueError, match="approximation must be 'focei'"):
        ode.population_objective(
            h.theophylline_model(), h.load_theoph(subjects=2), h.INIT, approximation="x"
        )
