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
    "AbstractInnerSolver",
    "InnerSolution",
    "Implicit",
    "Unrolled",
    "ForwardUnrolled",
    "Truncated",
    "AbstractHypergradient",
    "Neumann",
    "Hypergradient",
    "hypergradient",
    "solve",
    "Diagnostics",
    "OnFailure",
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
