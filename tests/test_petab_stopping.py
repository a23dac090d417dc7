"""When a PEtab multistart's local optimization may stop (invcal.ode.petab.stopping).

Oracles: the relative offset criterion's defining properties (zero at a least-squares
stationary point, unchanged when the Jacobian is scaled); a one-parameter PEtab problem,
x' = a²/(1 + a²) − x, x(0) = 0, observed at t = 1..10, whose objective is flat where a is
large or small (the production saturates: its sensitivity to log10 a is 2 ln10/a² or
2 ln10 a², tiny but computed accurately, the ODE being linear in it), and whose optimum
(a² = 1/2) is found by a bounded scalar minimization (scipy); plain L-BFGS-B (scipy's
tests) stops at the plateau's start point, which is what the relative offset test exists to catch.
"""

import sys
from pathlib import Path

import diffrax as dfx
import numpy as np
import pandas as pd
import pytest

from invcal.ode import petab
from invcal.ode.petab import stopping
from invcal.ode.petab.multistart import _Objective, _optimize
from invcal.ode.petab.stopping import relative_offset

sys.path.insert(0, str(Path(__file__).parent))
from test_petab import write_problem  # noqa: E402

SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">
  <model id="saturation">
    <listOfCompartments>
      <compartment id="cell" spatialDimensions="3" size="1" constant="true"/>
    </listOfCompartments>
    <listOfSpecies>
      <species id="X" compartment="cell" initialConcentration="0" hasOnlySubstanceUnits="false"
               boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters>
      <parameter id="a" value="0.7" constant="true"/>
    </listOfParameters>
    <listOfReactions>
      <reaction id="production" reversible="false" fast="false">
        <listOfProducts><speciesReference species="X" stoichiometry="1" constant="true"/>
        </listOfProducts>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci> cell </ci>
            <apply><divide/><apply><power/><ci> a </ci><cn> 2 </cn></apply>
              <apply><plus/><cn> 1 </cn><apply><power/><ci> a </ci><cn> 2 </cn></apply></apply>
            </apply></apply></math></kineticLaw>
      </reaction>
      <reaction id="degradation" reversible="false" fast="false">
        <listOfReactants><speciesReference species="X" stoichiometry="1" constant="true"/>
        </listOfReactants>
        <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML">
          <apply><times/><ci> cell </ci><ci> X </ci></apply></math></kineticLaw>
      </reaction>
    </listOfReactions>
  </model>
</sbml>
"""
TIMES = np.arange(1.0, 11.0)
MEASUREMENTS = (1.0 - np.exp(-TIMES)) / 3.0 + np.random.default_rng(0).normal(0.0, 0.05, 10)


def write_saturation(folder: Path) -> Path:
    """The problem: a on the log10 scale in [1e-5, 1e5] (as Boehm's), noise σ = 1, data
    (1 − e^(−t))/3 plus seeded noise of 0.05."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.xml").write_text(SBML)
    pd.DataFrame({"conditionId": ["c"], "conditionName": ["c"]}).to_csv(
        folder / "conditions.tsv", sep="\t", index=False
    )
    pd.DataFrame(
        [
            {
                "observableId": "obsX",
                "observableFormula": "X",
                "noiseFormula": "1",
                "observableTransformation": "lin",
                "noiseDistribution": "normal",
            }
        ]
    ).to_csv(folder / "observables.tsv", sep="\t", index=False)
    pd.DataFrame(
        [
            {
                "parameterId": "a",
                "parameterScale": "log10",
                "lowerBound": 1e-5,
                "upperBound": 1e5,
                "nominalValue": 0.7,
                "estimate": 1,
            }
        ]
    ).to_csv(folder / "parameters.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "observableId": "obsX",
            "simulationConditionId": "c",
            "measurement": MEASUREMENTS,
            "time": TIMES,
        }
    ).to_csv(folder / "measurements.tsv", sep="\t", index=False)
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


@pytest.fixture(scope="module")
def saturation(tmp_path_factory):
    return petab.load(write_saturation(tmp_path_factory.mktemp("saturation")), solver=dfx.Tsit5())


def test_relative_offset_is_zero_at_a_stationary_point_and_free_of_scale():
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(12, 3))
    r = rng.normal(size=12)
    c, step, predicted = relative_offset(r, jac)
    assert c > 0.1 and predicted > 0.0
    # the residual of the Gauss-Newton step is orthogonal to range(J): c = 0 there
    stationary = r + jac @ step
    assert np.max(np.abs(jac.T @ stationary)) < 1e-12
    assert relative_offset(stationary, jac)[0] < 1e-12
    # a plateau: the same geometry with sensitivities 1e-12 as large (gradient 1e-12 x)
    assert relative_offset(r, 1e-12 * jac)[0] == pytest.approx(c, rel=1e-9)
    np.testing.assert_allclose(relative_offset(r, 1e-12 * jac)[1], 1e12 * step, rtol=1e-9)


class ClosedForm:
    """The same problem in closed form, x(t) = u(a)(1 − e^(−t)) with u = a²/(1 + a²) (the
    solution of x' = u − x, x(0) = 0), behind the interface that ``_optimize`` and the
    relative offset step use (``stopping._jacobian`` is replaced by :meth:`jacobian`):
    the default leg's check of the stopping logic without compiling an ODE solve."""

    distributions = ("normal",)

    def __init__(self, measurements):
        self.m = np.asarray(measurements, np.float64)
        self.problem, self.hierarchy, self.inner = self, None, None
        self.best, self.failures, self.evaluations = (np.inf, None), 0, 0

    def jacobian(self, z):
        a2 = 10.0 ** (2.0 * float(np.asarray(z)[0]))
        shape = 1.0 - np.exp(-TIMES)
        r = self.m - a2 / (1.0 + a2) * shape
        jac = -(2.0 * np.log(10.0) * a2 / (1.0 + a2) ** 2 * shape)[:, None]
        return r, jac, True

    def __call__(self, z):
        self.evaluations += 1
        r, jac, _ = self.jacobian(z)
        f = 0.5 * float(r @ r)
        if f < self.best[0]:
            self.best = (f, np.array(z, np.float64))
        return f, jac.T @ r


def _optimum(fun):
    """(x, f) of a bounded scalar minimization of ``fun`` (z -> (f, g))."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda z: fun(np.array([z]))[0],
        bounds=(-3.0, 1.0),
        method="bounded",
        options={"xatol": 1e-9},
    )
    return np.array([res.x]), res.fun


def _plateau_then_optimum(make):
    """The checks on a fresh objective from ``make()``: plain L-BFGS-B stops at the plateau's
    start point; ``_optimize`` reaches the optimum from there; and stops at once at it."""
    from scipy.optimize import minimize

    x_opt, f_opt = _optimum(make())
    assert abs(x_opt[0] - np.log10(np.sqrt(0.5))) < 0.1  # the oracle: near the truth
    z0 = np.array([3.5])  # x ≈ 1 − e^(−t) at every a this large: gradient ~2e-6
    bounds = [(-5.0, 5.0)]
    res = minimize(make(), z0, jac=True, method="L-BFGS-B", bounds=bounds)
    # scipy's tests stop within one iteration, next to the start, far above the optimum
    assert res.nit <= 1 and abs(res.x[0] - z0[0]) < 1e-3 and res.fun > f_opt + 0.5
    z, f, status, message, iterations = _optimize(make(), z0, bounds, 1000)
    assert status == "converged", message
    assert f == pytest.approx(f_opt, abs=1e-7) and z[0] == pytest.approx(x_opt[0], abs=1e-4)
    # a start at the optimum stops there, without a Gauss-Newton step
    z, f, status, message, iterations = _optimize(make(), x_opt, bounds, 1000)
    assert status == "converged", message
    assert iterations <= 3 and "Gauss-Newton" not in message
    assert f == pytest.approx(f_opt, abs=1e-9) and z[0] == pytest.approx(x_opt[0], abs=1e-5)


def test_plateau_start_moves_and_optimum_start_stops_closed_form(monkeypatch):
    monkeypatch.setattr(stopping, "_jacobian", lambda problem, x: problem.jacobian(x))
    _plateau_then_optimum(lambda: ClosedForm(MEASUREMENTS))


@pytest.mark.slow
def test_plateau_start_moves_and_optimum_start_stops_petab(saturation):
    """The same through the PEtab problem's compiled objective and Jacobian."""
    _plateau_then_optimum(lambda: _Objective(saturation, petab.Forward(), None))


@pytest.mark.slow
def test_jacobian_matches_central_differences(tmp_path):
    """The weighted residuals' Jacobian (forward mode through the solves) against central
    differences of the residuals with σ held, on test_petab's problem (pre-equilibration,
    lin/log/log10 observables, a noise parameter, numeric and parametric overrides) with
    normal noise everywhere; a noise parameter has a zero column."""
    import jax
    import jax.numpy as jnp
    import petab.v1.C as C

    from invcal.ode.petab.solve import observe, simulate

    path = write_problem(tmp_path / "p")
    o = pd.read_csv(path.parent / "observables.tsv", sep="\t")
    o["noiseDistribution"] = "normal"
    o.to_csv(path.parent / "observables.tsv", sep="\t", index=False)
    problem = petab.load(path)
    assert stopping.applies(problem)
    transform = {C.LOG: jnp.log, C.LOG10: jnp.log10, C.LIN: lambda v: v}

    def unweighted(x):  # (h(m) − h(y), σ) by the solve alone
        sim = simulate(problem, jnp.asarray(x), petab.Forward())
        rs, ss = [], []
        for k, trafo in enumerate(problem.transformations):
            m, y, s = observe(problem, sim, k)
            rs.append(transform[trafo](m) - transform[trafo](y))
            ss.append(s)
        return np.asarray(jnp.concatenate(rs)), np.asarray(jnp.concatenate(ss))

    x0, h = np.asarray(problem.x_nominal), 1e-5
    with jax.enable_x64(True):
        r, jac, ok = stopping._jacobian(problem, jnp.asarray(x0))
        r0, sigma = unweighted(x0)
        columns = []
        for i in range(x0.size):
            e = np.zeros(x0.size)
            e[i] = h
            columns.append((unweighted(x0 + e)[0] - unweighted(x0 - e)[0]) / (2 * h) / sigma)
    jac, differences = np.asarray(jac), np.array(columns).T
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(r), r0 / sigma, rtol=1e-12)
    assert np.max(np.abs(jac - differences)) <= 1e-6 * np.max(np.abs(jac))
    noise = list(problem.parameter_ids).index("sdA")
    assert np.all(jac[:, noise] == 0.0)  # σ is held: no column
