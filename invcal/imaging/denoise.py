r"""``denoise_tv``: total-variation denoising with the weight chosen by SURE, in one call.

    u* = argmin_u  w·TV(u) + ½‖u − f‖²        (Rudin, Osher & Fatemi 1992)

solved by Split Bregman (Goldstein & Osher 2009; :mod:`invcal.imaging.tv`). With
``weight="auto"`` the weight minimizes Stein's unbiased risk estimate of the mean squared error
(Stein 1981), which needs only the noise level σ — known, or estimated from the image's
weakly textured patches (Liu, Tanaka & Okutomi 2013, cross-fitted;
:func:`invcal.imaging.noise.estimate_sigma`) — and no ground truth. SURE's divergence term
averages finite-difference Monte-Carlo probes (Deledalle, Vaiter, Fadili & Peyré 2014)
with a step ε = 4σ/N^0.3 (twice their 2σ/N^0.3, see below). The estimator whose risk is
estimated is ``num_steps`` Split Bregman iterations from f (a fixed, continuous function of f,
as SURE needs); the returned image is then the ``tol``-stopped solve at the chosen weight, the
same image ``denoise_tv(image, weight)`` gives. SURE is minimized from its values, on a log
grid of w/σ extended while its best point is at an edge, then refined. Two schedules, by the
number of pixels N:

* **N ≥ 2¹⁷** (e.g. 512×512; the fast schedule): one probe; the estimator at each w is the
  ``tol``-stopped solve itself, run on the batch (f, f + εδ) with the iteration count set by
  f's copy (every copy takes as many iterations, so it is the k-iteration map for the k that f
  sets), and f's copy at the chosen w is the returned image (the same iterations and stopping
  rule as ``denoise_tv(image, w)``, computed in a batch: equal up to rounding), so no final
  solve follows; the grid (0.59, 0.84, 1.19)σ, extended while its best point is at an edge,
  and at most two parabolic steps on log w (each through the best point and its two
  neighbours): 3–6 SURE evaluations, each about two solves' work (a fourth grid point at
  1.68σ cost one more, expensive, evaluation on camera 512², σ = 0.1, and changed no choice).
  The variance of the Monte-Carlo divergence per pixel falls as 1/(probes·N), so one probe
  at N ≥ 2¹⁷ is no noisier than the two validated at 256×256 (below). Measured
  (float32, σ known, the oracle the best of a 21-point grid σ/4–4σ of ``denoise_tv(f, w)``):
  camera 512² σ = 0.05 / 0.1, coffee 512² σ = 0.1, chelsea σ = 0.2, cell σ = 0.2:
  −0.03 to +0.06 dB from the oracle. Fixed-iteration estimators were tried first: 20
  iterations chose well on camera, astronaut, coffee and chelsea (within 0.02 dB) but 0.31 dB
  from the oracle on cell, σ = 0.2 (its solve needs many more iterations: a short estimator
  is biased towards larger w); warm-starting the stopped solves from the nearest evaluated
  weight made the answer path-dependent (0.16 dB on cell). Timings:
  ``benchmarks/reconstruct.py``.
* **N < 2¹⁷** (the thorough schedule): two probes, 100-iteration estimators, the grid
  (0.71, 1, 1.41, 2)σ and bounded Brent between the grid neighbours of its best point (about
  eleven SURE evaluations, each one solve of the batch (f, f + εδ₁, f + εδ₂)).

``num_steps=`` and ``probes=`` override either schedule's choice (a given ``num_steps`` makes
the estimator that many iterations, and the tol-stopped solve at the chosen w follows).

SURE's derivative in w is not used: measured on clock
256×256, σ = 0.2, that derivative (forward mode through the iterations) changed sign five
times between w = 1.50σ and 1.56σ, and a secant search on it stopped 1.2 dB below the
oracle. With the default ε = 2σ/N^0.3 one probe's SURE curve had a spurious dip of
about 1e-5 (per pixel) near w = σ on that image (for 100 and 300 iterations alike) that
pulled the minimum there; with 4σ/N^0.3 the curve is smooth at the scale of a few per cent
in w, and with 8σ/N^0.3 its minimum moved above the oracle weight (a biased divergence).
One probe was not enough there: over five probe seeds and σ = 0.2 or its wavelet-MAD
estimate 0.1975, one probe missed the oracle PSNR by 0.21 and 0.62 dB in two cases; two
probes came within 0.035 dB in all five (each probe costs one more solve per SURE value). A
coarse-to-fine schedule (w chosen on the 2×2-averaged image, with σ/2) was tried and
dropped: on camera 512², σ = 0.1, its choice sat 20% below the full-size SURE minimum
(0.21–0.25 dB).

**Large weights** (issue 16): with ρ = 2 throughout, w = 10, 10⁶ or ``"auto"`` with σ = 10⁶ on
64×64 camera + N(0, 0.1²) hit ``max_steps`` with an image of std 0.041 where the solution is
the constant mean, and weights of 1–3 × the range "converged" 0.024–0.078 × range away from
the solution. Now the weight from which the solution is flat is certified (one DCT pair,
:func:`constant_weight`) and the mean returned there; below it, ρ grows with w from a quarter
of the range (``_penalty``), and a solve still stopped by ``max_steps`` warns.

**Weight convention.** ``weight`` is w above. scikit-image's
``denoise_tv_bregman(image, weight=μ, isotropic=False)`` minimizes ‖∇u‖₁ + (μ/2)‖u − f‖²,
the same problem with μ = 1/w (its docstring's "weight = λ/2" does not match its code), so
``denoise_tv(f, w, isotropic=False)`` corresponds to ``denoise_tv_bregman(f, 1/w,
isotropic=False)``. They agree in the interior and differ in a boundary layer, because
scikit-image holds ghost pixels around the image at the (reflected) noisy data, which ties the
border pixels to the noise. Measured (``benchmarks/tv_vs_skimage.py``, camera 256×256,
σ = 0.05, 0.1, 0.2 with w = 0.045, 0.1, 0.2, float64, both solved to an RMS change of
1e-9): the max abs difference is 0.16–0.33 over the whole image (at the border),
1.3e-3–4.6e-3 at 16 pixels or more from the border, RMS 2.6e-3–8.0e-3; invcal's image has
the lower ROF energy (155.44 vs 155.88, 454.98 vs 456.48, 1499.76 vs 1505.48) and the PSNRs
differ by 0.01–0.09 dB. At both functions' default stopping tolerances (``tol=1e-4`` here,
``eps=1e-3`` there; neither solve is converged then) the max abs difference is 0.04–0.08 at
16 pixels or more from the border. Its ``isotropic=True`` mode solves no ROF problem, so
there is no exact match for it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Real

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .bregman import _split_bregman
from .noise import estimate_sigma
from .tuning import SURE, _sure_value
from .tv import Anisotropic, Isotropic, SplitBregman, TVSolution

__all__ = ["DenoiseInfo", "constant_weight", "denoise_tv"]


@dataclass(frozen=True)
class DenoiseInfo:
    """What :func:`denoise_tv` did.

    ``weight``: the TV weight w used; ``sigma``: the noise level used for SURE (``None`` for a
    given weight) and whether it was ``sigma_estimated``; ``sure``: SURE at ``weight`` of the
    ``num_steps``-iteration estimator (an estimate of its mean squared error per pixel);
    ``num_steps``, ``change`` (last RMS change of u) and ``converged`` of the final solve;
    ``search``: one row per SURE evaluation, ``(weight, sure)``; ``estimator_steps`` and
    ``probes``: the SURE estimator's iterations (at the chosen weight, for the tol-stopped
    estimator) and probes (``None`` for a given weight).
    """

    weight: float
    sigma: float | None
    sigma_estimated: bool
    sure: float | None
    num_steps: int
    change: float
    converged: bool
    isotropic: bool
    search: list = field(default_factory=list)
    estimator_steps: int | None = None
    probes: int | None = None


def _check_image(image) -> np.ndarray:
    if isinstance(image, np.ma.MaskedArray):
        raise TypeError(
            "denoise_tv: image is a masked array; TV denoising uses every pixel and would "
            "ignore the mask. Fill the masked pixels first (image.filled(...)), or inpaint "
            "them (invcal.imaging's inpainting operator)."
        )
    if isinstance(image, (list, tuple)):
        image = np.asarray(image)
    if not hasattr(image, "dtype") or not hasattr(image, "shape"):
        raise TypeError(f"denoise_tv: image must be a 2-D float array; got {type(image).__name__}.")
    dtype = np.dtype(image.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"denoise_tv: image is complex ({dtype}); TV denoising here is for real images — "
            "denoise the real and imaginary parts (or the magnitude) separately."
        )
    if dtype not in (np.float32, np.float64):
        raise ValueError(
            f"denoise_tv: image has dtype {dtype}; pass float32 or float64 (e.g. "
            "skimage.util.img_as_float(image) for an integer image in [0, 1])."
        )
    if image.size == 0:
        raise ValueError(f"denoise_tv: image is empty (shape {tuple(image.shape)}).")
    if image.ndim != 2:
        hint = (
            " For a colour image convert to grayscale first (skimage.color.rgb2gray), "
            "denoise each channel, or use invcal.imaging.reconstruct(image, "
            "color='vectorial') (colour TV, its weight chosen by SURE)."
            if image.ndim == 3
            else ""
        )
        raise ValueError(
            f"denoise_tv: image must be 2-D (H, W) grayscale; got {image.ndim}-D shape "
            f"{tuple(image.shape)}.{hint}"
        )
    if min(image.shape) < 2:
        raise ValueError(f"denoise_tv: image must be at least 2×2; got shape {image.shape}.")
    arr = np.asarray(image)
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise ValueError(
            f"denoise_tv: image contains NaN or inf ({bad} of {arr.size} pixels); inpaint or "
            "replace them first."
        )
    return arr


def _positive(name, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.floating)):
        raise ValueError(f"denoise_tv: {name} must be a positive number; got {value!r}.")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"denoise_tv: {name} must be a positive finite number; got {value!r}.")
    return v


def denoise_tv(
    image,
    weight="auto",
    sigma=None,
    isotropic=True,
    return_info=False,
    *,
    tol: float = 1e-4,
    max_steps: int = 300,
    num_steps: int | None = None,
    seed: int = 0,
    probes: int | None = None,
):
    r"""Total-variation denoising of a 2-D grayscale float image (see the module docstring).

    **Arguments**

    - ``image``: (H, W) float32 or float64 array, any range (the noise level is in its units).
    - ``weight``: the TV weight w > 0 of w·TV(u) + ½‖u − f‖², or ``"auto"`` (default) to
      minimize SURE. Larger w removes more noise (and detail). scikit-image's
      ``denoise_tv_bregman(weight=μ, isotropic=False)`` is w = 1/μ.
    - ``sigma``: the noise standard deviation for SURE; ``None`` estimates it from the
      weakly textured patches of the image (Liu, Tanaka & Okutomi 2013;
      :func:`~invcal.imaging.noise.estimate_sigma`, which falls back to the wavelet MAD on
      images of 38×38 pixels or fewer). Ignored for a numeric ``weight``.
    - ``isotropic``: ``True`` (default) for Σ‖∇u‖₂ per pixel, ``False`` for Σ|∂₀u| + |∂₁u|.
    - ``return_info``: also return a :class:`DenoiseInfo` (weight used, σ, SURE, diagnostics).
    - ``tol`` / ``max_steps``: the final solve stops when the RMS change of u is below ``tol``
      times the image's range (max − min), so that a scaled image gives the scaled result;
      a solve that reaches ``max_steps`` first warns (``RuntimeWarning``). From the weight
      :func:`constant_weight` certifies (the solution is then the constant mean(f)) the
      mean is returned, exactly, with ``num_steps`` 0; above a quarter of the image's range
      the penalty ρ grows with w, so that the stopping rule is reached near the solution
      (see ``_penalty``).
    - ``num_steps``: Split Bregman iterations of the estimator whose SURE is minimized;
      ``seed``: the seed of SURE's Monte-Carlo probes, ``probes`` their number. ``None``
      (default): the tol-stopped solve and 1 for images of 2¹⁷ pixels or more, 100 and 2
      below (see the module docstring: the two search schedules).

    Returns the denoised image as a NumPy array of the input's dtype (and the info).
    Computes in JAX's current precision (float32 in its default configuration, enough for
    images: the stopping rule is relative to the image's range; float64 with
    ``jax_enable_x64``); see :mod:`invcal.precision`.
    Neumann boundaries, penalty ρ = 2 (growing with w from a quarter of the image's range),
    one Gauss–Seidel sweep per iteration.
    """
    f = _check_image(image)
    if isinstance(weight, str):
        if weight != "auto":
            raise ValueError(
                f"denoise_tv: weight must be 'auto' or a positive number; got {weight!r}."
            )
        auto = True
    else:
        auto = False
        w = _positive("weight", weight)
    if sigma is not None:
        sigma = _positive("sigma", sigma)
    if not isinstance(isotropic, (bool, np.bool_)):
        raise TypeError(f"denoise_tv: isotropic must be True or False; got {isotropic!r}.")
    for name, v in (("max_steps", max_steps), ("num_steps", num_steps), ("probes", probes)):
        if v is None and name != "max_steps":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"denoise_tv: {name} must be a positive integer; got {v!r}.")
    tol = _positive("tol", tol)

    fj = jnp.asarray(f)
    method = SplitBregman(norm=Isotropic() if isotropic else Anisotropic(), penalty=2.0)
    estimated, sure_value, search = False, None, []
    if auto:
        if sigma is None:
            if min(f.shape) < 8:
                raise ValueError(
                    "denoise_tv: cannot estimate sigma from an image smaller than 8×8; pass "
                    "sigma= or a numeric weight."
                )
            sigma = estimate_sigma(f)
            estimated = True
            if not sigma > 0:
                raise ValueError(
                    "denoise_tv: the estimated noise level is 0 (a noise-free or constant "
                    "image?); pass sigma= or a numeric weight."
                )
    # The stopping rule is relative to the image's range: TV denoising commutes with scaling
    # (denoise_tv(c·f, c·w) = c·denoise_tv(f, w)), and so must the point where it stops.
    scale = float(np.ptp(f)) or 1.0

    # the weight from which the solution is the constant mean(f) (a dual certificate, one
    # DCT pair: 9 ms at 512×512, a sixth of a solve), needed only from the knee on, where ρ
    # grows (below it ρ = 2 and the iteration converges as it always did)
    flat = []

    def w_flat(w):
        if w < _KNEE * scale:
            return math.inf
        if not flat:
            flat.append(constant_weight(f, isotropic=bool(isotropic)))
        return flat[0]

    def penalty(w):
        return _penalty(w, scale, w_flat(w))

    sol = None
    if auto:
        large = f.size >= _LARGE
        # from _LARGE pixels, by default the estimator is the tol-stopped solve itself (its
        # iteration count set by f's copy of the batch), and its f copy is the answer
        stopped = large and num_steps is None
        if num_steps is None:
            num_steps = 0 if stopped else _STEPS_SMALL
        probes = (1 if large else 2) if probes is None else probes
        w, sure_value, search, sol = _sure_weight(
            fj,
            sigma,
            method,
            int(num_steps),
            int(seed),
            int(probes),
            fast=large,
            stop=(tol * scale, int(max_steps)) if stopped else None,
            penalty=penalty,
        )
    if w >= w_flat(w):  # exact: the solution is the mean (no iteration would reach it soon)
        sol = None
        out = np.full(f.shape, np.mean(f, dtype=np.float64), dtype=f.dtype)
        steps, change, converged = 0, 0.0, True
    else:
        if sol is None:  # split_bregman's loop; f and w are checked already
            at_w = _with_penalty(method, penalty(w), fj.dtype)
            sol = _split_bregman(
                at_w,
                fj,
                jnp.asarray(w, fj.dtype),
                None,
                jnp.asarray(tol * scale, fj.dtype),
                jnp.asarray(int(max_steps)),
            )
        out = np.asarray(sol.u).astype(f.dtype, copy=False)
        steps, change, converged = int(sol.num_steps), float(sol.change), bool(sol.converged)
    if not converged:
        warnings.warn(
            f"denoise_tv: the solve stopped at max_steps={max_steps} with an RMS change of "
            f"{change / scale:.3g} of the image's range, above tol={tol:g}; the "
            "result is not converged. Raise max_steps (a large weight converges slowly).",
            RuntimeWarning,
            stacklevel=2,
        )
    if not return_info:
        return out
    info = DenoiseInfo(
        weight=float(w),
        sigma=None if not auto else float(sigma),
        sigma_estimated=estimated,
        sure=sure_value,
        num_steps=steps,
        change=change,
        converged=converged,
        isotropic=bool(isotropic),
        search=search,
        estimator_steps=(int(num_steps) or steps) if auto else None,
        probes=int(probes) if auto else None,
    )
    return out, info


# --------------------------------------------------------------------------------------
# Large weights: the flat solution, and the penalty
# --------------------------------------------------------------------------------------
_KNEE = 0.25  # ρ grows with w above _KNEE × the image's range (see _penalty)


def constant_weight(f, isotropic: bool = True) -> float:
    r"""A weight w₀ from which ``denoise_tv(f, w)`` is the constant image mean(f) exactly
    (Neumann boundaries): a dual certificate.

    u = f̄ (the mean) minimizes w·TV(u) + ½‖u − f‖² iff f − f̄ ∈ w ∂TV(f̄), i.e. iff some
    field p with ∇ᵀp = f − f̄ has |p_i| ≤ w at every pixel (the Euclidean norm of the pair
    for isotropic TV, each component for anisotropic TV). p = ∇g with g the zero-mean
    solution of the Neumann Poisson equation ∇ᵀ∇g = f − f̄ (one DCT-II pair) is such a
    field, so w₀ = max_i |(∇g)_i| suffices. (The smallest such weight, the dual norm of
    f − f̄, can be lower: measured on 64×64 camera + N(0, 0.1²), the solution was flat from
    about w = 5 (isotropic) against w₀ = 6.9.)
    """
    from scipy.fft import dctn, idctn

    f = np.asarray(f, dtype=np.float64)
    h, w = f.shape
    lam = (2 - 2 * np.cos(np.pi * np.arange(h) / h))[:, None] + (
        2 - 2 * np.cos(np.pi * np.arange(w) / w)
    )[None, :]
    c = dctn(f - f.mean(), type=2, norm="ortho")
    lam[0, 0] = 1.0
    c = c / lam
    c[0, 0] = 0.0
    g = idctn(c, type=2, norm="ortho")
    g0 = np.zeros_like(g)
    g1 = np.zeros_like(g)
    g0[:-1] = g[1:] - g[:-1]
    g1[:, :-1] = g[:, 1:] - g[:, :-1]
    if isotropic:
        return float(np.max(np.sqrt(g0 * g0 + g1 * g1)))
    return float(max(np.max(np.abs(g0)), np.max(np.abs(g1))))


def _penalty(w, scale, w_flat) -> float:
    """Split Bregman's ρ at weight w for an image of range ``scale``: 2 up to w = _KNEE ×
    scale, then ρ = 2w/(_KNEE·scale) (w capped at ``w_flat``, where the solution is flat).

    At large weights the solution has large flat regions, and on them Split Bregman with a
    fixed ρ is the augmented-Lagrangian iteration for ∇u = 0, which damps a region's
    smoothest mode by 1/(1 + ρμ) per iteration (μ ≈ (π/L)² for a region L pixels wide): with
    ρ = 2 the RMS change fell below tol long before u got there. Measured on 64×64 camera
    and 128×128 coins + N(0, 0.1²), isotropic, stopped at tol 1e-4 × range: with ρ = 2 the
    result was 0.024–0.078 × range (max |Δu|) from the converged image at w = 1–3 × range
    and 0.013–0.017 at w = 0.25 × range; with this ρ, 0.005–0.012 at 0.5–3 × range (97–212
    iterations; ρ = 2 took 86–290). Below the knee (every SURE-chosen weight but the
    noisiest images') ρ = 2 as before. The penalty changes the speed, not the solution."""
    w = min(float(w), float(w_flat))
    return 2.0 * max(1.0, w / (_KNEE * scale))


def _with_penalty(method, rho, dtype):
    """``method`` with Split Bregman's penalty ρ: the Python number 2.0 (every weight below
    the knee), which XLA folds into the iteration's fused loops, or a scalar array (one
    program for every ρ above it). Measured (512×512 float32, anisotropic, one core): with ρ
    a runtime scalar an iteration took 1.06–1.16 ms of CPU time against 0.62–0.78 ms with
    the constant, same fusions otherwise (the scalar operand in XLA's fused loops is what
    costs). At most two programs per image shape."""
    value = 2.0 if float(rho) == 2.0 else jnp.asarray(rho, dtype)
    return eqx.tree_at(lambda m: m.penalty, method, value)


# --------------------------------------------------------------------------------------
# The SURE search
# --------------------------------------------------------------------------------------
# SURE(w) is minimized from its values alone. Its derivative in w (forward mode through the
# iterations, which an earlier version followed with a secant search) is dominated by
# fine-scale wiggles of the finite-difference divergence: measured on clock 256×256, σ = 0.2,
# the derivative changed sign five times between w = 1.50σ and 1.56σ and pointed downhill at
# w = σ while SURE was 2.3× higher at 1.41σ, so the secant search stopped at w = σ, 1.2 dB
# below the oracle. The values are smooth on the scale that matters (a few per cent in w).
# A coarse log grid of w/σ around the SURE-optimal values measured on the test images (0.8
# to 1.4 isotropic) picks the basin, extended while its best point is at an edge; below
# _LARGE pixels bounded Brent (parabolic interpolation with golden-section safeguards)
# refines it inside the two neighbouring grid points, from _LARGE on at most two parabolic
# steps do (5–6 evaluations instead of about 11; see the module docstring).
_GRID = (0.71, 1.0, 1.41, 2.0)  # reconstruct's grid (Brent refines it there)
_SEARCH_GRID = (0.59, 0.84, 1.19)  # denoise_tv's from _LARGE pixels: √2 apart
_MAX_GRID = 10
_PARABOLA_STEPS = 2
# The defaults of num_steps and probes by image size (see the module docstring): from
# _LARGE pixels on, one probe and the tol-stopped solve as the estimator; below, two probes
# and 100 iterations. _STEPS_LARGE: reconstruct's fast-schedule estimator for denoising.
_LARGE = 2**17
_STEPS_LARGE = 20
_STEPS_SMALL = 100
_Z_TOL = 0.02  # Brent's absolute tolerance on log w (2% in w; PSNR is flat there)
_MAX_REFINE = 8
_EPS = 4.0  # the finite-difference step ε = _EPS·σ/N^0.3 (see the module docstring)


@eqx.filter_jit
def _sure_fixed_steps(method, data, w, num_steps):
    """SURE of the ``num_steps``-iteration Split Bregman estimator from f, for the batch
    (f, f + εδ₁, …) of :func:`invcal.criteria.sure_pair` solved side by side."""
    fs = data["f"]
    w = jnp.asarray(w).astype(fs.dtype)
    # one copy after the other (see _sure_stopped)
    u = jnp.stack([_iterate(method, fs[i], w, num_steps) for i in range(fs.shape[0])])
    return _sure_value(u, data)


@eqx.filter_jit
def _sure_stopped(method, data, w, tol, max_steps):
    """SURE of the tol-stopped Split Bregman solve, batched as :func:`_sure_fixed_steps`:
    every copy iterates until the RMS change of f's copy (copy 0) is below ``tol`` (at least
    two iterations, at most ``max_steps``: the stopping rule of :func:`split_bregman`), so
    the estimator is the k-iteration map for the k that f sets, and f's copy is the image
    ``split_bregman(f, w, tol=tol)`` returns (up to rounding). Returns (SURE, f's
    TVSolution)."""
    fs = data["f"]
    w = jnp.asarray(w).astype(fs.dtype)
    f0 = fs[0]
    n = f0.size

    def cond(c):
        k, _, ch = c
        return (k < max_steps) & ((ch >= tol) | (k < 2))

    def body(c):
        k, s, _ = c
        s_new = method.step(s, f0, w)
        ch = jnp.sqrt(jnp.sum((s_new.u - s.u) ** 2) / n)
        return k + 1, s_new, ch

    init = (jnp.asarray(0), method.init(f0), jnp.asarray(jnp.inf, fs.dtype))
    k, first, ch = jax.lax.while_loop(cond, body, init)
    # the other copies, k iterations each, one after the other: a loop over one copy keeps
    # its state (≈ 6 MB at 512×512 float32) in the cache, where the batch side by side did
    # not (measured: the pair took 2.6× one solve's CPU time, vmapped or unrolled)
    others = [_iterate(method, fs[i], w, k) for i in range(1, fs.shape[0])]
    sol = TVSolution(u=first.u, state=first, num_steps=k, change=ch, converged=ch < tol)
    return _sure_value(jnp.stack([first.u, *others]), data), sol


def _iterate(method, f, w, num_steps):
    """u after ``num_steps`` Split Bregman iterations from ``method.init(f)``."""
    return jax.lax.fori_loop(0, num_steps, lambda _, s: method.step(s, f, w), method.init(f)).u


def _sure_weight(f, sigma, method, num_steps, seed, probes=2, fast=False, stop=None, penalty=None):
    """argmin_w SURE(w): a coarse log grid of w/σ, extended while its best point is at an
    edge, then Brent or (``fast``) parabolic steps on log w (see the comment above). The
    estimator is ``num_steps`` iterations, or with ``stop`` = (tol, max_steps) the solve
    stopped when the RMS change of f's copy falls below tol (every copy takes as many
    iterations). ``penalty``: ρ as a function of w (``method``'s penalty an array), or None
    for ``method``'s own. Returns (w, SURE(w), rows (w, SURE), the TVSolution of f's copy
    at w with ``stop``, else None)."""
    eps = _EPS * sigma / f.size**0.3
    data = SURE(sigma, seed=seed, probes=probes, eps=eps).data(f[None], None)
    rows = []  # (z, SURE)
    steps = jnp.asarray(int(num_steps))  # an array: one compiled program for every num_steps
    best = {}

    def evaluate(z):
        w = jnp.asarray(math.exp(z), f.dtype)
        m = method if penalty is None else _with_penalty(method, penalty(math.exp(z)), f.dtype)
        if stop is None:
            value = float(_sure_fixed_steps(m, data, w, steps))
        else:
            tol, max_steps = stop
            # cold, as the final solve: warm-started from the state at the nearest weight
            # evaluated, the tol-stopped images depend on the path (measured on cell, σ = 0.2:
            # 0.1 dB below the cold solve at the same weight)
            value, sol = _sure_stopped(
                m, data, w, jnp.asarray(tol, f.dtype), jnp.asarray(max_steps)
            )
            value = float(value)
            if not best or value < best["value"]:
                best.update(value=value, sol=sol)
        if not math.isfinite(value):
            raise FloatingPointError(f"denoise_tv: SURE is not finite at weight {math.exp(z):.4g}.")
        rows.append((z, value))
        return value

    if fast:
        search_log_grid(evaluate, [math.log(r * sigma) for r in _SEARCH_GRID], _MAX_GRID)
    else:
        _grid_then_brent(evaluate, [math.log(r * sigma) for r in _GRID], _MAX_GRID)
    z, e = min(rows, key=lambda r: r[1])
    return math.exp(z), e, [(math.exp(r[0]), r[1]) for r in rows], best.get("sol")


def _extend_grid(evaluate, zs, max_evaluations):
    """Evaluate the log grid ``zs`` (evenly spaced, ascending), extended by its spacing
    while its best point is at an edge. Returns {z: value}."""
    values = {z: evaluate(z) for z in zs}
    step = zs[1] - zs[0]
    while len(values) < max_evaluations:
        ordered = sorted(values.items())
        k = min(range(len(ordered)), key=lambda i: ordered[i][1])
        if 0 < k < len(ordered) - 1:
            break
        z = ordered[k][0] + (step if k else -step)
        values[z] = evaluate(z)
    return values


def _grid_then_brent(evaluate, zs, max_evaluations):
    """The thorough search: the grid, then bounded Brent (xatol _Z_TOL, at most _MAX_REFINE
    evaluations) between the grid neighbours of its best point."""
    from scipy.optimize import minimize_scalar

    values = _extend_grid(evaluate, zs, max_evaluations)
    ordered = sorted(values.items())
    k = min(range(len(ordered)), key=lambda i: ordered[i][1])
    if 0 < k < len(ordered) - 1:
        minimize_scalar(
            evaluate,
            bounds=(ordered[k - 1][0], ordered[k + 1][0]),
            method="bounded",
            options={"xatol": _Z_TOL, "maxiter": _MAX_REFINE},
        )


def search_log_grid(evaluate, zs, max_evaluations, parabola_steps=_PARABOLA_STEPS):
    """The fast search: the grid, then up to ``parabola_steps`` parabolic steps, each through
    the best point evaluated so far and its two neighbours, stopping when the vertex falls
    within _Z_TOL of a point already evaluated. ``evaluate(z)`` records and returns the
    criterion at z = log λ; the caller picks the best point it recorded."""
    values = _extend_grid(evaluate, zs, max_evaluations)
    for _ in range(parabola_steps):
        ordered = sorted(values.items())
        k = min(range(len(ordered)), key=lambda i: ordered[i][1])
        if not 0 < k < len(ordered) - 1:
            break
        z = _parabola_vertex(*ordered[k - 1 : k + 2])
        if min(abs(z - z0) for z0 in values) <= _Z_TOL:
            break
        values[z] = evaluate(z)
    return values


def _parabola_vertex(p0, p1, p2):
    """The minimizer of the parabola through three points (z, value) with p1 the lowest,
    z₀ < z₁ < z₂; kept inside (z₀, z₂) (it is there whenever p1 is the lowest)."""
    (z0, e0), (z1, e1), (z2, e2) = p0, p1, p2
    num = (z1 - z0) ** 2 * (e1 - e2) - (z1 - z2) ** 2 * (e1 - e0)
    den = (z1 - z0) * (e1 - e2) - (z1 - z2) * (e1 - e0)
    if not den or not math.isfinite(num / den):
        return z1
    z = z1 - 0.5 * num / den
    return min(max(z, z0 + 0.1 * (z1 - z0)), z2 - 0.1 * (z2 - z1))
