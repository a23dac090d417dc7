r"""Elastic-net image reconstruction in a wavelet basis, as a bilevel problem for the engine.

For measurements yₖ = K u₀ₖ + σεₖ of images u₀ₖ (k = 1 … n) by a linear operator K
(:class:`~invcal.imaging.Blur`, :class:`~invcal.imaging.Inpainting`,
:class:`~invcal.imaging.SubsampledFourier`, or any module with ``mv``/``rmv``),

    inner   u*ₖ(λ) = argmin_u  ½‖K u − yₖ‖² + λ₁‖w ⊙ W u‖₁ + (λ₂/2)‖u‖²
    outer   E(λ)   = −(1/n) Σₖ PSNR(u*ₖ(λ), u₀ₖ)    (or the mean MSE, or SURE)

with W an orthonormal transform (:class:`~invcal.imaging.Wavelet`, or
:class:`~invcal.imaging.IdentityTransform`) and w the penalty weights (1 on the detail
coefficients, 0 on the coarsest approximation unless ``penalize_coarse``), the
elastic net of Zou & Hastie (2005) in an analysis-equals-synthesis wavelet basis.

**The inner solver works on the coefficients** c = W u. Since W is orthonormal,
‖u‖² = ‖c‖², so the problem is ½‖K Wᵀc − y‖² + λ₁‖w ⊙ c‖₁ + (λ₂/2)‖c‖², whose non-smooth
part has the exact elastic-net prox (:func:`invcal.prox.prox_elastic_net`). The problem's
``fixed_point`` is the forward–backward map with step t = 1/‖K‖²,

    T(c; λ) = prox_{t(λ₁‖w⊙·‖₁ + (λ₂/2)‖·‖²)}(c − t W Kᵀ(K Wᵀ c − y))
            = soft(v, tλ₁w) / (1 + tλ₂),

iterated by :class:`invcal.FISTA` (accelerated, adaptive restart, stopped on the fixed-point
residual ‖T(c) − c‖, warm-started by the outer loop). All training images are solved at once
(``vmap`` over the batch axis; one shared λ).

**Hypergradient.** On the support S = {c* ≠ 0} the Jacobian of T is
(I − tH)_SS/(1 + tλ₂), H = W KᵀK Wᵀ, so the implicit system restricted to S,

    A_SS = (tλ₂ I + tH_SS)/(1 + tλ₂),

is symmetric positive definite for λ₂ > 0 (``support`` and ``symmetric=True``):
:class:`invcal.Implicit` with ``active_set=True`` and conjugate gradients, in reverse mode (one
adjoint solve) or forward mode (one solve per λ); :class:`invcal.Unrolled` differentiates the
FISTA iterations instead (Bertrand et al. 2022, "Implicit differentiation for fast
hyperparameter selection in non-smooth convex learning").

**SURE.** With no ground truth and σ known (one image), the criterion is Stein's unbiased
estimate of the prediction risk E‖K u* − K u₀‖²/m over the m real measurements (Stein 1981),
with the finite-difference Monte-Carlo divergence of Deledalle, Vaiter, Fadili & Peyré (2014):

    SURE(λ) = (‖y − K u*(y)‖² − mσ² + 2σ² ⟨δ, K u*(y + εδ) − K u*(y)⟩/ε) / m,

δ Gaussian noise in the measurement space (only on the kept pixels / sampled frequencies),
ε = 2σ/m^0.3; the pair (y, y + εδ) is a batch of two inner problems.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..problem import Problem
from ..prox import prox_elastic_net
from ..solvers.fixed_point import FISTA
from ..space import Log, Param, Space
from ..typed_data import AbstractData
from .operators import Blur, Inpainting, SubsampledFourier
from .tuning import (
    MSE,
    AbstractImageCriterion,
    _measurement_noise,
    _num_measurements,
    _positive,
)
from .wavelets import AbstractBasis, Wavelet

__all__ = [
    "ImagingData",
    "elastic_net_problem",
    "images_of",
    "lipschitz",
    "measurement_noise",
    "num_measurements",
    "observe",
    "reconstruct",
    "stack_images",
]


# --------------------------------------------------------------------------------------
# Operators: step size, noise in the measurement space, measurement count
# --------------------------------------------------------------------------------------
def _check_operator(op):
    if not (hasattr(op, "mv") and hasattr(op, "rmv") and hasattr(op, "shape")):
        raise TypeError(
            "operator must be an image operator with mv(u), rmv(v) and shape (H, W): "
            "invcal.imaging.Blur, Inpainting or SubsampledFourier; got "
            f"{type(op).__name__}."
        )


def lipschitz(op) -> float:
    """‖K‖² (an upper bound), the Lipschitz constant of ∇½‖Ku − y‖²: max|k̂|² for a
    :class:`Blur`, 1 for the masks; otherwise 1.01× a 100-step power-iteration estimate."""
    _check_operator(op)
    if isinstance(op, Blur):
        return float(jnp.max(jnp.abs(op.otf)) ** 2)
    if isinstance(op, (Inpainting, SubsampledFourier)):
        return 1.0
    x = jnp.asarray(np.random.default_rng(0).normal(size=op.shape))
    for _ in range(100):
        x = op.rmv(op.mv(x))
        x = x / jnp.linalg.norm(x)
    return 1.01 * float(jnp.vdot(x, op.rmv(op.mv(x))).real)


measurement_noise = _measurement_noise
num_measurements = _num_measurements


def _check_sigma(sigma, who) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        s = math.nan
    if isinstance(sigma, bool) or not (math.isfinite(s) and s > 0):
        raise ValueError(
            f"{who}: the noise level sigma must be a finite number > 0; got {sigma!r}."
        )
    return s


def stack_images(images, name: str = "images") -> np.ndarray:
    """A stack (n, H, W) of finite float64 images from one image, a stack or a list; raises a
    ValueError naming the first image whose shape differs or that holds NaN/inf."""
    if isinstance(images, np.ndarray | jax.Array) and np.ndim(images) in (2, 3):
        arr = np.asarray(images)
        items = [arr] if arr.ndim == 2 else list(arr)
    elif isinstance(images, Sequence) and not isinstance(images, str):
        items = [np.asarray(a) for a in images]
    else:
        raise TypeError(
            f"{name} must be an image (H, W), a stack (n, H, W) or a list of (H, W) images; "
            f"got {type(images).__name__}."
        )
    if not items:
        raise ValueError(f"{name} is empty; pass at least one image.")
    first = items[0].shape
    for i, a in enumerate(items):
        if a.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D (H, W) image; got shape {a.shape}.")
        if a.shape != first:
            raise ValueError(
                f"{name}[{i}] has shape {a.shape} but {name}[0] has {first}: the images of a "
                "set are reconstructed side by side and must share one shape (crop or resize "
                "them, e.g. invcal.imaging.load_images(names, size))."
            )
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{name}[{i}] must hold numbers; got dtype {a.dtype}.")
        if not np.all(np.isfinite(a)):
            bad = int(np.sum(~np.isfinite(a)))
            raise ValueError(
                f"{name}[{i}] contains NaN or inf ({bad} of {a.size} pixels); clean the image "
                "first."
            )
    dtype = np.result_type(*[a.dtype for a in items], np.float64)
    return np.stack([a.astype(dtype) for a in items])


def _check_shapes(op, image_shape, transform):
    if tuple(op.shape) != tuple(image_shape):
        what = "mask" if isinstance(op, Inpainting | SubsampledFourier) else "operator"
        raise ValueError(
            f"the {type(op).__name__} {what} has shape {tuple(op.shape)} but the images are "
            f"{tuple(image_shape)}; build the operator for the images' shape."
        )
    transform.check_shape(tuple(image_shape))


def observe(images, op, sigma: float, seed: int = 0) -> np.ndarray:
    """Simulated measurements K uₖ + σεₖ of a stack of images (ε from
    ``numpy.random.default_rng(seed)``, see :func:`measurement_noise`)."""
    _check_operator(op)
    sigma = _check_sigma(sigma, "observe")
    images = stack_images(images)
    if tuple(op.shape) != images.shape[-2:]:
        raise ValueError(
            f"the {type(op).__name__} has shape {tuple(op.shape)} but the images are "
            f"{images.shape[-2:]}."
        )
    clean = np.asarray(jax.vmap(op.mv)(jnp.asarray(images)))
    rng = np.random.default_rng(seed)
    return clean + measurement_noise(op, sigma, rng, batch=images.shape[0])


# --------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------
class ImagingData(AbstractData):
    r"""The data of an elastic-net reconstruction problem, typed: the measurement operator K
    (``operator``), the orthonormal basis W (``basis``), the measurements ``y`` (n, …) (for
    SURE, the pair y and y + εδ), the forward–backward ``step`` t = 1/‖K‖² and the ℓ1
    ``weights`` w on the coefficients; ``extra`` holds what the criterion reads (``"truth"``,
    or SURE's ``"sure_probes"``). Read as a mapping it is one namespace of fields and extra
    entries (:class:`invcal.typed_data.AbstractData`). :func:`elastic_net_problem` builds it."""

    operator: object
    basis: AbstractBasis
    y: jax.Array
    step: jax.Array
    weights: jax.Array
    extra: dict = eqx.field(default_factory=dict)

    FIELDS = ("operator", "basis", "y", "step", "weights")
    RENAMED = {"op": "operator", "transform": "basis"}


# --------------------------------------------------------------------------------------
# The problem's pure functions (cached so that equal settings share compiled code)
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _functions(value):
    # The basis travels in the data (a pytree with no array leaves: its settings are
    # static), so these functions depend only on the criterion's module-level value
    # function E(u, predict, data) (AbstractImageCriterion.measured_value_fn).
    def fb_step(c, theta, data: ImagingData):
        op, t, w, basis = data.operator, data.step, data.weights, data.basis

        def one(c1, y1):
            u = basis.inverse(c1)
            v = c1 - t * basis.forward(op.rmv(op.mv(u) - y1))
            return prox_elastic_net(v, t, theta["lam1"] * w, theta["lam2"])

        return jax.vmap(one)(c, data.y)

    def support(c, theta, data):
        return c != 0

    def criterion(c, theta, data: ImagingData):
        return value(data.basis.inverse(c), data.operator.mv, data)

    return {"fixed_point": fb_step, "support": support, "criterion": criterion}


def _check_criterion(criterion):
    if not isinstance(criterion, AbstractImageCriterion):
        raise TypeError(
            "criterion must be invcal.imaging.PSNR(), MSE() (both need truth=) or SURE(sigma) "
            f"(one image, no truth); got {criterion!r}."
        )


def images_of(problem, c):
    """The reconstructed images Wᵀc (n, H, W) of a solution c of ``problem``."""
    return problem.data.basis.inverse(c)


def elastic_net_problem(
    observed,
    operator,
    *,
    criterion: AbstractImageCriterion,
    truth=None,
    transform: AbstractBasis | None = None,
    lam1: float = 1e-2,
    lam2: float = 1e-3,
    penalize_coarse: bool = False,
    name: str = "elastic_net_imaging",
) -> Problem:
    """The bilevel elastic-net reconstruction problem (see the module docstring).

    **Arguments**

    - ``observed``: the measurements yₖ — one (H, W) array, a stack (n, H, W) or a list (all
      of one shape; complex for :class:`SubsampledFourier`).
    - ``operator``: K, built for (H, W) images.
    - ``criterion``: :class:`~invcal.imaging.PSNR` or :class:`~invcal.imaging.MSE` (need
      ``truth``, the images u₀ₖ) or :class:`~invcal.imaging.SURE` (σ known, one image).
    - ``transform``: W, default ``Wavelet("db4", levels=4)`` (H and W divisible by 16).
    - ``lam1``, ``lam2``: initial λ₁, λ₂ (> 0; both log-parametrized).
    - ``penalize_coarse``: put the ℓ1 weight on the coarsest approximation too.

    Shapes, NaN/inf, σ and λ are checked here, before any solve. θ = {"lam1", "lam2"}; the
    iterate x is the coefficient stack c (n, H, W) (2 for SURE); :func:`images_of` maps it
    back to images.
    """
    _check_operator(operator)
    _check_criterion(criterion)
    transform = Wavelet() if transform is None else transform
    if not isinstance(transform, AbstractBasis):
        raise TypeError(
            "transform must be invcal.imaging.Wavelet(name, levels) or IdentityTransform(); "
            f"got {transform!r}."
        )
    y = stack_images(observed, "observed")
    _check_shapes(operator, y.shape[-2:], transform)
    lam1, lam2 = _positive("lam1", lam1), _positive("lam2", lam2)
    weights = transform.detail_mask(y.shape[-2:]).astype(float)
    if penalize_coarse:
        weights = np.ones_like(weights)
    step = 1.0 / lipschitz(operator)
    truth = None if truth is None else stack_images(truth, "truth")
    measured = dict(criterion.prepare_measured(y, operator, truth))
    data = ImagingData(
        operator=operator,
        basis=transform,
        y=measured.pop("y"),
        step=jnp.asarray(step),
        weights=jnp.asarray(weights),
        extra=measured,
    )
    fns = _functions(criterion.measured_value_fn())
    backprojection = jax.vmap(operator.rmv)(data.y)
    x0 = transform.forward(jnp.real(backprojection))
    space = Space(lam1=Param(lam1, Log()), lam2=Param(lam2, Log()))
    return Problem(space=space, x0=x0, data=data, symmetric=True, name=name, **fns)


# --------------------------------------------------------------------------------------
# One-call reconstruction
# --------------------------------------------------------------------------------------
@eqx.filter_jit
def _solve(problem, solver, theta, x0):
    return solver.solve(problem, x0, theta)


def reconstruct(
    observed,
    operator,
    lam1: float,
    lam2: float,
    *,
    transform: AbstractBasis | None = None,
    penalize_coarse: bool = False,
    tol: float = 1e-8,
    max_steps: int = 20_000,
    x0=None,
):
    """The elastic-net reconstructions u*(λ₁, λ₂) (n, H, W) of ``observed`` by FISTA, stopped
    when the fixed-point residual is below ``tol``·√(number of coefficients). Returns
    (images, :class:`invcal.InnerSolution` of the coefficients)."""
    y = stack_images(observed, "observed")
    dummy = np.zeros((y.shape[0], *operator.shape))
    problem = elastic_net_problem(
        y,
        operator,
        criterion=MSE(),
        truth=dummy,
        transform=transform,
        lam1=lam1,
        lam2=lam2,
        penalize_coarse=penalize_coarse,
    )
    solver = FISTA(tol=float(tol) * math.sqrt(y.size), max_steps=int(max_steps))
    theta = {"lam1": jnp.asarray(float(lam1)), "lam2": jnp.asarray(float(lam2))}
    sol = _solve(problem, solver, theta, problem.x0 if x0 is None else x0)
    return images_of(problem, sol.x), sol
