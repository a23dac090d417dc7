"""The package boundary: ``import invcal`` never imports ``problems``, and the public API
is importable from the top level."""

import subprocess
import sys

import pytest

import invcal as ic

PUBLIC = [
    # strategies and entry points of the engine
    "Space",
    "Param",
    "Identity",
    "Log",
    "Softplus",
    "Bounded",
    "Problem",
    "FISTA",
    "FixedPointIteration",
    "FixedSteps",
    "Newton",
    "WorkingSetFISTA",
    "SplitBregman",
    "PopulationLM",
    "AbstractInnerSolver",
    "InnerSolution",
    "Implicit",
    "Unrolled",
    "ForwardUnrolled",
    "Truncated",
    "AbstractHypergradient",
    "NeumannSeries",
    "Hypergradient",
    "hypergradient",
    "solve",
    "Diagnostics",
    "OnFailure",
    "SolveResult",
    "HypergradientNotConverged",
    "check_hypergradient",
    # the outer loop
    "tune",
    "HOAG",
    "RTHO",
]


def test_import_does_not_import_problems():
    code = "import sys, invcal; assert 'problems' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name(name):
    assert hasattr(ic, name), f"invcal.{name} is not exported from invcal/__init__.py"
    assert name in ic.__all__


def test_all_names_resolve():
    missing = [name for name in ic.__all__ if not hasattr(ic, name)]
    assert not missing


def test_errors_are_the_documented_types():
    assert issubclass(ic.HypergradientNotConverged, RuntimeError)
    assert isinstance(ic.__version__, str)


def test_readme_api_example_runs_as_written(capsys):
    """The README's "API in ten lines" block, executed verbatim; its comment promises
    λ ≈ 1.4e-4 (the held-out optimum) and converged diagnostics."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert bool(scope["hg"].diagnostics.converged)
    assert float(scope["result"].theta["lam"]) == pytest.approx(1.4e-4, rel=0.05)
    assert capsys.readouterr().out.count("\n") == 2  # the two print lines
