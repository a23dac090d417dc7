"""The default-configuration leg: every public entry point as a user calls it, with JAX's
defaults (64-bit mode off, float32), while the rest of the suite runs in float64.

In-process tests run inside ``jax.enable_x64(False)`` (JAX's own scoped switch, which
overrides the suite's global flag); the fresh-process tests start a new Python with no x64
setting at all. Each repeated call is checked to compile nothing (JAX's own trace and
compile events, :func:`invcal.testing.count_compilations`), not by timing."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, make_regression
from sklearn.linear_model import Lasso
from sklearn.model_selection import KFold

import invcal as ic
from invcal import ode
from invcal.sklearn import BilevelLassoCV, BilevelWeightedLassoCV
from invcal.testing import count_compilations

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def default_config():
    with jax.enable_x64(False):
        assert not jax.config.read("jax_enable_x64")
        yield


def _readme_code() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def _cv_mse_grid(X, y, alphas, splits):
    """K-fold CV error of scikit-learn's Lasso at each α (LassoCV's mse_path_, averaged)."""
    out = []
    for a in alphas:
        errs = []
        for tr, va in splits:
            m = Lasso(alpha=a, tol=1e-10, max_iter=100_000).fit(X[tr], y[tr])
            errs.append(np.mean((m.predict(X[va]) - y[va]) ** 2))
        out.append(np.mean(errs))
    return np.asarray(out)


# --------------------------------------------------------------------------------------
# The engine in float32
# --------------------------------------------------------------------------------------
def test_readme_example_in_float32(capsys):
    """The README's API example as written, in the default configuration: it computes in
    float32 (the engine follows the caller's dtype) with float32 default tolerances."""
    scope: dict = {}
    exec(compile(_readme_code(), "README.md", "exec"), scope)
    assert not jax.config.read("jax_enable_x64")
    hg, result = scope["hg"], scope["result"]
    assert hg.value.dtype == jnp.float32
    assert bool(hg.diagnostics.converged)
    assert float(result.theta["lam"]) == pytest.approx(1.36e-4, rel=0.03)
    assert capsys.readouterr().out.count("\n") == 2


def test_engine_repeated_calls_compile_nothing():
    scope: dict = {}
    code = _readme_code().split("hg = ic.hypergradient")[0]
    exec(compile(code, "README.md", "exec"), scope)
    problem = scope["problem"]
    kwargs = dict(solver=ic.Newton(), method=ic.Implicit())
    ic.hypergradient(problem, {"lam": 1.0}, **kwargs)
    ic.tune(problem, solver=ic.Newton(), optimizer="lbfgs", steps=3)
    ic.tune(problem, solver=ic.Newton(), optimizer="adam", steps=3)
    with count_compilations() as c:
        ic.hypergradient(problem, {"lam": 2.0}, **kwargs)
        ic.tune(problem, solver=ic.Newton(), optimizer="lbfgs", steps=3)
        ic.tune(problem, solver=ic.Newton(), optimizer="adam", steps=3)
    assert c.total == 0, c.names


def test_host_values_reach_jax_without_a_program():
    # invcal's setup code moves host values to JAX by compilation_cache.to_device: no
    # conversion program (jnp.asarray of a NumPy array compiles one per shape and dtype), in
    # JAX's canonical dtype (float32 here), a JAX array passed through as it is.
    from invcal.compilation_cache import to_device

    host = np.arange(7 * 13, dtype=np.float64).reshape(7, 13)  # a shape no test uses
    with count_compilations() as c:
        a = to_device(host)
        b = to_device(np.zeros(17, bool))
        d = to_device(3, dtype=float)
    assert c.total == 0, c.names
    assert a.dtype == jnp.float32 and b.dtype == jnp.bool_ and d.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), host.astype(np.float32))
    assert to_device(a) is a and not a.committed


def test_unreachable_float32_tolerance_is_named():
    """A tolerance float32 cannot reach stops with a message naming float32, not only
    'raise max_steps'."""
    scope: dict = {}
    exec(compile(_readme_code().split("hg = ic.hypergradient")[0], "README", "exec"), scope)
    problem = scope["problem"]
    with pytest.raises(ic.HypergradientNotConverged, match="float32"):
        ic.hypergradient(problem, {"lam": 1e-2}, solver=ic.Newton(tol=1e-12), method=ic.Implicit())


def test_check_hypergradient_computes_in_float64():
    scope: dict = {}
    exec(compile(_readme_code().split("hg = ic.hypergradient")[0], "README", "exec"), scope)
    problem = scope["problem"]
    res = ic.check_hypergradient(problem, {"lam": 1e-2}, ic.Implicit(), solver=ic.Newton())
    assert res.relative_error < 1e-6, res
    assert not jax.config.read("jax_enable_x64")


# --------------------------------------------------------------------------------------
# scikit-learn estimators (float64 whatever the flag)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diabetes():
    return load_diabetes(return_X_y=True)


def test_bilevel_lasso_cv_on_diabetes(diabetes):
    X, y = diabetes
    est = BilevelLassoCV().fit(X, y)
    # as good as the best point of a 40-point α grid on the same folds, to 1%
    splits = list(KFold(5).split(X))
    amax = np.max(np.abs((X - X.mean(0)).T @ (y - y.mean()))) / len(y)
    grid = _cv_mse_grid(X, y, amax * np.geomspace(1, 1e-4, 40), splits)
    assert est.cv_mse_ <= 1.01 * grid.min(), (est.alpha_, est.cv_mse_, grid.min())
    assert np.asarray(est.coef_).dtype == np.float64
    with count_compilations() as c:
        again = BilevelLassoCV().fit(X, y)
    assert c.total == 0, c.names
    assert again.alpha_ == est.alpha_
    assert not jax.config.read("jax_enable_x64")


def test_folds_of_different_sizes_share_compiled_code():
    # 203 rows: KFold(5) makes folds of 41 and 40 rows; a second data set of the same
    # shape compiles nothing.
    X, y = make_regression(203, 60, n_informative=5, noise=1.0, random_state=0)
    BilevelLassoCV(max_iter=4).fit(X, y)
    X2, y2 = make_regression(203, 60, n_informative=5, noise=1.0, random_state=1)
    with count_compilations() as c:
        BilevelLassoCV(max_iter=4).fit(X2, y2)
    assert c.total == 0, c.names


def test_weighted_lasso_cv():
    X, y = make_regression(60, 40, n_informative=5, noise=2.0, random_state=0)
    weighted = BilevelWeightedLassoCV(max_iter=3).fit(X, y)
    assert np.isfinite(weighted.cv_mse_)
    assert weighted.alpha_.shape == (40,) and np.all(weighted.alpha_ > 0)
    first_stage = [h["cv_mse"] for h in weighted.history_ if np.ndim(h["alpha"]) == 0]
    assert weighted.cv_mse_ <= min(first_stage) * (1 + 1e-9)


def test_cross_val_score(diabetes):
    from sklearn.model_selection import cross_val_score

    X, y = diabetes
    # two halves of 221 rows: one compiled shape, its inner folds of 44 and 45 rows share it
    scores = cross_val_score(BilevelLassoCV(max_iter=5), X, y, cv=2, error_score="raise")
    assert np.all(np.isfinite(scores)) and np.all(scores > 0.4), scores


QUICK_CHECKS = ["check_fit2d_1sample", "check_estimators_dtypes", "check_regressors_train"]


@pytest.mark.parametrize("check", QUICK_CHECKS)
def test_estimator_checks_in_float32_session(check):
    from sklearn.utils import estimator_checks

    est = BilevelLassoCV(max_iter=2, n_init=2)
    getattr(estimator_checks, check)(type(est).__name__, est)


# --------------------------------------------------------------------------------------
# Imaging (float32, stopping rules reachable in it)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_camera():
    from skimage import data, img_as_float

    img = img_as_float(data.camera()[::8, ::8])
    rng = np.random.default_rng(0)
    return img, img + 0.1 * rng.standard_normal(img.shape)


@pytest.mark.parametrize("weight", [0.08, "auto"])
def test_denoise_tv_in_float32(noisy_camera, weight):
    from invcal.imaging import denoise_tv, psnr

    img, f = noisy_camera
    u, info = denoise_tv(f, weight=weight, sigma=0.1, return_info=True)
    assert info.converged
    with jax.enable_x64(True):
        u64 = denoise_tv(f, weight=info.weight, sigma=0.1)
    p32 = float(psnr(jnp.asarray(u), jnp.asarray(img)))
    p64 = float(psnr(jnp.asarray(u64), jnp.asarray(img)))
    assert p32 == pytest.approx(p64, abs=0.02)
    assert p32 > float(psnr(jnp.asarray(f), jnp.asarray(img))) + 2.0
    with count_compilations() as c:
        denoise_tv(f, weight=weight, sigma=0.1)
    assert c.total == 0, c.names


# --------------------------------------------------------------------------------------
# Population ODE fits (float64 whatever the flag)
# --------------------------------------------------------------------------------------
def test_fit_population_theoph_matches_nlme_and_compiles_once():
    from problems.hierarchical_ode import INIT, NLME_REFERENCE, load_theoph, theophylline_model

    model = theophylline_model(rtol=1e-7, atol=1e-9)
    events = load_theoph()
    fit = ode.fit_population(model, events, init=INIT)
    assert fit.converged, fit.message
    for p in ("lKe", "lKa", "lCl"):
        assert fit.fixed_effects[p] == pytest.approx(NLME_REFERENCE[p], abs=1e-3)
    for p in ("lKa", "lCl"):
        assert fit.random_sd[p] == pytest.approx(NLME_REFERENCE[f"omega_{p}"], rel=0.01)
    assert fit.residual_sd == pytest.approx(NLME_REFERENCE["sigma_add"], rel=0.01)
    with count_compilations() as c:
        again = ode.fit_population(model, events, init=INIT)
    assert c.total == 0, c.names
    assert again.loglik == fit.loglik
    assert not jax.config.read("jax_enable_x64")
