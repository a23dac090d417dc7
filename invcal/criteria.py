r"""Outer criteria: what a good θ means when the truth is unknown.

Every criterion here is a pure function ``E(x, theta, data)`` (or a factory returning one),
so it plugs into :class:`invcal.Problem` and into every hypergradient method.

* **Held-out measurements** — :func:`held_out`: E = Σᵢ ωᵢ(ŷᵢ(x) − y'ᵢ)² / Σᵢ ωᵢ on rows kept
  out of the inner fit (ω = 1 unless the data carries padding weights).
* **K-fold cross-validation** — :func:`kfold_data` stacks the K training/validation splits
  along a leading axis (padding unequal folds with zero rows, which leave a least-squares fit
  unchanged); the K inner problems are solved side by side (``vmap``) with one shared θ and
  :func:`kfold` averages the per-fold criterion (Stone 1974; the bilevel form is Bertrand et
  al. 2020).
* **SURE** — Stein's unbiased risk estimate (Stein 1981) for y = μ + σε, ε ~ N(0, I_m) and an
  estimate μ̂(y) = f(y) of μ:

      SURE(θ) = ‖y − f(y)‖² − mσ² + 2σ² div f(y),      E[SURE] = E‖f(y) − μ‖².

  The divergence is estimated by Monte Carlo with a random probe δ ~ N(0, I_m) (Girard 1989;
  Ramani, Blu & Unser 2008): div f ≈ δᵀ J_f(y) δ. :func:`monte_carlo_divergence` computes
  δᵀJδ with an exact JVP (``jax.jvp`` through a differentiable solve). For *tuning*, use the
  finite-difference JVP δᵀ(f(y + εδ) − f(y))/ε of Deledalle, Vaiter, Fadili & Peyré (2014,
  "Stein Unbiased GrAdient estimator of the Risk"): :func:`sure_pair` stacks the two inner
  problems (data y and y + εδ) as a batch and :func:`sure` is a criterion of both solutions,
  so its hypergradient is an ordinary (batched) one. The distinction matters for non-smooth
  estimators: for the Lasso the exact divergence is |S| (Zou, Hastie & Tibshirani 2007), a
  step function of λ whose derivative is zero, while the finite-difference divergence is
  continuous in λ and its hypergradient sees the degrees of freedom change.
* **Truth** — :func:`mse_to_truth` for synthetic studies (PSNR of images in [0, 1]:
  :func:`invcal.imaging.psnr`).

**One abstraction.** Every criterion class here (and the imaging criteria of
:mod:`invcal.imaging.tuning`) is an :class:`AbstractCriterion`: a call ``E(x, θ, data)`` and an
optional preparation ``prepare(data)`` that turns the user's data into what the criterion reads
(SURE's probe copies; the identity for the others). A plain function ``E(x, theta, data)`` is a
criterion too.

Data conventions: a ``predict`` argument is either a key of ``data`` naming a matrix (or an
operator with ``.mv``) applied to x, or a function ``predict(x, data)``; a ``target`` is a key or
a function ``target(data)``.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AbstractCriterion",
    "HeldOut",
    "KFold",
    "MSEToTruth",
    "SURE",
    "SureProbes",
    "held_out",
    "kfold",
    "kfold_data",
    "monte_carlo_divergence",
    "mse_to_truth",
    "sure",
    "sure_pair",
    "sure_probes",
    "sure_value",
    "stein_risk",
]


def _apply(M, x):
    return M.mv(x) if hasattr(M, "mv") else M @ x


def _predictor(predict) -> Callable:
    if callable(predict):
        return predict
    if isinstance(predict, str):
        key = predict
        return lambda x, data: _apply(data[key], x)
    raise TypeError(f"predict must be a data key or a function predict(x, data); got {predict!r}.")


def _target(target) -> Callable:
    if callable(target):
        return target
    if isinstance(target, str):
        key = target
        return lambda data: data[key]
    raise TypeError(f"target must be a data key or a function target(data); got {target!r}.")


# --------------------------------------------------------------------------------------
# The abstraction
# --------------------------------------------------------------------------------------
class AbstractCriterion(eqx.Module):
    """An outer criterion: ``E(x, θ, data)`` → a scalar, and what it needs from the data.

    Subclasses implement ``__call__``; those that need more than the user's data (SURE's
    perturbed copies and probes) override :meth:`prepare`. Criteria are ``eqx.Module`` values,
    so two equal criteria share compiled code."""

    @abc.abstractmethod
    def __call__(self, x, theta, data):
        """E(x, θ, data), a scalar."""

    def prepare(self, data):
        """The data this criterion reads, built from the user's ``data`` before any solve
        (checked there: bad input raises here, in one line). The default returns it
        unchanged."""
        return data

    @property
    def __name__(self):
        return type(self).__name__.lower()


# --------------------------------------------------------------------------------------
# Held-out and K-fold
# --------------------------------------------------------------------------------------
class HeldOut(AbstractCriterion):
    r"""E(x, θ, data) = Σᵢ ωᵢ (ŷᵢ − y'ᵢ)² / Σᵢ ωᵢ: see :func:`held_out`."""

    predict: str | Callable = eqx.field(static=True)
    target: str | Callable = eqx.field(static=True)
    weight: str | None = eqx.field(static=True)

    def __call__(self, x, theta, data):
        r = _predictor(self.predict)(x, data) - _target(self.target)(data)
        if self.weight is not None and isinstance(data, Mapping) and self.weight in data:
            om = data[self.weight]
            return jnp.sum(om * r * r) / jnp.sum(om)
        return jnp.mean(r * r)

    @property
    def __name__(self):
        return "held_out_mse"


def held_out(predict="A_val", target="y_val", *, weight: str | None = "val_weight") -> HeldOut:
    r"""E(x, θ, data) = Σᵢ ωᵢ (ŷᵢ − y'ᵢ)² / Σᵢ ωᵢ, the mean squared error on held-out rows.

    ``weight`` names an optional data entry of row weights ω (used by :func:`kfold_data` to
    ignore padding rows); when the data has no such entry all rows count. Criteria are
    ``eqx.Module`` values, so two equal criteria share compiled code.
    """
    _predictor(predict), _target(target)  # type checks, before any solve
    return HeldOut(predict=predict, target=target, weight=weight)


class KFold(AbstractCriterion):
    """The mean over folds of a per-fold criterion: see :func:`kfold`."""

    criterion: Callable = eqx.field(static=True)

    def __call__(self, x, theta, data):
        return jnp.mean(jax.vmap(self.criterion, in_axes=(0, None, 0))(x, theta, data))

    @property
    def __name__(self):
        return f"kfold_{getattr(self.criterion, '__name__', 'criterion')}"


def kfold(criterion: Callable) -> KFold:
    """The mean over folds of ``criterion(x_k, θ, data_k)``, for x and every data leaf stacked
    along a leading fold axis (the folds are evaluated with ``vmap``; θ is shared)."""
    if not callable(criterion):
        raise TypeError(f"kfold needs a criterion(x, theta, data); got {criterion!r}.")
    return KFold(criterion=criterion)


def kfold_data(
    A,
    y,
    folds: int | Sequence,
    *,
    center: bool = False,
) -> dict:
    r"""Stack the K (train, validation) splits of linear measurements y ≈ Ax.

    ``folds`` is K (contiguous folds, as scikit-learn's ``KFold(K)`` without shuffling) or a
    sequence of (train_indices, validation_indices); one pair is a single held-out split.

    Returns a dict whose leaves have a leading axis K: ``A``, ``y`` (training rows,
    zero-padded to the largest fold), ``A_val``, ``y_val``, ``val_weight`` (1 on real
    validation rows, 0 on padding), ``n_train`` (real training rows per fold) and, with
    ``center=True`` (a model with an unpenalized intercept), the training means ``x_mean``
    (p,) and ``y_mean`` subtracted from each fold's training *and* validation rows, as
    scikit-learn does inside each fold.
    """
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    if A.ndim != 2 or y.shape != (A.shape[0],):
        raise ValueError(
            f"kfold_data: A must be (n, p) and y (n,); got A {A.shape} and y {y.shape}."
        )
    n, p = A.shape
    if isinstance(folds, (int, np.integer)):
        k = int(folds)
        if k < 2 or k > n:
            raise ValueError(f"kfold_data: need 2 <= folds <= n_samples={n}; got folds={k}.")
        sizes = np.full(k, n // k)
        sizes[: n % k] += 1
        stops = np.cumsum(sizes)
        splits = []
        for i in range(k):
            val = np.arange(stops[i] - sizes[i], stops[i])
            splits.append((np.setdiff1d(np.arange(n), val), val))
    else:
        splits = [(np.asarray(tr), np.asarray(va)) for tr, va in folds]
        if not splits:
            raise ValueError("kfold_data: need at least one (train, validation) split.")
    n_tr = max(len(tr) for tr, _ in splits)
    n_va = max(len(va) for _, va in splits)
    k = len(splits)
    # Written in place into preallocated stacks: K copies of the design are the largest
    # arrays of a cross-validation problem (5 × 560 × 5000 floats for 700 × 5000).
    out = {
        "A": _host_stack((k, n_tr, p)),
        "y": np.zeros((k, n_tr)),
        "A_val": _host_stack((k, n_va, p)),
        "y_val": np.zeros((k, n_va)),
        "val_weight": np.zeros((k, n_va)),
        "n_train": np.zeros(k),
        "x_mean": np.zeros((k, p)),
        "y_mean": np.zeros(k),
    }
    total = A.sum(0) if center else None
    for i, (tr, va) in enumerate(splits):
        At, Av = out["A"][i, : len(tr)], out["A_val"][i, : len(va)]
        yt, yv = y[tr], y[va]
        xm = None
        if center:
            # the training mean from the column sums (one pass over the validation rows),
            # so that each row is copied and centered in one pass
            if len(va) <= len(tr):
                xm = (total - A[va].sum(0)) / len(tr)
            else:
                xm = A[tr].mean(0)
            ym = yt.mean()
            out["x_mean"][i], out["y_mean"][i] = xm, ym
            yt, yv = yt - ym, yv - ym
        _copy_rows(A, tr, At, xm)
        _copy_rows(A, va, Av, xm)
        out["A"][i, len(tr) :] = 0.0  # padding rows (folds of unequal size)
        out["A_val"][i, len(va) :] = 0.0
        out["y"][i, : len(tr)] = yt
        out["y_val"][i, : len(va)] = yv
        out["val_weight"][i, : len(va)] = 1.0
        out["n_train"][i] = len(tr)
    # device_put of a 64-byte aligned float64 array on a CPU backend shares its buffer
    # (uncommitted, no copy; the stacks of 700 × 5000 are 112 + 28 MB that were copied in
    # ~40 ms each per fit). The stacks are not written after this.
    return {name: jax.device_put(v) for name, v in out.items()}


#: Alignment XLA's CPU client needs to use a host buffer in place.
_ALIGN = 64


def _host_stack(shape) -> np.ndarray:
    """An uninitialized float64 array at a 64-byte aligned address: XLA's CPU client then
    uses it in place (``device_put`` aliases it instead of copying)."""
    nbytes = int(np.prod(shape)) * 8
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + nbytes].view(np.float64).reshape(shape)


def _copy_rows(A, rows, out, shift=None) -> None:
    """out[:] = A[rows] (− ``shift``), by slices over the runs of consecutive indices (the
    contiguous folds of ``KFold``: one or two runs), each row written once: 700 × 5000 into
    five folds in 13 ms against 32 ms for ``np.take`` and a second pass to center."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    if starts.size > max(8, rows.size // 64):  # scattered rows: one gather
        np.take(A, rows, axis=0, out=out)
        if shift is not None:
            out -= shift
        return
    for a, b in zip(starts, stops, strict=True):
        src = A[rows[a] : rows[a] + (b - a)]
        if shift is None:
            out[a:b] = src
        else:
            np.subtract(src, shift, out=out[a:b])


# --------------------------------------------------------------------------------------
# SURE
# --------------------------------------------------------------------------------------
def _check_sigma(sigma) -> float:
    try:
        s = float(np.asarray(sigma))
    except (TypeError, ValueError):
        s = math.nan
    if isinstance(sigma, bool) or not (math.isfinite(s) and s > 0):
        raise ValueError(
            f"SURE needs the noise standard deviation sigma > 0 (finite); got sigma={sigma!r}. "
            "Estimate it first (e.g. from the median absolute deviation of a high-pass residual) "
            "or use a held-out criterion."
        )
    return s


def _check_probes(probes, who):
    if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
        raise ValueError(f"{who}: probes must be an integer >= 1; got {probes!r}.")


class SureProbes(eqx.Module):
    r"""What finite-difference SURE reads besides the solutions, typed: the probes δ, the
    step ε and the noise level σ, and ``measurements`` m (the number of real measurements
    when it is not the size of the fitted vector, e.g. the kept pixels of an inpainting).

    In a batch from :func:`sure_pair` every leaf has the batch's leading axis: copy k ≥ 1
    holds its probe δₖ (copy 0 holds δ₁), and ε, σ one entry per copy. It travels in the
    problem's data under the one name ``"sure_probes"`` (:func:`sure_probes` reads it)."""

    delta: jax.Array
    eps: jax.Array
    sigma: jax.Array
    measurements: jax.Array | None = None


def sure_probes(data) -> SureProbes:
    """The :class:`SureProbes` of prepared SURE data (a dict or a typed problem data)."""
    try:
        probes = data["sure_probes"]
    except KeyError:
        probes = None
    if not isinstance(probes, SureProbes):
        names = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise KeyError(
            "SURE reads the probes that its preparation puts in the data "
            "(invcal.criteria.sure_pair, or the criterion's prepare()); this data has none: "
            f"{names}."
        )
    return probes


def sure_pair(
    data: Mapping,
    *,
    sigma,
    eps: float | None = None,
    seed: int = 0,
    target="y",
    probes: int = 1,
) -> dict:
    r"""A batch of 1 + ``probes`` inner problems for finite-difference SURE: every leaf of
    ``data`` stacked, copy k ≥ 1 with its measurements perturbed to y + εδₖ (δₖ ~ N(0, I) drawn
    with ``seed``; copy 0 keeps y). ε defaults to 2σ/m^0.3 (Deledalle et al. 2014). Adds the
    probes, ε and σ as one :class:`SureProbes` entry, ``"sure_probes"``.
    More probes average the Monte-Carlo divergence (its variance falls as 1/probes) at the
    cost of one inner solve each. Raises before any solve if σ <= 0 or y is not finite."""
    sigma = _check_sigma(sigma)
    _check_probes(probes, "sure_pair")
    if not isinstance(data, Mapping) or target not in data:
        raise ValueError(f"sure_pair: data must be a dict with the measurements under {target!r}.")
    y = np.asarray(data[target], dtype=float)
    if not np.all(np.isfinite(y)):
        raise ValueError("sure_pair: the measurements contain NaN or inf.")
    m = y.size
    eps = 2.0 * sigma / m**0.3 if eps is None else float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"sure_pair: eps must be > 0; got {eps!r}.")
    # (probes, *y.shape): the same stream as one draw of y.shape when probes == 1.
    delta = np.random.default_rng(seed).normal(size=(int(probes), *y.shape))
    copies = int(probes) + 1
    pair = jax.tree_util.tree_map(lambda a: jnp.stack([jnp.asarray(a)] * copies), dict(data))
    pair[target] = jnp.stack([jnp.asarray(y)] + [jnp.asarray(y + eps * d) for d in delta])
    if "sure_probes" in pair:
        raise ValueError("sure_pair: data already holds SURE probes ('sure_probes').")
    pair["sure_probes"] = SureProbes(
        delta=jnp.stack([jnp.asarray(delta[0])] + [jnp.asarray(d) for d in delta]),
        eps=jnp.full((copies,), eps),
        sigma=jnp.full((copies,), sigma),
    )
    return pair


class SURE(AbstractCriterion):
    """Finite-difference Monte-Carlo SURE of a stacked batch: see :func:`sure`.

    ``sigma``, ``eps``, ``seed`` and ``probes`` are settings of :meth:`prepare` only (the call
    reads σ and ε from the prepared data), so criteria that differ only in them are equal and
    share compiled code: tuning the same problem at another noise level compiles nothing."""

    predict: str | Callable = eqx.field(static=True)
    target: str | Callable = eqx.field(static=True)
    normalize: bool = eqx.field(static=True)
    sigma: float | None = eqx.field(default=None, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    seed: int = eqx.field(default=0, static=True)
    probes: int = eqx.field(default=1, static=True)

    def __eq__(self, other):
        return type(other) is type(self) and self._call_key() == other._call_key()

    def __hash__(self):
        return hash((type(self), self._call_key()))

    def _call_key(self):
        return (self.predict, self.target, self.normalize)

    def prepare(self, data):
        """The batch of 1 + ``probes`` inner problems (:func:`sure_pair`) built from ``data``
        with this criterion's σ, ε, seed and probes; σ must have been given."""
        if self.sigma is None:
            raise ValueError(
                "SURE.prepare needs the noise level: build the criterion with "
                "invcal.criteria.sure(..., sigma=σ), or call invcal.criteria.sure_pair(data, "
                "sigma=σ) yourself."
            )
        if not isinstance(self.target, str):
            raise ValueError(
                "SURE.prepare perturbs the measurements under a data key: build the criterion "
                f"with target='<key>'; got target={self.target!r}."
            )
        return sure_pair(
            data,
            sigma=self.sigma,
            eps=self.eps,
            seed=self.seed,
            target=self.target,
            probes=self.probes,
        )

    def __call__(self, x, theta, data):
        pred, tgt = _predictor(self.predict), _target(self.target)
        d0 = jax.tree_util.tree_map(lambda a: a[0], data)
        f0 = pred(x[0], d0)
        y = tgt(d0)
        probes = sure_probes(data)
        sigma, eps = probes.sigma[0], probes.eps[0]
        # Copies 1..K are the probes (K = 1 for a pair): the divergence is their mean.
        div = 0.0
        for k in range(1, x.shape[0]):
            dk = jax.tree_util.tree_map(lambda a, k=k: a[k], data)
            div = div + jnp.vdot(probes.delta[k], pred(x[k], dk) - f0)
        div = div / ((x.shape[0] - 1) * eps)
        value = stein_risk(y - f0, div, sigma, y.size)
        return value / y.size if self.normalize else value

    @property
    def __name__(self):
        return "sure"


def sure(
    predict="A",
    target="y",
    *,
    normalize: bool = True,
    sigma=None,
    eps: float | None = None,
    seed: int = 0,
    probes: int = 1,
) -> SURE:
    r"""Finite-difference Monte-Carlo SURE of the fitted measurements f(y) = predict(x*(y)),
    a criterion of the stacked pair (x*(y), x*(y + εδ)) from :func:`sure_pair`:

        SURE = ‖y − f(y)‖² − mσ² + 2σ² δᵀ(f(y + εδ) − f(y))/ε     (divided by m if ``normalize``)

    With K probes (``sure_pair(..., probes=K)``) the divergence term is the mean of the K
    finite differences δₖᵀ(f(y + εδₖ) − f(y))/ε.

    With ``sigma`` (and optionally ``eps``, ``seed``, ``probes``) the criterion's
    :meth:`SURE.prepare` builds that batch from the user's data (checked here, before any
    solve); without it, build the batch with :func:`sure_pair`.

    (Stein 1981; Deledalle, Vaiter, Fadili & Peyré 2014)."""
    _predictor(predict), _target(target)
    if sigma is not None:
        sigma = _check_sigma(sigma)
        _check_probes(probes, "sure")
    return SURE(
        predict=predict,
        target=target,
        normalize=normalize,
        sigma=sigma,
        eps=None if eps is None else float(eps),
        seed=int(seed),
        probes=int(probes),
    )


def __getattr__(name):
    if name == "Sure":
        warnings.warn(
            "invcal.criteria.Sure is now invcal.criteria.SURE (one spelling, as in "
            "invcal.imaging.SURE).",
            DeprecationWarning,
            stacklevel=2,
        )
        return SURE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def monte_carlo_divergence(fn: Callable, y, *, key=0, num_probes: int = 1):
    r"""(1/K) Σₖ δₖᵀ J_fn(y) δₖ with δₖ ~ N(0, I): an unbiased estimate of div fn(y), each
    term one exact JVP (``fn`` must be differentiable in y, e.g. through
    :func:`invcal.solve` with the data as input)."""
    y = jnp.asarray(y)
    key = jax.random.PRNGKey(key) if isinstance(key, int) else key
    probes = jax.random.normal(key, (int(num_probes), *y.shape), dtype=y.dtype)

    def one(d):
        _, jd = jax.jvp(fn, (y,), (d,))
        return jnp.vdot(d, jd)

    return jnp.mean(jax.lax.map(one, probes))


def sure_value(y, fit, divergence, sigma, *, normalize: bool = True):
    r"""‖y − fit‖² − mσ² + 2σ² div (divided by m if ``normalize``)."""
    sigma = _check_sigma(sigma)
    y, fit = jnp.asarray(y), jnp.asarray(fit)
    value = stein_risk(y - fit, divergence, sigma, y.size)
    return value / y.size if normalize else value


def stein_risk(residual, divergence, sigma, m):
    r"""‖r‖² − mσ² + 2σ² div: Stein's unbiased estimate of ‖f(y) − μ‖² from the residual
    r = y − f(y) of m measurements, the divergence of f and the noise σ (Stein 1981). The
    one formula behind every SURE criterion here; complex residuals (Fourier measurements)
    count |r|². Traceable (no checks): validate σ where it enters."""
    return jnp.real(jnp.vdot(residual, residual)) - m * sigma**2 + 2.0 * sigma**2 * divergence


# --------------------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------------------
class MSEToTruth(AbstractCriterion):
    """E = mean((x − x_true)²): see :func:`mse_to_truth`."""

    truth: str | Callable = eqx.field(static=True)

    def __call__(self, x, theta, data):
        return jnp.mean((x - _target(self.truth)(data)) ** 2)

    @property
    def __name__(self):
        return "mse_to_truth"


def mse_to_truth(truth="x_true") -> MSEToTruth:
    """E = mean((x − x_true)²), with the truth under a data key or given as a function."""
    _target(truth)
    return MSEToTruth(truth=truth)
