r"""ℓ2-regularized logistic regression with the penalty weight e^λ tuned on held-out data.

The HOAG test problem of Pedregosa (2016), "Hyperparameter optimization with approximate
gradient", ICML, on scikit-learn's breast-cancer data (569 tumours, 30 features, shipped
offline). With labels yᵢ ∈ {−1, +1}, standardized features aᵢ ∈ ℝᵖ and x = (w, b) ∈ ℝᵖ⁺¹
(weights, then an *unpenalized* intercept b as the last entry):

    inner   x*(λ) = argmin_x  f(x, λ) = (1/n) Σᵢ log(1 + exp(−yᵢ(aᵢᵀw + b))) + e^λ ‖w‖²,
    outer   E(λ)  = (1/m) Σⱼ log(1 + exp(−y'ⱼ(a'ⱼᵀw* + b*)))

over the n training and m held-out rows. λ ∈ ℝ is unbounded (an ``Identity`` transform): the
penalty e^λ is positive for every λ, as in the paper. f is strongly convex (the logistic
Hessian is positive definite on the intercept direction once both classes are present), so
x*(λ) is smooth and implicit differentiation applies.

The problem gives f itself (``objective``: Newton, and CG on the symmetric Hessian system)
and the gradient step

    T(x, λ) = x − ∇ₓf(x, λ) / L(λ),   L(λ) = ‖[A 1]‖₂² / (4n) + 2e^λ ≥ ‖∇²ₓf‖₂

(``fixed_point``: fixed-point iteration, FISTA, the unrolled and truncated methods, the
Neumann series and RTHO). Since ψ'' ≤ 1/4 for ψ(s) = log(1 + e^{−s}), L(λ) bounds the
Lipschitz constant of ∇ₓf. On this data the bound is loose near the held-out optimum
(λ ≈ −7, where ∇²ₓf has eigenvalues in [1.8e-3, 0.14] but L ≈ 3.3): reaching ‖x − T(x)‖ ≤ 1e-12
takes ~35 000 gradient steps there (FISTA: ~1 300), against ~700 (FISTA: ~115) at the default
start λ = 0. Fixed-point solvers and unrolling are meant for moderate λ; Newton + implicit
differentiation serves the whole range.

The split is stratified, 50/50 by default, drawn with a fixed seed; features are standardized
with the training split's mean and standard deviation only.
"""

from __future__ import annotations

import inspect
import math
from numbers import Real

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import invcal as ic
from invcal.catalog import Setup

from ._options import integer

__all__ = ["build", "setup", "logistic_loss", "objective", "gradient_step", "held_out_loss"]


# --------------------------------------------------------------------------------------
# The maths: pure functions of (x, theta, data)
# --------------------------------------------------------------------------------------
def logistic_loss(x, A, y):
    """(1/n) Σᵢ log(1 + exp(−yᵢ(aᵢᵀw + b))) with x = (w, b); softplus keeps it stable."""
    margins = y * (A @ x[:-1] + x[-1])
    return jnp.mean(jax.nn.softplus(-margins))


def objective(x, theta, data):
    """Inner objective f(x, λ) = training logistic loss + e^λ‖w‖² (intercept unpenalized)."""
    w = x[:-1]
    return logistic_loss(x, data["A_train"], data["y_train"]) + jnp.exp(theta["lam"]) * jnp.sum(
        w * w
    )


def lipschitz(theta, data):
    """L(λ) = ‖[A 1]‖₂²/(4n) + 2e^λ, an upper bound on the Lipschitz constant of ∇ₓf."""
    return data["lip_loss"] + 2.0 * jnp.exp(theta["lam"])


def gradient_step(x, theta, data):
    """T(x, λ) = x − ∇ₓf(x, λ)/L(λ): a contraction whose fixed point is x*(λ)."""
    return x - jax.grad(objective)(x, theta, data) / lipschitz(theta, data)


def held_out_loss(x, theta, data):
    """Outer criterion E = mean logistic loss on the held-out split."""
    return logistic_loss(x, data["A_test"], data["y_test"])


# --------------------------------------------------------------------------------------
# Data and problem
# --------------------------------------------------------------------------------------
def _check_test_size(test_size) -> float:
    if isinstance(test_size, str):
        try:
            test_size = float(test_size)
        except ValueError:
            raise ValueError(
                f"test_size must be a fraction in (0, 1); got {test_size!r}."
            ) from None
    if (
        isinstance(test_size, bool)
        or not isinstance(test_size, Real)
        or not (0.0 < float(test_size) < 1.0)
    ):
        raise ValueError(
            f"test_size must be a fraction in (0, 1) (the held-out share of the 569 rows); "
            f"got {test_size!r}."
        )
    return float(test_size)


def _check_lam(lam0) -> float:
    try:
        v = float(lam0)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or isinstance(lam0, bool):
        raise ValueError(f"lam0 must be a finite real number (log of the penalty); got {lam0!r}.")
    return v


def load_data(*, test_size=0.5, seed=0, n_features=None):
    """The standardized breast-cancer split as a dict of float arrays.

    Keys ``A_train, y_train, A_test, y_test`` (labels ±1) and ``lip_loss`` = ‖[A_train 1]‖₂²/(4n).
    ``n_features`` keeps the first features only (a smaller problem for tests).
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    test_size = _check_test_size(test_size)
    seed = integer("seed", seed, 0)
    A, labels = load_breast_cancer(return_X_y=True)
    n_features = integer("n_features", n_features, 1, A.shape[1], none_ok=True)
    if n_features is not None:
        A = A[:, :n_features]
    y = 2.0 * labels - 1.0
    A_tr, A_te, y_tr, y_te = train_test_split(
        A, y, test_size=test_size, random_state=seed, stratify=labels
    )
    mean, std = A_tr.mean(axis=0), A_tr.std(axis=0)
    A_tr, A_te = (A_tr - mean) / std, (A_te - mean) / std
    n = A_tr.shape[0]
    lip_loss = np.linalg.norm(np.c_[A_tr, np.ones(n)], 2) ** 2 / (4.0 * n)
    return {
        "A_train": jnp.asarray(A_tr),
        "y_train": jnp.asarray(y_tr),
        "A_test": jnp.asarray(A_te),
        "y_test": jnp.asarray(y_te),
        "lip_loss": jnp.asarray(lip_loss),
    }


def build(*, test_size=0.5, seed=0, n_features=None, lam0=0.0) -> ic.Problem:
    """The logistic-regression bilevel problem (see the module docstring for the maths).

    - ``test_size``: held-out fraction in (0, 1), stratified split (default 0.5).
    - ``seed``: seed of the split (default 0).
    - ``n_features``: keep only the first ``n_features`` of the 30 features (default: all).
    - ``lam0``: initial λ, the log of the penalty weight (default 0, i.e. e^λ = 1).
    """
    data = load_data(test_size=test_size, seed=seed, n_features=n_features)
    lam0 = _check_lam(lam0)
    p = data["A_train"].shape[1]
    return ic.Problem(
        space=ic.Space(lam=ic.Param(lam0)),
        criterion=held_out_loss,
        x0=jnp.zeros(p + 1),
        data=data,
        objective=objective,
        fixed_point=gradient_step,
        name="logreg_l2",
    )


# --------------------------------------------------------------------------------------
# Command-line defaults
# --------------------------------------------------------------------------------------
# Step counts measured at the default start λ = 0 (split 50/50, seed 0): fixed-point
# iteration reaches ‖x − T(x)‖ ≤ 1e-12 after 681 steps, FISTA after 115 (at λ = −3: 1257 and
# 209). The unrolled methods run a fixed number of steps, so they get comfortable margins.
# Far below λ = −3 the gradient step contracts slowly (see the module docstring): use Newton
# + Implicit there.
_FP_STEPS = 3000
_FISTA_STEPS = 600


def _linear_solvers():
    tol = {"rtol": 1e-11, "atol": 1e-13}
    return {
        "implicit-cg": lx.CG(**tol, max_steps=1000),
        "implicit-gmres": lx.GMRES(**tol, restart=40, max_steps=1000),
        "implicit-normalcg": lx.Normal(lx.CG(**tol, max_steps=1000)),
        "implicit-bicgstab": lx.BiCGStab(**tol, max_steps=1000),
        "implicit-dense": lx.LU(),
        # On the fixed-point system I − ∂T/∂x the series converges like (1 − μ/L)^k.
        "implicit-neumann": ic.NeumannSeries(num_terms=_FP_STEPS, rtol=1e-10),
    }


def methods():
    """Every hypergradient method ``invcal check`` compares, by name."""
    out = {name: ic.Implicit(linear_solver=lin) for name, lin in _linear_solvers().items()}
    out["implicit-forward"] = ic.Implicit(
        linear_solver=lx.CG(rtol=1e-11, atol=1e-13, max_steps=1000), mode="forward"
    )
    out["unrolled"] = ic.Unrolled(num_steps=_FISTA_STEPS)
    out["forward-unrolled"] = ic.ForwardUnrolled(num_steps=_FISTA_STEPS)
    out["truncated-10"] = ic.Truncated(num_steps=_FP_STEPS, k=10)
    out["truncated-100"] = ic.Truncated(num_steps=_FP_STEPS, k=100)
    return out


def method_solvers():
    """The inner solver each non-default method needs (the unrolled ones iterate T)."""
    fista = ic.FISTA(tol=1e-11, max_steps=_FISTA_STEPS)
    fpi = ic.FixedPointIteration(tol=1e-11, max_steps=_FP_STEPS)
    return {
        "unrolled": fista,
        "forward-unrolled": fista,
        "truncated-10": fpi,
        "truncated-100": fpi,
    }


def setup(**options) -> Setup:
    """ℓ2-regularized logistic regression on breast cancer, penalty e^λ (Pedregosa 2016, HOAG).

    ``options`` are passed to :func:`build` (``test_size``, ``seed``, ``n_features``,
    ``lam0``). Defaults: Newton inner solver, implicit differentiation with CG on the
    Hessian, Adam in λ; the grid spans the held-out optimum near λ ≈ −7.
    """
    known = list(inspect.signature(build).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"logreg_l2 got unknown option(s) {unknown}; known options: {known}.")
    return Setup(
        problem=build(**options),
        solver=ic.Newton(tol=1e-10),
        method=ic.Implicit(),
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=methods(),
        method_solvers=method_solvers(),
        optimizer="adam",
        learning_rate=0.5,
        steps=40,
        grid={"lam": np.linspace(-12.0, 2.0, 29)},
    )
