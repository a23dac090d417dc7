"""scikit-learn estimators: LassoCV's conventions (α scaling by 1/n, folds, intercept), the
weighted variant, parameter validation, and scikit-learn's estimator checks.

The default run executes a subset of ``check_estimator``: the checks listed in ``QUICK``,
all of which fail before any solve or fit one small data set (one compilation). The full
suite (52 checks per estimator, all passing; ~1.5 minutes each on 2 cores, as every new data
shape compiles) runs with ``INVCAL_SLOW=1`` (marked ``slow``)."""

import os

import numpy as np
import pytest
from sklearn.linear_model import Lasso, LassoCV
from sklearn.model_selection import KFold
from sklearn.utils import estimator_checks

from invcal.sklearn import BilevelLassoCV, BilevelWeightedLassoCV


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    n, p = 60, 30
    X = rng.normal(size=(n, p))
    beta = np.zeros(p)
    beta[:4] = [3.0, -2.0, 1.5, 1.0]
    y = X @ beta + 0.5 * rng.normal(size=n) + 4.0
    return X, y


@pytest.fixture(scope="module")
def fitted(regression):
    X, y = regression
    return BilevelLassoCV(max_iter=20).fit(X, y)


def _cv_mse(X, y, alpha, fit_intercept=True):
    """The 5-fold CV error of scikit-learn's Lasso at α (LassoCV's mse_path_ entry)."""
    errs = []
    for tr, va in KFold(5).split(X):
        m = Lasso(alpha=alpha, fit_intercept=fit_intercept, tol=1e-12, max_iter=100_000)
        m.fit(X[tr], y[tr])
        errs.append(np.mean((m.predict(X[va]) - y[va]) ** 2))
    return float(np.mean(errs))


def test_same_objective_and_folds_as_lassocv(regression, fitted):
    X, y = regression
    # cv_mse_ is the CV error scikit-learn computes at alpha_: same 1/(2n) scaling of the
    # loss, same contiguous folds, same per-fold centering for the intercept.
    assert fitted.cv_mse_ == pytest.approx(_cv_mse(X, y, fitted.alpha_), rel=1e-7)
    ref = Lasso(alpha=fitted.alpha_, tol=1e-12, max_iter=100_000).fit(X, y)
    np.testing.assert_allclose(fitted.coef_, ref.coef_, atol=1e-8)
    assert fitted.intercept_ == pytest.approx(ref.intercept_, abs=1e-8)


def test_tuned_alpha_beats_the_lassocv_grid(regression, fitted):
    X, y = regression
    lcv = LassoCV(cv=5, alphas=100, tol=1e-10, max_iter=100_000).fit(X, y)
    # α is tuned to 1% (tol=1e-2); the CV curve is flat there.
    assert fitted.cv_mse_ <= lcv.mse_path_.mean(axis=1).min() * (1 + 1e-4)
    assert fitted.score(X, y) > 0.9
    np.testing.assert_allclose(fitted.predict(X[:3]), X[:3] @ fitted.coef_ + fitted.intercept_)
    assert len(fitted.history_) >= fitted.n_iter_ and fitted.n_features_in_ == X.shape[1]


def test_weighted_lasso_lowers_the_cv_error(regression, fitted):
    X, y = regression
    start = np.full(X.shape[1], fitted.alpha_)
    w = BilevelWeightedLassoCV(alpha_init=start, max_iter=8).fit(X, y)
    assert w.alpha_.shape == (X.shape[1],)
    assert w.cv_mse_ < fitted.cv_mse_
    # Features off every fold's support have a zero hypergradient and keep their α.
    assert 0 < np.sum(w.alpha_ != start) < X.shape[1]
    ref = Lasso(alpha=1.0, tol=1e-12, max_iter=100_000).fit(X / w.alpha_, y)
    np.testing.assert_allclose(w.coef_, ref.coef_ / w.alpha_, atol=1e-7)


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_refit_working_set_adds_the_violators(regression, fit_intercept, positive):
    # The refit starts from the columns where the warm start is nonzero and adds every
    # column whose optimality condition fails; a start that misses the true support (and
    # holds a column that is zero at the solution) still ends at the full problem's solution.
    X, y = regression
    alpha = 0.05
    ref = Lasso(alpha=alpha, fit_intercept=fit_intercept, positive=positive, tol=1e-12,
                max_iter=100_000).fit(X, y)  # fmt: skip
    support = np.flatnonzero(ref.coef_)
    assert support.size >= 2
    start = np.zeros(X.shape[1])
    start[support[1:]] = ref.coef_[support[1:]]  # the first support column is missing
    start[np.setdiff1d(np.arange(X.shape[1]), support)[0]] = 0.3  # one that is zero
    est = BilevelLassoCV(fit_intercept=fit_intercept, positive=positive)
    est._refit(X, y, alpha, start)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-8)
    assert est.intercept_ == pytest.approx(ref.intercept_, abs=1e-8)
    assert 0 <= est.dual_gap_ <= 1e-8


@pytest.mark.parametrize(
    "params, match",
    [
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"tol": -1.0}, "tol must be a positive"),
        ({"alpha_init": 0.0}, "alpha_init must be a positive"),
        ({"inner_tol": float("nan")}, "inner_tol must be a positive"),
        ({"fit_intercept": "yes"}, "fit_intercept must be True or False"),
        ({"method": "support"}, "method must be an invcal hypergradient method"),
    ],
)
def test_bad_parameters_raise_in_fit(regression, params, match):
    X, y = regression
    est = BilevelLassoCV(**params)  # __init__ validates nothing (scikit-learn convention)
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)


def test_bad_data_raises(regression):
    X, y = regression
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        BilevelLassoCV().fit(X, y[:-1])
    Xn = X.copy()
    Xn[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        BilevelLassoCV().fit(Xn, y)
    with pytest.raises(ValueError, match="alpha_init must hold positive"):
        BilevelWeightedLassoCV(alpha_init=-np.ones(X.shape[1])).fit(X, y)


QUICK = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimators_unfitted",
    "check_fit1d",
    "check_fit2d_1sample",
    "check_requires_y_none",
    "check_estimators_empty_data_messages",
    "check_estimator_sparse_matrix",
    "check_n_features_in_after_fitting",
]


@pytest.mark.parametrize("check", QUICK)
def test_estimator_checks_subset(check):
    est = BilevelLassoCV(max_iter=2, n_init=2)
    getattr(estimator_checks, check)(type(est).__name__, est)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("INVCAL_SLOW"), reason="set INVCAL_SLOW=1 (minutes)")
@pytest.mark.parametrize("Estimator", [BilevelLassoCV, BilevelWeightedLassoCV])
def test_check_estimator_full(Estimator):
    estimator_checks.check_estimator(Estimator(max_iter=3, n_init=2))
