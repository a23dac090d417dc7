"""invcal.ode.petab: PEtab problems as JAX objectives.

Oracles: AMICI's reference log-likelihoods of three benchmark problems; a small PEtab problem
written here whose ODE has a closed-form solution, scored by ``petab.calculate_llh`` (PEtab's
own noise models) on that solution; central finite differences for the gradients.
"""

import shutil
from pathlib import Path

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import petab.v1 as libpetab
import pytest

from invcal.ode import petab
from invcal.testing import central_difference4, count_compilations

DATA = Path(__file__).parent / "data" / "petab"
# AMICI's benchmark values (log-likelihood at the nominal parameters).
REFERENCE = {
    "Boehm_JProteomeRes2014": -138.22199693517703,
    "Fujita_SciSignal2010": 53.08377736998929,
    "Zheng_PNAS2012": 278.33353271001477,
}


def yaml_of(name):
    return DATA / name / f"{name}.yaml"


@pytest.fixture(scope="module")
def boehm():
    return petab.load(yaml_of("Boehm_JProteomeRes2014"))


# ------------------------------------------------------------------ a closed-form problem

SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">
  <model id="decay">
    <listOfCompartments>
      <compartment id="cell" spatialDimensions="3" size="2" constant="true"/>
    </listOfCompartments>
    <listOfSpecies>
      <species id="A" compartment="cell" initialConcentration="0" hasOnlySubstanceUnits="false"
               boundaryCondition="false" constant="false"/>
      <species id="B" compartment="cell" initialConcentration="0" hasOnlySubstanceUnits="false"
               boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters>
      <parameter id="k1" value="1" constant="true"/>
      <parameter id="k2" value="1" constant="true"/>
      <parameter id="kin" value="1" constant="true"/>
      <parameter id="A0" value="1" constant="true"/>
      <parameter id="u" value="0" constant="true"/>
    </listOfParameters>
    <listOfInitialAssignments>
      <initialAssignment symbol="A">
        <math xmlns="http://www.w3.org/1998/Math/MathML"><ci> A0 </ci></math>
      </initialAssignment>
    </listOfInitialAssignments>
    <listOfReactions>
      <reaction id="in" reversible="false" fast="false">
        <listOfProducts><speciesReference species="A" stoichiometry="1" constant="true"/>
        </listOfProducts>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci> cell </ci><ci> kin </ci><ci> u </ci></apply></math></kineticLaw>
      </reaction>
      <reaction id="conv" reversible="false" fast="false">
        <listOfReactants><speciesReference species="A" stoichiometry="1" constant="true"/>
        </listOfReactants>
        <listOfProducts><speciesReference species="B" stoichiometry="1" constant="true"/>
        </listOfProducts>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci> cell </ci><ci> k1 </ci><ci> A </ci></apply></math></kineticLaw>
      </reaction>
      <reaction id="deg" reversible="false" fast="false">
        <listOfReactants><speciesReference species="B" stoichiometry="1" constant="true"/>
        </listOfReactants>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci> cell </ci><ci> k2 </ci><ci> B </ci></apply></math></kineticLaw>
      </reaction>
    </listOfReactions>
  </model>
</sbml>
"""

# k1 log10, k2 log, kin lin, A0 log10; sdA and scaleB estimated, scaleA and sdB fixed;
# offset a parameter-table-only id used in a formula.
PARAMETERS = [
    ("k1", "log10", 0.7, 1),
    ("k2", "log", 0.2, 1),
    ("kin", "lin", 1.3, 1),
    ("A0", "log10", 4.0, 1),
    ("sdA", "log10", 0.3, 1),
    ("scaleB", "log10", 2.5, 1),
    ("offset", "lin", 0.1, 1),
    ("scaleA", "lin", 1.5, 0),
    ("sdB", "lin", 0.2, 0),
]
OBSERVABLES = [
    ("obsA", "scaleA * A", "noiseParameter1_obsA", "lin", "normal"),
    ("obsB", "observableParameter1_obsB * B + offset", "noiseParameter1_obsB", "log", "normal"),
    ("obsC", "A + B", "0.05", "log10", "laplace"),
]
TIMES = [0.0, 0.5, 1.0, 2.0, 4.0]


def closed_form(t, k1, k2, a0, b0):
    """A' = -k1 A, B' = k1 A - k2 B (concentrations; the compartment size cancels)."""
    a = a0 * np.exp(-k1 * t)
    b = b0 * np.exp(-k2 * t) + k1 * a0 * (np.exp(-k1 * t) - np.exp(-k2 * t)) / (k2 - k1)
    return a, b


def write_problem(folder: Path) -> Path:
    """A PEtab problem: experiment 1 pre-equilibrated (u = 1, then u = 0), experiment 2
    from A(0) = A0 and a condition-table B(0) = 0.5; numeric and parametric observable and
    noise overrides; lin/log/log10 observables, normal and Laplace noise."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.xml").write_text(SBML)
    pd.DataFrame(
        {
            "conditionId": ["pre", "c1", "c2"],
            "u": [1.0, 0.0, 0.0],
            "B": [np.nan, np.nan, 0.5],
        }
    ).to_csv(folder / "conditions.tsv", sep="\t", index=False)
    pd.DataFrame(
        [
            {
                "observableId": o,
                "observableFormula": f,
                "noiseFormula": n,
                "observableTransformation": tr,
                "noiseDistribution": d,
            }
            for o, f, n, tr, d in OBSERVABLES
        ]
    ).to_csv(folder / "observables.tsv", sep="\t", index=False)
    pd.DataFrame(
        [
            {
                "parameterId": p,
                "parameterScale": s,
                "lowerBound": 1e-3,
                "upperBound": 1e3,
                "nominalValue": v,
                "estimate": e,
            }
            for p, s, v, e in PARAMETERS
        ]
    ).to_csv(folder / "parameters.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    rows = []
    for pre, sim in (("pre", "c1"), ("", "c2")):
        for t in TIMES:
            for obs in ("obsA", "obsB", "obsC"):
                op = {"obsA": "", "obsB": "scaleB" if sim == "c1" else "2.0", "obsC": ""}[obs]
                nz = {"obsA": "0.1" if sim == "c1" else "sdA", "obsB": "sdB", "obsC": ""}[obs]
                rows.append(
                    {
                        "observableId": obs,
                        "preequilibrationConditionId": pre,
                        "simulationConditionId": sim,
                        "measurement": float(rng.uniform(0.5, 3.0)),
                        "time": t,
                        "observableParameters": op,
                        "noiseParameters": nz,
                    }
                )
    pd.DataFrame(rows).to_csv(folder / "measurements.tsv", sep="\t", index=False)
    (folder / "problem.yaml").write_text(
        "format_version: 1\n"
        "parameter_file: parameters.tsv\n"
        "problems:\n"
        "- condition_files: [conditions.tsv]\n"
        "  measurement_files: [measurements.tsv]\n"
        "  observable_files: [observables.tsv]\n"
        "  sbml_files: [model.xml]\n"
    )
    return folder / "problem.yaml"


def expected_llh(folder: Path) -> float:
    """petab.calculate_llh on the closed-form solution at the nominal parameters."""
    par = {p: v for p, _, v, _ in PARAMETERS}
    k1, k2, kin = par["k1"], par["k2"], par["kin"]
    states = {
        ("pre", "c1"): (kin / k1, kin / k2),  # the steady state with u = 1
        ("", "c2"): (par["A0"], 0.5),
    }
    m = libpetab.get_measurement_df(str(folder / "measurements.tsv"))
    sim = m.copy()
    values = []
    for r in m.itertuples(index=False):
        r = r._asdict()
        pre = r["preequilibrationConditionId"]
        pre = pre if isinstance(pre, str) else ""
        a, b = closed_form(r["time"], k1, k2, *states[(pre, r["simulationConditionId"])])
        obs = r["observableId"]
        if obs == "obsA":
            values.append(par["scaleA"] * a)
        elif obs == "obsB":
            scale = par["scaleB"] if r["simulationConditionId"] == "c1" else 2.0
            values.append(scale * b + par["offset"])
        else:
            values.append(a + b)
    sim = sim.rename(columns={"measurement": "simulation"})
    sim["simulation"] = values
    return libpetab.calculate_llh(
        m,
        sim,
        libpetab.get_observable_df(str(folder / "observables.tsv")),
        libpetab.get_parameter_df(str(folder / "parameters.tsv")),
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    path = write_problem(folder)
    # Non-stiff: an explicit solver keeps the compilations short.
    return petab.load(path, solver=dfx.Tsit5()), folder


def test_closed_form_problem_matches_petab_calculate_llh(small):
    problem, folder = small
    assert problem.parameter_ids == ("k1", "k2", "kin", "A0", "sdA", "scaleB", "offset")
    assert problem.nominal == pytest.approx({p: v for p, _, v, e in PARAMETERS if e}, rel=0, abs=0)
    assert problem.experiments == (("pre", "c1"), ("", "c2"))
    np.testing.assert_allclose(problem.x_nominal[0], np.log10(0.7))
    np.testing.assert_allclose(problem.x_nominal[1], np.log(0.2))
    llh = problem.log_likelihood(problem.nominal)
    assert isinstance(llh, float)
    assert llh == pytest.approx(expected_llh(folder), abs=1e-6)
    # Another point: the dict is on the linear scale.
    other = dict(problem.nominal, k1=0.5)
    assert problem.log_likelihood(other) != pytest.approx(llh, abs=1e-3)


def gradient_fd(problem, x, h=1e-5):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (problem.objective(x + e) - problem.objective(x - e)) / (2 * h)
    return g


def test_sensitivity_methods_agree_with_each_other_and_finite_differences(small):
    problem, _ = small
    x = problem.x_nominal + 0.05
    grads = {}
    for method in (petab.Forward(), petab.Adjoint(), petab.Checkpointed()):
        value, grads[type(method).__name__] = problem.value_and_gradient(x, sensitivities=method)
        assert value == pytest.approx(problem.objective(x), rel=1e-12)
    fd = gradient_fd(problem, x)
    ref = grads["Forward"]
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max(), err_msg=name)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.abs(ref).max(), err_msg=name)


def test_adjoint_state_is_held_outside_the_forward_solve():
    """Issue 18: Kvaerno5 evaluates a stage at 1.23 steps, so the adjoint's last segment
    (onto a measurement at t = 0) asked the forward solution for the state before t = 0,
    where diffrax's dense output is NaN; every step onto t = 0 was rejected and the backward
    solve crept towards 0 until max_steps (NaN gradient on Boehm_JProteomeRes2014)."""
    from invcal.ode.petab.solve import _state_at

    with jax.enable_x64(True):
        term = dfx.ODETerm(lambda t, y, args: -y)
        sol = dfx.diffeqsolve(
            term, dfx.Tsit5(), 0.0, 1.0, 0.1, jnp.ones(2), saveat=dfx.SaveAt(dense=True)
        )
        state = _state_at(sol)
        assert np.all(np.isnan(np.asarray(sol.evaluate(-1e-3))))  # diffrax's own behaviour
        np.testing.assert_array_equal(state(-1e-3), state(0.0))
        np.testing.assert_array_equal(state(1.2), sol.evaluate(1.0))
        np.testing.assert_allclose(state(0.5), np.exp(-0.5), rtol=1e-5)


def test_adjoint_stages_of_a_stiff_linear_ode_are_solved_exactly():
    """Issue 18: an adjoint ODE λ' = -M(t)ᵀλ with a fast mode (5e4) whose vector field is a
    difference of large terms: diffrax's VeryChord stops its stage iterations on rounding
    noise ("diverged"), so Kvaerno5 rejected every step longer than ~1e-6 and the backward
    solve crept on until max_steps (NaN gradient at Boehm's nominal ±0.3). Measured: VeryChord
    8268 accepted and 11732 rejected steps, not finished; _LinearStages 91 steps."""
    from invcal.ode.petab.solve import _adjoint_solver

    def vf(t, z, args):
        lam, mu = z
        m = jnp.array(
            [
                [-5e4 - 0.3, 5e4 * (1 + 1e-7), 0.0],
                [5e4, -5e4 - 0.3 * (1 + 0.5 * jnp.sin(t)), 0.3],
                [0.1, 0.2, -0.3],
            ]
        )
        return -(m.T @ lam), jnp.array([1.3e3, -2.1e3]) * lam[0] * jnp.exp(-t)

    solver = _adjoint_solver(dfx.Kvaerno5())

    def solve(rtol, atol):
        return dfx.diffeqsolve(
            dfx.ODETerm(vf),
            solver,
            2.5,
            0.0,
            None,
            (jnp.array([10.0, 10.001, 5.0]), jnp.zeros(2)),
            # tolerances as arrays: one compilation for both solves
            stepsize_controller=dfx.PIDController(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol)),
            max_steps=20_000,
            throw=False,
        )

    with jax.enable_x64(True):
        sol = solve(1e-10, 1e-12)
        assert sol.result == dfx.RESULTS.successful and int(sol.stats["num_steps"]) < 300
        tight = solve(1e-13, 1e-15)
        for a, b in zip(sol.ys, tight.ys, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8)


@pytest.mark.slow  # the sensitivity-agreement test differentiates the same function
def test_pure_function_jits_and_differentiates(small):
    problem, _ = small
    x = problem.x_nominal + 0.05
    method = petab.Checkpointed()
    fn = jax.jit(
        jax.value_and_grad(lambda y: petab.neg_log_likelihood(problem, y, sensitivities=method))
    )
    value, grad = fn(jax.numpy.asarray(x))
    expected_value, expected_grad = problem.value_and_gradient(x, sensitivities=method)
    assert float(value) == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10)


def test_repeated_calls_compile_nothing(small):
    problem, _ = small
    x = problem.x_nominal
    problem.objective(x)
    problem.value_and_gradient(x, sensitivities=petab.Checkpointed())
    with count_compilations() as c:
        problem.objective(x + 0.01)
        problem.log_likelihood()
        problem.value_and_gradient(x + 0.01, sensitivities=petab.Checkpointed())
    assert c.total == 0, c.names


def test_bad_parameters_are_refused(small):
    problem, _ = small
    with pytest.raises(ValueError, match="missing \\['k1'\\]"):
        problem.log_likelihood({k: v for k, v in problem.nominal.items() if k != "k1"})
    with pytest.raises(ValueError, match="shape \\(7,\\)"):
        problem.objective(np.zeros(3))
    with pytest.raises(TypeError, match="Forward\\(\\), Adjoint\\(\\) or Checkpointed"):
        problem.gradient(problem.x_nominal, sensitivities="adjoint")


# ------------------------------------------------------------------ benchmark problems


def test_boehm_log_likelihood_matches_amici(boehm):
    assert boehm.log_likelihood() == pytest.approx(REFERENCE["Boehm_JProteomeRes2014"], abs=1e-3)
    assert len(boehm.parameter_ids) == 9


def test_default_configuration_gives_the_same_value(boehm):
    value = boehm.log_likelihood()
    with jax.enable_x64(False):
        assert boehm.log_likelihood() == value


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Fujita_SciSignal2010", "Zheng_PNAS2012"])
def test_benchmark_log_likelihood_matches_amici(name):
    assert petab.load(yaml_of(name)).log_likelihood() == pytest.approx(REFERENCE[name], abs=1e-3)


def gradient_fd4(problem, x, h=1e-3):
    """Fourth-order central differences (truncation O(h⁴)): Boehm's objective is strongly
    curved at its nominal point, where second-order differences need h so small that the
    solver's tolerance dominates them."""
    return central_difference4(problem.objective, x, h)


@pytest.mark.slow
def test_boehm_gradients_agree(boehm):
    x = boehm.x_nominal
    fwd = boehm.gradient(x, sensitivities=petab.Forward())
    chk = boehm.gradient(x, sensitivities=petab.Checkpointed())
    np.testing.assert_allclose(chk, fwd, rtol=1e-6, atol=1e-9 * np.abs(fwd).max())
    # The continuous adjoint was NaN here (its last segment stalled before t = 0);
    # measured now: 3.3e-7 entrywise from the forward gradient.
    adj = boehm.gradient(x, sensitivities=petab.Adjoint())
    np.testing.assert_allclose(adj, fwd, rtol=1e-6, atol=1e-9 * np.abs(fwd).max())
    # At this point the adjoint's implicit stages "diverged" on rounding noise (diffrax's
    # VeryChord on a linear stage equation) and its backward solve crept on at steps of
    # 1e-6 near t = 1.9 until max_steps: NaN. Measured now: 7e-9.
    signs = np.random.default_rng(2).choice([-1.0, 1.0], size=x.size)
    x2 = np.clip(x + 0.3 * signs, boehm.lower, boehm.upper)
    fwd2 = boehm.gradient(x2, sensitivities=petab.Forward())
    adj2 = boehm.gradient(x2, sensitivities=petab.Adjoint())
    np.testing.assert_allclose(adj2, fwd2, rtol=1e-6, atol=1e-9 * np.abs(fwd2).max())
    # Measured: max |fd - fwd| / max |fwd| = 2.8e-6 (the flattest direction, k_imp_homo,
    # whose derivative is 1000 times smaller than the largest, is at the solver's noise).
    fd = gradient_fd4(boehm, x)
    assert np.max(np.abs(fd - fwd)) <= 1e-5 * np.max(np.abs(fwd))


# ------------------------------------------------------------------ malformed problems


def copy_small(tmp_path):
    return write_problem(tmp_path / "p")


def test_missing_table_names_the_file(tmp_path):
    path = copy_small(tmp_path)
    (path.parent / "observables.tsv").unlink()
    with pytest.raises(petab.PEtabError, match="observables.tsv"):
        petab.load(path)


def test_unknown_observable_names_file_and_row(tmp_path):
    path = copy_small(tmp_path)
    m = pd.read_csv(path.parent / "measurements.tsv", sep="\t")
    m.loc[3, "observableId"] = "nope"
    m.to_csv(path.parent / "measurements.tsv", sep="\t", index=False)
    with pytest.raises(petab.PEtabError, match=r"measurements.tsv line 5: observableId 'nope'"):
        petab.load(path)


def test_unparsable_formula_names_file_and_row(tmp_path):
    path = copy_small(tmp_path)
    o = pd.read_csv(path.parent / "observables.tsv", sep="\t")
    o.loc[1, "observableFormula"] = "B * + )"
    o.to_csv(path.parent / "observables.tsv", sep="\t", index=False)
    with pytest.raises(petab.PEtabError, match=r"observables.tsv line 3 .*does not parse"):
        petab.load(path)


def test_wrong_number_of_overrides_names_the_row(tmp_path):
    path = copy_small(tmp_path)
    m = pd.read_csv(path.parent / "measurements.tsv", sep="\t", keep_default_na=False)
    m.loc[1, "observableParameters"] = "1.0;2.0"
    m.to_csv(path.parent / "measurements.tsv", sep="\t", index=False)
    with pytest.raises(petab.PEtabError, match=r"measurements.tsv line 3: observableParameters"):
        petab.load(path)


def test_event_is_refused_in_one_line(tmp_path):
    path = copy_small(tmp_path)
    sbml = (path.parent / "model.xml").read_text()
    event = """<listOfEvents><event id="pulse" useValuesFromTriggerTime="true">
      <trigger initialValue="false" persistent="true"><math xmlns="http://www.w3.org/1998/Math/MathML">
        <apply><geq/><csymbol encoding="text"
          definitionURL="http://www.sbml.org/sbml/symbols/time"> t </csymbol><cn> 1 </cn></apply>
      </math></trigger>
      <listOfEventAssignments><eventAssignment variable="A"><math
        xmlns="http://www.w3.org/1998/Math/MathML"><cn> 1 </cn></math></eventAssignment>
      </listOfEventAssignments></event></listOfEvents>
    </model>"""
    (path.parent / "model.xml").write_text(sbml.replace("</model>", event))
    with pytest.raises(petab.UnsupportedModelError) as info:
        petab.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "model.xml" in message and "event" in message


def test_algebraic_rule_is_refused(tmp_path):
    src = DATA / "Boehm_JProteomeRes2014"
    dst = tmp_path / "boehm"
    shutil.copytree(src, dst)
    model = dst / "model_Boehm_JProteomeRes2014.xml"
    text = model.read_text()
    rule = (
        '<algebraicRule><math xmlns="http://www.w3.org/1998/Math/MathML">'
        "<apply><minus/><ci> ratio </ci><cn> 1 </cn></apply></math></algebraicRule>"
    )
    model.write_text(text.replace("<listOfRules>", "<listOfRules>" + rule, 1))
    with pytest.raises(petab.UnsupportedModelError, match="algebraic rule"):
        petab.load(dst / "Boehm_JProteomeRes2014.yaml")


# ------------------------------------------------------------------ failed solves


def write_blow_up(folder: Path) -> Path:
    """The closed-form problem with A' = kin·A² − k1·A: at the nominal parameters
    (A(0) = 4, kin = 1.3, k1 = 0.7) A blows up at t ≈ 0.2, before the measurements end."""
    path = write_problem(folder)
    sbml = (folder / "model.xml").read_text()
    inflow = "<apply><times/><ci> cell </ci><ci> kin </ci><ci> u </ci></apply>"
    assert inflow in sbml
    squared = "<apply><times/><ci> cell </ci><ci> kin </ci><ci> A </ci><ci> A </ci></apply>"
    (folder / "model.xml").write_text(sbml.replace(inflow, squared))
    return path


@pytest.mark.slow  # ~30 s: compiles the adjoint gradient with Kvaerno5
def test_a_failed_solve_is_inf_and_a_nan_gradient_never_an_exception(tmp_path):
    """Issue 18: a check raised inside the solve (lineax refusing a non-finite system in a
    differentiated Newton step, an equinox.EquinoxRuntimeError; seen on Fujita_SciSignal2010)
    came out of value_and_gradient; it is now a failed solve like max_steps.

    The adjoint's raise came from diffrax's VeryChord in its backward stages; those are now
    solved by one linear solve that reports instead of raising (solve._LinearStages), so the
    compiled adjoint gradient returns the failure itself. The guard that absorbs a raise
    is tested directly."""
    import equinox as eqx

    from invcal.ode.petab.problem import _guarded, _value_and_grad_jit

    problem = petab.load(write_blow_up(tmp_path / "blow"), max_steps=500)
    x = jax.numpy.asarray(problem.x_nominal)
    with jax.enable_x64(True):
        (value, ok), _ = _value_and_grad_jit(problem, x, petab.Adjoint())
    assert not np.any(ok)

    @eqx.filter_jit
    def raising(problem, x, sensitivities):
        return eqx.error_if(x, x[0] == x[0], "a check inside the solve"), None

    (value, ok), grad = _guarded(raising, problem, x, petab.Adjoint())
    assert value == np.inf and not np.any(ok) and np.all(np.isnan(grad))
    value, grad = problem.value_and_gradient(x, sensitivities=petab.Adjoint())
    assert value == np.inf and grad.shape == x.shape and np.all(np.isnan(grad))
    value, grad = problem.value_and_gradient(x, sensitivities=petab.Forward())
    assert value == np.inf and np.all(np.isnan(grad))
    assert problem.objective(x) == np.inf
    assert problem.failed_experiments(x) == [("pre", "c1"), ("", "c2")]
    with pytest.raises(RuntimeError, match=r"'c2' at these parameters"):
        problem.log_likelihood()
