"""Elastic-net image reconstruction: measurement operators, the inner FISTA problem, its
hypergradients against finite differences, the problem module and its input checks."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import invcal as ic
from invcal.imaging import (
    MSE,
    PSNR,
    SURE,
    Blur,
    ImagingData,
    Inpainting,
    SubsampledFourier,
    Wavelet,
    gaussian_kernel,
    load_images,
    random_mask,
    variable_density_mask,
)
from invcal.imaging import elastic_net as en
from invcal.testing import finite_difference, grad_z

SHAPE = (32, 24)


def _operators(shape=SHAPE, seed=0):
    return {
        "blur": Blur.from_kernel(gaussian_kernel(5, 1.2), shape),
        "inpainting": Inpainting(random_mask(shape, 0.5, seed)),
        "mri": SubsampledFourier(variable_density_mask(shape, 0.3, seed)),
    }


def _real_inner(a, b):
    return jnp.real(jnp.vdot(a, b))


@pytest.mark.parametrize("name", ["blur", "inpainting", "mri"])
def test_adjoints_to_1e10(name):
    op = _operators()[name]
    rng = np.random.default_rng(1)

    @jax.jit
    def gap(x, y):
        lhs = _real_inner(op.mv(x), y)
        return lhs, lhs - _real_inner(x, op.rmv(y))

    for _ in range(5):
        x = jnp.asarray(rng.normal(size=SHAPE))
        y = jnp.asarray(rng.normal(size=SHAPE))
        if name == "mri":
            y = y + 1j * jnp.asarray(rng.normal(size=SHAPE))
        lhs, d = gap(x, y)
        assert abs(float(d)) <= 1e-10 * max(1.0, abs(float(lhs)))
        assert op.rmv(y).dtype == jnp.float64


@pytest.mark.parametrize("name", ["inpainting", "mri"])
def test_masked_operators_have_norm_one_and_count_measurements(name):
    op = _operators()[name]
    M = np.asarray(
        jax.vmap(lambda e: op.rmv(op.mv(e.reshape(SHAPE))).ravel())(jnp.eye(np.prod(SHAPE)))
    )
    eig = np.linalg.eigvalsh((M + M.T) / 2)
    assert eig.max() == pytest.approx(1.0, abs=1e-12) and eig.min() > -1e-12
    kept = int(np.asarray(op.mask).sum())
    assert op.num_measurements == (kept if name == "inpainting" else 2 * kept)


def test_masks():
    m = random_mask((10, 20), 0.25, seed=3)
    assert m.shape == (10, 20) and m.sum() == 50
    assert (random_mask((10, 20), 0.25, seed=3) == m).all()
    k = variable_density_mask((32, 32), 0.25, seed=0)
    assert k.sum() == 256 and k[0, 0] and k[1, -1] and k[-1, 1]  # the centre is sampled
    with pytest.raises(ValueError, match="fraction must be in"):
        random_mask((4, 4), 0.0)
    with pytest.raises(ValueError, match="mask must be a 2-D"):
        Inpainting(np.ones(5, bool))
    with pytest.raises(ValueError, match="keeps no sample"):
        SubsampledFourier(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="boolean"):
        Inpainting(np.full((4, 4), 0.5))


# --------------------------------------------------------------------------------------
# The inner problem and its hypergradients
# --------------------------------------------------------------------------------------
N = 32
TRUTH = load_images(["camera", "text"], N)
TRANSFORM = Wavelet("db2", 3)
# Tight solves for the 1e-5 finite-difference comparison: ‖T(c) − c‖ ≤ 1e-13·√(coefficients).
TIGHT = ic.FISTA(tol=1e-13 * np.sqrt(TRUTH.size), max_steps=50_000)
CG = lx.CG(rtol=1e-10, atol=1e-14, max_steps=10_000)
THETA = {"lam1": 1e-2, "lam2": 1e-2}


def _problem(name, criterion=None, **kw):
    op = _operators((N, N))[name]
    y = en.observe(TRUTH, op, 0.02, seed=0)
    return en.elastic_net_problem(
        y, op, criterion=criterion or PSNR(), truth=TRUTH, transform=TRANSFORM, **kw
    )


def _optimality_gap(pb, c, theta):
    """max violation of the elastic-net optimality conditions in the wavelet domain:
    ∇f(c) + λ₂c = −λ₁ w sign(c) on the support, |∇f(c)| ≤ λ₁w off it."""
    op, W, w = pb.data.operator, TRANSFORM, pb.data.weights
    grad = jax.vmap(lambda c1, y1: W.forward(op.rmv(op.mv(W.inverse(c1)) - y1)))(c, pb.data["y"])
    grad = grad + theta["lam2"] * c
    on = c != 0
    thr = theta["lam1"] * jnp.broadcast_to(w, c.shape)
    on_gap = jnp.max(jnp.where(on, jnp.abs(grad + thr * jnp.sign(c)), 0.0))
    off_gap = jnp.max(jnp.where(on, 0.0, jnp.abs(grad) - thr))
    return float(jnp.maximum(on_gap, off_gap)), np.asarray(on)


# Inpainting runs by default; blur and MRI compile their own solves (~15 s each): slow.
FD_CASES = [
    pytest.param("blur", marks=pytest.mark.slow),
    "inpainting",
    pytest.param("mri", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", FD_CASES)
def test_hypergradient_matches_central_differences(name):
    # both λ at once, restricted to the active wavelet coefficients, reverse mode
    pb = _problem(name)
    hg = ic.hypergradient(pb, THETA, solver=TIGHT, method=ic.Implicit(CG, active_set=True))
    g = np.asarray(grad_z(pb, pb.space.validate(THETA), hg.grad))
    fd = finite_difference(pb, THETA, solver=TIGHT, eps=1e-5)
    assert np.linalg.norm(g - fd) <= 1e-5 * np.linalg.norm(fd), (g, fd)
    assert np.all(np.abs(fd) > 1e-4)  # a real signal in both entries
    d = hg.diagnostics
    assert bool(d.linear_converged) and int(d.linear_steps) > 1
    # the solution is the elastic-net minimizer, with the unpenalized coarse block active
    gap, on = _optimality_gap(pb, hg.x, THETA)
    assert gap <= 1e-10 and on[:, :4, :4].all() and 0.05 < on.mean() < 0.95


def test_forward_mode_equals_reverse_mode():
    pb = _problem("inpainting")
    rev = ic.hypergradient(pb, THETA, solver=TIGHT, method=ic.Implicit(CG, active_set=True))
    fwd = ic.hypergradient(
        pb, THETA, solver=TIGHT, method=ic.Implicit(CG, active_set=True, mode="forward")
    )
    g_rev = np.array([rev.grad["lam1"], rev.grad["lam2"]])
    g_fwd = np.array([fwd.grad["lam1"], fwd.grad["lam2"]])
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-8)


@pytest.mark.slow  # ~25 s: reverse mode through 1500 checkpointed FISTA steps
@pytest.mark.parametrize("name", ["inpainting", "mri"])
def test_unrolled_reverse_mode_agrees_with_implicit(name):
    pb = _problem(name)
    rev = ic.hypergradient(pb, THETA, solver=TIGHT, method=ic.Implicit(CG, active_set=True))
    unr = ic.hypergradient(
        pb,
        THETA,
        solver=ic.FISTA(tol=1e-12, max_steps=1500),
        method=ic.Unrolled(1500),
        on_failure="record",
    )
    g_rev = np.array([rev.grad["lam1"], rev.grad["lam2"]])
    g_unr = np.array([unr.grad["lam1"], unr.grad["lam2"]])
    np.testing.assert_allclose(g_unr, g_rev, rtol=1e-6)


def test_sure_tracks_the_prediction_risk():
    op = _operators((N, N))["blur"]
    sigma = 0.05
    y = en.observe(TRUTH[:1], op, sigma, seed=3)
    pb = en.elastic_net_problem(y, op, criterion=SURE(sigma), transform=TRANSFORM)
    th = {k: jnp.asarray(v) for k, v in THETA.items()}
    sol = TIGHT.solve(pb, pb.x0, th)
    value = float(pb.criterion(sol.x, th, pb.data))
    u = TRANSFORM.inverse(sol.x[0])
    risk = float(jnp.mean((op.mv(u) - op.mv(jnp.asarray(TRUTH[0]))) ** 2))
    # one Monte-Carlo probe, 1024 measurements: agreement to a fraction of σ²
    assert abs(value - risk) < 0.3 * sigma**2, (value, risk)


def test_the_problem_data_is_typed():
    op = _operators((N, N))["inpainting"]
    y = en.observe(TRUTH[:1], op, 0.05, seed=3)
    pb = en.elastic_net_problem(y, op, criterion=SURE(0.05), transform=TRANSFORM)
    data = pb.data
    assert isinstance(data, ImagingData) and data.operator is op and data.basis == TRANSFORM
    assert data.y.shape == (2, N, N) and data["y"] is data.y  # the pair y, y + εδ
    assert sorted(data) == sorted(["operator", "basis", "y", "step", "weights", "sure_probes"])
    probes = data["sure_probes"]
    assert int(probes.measurements) == int(np.sum(op.mask))  # the kept pixels
    np.testing.assert_allclose(data.y[1] - data.y[0], probes.eps * probes.delta, atol=1e-12)
    for old, new in (("op", "operator"), ("transform", "basis")):
        with pytest.raises(KeyError, match=f"now the field '{new}'"):
            data[old]
    truth_pb = en.elastic_net_problem(y, op, criterion=PSNR(), truth=TRUTH[:1], transform=TRANSFORM)
    assert sorted(truth_pb.data.extra) == ["truth"]


# --------------------------------------------------------------------------------------
# Clear errors before any solve
# --------------------------------------------------------------------------------------
def test_bad_inputs_raise_before_solving():
    op = _operators((N, N))["inpainting"]
    y = en.observe(TRUTH, op, 0.02)
    with pytest.raises(ValueError, match=r"observed\[1\] has shape \(16, 32\)"):
        en.elastic_net_problem(
            [y[0], y[1][:16]], op, criterion=PSNR(), truth=TRUTH, transform=TRANSFORM
        )
    with pytest.raises(ValueError, match=r"truth\[1\] has shape"):
        en.elastic_net_problem(
            y, op, criterion=PSNR(), truth=[TRUTH[0], TRUTH[1][:, :8]], transform=TRANSFORM
        )
    nan = np.array(TRUTH)
    nan[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"truth\[1\] contains NaN"):
        en.elastic_net_problem(y, op, criterion=PSNR(), truth=nan, transform=TRANSFORM)
    with pytest.raises(ValueError, match=r"observed\[1\] contains NaN"):
        en.elastic_net_problem(nan, op, criterion=PSNR(), truth=TRUTH, transform=TRANSFORM)
    wrong = Inpainting(random_mask((N, N + 8), 0.5))
    with pytest.raises(ValueError, match=r"Inpainting mask has shape \(32, 40\) but the images"):
        en.elastic_net_problem(y, wrong, criterion=PSNR(), truth=TRUTH, transform=TRANSFORM)
    with pytest.raises(ValueError, match="sigma > 0"):
        SURE(-0.1)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        en.observe(TRUTH, op, -0.1)
    with pytest.raises(ValueError, match="needs truth="):
        en.elastic_net_problem(y, op, criterion=MSE(), transform=TRANSFORM)
    with pytest.raises(ValueError, match="lam2 must be a finite number > 0"):
        en.elastic_net_problem(y, op, criterion=MSE(), truth=TRUTH, lam2=0.0)
    with pytest.raises(ValueError, match="divisible by 2\\^levels = 64"):
        en.elastic_net_problem(y, op, criterion=MSE(), truth=TRUTH, transform=Wavelet("db2", 6))
    with pytest.raises(ValueError, match="SURE tunes one image"):
        en.elastic_net_problem(y, op, criterion=SURE(0.02), transform=TRANSFORM)
    with pytest.raises(TypeError, match="operator must be an image operator"):
        en.elastic_net_problem(y, np.eye(3), criterion=PSNR(), truth=TRUTH)


# --------------------------------------------------------------------------------------
# The problem module and the command line
# --------------------------------------------------------------------------------------
SMALL = {"size": 32, "train": "camera,text", "validation": "clock"}


@pytest.fixture
def registered(monkeypatch):
    """The entry point, as pyproject.toml declares it, without reinstalling the package."""
    import importlib.metadata as md

    import invcal.catalog as catalog

    entries = catalog._entries()
    entries["elastic_net_imaging"] = md.EntryPoint(
        name="elastic_net_imaging",
        value="problems.elastic_net_imaging:setup",
        group=catalog.GROUP,
    )
    monkeypatch.setattr(catalog, "_entries", lambda: entries)


def test_setup_defaults_and_options():
    from invcal.catalog import Setup
    from problems import elastic_net_imaging as eni

    s = eni.setup(**SMALL)
    assert isinstance(s, Setup)
    assert s.description.startswith("Elastic-net wavelet reconstruction")
    assert s.problem.space.names == ("lam1", "lam2") and s.problem.x0.shape == (2, 32, 32)
    assert set(s.methods) == {"implicit", "implicit-forward", "unrolled"}
    assert s.method.active_set and s.solver_for("unrolled").max_steps == eni.UNROLL
    for op, kind in (("inpainting", Inpainting), ("mri", SubsampledFourier)):
        assert isinstance(eni.setup(**SMALL, operator=op).problem.data.operator, kind)
    sure = eni.setup(**SMALL, criterion="sure", image="text", sigma="0.05")
    assert (
        sure.problem.x0.shape == (2, 32, 32)
        and float(sure.problem.data["sure_probes"].sigma) == 0.05
    )


@pytest.mark.parametrize(
    "options,match",
    [
        ({"colour": "red"}, "unknown option"),
        ({"operator": "ct"}, "operator must be one of"),
        ({"criterion": "sure", "image": "clock"}, "image must be one of the training images"),
        ({"sigma": -0.1}, "sigma must be a finite number > 0"),
        ({"lam1": 0}, "lam1 must be a finite number > 0"),
        ({"wavelet": "sym8"}, "wavelet name must be"),
        ({"size": 40}, "divisible by 2\\^levels = 16"),
    ],
)
def test_setup_rejects_bad_options(options, match):
    from problems import elastic_net_imaging as eni

    with pytest.raises(ValueError, match=match):
        eni.setup(**{**SMALL, **options})


@pytest.mark.slow  # ~40 s: three outer steps, the figures' reconstructions and a 3×3 landscape
def test_command_line_run_writes_the_figures(registered, tmp_path, capsys):
    import json

    from invcal.cli import main

    out = tmp_path / "run"
    args = ["run", "elastic-net-imaging", "--steps", "3", "--out", str(out), "--no-progress"]
    for k, v in {**SMALL, "operator": "inpainting", "landscape_points": 3}.items():
        args += ["-o", f"{k}={v}"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    for f in ("elastic_net_images.png", "elastic_net_landscape.png"):
        assert f in report and (out / f).stat().st_size > 1000
    extra = json.loads((out / "results.json").read_text())["extra"]
    assert extra["validation_psnr_learned"] > 15 and len(extra["validation_landscape"]["psnr"]) == 3
    assert "theta: lam1=" in capsys.readouterr().out


def test_validation_landscape_records_rows_and_resumes(tmp_path):
    import json

    from problems import elastic_net_imaging as eni

    data = eni.load_data(operator="inpainting", size=16, train=["camera"], validation=["clock"])
    l1s, l2s = np.geomspace(1e-3, 1e-1, 3), np.geomspace(1e-4, 1e-2, 2)
    record = tmp_path / "oracle.json"
    full = eni.landscape(data, l1s, l2s, levels=2, record=record)
    saved = json.loads(record.read_text())
    assert saved["rows"] == full.tolist()
    # a run stopped after its first row (marked so that a recomputed row would show)
    record.write_text(json.dumps({"axes": saved["axes"], "rows": [[-1.0, -2.0]]}))
    resumed = eni.landscape(data, l1s, l2s, levels=2, record=record)
    assert resumed[0].tolist() == [-1.0, -2.0]  # the finished row is read, not recomputed
    np.testing.assert_allclose(resumed[1:], full[1:], atol=1e-3)  # cold vs warm starts
    other = eni.landscape(data, l1s[:2], l2s, levels=2, record=record)  # other axes: afresh
    np.testing.assert_allclose(other, full[:2], atol=1e-3)


def test_forward_mode_converges_on_the_blur_setup():
    # ∂F/∂λ₁ is exactly 0 on the unpenalized coarse coefficients (w = 0), where lineax's
    # elementwise stopping test became the absolute |r_i| <= atol = 1e-14, below the rounding
    # floor of the matrix-free operator: CG ran on, broke down and returned NaN after 9126
    # steps while reverse mode converged in ~320.
    from problems import elastic_net_imaging as m

    s = m.setup(size=32)
    theta = s.problem.space.init()
    with jax.enable_x64(True):
        from invcal.precision import to_float64

        pb = to_float64(s.problem)
        out = {
            name: ic.hypergradient(pb, theta, solver=s.solver, method=s.methods[name])
            for name in ("implicit", "implicit-forward")
        }
    fwd = out["implicit-forward"].diagnostics
    assert bool(fwd.linear_converged) and int(fwd.linear_steps) < 1000
    g = {k: np.array([h.grad["lam1"], h.grad["lam2"]]) for k, h in out.items()}
    np.testing.assert_allclose(g["implicit-forward"], g["implicit"], rtol=1e-8)
