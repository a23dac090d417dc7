"""report.md and figures from synthetic results dicts (no solver runs)."""

import json
import math
import re

import numpy as np
import pytest

from invcal.report import load_results, write_report


def _row(step, theta, value, *, grad=0.1, accepted=True, converged=True):
    return {
        "step": step,
        "z": [0.0],
        "theta": theta,
        "value": value,
        "grad_norm": None if grad is None else grad,
        "grad_z": None if grad is None else [grad],
        "inner_steps": 10 + step,
        "inner_residual": 1e-11,
        "linear_steps": 5,
        "linear_residual": 1e-13,
        "converged": converged,
        "accepted": accepted,
        "wall_time": 0.01,
        "elapsed": 0.5 + 0.01 * step,
    }


def _results(names_shapes, history, *, landscape=None, method="implicit", optimizer="adam"):
    best = min(history, key=lambda r: r["value"])
    return {
        "invcal_version": "0.1.0",
        "problem": "synthetic",
        "method": method,
        "optimizer": optimizer,
        "learning_rate": 0.1,
        "steps_requested": len(history),
        "names": list(names_shapes),
        "space": {
            k: {"shape": list(s), "transform": "Identity()"} for k, s in names_shapes.items()
        },
        "history": history,
        "finished": True,
        "best": {"step": best["step"], "theta": best["theta"], "value": best["value"]},
        "landscape": landscape,
        "extra": {"note": "synthetic"},
    }


def one_entry():
    lam = np.linspace(1.0, -2.0, 8)
    history = [
        _row(i, {"lam": float(v)}, (v + 1.5) ** 2 + 0.3, grad=2 * abs(v + 1.5) + 1e-3)
        for i, v in enumerate(lam)
    ]
    axis = np.linspace(-4.0, 2.0, 25)
    land = {"names": ["lam"], "axes": [axis.tolist()], "values": ((axis + 1.5) ** 2 + 0.3).tolist()}
    return _results({"lam": ()}, history, landscape=land)


def two_entries():
    eta = np.geomspace(1e-2, 5e-2, 6)
    mu = np.linspace(0.2, 0.7, 6)
    f = lambda e, m: (np.log10(e) + 1.3) ** 2 + (m - 0.6) ** 2  # noqa: E731
    history = [
        _row(i, {"eta": float(e), "mu": float(m)}, float(f(e, m)), accepted=i != 3)
        for i, (e, m) in enumerate(zip(eta, mu, strict=True))
    ]
    ae, am = np.geomspace(1e-3, 0.1, 11), np.linspace(0.05, 0.95, 9)
    values = f(ae[:, None], am[None, :])
    values[0, 0] = np.nan  # a diverged grid point
    land = {"names": ["eta", "mu"], "axes": [ae.tolist(), am.tolist()], "values": values.tolist()}
    res = _results({"eta": (), "mu": ()}, history, landscape=land)
    res["space"]["eta"]["transform"] = "Log()"
    return res


def array_entry():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 12)).cumsum(axis=0)
    history = [
        _row(i, {"w": w[i].tolist(), "lam": 0.1 * i}, 1.0 / (i + 1), converged=i != 2)
        for i in range(6)
    ]
    return _results({"w": (12,), "lam": ()}, history)


def grid_rows():
    history = [
        _row(i, {"lam": float(v)}, float(v**2), grad=None)
        for i, v in enumerate(np.linspace(-1, 1, 9))
    ]
    for r in history:
        r.update(linear_steps=0, linear_residual=0.0)
    return _results({"lam": ()}, history, method="grid", optimizer="grid")


CASES = {
    "one_entry": (one_entry, {"trajectory.png", "criterion.png", "grad_norm.png", "landscape.png"}),
    "two_entries": (
        two_entries,
        {"trajectory.png", "criterion.png", "grad_norm.png", "landscape.png"},
    ),
    "array_entry": (array_entry, {"trajectory.png", "criterion.png", "grad_norm.png"}),
    "grid_rows": (grid_rows, {"trajectory.png", "criterion.png"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_files(case, tmp_path):
    make, expected = CASES[case]
    results = make()
    path = write_report(results, tmp_path)
    assert path == tmp_path / "report.md"
    md = path.read_text()
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert pngs == expected
    for name in expected:
        assert f"]({name})" in md
        assert (tmp_path / name).stat().st_size > 1000
    best = results["best"]["value"]
    best_line = next(line for line in md.splitlines() if line.startswith("| **best**"))
    assert f"**{best:.6g}**" in best_line
    assert md.startswith("# invcal report — synthetic")


def test_report_mentions_summaries(tmp_path):
    md = write_report(array_entry(), tmp_path).read_text()
    assert "12 components" in md  # the array entry is summarized, and the caption says so
    assert "array 12: mean" in md
    assert "1 of 6 steps did not converge" in md
    md2 = write_report(two_entries(), tmp_path / "two").read_text()
    assert "1 rejected" in md2
    assert "non-finite E are left blank" in md2
    assert "landscape: grid minimum" in md2


def test_report_extra_figures_and_json_roundtrip(tmp_path):
    results = one_entry()
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "fit.png").write_bytes(b"\x89PNG fake")
    loaded = load_results(tmp_path)
    md = write_report(
        loaded, tmp_path, extra_figures=[("Fitted curve", "fit.png"), ("Gone", "nope.png")]
    ).read_text()
    assert "![Fitted curve](fit.png)" in md
    assert "`nope.png` is missing" in md
    with pytest.raises(TypeError, match="caption, filename"):
        write_report(loaded, tmp_path, extra_figures=["fit.png"])


def test_report_empty_history(tmp_path):
    results = one_entry()
    results["history"], results["best"] = [], None
    md = write_report(results, tmp_path).read_text()
    assert "nothing to report" in md
    assert not list(tmp_path.glob("*.png"))


def test_report_nan_values(tmp_path):
    results = one_entry()
    results["history"][2]["value"] = math.nan
    results["history"][3]["grad_norm"] = None
    md = write_report(results, tmp_path).read_text()
    assert re.search(r"\| final \|", md)


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results file"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"history": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path / "results.json")
    (tmp_path / "results.json").write_text('{"steps": 3}')
    with pytest.raises(ValueError, match="no 'history' list"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="results dict"):
        write_report([1, 2], tmp_path)
