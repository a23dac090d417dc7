r"""Learning rate, momentum and a learning-rate schedule of gradient descent, tuned on
validation data.

The setting of Franceschi, Donini, Frasconi & Pontil (2017), "Forward and reverse
gradient-based hyperparameter optimization", ICML: the inner "solution" is not a minimizer but
the weights after T steps of gradient descent with (heavy-ball) momentum on a training loss,

    v_t = μ v_{t−1} + ∇J_t(w_{t−1}),
    w_t = w_{t−1} − η_t v_t = w_{t−1} − η_t (μ v_{t−1} + ∇J_t(w_{t−1})),     t = 1, …, T,

from w_0 = v_0 = 0, and the outer criterion is the validation loss of w_T. Since T is finite
(early stopping regularizes) w_T is *defined* by the iteration, so the problem is
``fixed_steps=True``: its hypergradient is REVERSE-HG (``Unrolled``), FORWARD-HG
(``ForwardUnrolled``) or truncated back-propagation (``Truncated(k)``); implicit
differentiation is refused.

Data: scikit-learn's diabetes regression (442 patients, 10 features, shipped offline),
expanded with degree-2 polynomial features by default (65 columns: the model overfits without
early stopping, so η, μ have an interior optimum), split train/validation with a fixed seed;
features and target are standardized with the training split's statistics (so no intercept is
needed). With n training rows aᵢ, targets yᵢ and B cyclic mini-batches S_0, …, S_{B−1}
(contiguous blocks of the shuffled training rows; B = 1 is full batch),

    J_t(w) = (1/2|S_b|) Σ_{i∈S_b} (aᵢᵀw − yᵢ)²,   b = (t − 1) mod B,
    E(w_T) = (1/2m) Σⱼ (a'ⱼᵀw_T − y'ⱼ)²    over the m validation rows.

Schedules of η_t (k = t − 1 = 0, …, T − 1 counts the steps already taken):

- ``"constant"``:      η_t = η;                  θ = (η: Log, μ: Bounded(0, 1));
- ``"exponential"``:   η_t = η₀ exp(−κ k/T);     θ = (η₀: Log, κ ∈ ℝ, μ: Bounded(0, 1));
- ``"inverse_time"``:  η_t = η₀ / (1 + κ k/T);   θ = (η₀: Log, κ: Log, μ: Bounded(0, 1)).

The iterate is the state x = (w, v, k) with a float step counter k (integers would need
``float0`` tangents in forward mode; a float counter is exact up to 2⁵³ steps).
Run the problem with ``invcal.FixedSteps(T)`` for the T given to :func:`build`.
"""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
import numpy as np

import invcal as ic
from invcal.catalog import Setup

from ._options import integer, number

__all__ = ["SCHEDULES", "build", "setup", "load_data", "learning_rate", "validation_loss"]

SCHEDULES = ("constant", "exponential", "inverse_time")


# --------------------------------------------------------------------------------------
# The maths: pure functions of (x, theta, data)
# --------------------------------------------------------------------------------------
def learning_rate(schedule: str, theta, k, horizon):
    """η_t for the step after k steps of a run of length ``horizon`` (see the module docstring)."""
    if schedule == "constant":
        return theta["eta"]
    if schedule == "exponential":
        return theta["eta0"] * jnp.exp(-theta["kappa"] * k / horizon)
    if schedule == "inverse_time":
        return theta["eta0"] / (1.0 + theta["kappa"] * k / horizon)
    raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}.")


def training_gradient(w, k, data):
    """∇J_t(w) on the mini-batch b = k mod B (weights 1/|S_b| on its rows, 0 elsewhere)."""
    weights = data["batch_weights"]
    b = jnp.mod(k.astype(jnp.int32), weights.shape[0])
    residual = data["A_train"] @ w - data["y_train"]
    return data["A_train"].T @ (weights[b] * residual)


def _momentum_step(schedule):
    def step(x, theta, data):
        w, v, k = x
        eta = learning_rate(schedule, theta, k, data["horizon"])
        v_new = theta["mu"] * v + training_gradient(w, k, data)
        return (w - eta * v_new, v_new, k + 1.0)

    step.__name__ = f"momentum_step_{schedule}"
    step.__doc__ = (
        f"One heavy-ball step with the {schedule!r} schedule: (w, v, k) → "
        "(w − η_t(μv + ∇J_t(w)), μv + ∇J_t(w), k + 1)."
    )
    return step


# Module-level step maps: one stable function per schedule, so compiled code is reused
# across problems built with the same schedule.
_STEPS = {name: _momentum_step(name) for name in SCHEDULES}


def validation_loss(x, theta, data):
    """Outer criterion E = (1/2m)‖A_val w_T − y_val‖² (half mean squared error)."""
    w = x[0]
    r = data["A_val"] @ w - data["y_val"]
    return 0.5 * jnp.mean(r * r)


# --------------------------------------------------------------------------------------
# Data and problem
# --------------------------------------------------------------------------------------
def _check_open(name, value, lo, hi, what):
    v = number(value, float)
    if v is None or not (math.isfinite(v) and lo < v < hi):
        raise ValueError(f"{name} must be {what} in ({lo}, {hi}); got {value!r}.")
    return v


def load_data(*, val_size=0.5, seed=0, degree=2, num_batches=1, num_steps=100):
    """The standardized diabetes split as a dict of float arrays.

    Keys ``A_train, y_train, A_val, y_val``, ``batch_weights`` (B × n, row b has 1/|S_b| on
    the rows of mini-batch b) and ``horizon`` (T, a float used by the schedules).
    """
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import PolynomialFeatures

    val_size = _check_open("val_size", val_size, 0.0, 1.0, "a fraction")
    seed = integer("seed", seed, 0)
    degree = integer("degree", degree, 1, 3)
    num_steps = integer("num_steps", num_steps, 1)
    A, y = load_diabetes(return_X_y=True)
    if degree > 1:
        A = PolynomialFeatures(degree, include_bias=False).fit_transform(A)
    A_tr, A_va, y_tr, y_va = train_test_split(A, y, test_size=val_size, random_state=seed)
    n = A_tr.shape[0]
    num_batches = integer("num_batches", num_batches, 1, n)
    mean, std = A_tr.mean(axis=0), A_tr.std(axis=0)
    y_mean, y_std = y_tr.mean(), y_tr.std()
    weights = np.zeros((num_batches, n))
    for b, rows in enumerate(np.array_split(np.arange(n), num_batches)):
        weights[b, rows] = 1.0 / len(rows)
    return {
        "A_train": jnp.asarray((A_tr - mean) / std),
        "y_train": jnp.asarray((y_tr - y_mean) / y_std),
        "A_val": jnp.asarray((A_va - mean) / std),
        "y_val": jnp.asarray((y_va - y_mean) / y_std),
        "batch_weights": jnp.asarray(weights),
        "horizon": jnp.asarray(float(num_steps)),
    }


def _space(schedule, eta0, mu0, kappa0) -> ic.Space:
    mu = ic.Param(mu0, ic.Bounded(0.0, 1.0))
    if schedule == "constant":
        return ic.Space(eta=ic.Param(eta0, ic.Log()), mu=mu)
    kappa_transform = ic.Identity() if schedule == "exponential" else ic.Log()
    return ic.Space(eta0=ic.Param(eta0, ic.Log()), kappa=ic.Param(kappa0, kappa_transform), mu=mu)


def build(
    *,
    schedule="constant",
    num_steps=100,
    val_size=0.5,
    seed=0,
    degree=2,
    num_batches=1,
    eta0=0.01,
    mu0=0.5,
    kappa0=None,
) -> ic.Problem:
    """The momentum-schedule bilevel problem (see the module docstring for the maths).

    - ``schedule``: ``"constant"`` (learn η, μ), ``"exponential"`` or ``"inverse_time"``
      (learn η₀, κ, μ).
    - ``num_steps``: T, the length of the training run (solve with ``FixedSteps(T)``).
    - ``val_size``: validation fraction in (0, 1); ``seed``: seed of the split.
    - ``degree``: polynomial feature degree (1: the 10 raw features; 2: 65 columns).
    - ``num_batches``: B cyclic mini-batches (1: full-batch gradient descent).
    - ``eta0``, ``mu0``, ``kappa0``: initial η (or η₀), μ and κ (default 0 for the
      exponential schedule, 1 for inverse time).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}; got {schedule!r}.")
    data = load_data(
        val_size=val_size,
        seed=seed,
        degree=degree,
        num_batches=num_batches,
        num_steps=num_steps,
    )
    eta0 = _check_open("eta0", eta0, 0.0, math.inf, "a learning rate")
    mu0 = _check_open("mu0", mu0, 0.0, 1.0, "a momentum")
    if kappa0 is None:
        kappa0 = 0.0 if schedule == "exponential" else 1.0
    lo = -math.inf if schedule == "exponential" else 0.0
    kappa0 = _check_open("kappa0", kappa0, lo, math.inf, "a decay rate")
    p = data["A_train"].shape[1]
    x0 = (jnp.zeros(p), jnp.zeros(p), jnp.asarray(0.0))
    return ic.Problem(
        space=_space(schedule, eta0, mu0, kappa0),
        criterion=validation_loss,
        x0=x0,
        data=data,
        fixed_point=_STEPS[schedule],
        fixed_steps=True,
        name="gdm_schedule" if schedule == "constant" else f"gdm_schedule[{schedule}]",
    )


def methods(num_steps=100):
    """Every hypergradient method ``invcal check`` compares, by name (all unroll T steps)."""
    num_steps = int(num_steps)
    out = {
        "unrolled": ic.Unrolled(),
        "forward-unrolled": ic.ForwardUnrolled(),
    }
    for k in (1, 10):
        if k < num_steps:
            out[f"truncated-{k}"] = ic.Truncated(k=k)
    return out


def setup(**options) -> Setup:
    """Momentum GD on diabetes: learn η, μ (or a decaying schedule) by unrolling (Franceschi 2017).

    ``options`` are passed to :func:`build` (``schedule``, ``num_steps``, ``val_size``,
    ``seed``, ``degree``, ``num_batches``, ``eta0``, ``mu0``, ``kappa0``). Defaults:
    ``FixedSteps(T)``, forward-mode unrolling (FORWARD-HG: θ has 2 or 3 entries), Adam in
    the unconstrained coordinates. The landscape grid covers (η, μ) for the constant schedule
    only (the schedules have three hyperparameters).
    """
    known = list(inspect.signature(build).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"gdm_schedule got unknown option(s) {unknown}; known options: {known}.")
    problem = build(**options)
    num_steps = int(problem.data["horizon"])
    schedule = options.get("schedule", "constant")
    grid = {}
    if schedule == "constant":
        grid = {"eta": np.geomspace(1e-3, 0.1, 21), "mu": np.linspace(0.05, 0.95, 19)}
    return Setup(
        problem=problem,
        solver=ic.FixedSteps(num_steps),
        method=ic.ForwardUnrolled(),
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=methods(num_steps),
        optimizer="adam",
        learning_rate=0.1,
        steps=50,
        grid=grid,
    )
