"""The λ rules of :func:`invcal.imaging.reconstruct`: SURE (its terms from the batched
estimators of :mod:`invcal.imaging.reconstruct_model`) minimized over log λ, and the
discrepancy principle's root; every evaluation recorded. See
:mod:`invcal.imaging.reconstruction` for the maths and the schedules.

A SURE search whose best λ is the smallest it evaluated (the grid extended downwards until
its cap) has found no minimum: :class:`NoMinimumError`, with what to do. One whose best λ is
the largest returns it with ``met=False`` (the most smoothing the grid reached is best: a
flat or pure-noise image), which the result reports.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .denoise import _EPS, _GRID, _SEARCH_GRID, _Z_TOL, _grid_then_brent, search_log_grid
from .tuning import SURE

__all__ = ["NoMinimumError"]

_MAX_GRID = 16  # criterion evaluations of the grid phase (deblurring's λ/σ sits far below 1)
_MAX_BRACKET = 24  # evaluations to bracket the discrepancy root
_KEEP = 4  # estimator states kept for warm starts (each is a few images per batch member)
_DEBLUR_PARABOLA_STEPS = 2
_FLAT = 1e-3  # SURE flat within _FLAT·σ² …
_FLAT_SPAN = 16.0  # … over this factor of λ below its best point: no minimum


class NoMinimumError(RuntimeError):
    """SURE decreased down to the smallest λ the search evaluated: no minimum was found, and
    the λ there would be meaningless (see :func:`_check_minimum`)."""


@eqx.filter_jit
def _terms(pred, y, delta, mask, eps):
    """(‖y − A u(y)‖², mean over probes of δₖᵀ(A u(y + εδₖ) − A u(y))/ε) from the batch of
    predictions A u ((1 + K)·C, H, W) (copy 0 first)."""
    p = pred.reshape(-1, *y.shape)
    r = y - p[0]
    if mask is not None:
        r = jnp.where(mask, r, 0.0)
    rss = jnp.vdot(r, r)
    if p.shape[0] == 1:
        return rss, jnp.zeros((), y.dtype)
    div = jnp.mean(jax.vmap(lambda d, q: jnp.vdot(d, q - p[0]))(delta, p[1:])) / eps
    return rss, div


# --------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------
class _Criterion:
    """Evaluates the rule's terms at λ and records every evaluation."""

    def __init__(self, model, sigma, *, probes, seed, progress, warm_steps=None):
        self.model, self.sigma, self.progress = model, float(sigma), progress
        self.warm_steps = warm_steps
        self.chains = {True: [], False: []}  # (λ, state) of the last evaluations, per batch
        y = model.y
        mask = None if model.mask is None else np.asarray(model.mask)
        self.m = int(y.shape[0] * (y[0].size if mask is None else mask.sum()))
        self.eps = _EPS * self.sigma / self.m**0.3
        # the probes of denoise_tv (same seed derivation and stream), masked for inpainting
        rng = np.random.default_rng(SURE(self.sigma, seed=seed).probe_seed())
        delta = rng.normal(size=(int(probes), *y.shape))
        if mask is not None:
            delta = delta * mask
        self.delta = jnp.asarray(delta, y.dtype)
        self.batch = model.as_batch(jnp.concatenate([y[None], y[None] + self.eps * self.delta]))
        self.rows = []  # (λ, value, rss ratio)

    def estimate(self, ys, lam, probes):
        """The estimator at λ for the batch ys: cold (``num_steps`` iterations from the fixed
        start), or, with ``warm_steps``, after the first evaluation ``warm_steps`` iterations
        from the state of the evaluated λ nearest in log λ (of the last _KEEP)."""
        model = self.model
        chain = self.chains[probes]
        if self.warm_steps is None or not chain:
            state, steps = model.start(ys), model.num_steps
        else:
            state, steps = min(chain, key=lambda c: abs(math.log(c[0] / lam)))[1], self.warm_steps
        state = model.run(ys, state, lam, steps)
        if self.warm_steps is not None:
            chain.append((lam, state))
            del chain[:-_KEEP]
        return model.images(state)

    def terms(self, lam, probes=True):
        ys = self.batch if probes else self.model.as_batch(self.model.y[None])
        u = self.estimate(ys, lam, probes)
        mask = self.model.mask
        delta = self.delta if probes else None
        eps = jnp.asarray(self.eps, u.dtype)
        rss, div = _terms(self.model.forward(u), self.model.y, delta, mask, eps)
        return float(rss), float(div)

    def sure(self, lam):
        rss, div = self.terms(lam)
        # Stein's risk ‖r‖² − mσ² + 2σ² div (invcal.criteria.stein_risk), per measurement
        value = (rss - self.m * self.sigma**2 + 2.0 * self.sigma**2 * div) / self.m
        if not math.isfinite(value):
            raise FloatingPointError(f"reconstruct: SURE is not finite at λ = {lam:.4g}.")
        self._record(lam, value, rss / (self.m * self.sigma**2), "SURE")
        return value

    def ratio(self, lam):
        rss, _ = self.terms(lam, probes=False)
        value = rss / (self.m * self.sigma**2)
        if not math.isfinite(value):
            raise FloatingPointError(f"reconstruct: the residual is not finite at λ = {lam:.4g}.")
        self._record(lam, value, value, "‖Au−y‖²/(mσ²)")
        return value

    def _record(self, lam, value, ratio, name):
        self.rows.append((float(lam), float(value), float(ratio)))
        if self.progress is not None:
            self.progress(f"λ = {lam:.4g}: {name} = {value:.6g} ({len(self.rows)} evaluations)")


def _search_sure(crit: _Criterion, sigma, task="denoise"):
    """argmin_λ SURE(λ): a log grid of λ/σ, extended while its best point is at an edge, then
    bounded Brent on log λ between the grid neighbours of its best point (denoise_tv's
    search, :func:`invcal.imaging.denoise._grid_then_brent`). For deblurring the grid is
    16× lower (its λ/σ sits at 0.03–0.2): from σ·(0.71…2) the √2-spaced extension reached
    only 0.012σ within _MAX_GRID evaluations."""
    if task == "deblur":
        sigma = sigma / 16
    zs = {}

    def evaluate(z):
        v = crit.sure(math.exp(z))
        zs[z] = v
        return v

    _grid_then_brent(evaluate, [math.log(r * sigma) for r in _GRID], _MAX_GRID)
    return _check_minimum(zs, crit)


def _search_sure_fast(crit: _Criterion, sigma, task):
    """argmin_λ SURE(λ), the fast schedule: denoising, the log grid of λ/σ that
    :func:`~invcal.imaging.denoise_tv` uses (√2 apart) and two parabolic steps; deblurring
    (λ/σ far below 1: 0.04–0.06 measured at a blur of 1.5 px), a grid 4× apart from σ/4
    down, extended while its best point is at an edge, then up to two parabolic steps (each
    through the best point and its neighbours, which get closer with every step)."""
    zs = {}

    def evaluate(z):
        v = crit.sure(math.exp(z))
        zs[z] = v
        return v

    if task == "denoise":
        search_log_grid(evaluate, [math.log(r * sigma) for r in _SEARCH_GRID], _MAX_GRID)
    else:
        grid = [math.log(sigma / 64), math.log(sigma / 16), math.log(sigma / 4)]
        search_log_grid(evaluate, grid, _MAX_GRID, parabola_steps=_DEBLUR_PARABOLA_STEPS)
    return _check_minimum(zs, crit)


def _check_minimum(zs, crit: _Criterion):
    """(λ, met) at the smallest SURE value of the evaluations ``zs`` ({log λ: SURE}).

    The grid phase extends the grid while its best point is at an edge, so a best point at
    the edge means the extension stopped at its cap (_MAX_GRID evaluations) still going.
    Upwards, the most smoothing reached is best (a flat or pure-noise image): returned with
    ``met=False``, as is a best point on a flat stretch (SURE within _FLAT·σ² of it over a
    factor _FLAT_SPAN of λ or more) that reaches the largest λ evaluated. Downwards, SURE
    still decreasing, or such a flat stretch reaching the smallest λ evaluated, means that
    the estimator no longer depends on λ there: its own iterations regularize it (they stop
    short of the λ-solution; measured with deblurring's former penalty ρ = 2, see
    :func:`~invcal.imaging.reconstruct_model.deblur_penalty`: SURE fell by 2e-11 per
    measurement, 1e-6 σ², over λ = 1e-10 … 1e-4; a genuine minimum sits 0.01–0.02 σ² below
    SURE at a 16× smaller λ), or σ is underestimated. That λ would be meaningless:
    :class:`NoMinimumError` says so instead. (In float32 the flat stretch's rounding noise
    makes minima of its own, which the flatness test catches.)"""
    z = min(zs, key=zs.get)
    order = sorted(zs)
    lowest, highest = order[0], order[-1]
    # the stretch of evaluated λ around the best one where SURE is within _FLAT·σ² of it
    lo = hi = order.index(z)
    near = _FLAT * crit.sigma**2
    while lo > 0 and zs[order[lo - 1]] - zs[z] < near:
        lo -= 1
    while hi < len(order) - 1 and zs[order[hi + 1]] - zs[z] < near:
        hi += 1
    flat = order[hi] - order[lo] >= math.log(_FLAT_SPAN)
    if flat and hi == len(order) - 1:  # the upper plateau: the most smoothing reached
        return math.exp(z), False
    if len(zs) > 1 and (z == lowest or (flat and lo == 0)):
        lam = math.exp(z)
        steps = crit.model.num_steps if crit.warm_steps is None else crit.warm_steps
        where = (
            f"SURE kept decreasing down to the smallest λ evaluated ({lam:.3g} = "
            f"{lam / crit.sigma:.2g}σ, after {len(zs)} evaluations)"
            if z == lowest
            else f"SURE is flat (within {_FLAT:g}σ²) from the smallest λ evaluated, "
            f"{math.exp(lowest):.3g}, up to {math.exp(order[hi]):.3g} (its lowest value at "
            f"{lam:.3g} = {lam / crit.sigma:.2g}σ; {len(zs)} evaluations)"
        )
        raise NoMinimumError(
            f"reconstruct: {where}; it has no minimum there. The estimator ({steps} solver "
            "iterations) barely depends on λ at such λ: its own early stopping regularizes "
            "it. Pass more iterations (--num-steps / num_steps=), check sigma (an "
            "underestimated σ pulls λ down), or use the discrepancy rule."
        )
    return math.exp(z), not (len(zs) > 1 and z == highest)


def _search_discrepancy(crit: _Criterion, sigma):
    """λ with ‖Au(λ) − y‖² = mσ²: the residual grows with λ; bracket the root of
    log(ratio) on a doubling grid of λ from σ, then Brent (brentq) on log λ. When no λ of the
    grid reaches the noise level (σ over- or underestimated), the closest one is returned with
    ``met=False``."""
    from scipy.optimize import brentq

    zs = {}

    def g(z):
        v = crit.ratio(math.exp(z))
        zs[z] = v
        return math.log(v) if v > 0 else -math.inf

    z, step = math.log(sigma), math.log(2.0)
    lo = hi = None
    gz = g(z)
    if gz < 0:
        lo = (z, gz)
        while len(zs) < _MAX_BRACKET:
            z += step
            gz = g(z)
            if gz >= 0:
                hi = (z, gz)
                break
            lo = (z, gz)
    else:
        hi = (z, gz)
        while len(zs) < _MAX_BRACKET:
            z -= step
            gz = g(z)
            if gz < 0:
                lo = (z, gz)
                break
            hi = (z, gz)
    if lo is None or hi is None:
        z = min(zs, key=lambda k: abs(math.log(zs[k])) if zs[k] > 0 else math.inf)
        return math.exp(z), False
    if hi[1] == 0:
        return math.exp(hi[0]), True
    root = brentq(g, lo[0], hi[0], xtol=_Z_TOL / 2, maxiter=20)
    return math.exp(root), True
