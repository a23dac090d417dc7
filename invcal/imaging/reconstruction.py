r"""``reconstruct``: denoise, deblur or inpaint one image, with the regularization weight λ
chosen per image from the data alone.

For measurements y = A u₀ + σε (ε white Gaussian noise, A the identity, a periodic blur K or a
pixel mask M) the reconstruction is

    TV           u(λ) = argmin_u  λ·TV(u)              + ½‖Au − y‖²    (Split Bregman)
    elastic net  u(λ) = Wᵀ argmin_c  λ‖w ⊙ c‖₁ + (λ₂/2)‖c‖² + ½‖A Wᵀc − y‖²    (FISTA)

(isotropic TV with Neumann boundaries, periodic for deblurring; W the orthonormal db4 wavelet
transform, w = 1 on the detail coefficients, λ₂ = 10⁻³ fixed). λ is chosen by one of two rules
that need no ground truth, only the noise level σ (given, or estimated from the image):

* ``"sure"`` — minimize Stein's unbiased estimate of the prediction risk E‖A u(y) − A u₀‖²/m
  over the m measurements (Stein 1981; the *generalized* SURE of Eldar 2009 / Vaiter,
  Deledalle, Peyré, Dossal & Fadili 2013 in its prediction form for deblurring and inpainting,
  where A is not the identity):

      SURE(λ) = (‖y − A u(y)‖² − mσ² + 2σ² div(A u)(y)) / m,

  with the divergence from K finite-difference Monte-Carlo probes (Deledalle, Vaiter, Fadili &
  Peyré 2014), ε = 4σ/m^0.3, as :func:`~invcal.imaging.denoise_tv` does (its module docstring
  says why 4 and why two probes). For inpainting the measurements are the observed pixels
  only, and so are the residual and the probes. The estimator whose risk is estimated is a
  fixed number of solver iterations (a continuous function of y, as SURE needs): at the first
  λ evaluated, ``num_steps`` = 100 iterations from a fixed start; at every later λ,
  ``warm_steps`` = 40 iterations from the state (of y and of each y + εδₖ alike) reached at
  the nearest λ evaluated before, which costs 2.5× less per evaluation. Each is still a
  deterministic continuous function of y, so SURE stays unbiased for it; its values depend
  slightly on the path (measured: with 20 warm iterations, 1% apart at one λ on an RGB crop,
  a spurious minimum 0.3 dB from the oracle; with 40, 0.03 dB). ``warm_steps=None`` makes
  every evaluation cold, as :func:`~invcal.imaging.denoise_tv` does: for gray denoising with
  TV the two then give the same λ. The returned image is the tolerance-stopped solve at the
  chosen λ. SURE is minimized from its values (a log grid of λ/σ, extended while its best
  point is at an edge, then bounded Brent between the grid neighbours), as in
  :func:`~invcal.imaging.denoise_tv`.

  **The fast schedule** (TV with SURE, for denoising from 2¹⁷ measurements and deblurring
  from 2¹⁶; ``details["schedule"]`` says which ran): every estimator cold, 20 iterations from
  the fixed start (where :func:`~invcal.imaging.denoise_tv` on a large image takes the
  tol-stopped solve as its estimator; reconstruct keeps its fixed-iteration estimators,
  shared with inpainting and the elastic net, and ends with the tol-stopped solve); one probe
  (denoising: from 2¹⁷ measurements, two below; deblurring: always, measured on 256×256
  camera (PSF widths 1.5 and 2.5 px), astronaut and coffee: 0.00–0.05 dB from the oracle of
  a 13-point grid with one probe or two alike); denoising searches on denoise_tv's grid (0.59, 0.84,
  1.19)σ, extended while its best point is at an edge, then at most two parabolic steps on
  log λ; deblurring, whose λ/σ sits far below 1,
  a grid 4× apart (σ/64, σ/16, σ/4), extended while its best point is at an edge, then at
  most two parabolic steps (four gave 0.00–0.05 dB from the oracle on the four cases above
  too, with 6–8 evaluations instead of 5–6). Measured (``benchmarks/reconstruct.py``, camera
  256×256, PSF width 1.5 px, noise 0.01, float32): 5 evaluations instead of 20, the λ chosen
  as good as before (28.54–28.55 dB against 28.54, the oracle of a 21-point grid 28.55). Explicit
  ``num_steps``, ``probes`` or ``warm_steps`` override the schedule's choices.
* ``"discrepancy"`` — Morozov's discrepancy principle: λ with ‖A u(λ) − y‖² = mσ² (the
  residual of the reconstruction is as large as the noise), found by bracketing on a log grid
  and Brent's root finder on log λ. It tends to over-smooth (the residual of the best
  reconstruction is below the noise level, since it fits some of the noise).

**Colour.** An RGB image is reconstructed channel by channel (TV and the wavelet penalty act on
each channel separately) with one λ for all channels, chosen by the rule applied to the whole
image (SURE and the residual are sums over the channels). σ is one number (estimated as the
mean of the channels' estimates).

**Noise level.** ``sigma="auto"`` estimates σ by the wavelet median absolute deviation of
Donoho & Johnstone (1994) on the finest diagonal band (:func:`invcal.imaging.estimate_sigma`,
the estimator of ``skimage.restoration.estimate_sigma``, which needs PyWavelets); for
inpainting, from the Haar diagonal details (a − b − c + d)/2 of the 2×2 windows whose four
pixels are observed.

**Precision.** Computes in JAX's current precision: float32 in JAX's default configuration
(enough for images: every stopping rule is relative to the image's range), float64 with
``jax_enable_x64``. The ``invcal reconstruct`` command computes in float32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..prox import prox_elastic_net
from .denoise import (
    _EPS,
    _GRID,
    _LARGE,
    _SEARCH_GRID,
    _STEPS_LARGE,
    _Z_TOL,
    _grid_then_brent,
    search_log_grid,
)
from .operators import Blur, Inpainting, Periodic
from .reconstruct_inputs import (
    REGULARIZERS,
    RULES,
    TASKS,
    _prepare,
    estimate_noise,
    validate,
)
from .tuning import SURE
from .tv import GaussSeidel, Isotropic, SpectralSolve, SplitBregman, split_bregman
from .wavelets import Wavelet

__all__ = ["Reconstruction", "reconstruct", "validate", "TASKS", "REGULARIZERS", "RULES"]


_MAX_GRID = 16  # criterion evaluations of the grid phase (deblurring's λ/σ sits far below 1)
_MAX_BRACKET = 24  # evaluations to bracket the discrepancy root
_LAM2 = 1e-3  # the elastic net's fixed ridge weight λ₂
_KEEP = 4  # estimator states kept for warm starts (each is a few images per batch member)
# The fast schedule (TV, SURE; denoising from _LARGE measurements, deblurring from _LARGE/2):
# cold estimators of few iterations, fewer probes, a grid then parabolic steps.
_DEBLUR_STEPS = 20
_DEBLUR_PARABOLA_STEPS = 2
_EN_LEVELS = 4  # wavelet levels at most (fewer when H or W is not divisible by 2^4)
COLOUR = "per-channel, one shared λ (SURE and the residual summed over the channels)"


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconstruction:
    """What :func:`reconstruct` did.

    ``image``: the reconstruction, a float array of the input's shape ((H, W) or (H, W, 3));
    ``lam``: λ chosen; ``sigma`` (and whether it was ``sigma_estimated``); ``rule``,
    ``task``, ``regularizer``; ``curve``: the criterion at every λ evaluated, ``(λ, value)``
    sorted by λ (SURE per measurement, or ‖Au − y‖²/(mσ²) for the discrepancy rule), with
    ``criterion`` naming it; ``residual``: statistics of A u − y over the measurements
    (``rms``, ``ratio`` = ‖Au − y‖²/(mσ²), ``mean``); ``timings`` in seconds (``sigma``,
    ``search``, ``final``, ``total``); ``num_steps`` and ``converged`` of the final solve
    (the worst channel); ``psnr`` against ``reference`` when one was given (data range 1),
    and ``psnr_input`` of the measurements against it; ``details``: the settings used.
    """

    image: np.ndarray
    lam: float
    sigma: float
    sigma_estimated: bool
    rule: str
    task: str
    regularizer: str
    curve: list
    criterion: str
    residual: dict
    timings: dict
    num_steps: int
    converged: bool
    psnr: float | None = None
    psnr_input: float | None = None
    details: dict = field(default_factory=dict)
    psf: np.ndarray | None = None
    mask: np.ndarray | None = None

    def summary(self) -> dict:
        """The JSON-ready summary (everything but the image)."""
        return {
            "task": self.task,
            "regularizer": self.regularizer,
            "rule": self.rule,
            "lambda": self.lam,
            "sigma": self.sigma,
            "sigma_estimated": self.sigma_estimated,
            "criterion": self.criterion,
            "curve": [list(r) for r in self.curve],
            "residual": dict(self.residual),
            "timings": dict(self.timings),
            "num_steps": self.num_steps,
            "converged": self.converged,
            "psnr": self.psnr,
            "psnr_input": self.psnr_input,
            **self.details,
        }


# --------------------------------------------------------------------------------------
# The estimators: a fixed number of iterations from a fixed start (for the rules), batched
# over channels × probes
# --------------------------------------------------------------------------------------
@eqx.filter_jit
def _tv_run(method, fs, state, lam, num_steps):
    """The Split Bregman state after ``num_steps`` iterations from ``state``, for each f of the
    batch."""
    step = jax.vmap(method.step, in_axes=(0, 0, None))
    return jax.lax.fori_loop(0, num_steps, lambda _, s: step(s, fs, lam), state)


def _en_map(op, transform, weights, t, lam, lam2):
    def T(c, y):
        u = transform.inverse(c)
        v = c - t * transform.forward(op.rmv(op.mv(u) - y))
        return prox_elastic_net(v, t, lam * weights, lam2)

    return T


@eqx.filter_jit
def _en_run(op, transform, weights, t, ys, c0, lam, lam2, num_steps):
    """The coefficients c after ``num_steps`` FISTA iterations (Beck & Teboulle 2009) from
    ``c0`` (momentum restarted)."""
    T = jax.vmap(_en_map(op, transform, weights, t, lam, lam2))

    def body(_, s):
        c, z, k = s
        c1 = T(z, ys)
        k1 = (1.0 + jnp.sqrt(1.0 + 4.0 * k * k)) / 2.0
        return c1, c1 + ((k - 1.0) / k1) * (c1 - c), k1

    c, _, _ = jax.lax.fori_loop(0, num_steps, body, (c0, c0, jnp.asarray(1.0, ys.dtype)))
    return c


@eqx.filter_jit
def _en_images(transform, c):
    return jax.vmap(transform.inverse)(c)


@eqx.filter_jit
def _en_start(op, transform, ys):
    return jax.vmap(lambda y: transform.forward(op.rmv(y)))(ys)


@eqx.filter_jit
def _en_solve(op, transform, weights, t, ys, lam, lam2, tol, max_steps):
    """FISTA with adaptive restart (O'Donoghue & Candès 2015) until the RMS change of the
    coefficients is below ``tol``: the final elastic-net reconstruction."""
    lam = jnp.asarray(lam, ys.dtype)
    T = jax.vmap(_en_map(op, transform, weights, t, lam, jnp.asarray(lam2, ys.dtype)))
    c0 = jax.vmap(lambda y: transform.forward(op.rmv(y)))(ys)
    n = c0.size

    def cond(s):
        return (s[3] < max_steps) & ((s[4] >= tol) | (s[3] < 2))

    def body(s):
        c, z, k, i, _ = s
        c1 = T(z, ys)
        restart = jnp.vdot(z - c1, c1 - c) > 0
        k = jnp.where(restart, 1.0, k)
        k1 = (1.0 + jnp.sqrt(1.0 + 4.0 * k * k)) / 2.0
        z1 = c1 + ((k - 1.0) / k1) * (c1 - c)
        ch = jnp.sqrt(jnp.sum((c1 - c) ** 2) / n)
        return c1, z1, k1, i + 1, ch

    one = jnp.asarray(1.0, ys.dtype)
    inf = jnp.asarray(jnp.inf, ys.dtype)
    c, _, _, i, ch = jax.lax.while_loop(cond, body, (c0, c0, one, jnp.asarray(0), inf))
    return jax.vmap(transform.inverse)(c), i, ch


@eqx.filter_jit
def _fill(ys, mask):
    """The start of inpainting: observed pixels kept, missing ones at the mean of the observed
    ones (linear in y, so the fixed-steps estimator stays a continuous function of y)."""
    m = mask.astype(ys.dtype)
    mean = jnp.sum(ys * m, axis=(-2, -1), keepdims=True) / jnp.sum(m)
    return m * ys + (1.0 - m) * mean


class _Model:
    """One task × regularizer on (C, H, W) measurements: the forward operator, the
    fixed-steps estimator (batched), and the final solve."""

    def __init__(self, task, regularizer, y, *, psf, mask, num_steps, tol, max_steps):
        self.task, self.regularizer = task, regularizer
        self.y = y  # jnp (C, H, W), missing pixels at 0 for inpainting
        self.shape = tuple(y.shape[-2:])
        self.mask = None if mask is None else jnp.asarray(mask)
        self.num_steps, self.tol, self.max_steps = int(num_steps), float(tol), int(max_steps)
        self.blur = None if psf is None else Blur.from_kernel(psf, self.shape)
        self.scale = float(jnp.max(y) - jnp.min(y)) or 1.0
        if regularizer == "tv":
            if task == "deblur":
                self.method = SplitBregman(
                    norm=Isotropic(), boundary=Periodic(), u_step=SpectralSolve(), blur=self.blur
                )
            elif task == "inpaint":
                self.method = SplitBregman(norm=Isotropic(), u_step=GaussSeidel(mask=self.mask))
            else:
                self.method = SplitBregman(norm=Isotropic(), u_step=GaussSeidel())
        else:
            h, w = self.shape
            levels = 0
            while levels < _EN_LEVELS and h % 2 ** (levels + 1) == 0 and w % 2 ** (levels + 1) == 0:
                levels += 1
            if levels == 0:
                raise ValueError(
                    f"the elastic-net regularizer (a wavelet transform) needs an even image "
                    f"height and width; got {h}×{w}. Crop one row/column or use --regularizer tv."
                )
            self.levels = levels
            self.transform = Wavelet("db4", levels=levels)
            self.weights = jnp.asarray(self.transform.detail_mask(self.shape), y.dtype)
            if task == "deblur":
                self.op = self.blur
                lip = float(jnp.max(jnp.abs(self.blur.otf)) ** 2)
            else:
                keep = np.ones(self.shape, bool) if mask is None else mask
                self.op = Inpainting(keep)
                lip = 1.0
            self.t = jnp.asarray(1.0 / lip, y.dtype)

    def forward(self, u):
        """A u for a batch (…, H, W)."""
        if self.task == "deblur":
            return jax.vmap(self.blur.mv)(u.reshape(-1, *self.shape)).reshape(u.shape)
        if self.task == "inpaint":
            return jnp.where(self.mask, u, 0.0)
        return u

    def start(self, ys):
        """The estimator's fixed start for the batch ys: Split Bregman's (u0, 0, 0) with u0 = y
        (Kᵀy for deblurring, the mean-filled y for inpainting), or c = W Aᵀy."""
        if self.regularizer == "tv":
            if self.task == "inpaint":
                u0 = _fill(ys, self.mask)
            else:
                u0 = ys if self.task == "denoise" else jax.vmap(self.blur.rmv)(ys)
            return jax.vmap(self.method.init)(ys, u0)
        return _en_start(self.op, self.transform, ys)

    def run(self, ys, state, lam, num_steps):
        """The estimator's state after ``num_steps`` iterations at λ from ``state``."""
        # arrays: filter_jit would compile once per value of a Python number
        lam, steps = jnp.asarray(lam, ys.dtype), jnp.asarray(int(num_steps))
        if self.regularizer == "tv":
            return _tv_run(self.method, ys, state, lam, steps)
        lam2 = jnp.asarray(_LAM2, ys.dtype)
        return _en_run(self.op, self.transform, self.weights, self.t, ys, state, lam, lam2, steps)

    def images(self, state):
        return state.u if self.regularizer == "tv" else _en_images(self.transform, state)

    def fixed(self, ys, lam):
        """The cold estimator: ``num_steps`` iterations at λ from the fixed start."""
        return self.images(self.run(ys, self.start(ys), lam, self.num_steps))

    def solve(self, lam):
        """The final reconstruction at λ: (C, H, W), steps (max over channels), converged."""
        ys = self.y
        if self.regularizer == "elastic-net":
            # arrays, not Python numbers: filter_jit would compile once per value of a number
            dt = ys.dtype
            tol = jnp.asarray(self.tol * self.scale, dt)
            lam, lam2 = jnp.asarray(lam, dt), jnp.asarray(_LAM2, dt)
            u, k, ch = _en_solve(
                self.op,
                self.transform,
                self.weights,
                self.t,
                ys,
                lam,
                lam2,
                tol,
                jnp.asarray(self.max_steps),
            )
            return u, int(k), bool(ch < tol)
        u0 = _fill(ys, self.mask) if self.task == "inpaint" else None
        out, steps, ok = [], 0, True
        for c in range(ys.shape[0]):
            init = None if u0 is None else self.method.init(ys[c], u0[c])
            sol = split_bregman(
                ys[c],
                lam,
                self.method,
                tol=self.tol * self.scale,
                max_steps=self.max_steps,
                init=init,
            )
            out.append(sol.u)
            steps, ok = max(steps, int(sol.num_steps)), ok and bool(sol.converged)
        return jnp.stack(out), steps, ok


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
        self.batch = jnp.concatenate([y[None], y[None] + self.eps * self.delta]).reshape(
            -1, *y.shape[-2:]
        )
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
        ys = self.batch if probes else self.model.y
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


def _search_sure(crit: _Criterion, sigma):
    """argmin_λ SURE(λ): a log grid of λ/σ, extended while its best point is at an edge, then
    bounded Brent on log λ between the grid neighbours of its best point (denoise_tv's
    search, :func:`invcal.imaging.denoise._grid_then_brent`)."""
    zs = {}

    def evaluate(z):
        v = crit.sure(math.exp(z))
        zs[z] = v
        return v

    _grid_then_brent(evaluate, [math.log(r * sigma) for r in _GRID], _MAX_GRID)
    z = min(zs, key=zs.get)
    return math.exp(z), True


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
    z = min(zs, key=zs.get)
    return math.exp(z), True


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


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------
def reconstruct(
    image,
    *,
    task: str = "denoise",
    regularizer: str = "tv",
    sigma="auto",
    rule: str = "sure",
    psf=None,
    blur_sigma: float | None = None,
    mask=None,
    reference=None,
    num_steps: int | None = None,
    warm_steps: int | None | str = "auto",
    probes: int | None = None,
    seed: int = 0,
    tol: float = 1e-4,
    max_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Reconstruction:
    r"""Reconstruct one image with λ chosen by SURE or the discrepancy principle (see the
    module docstring).

    **Arguments**

    - ``image``: the measurements y, gray (H, W) or RGB (H, W, 3), any dtype (converted as
      ``skimage.util.img_as_float`` does: integers to [0, 1]); at least 8×8, finite. For
      inpainting the values of the missing pixels are ignored.
    - ``task``: ``"denoise"`` (A = I), ``"deblur"`` (A = periodic convolution with ``psf``
      or a Gaussian of width ``blur_sigma`` pixels; exactly one of the two) or ``"inpaint"``
      (A = the pixel mask ``mask``, (H, W), nonzero on the observed pixels).
    - ``regularizer``: ``"tv"`` (isotropic total variation) or ``"elastic-net"`` (db4
      wavelets, λ₂ = 10⁻³; H and W even).
    - ``sigma``: the noise standard deviation in the float image's units, or ``"auto"`` to
      estimate it.
    - ``rule``: ``"sure"`` or ``"discrepancy"``.
    - ``reference``: the clean image, if known (only to report PSNRs; never used to choose λ).
    - ``num_steps``: solver iterations of the estimator the rule assesses, from its fixed
      start; ``warm_steps``: after the first evaluation, the estimator at λ is ``warm_steps``
      iterations from the state reached at the nearest λ evaluated before (``None``: every
      evaluation cold, ``num_steps`` from the start, as :func:`~invcal.imaging.denoise_tv`);
      ``probes`` and ``seed``: SURE's Monte-Carlo probes. Defaults (``None`` / ``"auto"``):
      the fast schedule's choices where it applies (see the module docstring), else
      ``num_steps=100``, ``warm_steps=40``, ``probes=2``.
    - ``tol`` / ``max_steps``: the final solve stops when the RMS change between iterations
      is below ``tol`` × the range of y (default ``max_steps``: 300 for TV denoising, 1000
      otherwise).
    - ``progress``: called with one line of text per criterion evaluation.

    Returns a :class:`Reconstruction`. Raises ValueError (one line) for bad input before any
    solve.
    """
    t_start = time.perf_counter()
    y, psf, mask, given_sigma, max_steps, ref = _prepare(
        image,
        task=task,
        regularizer=regularizer,
        sigma=sigma,
        rule=rule,
        psf=psf,
        blur_sigma=blur_sigma,
        mask=mask,
        reference=reference,
        num_steps=num_steps,
        probes=probes,
        max_steps=max_steps,
        warm_steps=warm_steps,
    )
    t0 = time.perf_counter()
    if given_sigma is None:
        sigma_value = estimate_noise(y, mask)
        if not sigma_value > 0:
            raise ValueError(
                "the estimated noise level is 0 (a noise-free or flat image?); pass sigma."
            )
    else:
        sigma_value = given_sigma
    t_sigma = time.perf_counter() - t0

    m = int(y.shape[0] * (y[0].size if mask is None else np.asarray(mask).sum()))
    fast = (
        rule == "sure"
        and regularizer == "tv"
        and ((task == "denoise" and m >= _LARGE) or (task == "deblur" and m >= _LARGE // 2))
    )
    if fast:
        schedule = "fast"
        if num_steps is None:
            num_steps = _STEPS_LARGE if task == "denoise" else _DEBLUR_STEPS
        if probes is None:
            probes = 1 if (m >= _LARGE or task == "deblur") else 2
        warm_steps = None if warm_steps == "auto" else warm_steps
    else:
        schedule = "thorough"
        num_steps = 100 if num_steps is None else num_steps
        probes = 2 if probes is None else probes
        warm_steps = 40 if warm_steps == "auto" else warm_steps

    dtype = jnp.zeros(()).dtype  # JAX's current float precision
    yj = jnp.asarray(y, dtype)
    model = _Model(
        task,
        regularizer,
        yj,
        psf=psf,
        mask=mask,
        num_steps=num_steps,
        tol=tol,
        max_steps=max_steps,
    )
    crit = _Criterion(
        model, sigma_value, probes=probes, seed=seed, progress=progress, warm_steps=warm_steps
    )
    t0 = time.perf_counter()
    if rule == "sure" and fast:
        lam, met = _search_sure_fast(crit, sigma_value, task)
    elif rule == "sure":
        lam, met = _search_sure(crit, sigma_value)
    else:
        lam, met = _search_discrepancy(crit, sigma_value)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    u, steps, converged = model.solve(lam)
    u = jax.block_until_ready(u)
    t_final = time.perf_counter() - t0

    r = np.asarray(model.forward(u) - yj, dtype=np.float64)
    if mask is not None:
        r = r[:, mask]
    rss = float(np.sum(r * r))
    residual = {
        "rms": math.sqrt(rss / crit.m),
        "mean": float(np.mean(r)),
        "ratio": rss / (crit.m * sigma_value**2),
    }
    out = np.asarray(u, dtype=np.float64)
    psnr = psnr_input = None
    if ref is not None:
        psnr = _psnr(out, ref)
        psnr_input = _psnr(y if mask is None else np.where(mask, y, 0.0), ref)
    image_out = out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)
    criterion = "SURE (per measurement)" if rule == "sure" else "‖Au − y‖²/(mσ²)"
    curve = sorted((r0, v) for r0, v, _ in crit.rows)
    details = {
        "channels": "gray" if y.shape[0] == 1 else COLOUR,
        "measurements": crit.m,
        "evaluations": len(crit.rows),
        "num_steps_estimator": int(num_steps),
        "warm_steps": None if warm_steps is None else int(warm_steps),
        "probes": int(probes) if rule == "sure" else 0,
        "eps": crit.eps if rule == "sure" else None,
        "dtype": str(dtype),
        "rule_met": bool(met),
        "schedule": schedule,
        "solver": "Split Bregman (isotropic TV)"
        if regularizer == "tv"
        else f"FISTA (db4 wavelets, {model.levels} levels, λ₂ = {_LAM2:g})",
    }
    if psf is not None:
        details["psf_shape"] = list(psf.shape)
        if blur_sigma is not None:
            details["blur_sigma"] = float(blur_sigma)
    if mask is not None:
        details["observed_fraction"] = float(mask.mean())
    timings = {
        "sigma": t_sigma,
        "search": t_search,
        "final": t_final,
        "total": time.perf_counter() - t_start,
    }
    return Reconstruction(
        image=image_out,
        lam=float(lam),
        sigma=float(sigma_value),
        sigma_estimated=given_sigma is None,
        rule=rule,
        task=task,
        regularizer=regularizer,
        curve=curve,
        criterion=criterion,
        residual=residual,
        timings=timings,
        num_steps=steps,
        converged=converged,
        psnr=psnr,
        psnr_input=psnr_input,
        details=details,
        psf=psf,
        mask=mask,
    )


def _psnr(u, ref) -> float:
    mse = float(np.mean((np.asarray(u) - np.asarray(ref)) ** 2))
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
