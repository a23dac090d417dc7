r"""TV denoising as a bilevel problem for the invcal engine.

:func:`tv_problem` builds an :class:`invcal.Problem` whose inner solution is the TV-denoised
image u*(w) of one or several noisy images f₁ … f_n (solved side by side with ``vmap``, one
shared θ) and whose outer criterion is one of

* :class:`MSE` — (1/n) Σₖ ‖u*_k − u₀ₖ‖²/N against ground truth u₀ (a training set);
* :class:`PSNR` — −(1/n) Σₖ PSNR(u*_k, u₀ₖ) (maximizes the mean PSNR, the reported metric);
* :class:`SURE` — Stein's unbiased risk estimate for one image with known noise σ (Stein 1981),
  with the divergence estimated by a finite-difference Monte-Carlo probe (Deledalle, Vaiter,
  Fadili & Peyré 2014, "Stein Unbiased GrAdient estimator of the Risk (SUGAR)"):

      SURE(w) = ‖f − u*(f)‖²/N − σ² + (2σ²/N) δᵀ(u*(f + εδ) − u*(f))/ε,    δ ~ N(0, I),

  built on :func:`invcal.criteria.sure_pair` / :func:`invcal.criteria.sure`: the pair
  (f, f + εδ) is a batch of two inner problems. For exact TV the true divergence (the number
  of flat regions) is piecewise constant in w with a zero derivative; the finite-difference
  probe is continuous in w, so its hypergradient sees the degrees of freedom change.

**Inner characterizations.** For exact TV (``method.huber is None``) x is the whole
:class:`~invcal.solvers.SplitBregmanState` (u, d, b) and ``fixed_point`` is one Split
Bregman iteration: ``invcal.FixedPointIteration`` solves it, ``invcal.Implicit(
lx.GMRES(...), system="fixed_point")`` differentiates its fixed point, ``invcal.Unrolled``
its iterations. For Huber-TV (``method.huber = ε``) x is the image u itself and the problem
gives the smooth energy as ``objective`` (so ``invcal.Implicit`` uses CG on its Hessian
I + ∇ᵀ diag(w h_ε'') ∇) and the gradient step T(u) = u − ∇E(u)/L, L = ‖K‖² + 8 max w/ε, as
``fixed_point`` (for ``invcal.FISTA``).
"""

from __future__ import annotations

import abc
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._renamed import renamed_from_method
from ..criteria import AbstractCriterion, SureProbes, stein_risk, sure, sure_pair, sure_probes
from ..problem import Problem
from ..space import Space
from .metrics import mse, psnr
from .operators import Inpainting, SubsampledFourier
from .tv import SplitBregman
from .weights import AbstractWeightLayout, ScalarWeight

__all__ = [
    "AbstractImageCriterion",
    "AbstractTVCriterion",
    "MSE",
    "PSNR",
    "SURE",
    "tv_problem",
    "weight_map",
]


class AbstractImageCriterion(AbstractCriterion):
    """An outer criterion of reconstructed images (TV denoising, the elastic net,
    :func:`invcal.imaging.reconstruct`): an :class:`invcal.criteria.AbstractCriterion` whose
    call takes the batch of images u (n, H, W).

    - :meth:`prepare` turns ``{"f": noisy images (n, H, W), "truth": images or None}`` into the
      problem data (checked there, before any solve);
    - :meth:`value_fn` is E(u, data) as a module-level function, so that problems with equal
      settings share compiled code whatever σ or the data;
    - :meth:`prepare_measured` and :meth:`measured_value_fn` are the same for images seen
      through a measurement operator K (the elastic net): the data from the measurements y
      (n, …) and E(u, predict, data) with ``predict(u) = K u``.
    """

    @abc.abstractmethod
    def value_fn(self):
        """E(u, data) from the batch of images u (n, H, W)."""

    @abc.abstractmethod
    def measured_value_fn(self):
        """E(u, predict, data) from the images u (n, H, W) and ``predict`` u ↦ K u."""

    @abc.abstractmethod
    def prepare_measured(self, y, operator, truth):
        """The data entries for measurements ``y`` (n, …) of images by ``operator``."""

    def __call__(self, u, theta, data):
        return self.value_fn()(u, data)

    def value(self, u, data):
        return self.value_fn()(u, data)

    def data(self, noisy, truth):
        """:meth:`prepare` of ``{"f": noisy, "truth": truth}``."""
        return self.prepare({"f": noisy, "truth": truth})


AbstractTVCriterion = AbstractImageCriterion  # the name before the elastic net shared it


class _TruthCriterion(AbstractImageCriterion):
    def prepare(self, data):
        noisy = data["f"]
        return {"f": noisy, "truth": _need_truth(data.get("truth"), noisy, type(self).__name__)}

    def prepare_measured(self, y, operator, truth):
        name = type(self).__name__
        if truth is None:
            raise ValueError(f"the {name} criterion needs truth= (the true images).")
        truth = np.asarray(truth)
        if truth.shape != (y.shape[0], *operator.shape):
            raise ValueError(
                f"truth has shape {truth.shape}; expected one (H, W) = {tuple(operator.shape)} "
                f"image per observation, i.e. {(y.shape[0], *operator.shape)}."
            )
        if np.iscomplexobj(truth):
            raise ValueError("truth must be real images.")
        return {"y": jnp.asarray(y), "truth": jnp.asarray(truth)}


class MSE(_TruthCriterion):
    """Mean squared error to the truth, averaged over the images."""

    def value_fn(self):
        return _mse_value

    def measured_value_fn(self):
        return _mse_measured


class PSNR(_TruthCriterion):
    """Minus the mean PSNR (data range 1) to the truth: minimizing it maximizes the PSNR."""

    def value_fn(self):
        return _psnr_value

    def measured_value_fn(self):
        return _psnr_measured


class SURE(AbstractImageCriterion):
    """Finite-difference Monte-Carlo SURE of one image with noise σ (see the module note):
    ``sigma`` > 0 known, ``seed`` of the probe δ (see :meth:`probe_seed`), ``eps`` its step
    (default 2σ/N^0.3), ``probes`` the number of probes averaged (each one more inner solve;
    the Monte-Carlo variance of the divergence falls as 1/probes). The image form of
    :class:`invcal.criteria.SURE` (the estimate is the image itself, or K u through an
    operator K)."""

    sigma: float
    seed: int = eqx.field(default=0, static=True)
    eps: float | None = None
    probes: int = eqx.field(default=1, static=True)

    def __check_init__(self):
        s = float(np.asarray(self.sigma))
        if not (math.isfinite(s) and s > 0):
            raise ValueError(
                f"SURE needs the noise standard deviation sigma > 0; got sigma={self.sigma!r}."
            )
        p = self.probes
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(f"SURE probes must be an integer >= 1; got probes={p!r}.")

    def prepare(self, data):
        noisy = data["f"]
        if noisy.shape[0] != 1:
            raise ValueError(
                f"SURE tunes one image at a time; got a batch of {noisy.shape[0]} images."
            )
        return sure_pair(
            {"f": noisy[0]},
            sigma=self.sigma,
            eps=self.eps,
            seed=self.probe_seed(),
            target="f",
            probes=int(self.probes),
        )

    def prepare_measured(self, y, operator, truth):
        if y.shape[0] != 1:
            raise ValueError(f"SURE tunes one image at a time; got a batch of {y.shape[0]}.")
        sigma = _positive("SURE: the noise level sigma", self.sigma)
        m = _num_measurements(operator)
        eps = 2.0 * sigma / m**0.3 if self.eps is None else _positive("eps", self.eps)
        delta = _measurement_noise(operator, 1.0, np.random.default_rng(self.probe_seed()))
        probes = SureProbes(
            delta=jnp.asarray(delta),
            eps=jnp.asarray(eps),
            sigma=jnp.asarray(sigma),
            measurements=jnp.asarray(float(m)),
        )
        return {"y": jnp.asarray(np.stack([y[0], y[0] + eps * delta])), "sure_probes": probes}

    def probe_seed(self) -> int:
        """The seed handed to :func:`invcal.criteria.sure_pair`, derived from ``seed``: a probe
        drawn by ``numpy.random.default_rng(seed)`` would equal, up to scale, noise simulated
        with the same call and seed, which biases the divergence (SURE 4× too large on camera
        64×64, σ = 0.1, seed 0; found by the tests)."""
        return int(np.random.SeedSequence([int(self.seed), 0x5D12E]).generate_state(1)[0])

    def value_fn(self):
        return _sure_value

    def measured_value_fn(self):
        return _sure_measured


def _mse_value(u, data):
    return jnp.mean(mse(u, data["truth"]))


def _psnr_value(u, data):
    return -jnp.mean(psnr(u, data["truth"]))


def _mse_measured(u, predict, data):
    return _mse_value(u, data)


def _psnr_measured(u, predict, data):
    return _psnr_value(u, data)


_SURE = sure(predict=lambda u, data: u, target="f", normalize=True)


def _sure_value(u, data):
    return _SURE(u, None, data)


def _sure_measured(u, predict, data):
    """SURE per measurement of the pair (u(y), u(y + εδ)) seen through K: f = K u."""
    f0, f1 = predict(u[0]), predict(u[1])
    p = sure_probes(data)
    m = p.measurements
    div = jnp.real(jnp.vdot(p.delta, f1 - f0)) / p.eps
    return stein_risk(data["y"][0] - f0, div, p.sigma, m) / m


def _positive(name, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
    return v


def _num_measurements(op) -> int:
    """The number m of real measurements (H·W for a blur)."""
    if hasattr(op, "num_measurements"):
        return int(op.num_measurements)
    return int(np.prod(op.shape))


def _measurement_noise(op, sigma: float, rng: np.random.Generator, batch: int | None = None):
    """σ·ε in the measurement space of ``op``: white on the image for a blur, on the kept
    pixels for inpainting, complex (real and imaginary parts each with std σ) on the sampled
    frequencies for :class:`SubsampledFourier`."""
    shape = tuple(op.shape) if batch is None else (int(batch), *op.shape)
    e = rng.standard_normal(shape)
    if isinstance(op, SubsampledFourier):
        e = (e + 1j * rng.standard_normal(shape)) * np.asarray(op.mask)
    elif isinstance(op, Inpainting):
        e = e * np.asarray(op.mask)
    return sigma * e


def _need_truth(truth, noisy, name):
    if truth is None:
        raise ValueError(f"the {name} criterion needs truth= (ground-truth images).")
    truth = jnp.asarray(truth, dtype=noisy.dtype)
    truth = truth[None] if truth.ndim == 2 else truth
    if truth.shape != noisy.shape:
        raise ValueError(f"truth has shape {truth.shape}; the noisy images have {noisy.shape}.")
    if not bool(jnp.all(jnp.isfinite(truth))):
        raise ValueError("truth contains NaN or inf.")
    return truth


def weight_map(layout: AbstractWeightLayout, theta, image_shape):
    """The TV weights w for θ = {"weight": …} under ``layout``."""
    return layout.expand(theta["weight"], image_shape)


@functools.lru_cache(maxsize=64)
def _functions(method: SplitBregman, layout: AbstractWeightLayout, value, shape):
    """The problem's pure functions, cached so that equal settings share compiled code."""

    def weights(theta):
        return layout.expand(theta["weight"], shape)

    def step(x, theta, data):
        w = weights(theta)
        return jax.vmap(method.step, in_axes=(0, 0, None))(x, data["f"], w)

    def energy(u, theta, data):
        w = weights(theta)
        return jnp.sum(jax.vmap(method.energy, in_axes=(0, 0, None))(u, data["f"], w))

    def gradient_step(u, theta, data):
        w = weights(theta)
        k2 = 1.0 if method.blur is None else jnp.max(jnp.abs(method.blur.otf)) ** 2
        lip = k2 + 8.0 * jnp.max(w) / method.huber
        return u - jax.grad(energy)(u, theta, data) / lip

    def crit_state(x, theta, data):
        return value(x.u, data)

    def crit_image(u, theta, data):
        return value(u, data)

    if method.huber is None:
        return {"fixed_point": step, "criterion": crit_state}
    return {"objective": energy, "fixed_point": gradient_step, "criterion": crit_image}


def _functions_uncached(method, layout, value, shape):
    return _functions.__wrapped__(method, layout, value, shape)


def tv_problem(
    noisy,
    *,
    criterion: AbstractTVCriterion,
    truth=None,
    tv: SplitBregman | None = None,
    weights: AbstractWeightLayout | None = None,
    init=0.1,
    name: str = "split_bregman_tv",
    method: SplitBregman | None = None,
) -> Problem:
    """The bilevel TV-denoising problem (see the module docstring).

    **Arguments**

    - ``noisy``: one image (H, W) or a stack (n, H, W) of real float images.
    - ``criterion``: :class:`MSE`, :class:`PSNR` (both need ``truth``, same shape as
      ``noisy``) or :class:`SURE` (one image).
    - ``tv``: the TV model and its :class:`~invcal.imaging.SplitBregman` settings (norm,
      boundary, u-step, penalty, Huber ε); default ``SplitBregman()`` (isotropic, Neumann,
      spectral). ``method=`` is its old name (it warns): elsewhere ``method`` is the
      hypergradient method.
    - ``weights``: the layout of θ = {"weight": …}: :class:`~invcal.imaging.ScalarWeight`
      (default), :class:`~invcal.imaging.DirectionalWeights`, :class:`~invcal.imaging.
      BlockWeights`; ``init`` its initial value (positive; log-scale parameter).
    """
    tv = renamed_from_method(tv, method, who="tv_problem", new="tv")
    method = SplitBregman() if tv is None else tv
    layout = ScalarWeight() if weights is None else weights
    if not isinstance(method, SplitBregman):
        raise TypeError(f"tv must be an invcal.imaging.SplitBregman; got {method!r}.")
    if not isinstance(layout, AbstractWeightLayout):
        raise TypeError(
            "weights must be ScalarWeight(), DirectionalWeights() or BlockWeights(rows, cols); "
            f"got {weights!r}."
        )
    if not isinstance(criterion, AbstractImageCriterion):
        raise TypeError(f"criterion must be MSE(), PSNR() or SURE(sigma); got {criterion!r}.")
    layout.check_norm(method.norm)
    noisy = jnp.asarray(noisy)
    if noisy.ndim == 2:
        noisy = noisy[None]
    if noisy.ndim != 3 or noisy.shape[-1] < 2 or noisy.shape[-2] < 2:
        raise ValueError(
            f"noisy must be an image (H, W) or a stack (n, H, W) with H, W >= 2; got shape "
            f"{noisy.shape}."
        )
    if not jnp.issubdtype(noisy.dtype, jnp.floating):
        raise ValueError(f"noisy must be a real float array; got dtype {noisy.dtype}.")
    if not bool(jnp.all(jnp.isfinite(noisy))):
        raise ValueError("noisy contains NaN or inf.")
    shape = tuple(noisy.shape[-2:])
    space = Space(weight=layout.param(init))
    data = criterion.prepare({"f": noisy, "truth": truth})
    try:
        fns = _functions(method, layout, criterion.value_fn(), shape)
    except TypeError:  # unhashable settings (e.g. a blur holding arrays): no sharing
        fns = _functions_uncached(method, layout, criterion.value_fn(), shape)
    w0 = layout.expand(space.init()["weight"], shape)
    method.check_weight(w0, shape)
    if method.huber is None:
        x0 = jax.vmap(method.init)(data["f"])
        return Problem(space=space, x0=x0, data=data, name=name, **fns)
    return Problem(space=space, x0=data["f"], data=data, name=name, **fns)
