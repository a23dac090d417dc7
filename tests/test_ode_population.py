"""Population fits: FOCEI and Laplace objectives, their implicit hypergradients against
central finite differences, nlme's Theoph reference, the engine's Implicit methods on the
same problem, and failures that name the subject.

One compiled program per (model, data shapes, method, error): ``population_objective`` and
``fit_population`` share it, so the FOCEI tests below compile once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invcal as ic
from invcal import ode
from invcal.testing import grad_z
from problems.hierarchical_ode import load_theoph, theophylline_model

# R nlme 3.1-162, ML: nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), Theoph,
# fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKe + lKa + lCl ~ 1)).
NLME = {
    "lKe": -2.4546457747,
    "lKa": 0.4655047601,
    "lCl": -3.2271983419,
    "omega_lKe": 1.624641e-05,
    "omega_lKa": 0.6438571,
    "omega_lCl": 0.1669212,
    "sigma_add": 0.7092257363,
}
NLME_LOGLIK = -177.0235
NLME_RANEF_SUBJECT1 = (-3.398146e-09, -0.11907534, -0.35424100)  # ID 1: lKe, lKa, lCl
THETA = {**NLME, "omega_lKe": 0.1, "omega_lKa": 0.6, "omega_lCl": 0.2, "sigma_add": 0.7}
INIT = {"lKe": -2.5, "lKa": 0.5, "lCl": -3.0}


@pytest.fixture(scope="module")
def model():
    # Tight tolerances: finite differences of the discrete solve then agree to ~1e-8.
    return theophylline_model(rtol=1e-9, atol=1e-11)


@pytest.fixture(scope="module")
def theoph():
    return load_theoph()


def fd_check(model, events, theta, eps=1e-5, **kwargs):
    """(relative error, analytic dE/dz, central differences) in the unconstrained z."""
    obj = ode.population_objective(model, events, theta, inner_tol=1e-12, **kwargs)
    from invcal.ode.population import _prepare

    _, _, _, space = _prepare(
        model,
        events,
        theta,
        kwargs.get("random"),
        kwargs.get("error", "additive"),
        kwargs.get("approximation", "focei"),
        kwargs.get("covariates"),
    )
    fd = np.zeros(obj.z.shape[0])
    for i in range(fd.shape[0]):
        vals = []
        for sign in (1.0, -1.0):
            z = obj.z.copy()
            z[i] += sign * eps
            th = {k: float(v) for k, v in space.to_theta(jnp.asarray(z)).items()}
            vals.append(
                ode.population_objective(
                    model, events, th, inner_tol=1e-12, eta0=obj.eta, **kwargs
                ).value
            )
        fd[i] = (vals[0] - vals[1]) / (2 * eps)
    return float(np.linalg.norm(obj.grad_z - fd) / np.linalg.norm(fd)), obj, fd


# --------------------------------------------------------------------------------------
# FOCEI (one compilation)
# --------------------------------------------------------------------------------------
def test_focei_objective_is_nlme_loglik_at_nlme_estimates(model, theoph):
    # For additive error FOCEI is the Lindstrom-Bates likelihood nlme reports.
    obj = ode.population_objective(model, theoph, NLME)
    assert obj.loglik == pytest.approx(NLME_LOGLIK, abs=2e-3)
    np.testing.assert_allclose(obj.eta[0], NLME_RANEF_SUBJECT1, atol=2e-4)
    assert obj.inner_converged.all() and obj.failed == []
    assert set(obj.grad) == set(NLME)


def test_unconverged_inner_fit_warns_and_names_the_subjects(model, theoph):
    # one Levenberg-Marquardt step from eta = 0 cannot meet inner_tol (same program)
    with pytest.warns(RuntimeWarning, match=r"subject\(s\) \[1, 2, .*inner_max_steps=1"):
        obj = ode.population_objective(model, theoph, THETA, inner_tol=1e-12, inner_max_steps=1)
    assert not obj.inner_converged.all() and obj.failed == []


def test_focei_hypergradient_matches_finite_differences(model, theoph):
    err, obj, fd = fd_check(model, theoph, THETA, approximation="focei")
    assert err < 1e-5
    # the log-determinant's dependence on eta* matters: without it the error is large
    assert np.linalg.norm(fd) > 1.0


def test_fit_theoph_from_nlme_estimates(model, theoph):
    init = {k: v for k, v in NLME.items()}
    init["omega_lKe"] = 0.01
    seen = []
    fit = ode.fit_population(
        model,
        theoph,
        init=init,
        random=("lKe", "lKa", "lCl"),
        algorithm="lbfgs",
        progress=lambda *row: seen.append(row),
    )
    assert fit.converged, fit.message
    # progress: one report per accepted L-BFGS step, as the compiled loop runs
    jax.effects_barrier()
    assert [r[1] for r in seen] == list(range(fit.iterations + 1)), seen
    assert {r[0] for r in seen} == {"lbfgs"}
    np.testing.assert_allclose([r[2] for r in seen], fit.history, rtol=1e-12)
    # exact FOCEI maximum: at least as high as nlme's Lindstrom-Bates fixed point
    assert NLME_LOGLIK - 1e-3 <= fit.loglik <= NLME_LOGLIK + 0.5
    for p in ("lKe", "lKa", "lCl"):
        assert fit.fixed_effects[p] == pytest.approx(NLME[p], abs=0.02)
    assert fit.random_sd["lKa"] == pytest.approx(NLME["omega_lKa"], rel=0.05)
    assert fit.random_sd["lCl"] == pytest.approx(NLME["omega_lCl"], rel=0.05)
    assert fit.random_sd["lKe"] < 1e-2
    assert fit.residual_sd == pytest.approx(NLME["sigma_add"], rel=0.02)
    assert fit.aic == pytest.approx(-2 * fit.loglik + 14)
    assert fit.bic == pytest.approx(-2 * fit.loglik + 7 * np.log(132))
    assert fit.n_params == 7 and fit.n_obs == 132 and fit.n_subjects == 12
    # nlme's standard errors: 0.0525, 0.1986, 0.0600
    np.testing.assert_allclose(
        [fit.standard_errors[p] for p in ("lKe", "lKa", "lCl")], [0.0525, 0.1986, 0.0600], rtol=0.05
    )
    assert fit.individual["ID"] == list(theoph.subjects)
    assert fit.individual["lKa"].shape == (12,)
    np.testing.assert_allclose(
        fit.individual["lKa"] - fit.fixed_effects["lKa"], fit.eta["lKa"], atol=1e-12
    )
    text = fit.summary()
    for word in ("FOCEI", "AIC", "BIC", "logLik", "lKa", "Residual", "Std.Error"):
        assert word in text
    t, dv, ipred = fit.ipred[1]
    assert t.shape == dv.shape == ipred.shape == (11,)
    assert np.sqrt(np.mean((dv - ipred) ** 2)) < 1.0


def _theoph_with(theoph, **columns):
    """Theoph's table with some columns replaced (same shapes: same compiled program)."""
    cols = {
        "ID": theoph.id,
        "TIME": theoph.time,
        "DV": np.where(np.isnan(theoph.dv), ".", theoph.dv.astype(str)),
        "AMT": theoph.amt,
        "EVID": theoph.evid,
        "CMT": theoph.cmt,
        "MDV": theoph.mdv,
    }
    cols.update(columns)
    return ode.read_events(cols)


@pytest.mark.slow  # ~21 s (two failing population solves); keeps the default suite under 10 min
def test_failed_solves_name_the_subject_and_spare_the_others(model, theoph):
    ref = ode.population_objective(model, theoph, THETA)
    others = np.array(theoph.subjects) != 5
    # max_steps: subject 5 starts its inner fit at k_a = e^12 /h (stiff for Tsit5)
    eta0 = np.zeros((12, 3))
    eta0[4, 1] = 12.0 - THETA["lKa"]
    obj = ode.population_objective(model, theoph, THETA, eta0=eta0, raise_on_failure=False)
    assert obj.failed == [5] and not np.isfinite(obj.value)
    np.testing.assert_allclose(obj.subject_value[others], ref.subject_value[others], rtol=1e-12)
    np.testing.assert_allclose(obj.eta[others], ref.eta[others], atol=1e-12)
    # non-finite state: subject 5's dose overflows its depot
    amt = np.where((theoph.id == 5) & (theoph.evid == 1), 1e308, theoph.amt)
    events = _theoph_with(theoph, AMT=amt)
    obj = ode.population_objective(model, events, THETA, raise_on_failure=False)
    assert obj.failed == [5]
    np.testing.assert_allclose(obj.subject_value[others], ref.subject_value[others], rtol=1e-12)
    assert np.all(np.isfinite(obj.eta[others]))
    with pytest.raises(RuntimeError, match=r"subject\(s\) \[5\].*max_steps"):
        ode.population_objective(model, events, THETA)
    with pytest.raises(RuntimeError, match=r"fit_population.*subject\(s\) \[5\]"):
        ode.fit_population(model, events, init=THETA, algorithm="lbfgs")


def test_dose_into_missing_compartment_refused_before_fitting(theoph):
    events = _theoph_with(theoph, CMT=np.where(theoph.evid == 1, 3, theoph.cmt))
    with pytest.raises(ValueError, match=r"row 1 \(ID 1\).*CMT=3.*2 state\(s\)"):
        ode.fit_population(theophylline_model(), events, init=INIT)


# --------------------------------------------------------------------------------------
# nlme's Lindstrom-Bates algorithm (one compilation)
# --------------------------------------------------------------------------------------
def test_lindstrom_bates_reproduces_nlme(theoph, capsys):
    # the default algorithm for FOCEI with additive error
    model = theophylline_model(rtol=1e-7, atol=1e-9)
    fit = ode.fit_population(model, theoph, init=INIT, progress=True)
    assert fit.algorithm == "lindstrom-bates"
    assert fit.converged, fit.message
    # The first relinearization starts every subject at η = 0, where the Newton step
    # overshoots (ID 1: L 246 -> 5079); the inner solver's trust radius takes it in 7 steps
    # (13 with λ-damping alone, the vmapped solve waiting for its slowest subject).
    assert int(fit.inner_steps[0]) <= 8, fit.inner_steps
    jax.effects_barrier()
    lines = capsys.readouterr().err.splitlines()
    expected = [
        f"fit_population [lindstrom-bates] iteration {k}:" for k in range(1, fit.iterations + 1)
    ]
    assert [line.split(" objective")[0] for line in lines] == expected, lines
    assert fit.loglik == pytest.approx(NLME_LOGLIK, abs=0.01)
    for p in ("lKe", "lKa", "lCl"):
        assert fit.fixed_effects[p] == pytest.approx(NLME[p], abs=1e-3)
    for p in ("lKa", "lCl"):
        assert fit.random_sd[p] == pytest.approx(NLME[f"omega_{p}"], rel=0.01)
    assert fit.random_sd["lKe"] < 1e-3
    assert fit.residual_sd == pytest.approx(NLME["sigma_add"], rel=0.01)
    assert "Lindstrom-Bates" in fit.summary()
    with pytest.raises(ValueError, match="lindstrom-bates.*additive"):
        ode.fit_population(
            model, theoph, init=INIT, algorithm="lindstrom-bates", approximation="laplace"
        )
    with pytest.raises(ValueError, match="algorithm must be"):
        ode.fit_population(model, theoph, init=INIT, algorithm="newton")
    with pytest.raises(TypeError, match="progress must be None, True"):
        ode.fit_population(model, theoph, init=INIT, progress="yes")


# --------------------------------------------------------------------------------------
# Laplace (one compilation)
# --------------------------------------------------------------------------------------
def test_laplace_hypergradient_matches_finite_differences(model, theoph):
    err, obj, _ = fd_check(model, theoph, THETA, approximation="laplace")
    assert err < 1e-5
    focei = ode.population_objective(model, theoph, THETA, approximation="focei")
    # same inner problem, different Hessian in the log-determinant
    np.testing.assert_allclose(obj.eta, focei.eta, atol=1e-8)
    assert obj.value != pytest.approx(focei.value, abs=1e-6)


# --------------------------------------------------------------------------------------
# Arguments (no compilation)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"init": {"lKe": 0.0}}, ValueError, r"missing \['lKa', 'lCl'\]"),
        ({"init": {**INIT, "foo": 1.0}}, ValueError, r"unknown names \['foo'\]"),
        ({"init": {**INIT, "omega_lKe": -1.0}}, ValueError, "omega_lKe.*> 0"),
        ({"init": [1, 2]}, TypeError, "init must be a dict"),
        ({"error": "poisson"}, ValueError, "error must be 'additive'"),
        ({"approximation": "foce"}, ValueError, "approximation must be 'focei'"),
        ({"random": ("V",)}, ValueError, r"random \['V'\] are not parameters"),
        ({"random": ()}, ValueError, "at least one parameter"),
        ({"covariates": {"V": ("WT",)}}, ValueError, "covariates key 'V'"),
        ({"covariates": {"lCl": ("AGE",)}}, ValueError, r"covariates \['AGE'\]"),
        ({"max_iter": 0}, ValueError, "max_iter must be an integer >= 1"),
        ({"gtol": -1.0}, ValueError, "gtol must be a positive number"),
    ],
)
def test_bad_arguments(theoph, kwargs, err, match):
    args = {"init": INIT, **kwargs}
    with pytest.raises(err, match=match):
        ode.fit_population(theophylline_model(), theoph, **args)


def test_reverse_adjoint_refused_for_hypergradients(theoph):
    import diffrax as dfx

    model = theophylline_model(adjoint=dfx.BacksolveAdjoint())
    with pytest.raises(ValueError, match="FOCEI hypergradients.*ForwardMode"):
        ode.fit_population(model, theoph, init=INIT)


# --------------------------------------------------------------------------------------
# Slow: the issue's reproduction from its initial values, other error models, the
# engine's methods, covariates and failures (each compiles its own program)
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_exact_focei_fit_from_issue_init(theoph):
    model = theophylline_model(rtol=1e-7, atol=1e-9)
    fit = ode.fit_population(model, theoph, init=INIT, algorithm="lbfgs")
    assert fit.converged, fit.message
    assert fit.loglik == pytest.approx(NLME_LOGLIK, abs=0.5)
    assert fit.loglik >= NLME_LOGLIK - 1e-3
    for p in ("lKe", "lKa", "lCl"):
        assert fit.fixed_effects[p] == pytest.approx(NLME[p], abs=0.02)
    assert fit.random_sd["lKa"] == pytest.approx(NLME["omega_lKa"], rel=0.05)
    assert fit.random_sd["lCl"] == pytest.approx(NLME["omega_lCl"], rel=0.05)
    assert fit.residual_sd == pytest.approx(NLME["sigma_add"], rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["focei", "laplace"])
def test_combined_error_hypergradient(model, theoph, method):
    theta = {**THETA, "sigma_prop": 0.1}
    err, _, _ = fd_check(model, theoph, theta, approximation=method, error="combined")
    assert err < 1e-5


@pytest.mark.slow
def test_engine_implicit_methods_agree(model, theoph):
    import lineax as lx

    problem, solver = ode.population_problem(model, theoph, init=THETA, approximation="focei")
    solver = ode.PopulationLM(population=solver.population, tol=1e-12)
    ref = ode.population_objective(model, theoph, THETA, inner_tol=1e-12)
    for method in (ic.Implicit(), ic.Implicit(mode="forward"), ic.Implicit(lx.LU())):
        hg = ic.hypergradient(problem, THETA, solver=solver, method=method)
        g = np.asarray(grad_z(problem, problem.space.validate(THETA), hg.grad))
        assert float(hg.value) == pytest.approx(ref.value, rel=1e-12)
        assert np.linalg.norm(g - ref.grad_z) / np.linalg.norm(ref.grad_z) < 1e-8
    check = ic.check_hypergradient(problem, THETA, solver=solver)
    assert check.relative_error < 1e-5


@pytest.mark.slow
def test_covariate_effect_and_failing_subject(model, theoph):
    # X is 0 except for subject 5, where a huge effect on lKa makes its ODE overflow.
    events = _theoph_with(theoph, X=np.where(theoph.id == 5, 1.0, 0.0))
    theta = {**THETA, "beta_lKa_X": 800.0}
    kw = {"covariates": {"lKa": ("X",)}}
    with pytest.raises(RuntimeError, match=r"subject\(s\) \[5\]"):
        ode.population_objective(model, events, theta, **kw)
    obj = ode.population_objective(model, events, theta, raise_on_failure=False, **kw)
    assert obj.failed == [5] and not np.isfinite(obj.value)
    ok = np.array(events.subjects) != 5
    good = ode.population_objective(model, events, {**theta, "beta_lKa_X": 0.0}, **kw)
    np.testing.assert_allclose(obj.subject_value[ok], good.subject_value[ok], rtol=1e-12)
    with pytest.raises(RuntimeError, match=r"subject\(s\) \[5\]"):
        ode.fit_population(model, events, init=theta, **kw)
    err, _, _ = fd_check(model, events, {**theta, "beta_lKa_X": 0.3}, **kw)
    assert err < 1e-5
