"""The default-configuration leg, command line and fresh processes: ``invcal check`` of every
problem at small size with JAX's defaults (64-bit mode off), and new Python processes with no
x64 setting at all (the README's example, the estimators, ``invcal run``). The in-process
entry points are in ``test_default_config.py``."""

import json
import os
import subprocess
import sys

import jax
import pytest

# the leg's autouse fixture (x64 off around each test) and the README's code block
from test_default_config import _readme_code, default_config  # noqa: F401

from invcal import cli

# --------------------------------------------------------------------------------------
# The command line (float64, scoped) at small sizes
# --------------------------------------------------------------------------------------
# Every method of each problem at a small size. theophylline's check compiles its three
# implicit methods and the finite differences through the ODE solves (about 100 s on two
# cores even at 4 subjects), so it runs in the slow leg; the default leg fits Theoph with
# fit_population above.
CHECKS = {
    "logreg_l2": [],
    "gdm_schedule": [],
    "bpdn": ["-o", "small=true"],
    "split_bregman_tv": ["-o", "size=32"],
    "elastic_net_imaging": ["-o", "size=32", "-o", "levels=2"],
}
SLOW_CHECKS = {"theophylline": ["theophylline", "-o", "subjects=4"]}


def _check_rows(argv, capsys):
    assert cli.main(["check", *argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows
    for r in rows:
        assert r["converged"], r
        # truncated back-propagation is a biased estimate by design (Shaban et al. 2019)
        if not r["method"].startswith("truncated"):
            assert r["relative_error"] < 1e-4, r
    assert not jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_cli_check_every_method(name, capsys):
    _check_rows([name, *CHECKS[name]], capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CHECKS))
def test_cli_check_every_method_slow(name, capsys):
    _check_rows(SLOW_CHECKS[name], capsys)
    assert not jax.config.read("jax_enable_x64")


# --------------------------------------------------------------------------------------
# Fresh processes: nothing switched on
# --------------------------------------------------------------------------------------
def _fresh(code: str, tmp_path, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=timeout,
    )


def test_fresh_process_readme_example_and_flag_untouched(tmp_path):
    code = (
        "import jax\n"
        + _readme_code()
        + "\nassert not jax.config.read('jax_enable_x64'), 'the global flag was changed'\n"
        "from sklearn.datasets import load_diabetes\n"
        "from invcal.sklearn import BilevelLassoCV\n"
        "m = BilevelLassoCV().fit(*load_diabetes(return_X_y=True))\n"
        "assert not jax.config.read('jax_enable_x64')\n"
        "print('alpha', m.alpha_)\n"
    )
    r = _fresh(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lam = float(r.stdout.split("'lam': array(")[1].split(")")[0])
    assert lam == pytest.approx(1.36e-4, rel=0.03)
    assert float(r.stdout.split("alpha ")[1]) > 0


@pytest.mark.parametrize(
    "name,args",
    [
        ("logreg_l2", ["--steps", "3"]),
        ("split_bregman_tv", ["--steps", "2", "-o", "size=32", "--no-landscape"]),
    ],
)
def test_fresh_process_invcal_run(name, args, tmp_path):
    code = "import sys; from invcal.cli import main; sys.exit(main(sys.argv[1:]))"
    r = _fresh(code, tmp_path, "run", name, "--out", "out", "--no-progress", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["history"]) >= 2
    assert (tmp_path / "out" / "report.md").exists()
