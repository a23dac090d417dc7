"""Split Bregman TV (invcal.imaging.bregman, re-exported by invcal.imaging): shrinkages,
agreement with an independent solver and with scikit-image, and hypergradients of the TV
weights against finite differences."""

import functools

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import invcal as ic
from invcal.imaging import Blur, Neumann, Periodic, add_noise, gaussian_kernel, load_image
from invcal.imaging.bregman import (
    Anisotropic,
    GaussSeidel,
    Isotropic,
    SpectralSolve,
    SplitBregman,
    split_bregman,
)
from invcal.imaging.metrics import mse, psnr
from invcal.imaging.tuning import MSE, PSNR, SURE, tv_problem
from invcal.imaging.weights import BlockWeights, DirectionalWeights
from invcal.prox import prox_huber, prox_huber_vector, soft_threshold, vector_shrink
from invcal.testing import grad_z


# --------------------------------------------------------------------------------------
# Shrinkages: optimality conditions of the proximal maps, and no NaN at 0
# --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    v=st.lists(st.floats(-3, 3), min_size=2, max_size=2),
    t=st.floats(1e-3, 2.0),
    eps=st.floats(1e-3, 1.0),
)
def test_shrinkages_satisfy_their_prox_optimality_conditions(v, t, eps):
    v = np.asarray(v)[:, None]  # a (2, 1) "field": one pixel, two components
    # soft threshold: v − z ∈ t ∂|z| componentwise
    z = np.asarray(soft_threshold(jnp.asarray(v), t))
    for vi, zi in zip(v.ravel(), z.ravel(), strict=True):
        if zi != 0:
            assert abs(vi - zi - t * np.sign(zi)) < 1e-12
        else:
            assert abs(vi) <= t + 1e-12
    # vector shrink: v − z ∈ t ∂‖z‖₂
    z = np.asarray(vector_shrink(jnp.asarray(v), t))
    nz = np.linalg.norm(z)
    if nz > 0:
        np.testing.assert_allclose(v - z, t * z / nz, atol=1e-12)
    else:
        assert np.linalg.norm(v) <= t + 1e-12
    # Huber proxes: v − z = t h_ε'(z) (scalar: componentwise; vector: on the norm)
    hp = np.clip(z := np.asarray(prox_huber(jnp.asarray(v), t, eps)), -eps, eps) / eps
    np.testing.assert_allclose(v - z, t * hp, atol=1e-12)
    z = np.asarray(prox_huber_vector(jnp.asarray(v), t, eps))
    nz = np.linalg.norm(z)
    grad = z / max(nz, eps)
    np.testing.assert_allclose(v - z, t * grad, atol=1e-12)


def test_shrinkage_derivatives_are_finite_at_zero():
    zero = jnp.zeros((2, 3, 3))
    for fn in (
        lambda v: vector_shrink(v, 0.1),
        lambda v: soft_threshold(v, 0.1),
        lambda v: prox_huber_vector(v, 0.1, 0.01),
    ):
        jac = jax.jit(jax.jacfwd(fn))(zero)
        assert np.all(np.isfinite(jac))
        assert np.all(np.isfinite(jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))(zero)))
    for norm in (Isotropic(), Anisotropic()):
        for huber in (None, 0.01):
            g = jax.jit(jax.grad(lambda v: norm.value(v, 0.1, huber)))(zero)
            assert np.all(np.isfinite(g))
            if isinstance(norm, Isotropic) or huber is not None:
                assert np.all(g == 0)


def test_isotropic_shrink_is_the_vector_shrinkage():
    # Isotropic.shrink writes the norm over the two components out (XLA's CPU reduction over
    # the leading axis is 80× slower); it must be invcal.prox's shrinkage, value for value
    v = jnp.asarray(np.random.default_rng(0).normal(size=(2, 17, 13)))
    v = v.at[:, 3, 4].set(0.0)
    for t in (0.05, 0.5, jnp.full((17, 13), 0.3)):
        np.testing.assert_array_equal(Isotropic().shrink(v, t, None), vector_shrink(v, t))
        np.testing.assert_allclose(
            Isotropic().shrink(v, t, 0.01), prox_huber_vector(v, t, 0.01), rtol=1e-15
        )
    batch = jnp.stack([v, 2 * v])  # under vmap (a batch axis in front of the components)
    out = jax.vmap(lambda x: Isotropic().shrink(x, 0.5, None))(batch)
    np.testing.assert_array_equal(out[1], vector_shrink(2 * v, 0.5))
    g = jax.grad(lambda x: jnp.sum(Isotropic().shrink(x, 0.1, None)))(jnp.zeros((2, 3, 3)))
    assert np.all(g == 0)


def test_split_bregman_step_has_finite_derivative_on_a_flat_image():
    # a constant image: ∇u = 0 and b = 0, so every shrinkage sees exactly v = 0
    method = SplitBregman(Isotropic())
    f = jnp.full((6, 6), 0.5)
    state = method.init(f)

    def out(w):
        s = method.step(state, f, w)
        return jnp.sum(s.u) + jnp.sum(s.d) + jnp.sum(s.b)

    assert np.isfinite(float(jax.jit(jax.grad(out))(0.1)))
    assert np.isfinite(float(jax.jit(jax.jacfwd(out))(0.1)))


# --------------------------------------------------------------------------------------
# An independent solver: Chambolle & Pock (2011) primal–dual, as an oracle
# --------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("iso", "boundary", "steps"))
def _chambolle_pock(f, w, *, iso, boundary, steps, blur=None):
    """min_u TV_w(u) + ½‖Ku − f‖² by PDHG with y ∈ {|y| ≤ w} (dual of TV)."""
    grad, div = boundary.gradient, boundary.divergence
    tau = sigma = 1.0 / np.sqrt(8.0)
    K = (lambda u: u) if blur is None else blur.mv
    if blur is None:

        def prox_g(v, tau):
            return (v + tau * f) / (1.0 + tau)

    else:
        otf2 = jnp.abs(blur.otf) ** 2
        ktf = blur.rmv(f)

        def prox_g(v, tau):
            return jnp.fft.irfft2(jnp.fft.rfft2(v + tau * ktf) / (1 + tau * otf2), s=f.shape)

    def project(y):
        if iso:
            n = jnp.sqrt(jnp.sum(y * y, axis=0))
            return y / jnp.maximum(1.0, n / w)
        return jnp.clip(y, -w, w)

    def body(_, c):
        u, ubar, y, tau, sigma = c
        y = project(y + sigma * grad(ubar))
        u_new = prox_g(u + tau * div(y), tau)
        # accelerated variant (Algorithm 2) for the 1-strongly convex denoising fidelity
        theta = 1.0 / jnp.sqrt(1.0 + 2.0 * tau) if blur is None else 1.0
        ubar = u_new + theta * (u_new - u)
        return u_new, ubar, y, tau * theta, sigma / theta

    del K
    y0 = jnp.zeros((2,) + f.shape)
    c = jax.lax.fori_loop(0, steps, body, (f, f, y0, tau, sigma))
    return c[0]


@pytest.fixture(scope="module")
def small_noisy():
    truth = load_image("camera", 24)
    return jnp.asarray(add_noise(truth, 0.1, seed=0)), jnp.asarray(truth)


def _duality_gap(method, u, b, f, w):
    """P(u) − D(p) for the ROF denoising energy P and its dual
    D(p) = ½‖f‖² − ½‖f − ∇ᵀp‖² over {|p| ≤ w}, at p = ρb projected on that set. It bounds
    ½‖u − u*‖² from above: a certificate that needs no reference solution."""
    p = method.penalty * b
    if isinstance(method.norm, Isotropic):
        p = p / jnp.maximum(1.0, jnp.sqrt(jnp.sum(p * p, axis=0)) / w)
    else:
        p = jnp.clip(p, -w, w)
    r = f + method.boundary.divergence(p)  # f − ∇ᵀp
    dual = 0.5 * jnp.sum(f * f) - 0.5 * jnp.sum(r * r)
    return float(method.energy(u, f, w) - dual)


# each norm, boundary and u-step at least once (every combination compiles its own loop)
@pytest.mark.parametrize(
    "norm,boundary,u_step,rho,tol,gap",
    [
        (Anisotropic(), Neumann(), GaussSeidel(), 8.0, 1e-13, 1e-12),
        (Anisotropic(), Periodic(), SpectralSolve(), 8.0, 1e-13, 1e-12),
        (Isotropic(), Neumann(), SpectralSolve(), 16.0, 1e-11, 1e-8),
        (Isotropic(), Periodic(), GaussSeidel(), 16.0, 1e-11, 1e-8),
    ],
    ids=["aniso-neumann-gs", "aniso-periodic-spectral", "iso-neumann-spectral", "iso-periodic-gs"],
)
def test_split_bregman_reaches_the_rof_minimizer(
    small_noisy, boundary, norm, u_step, rho, tol, gap
):
    f, _ = small_noisy
    w = 0.08
    method = SplitBregman(norm, boundary, u_step, rho)
    sol = split_bregman(f, w, method, tol=tol, max_steps=200_000)
    assert bool(sol.converged)
    # certificate: ‖u − u*‖² <= 2·gap (measured: ~1e-13 anisotropic, up to 1e-9 isotropic)
    assert _duality_gap(method, sol.u, sol.state.b, f, w) < gap
    # an independent solver agrees (it converges like 1/k: 2e-5 after 40 000 steps)
    ref = _chambolle_pock(f, w, iso=isinstance(norm, Isotropic), boundary=boundary, steps=40_000)
    assert float(jnp.max(jnp.abs(sol.u - ref))) < 1e-4
    assert float(method.energy(sol.u, f, w)) <= float(method.energy(ref, f, w))


def test_split_bregman_deblurring_matches_oracle(small_noisy):
    _, truth = small_noisy
    blur = Blur.from_kernel(gaussian_kernel(5, 0.8), truth.shape)
    f = blur.mv(truth) + 0.02 * jnp.asarray(np.random.default_rng(1).normal(size=truth.shape))
    method = SplitBregman(Anisotropic(), Periodic(), SpectralSolve(), 4.0, blur=blur)
    sol = split_bregman(f, 0.01, method, tol=1e-13, max_steps=100_000)
    assert bool(sol.converged)
    ref = _chambolle_pock(f, 0.01, iso=False, boundary=Periodic(), steps=40_000, blur=blur)
    assert float(jnp.max(jnp.abs(sol.u - ref))) < 1e-4
    assert float(method.energy(sol.u, f, 0.01)) <= float(method.energy(ref, f, 0.01)) + 1e-12


def test_huber_solution_tends_to_tv_solution(small_noisy):
    f, _ = small_noisy
    exact = split_bregman(f, 0.08, SplitBregman(Anisotropic()), tol=1e-12, max_steps=50_000).u
    gaps = []
    for eps in (1e-2, 1e-4):
        m = SplitBregman(Anisotropic(), huber=eps)
        u = split_bregman(f, 0.08, m, tol=1e-12, max_steps=50_000).u
        gaps.append(float(jnp.max(jnp.abs(u - exact))))
    assert gaps[0] > 10 * gaps[1] and gaps[1] < 1e-3


# --------------------------------------------------------------------------------------
# scikit-image
# --------------------------------------------------------------------------------------
def test_agrees_with_skimage_denoise_tv_bregman_anisotropic():
    restoration = pytest.importorskip("skimage.restoration")
    truth = load_image("camera", 64)
    f = add_noise(truth, 0.1, seed=0)
    mu = 10.0  # skimage's weight: min ‖∇u‖₁ + (μ/2)‖u − f‖²  ⇔  w = 1/μ here
    sk = restoration.denoise_tv_bregman(
        f, weight=mu, isotropic=False, eps=1e-10, max_num_iter=20_000
    )
    method = SplitBregman(Anisotropic(), Neumann())
    ours = np.asarray(
        split_bregman(jnp.asarray(f), 1.0 / mu, method, tol=1e-10, max_steps=20_000).u
    )
    diff = np.abs(ours - sk)
    ii, jj = np.indices(diff.shape)
    border = np.minimum.reduce([ii, jj, 63 - ii, 63 - jj])
    # skimage's last row/column see ghost pixels fixed at the data: the two differ near the
    # border only, decaying inwards (max 0.21 on the border, 1.8e-3 from 16 px in; measured)
    assert diff[border >= 16].max() < 3e-3
    assert np.sqrt(np.mean(diff**2)) < 0.02
    # ours is the minimizer of the Neumann ROF energy: skimage's output has a higher one
    e_ours = float(method.energy(jnp.asarray(ours), jnp.asarray(f), 1.0 / mu))
    e_sk = float(method.energy(jnp.asarray(sk), jnp.asarray(f), 1.0 / mu))
    assert e_ours < e_sk


# --------------------------------------------------------------------------------------
# split_bregman: options, dtype, warm start, errors
# --------------------------------------------------------------------------------------
def test_split_bregman_keeps_float32_and_stops_on_rms_change():
    f = jnp.asarray(add_noise(load_image("text", 32), 0.1, seed=2), jnp.float32)
    sol = split_bregman(f, 0.1, tol=1e-3, max_steps=500)
    assert sol.u.dtype == jnp.float32
    assert bool(sol.converged) and float(sol.change) < 1e-3 and 1 < int(sol.num_steps) < 500
    again = split_bregman(f, 0.1, tol=1e-3, max_steps=500, init=sol.state)
    assert int(again.num_steps) < int(sol.num_steps)
    capped = split_bregman(f, 0.1, tol=1e-12, max_steps=3)
    assert int(capped.num_steps) == 3 and not bool(capped.converged)
    # warm-started at another weight's fixed point the first u-step leaves u unchanged: the
    # change test must not stop there (it did, and kept the old weight's image: 0.083 away)
    tight = split_bregman(f, 0.1, tol=1e-5, max_steps=3000)
    cold = split_bregman(f, 0.13, tol=1e-5, max_steps=3000)
    moved = split_bregman(f, 0.13, tol=1e-5, max_steps=3000, init=tight.state)
    assert float(jnp.max(jnp.abs(tight.u - cold.u))) > 0.05
    assert int(moved.num_steps) > 2 and float(jnp.max(jnp.abs(moved.u - cold.u))) < 5e-3


def test_split_bregman_errors():
    f = jnp.zeros((8, 8))
    with pytest.raises(ValueError, match="2-D image"):
        split_bregman(jnp.zeros(8), 0.1)
    with pytest.raises(ValueError, match="does not match the image"):
        split_bregman(f, jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="f is empty"):
        split_bregman(jnp.zeros((0, 8)), 0.1)
    with pytest.raises(TypeError, match="real float32 or float64 image; got dtype complex64"):
        split_bregman(f.astype(jnp.complex64), 0.1)
    with pytest.raises(TypeError, match="got dtype int32"):
        split_bregman(f.astype(jnp.int32), 0.1)
    with pytest.raises(ValueError, match="f contains NaN or inf"):
        split_bregman(f.at[3, 4].set(jnp.nan), 0.1)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight must be > 0 and finite"):
            split_bregman(f, bad)
    with pytest.raises(ValueError, match="weight must be > 0 and finite.*shape \\(8, 8\\), min"):
        split_bregman(f, jnp.ones((8, 8)).at[0, 0].set(-1.0))
    with pytest.raises(ValueError, match="isotropic TV weights must be a scalar or an"):
        split_bregman(f, jnp.ones((2, 1, 1)), SplitBregman(Isotropic()))
    with pytest.raises(ValueError, match="penalty must be > 0"):
        SplitBregman(penalty=0.0)
    with pytest.raises(ValueError, match="huber must be > 0"):
        SplitBregman(huber=-1.0)
    with pytest.raises(ValueError, match="sweeps must be >= 1"):
        GaussSeidel(0)
    with pytest.raises(TypeError, match="norm must be Isotropic"):
        SplitBregman(norm="iso")
    blur = Blur.from_kernel(gaussian_kernel(3, 1.0), (8, 8))
    with pytest.raises(ValueError, match="needs boundary=Periodic"):
        SplitBregman(blur=blur, u_step=SpectralSolve())
    with pytest.raises(ValueError, match="needs u_step=SpectralSolve"):
        SplitBregman(boundary=Periodic(), blur=blur)


# --------------------------------------------------------------------------------------
# Hypergradients of the TV weights (64×64, float64) against central finite differences
# --------------------------------------------------------------------------------------
GMRES = lx.GMRES(rtol=1e-11, atol=1e-14, restart=30, max_steps=2000)
IMPLICIT = ic.Implicit(GMRES, system="fixed_point")
# One solver and one method for every exact-TV test: equal settings share compiled code.
SOLVER = ic.FixedPointIteration(tol=1e-10, max_steps=3000)
ANISO = SplitBregman(Anisotropic(), Neumann(), GaussSeidel(), 8.0)


@pytest.fixture(scope="module")
def camera64():
    truth = load_image("camera", 64)
    return add_noise(truth, 0.1, seed=0), truth


@pytest.fixture(scope="module")
def camera32():
    truth = load_image("camera", 32)
    return add_noise(truth, 0.1, seed=0), truth


@pytest.fixture(scope="module")
def exact_problem(camera64):
    noisy, truth = camera64
    return tv_problem(noisy, truth=truth, criterion=MSE(), tv=ANISO, init=0.1)


def test_implicit_hypergradient_of_exact_tv_matches_finite_differences(exact_problem):
    res = ic.check_hypergradient(exact_problem, exact_problem.space.init(), IMPLICIT, solver=SOLVER)
    # measured 2e-10: I − ∂T/∂s is singular (non-unique dual), the system consistent
    assert res.relative_error < 1e-7
    assert res.diagnostics["linear_converged"] and res.diagnostics["inner_converged"]


def test_unrolled_hypergradient_of_exact_tv_matches_finite_differences(exact_problem):
    res = ic.check_hypergradient(
        exact_problem, exact_problem.space.init(), ic.Unrolled(3000), solver=SOLVER
    )
    assert res.relative_error < 1e-7  # measured 2e-10


def test_huber_implicit_hypergradient_matches_finite_differences(camera64):
    noisy, truth = camera64
    method = SplitBregman(Isotropic(), huber=0.01)
    problem = tv_problem(noisy, truth=truth, criterion=MSE(), tv=method, init=0.1)
    assert problem.objective is not None  # x is the image; CG on the Hessian applies
    res = ic.check_hypergradient(
        problem,
        problem.space.init(),
        ic.Implicit(lx.CG(rtol=1e-11, atol=1e-14, max_steps=2000)),
        solver=ic.FISTA(tol=1e-11, max_steps=20_000),
    )
    assert res.relative_error < 1e-6  # measured 7e-9


@pytest.mark.slow  # ~10 s: its own compiled hypergradient
def test_directional_weights_hypergradient(camera32):
    noisy, truth = camera32
    problem = tv_problem(
        noisy, truth=truth, criterion=MSE(), tv=ANISO, weights=DirectionalWeights(), init=0.1
    )
    theta = {"weight": jnp.asarray([0.08, 0.12])}
    res = ic.check_hypergradient(problem, theta, IMPLICIT, solver=SOLVER)
    assert res.gradient.shape == (2,) and res.relative_error < 1e-7


def test_block_weights_directional_derivative(camera32):
    noisy, truth = camera32
    problem = tv_problem(
        noisy, truth=truth, criterion=MSE(), tv=ANISO, weights=BlockWeights(8, 8), init=0.1
    )
    rng = np.random.default_rng(0)
    theta = {"weight": jnp.asarray(0.1 * np.exp(0.3 * rng.normal(size=(8, 8))))}
    hg = ic.hypergradient(problem, theta, solver=SOLVER, method=IMPLICIT)
    gz = np.asarray(grad_z(problem, theta, hg.grad))
    assert gz.shape == (64,)
    # one directional finite difference (in log-weights) instead of 64
    z = problem.space.to_z(theta)
    v = rng.normal(size=64)
    v /= np.linalg.norm(v)

    @jax.jit
    def value(z):
        th = problem.space.to_theta(z)
        return problem.criterion(SOLVER.solve(problem, problem.x0, th).x, th, problem.data)

    eps = 1e-5
    fd = (float(value(z + eps * v)) - float(value(z - eps * v))) / (2 * eps)
    assert abs(gz @ v - fd) <= 1e-6 * np.linalg.norm(gz)


@pytest.mark.slow  # ~10 s: its own compiled hypergradient
def test_training_set_is_vmapped_with_psnr_criterion():
    truth = np.stack([load_image(n, 24) for n in ("camera", "text")])
    noisy = add_noise(truth, 0.1, seed=1)
    problem = tv_problem(noisy, truth=truth, criterion=PSNR(), tv=ANISO, init=0.1)
    assert problem.x0.u.shape == (2, 24, 24)
    solver = SOLVER
    res = ic.check_hypergradient(problem, problem.space.init(), IMPLICIT, solver=solver)
    assert res.relative_error < 1e-6
    # the criterion is minus the mean PSNR of the two denoised images
    x = solver.solve(problem, problem.x0, problem.space.init()).x
    np.testing.assert_allclose(res.value, -float(jnp.mean(psnr(x.u, truth))), rtol=1e-12)


@pytest.mark.slow  # ~10 s: its own compiled hypergradient
def test_sure_hypergradient_and_unbiasedness(camera64):
    noisy, truth = camera64
    problem = tv_problem(noisy, criterion=SURE(0.1, seed=0), tv=ANISO, init=0.1)
    assert problem.x0.u.shape == (2, 64, 64)  # f and f + εδ side by side
    res = ic.check_hypergradient(problem, problem.space.init(), IMPLICIT, solver=SOLVER)
    assert res.relative_error < 1e-6
    # SURE estimates the MSE to the truth without seeing it (Monte-Carlo error ~1/√N;
    # measured 0.00214 against 0.00204)
    x = SOLVER.solve(problem, problem.x0, problem.space.init()).x
    true_mse = float(mse(x.u[0], truth))
    assert abs(res.value - true_mse) < 0.2 * true_mse


def test_tv_problem_errors(camera64):
    noisy, truth = camera64
    with pytest.raises(ValueError, match="needs truth="):
        tv_problem(noisy, criterion=MSE())
    with pytest.raises(ValueError, match="truth has shape"):
        tv_problem(noisy, truth=truth[:32], criterion=PSNR())
    with pytest.raises(ValueError, match="SURE tunes one image at a time"):
        tv_problem(np.stack([noisy, noisy]), criterion=SURE(0.1))
    with pytest.raises(ValueError, match="sigma > 0"):
        SURE(0.0)
    with pytest.raises(ValueError, match="need anisotropic TV"):
        tv_problem(noisy, truth=truth, criterion=MSE(), weights=DirectionalWeights())
    with pytest.raises(ValueError, match="must be > 0"):
        tv_problem(noisy, truth=truth, criterion=MSE(), init=-1.0)
    with pytest.raises(ValueError, match="needs an image at least that large"):
        tv_problem(noisy[:4, :4], truth=truth[:4, :4], criterion=MSE(), weights=BlockWeights())
    with pytest.raises(ValueError, match="real float"):
        tv_problem(noisy.astype(np.int32), truth=truth, criterion=MSE())
    with pytest.raises(ValueError, match="real float"):
        tv_problem(noisy.astype(np.complex128), truth=truth, criterion=MSE())
    with pytest.raises(ValueError, match="noisy contains NaN or inf"):
        tv_problem(np.where(noisy > 0.5, np.nan, noisy), truth=truth, criterion=MSE())
    with pytest.raises(ValueError, match="truth contains NaN"):
        tv_problem(noisy, truth=truth * np.nan, criterion=MSE())
    with pytest.raises(TypeError, match="criterion must be MSE"):
        tv_problem(noisy, truth=truth, criterion="mse")


def test_the_tv_settings_have_their_own_keyword():
    noisy = np.random.default_rng(0).uniform(size=(8, 8))
    new = tv_problem(noisy, criterion=SURE(0.1), tv=ANISO)
    with pytest.warns(DeprecationWarning, match=r"tv_problem\(tv=...\)"):
        old = tv_problem(noisy, criterion=SURE(0.1), method=ANISO)
    assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
    with pytest.raises(TypeError, match="pass tv= only"):
        tv_problem(noisy, criterion=SURE(0.1), tv=ANISO, method=ANISO)
    with pytest.warns(DeprecationWarning, match=r"split_bregman\(tv=...\)"):
        old = split_bregman(noisy, 0.1, method=ANISO)
    np.testing.assert_array_equal(old.u, split_bregman(noisy, 0.1, ANISO).u)
