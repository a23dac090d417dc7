"""Multistart calibration of PEtab problems, hierarchical observation parameters, and the
``invcal calibrate PROBLEM.yaml`` command.

Oracles: a small PEtab problem (tests/test_petab.py's closed-form model) whose observable B
is relative (scaling and offset) and whose A noise is estimated; the hierarchical inner
optimum against a numerical minimization of the flat objective over the inner parameters
(scipy); the envelope-theorem gradient against the flat gradient and finite differences;
AMICI's nominal objective on Boehm_JProteomeRes2014 for the multistart (slow leg).
"""

import json
import sys
from pathlib import Path

import diffrax as dfx
import numpy as np
import pandas as pd
import pytest

from invcal.cli import main
from invcal.ode import petab

sys.path.insert(0, str(Path(__file__).parent))
from test_petab import write_blow_up, write_problem, yaml_of  # noqa: E402


def write_relative(folder: Path) -> Path:
    """The closed-form problem without its pre-equilibration, obsB = s·B + b (scaling
    scaleB, offset offB) on the lin scale, sdA the noise of obsA in condition c2, bounds a
    decade around the nominal values (lin: 0.05 to 3; offB from -3)."""
    path = write_problem(folder)
    o = pd.read_csv(folder / "observables.tsv", sep="\t")
    o.loc[o.observableId == "obsB", "observableFormula"] = (
        "observableParameter1_obsB * B + observableParameter2_obsB"
    )
    o.loc[o.observableId == "obsB", "observableTransformation"] = "lin"
    o.loc[o.observableId == "obsC", "observableFormula"] = "A + B + offset"
    o.to_csv(folder / "observables.tsv", sep="\t", index=False)
    m = pd.read_csv(folder / "measurements.tsv", sep="\t", keep_default_na=False)
    m["preequilibrationConditionId"] = ""  # no steady state: a shorter compilation
    b = m.observableId == "obsB"
    m.loc[b, "observableParameters"] = np.where(
        m.loc[b, "simulationConditionId"] == "c1", "scaleB;offB", "2.0;offB"
    )
    m.to_csv(folder / "measurements.tsv", sep="\t", index=False)
    p = pd.read_csv(folder / "parameters.tsv", sep="\t")
    p = pd.concat(
        [
            p,
            pd.DataFrame(
                [
                    {
                        "parameterId": "offB",
                        "parameterScale": "lin",
                        "nominalValue": 0.3,
                        "estimate": 1,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    p["lowerBound"] = np.where(p.parameterScale == "lin", 0.05, p.nominalValue / 10)
    p["upperBound"] = np.where(p.parameterScale == "lin", 3.0, p.nominalValue * 10)
    p.loc[p.parameterId == "offB", "lowerBound"] = -3.0  # holds the unbounded inner optimum
    p.to_csv(folder / "parameters.tsv", sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def relative(tmp_path_factory):
    path = write_relative(tmp_path_factory.mktemp("relative"))
    return petab.load(path, solver=dfx.Tsit5()), path


# ------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--starts", "0"], "--starts must be a positive integer"),
        (["--sensitivities", "backsolve"], "--sensitivities: unknown method 'backsolve'"),
        (["--model", "1cmt-iv"], "--model does not apply to a PEtab problem"),
        (["--redraws", "-1"], "--redraws must be a non-negative integer"),
        (["--redraws", "two"], "--redraws: invalid int value: 'two'"),
    ],
)
def test_bad_input_one_line_before_compiling(extra, match, relative, tmp_path, capsys):
    _, path = relative
    assert main(["calibrate", str(path), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err
    assert not (tmp_path / "o").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "extra, expected", [([], 20), (["--redraws", "0"], 0), (["--redraws", "7"], 7)]
)
def test_redraws_flag_reaches_calibrate(extra, expected, relative, tmp_path, monkeypatch):
    """--redraws N is calibrate(redraws=N) (default 20); checked without optimizing."""
    _, path = relative
    seen = {}

    def fake(problem, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(petab, "calibrate", fake)
    with pytest.raises(_Stop):
        main(["calibrate", str(path), "--no-progress", "--out", str(tmp_path / "o"), *extra])
    assert seen["redraws"] == expected


def test_missing_yaml_one_line(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.yaml" in err


def test_command_writes_results_report_and_plots(relative, tmp_path, capsys):
    _, path = relative
    out = tmp_path / "run"
    assert main(["calibrate", str(path), "--starts", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "calibrate start 1/2" in err and "calibrate start 2/2" in err
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "finished" and len(record["starts"]) == 2
    assert record["settings"]["sensitivities"] == "Forward"
    finals = [s["objective"] for s in record["starts"] if s["status"] != "failed"]
    assert finals and record["objective"] == pytest.approx(min(finals))
    # the optimum is no worse than the parameter table's nominal values
    assert record["objective"] <= record["nominal_objective"] + 1e-6
    report = (out / "report.md").read_text()
    for name in ("waterfall.png", "parameters.png", "fit_obsA.png", "fit_obsB.png"):
        assert (out / name).stat().st_size > 1000 and f"({name})" in report
    # a finished run is refused unless resumed or overwritten (before any compilation)
    assert main(["calibrate", str(path), "--starts", "2", "--out", str(out)]) == 2
    assert "--resume continues it" in capsys.readouterr().err


# ------------------------------------------------------------------ hierarchical


@pytest.mark.slow
def test_hierarchical_inner_optimum_and_gradient(relative):
    from scipy.optimize import minimize

    problem, _ = relative
    h = petab.hierarchical_problem(problem)
    assert h.inner_ids == ("sdA", "scaleB", "offB")
    assert h.types == ("sigma", "scaling", "offset")
    assert h.parameter_ids == ("k1", "k2", "kin", "A0", "offset")
    z = problem.x_nominal[list(h.outer)] + 0.03
    value, grad, ok, inner = h.evaluate(z, petab.Forward())
    assert ok
    x = h.full_x(z, inner)
    # oracle: the flat objective minimized numerically over the inner parameters
    inner_idx = list(h.inner)

    def flat(w):
        xx = x.copy()
        xx[inner_idx] = w
        value, grad = problem.value_and_gradient(xx)
        return value, grad[inner_idx]

    best = minimize(flat, x[inner_idx] + 0.2, jac=True, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(x[inner_idx], best.x, rtol=1e-6, atol=1e-8)
    assert value == pytest.approx(best.fun, rel=1e-10)
    # envelope theorem: the outer gradient is the flat one at the inner optimum
    flat_grad = problem.gradient(x)
    np.testing.assert_allclose(grad, flat_grad[list(h.outer)], rtol=1e-8, atol=1e-10)
    assert np.max(np.abs(flat_grad[inner_idx])) < 1e-6 * np.max(np.abs(grad))
    for method in (petab.Checkpointed(), petab.Adjoint()):
        _, g, _, _ = h.evaluate(z, method)
        np.testing.assert_allclose(g, grad, rtol=1e-6, atol=1e-9 * np.abs(grad).max())
    e = np.zeros_like(z)
    e[0] = 1e-5
    fd = (h.evaluate(z + e, petab.Forward())[0] - h.evaluate(z - e, petab.Forward())[0]) / 2e-5
    assert fd == pytest.approx(grad[0], rel=1e-5)


@pytest.mark.slow
def test_declared_parameter_type_is_checked(tmp_path):
    path = write_relative(tmp_path / "p")
    p = pd.read_csv(path.parent / "parameters.tsv", sep="\t")
    p["parameterType"] = ""
    p.loc[p.parameterId == "k1", "parameterType"] = "scaling"
    p.to_csv(path.parent / "parameters.tsv", sep="\t", index=False)
    problem = petab.load(path, solver=dfx.Tsit5())
    with pytest.raises(petab.PEtabError, match="'k1' is declared scaling"):
        petab.hierarchical_problem(problem)


@pytest.mark.slow
def test_multistart_flat_and_hierarchical_reach_the_same_optimum(relative, tmp_path):
    problem, _ = relative
    flat = petab.calibrate(problem, starts=3, seed=1, out=tmp_path / "flat")
    hier = petab.calibrate(problem, starts=3, seed=1, hierarchical=True)
    assert flat.objective == pytest.approx(hier.objective, abs=1e-4)
    assert problem.objective(hier.x) == pytest.approx(hier.objective, abs=1e-8)
    # resume: a finished run is read back, nothing recomputed
    again = petab.calibrate(problem, starts=3, seed=1, out=tmp_path / "flat", resume=True)
    assert [s.objective for s in again.starts] == [s.objective for s in flat.starts]
    with pytest.raises(ValueError, match="seed=1.*seed=2"):
        petab.calibrate(problem, starts=3, seed=2, out=tmp_path / "flat", resume=True)


@pytest.mark.slow
def test_boehm_multistart_records_every_start(tmp_path):
    """Four hierarchical starts on Boehm: AMICI's nominal objective, every start recorded
    with a finite objective, the best one first. (Reaching the nominal optimum takes more
    starts: benchmarks/petab_multistart.py measured 20 starts per mode.)"""
    problem = petab.load(yaml_of("Boehm_JProteomeRes2014"))
    result = petab.calibrate(problem, starts=4, seed=0, hierarchical=True, out=tmp_path)
    # AMICI's reference: -log-likelihood 138.2220 at the nominal parameters
    assert result.nominal_objective == pytest.approx(138.2220, abs=1e-3)
    finals = [s.objective for s in result.starts]
    assert len(finals) == 4 and np.all(np.isfinite(finals)) and finals == sorted(finals)
    assert result.objective == finals[0]
    assert problem.objective(result.x) == pytest.approx(result.objective, abs=1e-6)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["settings"]["inner"] == ["sd_pSTAT5A_rel", "sd_pSTAT5B_rel", "sd_rSTAT5A_rel"]
    assert (tmp_path / "fit_pSTAT5A_rel.png").exists()


@pytest.mark.slow
def test_start_points_where_the_solve_fails_are_redrawn(tmp_path):
    """pyPESTO's start-point resampling: a Latin-hypercube point whose objective is not
    finite (the blow-up model A' = kin·A² − k1·A of test_petab: A explodes where A0·kin is
    large) is replaced by a seeded uniform draw, recorded in results.json."""
    path = write_blow_up(tmp_path / "p")
    par = pd.read_csv(path.parent / "parameters.tsv", sep="\t")
    par.loc[par.parameterId == "kin", "upperBound"] = 1.0  # about half the points blow up
    par.to_csv(path.parent / "parameters.tsv", sep="\t", index=False)
    m = pd.read_csv(path.parent / "measurements.tsv", sep="\t", keep_default_na=False)
    m["preequilibrationConditionId"] = ""  # its steady state A = 0 is not found either
    m.to_csv(path.parent / "measurements.tsv", sep="\t", index=False)
    problem = petab.load(path, solver=dfx.Tsit5(), max_steps=300)
    points = petab.start_points(problem, 4, seed=0)
    finite = [np.isfinite(problem.objective(x)) for x in points]
    assert not all(finite) and any(finite)  # the oracle: some points fail, some do not
    result = petab.calibrate(problem, starts=4, seed=0, max_iterations=2, out=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["settings"]["redraws"] == 20
    for s in record["starts"]:
        k = s["index"]
        np.testing.assert_array_equal(s["drawn_x0"], points[k])
        assert s["redraws"] == (0 if finite[k] else s["redraws"])
        if not finite[k]:
            assert s["redraws"] >= 1 and s["x0"] != s["drawn_x0"]
            assert np.isfinite(problem.objective(np.array(s["x0"])))
            assert s["status"] != "failed" or "start point" not in s["message"]
        else:
            assert s["x0"] == s["drawn_x0"]
    assert "re-drawn" in (tmp_path / "run" / "report.md").read_text()
    assert np.isfinite(result.objective)
    # reproducible: the same seed draws the same points
    again = petab.calibrate(problem, starts=4, seed=0, max_iterations=2)
    by_index = {s.index: s.x0 for s in again.starts}
    assert all(by_index[s["index"]] == s["x0"] for s in record["starts"])
    # redraws=0: the failed points stay failed starts, as before
    plain = petab.calibrate(problem, starts=4, seed=0, max_iterations=2, redraws=0)
    failed = {s.index for s in plain.starts if "not finite at the start point" in s.message}
    assert failed == {k for k in range(4) if not finite[k]}
