"""The ``invcal`` command line: errors, list/run/check/report, resume, the progress bar.

A small ridge problem stands in for the catalogue where a test is about the command line's
own logic; the seed problems (``logreg_l2``, ``gdm_schedule``) are run with a few steps.
"""

import io
import json
import subprocess
import sys
from importlib.metadata import entry_points

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import invcal as ic
from invcal import cli
from invcal.catalog import Setup
from invcal.progress import ProgressBar, format_seconds


def _registered(name):
    return name in {ep.name for ep in entry_points(group="invcal.problems")}


def needs(name):
    return pytest.mark.skipif(not _registered(name), reason=f"problem {name!r} is not registered")


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("invcal: error:"), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------
# A fake catalogue entry: ridge regression with a held-out criterion
# --------------------------------------------------------------------------------------
_rng = np.random.default_rng(0)
_A, _C = _rng.normal(size=(30, 5)), _rng.normal(size=(20, 5))
_w = _rng.normal(size=5)
_DATA = (
    jnp.asarray(_A),
    jnp.asarray(_A @ _w + 0.5 * _rng.normal(size=30)),
    jnp.asarray(_C),
    jnp.asarray(_C @ _w + 0.5 * _rng.normal(size=20)),
)


def _ridge(x, th, data):
    A, b, _, _ = data
    return 0.5 * jnp.mean((A @ x - b) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)


def _held_out(x, th, data):
    _, _, C, d = data
    return jnp.mean((C @ x - d) ** 2)


def _extra_report(result, outdir):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot(np.asarray(result.x))
    fig.savefig(outdir / "fit.png")
    return [("Fitted weights", "fit.png")]


def _fake_setup(**options):
    if set(options) - {"lam0"}:
        raise ValueError(f"fake got unknown option(s) {sorted(set(options) - {'lam0'})}.")
    problem = ic.Problem(
        space=ic.Space(lam=ic.Param(options.get("lam0", 1.0), ic.Log())),
        objective=_ridge,
        criterion=_held_out,
        x0=jnp.zeros(5),
        data=_DATA,
        name="fake",
    )
    return Setup(
        problem=problem,
        solver=ic.Newton(tol=1e-10),
        method=ic.Implicit(),
        description="fake",
        methods={"implicit": ic.Implicit(), "bogus": "not a method"},
        optimizer="adam",
        learning_rate=0.5,
        steps=3,
        grid={"lam": np.geomspace(1e-3, 10.0, 9)},
        extra_report=_extra_report,
    )


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(cli, "_canonical", lambda name: name)
    monkeypatch.setattr(cli, "_load", lambda name, options: _fake_setup(**dict(options)))


def test_run_fake_writes_everything(fake, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "fake", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in stdout
    assert "theta: lam=" in stdout and "criterion:" in stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["history"]) == 3
    assert results["problem"] == "fake" and results["method"] == "default"
    land = results["landscape"]
    assert land["names"] == ["lam"] and len(land["values"]) == 9
    assert results["extra"]["figures"] == [["Fitted weights", "fit.png"]]
    md = (out / "report.md").read_text()
    for png in ("trajectory.png", "criterion.png", "grad_norm.png", "landscape.png", "fit.png"):
        assert (out / png).exists()
        assert f"]({png})" in md
    # The landscape's points are recorded as they finish; a run stopped during the landscape
    # resumes it: the finished points are kept (same rows), the rest computed.
    land_file = out / "landscape" / "results.json"
    saved = json.loads(land_file.read_text())
    assert len(saved["history"]) == 9
    partial = dict(saved, history=saved["history"][:4])
    land_file.write_text(json.dumps(partial))
    results["landscape"] = None
    (out / "results.json").write_text(json.dumps(results))
    argv = ["run", "fake", "--steps", "3", "--out", str(out), "--no-progress", "--resume"]
    assert cli.main(argv) == 0
    again = json.loads(land_file.read_text())["history"]
    assert again[:4] == saved["history"][:4] and len(again) == 9
    # (equal up to rounding: point 5 now starts its inner solve cold instead of warm)
    redone = json.loads((out / "results.json").read_text())["landscape"]
    np.testing.assert_allclose(redone["values"], land["values"], rtol=1e-12)

    # `invcal report` rewrites the report from results.json, problem figures included.
    (out / "report.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert "](fit.png)" in (out / "report.md").read_text()
    # A later run on the folder is refused unless it resumes or replaces the run ...
    argv = ["run", "fake", "--steps", "1", "--out", str(out), "--no-progress", "--no-landscape"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a previous run" in err and "--overwrite" in err
    # ... and a replacing run without a landscape leaves no stale landscape.png behind.
    assert cli.main([*argv, "--overwrite"]) == 0
    assert not (out / "landscape.png").exists()
    assert "overwriting the run" in capsys.readouterr().err


def test_check_fake_reports_a_failing_method(fake, capsys):
    assert cli.main(["check", "fake"]) == 1  # one method raised: an error, not a verdict
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines()]
    assert any(r[:1] == ["implicit"] and r[-1] == "yes" for r in rows)
    assert any(r[:2] == ["bogus", "error"] for r in rows)
    assert "invcal: error:" in captured.err and "bogus" in captured.err


def test_check_fake_json(fake, capsys):
    assert cli.main(["check", "fake", "--json", "--methods", "implicit"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["implicit"]
    assert rows[0]["relative_error"] < 1e-6 and rows[0]["converged"] is True


def test_run_unknown_method_and_option(fake, tmp_path, capsys):
    assert cli.main(["run", "fake", "--method", "nope", "--out", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert "unknown method 'nope' for problem 'fake'" in line and "implicit, bogus" in line
    assert cli.main(["run", "fake", "-o", "colour=red", "--out", str(tmp_path)]) == 2
    assert "unknown option(s) ['colour']" in _error_line(capsys)


def test_run_failure_is_one_line(fake, tmp_path, capsys, monkeypatch):
    def failing_tune(*args, **kwargs):
        raise ic.HypergradientNotConverged("invcal: hypergradient is not reliable: boom.")

    monkeypatch.setattr("invcal.outer.tune", failing_tune)
    assert cli.main(["run", "fake", "--out", str(tmp_path), "--no-progress"]) == 1
    line = _error_line(capsys)
    # nothing was recorded: the message does not point to a results.json that is not there
    assert "boom" in line and "no step finished" in line and "--resume" not in line

    def failing_after_a_step(*args, out, **kwargs):
        (out / "results.json").write_text(json.dumps({"history": [], "problem": "fake"}))
        raise ic.HypergradientNotConverged("invcal: hypergradient is not reliable: boom.")

    monkeypatch.setattr("invcal.outer.tune", failing_after_a_step)
    out = tmp_path / "second"
    assert cli.main(["run", "fake", "--out", str(out), "--no-progress"]) == 1
    line = _error_line(capsys)
    assert "boom" in line and "--resume" in line and str(out / "results.json") in line


def test_check_unknown_methods(fake, capsys):
    assert cli.main(["check", "fake", "--methods", "implicit,nope"]) == 2
    line = _error_line(capsys)
    assert "'nope'" in line and "valid methods: implicit, bogus" in line


def test_resume_refuses_another_method(fake, tmp_path, capsys):
    out = str(tmp_path)
    assert (
        cli.main(["run", "fake", "--steps", "1", "--out", out, "--no-progress", "--no-landscape"])
        == 0
    )
    capsys.readouterr()
    args = ["run", "fake", "--steps", "2", "--out", out, "--resume", "--method", "implicit"]
    assert cli.main(args) == 2
    assert "was run with method 'default'" in _error_line(capsys)


def test_resume_refuses_a_corrupt_file(fake, tmp_path, capsys):
    (tmp_path / "results.json").write_text("{not json")
    assert cli.main(["run", "fake", "--out", str(tmp_path), "--resume"]) == 2
    assert "not valid JSON" in _error_line(capsys)


# --------------------------------------------------------------------------------------
# Errors that need no problem
# --------------------------------------------------------------------------------------
def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "usage: invcal" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "nope"], "unknown problem 'nope'"),
        (["check", "nope"], "unknown problem 'nope'"),
        (["frobnicate"], "invalid choice"),
        (["run", "logreg_l2", "--steps", "-1"], "--steps"),
        (["run", "logreg_l2", "--steps", "0"], "--steps"),
        (["run", "logreg_l2", "--steps", "many"], "--steps"),
        (["run", "logreg_l2", "--learning-rate", "fast"], "--learning-rate"),
        (["run", "logreg_l2", "--learning-rate", "nan"], "--learning-rate"),
        (["run", "logreg_l2", "--optimizer", "sgd"], "--optimizer"),
        (["run", "logreg_l2", "--bogus"], "unrecognized arguments"),
        (["run", "logreg_l2", "-o", "novalue"], "KEY=VALUE"),
        (["report", "/nonexistent/run"], "no results file"),
    ],
)
def test_command_errors(argv, fragment, capsys):
    assert cli.main(argv) == 2
    assert fragment in _error_line(capsys)


# --------------------------------------------------------------------------------------
# The seed problems
# --------------------------------------------------------------------------------------
def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == sorted(ep.name for ep in entry_points(group="invcal.problems"))
    assert all(len(line.split(maxsplit=1)) == 2 for line in out.splitlines())  # a description


def test_python_m_invcal():
    proc = subprocess.run(
        [sys.executable, "-m", "invcal", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: invcal run" in proc.stdout


@needs("logreg_l2")
def test_resume_refuses_another_problem(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"problem": "gdm_schedule", "history": []}))
    assert cli.main(["run", "logreg_l2", "--out", str(tmp_path), "--resume"]) == 2
    assert "'gdm_schedule'" in _error_line(capsys)


@needs("logreg_l2")
def test_run_logreg(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["run", "logreg_l2", "--steps", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "report:" in captured.out
    assert "tune [" in captured.err  # the progress bar (plain lines: stderr is no TTY here)
    results = json.loads((out / "results.json").read_text())
    assert len(results["history"]) == 3 and results["finished"]
    assert results["landscape"] is not None
    md = (out / "report.md").read_text()
    for png in ("trajectory.png", "criterion.png", "grad_norm.png", "landscape.png"):
        assert (out / png).stat().st_size > 1000
        assert f"]({png})" in md


@needs("logreg_l2")
def test_resume_logreg(tmp_path, capsys):
    out = str(tmp_path)
    base = ["run", "logreg_l2", "--out", out, "--no-progress", "--no-landscape"]
    assert cli.main(base + ["--steps", "2"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())["history"]
    assert cli.main(base + ["--steps", "4", "--resume"]) == 0
    history = json.loads((tmp_path / "results.json").read_text())["history"]
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    assert history[:2] == first
    assert history[2]["value"] < history[1]["value"]  # it went on descending


@needs("gdm_schedule")
def test_check_gdm_json(capsys):
    argv = ["check", "gdm_schedule", "--json", "--methods", "forward-unrolled,truncated-1"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["forward-unrolled", "truncated-1"]
    assert all(isinstance(r["relative_error"], float) for r in rows)
    assert rows[0]["relative_error"] < 1e-5  # FORWARD-HG is exact for a fixed-step solution


# --------------------------------------------------------------------------------------
# The progress bar
# --------------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_plain_lines():
    stream = io.StringIO()
    bar = ProgressBar(label="tune", stream=stream, min_interval=3600)
    for k in range(1, 6):
        bar(k, 5, {"value": 1.0 / k, "grad_norm": 0.1 / k, "elapsed": 0.1 * k})
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first and the last; the rest are throttled
    assert lines[0].startswith("tune [") and "1/5" in lines[0] and "E=1" in lines[0]
    assert "5/5" in lines[1] and "|g|=0.02" in lines[1] and "done" in lines[1]
    assert "\r" not in stream.getvalue()


def test_progress_in_place_on_a_terminal():
    stream = _Tty()
    bar = ProgressBar(stream=stream)
    bar(1, 4, {"value": 2.0, "grad_norm": None})
    bar(2, 4, {"value": 1.0, "accepted": False})
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "(rejected)" in text and "ETA" in text and "|g|" not in text


def test_format_seconds():
    assert format_seconds(3.21) == "3.2s"
    assert format_seconds(125) == "2m05s"
    assert format_seconds(4000) == "1h06m"
    assert format_seconds(float("nan")) == "?"


def test_run_with_barzilai_borwein_stops_by_itself(fake, tmp_path, capsys):
    out = tmp_path / "bb"
    argv = ["run", "fake", "--optimizer", "bb", "--steps", "40", "--out", str(out)]
    assert cli.main([*argv, "--no-progress", "--no-landscape"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["optimizer"] == "barzilai-borwein"
    assert 2 < len(results["history"]) < 40  # settled before the step budget
    accepted = [r["value"] for r in results["history"] if r["accepted"]]
    assert accepted == sorted(accepted, reverse=True)
