"""``invcal.imaging.denoise_tv``: the one-call TV denoiser with its weight chosen by SURE."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import invcal as ic
from invcal.imaging import (
    SURE,
    Anisotropic,
    DenoiseInfo,
    Isotropic,
    SplitBregman,
    add_noise,
    denoise_tv,
    estimate_sigma,
    load_image,
    psnr,
    split_bregman,
    tv_problem,
)


@pytest.fixture(scope="module")
def noisy32():
    truth = load_image("camera", 32)
    return add_noise(truth, 0.1, seed=5), truth


@pytest.fixture(scope="module")
def auto_result(noisy32):
    noisy, _ = noisy32
    return denoise_tv(noisy, sigma=0.1, return_info=True)


def test_auto_weight_is_near_the_oracle(noisy32, auto_result):
    noisy, truth = noisy32
    out, info = auto_result
    assert isinstance(out, np.ndarray) and out.shape == noisy.shape and out.dtype == noisy.dtype
    assert isinstance(info, DenoiseInfo)
    assert info.sigma == 0.1 and not info.sigma_estimated and info.isotropic
    assert info.converged and len(info.search) >= 5
    assert info.sure == min(r[1] for r in info.search)
    # the oracle: the best of a log grid of weights, scored against the truth
    method = SplitBregman(Isotropic())
    grid = 0.1 * np.exp(np.linspace(np.log(0.3), np.log(3.0), 25))
    scores = [float(psnr(split_bregman(noisy, w, method, tol=1e-4).u, truth)) for w in grid]
    assert float(psnr(out, truth)) > float(psnr(noisy, truth)) + 5.0
    assert float(psnr(out, truth)) > max(scores) - 0.3  # SURE on 1024 pixels: MC noise


def test_the_sure_hypergradient_matches_finite_differences(noisy32):
    # SURE of the 100-step estimator as a tv_problem criterion (invcal run split-bregman-tv
    # -o criterion=sure); denoise_tv minimizes the same SURE from its values only
    noisy, _ = noisy32
    problem = tv_problem(noisy, criterion=SURE(0.1), tv=SplitBregman(Isotropic()), init=0.1)
    res = ic.check_hypergradient(
        problem,
        {"weight": jnp.asarray(0.05)},
        ic.ForwardUnrolled(100),
        solver=ic.FixedSteps(100),
        # 100 steps of shrinkage make a piecewise-smooth map with many kinks: a step of 1e-5
        # crosses some (relative error 1e-5 to 1e-3 measured), 1e-6 none here (4e-9)
        eps=1e-6,
    )
    assert res.relative_error < 1e-6  # exact for the 100-step estimator


def test_sigma_is_estimated_when_not_given(noisy32):
    noisy, _ = noisy32
    _, info = denoise_tv(noisy, return_info=True, num_steps=100)
    assert info.sigma_estimated and abs(info.sigma - 0.1) < 0.03
    assert info.sure is not None and info.weight > 0


def test_numeric_weight_is_the_rof_weight(noisy32):
    noisy, _ = noisy32
    out, info = denoise_tv(noisy, 0.07, sigma=123.0, return_info=True)
    # the stopping rule is relative to the image's range (scale-equivariant)
    tol = 1e-4 * float(np.ptp(noisy))
    ref = split_bregman(noisy, 0.07, SplitBregman(Isotropic()), tol=tol, max_steps=300).u
    np.testing.assert_array_equal(out, np.asarray(ref))
    assert info.weight == 0.07 and info.sigma is None and info.sure is None and info.search == []
    aniso = denoise_tv(noisy, 0.07, isotropic=False)
    ref = split_bregman(noisy, 0.07, SplitBregman(Anisotropic()), tol=tol, max_steps=300).u
    np.testing.assert_array_equal(aniso, np.asarray(ref))
    assert not np.array_equal(aniso, out)


def test_float32_in_float32_out(noisy32):
    noisy, truth = noisy32
    out = denoise_tv(noisy.astype(np.float32), 0.1)
    assert out.dtype == np.float32
    ref = denoise_tv(noisy, 0.1)
    assert np.max(np.abs(out - ref)) < 1e-4


def test_larger_weight_smooths_more(noisy32):
    noisy, _ = noisy32
    tv = [float(np.abs(np.diff(denoise_tv(noisy, w), axis=0)).sum()) for w in (0.02, 0.2)]
    assert tv[1] < tv[0]


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 5)), "image is empty"),
        (np.zeros(16), "must be 2-D .* got 1-D"),
        (np.zeros((8, 8, 3)), "rgb2gray"),
        (np.zeros((8, 8), complex), "complex"),
        (np.zeros((8, 8), np.uint8), "dtype uint8; pass float32 or float64"),
        (np.zeros((8, 8), bool), "dtype bool"),
        (np.zeros((8, 8), np.float16), "dtype float16"),
        ([[1, 2], [3, 4]], "dtype int64"),
        (np.full((8, 8), np.nan), "NaN or inf \\(64 of 64"),
        (np.pad(np.zeros((7, 8)), ((0, 1), (0, 0)), constant_values=np.inf), "NaN or inf"),
        (np.zeros((1, 8)), "at least 2×2"),
    ],
)
def test_bad_images_fail_before_any_work(image, match):
    with pytest.raises(ValueError, match=match):
        denoise_tv(image, 0.1)


def test_bad_arguments():
    img = np.zeros((16, 16))
    with pytest.raises(TypeError, match="must be a 2-D float array; got str"):
        denoise_tv("camera.png")
    with pytest.raises(ValueError, match="weight must be 'auto' or a positive number"):
        denoise_tv(img, "automatic")
    with pytest.raises(ValueError, match="weight must be a positive number; got True"):
        denoise_tv(img, True)
    with pytest.raises(ValueError, match="sigma must be a positive finite number; got -0.1"):
        denoise_tv(img, sigma=-0.1)
    with pytest.raises(ValueError, match="sigma must be a positive finite number; got nan"):
        denoise_tv(img, sigma=float("nan"))
    with pytest.raises(TypeError, match="isotropic must be True or False"):
        denoise_tv(img, 0.1, isotropic="yes")
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        denoise_tv(img, 0.1, max_steps=0)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        denoise_tv(img, sigma=0.1, probes=0)
    with pytest.raises(ValueError, match="tol must be a positive finite number"):
        denoise_tv(img, 0.1, tol=0.0)
    with pytest.raises(ValueError, match="cannot estimate sigma from an image smaller than 8×8"):
        denoise_tv(np.random.default_rng(0).random((4, 4)))
    with pytest.raises(ValueError, match="estimated noise level is 0"):
        denoise_tv(img)


@settings(max_examples=30, deadline=None)
@given(w=st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan"))))
def test_non_positive_or_non_finite_weights_are_refused(w):
    with pytest.raises(ValueError, match="weight must be a positive finite number"):
        denoise_tv(np.zeros((8, 8)), w)


def test_estimate_sigma():
    rng = np.random.default_rng(0)
    assert abs(estimate_sigma(0.2 * rng.standard_normal((128, 128))) / 0.2 - 1) < 0.03
    img = load_image("clock", 128)
    assert abs(estimate_sigma(add_noise(img, 0.1, seed=1)) / 0.1 - 1) < 0.05
    with pytest.raises(ValueError, match="at least 8×8"):
        estimate_sigma(np.zeros((4, 40)))


def test_fast_schedule_on_a_large_image():
    # from 2**17 pixels: one probe, the tol-stopped solve as the estimator (its f copy is the
    # answer), grid then parabolic steps
    truth = load_image("camera", 384)
    noisy = add_noise(truth, 0.1, seed=2).astype(np.float32)
    out, info = denoise_tv(noisy, sigma=0.1, return_info=True)
    assert info.probes == 1 and info.estimator_steps == info.num_steps
    ref = denoise_tv(noisy, info.weight)  # the same solve, unbatched: equal up to rounding
    assert np.max(np.abs(out - ref)) < 1e-4
    assert 3 <= len(info.search) <= 8 and info.sure == min(r[1] for r in info.search)
    assert out.dtype == np.float32 and info.converged
    grid = 0.1 * np.exp(np.linspace(np.log(0.25), np.log(4.0), 21))
    scores = [float(psnr(denoise_tv(noisy, float(w)), truth)) for w in grid]
    # measured (float32): 0.01 dB above the best of the grid
    assert float(psnr(out, truth)) > max(scores) - 0.1
    # the thorough schedule on request (two probes, 100 iterations, Brent)
    _, slow = denoise_tv(noisy, sigma=0.1, return_info=True, num_steps=100, probes=2)
    assert slow.probes == 2 and slow.estimator_steps == 100
    small = denoise_tv(noisy[:256, :256], sigma=0.1, return_info=True)[1]
    assert small.probes == 2 and small.estimator_steps == 100


# --------------------------------------------------------------------------------------
# Large weights (issue 16): the flat solution exactly, and a stopping rule reached near the
# solution below it
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camera64():
    from skimage import data
    from skimage.util import img_as_float

    img = img_as_float(data.camera()[::8, ::8])
    return img + 0.1 * np.random.default_rng(0).standard_normal(img.shape)


def _tight(f, w, isotropic=True):
    # ρ large for a large weight: converges to rounding in a few thousand iterations here
    norm = Isotropic() if isotropic else Anisotropic()
    rho = max(2.0, 16.0 * w / float(np.ptp(f)))
    sol = split_bregman(f, w, SplitBregman(norm, penalty=rho), tol=1e-10, max_steps=100_000)
    assert bool(sol.converged)
    return np.asarray(sol.u)


@pytest.mark.parametrize("weight", [10.0, 1e6])
@pytest.mark.parametrize("isotropic", [True, False])
def test_weights_beyond_the_certificate_give_the_mean_exactly(camera64, weight, isotropic):
    # before: max_steps reached, std 0.041 where the solution is constant
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, info = denoise_tv(camera64, weight, isotropic=isotropic, return_info=True)
    assert info.converged and info.num_steps == 0
    np.testing.assert_array_equal(out, np.full_like(camera64, camera64.mean()))


def test_auto_with_a_huge_sigma_gives_the_mean(camera64):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, info = denoise_tv(camera64, sigma=1e6, return_info=True)
    assert info.converged and np.ptp(out) == 0 and out[0, 0] == pytest.approx(camera64.mean())


@pytest.mark.parametrize("isotropic", [True, False])
def test_the_certificate_is_a_flat_solution(camera64, isotropic):
    from invcal.imaging.denoise import constant_weight

    w0 = constant_weight(camera64, isotropic=isotropic)
    # measured: 6.92 (isotropic), 6.87 (anisotropic) for this image of range 1.37
    assert 3 * np.ptp(camera64) < w0 < 10 * np.ptp(camera64)
    u = _tight(camera64, w0, isotropic)
    assert np.ptp(u) < 1e-6 * np.ptp(camera64)
    # and the image mean below it is not the solution everywhere: at w0/4 the solution varies
    assert np.ptp(_tight(camera64, w0 / 4, isotropic)) > 1e-2


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_large_weights_stop_near_the_solution(camera64, factor):
    # before (ρ = 2 at every weight): "converged" 0.025 (w = range) and 0.033 (3 × range)
    # × range from the solution (float64); now ρ grows with w from a quarter of the range:
    # measured 0.004 and 0.006, in 95 and 191 iterations
    import warnings

    scale = float(np.ptp(camera64))
    w = factor * scale
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, info = denoise_tv(camera64, w, return_info=True)
    assert info.converged and info.num_steps < 300
    assert np.max(np.abs(out - _tight(camera64, w))) < 0.015 * scale
    # scaling the image and the weight scales the result (ρ depends on w / range)
    c = 1e-3
    np.testing.assert_allclose(denoise_tv(c * camera64, c * w) / c, out, atol=1e-6 * scale)


def test_an_unconverged_solve_warns(camera64):
    # (a weight below the certificate: weight=10 is now solved exactly, without iterating)
    with pytest.warns(RuntimeWarning, match="not converged. Raise max_steps"):
        denoise_tv(camera64, weight=1.0, max_steps=20)


def test_the_default_penalty_is_a_folded_constant(noisy32):
    # ρ = 2 (every weight below the knee) is passed as a Python number, which XLA folds into
    # the iteration (a runtime ρ made a 512×512 iteration 1.4-1.8x slower); above the knee ρ
    # is a scalar array, one program for every ρ; the image is the same either way
    from invcal.imaging.denoise import _with_penalty

    method = SplitBregman(norm=Anisotropic())
    at_2 = _with_penalty(method, 2.0, jnp.float32)
    assert type(at_2.penalty) is float and at_2.penalty == 2.0
    at_3 = _with_penalty(method, 3.0, jnp.float32)
    assert isinstance(at_3.penalty, jnp.ndarray) and at_3.penalty.dtype == jnp.float32
    noisy, _ = noisy32
    as_array = eqx.tree_at(lambda m: m.penalty, method, jnp.asarray(2.0))
    u_float = split_bregman(noisy, 0.08, at_2, tol=1e-6, max_steps=500).u
    u_array = split_bregman(noisy, 0.08, as_array, tol=1e-6, max_steps=500).u
    np.testing.assert_allclose(u_float, u_array, atol=1e-12)
