r"""Total-variation denoising by Split Bregman, its weights learned by hypergradients.

Rudin, Osher & Fatemi (1992) denoising with the Split Bregman method of Goldstein & Osher
(2009), on scikit-image's offline test images (grayscale in [0, 1], ``size``×``size``,
Gaussian noise σ). For each training image k with truth u₀ₖ and noisy fₖ = u₀ₖ + σεₖ,

    inner   u*ₖ(θ) = argmin_u  TV_w(θ)(u) + ½‖u − fₖ‖²         (anisotropic or isotropic TV)
    outer   E(θ)   = −(1/n) Σₖ PSNR(u*ₖ(θ), u₀ₖ)                  (or the MSE, or SURE)

with the TV weights w(θ) one scalar, a (vertical, horizontal) pair or a coarse ``blocks``×
``blocks`` grid, log-parametrized. The inner solution is the fixed point of one Split Bregman
iteration T(u, d, b; w) (:mod:`invcal.imaging.bregman`), solved for all training images at once
(``vmap``); its hypergradient comes from the implicit function theorem on s − T(s) with GMRES
(the default), from unrolling T, or — with ``huber=ε`` — from CG on the Hessian of the
Huber-smoothed energy. ``criterion="sure"`` tunes the weight of the single image ``image``
without its truth: Stein's unbiased risk estimate with σ known (Stein 1981) and a
finite-difference Monte-Carlo divergence (Deledalle, Vaiter, Fadili & Peyré 2014).

Training images: camera, astronaut, coffee, chelsea, text; validation: clock, page, cell
(noise drawn with ``seed`` and ``seed + 1``). Exact isotropic TV converges sublinearly under
Split Bregman, too slowly for the implicit method's fixed point at a tight tolerance: use
``norm="anisotropic"`` (default) or ``huber=ε`` for learning, and
:func:`invcal.imaging.denoise_tv` for SURE-tuned isotropic denoising.
"""

from __future__ import annotations

import inspect
import math

import jax
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
    Anisotropic,
    BlockWeights,
    DirectionalWeights,
    GaussSeidel,
    Isotropic,
    Neumann,
    ScalarWeight,
    SplitBregman,
    add_noise,
    load_images,
    psnr,
    split_bregman,
    tv_problem,
)

from ._options import choice, image_names, integer, positive

__all__ = ["build", "setup", "load_data", "method_for", "methods", "method_solvers", "denoise"]

NORMS = ("anisotropic", "isotropic")
LAYOUTS = ("scalar", "directional", "blocks")
CRITERIA = ("psnr", "mse", "sure")
PENALTY = 8.0  # ρ: fastest to the tight tolerances the implicit method needs (measured)


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------
# Data, method, problem
# --------------------------------------------------------------------------------------
def load_data(*, size=256, sigma=0.1, seed=0, train=None, validation=None) -> dict:
    """Truth and noisy stacks (n, size, size) for the training and validation images."""
    size = integer("size", size, 8, 2048)
    sigma = positive("sigma", sigma)
    seed = integer("seed", seed, 0)
    train = image_names("train", train, TRAIN)
    validation = image_names("validation", validation, VALIDATION)
    truth_train = load_images(train, size)
    truth_val = load_images(validation, size)
    return {
        "train": train,
        "validation": validation,
        "sigma": sigma,
        "truth_train": truth_train,
        "noisy_train": add_noise(truth_train, sigma, seed),
        "truth_val": truth_val,
        "noisy_val": add_noise(truth_val, sigma, seed + 1),
    }


def method_for(norm="anisotropic", huber=None) -> SplitBregman:
    """The Split Bregman settings: Neumann boundaries, one Gauss–Seidel sweep, ρ = 8."""
    norm = choice("norm", norm, NORMS)
    return SplitBregman(
        norm=Anisotropic() if norm == "anisotropic" else Isotropic(),
        boundary=Neumann(),
        u_step=GaussSeidel(1),
        penalty=PENALTY,
        huber=positive("huber", huber, none_ok=True),
    )


def _layout(weights, blocks):
    weights = choice("weights", weights, LAYOUTS)
    if weights == "scalar":
        return ScalarWeight()
    if weights == "directional":
        return DirectionalWeights()
    return BlockWeights(blocks, blocks)


def build(
    *,
    size=256,
    sigma=0.1,
    seed=0,
    norm="anisotropic",
    weights="scalar",
    blocks=8,
    criterion="psnr",
    image="camera",
    init=0.05,
    huber=None,
    train=None,
    validation=None,
) -> ic.Problem:
    """The bilevel TV problem (see the module docstring).

    - ``size`` (default 256), ``sigma`` (0.1), ``seed`` (0): images and noise.
    - ``norm``: ``"anisotropic"`` (default) or ``"isotropic"``; ``huber``: ε > 0 for the
      Huber-smoothed TV (x is then the image and ``objective`` is given).
    - ``weights``: ``"scalar"`` (default), ``"directional"`` (anisotropic only) or
      ``"blocks"`` (a ``blocks``×``blocks`` grid, default 8); ``init``: initial weight (0.05).
    - ``criterion``: ``"psnr"`` (default: −mean PSNR over the training images), ``"mse"`` or
      ``"sure"`` (the single training image ``image``, default camera, no truth used).
    - ``train`` / ``validation``: image names (comma-separated or a list).
    """
    data = load_data(size=size, sigma=sigma, seed=seed, train=train, validation=validation)
    return _build(data, norm, weights, blocks, criterion, image, init, huber)


def _build(data, norm, weights, blocks, criterion, image, init, huber):
    method = method_for(norm, huber)
    blocks = integer("blocks", blocks, 1)
    layout = _layout(weights, blocks)
    criterion = choice("criterion", criterion, CRITERIA)
    init = positive("init", init)
    if criterion == "sure":
        if image not in data["train"]:
            raise ValueError(
                f"image must be one of the training images {list(data['train'])}; got {image!r}."
            )
        k = data["train"].index(image)
        return tv_problem(
            data["noisy_train"][k],
            criterion=SURE(data["sigma"]),
            tv=method,
            weights=layout,
            init=init,
            name="split_bregman_tv",
        )
    crit = PSNR() if criterion == "psnr" else MSE()
    return tv_problem(
        data["noisy_train"],
        truth=data["truth_train"],
        criterion=crit,
        tv=method,
        weights=layout,
        init=init,
        name="split_bregman_tv",
    )


# --------------------------------------------------------------------------------------
# Solvers and hypergradient methods
# --------------------------------------------------------------------------------------
# Inner tolerance per state entry (‖s − T(s)‖ ≤ 1e-10·√entries): tight enough for `invcal
# check` to compare with finite differences (1e-8 left 1.4e-5 relative error at 32×32); about
# 540 iterations from a cold start at 256×256 (σ = 0.1, w = 0.05), 2 s per image.
_RMS_TOL = 1e-10
_MAX_STEPS = 20_000
_UNROLL = 3000


def _tol(problem) -> float:
    n = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(problem.x0))
    return _RMS_TOL * math.sqrt(n)


def solver_for(problem, max_steps=_MAX_STEPS):
    """The inner solver: fixed-point iteration of Split Bregman (exact TV) or FISTA on the
    gradient step of the Huber energy."""
    if problem.objective is not None:
        return ic.FISTA(tol=_tol(problem), max_steps=max_steps)
    return ic.FixedPointIteration(tol=_tol(problem), max_steps=max_steps)


def methods(problem) -> dict:
    """Every hypergradient method ``invcal check`` compares, by name."""
    if problem.objective is not None:  # Huber-TV: a smooth energy
        cg = lx.CG(rtol=1e-10, atol=1e-14, max_steps=5000)
        return {
            "huber-implicit-cg": ic.Implicit(cg),
            "huber-implicit-forward": ic.Implicit(cg, mode="forward"),
            "unrolled": ic.Unrolled(_UNROLL),
        }
    # restart 30: the Gram–Schmidt of restart 100 made it 4× slower at 128×128 (measured)
    gmres = lx.GMRES(rtol=1e-10, atol=1e-14, restart=30, max_steps=1000)
    # No forward-mode implicit here: on this singular but consistent system lineax's GMRES
    # reaches a relative residual of 3e-15 in forward mode and still reports a breakdown.
    return {
        "implicit": ic.Implicit(gmres, system="fixed_point"),
        "implicit-neumann": ic.Implicit(ic.NeumannSeries(_UNROLL, rtol=1e-9), system="fixed_point"),
        "unrolled": ic.Unrolled(_UNROLL),
        "truncated-100": ic.Truncated(num_steps=_UNROLL, k=100),
    }


def method_solvers(problem) -> dict:
    """The unrolled methods run (and finite differences solve with) at most their steps."""
    short = solver_for(problem, _UNROLL)
    return {"unrolled": short, "truncated-100": short}


def denoise(noisy, theta, *, norm="anisotropic", layout=None, tol=1e-5, max_steps=2000):
    """The TV-denoised images (n, H, W) for θ (a dict {"weight": …}), by Split Bregman."""
    noisy = jnp.asarray(noisy)
    layout = ScalarWeight() if layout is None else layout
    method = method_for(norm)
    w = layout.expand(jnp.asarray(theta["weight"]), noisy.shape[-2:])

    def one(f):
        return split_bregman(f, w, method, tol=tol, max_steps=max_steps).u

    return jnp.stack([one(f) for f in noisy])


# --------------------------------------------------------------------------------------
# Figures for the report
# --------------------------------------------------------------------------------------
def _extra_report(data, options, layout):
    norm = options.get("norm", "anisotropic")

    def extra(result, outdir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figures = []
        theta0 = {"weight": np.asarray(result.history[0]["theta"]["weight"])}
        learned = {"weight": np.asarray(result.theta["weight"])}
        # 1. noisy / hand-tuned (the initial weight) / learned / truth on a validation image
        truth, noisy = data["truth_val"][0], data["noisy_val"][0]
        hand = np.asarray(denoise(noisy[None], theta0, norm=norm, layout=layout)[0])
        best = np.asarray(denoise(noisy[None], learned, norm=norm, layout=layout)[0])
        panels = [
            ("noisy", noisy),
            ("hand-tuned (initial weight)", hand),
            ("learned", best),
            ("truth", truth),
        ]
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.9), layout="constrained")
        for ax, (title, img) in zip(axes, panels, strict=True):
            ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            extra_t = "" if title == "truth" else f"\nPSNR {float(psnr(img, truth)):.2f} dB"
            ax.set_title(title + extra_t, fontsize=9)
            ax.axis("off")
        fig.savefig(outdir / "tv_images.png", dpi=110)
        plt.close(fig)
        figures.append(
            (
                f"Validation image {data['validation'][0]} (σ = {data['sigma']}): noisy, "
                "hand-tuned (initial weight), learned and truth, with PSNR.",
                "tv_images.png",
            )
        )
        # 2. training PSNR against the weight, with the trajectory (scalar weight only)
        if isinstance(layout, ScalarWeight):
            ws = np.array([row["theta"]["weight"] for row in result.history], dtype=float)
            values = np.array([row["value"] for row in result.history], dtype=float)
            lo, hi = min(ws.min(), 0.01), max(ws.max(), 0.5)
            grid = np.geomspace(lo, hi, 12)
            curve = [
                float(
                    np.mean(
                        psnr(
                            denoise(data["noisy_train"], {"weight": w}, norm=norm),
                            data["truth_train"],
                        )
                    )
                )
                for w in grid
            ]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.semilogx(grid, curve, "-", color="0.4", label="mean training PSNR")
            if options.get("criterion", "psnr") == "psnr":
                ax.plot(ws, -values, "o-", ms=3, color="C3", label="hypergradient trajectory")
            else:
                ax.plot(
                    ws,
                    np.interp(np.log(ws), np.log(grid), curve),
                    "o-",
                    ms=3,
                    color="C3",
                    label="trajectory",
                )
            ax.set_xlabel("TV weight w")
            ax.set_ylabel("PSNR [dB]")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(outdir / "tv_psnr_curve.png", dpi=110)
            plt.close(fig)
            figures.append(
                (
                    "Mean training PSNR against the TV weight, and the outer iterates.",
                    "tv_psnr_curve.png",
                )
            )
        # 3. the map of learned weights (block layout)
        if isinstance(layout, BlockWeights):
            wmap = np.asarray(layout.expand(jnp.asarray(learned["weight"]), truth.shape))
            fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
            axes[0].imshow(truth, cmap="gray")
            axes[0].set_title("validation truth", fontsize=9)
            im = axes[1].imshow(wmap, cmap="viridis")
            axes[1].set_title("learned TV weights", fontsize=9)
            for ax in axes:
                ax.axis("off")
            fig.colorbar(im, ax=axes[1], fraction=0.046)
            fig.tight_layout()
            fig.savefig(outdir / "tv_weight_map.png", dpi=110)
            plt.close(fig)
            figures.append(("The learned spatially varying TV weights.", "tv_weight_map.png"))
        return figures

    return extra


def setup(**options) -> Setup:
    """TV denoising of scikit-image photos by Split Bregman (Goldstein & Osher 2009): learn w.

    ``options`` are passed to :func:`build` (``size``, ``sigma``, ``seed``, ``norm``,
    ``weights``, ``blocks``, ``criterion``, ``image``, ``init``, ``huber``, ``train``,
    ``validation``). Defaults: 256×256, σ = 0.1, anisotropic TV, one scalar weight,
    −mean PSNR over the five training images; fixed-point iteration of Split Bregman,
    implicit differentiation with GMRES, the secant search on log w (Adam for directional or
    block weights).
    """
    known = list(inspect.signature(build).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"split_bregman_tv got unknown option(s) {unknown}; known: {known}.")
    data_opts = {
        k: options[k] for k in ("size", "sigma", "seed", "train", "validation") if k in options
    }
    data = load_data(**data_opts)
    problem = _build(
        data,
        options.get("norm", "anisotropic"),
        options.get("weights", "scalar"),
        options.get("blocks", 8),
        options.get("criterion", "psnr"),
        options.get("image", "camera"),
        options.get("init", 0.05),
        options.get("huber"),
    )
    blocks = integer("blocks", options.get("blocks", 8), 1)
    layout = _layout(options.get("weights", "scalar"), blocks)
    all_methods = methods(problem)
    default = next(iter(all_methods.values()))
    scalar = isinstance(layout, ScalarWeight)
    return Setup(
        problem=problem,
        solver=solver_for(problem),
        method=default,
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=all_methods,
        method_solvers=method_solvers(problem),
        # One weight: the secant search on dE/dlog w (stops once bracketed to 0.1%); Adam
        # oscillated around the optimum (benchmarks/tv_vs_skimage.py). Several: Adam.
        optimizer="secant" if scalar else "adam",
        learning_rate=0.1 if scalar else 0.05,
        steps=30 if scalar else 60,
        grid={"weight": np.geomspace(0.01, 0.5, 11)} if scalar else {},
        extra_report=_extra_report(data, options, layout),
    )
