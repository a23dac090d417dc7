"""fit_population(out=DIR) writes DIR/results.json after every outer iteration, and a fit
stopped after k iterations continues with resume=True to the estimates of an uninterrupted
fit (to 1e-8). The fit is stopped by raising from its progress callback, which the host
calls where the compiled loop pauses, right after the iteration's results.json is written,
as a killed process would stop there."""

import json

import numpy as np
import pytest

from invcal import ode
from invcal.runfolder import RunFolderError
from invcal.testing import count_compilations
from problems.hierarchical_ode import INIT, load_theoph, theophylline_model


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def theoph():
    return theophylline_model(), load_theoph()


def _stop_after(k, seen):
    def progress(algorithm, iteration, objective):
        seen.append((algorithm, iteration, objective))
        if iteration >= k:
            raise Stop(f"stopped after iteration {iteration}")

    return progress


def _vector(fit):
    return np.array([fit.theta[k] for k in sorted(fit.theta)])


# the default leg resumes a fit in the SIGKILL test (a fresh process, below); these two
# in-process variants (both algorithms) run in the slow leg, to keep the default run short
@pytest.mark.slow
@pytest.mark.parametrize("algorithm, k", [("lbfgs", 4), ("lindstrom-bates", 2)])
def test_stopped_fit_resumes_to_the_uninterrupted_estimates(tmp_path, theoph, algorithm, k):
    model, events = theoph
    ref = ode.fit_population(model, events, init=INIT, algorithm=algorithm)
    assert ref.iterations > k  # the stop falls inside the fit
    seen = []
    with pytest.raises(Exception, match="stopped after iteration"):
        ode.fit_population(
            model,
            events,
            init=INIT,
            algorithm=algorithm,
            out=tmp_path,
            progress=_stop_after(k, seen),
        )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "fit_population" and saved["finished"] is False
    assert saved["state"]["phase"] == algorithm
    assert saved["history"][-1]["iteration"] == k
    rows = saved["history"]
    assert [r["value"] for r in rows] == pytest.approx([f for _, _, f in seen], rel=1e-15)
    assert set(rows[-1]["theta"]) == set(ref.theta)

    fit = ode.fit_population(
        model, events, init=INIT, algorithm=algorithm, out=tmp_path, resume=True
    )
    np.testing.assert_allclose(_vector(fit), _vector(ref), rtol=1e-8, atol=1e-8)
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-10)
    assert fit.iterations == ref.iterations
    done = json.loads((tmp_path / "results.json").read_text())
    assert done["finished"] is True
    assert done["result"]["theta"] == pytest.approx(fit.theta, rel=1e-12)
    # the history continues where it stopped: one row per iteration, no repeats
    its = [r["iteration"] for r in done["history"]]
    assert its == sorted(its) and len(set(its)) == len(its)

    # resuming a finished fit runs no iteration and returns the same estimates
    again = ode.fit_population(
        model, events, init=INIT, algorithm=algorithm, out=tmp_path, resume=True
    )
    np.testing.assert_allclose(_vector(again), _vector(fit), rtol=1e-12, atol=1e-12)


def test_run_folder_rules(tmp_path, theoph):
    model, events = theoph
    with pytest.raises(ValueError, match="resume=True continues"):
        ode.fit_population(model, events, init=INIT, resume=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    with pytest.raises(RunFolderError, match="no invcal run wrote"):
        ode.fit_population(model, events, init=INIT, out=foreign, max_iter=1)
    run = tmp_path / "run"
    ode.fit_population(model, events, init=INIT, algorithm="lbfgs", out=run, max_iter=2)
    with pytest.raises(RunFolderError, match="holds a previous run"):
        ode.fit_population(model, events, init=INIT, algorithm="lbfgs", out=run, max_iter=2)
    with pytest.raises(ValueError, match="other settings.*approximation"):
        ode.fit_population(
            model, events, init=INIT, approximation="laplace", out=run, resume=True, max_iter=2
        )
    fit = ode.fit_population(
        model, events, init=INIT, algorithm="lbfgs", out=run, overwrite=True, max_iter=2
    )
    assert fit.iterations == 2
    # progress and results.json come from the host where the compiled loop pauses: the
    # program is the one of a fit without them (no host callback in it, so JAX's persistent
    # cache keeps it), and the same estimates
    seen = []
    with count_compilations() as c:
        again = ode.fit_population(
            model,
            events,
            init=INIT,
            algorithm="lbfgs",
            max_iter=2,
            on_failure="record",
            progress=lambda *row: seen.append(row),
        )
    assert c.total == 0, c.names
    assert [r[1] for r in seen] == [0, 1, 2]
    assert again.theta == fit.theta


KILLED = r"""
import json, os, signal, sys
from invcal import ode
from problems.hierarchical_ode import INIT, load_theoph, theophylline_model

def kill_after_4(algorithm, iteration, objective):
    if iteration >= 4:
        os.kill(os.getpid(), signal.SIGKILL)  # as a killed job: no cleanup, no exception

resume = sys.argv[2] == "resume"
fit = ode.fit_population(
    theophylline_model(), load_theoph(), init=INIT, algorithm="lbfgs", out=sys.argv[1],
    resume=resume, progress=None if resume else kill_after_4,
)
json.dump({"theta": fit.theta, "iterations": fit.iterations}, sys.stdout)
"""


def test_sigkilled_fit_in_a_fresh_process_resumes(tmp_path, theoph):
    """JAX's defaults (x64 off) in fresh processes: the first is killed by SIGKILL after
    iteration 4, the second resumes from results.json to the uninterrupted estimates."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("JAX_ENABLE_X64", None)
    out = str(tmp_path / "run")
    first = subprocess.run(
        [sys.executable, "-c", KILLED, out, "start"], env=env, capture_output=True, text=True
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["finished"] is False and saved["history"][-1]["iteration"] == 4
    second = subprocess.run(
        [sys.executable, "-c", KILLED, out, "resume"], env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json.loads(second.stdout)
    model, events = theoph
    ref = ode.fit_population(model, events, init=INIT, algorithm="lbfgs")
    assert resumed["iterations"] == ref.iterations
    got = np.array([resumed["theta"][k] for k in sorted(ref.theta)])
    np.testing.assert_allclose(got, _vector(ref), rtol=1e-8, atol=1e-8)


CACHED = r"""
import sys
from invcal import ode
from problems.hierarchical_ode import INIT, load_theoph, theophylline_model

rows = []
model, events = theophylline_model(), load_theoph()
ode.fit_population(model, events, init=INIT, progress=lambda *r: rows.append(r))
assert rows, "no progress reported"
"""


@pytest.mark.slow
def test_a_fit_with_progress_is_kept_by_the_persistent_cache(tmp_path):
    """The fit's compiled loop holds no host callback (JAX's persistent cache refuses those):
    a fresh process fitting Theoph with a progress callable leaves the Lindstrom-Bates loop
    in the cache (before, only fits without progress were cached: 40 s vs 9 s to compile)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", CACHED], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(name.startswith("jit__lb_steps-") for name in cached), cached
