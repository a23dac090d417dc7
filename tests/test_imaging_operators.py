"""Finite differences, DCT, blur, metrics and test images of invcal.imaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st

from invcal.imaging import (
    IMAGES,
    TRAIN,
    VALIDATION,
    Blur,
    Neumann,
    Periodic,
    add_noise,
    dct2,
    divergence,
    gaussian_kernel,
    gradient,
    idct2,
    laplacian,
    load_image,
    load_images,
    mse,
    psnr,
)

BOUNDARIES = [Periodic(), Neumann()]
IDS = ["periodic", "neumann"]


def _dense(fn, shape):
    """The matrix of a linear map on (H, W) images, column by column."""
    n = int(np.prod(shape))
    cols = jax.jit(jax.vmap(lambda e: jnp.ravel(fn(e.reshape(shape)))))(jnp.eye(n))
    return np.asarray(cols).T


@jax.jit
def _adjoint_gap(u, p):
    """⟨∇u, p⟩ + ⟨u, div p⟩ for both boundaries (0 up to rounding)."""
    gap = [jnp.vdot(gradient(u, b), p) + jnp.vdot(u, divergence(p, b)) for b in BOUNDARIES]
    return jnp.stack(gap), jnp.vdot(gradient(u), p)


# A few shapes (each compiles once), including single rows/columns; many random fields.
@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(1, 1), (1, 6), (5, 1), (2, 2), (7, 5), (8, 8)]),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
)
def test_divergence_is_minus_adjoint_of_gradient(shape, seed, scale):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(scale * rng.normal(size=shape))
    p = jnp.asarray(rng.normal(size=(2, *shape)))
    gap, ref = _adjoint_gap(u, p)
    assert np.all(np.abs(np.asarray(gap)) <= 1e-10 * max(1.0, abs(float(ref))))


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=IDS)
def test_gradient_values(boundary):
    u = jnp.arange(12.0).reshape(3, 4) ** 2
    g = np.asarray(gradient(u, boundary))
    un = np.asarray(u)
    np.testing.assert_allclose(g[0, :-1], un[1:] - un[:-1])
    np.testing.assert_allclose(g[1, :, :-1], un[:, 1:] - un[:, :-1])
    if isinstance(boundary, Neumann):
        assert np.all(g[0, -1] == 0) and np.all(g[1, :, -1] == 0)
    else:
        np.testing.assert_allclose(g[0, -1], un[0] - un[-1])
        np.testing.assert_allclose(g[1, :, -1], un[:, 0] - un[:, -1])


def test_gradient_of_constant_is_zero_and_default_boundary_is_neumann():
    u = jnp.full((5, 6), 0.3)
    assert float(jnp.abs(gradient(u)).max()) == 0.0
    v = jnp.arange(30.0).reshape(5, 6)
    np.testing.assert_array_equal(gradient(v), gradient(v, Neumann()))


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=IDS)
@pytest.mark.parametrize("shape", [(5, 7), (1, 5)])
def test_spectral_solve_matches_dense(boundary, shape):
    lap = _dense(lambda u: laplacian(u, boundary), shape)  # Δ = −∇ᵀ∇
    a, rho = 0.7, 1.9
    mat = a * np.eye(lap.shape[0]) - rho * lap
    r = np.random.default_rng(1).normal(size=shape)
    u = jax.jit(boundary.solve_shifted)(jnp.asarray(r), a, rho)
    np.testing.assert_allclose(np.ravel(u), np.linalg.solve(mat, np.ravel(r)), atol=1e-12)
    # eigenvalues of ∇ᵀ∇ lie in [0, 8]
    ev = np.linalg.eigvalsh(-(lap + lap.T) / 2)
    assert ev.min() > -1e-12 and ev.max() <= 8 + 1e-12


_DCT = jax.jit(lambda x: (dct2(x), idct2(dct2(x))))


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (1, 4), (2, 3)])
def test_dct2_matches_scipy_and_inverts(shape):
    x = np.random.default_rng(2).normal(size=shape)
    c, back = _DCT(jnp.asarray(x))
    np.testing.assert_allclose(c, scipy.fft.dctn(x, norm="ortho"), atol=1e-13)
    np.testing.assert_allclose(back, x, atol=1e-13)


def test_operators_reject_bad_shapes_and_boundaries():
    with pytest.raises(ValueError, match="2-D image"):
        gradient(jnp.zeros(5))
    with pytest.raises(ValueError, match=r"shape \(2, H, W\)"):
        divergence(jnp.zeros((3, 4, 4)))
    with pytest.raises(TypeError, match="Neumann\\(\\) or invcal.imaging.Periodic\\(\\)"):
        gradient(jnp.zeros((3, 3)), "neumann")


def test_operators_jit_and_grad():
    u = jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)))
    f = jax.jit(lambda u: jnp.sum(gradient(u, Neumann()) ** 2))
    g = jax.grad(f)(u)
    np.testing.assert_allclose(g, -2 * laplacian(u, Neumann()), atol=1e-12)


# --------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------
def test_blur_matches_scipy_wrap_convolution_and_is_adjoint():
    rng = np.random.default_rng(4)
    k = rng.random((3, 5))
    k /= k.sum()
    u = rng.normal(size=(8, 10))
    blur = Blur.from_kernel(k, u.shape)
    ref = scipy.ndimage.convolve(u, k, mode="wrap")
    np.testing.assert_allclose(blur.mv(jnp.asarray(u)), ref, atol=1e-12)
    v = jnp.asarray(rng.normal(size=u.shape))
    lhs = jnp.vdot(blur.mv(jnp.asarray(u)), v)
    rhs = jnp.vdot(jnp.asarray(u), blur.rmv(v))
    assert abs(float(lhs - rhs)) < 1e-10


def test_blur_normal_solve_matches_dense():
    shape = (6, 5)
    blur = Blur.from_kernel(gaussian_kernel(3, 0.8), shape)
    kk = _dense(lambda u: blur.rmv(blur.mv(u)), shape)
    lap = _dense(lambda u: laplacian(u, Periodic()), shape)
    r = np.random.default_rng(5).normal(size=shape)
    u = jax.jit(lambda r: blur.solve_normal(r, 1.3, 0.4))(jnp.asarray(r))
    np.testing.assert_allclose(
        np.ravel(u), np.linalg.solve(1.3 * kk - 0.4 * lap, np.ravel(r)), atol=1e-10
    )


def test_blur_and_kernel_errors():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_kernel(3, 0.0)
    with pytest.raises(ValueError, match="odd sides"):
        Blur.from_kernel(np.ones((2, 3)), (8, 8))
    with pytest.raises(ValueError, match="larger than the image"):
        Blur.from_kernel(np.ones((9, 9)), (8, 8))
    with pytest.raises(ValueError, match="NaN"):
        Blur.from_kernel(np.full((3, 3), np.nan), (8, 8))
    np.testing.assert_allclose(gaussian_kernel(5, 1.0).sum(), 1.0)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def test_psnr_and_mse_match_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(6)
    a = rng.random((12, 9))
    b = np.clip(a + 0.05 * rng.normal(size=a.shape), 0, 1)
    np.testing.assert_allclose(mse(b, a), metrics.mean_squared_error(a, b), rtol=1e-12)
    np.testing.assert_allclose(
        psnr(b, a), metrics.peak_signal_noise_ratio(a, b, data_range=1.0), rtol=1e-12
    )
    batch = psnr(jnp.stack([b, a + 0.1]), jnp.stack([a, a]))
    assert batch.shape == (2,)
    np.testing.assert_allclose(batch[1], 20.0, rtol=1e-10)


def test_metric_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        mse(jnp.zeros((3, 3)), jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"images \(\.\.\., H, W\)"):
        mse(jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="data_range must be > 0"):
        psnr(jnp.zeros((3, 3)), jnp.ones((3, 3)), data_range=0.0)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------
def test_every_listed_image_ships_offline():
    assert set(TRAIN) | set(VALIDATION) == set(IMAGES)
    for name in IMAGES:
        img = load_image(name, 32)
        assert img.shape == (32, 32) and img.dtype == np.float64
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01


def test_load_image_full_size_and_stack():
    cam = load_image("camera", None)
    assert cam.shape == (512, 512)
    stack = load_images(["text", "page"], 40)
    assert stack.shape == (2, 40, 40)


def test_image_and_noise_errors():
    with pytest.raises(ValueError, match="unknown image 'lena'"):
        load_image("lena")
    with pytest.raises(ValueError, match="size must be an integer >= 2"):
        load_image("camera", 1)
    with pytest.raises(ValueError, match="at least one image"):
        load_images([])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        add_noise(np.zeros((3, 3)), 0.0)


def test_noise_is_reproducible_and_gaussian():
    x = np.zeros((64, 64))
    a, b = add_noise(x, 0.1, seed=3), add_noise(x, 0.1, seed=3)
    np.testing.assert_array_equal(a, b)
    assert abs(a.std() - 0.1) < 0.005
    assert not np.array_equal(a, add_noise(x, 0.1, seed=4))
