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
        ({"method": "foce"}, "method must be 'focei' or 'laplace'"),
        ({"subjects": 13}, r"subjects must be in 1..12"),
    ],
)
def test_setup_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        h.setup(**options)


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
