r"""Elastic-net image reconstruction: λ₁ and λ₂ learned from training images.

For scikit-image's offline photos u₀ₖ (grayscale in [0, 1], ``size``×``size``) measured as
yₖ = K u₀ₖ + σεₖ by one of three operators K —

* ``blur``: periodic Gaussian blur (FFT convolution; 9×9 kernel of width 1.5 px), σ = 0.01;
* ``inpainting``: a random half of the pixels kept, σ = 0.02;
* ``mri``: the orthonormal 2-D Fourier transform sampled on 30 % of k-space (variable
  density with a fully sampled centre), complex noise σ = 0.02 per real component —

the reconstruction and the criterion are

    inner   u*ₖ(λ) = argmin_u  ½‖K u − yₖ‖² + λ₁‖w ⊙ W u‖₁ + (λ₂/2)‖u‖²
    outer   E(λ)   = −(1/n) Σₖ PSNR(u*ₖ(λ), u₀ₖ)          (or the MSE, or SURE)

with W the orthonormal periodic Daubechies-4 wavelet transform (4 levels; ``wavelet`` picks
another, ``"identity"`` none) and w = 1 on the detail coefficients, 0 on the coarse
approximation (Zou & Hastie 2005; Daubechies, Defrise & De Mol 2004 for the wavelet-ℓ1
reconstruction). The inner problems of all training images are solved together (``vmap``) by
FISTA on the wavelet coefficients with the exact elastic-net prox, warm-started, stopped on the
fixed-point residual (:mod:`invcal.imaging.elastic_net`). The hypergradient is the implicit
one restricted to the active wavelet coefficients — a symmetric positive definite system,
solved by conjugate gradients in reverse mode (default) or forward mode (one solve per λ) —
with the unrolled reverse mode for comparison. ``criterion="sure"`` tunes λ for the single
image ``image`` without its truth (Stein's unbiased risk estimate of the prediction error,
finite-difference Monte-Carlo divergence; Deledalle et al. 2014).

Training images: camera, astronaut, coffee, chelsea, text; validation: clock, page, cell (all
ship inside the scikit-image wheel). The validation PSNR of the learned λ is reported beside
the hand-picked starting λ.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import jax.numpy as jnp
import lineax as lx
import numpy as np

import invcal as ic
from invcal.catalog import Setup
from invcal.imaging import (
    MSE,
    PSNR,
    SURE,
    TRAIN,
    VALIDATION,
    Blur,
    IdentityTransform,
    Inpainting,
    SubsampledFourier,
    Wavelet,
    gaussian_kernel,
    load_images,
    psnr,
    random_mask,
    variable_density_mask,
)
from invcal.imaging import elastic_net as en

from ._options import choice, image_names, integer, positive

__all__ = [
    "build",
    "load_data",
    "make_operator",
    "methods",
    "method_solvers",
    "reconstruct",
    "setup",
    "solver_for",
    "validation_psnr",
]

OPERATORS = ("blur", "inpainting", "mri")
CRITERIA = ("psnr", "mse", "sure")
SIGMA = {"blur": 0.01, "inpainting": 0.02, "mri": 0.02}
FRACTION = {"inpainting": 0.5, "mri": 0.3}
BLUR_KERNEL, BLUR_WIDTH = 9, 1.5
# Hand-picked starting λ: a common denoising threshold (λ₁ ≈ σ) and a small ridge weight.
HAND = {"blur": (3e-3, 1e-3), "inpainting": (1e-2, 1e-3), "mri": (1e-2, 1e-3)}


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------
def _transform(wavelet, levels):
    if isinstance(wavelet, str) and wavelet.lower() == "identity":
        return IdentityTransform()
    return Wavelet(wavelet, integer("levels", levels, 1))


# --------------------------------------------------------------------------------------
# Operators and data
# --------------------------------------------------------------------------------------
def make_operator(operator="blur", size=256, *, seed=0, fraction=None):
    """K for ``size``×``size`` images: ``"blur"``, ``"inpainting"`` (``fraction`` of the pixels
    kept, default 0.5) or ``"mri"`` (``fraction`` of k-space sampled, default 0.3); the masks
    are drawn with ``seed``."""
    operator = choice("operator", operator, OPERATORS)
    size = integer("size", size, 8, 4096)
    shape = (size, size)
    if operator == "blur":
        return Blur.from_kernel(gaussian_kernel(BLUR_KERNEL, BLUR_WIDTH), shape)
    frac = FRACTION[operator] if fraction is None else positive("fraction", fraction)
    if frac > 1:
        raise ValueError(f"fraction must be in (0, 1]; got {frac!r}.")
    if operator == "inpainting":
        return Inpainting(random_mask(shape, frac, seed))
    return SubsampledFourier(variable_density_mask(shape, frac, seed))


def load_data(
    *,
    operator="blur",
    size=256,
    sigma=None,
    seed=0,
    fraction=None,
    train=None,
    validation=None,
) -> dict:
    """Truth and simulated measurements for the training and validation images, and K.

    ``sigma`` defaults to the operator's (blur 0.01, inpainting and MRI 0.02); training noise
    is drawn with ``seed``, validation noise with ``seed + 1``."""
    operator = choice("operator", operator, OPERATORS)
    sigma = SIGMA[operator] if sigma is None else sigma
    if isinstance(sigma, str):
        try:
            sigma = float(sigma)
        except ValueError:
            pass
    sigma = en._check_sigma(sigma, "elastic_net_imaging")
    seed = integer("seed", seed, 0)
    train = image_names("train", train, TRAIN)
    validation = image_names("validation", validation, VALIDATION)
    op = make_operator(operator, size, seed=seed, fraction=fraction)
    truth_train = load_images(train, size)
    truth_val = load_images(validation, size)
    return {
        "operator": operator,
        "op": op,
        "sigma": sigma,
        "train": train,
        "validation": validation,
        "truth_train": truth_train,
        "observed_train": en.observe(truth_train, op, sigma, seed),
        "truth_val": truth_val,
        "observed_val": en.observe(truth_val, op, sigma, seed + 1),
    }


def build(
    *,
    operator="blur",
    size=256,
    sigma=None,
    seed=0,
    fraction=None,
    criterion="psnr",
    image="camera",
    wavelet="db4",
    levels=4,
    lam1=None,
    lam2=None,
    train=None,
    validation=None,
) -> ic.Problem:
    """The bilevel problem (see the module docstring).

    - ``operator``: ``"blur"`` (default), ``"inpainting"`` or ``"mri"``; ``fraction`` its
      sampling fraction; ``size`` (256), ``sigma`` (per operator), ``seed`` (0).
    - ``criterion``: ``"psnr"`` (default: −mean training PSNR), ``"mse"`` or ``"sure"`` (the
      single training image ``image``, no truth used).
    - ``wavelet``: ``"db4"`` (default), ``"haar"``, ``"db1"`` … ``"db10"`` or ``"identity"``;
      ``levels`` (4).
    - ``lam1``, ``lam2``: the starting λ (default: the operator's hand-picked values).
    - ``train`` / ``validation``: image names (comma-separated or a list).
    """
    data = load_data(
        operator=operator,
        size=size,
        sigma=sigma,
        seed=seed,
        fraction=fraction,
        train=train,
        validation=validation,
    )
    return _build(data, criterion, image, wavelet, levels, lam1, lam2)


def _build(data, criterion, image, wavelet, levels, lam1, lam2):
    criterion = choice("criterion", criterion, CRITERIA)
    h1, h2 = HAND[data["operator"]]
    lam1 = h1 if lam1 is None else positive("lam1", lam1)
    lam2 = h2 if lam2 is None else positive("lam2", lam2)
    transform = _transform(wavelet, levels)
    common = dict(transform=transform, lam1=lam1, lam2=lam2, name="elastic_net_imaging")
    if criterion == "sure":
        if image not in data["train"]:
            raise ValueError(
                f"image must be one of the training images {list(data['train'])}; got {image!r}."
            )
        k = data["train"].index(image)
        return en.elastic_net_problem(
            data["observed_train"][k], data["op"], criterion=SURE(data["sigma"]), **common
        )
    crit = PSNR() if criterion == "psnr" else MSE()
    return en.elastic_net_problem(
        data["observed_train"], data["op"], criterion=crit, truth=data["truth_train"], **common
    )


# --------------------------------------------------------------------------------------
# Solvers, hypergradient methods, validation
# --------------------------------------------------------------------------------------
# Inner tolerance per coefficient: ‖T(c) − c‖ ≤ RMS_TOL·√(coefficients). 1e-9 keeps the
# hypergradient within ~1e-6 of the exact one at 64×64 (the tests use 1e-13 for the 1e-5
# finite-difference comparison).
RMS_TOL = 1e-9
MAX_STEPS = 20_000
UNROLL = 1000


def solver_for(problem, rms_tol=RMS_TOL, max_steps=MAX_STEPS) -> ic.FISTA:
    """FISTA stopped when ‖T(c) − c‖ ≤ rms_tol·√(number of coefficients)."""
    n = int(np.prod(np.shape(problem.x0)))
    return ic.FISTA(tol=float(rms_tol) * math.sqrt(n), max_steps=int(max_steps))


def _cg(rtol=1e-10):
    # atol > 0 matters: lineax's CG scales the residual elementwise by atol + rtol·|b|, and
    # the active-set right-hand side is 0 off the support (0/0 stopped CG after one step).
    return lx.CG(rtol=rtol, atol=1e-14, max_steps=20_000)


def methods() -> dict:
    """Every hypergradient method ``invcal check`` compares, by name."""
    return {
        "implicit": ic.Implicit(_cg(), active_set=True),
        "implicit-forward": ic.Implicit(_cg(), active_set=True, mode="forward"),
        "unrolled": ic.Unrolled(UNROLL),
    }


def method_solvers(problem) -> dict:
    """Unrolling (and its finite differences) run at most ``UNROLL`` FISTA steps."""
    return {"unrolled": solver_for(problem, max_steps=UNROLL)}


def reconstruct(data, theta, which="val", *, wavelet="db4", levels=4, rms_tol=RMS_TOL):
    """The reconstructions (n, H, W) of the validation (``which="val"``) or training
    measurements at θ = {"lam1", "lam2"}."""
    observed = data["observed_val"] if which == "val" else data["observed_train"]
    images, sol = en.reconstruct(
        observed,
        data["op"],
        float(np.asarray(theta["lam1"])),
        float(np.asarray(theta["lam2"])),
        transform=_transform(wavelet, levels),
        tol=rms_tol,
        max_steps=MAX_STEPS,
    )
    if not bool(sol.converged):
        raise RuntimeError(
            f"the reconstruction at θ={theta} did not converge in {MAX_STEPS} FISTA steps."
        )
    return np.asarray(images)


def validation_psnr(data, theta, **kwargs) -> float:
    """Mean PSNR (dB) of the validation reconstructions at θ."""
    u = reconstruct(data, theta, "val", **kwargs)
    return float(np.mean(np.asarray(psnr(jnp.asarray(u), jnp.asarray(data["truth_val"])))))


def observed_image(data, k=0, which="val"):
    """What the measurements look like as an image: y itself for blur and inpainting, the
    zero-filled inverse Fourier transform Kᵀy for MRI."""
    y = (data["observed_val"] if which == "val" else data["observed_train"])[k]
    if np.iscomplexobj(y):
        return np.asarray(data["op"].rmv(jnp.asarray(y)))
    return np.asarray(y)


def landscape(data, l1s, l2s, *, wavelet="db4", levels=4, rms_tol=RMS_TOL, record=None):
    """Validation PSNR on the grid l1s × l2s (rows: λ₁), one warm-started solve per point
    (the λ₂ axis is traversed back and forth so each start is a neighbour's solution).

    ``record``: a JSON file where each finished row of λ₁ is written as it finishes; a call
    with the same axes and file resumes after the last finished row (its first solve then
    starts cold)."""
    from invcal.outer import atomic_write_json

    transform = _transform(wavelet, levels)
    out = np.zeros((len(l1s), len(l2s)))
    axes = [np.asarray(l1s, float).tolist(), np.asarray(l2s, float).tolist()]
    done = 0
    if record is not None and Path(record).exists():
        saved = json.loads(Path(record).read_text())
        if saved.get("axes") == axes:
            done = len(saved["rows"])
            out[:done] = np.asarray(saved["rows"], float).reshape(done, len(l2s))
    x0 = None
    truth = jnp.asarray(data["truth_val"])
    for i in range(done, len(l1s)):
        a = l1s[i]
        js = range(len(l2s)) if i % 2 == 0 else reversed(range(len(l2s)))
        for j in js:
            images, sol = en.reconstruct(
                data["observed_val"],
                data["op"],
                float(a),
                float(l2s[j]),
                transform=transform,
                tol=rms_tol,
                max_steps=MAX_STEPS,
                x0=x0,
            )
            x0 = sol.x
            out[i, j] = float(jnp.mean(psnr(images, truth)))
        if record is not None:
            atomic_write_json(Path(record), {"axes": axes, "rows": out[: i + 1].tolist()})
    return out


# --------------------------------------------------------------------------------------
# Figures for the report
# --------------------------------------------------------------------------------------
def _extra_report(data, options):
    wavelet, levels = options.get("wavelet", "db4"), options.get("levels", 4)
    grid_points = integer("landscape_points", options.get("landscape_points", 7), 2, 25)

    def extra(result, outdir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kw = dict(wavelet=wavelet, levels=levels)
        figures = []
        hist = result.history
        hand = {k: float(np.asarray(v)) for k, v in hist[0]["theta"].items()}
        learned = {k: float(np.asarray(v)) for k, v in result.theta.items()}
        u_hand = reconstruct(data, hand, **kw)
        u_learned = reconstruct(data, learned, **kw)
        truth = data["truth_val"]
        p_hand = float(np.mean(np.asarray(psnr(jnp.asarray(u_hand), jnp.asarray(truth)))))
        p_learned = float(np.mean(np.asarray(psnr(jnp.asarray(u_learned), jnp.asarray(truth)))))
        extra_out = result.results.setdefault("extra", {})
        extra_out.update(
            validation_psnr_hand=p_hand,
            validation_psnr_learned=p_learned,
            lam1_learned=learned["lam1"],
            lam2_learned=learned["lam2"],
            operator=data["operator"],
        )
        # 1. observed / hand-picked / learned / truth on the first validation image
        obs = observed_image(data)
        panels = [
            ("observed" + (" (zero-filled Kᵀy)" if data["operator"] == "mri" else ""), obs),
            (f"hand-picked λ=({hand['lam1']:.2g}, {hand['lam2']:.2g})", u_hand[0]),
            (f"learned λ=({learned['lam1']:.2g}, {learned['lam2']:.2g})", u_learned[0]),
            ("truth", truth[0]),
        ]
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.9), layout="constrained")
        for ax, (title, img) in zip(axes, panels, strict=True):
            ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            if title != "truth":
                p = float(psnr(jnp.asarray(img), jnp.asarray(truth[0])))
                title += f"\nPSNR {p:.2f} dB"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.savefig(outdir / "elastic_net_images.png", dpi=110)
        plt.close(fig)
        figures.append(
            (
                f"Validation image {data['validation'][0]} ({data['operator']}, σ = "
                f"{data['sigma']}): observed, hand-picked λ, learned λ, truth. Mean validation "
                f"PSNR over {', '.join(data['validation'])}: hand-picked {p_hand:.2f} dB, "
                f"learned {p_learned:.2f} dB.",
                "elastic_net_images.png",
            )
        )
        # 2. validation PSNR over (log λ₁, log λ₂) with the trajectory
        traj = np.array([[r["theta"]["lam1"], r["theta"]["lam2"]] for r in hist], dtype=float)
        lo = np.minimum(traj.min(0), [1e-4, 1e-5]) / 2
        hi = np.maximum(traj.max(0), [1e-1, 1e-1]) * 2
        l1s = np.geomspace(lo[0], hi[0], grid_points)
        l2s = np.geomspace(lo[1], hi[1], grid_points)
        land = landscape(data, l1s, l2s, **kw)
        extra_out["validation_landscape"] = {
            "lam1": l1s.tolist(),
            "lam2": l2s.tolist(),
            "psnr": land.tolist(),
        }
        fig, ax = plt.subplots(figsize=(6.2, 4.8))
        cs = ax.contourf(np.log10(l1s), np.log10(l2s), land.T, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="mean validation PSNR [dB]")
        ax.plot(np.log10(traj[:, 0]), np.log10(traj[:, 1]), "o-", ms=3, color="w", lw=1)
        ax.plot(*np.log10(traj[0]), "s", color="C1", ms=7, label="hand-picked start")
        ax.plot(
            *np.log10([learned["lam1"], learned["lam2"]]), "*", color="C3", ms=12, label="learned"
        )
        ax.set_xlabel("log₁₀ λ₁")
        ax.set_ylabel("log₁₀ λ₂")
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(outdir / "elastic_net_landscape.png", dpi=110)
        plt.close(fig)
        figures.append(
            (
                f"Mean validation PSNR over (log λ₁, log λ₂) ({grid_points}×{grid_points} "
                "grid) and the hypergradient trajectory on the training criterion.",
                "elastic_net_landscape.png",
            )
        )
        return figures

    return extra


def setup(**options) -> Setup:
    """Elastic-net wavelet reconstruction (blur, inpainting or MRI) of photos: learn λ₁, λ₂.

    ``options`` are passed to :func:`build` (``operator``, ``size``, ``sigma``, ``seed``,
    ``fraction``, ``criterion``, ``image``, ``wavelet``, ``levels``, ``lam1``, ``lam2``,
    ``train``, ``validation``), plus ``landscape_points`` (the validation landscape grid,
    default 7×7). Defaults: blur, 256×256, db4 wavelets with 4 levels, −mean PSNR over the
    five training images; FISTA; implicit hypergradient on the active set (CG); Adam on
    (log λ₁, log λ₂), 30 steps.
    """
    known = list(inspect.signature(build).parameters) + ["landscape_points"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"elastic_net_imaging got unknown option(s) {unknown}; known: {known}.")
    data_keys = ("operator", "size", "sigma", "seed", "fraction", "train", "validation")
    data = load_data(**{k: options[k] for k in data_keys if k in options})
    problem = _build(
        data,
        options.get("criterion", "psnr"),
        options.get("image", "camera"),
        options.get("wavelet", "db4"),
        options.get("levels", 4),
        options.get("lam1"),
        options.get("lam2"),
    )
    all_methods = methods()
    return Setup(
        problem=problem,
        solver=solver_for(problem),
        method=all_methods["implicit"],
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=all_methods,
        method_solvers=method_solvers(problem),
        optimizer="adam",
        learning_rate=0.3,
        steps=30,
        grid={},
        extra_report=_extra_report(data, options),
    )
