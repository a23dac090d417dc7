"""Hyperparameter spaces and problem construction: transforms round-trip, bounds hold, and
bad input fails early with a message that names the argument."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import invcal as ic

settings.register_profile("invcal", max_examples=60, deadline=None)
settings.load_profile("invcal")

finite = dict(allow_nan=False, allow_infinity=False)


def _roundtrip(transform, theta):
    return float(transform.forward(transform.inverse(jnp.asarray(theta))))


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------
@given(st.floats(-1e6, 1e6, **finite))
def test_identity_roundtrip(theta):
    assert _roundtrip(ic.Identity(), theta) == theta


@given(st.floats(1e-8, 1e8, **finite))
def test_log_roundtrip(theta):
    assert _roundtrip(ic.Log(), theta) == pytest.approx(theta, rel=1e-13)


@given(st.floats(1e-8, 1e8, **finite))
def test_softplus_roundtrip(theta):
    assert _roundtrip(ic.Softplus(), theta) == pytest.approx(theta, rel=1e-10)


bounds = st.tuples(st.floats(-1e3, 1e3, **finite), st.floats(1e-3, 1e3, **finite)).map(
    lambda t: (t[0], t[0] + t[1])
)


@given(bounds, st.floats(1e-6, 1 - 1e-6))
def test_bounded_roundtrip(lo_hi, u):
    lo, hi = lo_hi
    theta = lo + u * (hi - lo)
    transform = ic.Bounded(lo, hi)
    scale = max(abs(lo), abs(hi), 1.0)
    assert abs(_roundtrip(transform, theta) - theta) <= 1e-12 * scale


@given(bounds, st.floats(-1e308, 1e308, **finite) | st.sampled_from([-math.inf, math.inf]))
def test_bounded_stays_strictly_inside(lo_hi, z):
    lo, hi = lo_hi
    theta = float(ic.Bounded(lo, hi).forward(jnp.asarray(z)))
    assert lo < theta < hi


def test_bounded_derivative_is_finite_everywhere():
    g = jax.vmap(jax.grad(ic.Bounded(0.0, 1.0).forward))(jnp.array([-1e3, -40.0, 0.0, 40.0, 1e3]))
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(g[2]) == pytest.approx(0.25)


@given(
    st.floats(1e-3, 1e3, **finite),
    st.lists(st.floats(0.01, 0.99), min_size=3, max_size=3),
    st.lists(st.floats(-1e3, 1e3, **finite), min_size=4, max_size=4),
)
def test_space_roundtrip(lam, fractions, weights):
    space = ic.Space(
        lam=ic.Param(1.0, ic.Log()),
        frac=ic.Param(np.full(3, 0.5), ic.Bounded(0.0, 1.0)),
        w=ic.Param(np.zeros((2, 2))),
    )
    theta = {"lam": lam, "frac": np.array(fractions), "w": np.array(weights).reshape(2, 2)}
    z = space.to_z(theta)
    assert z.shape == (space.size,) == (8,)
    back = space.to_theta(z)
    for name in space.names:
        np.testing.assert_allclose(back[name], theta[name], rtol=1e-12, atol=1e-12)
    assert space.flat_names() == ["lam", "frac[0]", "frac[1]", "frac[2]"] + [
        f"w[{i}]" for i in range(4)
    ]


def test_space_maps_are_differentiable_and_jittable():
    space = ic.Space(lam=ic.Param(2.0, ic.Log()), a=ic.Param(0.5, ic.Bounded(0.0, 1.0)))
    z = space.to_z(space.init())
    theta = jax.jit(lambda v: space.to_theta(v))(z)
    assert float(theta["lam"]) == pytest.approx(2.0) and float(theta["a"]) == pytest.approx(0.5)
    jac = jax.jacfwd(lambda v: jnp.stack(list(space.to_theta(v).values())))(z)
    np.testing.assert_allclose(jnp.diag(jac), [2.0, 0.25], rtol=1e-12)


# --------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument
# --------------------------------------------------------------------------------------
SPACE = ic.Space(lam=ic.Param(1.0, ic.Log()), w=ic.Param(np.zeros(3)))


@given(st.text(min_size=1, max_size=8).filter(lambda s: s not in ("lam", "w")))
def test_validate_unknown_name(name):
    theta = {"lam": 1.0, "w": np.zeros(3), name: 1.0}
    with pytest.raises(ValueError, match="theta has names .*unknown: "):
        SPACE.validate(theta)


def test_validate_missing_name():
    with pytest.raises(ValueError, match=r"missing: \['w'\]"):
        SPACE.validate({"lam": 1.0})
    with pytest.raises(TypeError, match="theta must be a dict"):
        SPACE.validate([1.0, 2.0])
    with pytest.raises(ValueError, match=r"theta0 has names \['lam'\]"):
        SPACE.validate({"lam": 1.0}, argument="theta0")


@given(st.lists(st.integers(1, 4), min_size=0, max_size=2).filter(lambda s: s != [3]))
def test_validate_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"theta\['w'\] has shape .*expected \(3,\)"):
        SPACE.validate({"lam": 1.0, "w": np.zeros(shape)})


@given(st.integers(0, 2), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_validate_non_finite(index, bad):
    w = np.zeros(3)
    w[index] = bad
    with pytest.raises(ValueError, match=r"theta\['w'\] contains NaN or inf"):
        SPACE.validate({"lam": 1.0, "w": w})


@given(st.floats(-1e6, 0.0, **finite))
def test_log_needs_positive_values(value):
    with pytest.raises(ValueError, match="'lam' has transform Log and must be > 0"):
        SPACE.validate({"lam": value, "w": np.zeros(3)})
    with pytest.raises(ValueError, match="'mu' has transform Log and must be > 0"):
        ic.Space(mu=ic.Param(value, ic.Log()))
    with pytest.raises(ValueError, match="'mu' has transform Softplus and must be > 0"):
        ic.Space(mu=ic.Param(value, ic.Softplus()))


@given(bounds, st.floats(0.0, 10.0, **finite), st.booleans())
def test_bounded_initial_value_out_of_bounds(lo_hi, offset, below):
    lo, hi = lo_hi
    value = lo - offset if below else hi + offset
    with pytest.raises(ValueError, match=r"'a' must lie strictly inside \("):
        ic.Space(a=ic.Param(value, ic.Bounded(lo, hi)))


@given(st.floats(-1e3, 1e3, **finite), st.floats(0.0, 1e3, **finite))
def test_bounded_needs_lo_below_hi(lo, gap):
    with pytest.raises(ValueError, match="Bounded\\(lo, hi\\) needs finite lo < hi"):
        ic.Bounded(lo, lo - gap)


@pytest.mark.parametrize("lo,hi", [(0.0, math.inf), (-math.inf, 0.0), (math.nan, 1.0)])
def test_bounded_needs_finite_bounds(lo, hi):
    with pytest.raises(ValueError, match="needs finite lo < hi"):
        ic.Bounded(lo, hi)


def test_param_and_space_construction_errors():
    with pytest.raises(ValueError, match="Param init must be finite"):
        ic.Param([1.0, math.nan])
    with pytest.raises(TypeError, match="Param transform must be an invcal transform"):
        ic.Param(1.0, "log")
    with pytest.raises(ValueError, match="Space needs at least one hyperparameter"):
        ic.Space()
    with pytest.raises(TypeError, match="Space entry 'lam' must be a Param"):
        ic.Space(lam=1.0)
    with pytest.raises(ValueError, match=r"z must have shape \(4,\)"):
        SPACE.to_theta(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"theta must be a dict with names \['lam', 'w'\]"):
        SPACE.to_z({"lam": 1.0})


# --------------------------------------------------------------------------------------
# Problem construction
# --------------------------------------------------------------------------------------
def _criterion(x, theta, data):
    return jnp.sum(x**2)


def _fixed_point(x, theta, data):
    return 0.5 * x


def _problem(**overrides):
    kwargs = dict(
        space=ic.Space(lam=ic.Param(1.0, ic.Log())),
        criterion=_criterion,
        x0=jnp.zeros(3),
        data=(jnp.ones(3),),
        fixed_point=_fixed_point,
    )
    return ic.Problem(**(kwargs | overrides))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_problem_rejects_non_finite_data(bad):
    with pytest.raises(ValueError, match="Problem data contains NaN or inf \\(1 of 3 entries\\)"):
        _problem(data=(jnp.array([1.0, bad, 2.0]),))
    with pytest.raises(ValueError, match="Problem x0 contains NaN or inf"):
        _problem(x0=np.array([0.0, bad, 0.0]))


def test_problem_construction_errors():
    with pytest.raises(ValueError, match="Problem needs an inner characterization"):
        _problem(fixed_point=None)
    with pytest.raises(TypeError, match="Problem space must be an invcal.Space"):
        _problem(space={"lam": ic.Param(1.0)})
    with pytest.raises(TypeError, match="Problem criterion must be a function"):
        _problem(criterion=1.0)
    with pytest.raises(ValueError, match="fixed_steps=True needs fixed_point="):
        _problem(fixed_point=None, objective=_criterion, fixed_steps=True)
    # Integer data and non-array leaves are fine.
    _problem(data={"n": 3, "idx": jnp.arange(3), "name": "toy"})


def test_space_order_survives_transformations():
    # Names not in sorted order: the order is z's order inside jit/vmap/grad too (a dict
    # field used to be rebuilt in sorted order there, swapping the entries of z).
    space = ic.Space(zeta=ic.Param(2.0, ic.Log()), mu=ic.Param(np.zeros(2)), a=ic.Param(0.3))
    assert space.names == ("zeta", "mu", "a") == tuple(space.params)
    z = jnp.array([0.0, 1.0, 2.0, 3.0])
    eager = space.to_theta(z)
    for traced in (
        eqx.filter_jit(lambda sp, v: sp.to_theta(v))(space, z),
        jax.vmap(lambda sp, v: sp.to_theta(v), in_axes=(None, 0))(space, z[None]),
    ):
        for name in space.names:
            np.testing.assert_array_equal(jnp.squeeze(jnp.asarray(traced[name])), eager[name])
    assert float(eager["zeta"]) == 1.0 and eager["mu"].tolist() == [1.0, 2.0]
    z_traced = eqx.filter_jit(lambda sp, th: sp.to_z(th))(space, eager)
    np.testing.assert_allclose(z_traced, z, atol=1e-15)
    assert eqx.filter_jit(lambda sp: sp.flat_names())(space) == space.flat_names()


def test_grad_to_z_is_the_chain_rule_through_the_transforms():
    space = ic.Space(lam=ic.Param(2.0, ic.Log()), w=ic.Param(jnp.array([0.5, 1.5])))
    theta = {"lam": jnp.asarray(3.0), "w": jnp.array([0.2, -1.0])}
    grad = {"lam": jnp.asarray(0.7), "w": jnp.array([1.0, -2.0])}
    # z = (log λ, w): dE/dz = (λ dE/dλ, dE/dw), in the order of the space's names.
    np.testing.assert_allclose(space.grad_to_z(theta, grad), [3.0 * 0.7, 1.0, -2.0], rtol=1e-14)
