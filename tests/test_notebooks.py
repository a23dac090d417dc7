"""Every notebook in notebooks/ runs top to bottom (at small size), so none of them rots."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Slow leg: seed_adjoint compiles two hypergradient programs (adjoint and forward) even at
# its small size, 61 s at load 4 of which 35 s compiling; the default run has no room for it.
# Its outputs are stored, and tests/test_petab.py checks the adjoint sensitivities.
_SLOW = {"seed_adjoint"}
_PARAMS = [
    pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in _SLOW else [])
    for p in NOTEBOOKS
]


@pytest.mark.parametrize("path", _PARAMS)
def test_notebook_executes(path, monkeypatch, tmp_path):
    # Notebooks read INVCAL_SMALL to shrink their problems; outputs go to a temp dir.
    monkeypatch.setenv("INVCAL_SMALL", "1")
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("INVCAL_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
