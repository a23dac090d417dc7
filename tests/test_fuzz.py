"""Property-based fuzzing of the public entry points (hypothesis): whatever a user passes,
the answer is a result or one of the documented exception types, never a raw JAX, NumPy or
Python error from inside. Small example counts: each new shape compiles."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import invcal as ic
from invcal.imaging import denoise_tv

EXPECTED = (ValueError, TypeError, ic.HypergradientNotConverged)
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_rng = np.random.default_rng(0)
_A = jnp.asarray(_rng.normal(size=(12, 3)))
_B = _A @ jnp.ones(3)


def _ridge(x, th, data):
    return 0.5 * jnp.mean((data[0] @ x - data[1]) ** 2) + 0.5 * th["lam"] * jnp.sum(x**2)


PROBLEM = ic.Problem(
    space=ic.Space(lam=ic.Param(1.0, ic.Log())),
    objective=_ridge,
    criterion=lambda x, th, data: jnp.sum((x - 0.5) ** 2),
    x0=jnp.zeros(3),
    data=(_A, _B),
)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-10, 10),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
    st.lists(st.floats(-2, 2), max_size=3),
)


@FUZZ
@given(lam=values)
def test_hypergradient_theta(lam):
    try:
        hg = ic.hypergradient(PROBLEM, {"lam": lam}, solver=ic.Newton(), method=ic.Implicit())
    except EXPECTED:
        return
    # accepted: a positive finite number, and a converged, finite result
    assert isinstance(lam, (int, float)) and math.isfinite(float(lam)) and float(lam) > 0
    assert bool(hg.diagnostics.converged) and np.isfinite(float(hg.value))


@FUZZ
@given(
    theta=st.dictionaries(st.sampled_from(["lam", "mu", ""]), st.floats(0.1, 3.0), max_size=2),
    n=st.integers(1, 5),
)
def test_hypergradient_names_and_x0(theta, n):
    try:
        ic.hypergradient(PROBLEM, theta, solver=ic.Newton(), method=ic.Implicit(), x0=jnp.zeros(n))
    except EXPECTED:
        return
    assert set(theta) == {"lam"} and n == 3


@FUZZ
@given(z=st.floats(-1e6, 1e6), transform=st.sampled_from([ic.Log(), ic.Softplus(), ic.Identity()]))
def test_space_round_trip_stays_valid(z, transform):
    space = ic.Space(a=ic.Param(1.0, transform))
    theta = space.to_theta(jnp.asarray([z]))
    space.validate(theta)  # never outside the domain the space then rejects
    back = space.to_z(theta)
    assert np.all(np.isfinite(np.asarray(back)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # max_steps=20: unconverged warns
@FUZZ
@given(
    shape=st.sampled_from([(8, 8), (8,), (2, 8, 8), (0, 8), (1, 8), (8, 9)]),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.complex64]),
    weight=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just("auto"), st.text()),
    poison=st.booleans(),
)
def test_denoise_tv_inputs(shape, dtype, weight, poison):
    image = np.asarray(np.random.default_rng(1).uniform(size=shape) * 100).astype(dtype)
    if poison and image.size and np.issubdtype(dtype, np.floating):
        image.flat[0] = np.nan
    try:
        out = denoise_tv(image, weight=weight, sigma=0.1, max_steps=20, num_steps=5)
    except EXPECTED:
        return
    assert out.shape == image.shape and np.all(np.isfinite(out))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@FUZZ
@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "max_iter": st.one_of(st.integers(-1, 3), st.floats(), st.text(max_size=2)),
            "tol": st.one_of(st.floats(allow_nan=True), st.integers(-1, 1)),
            "n_init": st.one_of(st.integers(-1, 2), st.none()),
            "alpha_init": st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=2)),
            "positive": st.one_of(st.booleans(), st.integers(0, 2)),
        },
    )
)
def test_bilevel_lasso_cv_parameters(params):
    from invcal.sklearn import BilevelLassoCV

    X = np.random.default_rng(2).normal(size=(25, 6))
    y = X[:, 0] - 2 * X[:, 1] + 0.1 * np.random.default_rng(3).normal(size=25)
    try:
        est = BilevelLassoCV(**params).fit(X, y)
    except EXPECTED:
        return
    assert np.isfinite(est.alpha_) and est.alpha_ > 0 and np.all(np.isfinite(est.coef_))
