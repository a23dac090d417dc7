"""Orthonormal periodic wavelet transforms (Haar, Daubechies) of invcal.imaging.wavelets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal.imaging import IdentityTransform, Wavelet, daubechies_filter, wavelet_filters

# The classical 8-tap Daubechies filter D8 (db4), Daubechies (1992) Table 6.1, normalized to
# Σh = √2; an independent oracle for the spectral factorization.
D8 = [
    0.2303778133088964,
    0.7148465705529154,
    0.6308807679298587,
    -0.0279837694168599,
    -0.1870348117190931,
    0.0308413818355607,
    0.0328830116668852,
    -0.0105974017850690,
]


def test_daubechies_filters_match_closed_forms():
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(daubechies_filter(1), [2**-0.5, 2**-0.5], atol=1e-15)
    db2 = np.array([1 + s3, 3 + s3, 3 - s3, 1 - s3]) / (4 * np.sqrt(2.0))
    np.testing.assert_allclose(daubechies_filter(2), db2, atol=1e-14)
    np.testing.assert_allclose(daubechies_filter(4), D8, atol=1e-13)


@pytest.mark.parametrize("n", range(1, 11))
def test_filters_are_orthonormal_with_vanishing_moments(n):
    h, g = wavelet_filters(f"db{n}")
    L = h.size
    assert L == 2 * n
    # double-shift orthogonality of h and of g, and h ⟂ g at every even shift
    for k in range(0, L, 2):
        hh = np.dot(h[k:], h[: L - k])
        gg = np.dot(g[k:], g[: L - k])
        assert abs(hh - (k == 0)) < 1e-12 and abs(gg - (k == 0)) < 1e-12
        assert abs(np.dot(h[k:], g[: L - k])) < 1e-12 and abs(np.dot(g[k:], h[: L - k])) < 1e-12
    # n vanishing moments: Σ gⱼ jᵖ = 0 for p < n (relative to the size of the terms)
    j = np.arange(L, dtype=float)
    for p in range(n):
        assert abs(np.sum(g * j**p)) < 1e-9 * max(1.0, np.sum(np.abs(g) * j**p))


def _dense(fn, shape):
    n = int(np.prod(shape))
    cols = jax.jit(jax.vmap(lambda e: jnp.ravel(fn(e.reshape(shape)))))(jnp.eye(n))
    return np.asarray(cols).T


# Each case compiles once. db4 on 16×16 with 3 levels leaves a 2×2 block shorter than the
# filter, where the periodization wraps it around several times.
CASES = [("haar", 4, (16, 16)), ("db2", 2, (16, 8)), ("db4", 3, (16, 16))]


@pytest.mark.parametrize("name,levels,shape", CASES, ids=[c[0] for c in CASES])
def test_transform_is_orthogonal_and_inverse_is_transpose(name, levels, shape):
    wt = Wavelet(name, levels)
    M = _dense(wt.forward, shape)
    Minv = _dense(wt.inverse, shape)
    n = M.shape[0]
    np.testing.assert_allclose(M @ M.T, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(Minv, M.T, atol=1e-12)


def test_perfect_reconstruction_batched_and_jitted():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 32, 48)))
    for wt in (Wavelet("db4", 4), Wavelet("haar", 3), IdentityTransform()):
        c = jax.jit(wt.forward)(x)
        assert c.shape == x.shape
        np.testing.assert_allclose(jax.jit(wt.inverse)(c), x, atol=1e-12)
        np.testing.assert_allclose(jnp.sum(c**2), jnp.sum(x**2), rtol=1e-13)


def test_haar_one_level_and_layout():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    c = Wavelet("haar", 1).forward(x)
    # [[LL, LH], [HL, HH]]: the mean, the horizontal, vertical and diagonal differences
    np.testing.assert_allclose(c, [[5.0, -1.0], [-2.0, 0.0]], atol=1e-14)
    # a constant image has only its coarsest LL coefficients
    c = Wavelet("db2", 2).forward(jnp.ones((8, 8)))
    mask = Wavelet("db2", 2).detail_mask((8, 8))
    assert mask.sum() == 64 - 4 and not mask[:2, :2].any()
    np.testing.assert_allclose(c[mask], 0.0, atol=1e-13)
    np.testing.assert_allclose(c[:2, :2], 4.0, atol=1e-13)  # 8·8 / (2·2) = 16 → √16


def test_smooth_images_compress():
    # The finest-scale details of a smooth periodic image are small, and with 4 vanishing
    # moments (db4) much smaller than with 1 (Haar).
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = jnp.asarray(np.sin(t)[:, None] * np.cos(2 * t)[None, :])
    finest = {}
    for name in ("haar", "db4"):
        c = np.asarray(Wavelet(name, 3).forward(x))
        finest[name] = np.sum(c**2) - np.sum(c[:32, :32] ** 2)
    assert finest["db4"] < 1e-4 * finest["haar"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Wavelet("db11", 2), "wavelet name must be"),
        (lambda: Wavelet("sym4", 2), "wavelet name must be"),
        (lambda: Wavelet("db2", 0), "levels must be an integer >= 1"),
        (lambda: Wavelet("db2", 2.5), "levels must be an integer >= 1"),
        (lambda: Wavelet("db2", 3).forward(jnp.zeros((12, 16))), "divisible by 2\\^levels = 8"),
        (lambda: daubechies_filter(0), "n must be an integer in 1..10"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_basis_is_named_apart_from_the_space_transform():
    import invcal as ic
    from invcal import imaging

    assert isinstance(imaging.Wavelet(), imaging.AbstractBasis)
    assert isinstance(imaging.IdentityTransform(), imaging.AbstractBasis)
    assert not issubclass(imaging.AbstractBasis, ic.space.AbstractTransform)
    with pytest.warns(DeprecationWarning, match="invcal.imaging.AbstractBasis"):
        assert imaging.AbstractTransform is imaging.AbstractBasis
