"""invcal.imaging.noise: σ̂ of white Gaussian noise from weakly textured patches (Liu, Tanaka &
Okutomi 2013, cross-fitted) and, with missing pixels, from weakly textured 2×2 windows;
against the wavelet MAD that read texture as noise (issue 20)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.color import rgb2gray
from skimage.util import img_as_float

from invcal.imaging.noise import estimate_sigma, estimate_sigma_mad, estimate_sigma_masked
from invcal.imaging.reconstruct_inputs import estimate_noise


@pytest.fixture(scope="module")
def coins():
    return img_as_float(data.coins())[:256, :256]


def _haar_mad(y, mask):
    # the masked estimator before: the MAD of the Haar HH of every fully observed 2×2 window
    full = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    hh = (y[:-1, :-1] - y[1:, :-1] - y[:-1, 1:] + y[1:, 1:]) / 2
    return np.median(np.abs(hh[full])) / 0.6744897501960817


@pytest.mark.parametrize("sigma", [0.01, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise(sigma, seed):
    # measured: 0.987-1.018 over these six cases
    y = 0.5 + sigma * np.random.default_rng(seed).standard_normal((256, 256))
    assert estimate_sigma(y) / sigma == pytest.approx(1, abs=0.03)


def test_texture_is_not_read_as_noise(coins):
    # coins + N(0, 0.02²): measured 1.076 σ, where the wavelet MAD reads 1.337 σ
    y = coins + 0.02 * np.random.default_rng(0).standard_normal(coins.shape)
    new, mad = estimate_sigma(y) / 0.02, estimate_sigma_mad(y) / 0.02
    assert mad > 1.25
    assert new == pytest.approx(1, abs=0.1)


def test_blurred_image_does_not_collapse():
    # immunohistochemistry blurred (1.5 px) + N(0, 0.005²): measured 0.962 σ. Without the
    # cross-fit (the smallest eigenvalue of the patches that chose the direction, as in the
    # authors' code) the estimate shrinks its own selection: 0.46 σ
    clean = rgb2gray(img_as_float(data.immunohistochemistry()))[128:384, 128:384]
    y = ndimage.gaussian_filter(clean, 1.5, mode="wrap")
    y = y + 0.005 * np.random.default_rng(0).standard_normal(y.shape)
    assert estimate_sigma(y) / 0.005 == pytest.approx(1, abs=0.07)


def test_masked_reads_texture_less(coins):
    # 60% of the pixels kept, σ 0.03: measured 1.116 σ against 1.228 σ before
    rng = np.random.default_rng(1)
    y = coins + 0.03 * rng.standard_normal(coins.shape)
    mask = rng.random(coins.shape) < 0.6
    y = np.where(mask, y, 0.0)
    new, old = estimate_sigma_masked(y, mask) / 0.03, _haar_mad(y, mask) / 0.03
    assert old > 1.2
    assert abs(new - 1) < 0.6 * abs(old - 1)
    noise = 0.05 * np.random.default_rng(2).standard_normal((128, 128))
    assert estimate_sigma_masked(noise, mask[:128, :128]) / 0.05 == pytest.approx(1, abs=0.05)


def test_channels_and_mask_in_estimate_noise(coins):
    rng = np.random.default_rng(3)
    y = np.stack([coins, coins[::-1]]) + 0.05 * rng.standard_normal((2, *coins.shape))
    assert estimate_noise(y) == pytest.approx(np.mean([estimate_sigma(c) for c in y]))
    mask = rng.random(coins.shape) < 0.6
    want = np.mean([estimate_sigma_masked(c, mask) for c in y])
    assert estimate_noise(y, mask) == pytest.approx(want)
    with pytest.raises(ValueError, match="only 0 2×2 windows of the mask are fully observed"):
        estimate_noise(y, np.eye(256, dtype=bool))


def test_small_images_and_bad_input():
    # fewer patches than the cross-fit needs: the wavelet MAD
    x = np.random.default_rng(0).standard_normal((12, 12))
    assert estimate_sigma(x) == estimate_sigma_mad(x)
    with pytest.raises(ValueError, match="at least 8×8"):
        estimate_sigma(np.zeros((4, 40)))
    with pytest.raises(ValueError, match="2-D image"):
        estimate_sigma(np.zeros(100))
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        estimate_sigma_masked(np.zeros((16, 16)), np.ones((16, 15), bool))
    with pytest.raises(ValueError, match="only 0 2×2 windows"):
        estimate_sigma_masked(np.zeros((16, 16)), np.zeros((16, 16), bool))
    assert estimate_sigma(np.zeros((64, 64))) == 0.0


def _reference_estimate(x, n=7, cell=32, selections=2, most=120_000):
    # estimate_sigma written out plainly (every selection a boolean subset of the patches, the
    # second moments recomputed from them), as it was before its patches were sorted by ξ and
    # their second moments summed by blocks
    from invcal.imaging.noise import _box, _patches, _threshold

    count = (x.shape[0] - n + 1) * (x.shape[1] - n + 1)
    stride = max(1, int(np.ceil(np.sqrt(count / most))))
    i = np.arange(0, x.shape[0] - n + 1, stride)
    j = np.arange(0, x.shape[1] - n + 1, stride)
    half = (((i[:, None] // cell) + (j[None, :] // cell)) % 2 == 0).ravel()
    p = _patches(x, n, stride)
    gh, gv = (x[:, 2:] - x[:, :-2]) / 2, (x[2:, :] - x[:-2, :]) / 2
    xi = (_box(gh**2, n, n - 2) + _box(gv**2, n - 2, n))[::stride, ::stride].ravel()

    def cross(a, b):
        va = np.linalg.eigh(a.T @ a)[1][:, 0]
        vb = np.linalg.eigh(b.T @ b)[1][:, 0]
        return (np.mean((b @ va) ** 2) + np.mean((a @ vb) ** 2)) / 2

    a, b, xa, xb = p[half], p[~half], xi[half], xi[~half]
    sigma2 = cross(a, b)
    for _ in range(selections):
        sa, sb = xa < _threshold() * sigma2, xb < _threshold() * sigma2
        a, b, xa, xb = a[sa], b[sb], xa[sa], xb[sb]
        sigma2 = cross(a, b)
    return np.sqrt(sigma2)


@pytest.mark.parametrize(
    ("shape", "sigma", "blur"),
    [((200, 260), 0.02, 0), ((530, 300), 0.1, 0), ((200, 260), 0.01, 1.5)],
)
def test_equals_the_plain_computation(coins, shape, sigma, blur):
    # the sorted, block-summed computation against the plain one: about 24 600 and 19 300
    # patches per half (stride 1 and 2), so several blocks of 2 048, selections ending inside
    # a block; blurred, the second threshold is above the first (a selection from the
    # patches selected before, not from all)
    rng = np.random.default_rng(3)
    clean = np.resize(coins, shape)
    clean = ndimage.gaussian_filter(clean, blur) if blur else clean
    y = clean + sigma * rng.standard_normal(shape)
    assert estimate_sigma(y) == pytest.approx(_reference_estimate(y), rel=1e-9)
    assert estimate_sigma(y.astype(np.float32)) == pytest.approx(
        _reference_estimate(y.astype(np.float32).astype(np.float64)), rel=1e-9
    )
