"""Fault injection: what a user's mistakes and accidents do to a run, each case of issue 16
that is fixed kept as a test (concurrent runs, folders that hold other files, resumes that
would splice two problems, unusable output folders)."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from test_cli import _error_line, _fake_setup
from test_default_config import _cv_mse_grid

import invcal as ic
from invcal import cli
from invcal.runfolder import claim_run_folder


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(cli, "_canonical", lambda name: name)
    monkeypatch.setattr(cli, "_load", lambda name, options: _fake_setup(**dict(options)))


@pytest.fixture
def no_work(monkeypatch):
    """The fake problem, but the test fails if the command gets as far as tuning (compiling
    and running steps): the folder checks must come first."""
    import invcal.outer

    def refuse(*args, **kwargs):
        raise AssertionError("tune was called: the check came after work started")

    monkeypatch.setattr(cli, "_canonical", lambda name: name)
    monkeypatch.setattr(cli, "_load", lambda name, options: _fake_setup(**dict(options)))
    monkeypatch.setattr(invcal.outer, "tune", refuse)


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env.pop("JAX_ENABLE_X64", None)
    return env


# --------------------------------------------------------------------------------------
# 1. two runs on one folder
# --------------------------------------------------------------------------------------
def test_a_folder_held_by_another_process_is_refused(no_work, tmp_path, capsys):
    out = tmp_path / "c"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from invcal.runfolder import claim_run_folder
                with claim_run_folder({str(out)!r}):
                    print("held", flush=True)
                    sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["run", "fake", "--out", str(out)]) == 2
        line = _error_line(capsys)
        assert "in use by another run" in line and f"process {holder.pid}" in line
    finally:
        holder.communicate("\n", timeout=60)
    # released when the holder ended: the folder (empty but for the lock) is free again
    with claim_run_folder(out):
        pass


def test_concurrent_runs_one_refused(tmp_path):
    """The issue's case: two `invcal run` on one folder at once. Exactly one runs; the other
    is refused in one line before any work, and the folder holds the one run."""
    out = tmp_path / "c"
    base = [sys.executable, "-m", "invcal", "run", "logreg_l2", "--steps", "4", "--out", str(out)]
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for cmd in (
            [*base, "--no-progress", "--no-landscape"],
            [*base, "--optimizer", "gd", "--no-progress", "--no-landscape"],
        )
    ]
    done = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2], done
    refused = next(err for code, _, err in done if code == 2)
    assert refused.count("\n") == 1 and "in use by another run" in refused, refused
    winner = next(i for i, (code, _, _) in enumerate(done) if code == 0)
    results = json.loads((out / "results.json").read_text())
    assert results["optimizer"] == ("adam" if winner == 0 else "gd")
    assert len(results["history"]) == 4


# --------------------------------------------------------------------------------------
# 2. a folder that holds other files; a previous run without --resume/--overwrite
# --------------------------------------------------------------------------------------
def test_folder_with_foreign_files_is_refused_untouched(no_work, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "report.md").write_text("mine")
    (d / "landscape.png").write_text("mine")
    (d / "notes.txt").write_text("mine")
    assert cli.main(["run", "fake", "--out", str(d)]) == 2
    assert "no invcal run wrote (notes.txt)" in _error_line(capsys)
    assert (d / "report.md").read_text() == "mine"
    assert (d / "landscape.png").read_text() == "mine"


def test_previous_run_needs_resume_or_overwrite(fake, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["run", "fake", "--steps", "2", "--out", str(out), "--no-progress", "--no-landscape"]
    assert cli.main(argv) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "holds a previous run (problem 'fake', 2 steps)" in _error_line(capsys)
    assert (out / "results.json").read_text() == before
    assert cli.main([*argv, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in _error_line(capsys)


# --------------------------------------------------------------------------------------
# 3. resuming with other problem options
# --------------------------------------------------------------------------------------
def test_resume_with_other_options_is_refused(fake, tmp_path, capsys):
    out = tmp_path / "r"
    base = ["run", "fake", "--out", str(out), "--no-progress", "--no-landscape"]
    assert cli.main([*base, "--steps", "2", "-o", "lam0=2.0"]) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert cli.main([*base, "--steps", "4", "--resume", "-o", "lam0=3.0"]) == 2
    line = _error_line(capsys)
    assert "other problem options" in line and "lam0: 2.0 -> 3.0" in line
    assert cli.main([*base, "--steps", "4", "--resume"]) == 2
    assert "lam0: 2.0 -> '(default)'" in _error_line(capsys)
    assert (out / "results.json").read_text() == before
    assert cli.main([*base, "--steps", "3", "--resume", "-o", "lam0=2.0"]) == 0
    assert len(json.loads((out / "results.json").read_text())["history"]) == 3


# --------------------------------------------------------------------------------------
# 7. an unusable --out, before any work
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["file", "under-a-file", "unwritable"])
def test_unusable_out_fails_before_work(no_work, tmp_path, capsys, case):
    f = tmp_path / "f"
    f.write_text("x")
    if case == "file":
        out, fragment = f, "is a file, not a folder"
    elif case == "under-a-file":
        out, fragment = f / "sub", "cannot be made"
    else:
        if os.geteuid() == 0:
            # root writes through permission bits; /proc refuses everyone
            out, fragment = "/proc/invcal-run", "cannot be made"
        else:
            ro = tmp_path / "ro"
            ro.mkdir()
            ro.chmod(0o500)
            out, fragment = ro / "run", "cannot be made"
    assert cli.main(["run", "fake", "--out", str(out)]) == 2
    assert fragment in _error_line(capsys)


# --------------------------------------------------------------------------------------
# 8-10. NaN and inf are never converged, and results.json stays strict JSON
# --------------------------------------------------------------------------------------
def _ridge_problem(criterion):
    A = jnp.asarray(np.random.default_rng(0).normal(size=(20, 4)))
    b = A @ jnp.ones(4)

    def objective(x, th, data):
        return 0.5 * jnp.sum((data[0] @ x - data[1]) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)

    return ic.Problem(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        objective=objective,
        criterion=criterion,
        x0=jnp.zeros(4),
        data=(A, b),
    )


def test_nan_criterion_is_not_converged():
    problem = _ridge_problem(lambda x, th, data: jnp.log(-jnp.mean(x**2)))
    hg = ic.hypergradient(
        problem, {"lam": 1.0}, solver=ic.Newton(), method=ic.Implicit(), on_failure="record"
    )
    assert not bool(hg.diagnostics.converged) and not bool(hg.diagnostics.finite)
    with pytest.raises(ic.HypergradientNotConverged, match="NaN or inf although the inner"):
        ic.hypergradient(problem, {"lam": 1.0}, solver=ic.Newton(), method=ic.Implicit())
    # the outer loop stops at the first step, not after running every step
    with pytest.raises(ic.HypergradientNotConverged, match="NaN or inf"):
        ic.tune(problem, solver=ic.Newton(), optimizer="adam", steps=50)


def test_fixed_steps_overflow_is_not_converged():
    problem = ic.Problem(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        fixed_point=lambda x, th, data: 2.0 * x + th["lam"],
        criterion=lambda x, th, data: jnp.sum(x**2),
        x0=jnp.zeros(3),
        data=None,
        fixed_steps=True,
    )
    hg = ic.hypergradient(
        problem,
        {"lam": 1.0},
        solver=ic.FixedSteps(2000),
        method=ic.Unrolled(),
        on_failure="record",
    )
    assert not bool(hg.diagnostics.converged)
    assert int(hg.diagnostics.inner_result) == int(ic.SolveResult.DIVERGED)


def test_results_json_is_strict(tmp_path):
    from invcal.outer import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"v": float("inf"), "h": [{"value": float("nan")}]})
    text = (tmp_path / "r.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"v": None, "h": [{"value": None}]}


# --------------------------------------------------------------------------------------
# 19. Log and Softplus keep θ positive and finite; to_z refuses values outside the domain
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["Log", "Softplus"])
def test_positive_transforms_are_guarded(transform):
    space = ic.Space(lam=ic.Param(1.0, getattr(ic, transform)()))
    for z in (-800.0, -1e4, 710.0, 1e6):
        lam = float(space.to_theta(jnp.asarray([z]))["lam"])
        assert np.isfinite(lam) and lam > 0, (z, lam)
        space.validate({"lam": lam})  # accepted by the space, not rejected mid-run
    with pytest.raises(ValueError, match=f"'lam' has transform {transform} and must be > 0"):
        space.to_z({"lam": -1.0})


# --------------------------------------------------------------------------------------
# 16-18. denoise_tv: scale-relative stopping, no silent unconverged result, masked arrays
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy():
    from skimage import data, img_as_float

    img = img_as_float(data.camera()[::8, ::8])
    return img + 0.1 * np.random.default_rng(0).standard_normal(img.shape)


@pytest.mark.parametrize("c", [1e-4, 1e-2, 1e2])
def test_denoise_tv_commutes_with_scaling(noisy, c):
    from invcal.imaging import denoise_tv

    u = denoise_tv(noisy, weight=0.08)
    uc, info = denoise_tv(c * noisy, weight=0.08 * c, return_info=True)
    assert info.converged and info.num_steps > 5, info
    np.testing.assert_allclose(uc / c, u, atol=1e-6 * np.ptp(noisy))


def test_denoise_tv_unconverged_warns(noisy):
    from invcal.imaging import denoise_tv

    with pytest.warns(RuntimeWarning, match="not converged. Raise max_steps"):
        denoise_tv(noisy, weight=1.0, max_steps=20)


def test_denoise_tv_refuses_masked_arrays(noisy):
    from invcal.imaging import denoise_tv

    masked = np.ma.masked_array(noisy, mask=noisy > 0.9)
    with pytest.raises(TypeError, match="masked array"):
        denoise_tv(masked, weight=0.1)


# --------------------------------------------------------------------------------------
# 13-14. BilevelLassoCV: as good as LassoCV's own grid, at any feature scale
# --------------------------------------------------------------------------------------
def test_lasso_cv_no_worse_than_lassocv_grid_on_a_wide_small_sample():
    from sklearn.datasets import make_regression
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    from invcal.sklearn import BilevelLassoCV

    X, y = make_regression(30, 200, n_informative=5, noise=1, random_state=1)
    splits = list(KFold(5).split(X))
    ref = LassoCV(cv=KFold(5), tol=1e-10, max_iter=100_000).fit(X, y)
    grid_best = float(np.min(_cv_mse_grid(X, y, ref.alphas_, splits)))
    est = BilevelLassoCV(cv=KFold(5)).fit(X, y)
    assert est.cv_mse_ <= 1.01 * grid_best, (est.alpha_, est.cv_mse_, ref.alpha_, grid_best)


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_lasso_cv_at_any_feature_scale(scale):
    from sklearn.datasets import load_diabetes

    from invcal.sklearn import BilevelLassoCV

    X, y = load_diabetes(return_X_y=True)
    base = BilevelLassoCV().fit(X, y)
    scaled = BilevelLassoCV().fit(X * scale, y)
    # the same problem in other units: α scales by the factor, coefficients by its inverse
    assert scaled.alpha_ == pytest.approx(base.alpha_ * scale, rel=1e-3)
    np.testing.assert_allclose(scaled.coef_ * scale, base.coef_, rtol=1e-3, atol=1e-6)
    assert scaled.cv_mse_ == pytest.approx(base.cv_mse_, rel=1e-6)


def test_diverging_run_stops_at_once_saying_why(tmp_path, capsys):
    """Issue 16's case 8: a step size that makes the unrolled training overflow. The run
    stops at its first step with one line naming the overflow, not after recording E = inf
    as converged."""
    out = tmp_path / "g"
    argv = ["run", "gdm_schedule", "-o", "eta0=5", "--steps", "5", "--out", str(out)]
    assert cli.main([*argv, "--no-progress", "--no-landscape"]) == 1
    line = _error_line(capsys)
    assert "NaN or inf" in line and "step size above 2/L" in line
    assert "no step finished" in line
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------------------
# 4. a damaged or hand-edited results.json: one line naming the field, before any work
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda r: r.update(state=None), "state is None"),
        (lambda r: r["state"].update(z="abc"), "state.z is 'abc'"),
        (lambda r: r.update(best="abc"), "best is 'abc'"),
        (lambda r: r["history"][1].update(step=5), "history[1].step is 5"),
        (lambda r: r["history"][0].update(z=[1.0, 2.0]), "history[0].z is [1.0, 2.0]"),
        (lambda r: r["history"][0].update(value="x"), "history[0].value is 'x'"),
        (lambda r: r.update(history={}), "has no 'history' list"),
        (lambda r: r["state"].update(opt_state=None), "state.opt_state is None"),
    ],
)
def test_tampered_results_are_refused_naming_the_field(fake, tmp_path, capsys, edit, field):
    import invcal.outer.driver

    out = tmp_path / "r"
    base = ["run", "fake", "--out", str(out), "--no-progress", "--no-landscape"]
    assert cli.main([*base, "--steps", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    edit(results)
    (out / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    calls = []
    real = invcal.outer.driver.hypergradient
    invcal.outer.driver.hypergradient = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        assert cli.main([*base, "--steps", "4", "--resume"]) == 2
    finally:
        invcal.outer.driver.hypergradient = real
    line = _error_line(capsys)
    assert str(out / "results.json") in line and field in line, line
    assert not calls  # refused before any hypergradient


# --------------------------------------------------------------------------------------
# 5. HOAG resumes without evaluating its last accepted point again
# --------------------------------------------------------------------------------------
def test_hoag_resume_matches_an_uninterrupted_run(tmp_path):
    problem = _ridge_problem(lambda x, th, data: jnp.sum((x - 0.5) ** 2))
    hoag = ic.HOAG(tol0=1e-6)
    straight = ic.tune(problem, solver=ic.Newton(), optimizer=hoag, steps=8)
    ic.tune(problem, solver=ic.Newton(), optimizer=hoag, steps=4, out=tmp_path)
    resumed = ic.tune(
        problem, solver=ic.Newton(), optimizer=hoag, steps=8, out=tmp_path, resume=True
    )
    z_straight = [r["z"][0] for r in straight.history]
    z_resumed = [r["z"][0] for r in resumed.history]
    assert len(z_resumed) == 8
    # no duplicate of step 3's θ at step 4; the same trajectory (cold vs warm inner starts:
    # equal to the solves' tolerance)
    np.testing.assert_allclose(z_resumed, z_straight, rtol=1e-6, atol=1e-8)
    assert [r["accepted"] for r in resumed.history] == [r["accepted"] for r in straight.history]


# --------------------------------------------------------------------------------------
# 12. check_hypergradient's relative error is meaningful when the gradient is 0
# --------------------------------------------------------------------------------------
def test_relative_error_when_the_finite_difference_is_zero():
    # E does not depend on x* (nor θ): dE/dθ is 0, the finite difference exactly 0, and the
    # implicit gradient 0 to rounding; that is an agreement (it read 5.6e284 before).
    problem = _ridge_problem(lambda x, th, data: 3.0 + 0.0 * jnp.sum(x))
    res = ic.check_hypergradient(problem, {"lam": 1.0}, ic.Implicit(), solver=ic.Newton())
    assert np.all(res.finite_difference == 0.0)
    assert res.relative_error < 1e-6, res
    # a nonzero gradient is still compared with its own size
    shifted = _ridge_problem(lambda x, th, data: jnp.sum(x) + 1e-3 * th["lam"])
    good = ic.check_hypergradient(shifted, {"lam": 1.0}, ic.Implicit(), solver=ic.Newton())
    assert good.relative_error < 1e-6
    assert np.linalg.norm(good.finite_difference) > 1e-3


def _duplicated_column_problem():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 5))
    A = np.hstack([A, A[:, :1]])  # a duplicated column: XᵀX is singular
    b = A @ np.ones(6) + 0.1 * rng.normal(size=30)
    C = rng.normal(size=(10, 6))

    def objective(x, th, data):
        return 0.5 * jnp.mean((data[0] @ x - data[1]) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)

    return ic.Problem(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        objective=objective,
        criterion=lambda x, th, data: 0.5 * jnp.mean((data[2] @ x - data[3]) ** 2),
        x0=jnp.zeros(6),
        data=(A, b, C, C @ np.ones(6)),
    )


def test_a_dense_solve_of_a_nearly_singular_system_is_not_converged():
    # λ = 1e-14 with a duplicated column: LU "succeeded" with a relative residual of 2e-3 and
    # a hypergradient 2e-3 off the Krylov solvers' (issue 16, item 12); the condition number
    # of the dense system (1.6e14, so cond·eps ≈ 0.04) is now reported and fails the solve
    import lineax as lx

    problem = _duplicated_column_problem()
    solver = ic.Newton(tol=1e-12, max_steps=100)
    lu = ic.Implicit(lx.LU())
    hg = ic.hypergradient(problem, {"lam": 1e-14}, solver=solver, method=lu, on_failure="record")
    d = hg.diagnostics.as_dict()
    assert d["linear_condition"] > 1e13 and not d["linear_converged"]
    with pytest.raises(ic.HypergradientNotConverged, match=r"nearly singular \(condition number"):
        ic.hypergradient(problem, {"lam": 1e-14}, solver=solver, method=lu)
    # at a well-posed λ the same dense solve converges and reports its (small) condition
    ok = ic.hypergradient(problem, {"lam": 1.0}, solver=solver, method=lu).diagnostics.as_dict()
    assert ok["linear_converged"] and 1.0 <= ok["linear_condition"] < 1e3
    # iterative solves report no condition number (they would have to estimate it)
    cg = ic.hypergradient(problem, {"lam": 1.0}, solver=solver, method=ic.Implicit())
    assert cg.diagnostics.as_dict()["linear_condition"] is None


# --------------------------------------------------------------------------------------
# 15. HOAG reaches the optimum on the README's ridge example and on logreg_l2
# --------------------------------------------------------------------------------------
def test_hoag_reaches_the_optimum_of_the_readme_example():
    from test_default_config import _readme_code

    scope: dict = {}
    exec(compile(_readme_code().split("hg = ic.hypergradient")[0], "README", "exec"), scope)
    problem = scope["problem"]
    best = ic.tune(problem, solver=ic.Newton(), optimizer="lbfgs", steps=15)
    hoag = ic.tune(problem, solver=ic.Newton(), optimizer="hoag", steps=30)
    assert hoag.value <= 1.01 * best.value, (hoag.theta, hoag.value, best.value)
    assert min(r["z"][0] for r in hoag.history) > -20  # no step into the flat tail λ → 0


def test_hoag_reaches_the_optimum_on_logreg_l2():
    from invcal.catalog import load

    setup = load("logreg_l2")
    best = ic.tune(setup.problem, solver=setup.solver, optimizer="lbfgs", steps=20)
    hoag = ic.tune(setup.problem, solver=setup.solver, optimizer="hoag", steps=40)
    assert hoag.value <= best.value + 0.01 * abs(best.value), (hoag.value, best.value)


# --------------------------------------------------------------------------------------
# 6. Ctrl-C and SIGTERM during a run: one line, exit 130 / 143, results.json whole
# --------------------------------------------------------------------------------------
def test_interrupts_exit_with_one_line_and_whole_results(tmp_path):
    import signal
    import time

    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "invcal", "run", "logreg_l2", "--steps", "400", "--out", str(out)]
    rng = np.random.default_rng(0)
    for i, sig in enumerate([signal.SIGINT, signal.SIGINT, signal.SIGTERM]):
        proc = subprocess.Popen(
            [*cmd, "--no-progress", "--no-landscape", *(["--resume"] if i else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        # after start-up (the handler is installed once `import invcal` is done): during
        # compilation or the steps, at a random point
        lock = out / ".invcal.lock"  # holds the pid of the run that claimed the folder
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(proc.pid):
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 3.0)))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # finished before the signal: nothing to check
            continue
        assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
        # a resume of a run interrupted before its first step says so first (one info line)
        fresh = "to resume from; starting a new run."
        lines = [line for line in err.splitlines() if line.strip() and fresh not in line]
        assert len(lines) == 1 and "continues from its last step with --resume" in lines[0], err
        if (out / "results.json").exists():
            json.loads((out / "results.json").read_text())  # whole, strict JSON


def _handles_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler (Linux: /proc/PID/status, SigCgt).
    Python catches SIGINT from its start, but SIGTERM only once invcal installs its handler,
    which it does before importing JAX."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (15 - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_interrupts_during_start_up_exit_with_one_line(tmp_path):
    """Ctrl-C while `import invcal` (JAX's import, about a second) or the command's set-up
    runs: exit 130 and one line. Before, the same interrupts printed a raw KeyboardInterrupt
    or ImportError traceback, were swallowed (the run finished, exit 0), or killed the
    interpreter (exit -2)."""
    import signal
    import time

    during_import = []  # whether JAX's compiled library was not yet loaded at the signal
    for i, delay in enumerate([0.0, 0.1, 0.3, 0.6]):
        out = tmp_path / f"r{i}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "invcal", "run", "logreg_l2", "--steps", "400"]
            + ["--no-landscape", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not _handles_sigterm(proc.pid):
            time.sleep(0.002)
        time.sleep(delay)
        with contextlib.suppress(OSError):
            during_import.append("jaxlib" not in Path(f"/proc/{proc.pid}/maps").read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, proc.returncode, err[-2000:])
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == ["invcal: interrupted (a run continues from its last step with --resume)."]
    # the handler is there before JAX is imported, so the early interrupts land in its import
    assert any(during_import), during_import


# --------------------------------------------------------------------------------------
# 22. a table that is not UTF-8; an option that is not a number
# --------------------------------------------------------------------------------------
def test_non_utf8_table_names_the_file(tmp_path):
    from invcal import ode

    path = tmp_path / "latin1.csv"
    path.write_bytes("ID,TIME,DV,AMT\n1,0,.,320\n1,1,7.4,0\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text \(byte 0xe9"):
        ode.read_events(path)


def test_non_numeric_option_is_named(tmp_path, capsys):
    assert cli.main(["run", "theophylline", "-o", "subjects=abc", "--out", str(tmp_path)]) == 2
    assert "subjects must be an integer >= 1 and <= 12; got 'abc'" in _error_line(capsys)


# --------------------------------------------------------------------------------------
# 11. Newton on an indefinite inner problem: a maximum is not a solution
# --------------------------------------------------------------------------------------
def test_newton_at_a_maximum_is_not_converged():
    A = jnp.asarray(np.random.default_rng(0).normal(size=(20, 4)))
    b = A @ jnp.ones(4)

    def ridge(x, th, data):  # λ < 0 beyond the smallest eigenvalue of AᵀA: concave
        return 0.5 * jnp.mean((data[0] @ x - data[1]) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)

    problem = ic.Problem(
        space=ic.Space(lam=ic.Param(1.0, ic.Identity())),
        objective=ridge,
        criterion=lambda x, th, data: jnp.sum(x**2),
        x0=jnp.zeros(4),
        data=(A, b),
    )
    with pytest.raises(ic.HypergradientNotConverged, match="stationary point that is not a min"):
        ic.hypergradient(problem, {"lam": -5.0}, solver=ic.Newton(), method=ic.Implicit())
    good = ic.hypergradient(problem, {"lam": 1.0}, solver=ic.Newton(), method=ic.Implicit())
    assert bool(good.diagnostics.converged) and float(good.diagnostics.inner_curvature) > 0


# --------------------------------------------------------------------------------------
# 23. invcal report on a results.json from elsewhere: text escaped, figures only from the
# run folder (a link to /etc/shadow would reveal whether the file exists)
# --------------------------------------------------------------------------------------
def test_report_escapes_text_and_keeps_figures_inside_the_run(fake, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["run", "fake", "--steps", "2", "--out", str(out), "--no-progress", "--no-landscape"]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    results["problem"] = "<script>alert(1)</script> [x](http://evil) *bold*"
    results["method"] = "a`b<i>"
    results["extra"] = {
        "note": "<img src=x onerror=alert(1)>",
        "figures": [["shadow", "/etc/shadow"], ["up", "../secret.png"], ["ok", "fit.png"]],
    }
    (out / "results.json").write_text(json.dumps(results))
    assert cli.main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "<img" not in md and "<i>" not in md
    assert "&lt;script&gt;" in md and "\\[x\\]\\(http://evil\\)" in md
    assert "](/etc/shadow)" not in md and "](../secret.png)" not in md
    assert md.count("is not a file in the run folder") == 2
    assert "](fit.png)" in md


# --------------------------------------------------------------------------------------
# 20. wrong shapes, a vector criterion, a string θ: one line naming the argument
# --------------------------------------------------------------------------------------
def test_bad_arguments_are_named():
    problem = _ridge_problem(lambda x, th, data: jnp.sum(x**2))
    kw = dict(solver=ic.Newton(), method=ic.Implicit())
    with pytest.raises(ValueError, match=r"x0 has shape \(3,\); the problem's x0 .* \(4,\)"):
        ic.hypergradient(problem, {"lam": 1.0}, x0=jnp.zeros(3), **kw)
    with pytest.raises(ValueError, match=r"theta\['lam'\] must be a number .* got 'abc'"):
        ic.hypergradient(problem, {"lam": "abc"}, **kw)
    wrong_x0 = eqx_replace(problem, x0=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"optimality map fails on x0 \(shapes \[\(3,\)\]\)"):
        ic.hypergradient(wrong_x0, {"lam": 1.0}, **kw)
    vector = _ridge_problem(lambda x, th, data: x**2)
    with pytest.raises(ValueError, match=r"criterion must return a scalar; .* shape \(4,\)"):
        ic.hypergradient(vector, {"lam": 1.0}, **kw)


def eqx_replace(problem, **changes):
    import equinox as eqx

    return eqx.tree_at(lambda p: [getattr(p, k) for k in changes], problem, list(changes.values()))


# --------------------------------------------------------------------------------------
# 21. Theoph with one DV typed as 1e6: the row is named, not an ODE failure
# --------------------------------------------------------------------------------------
def _theoph_with_outlier(tmp_path):
    from invcal import ode

    lines = Path("problems/data/theoph.csv").read_text().splitlines()
    assert lines[5].split(",")[:3] == ["1", "1.12", "10.50"]
    fields = lines[5].split(",")
    fields[2] = "1e6"
    lines[5] = ",".join(fields)
    (tmp_path / "theoph.csv").write_text("\n".join(lines) + "\n")
    return ode.read_events(tmp_path / "theoph.csv")


def test_outlying_observation_is_found_and_the_clean_tables_have_none(tmp_path):
    from invcal import ode
    from invcal.ode.screening import describe_outliers, outlying_observations

    found = outlying_observations(_theoph_with_outlier(tmp_path))
    assert [(o["row"], o["id"], o["time"], o["dv"]) for o in found] == [(5, 1, 1.12, 1e6)]
    assert "row 5 (ID 1, TIME 1.12): DV = 1e+06" in describe_outliers(found)
    # no false alarm on the shipped table, where concentrations span two decades
    assert outlying_observations(ode.read_events("problems/data/theoph.csv")) == []


@pytest.mark.slow
def test_fit_with_an_outlier_names_the_row(tmp_path):
    from invcal import ode
    from problems.hierarchical_ode import INIT, theophylline_model

    events = _theoph_with_outlier(tmp_path)
    with (
        pytest.warns(UserWarning, match=r"row 5 \(ID 1, TIME 1.12\): DV = 1e\+06"),
        pytest.raises(RuntimeError, match=r"not finite .*row 5 \(ID 1, TIME 1.12\)") as e,
    ):
        ode.fit_population(theophylline_model(), events, init=INIT)
    assert "ODE solve failed" not in str(e.value)


# --------------------------------------------------------------------------------------
# 6. SIGKILL at random points, then --resume until done: the uninterrupted trajectory
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "hoag", "secant", "rtho"])
def test_killed_runs_resume_to_the_uninterrupted_trajectory(tmp_path, optimizer):
    """Kill `invcal run` (SIGKILL: no handler, no clean-up) at random moments, resume it
    each time until it finishes: every step recorded once, none lost beyond the one in
    progress, results.json always strict JSON, and θ equal to an uninterrupted run's."""
    import signal
    import time

    steps = 12
    base = [sys.executable, "-m", "invcal", "run", "logreg_l2", "--steps", str(steps)]
    base += ["--optimizer", optimizer, "--no-landscape", "--no-progress"]
    ref_dir = tmp_path / "ref"
    subprocess.run([*base, "--out", str(ref_dir)], env=_env(), check=True, capture_output=True)
    ref = json.loads((ref_dir / "results.json").read_text())

    out = tmp_path / "killed"
    rng = np.random.default_rng(abs(hash(optimizer)) % 2**32)
    kills = 0
    for attempt in range(12):
        cmd = [*base, "--out", str(out), *(["--resume"] if out.exists() else [])]
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if attempt < 4:  # four kills at random moments, then let it finish
            time.sleep(float(rng.uniform(1.0, 6.0)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        if (out / "results.json").exists():
            saved = json.loads((out / "results.json").read_text())  # strict JSON, whole
            assert [r["step"] for r in saved["history"]] == list(range(len(saved["history"])))
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert proc.returncode == 0 and kills >= 1, (proc.returncode, kills)
    got = json.loads((out / "results.json").read_text())
    assert len(got["history"]) == len(ref["history"]) == steps
    z_ref = np.array([r["z"] for r in ref["history"]])
    z_got = np.array([r["z"] for r in got["history"]])
    np.testing.assert_allclose(z_got, z_ref, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------------------
# An unconverged population fit is never returned silently
# --------------------------------------------------------------------------------------
def test_unconverged_population_fit_warns_or_records():
    import warnings

    from invcal import ode
    from problems.hierarchical_ode import INIT, load_theoph, theophylline_model

    model, events = theophylline_model(), load_theoph(subjects=4)
    kw = dict(init=INIT, max_iter=2)
    with pytest.warns(ode.FitNotConvergedWarning, match="max_iter reached after 2 iterations"):
        fit = ode.fit_population(model, events, **kw)
    assert not fit.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error", ode.FitNotConvergedWarning)
        assert not ode.fit_population(model, events, on_failure="record", **kw).converged
    with pytest.raises(ValueError, match="on_failure must be one of"):
        ode.fit_population(model, events, init=INIT, on_failure="ignore")


@pytest.mark.slow
def test_unconverged_population_fit_raises_keeping_its_estimates(tmp_path):
    import warnings

    from invcal import ode
    from problems.hierarchical_ode import INIT, load_theoph, theophylline_model

    model, events = theophylline_model(), load_theoph(subjects=4)
    with pytest.raises(ode.FitNotConverged, match=r"estimates so far: .*results\.json"):
        ode.fit_population(
            model, events, init=INIT, max_iter=2, out=tmp_path / "r", on_failure="raise"
        )
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["history"]  # the estimates so far are kept, resumable
    with warnings.catch_warnings():
        warnings.simplefilter("error", ode.FitNotConvergedWarning)
        assert ode.fit_population(model, events, init=INIT).converged  # converged: silent
