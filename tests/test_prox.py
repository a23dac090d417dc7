"""Proximal operators: brute-force minimization, optimality conditions, derivatives at kinks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invcal.prox import prox_elastic_net, prox_l1, prox_l1_nonneg, soft_threshold

finite = st.floats(min_value=-50, max_value=50, allow_nan=False)
positive = st.floats(min_value=1e-3, max_value=20, allow_nan=False)


def _brute(v, t, penalty):
    """argmin_z ½(z − v)² + t·penalty(z) on a fine grid around v, refined once."""
    grid = np.linspace(v - 60, v + 60, 240_001)
    z = grid[np.argmin(0.5 * (grid - v) ** 2 + t * penalty(grid))]
    fine = np.linspace(z - 1e-3, z + 1e-3, 20_001)
    return fine[np.argmin(0.5 * (fine - v) ** 2 + t * penalty(fine))]


@pytest.mark.parametrize(
    "prox, penalty",
    [
        (lambda v, t: prox_l1(v, t), np.abs),
        (lambda v, t: prox_l1_nonneg(v, t), lambda z: np.where(z >= 0, z, np.inf)),
        (lambda v, t: prox_elastic_net(v, t, 1.0, 0.5), lambda z: np.abs(z) + 0.25 * z**2),
        (
            lambda v, t: prox_elastic_net(v, t, 1.0, 0.5, nonneg=True),
            lambda z: np.where(z >= 0, z + 0.25 * z**2, np.inf),
        ),
    ],
    ids=["l1", "l1-nonneg", "elastic-net", "elastic-net-nonneg"],
)
@pytest.mark.parametrize("v, t", [(3.0, 1.0), (-2.5, 0.7), (0.4, 1.0), (-0.3, 2.0), (5.0, 0.01)])
def test_prox_matches_brute_force(prox, penalty, v, t):
    assert float(prox(jnp.asarray(v), t)) == pytest.approx(_brute(v, t, penalty), abs=2e-6)


@settings(max_examples=60, deadline=None)
@given(v=finite, t=positive, w=positive)
def test_soft_threshold_optimality(v, t, w):
    # 0 ∈ z − v + t·w·∂|z|: on the support v − z = t·w·sign(z); off it |v| <= t·w.
    z = float(prox_l1(jnp.asarray(v), t, w))
    if z != 0:
        assert v - z == pytest.approx(t * w * np.sign(z), rel=1e-9, abs=1e-9)
    else:
        assert abs(v) <= t * w * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(v=finite, t=positive)
def test_moreau_decomposition(v, t):
    # prox_{t|·|}(v) + t·proj_{[−1, 1]}(v/t) = v (Moreau 1965).
    z = float(soft_threshold(jnp.asarray(v), t))
    assert z + t * np.clip(v / t, -1, 1) == pytest.approx(v, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(v=finite, t=positive)
def test_nonneg_prox_is_nonnegative_and_one_sided(v, t):
    z = float(prox_l1_nonneg(jnp.asarray(v), t))
    assert z >= 0
    assert z == pytest.approx(max(v - t, 0.0), abs=1e-12)


def test_weights_broadcast():
    v = jnp.array([3.0, -3.0, 0.5, 2.0])
    w = jnp.array([1.0, 2.0, 0.1, 5.0])
    np.testing.assert_allclose(prox_l1(v, 0.5, w), [2.5, -2.0, 0.45, 0.0])


def test_derivatives_on_and_off_the_support():
    # On the support ∂z/∂v = 1, ∂z/∂t = −sign(v); off it both are 0.
    dv = jax.grad(lambda v: soft_threshold(v, 1.0))
    dt = jax.grad(lambda t: soft_threshold(-3.0, t))
    assert float(dv(3.0)) == 1.0 and float(dv(0.5)) == 0.0
    assert float(dt(1.0)) == 1.0
    assert float(jax.grad(lambda v: prox_elastic_net(v, 1.0, 1.0, 1.0))(3.0)) == 0.5


def test_derivative_at_the_kink_is_zero_not_nan():
    # |v| == t exactly: the coefficient is 0 and so are both derivatives (support convention
    # x != 0), where jnp.maximum would give ½.
    for f in (soft_threshold, prox_l1_nonneg):
        gv, gt = jax.grad(f, argnums=(0, 1))(1.0, 1.0)
        assert float(gv) == 0.0 and float(gt) == 0.0
    assert np.isfinite(float(jax.grad(lambda v: soft_threshold(v, 0.0))(0.0)))
