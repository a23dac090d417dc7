"""problems.split_bregman_tv: the Setup the command line runs, its options and its figures."""

import importlib.metadata as md

import numpy as np
import pytest

import invcal as ic
import invcal.catalog as catalog
from invcal.catalog import Setup
from invcal.imaging import BlockWeights
from problems import split_bregman_tv as sbtv

SMALL = {"size": 16, "train": "camera,text", "validation": "clock"}


@pytest.fixture
def registered(monkeypatch):
    """The entry point, as pyproject.toml declares it, without reinstalling the package."""
    entries = catalog._entries()
    entries["split_bregman_tv"] = md.EntryPoint(
        name="split_bregman_tv", value="problems.split_bregman_tv:setup", group=catalog.GROUP
    )
    monkeypatch.setattr(catalog, "_entries", lambda: entries)


def test_setup_defaults_and_description():
    s = sbtv.setup(**SMALL)
    assert isinstance(s, Setup)
    assert s.description.startswith("TV denoising of scikit-image photos by Split Bregman")
    assert s.problem.x0.u.shape == (2, 16, 16) and s.problem.space.names == ("weight",)
    assert set(s.methods) == {"implicit", "implicit-neumann", "unrolled", "truncated-100"}
    assert s.solver_for("unrolled").max_steps == 3000
    huber = sbtv.setup(**SMALL, huber=0.01)
    assert huber.problem.objective is not None and "huber-implicit-cg" in huber.methods


@pytest.mark.slow  # ~20 s: compiles a block-weights hypergradient and the figures' solves
def test_command_line_run_writes_the_tv_figures(registered, tmp_path, capsys):
    from invcal.cli import main

    out = tmp_path / "run"
    args = ["run", "split-bregman-tv", "--steps", "2", "--out", str(out), "--no-progress"]
    for k, v in {**SMALL, "weights": "blocks", "blocks": 2}.items():
        args += ["-o", f"{k}={v}"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "tv_images.png" in report and "tv_weight_map.png" in report
    assert (out / "tv_images.png").exists() and (out / "tv_weight_map.png").exists()
    assert "theta: weight=array(2, 2)" in capsys.readouterr().out


@pytest.mark.slow  # ~15 s
def test_scalar_run_improves_training_psnr_and_plots_the_curve(tmp_path):
    s = sbtv.setup(**SMALL)
    res = ic.tune(
        s.problem, solver=s.solver, method=s.method, optimizer="adam", learning_rate=0.2, steps=3
    )
    assert res.history[-1]["value"] < res.history[0]["value"]  # −PSNR goes down
    figures = s.extra_report(res, tmp_path)
    assert [f for _, f in figures] == ["tv_images.png", "tv_psnr_curve.png"]
    assert all((tmp_path / f).stat().st_size > 1000 for _, f in figures)


def test_denoise_helper_uses_the_layout():
    data = sbtv.load_data(**SMALL)
    layout = BlockWeights(2, 2)
    out = sbtv.denoise(data["noisy_val"], {"weight": np.full((2, 2), 0.05)}, layout=layout)
    ref = sbtv.denoise(data["noisy_val"], {"weight": 0.05})
    np.testing.assert_allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"colour": "red"}, "unknown option"),
        ({"norm": "l1"}, "norm must be one of"),
        ({"weights": "pixels"}, "weights must be one of"),
        ({"weights": "directional", "norm": "isotropic"}, "need anisotropic TV"),
        ({"criterion": "sure", "image": "clock"}, "image must be one of the training images"),
        ({"criterion": "ssim"}, "criterion must be one of"),
        ({"sigma": 0}, "sigma must be a finite number > 0"),
        ({"size": 4}, "size must be an integer >= 8"),
        ({"blocks": 0}, "blocks must be an integer >= 1"),
        ({"train": ""}, "needs at least one image"),
        ({"train": "lena"}, "unknown image 'lena'"),
        ({"huber": -1.0}, "huber must be a finite number > 0"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        sbtv.setup(**{**SMALL, **options})
