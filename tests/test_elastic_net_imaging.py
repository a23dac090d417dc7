"""Elastic-net image reconstruction: measurement operators, the inner FISTA problem, its
hypergradients against finite differences, the problem module and its input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal.imaging import (
    Blur,
    Inpainting,
    SubsampledFourier,
    gaussian_kernel,
    random_mask,
    variable_density_mask,
)

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
