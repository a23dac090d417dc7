"""``invcal.imaging.reconstruct``: what choosing λ per image costs, and what it gives.

    python benchmarks/reconstruct.py [--quick] [--repeats 3] [--only-wavelets]
                                     [--out benchmarks/results/reconstruct.json]

JAX's default configuration (float32), this CPU, one process, one thread for BLAS/OpenMP and
for XLA's CPU pool, the process pinned to one core (``benchmarks/one_core.py``;
``INVCAL_BENCH_THREADS=default`` leaves XLA's pool and the affinity as a user gets them);
timings are medians of ``--repeats`` calls, interleaved with their peers' so that both see
the same machine load; the load average is recorded (the machine is shared: compare the
figures of one run, taken side by side).

0. ``solve_vs_skimage`` — target 2: one fixed-weight 512×512 anisotropic solve,
   ``denoise_tv(f, w, isotropic=False)`` against ``skimage.restoration.denoise_tv_bregman(f,
   1/w, isotropic=False)`` at both defaults (tol 1e-4 × range against eps 1e-3), and
   ``split_bregman`` against it at the same stopping rule; interleaved, best and median.
1. ``denoise_tv_auto`` — target 1: ``denoise_tv(f, weight="auto", sigma=σ)`` on 512×512
   camera + N(0, 0.1²) against one ``denoise_tv(f, w)`` at the oracle weight (the best of a
   21-point log grid σ/4–4σ scored by that same solve), interleaved; the previous default
   search (100-iteration estimators, two probes, grid then Brent) in the same run; and the
   fast schedule's accuracy on other images and noise levels.
2. ``denoise`` — ``reconstruct(f)`` (SURE, σ estimated) on the same image, against one
   solve at a fixed weight: ratio and PSNR gap to the 21-point oracle.
3. ``deblur`` — target 3: 256×256 camera blurred by a Gaussian PSF (width 1.5 px, periodic)
   + N(0, 0.01²): ``reconstruct(y, task="deblur", psf=…)`` (SURE, σ estimated) against
   ``skimage.restoration.unsupervised_wiener`` (Orieux, Giovannelli & Rodet 2010: a Gibbs
   sampler for the Wiener filter's hyperparameters; same PSF, its default settings, seeded):
   PSNR and wall time, interleaved. The oracle of a 21-point λ grid is reported too, and
   the same call with deblurring's former penalty ρ = 2.
4. ``deblur_cases`` — ten gray 256×256 photographs (camera, chelsea, astronaut, coffee,
   moon; blur 0.7–3 px, noise 0.002–0.1), deblurred with λ by SURE (σ estimated), with the
   penalty ρ = λ/σ and with the former ρ = 2 (same run): PSNR, SSIM, the gap to the oracle
   of the λ evaluated and ¼–4× λ, evaluations, seconds; chelsea (1.5 px, 0.005) is the case
   that ran away with ρ = 2.
5. ``color`` — RGB denoising (astronaut and coffee at 256×256, chelsea 300×451; σ 0.05–0.1):
   per-channel TV against vectorial TV, each at its own SURE λ: PSNR, SSIM, oracle gap,
   seconds.
6. ``wavelets`` (``--only-wavelets``, run on its own; needs ``pip install jaxwavelets``,
   which is no dependency of invcal) — the hand-written periodic db4 against the package's
   periodized db4: orthonormality, forward + inverse time, and the elastic-net deblur with
   each.

7. ``color_tasks`` (``--only-color``, run on its own, written to
   ``benchmarks/results/reconstruct_color.json``) — per-channel against vectorial TV over
   tasks: 256×256 centre crops of eight RGB images (astronaut, chelsea, coffee, rocket,
   immunohistochemistry, hubble_deep_field, retina, colorwheel), denoised (σ 0.05, 0.1),
   deblurred (Gaussian 1.5 px, noise 0.01) and inpainted (60% kept, σ 0.03), each coupling
   at its own SURE λ (σ estimated): PSNR, SSIM, the oracle gap, evaluations and seconds; the
   evidence for vectorial TV as ``reconstruct``'s default for colour images.

8. ``unseen`` (``--only-unseen``, run on its own, written to
   ``benchmarks/results/reconstruct_unseen.json``) — issue 20's closing measurement: the
   ``invcal reconstruct`` command itself (every default: SURE, σ estimated, vectorial TV for
   colour; ``--reference`` the clean image) on photographs no issue used (stereo_motorcycle's
   left view, grass and gravel as 256×256 centre crops, microaneurysms 102×102), denoised (σ
   0.05, 0.1), deblurred (``--blur-sigma 1.5``, noise 0.01) and inpainted (60% kept, σ 0.03):
   PSNR at the chosen λ against the oracle λ of the command's grid; and the same with
   ``--sigma`` the true noise level, which separates the σ estimate's share of a gap from
   SURE's.

``--quick``: 256×256 denoising, 128×128 deblurring, 9-point grids, two deblurring cases and
one colour case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One thread for every library and the process pinned to one core, set before numpy and jax
# load (benchmarks/one_core.py; INVCAL_BENCH_THREADS=default leaves XLA's pool as a user gets it)
import one_core  # noqa: E402

THREADS = one_core.THREADS
thread_settings = one_core.record

REPEATS = 3  # timed calls per figure (medians; --repeats)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402
from skimage.util import img_as_float  # noqa: E402

import invcal.imaging as im  # noqa: E402
from invcal.imaging.reconstruct_inputs import as_channels, gaussian_psf  # noqa: E402
from invcal.imaging.reconstruct_model import _Model  # noqa: E402


def _psnr(u, ref):
    return 10 * math.log10(1.0 / float(np.mean((np.asarray(u, float) - ref) ** 2)))


def _camera(n):
    img = img_as_float(data.camera())
    return resize(img, (n, n), anti_aliasing=True) if img.shape[0] != n else img


def _warm(fn, repeats=None):
    repeats = REPEATS if repeats is None else repeats
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, first, statistics.median(times)


def _grid(model, ref, lams):
    return [_psnr(model.solve(lam)[0], ref) for lam in lams]


def denoise(n, points):
    clean = _camera(n)
    sigma = 0.1
    noisy = (clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)).astype(
        np.float32
    )
    _, first, warm = _warm(lambda: im.reconstruct(noisy))
    rec = im.reconstruct(noisy, reference=clean)  # the PSNR (the reference's work untimed)
    model = _Model(
        "denoise",
        "tv",
        jnp.asarray(as_channels(noisy)),
        psf=None,
        mask=None,
        num_steps=100,
        tol=1e-4,
        max_steps=300,
        sigma=sigma,
    )
    lams = sigma * np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
    scores = _grid(model, clean[None], lams)
    k = int(np.argmax(scores))
    w = float(lams[k])
    _, fixed_first, fixed = _warm(lambda: jax.block_until_ready(model.solve(w)[0]))
    return {
        "size": n,
        "sigma": sigma,
        "auto": {
            "lambda": rec.lam,
            "sigma_hat": rec.sigma,
            "psnr": rec.psnr,
            "evaluations": rec.details["evaluations"],
            "seconds_first": first,
            "seconds": warm,
            "timings": rec.timings,
        },
        "fixed": {"lambda": w, "seconds_first": fixed_first, "seconds": fixed},
        "oracle": {"lambda": w, "psnr": scores[k], "grid": [lams.tolist(), scores]},
        "ratio": warm / fixed,
        "gap_db": scores[k] - rec.psnr,
        "input_psnr": _psnr(noisy, clean),
    }


def _interleaved(fns, repeats):
    """Wall times of each function, called in turn ``repeats`` times (after one call each
    that compiles), so that all see the same machine load: {name: (min, median, first)}."""
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {n: (min(t), statistics.median(t), first[n]) for n, t in times.items()}


def denoise_tv_auto(n, points, before=True):
    """Target 1: ``denoise_tv(f, weight="auto", sigma=σ)`` against one ``denoise_tv(f, w)``
    at the oracle weight w (the best of a ``points``-point log grid from σ/4 to 4σ, every
    point scored by that same solve), interleaved; and the previous default (100-iteration
    estimators, two probes, a grid then Brent: ``_sure_weight(fast=False)`` and the same
    final solve) for the accuracy and time before."""
    from invcal.imaging.denoise import _sure_weight
    from invcal.imaging.tv import Isotropic, SplitBregman

    clean = _camera(n)
    sigma = 0.1
    noisy = (clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)).astype(
        np.float32
    )
    lams = sigma * np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
    scores = [_psnr(im.denoise_tv(noisy, float(lam)), clean) for lam in lams]
    k = int(np.argmax(scores))
    w = float(lams[k])
    load0 = os.getloadavg()
    t = _interleaved(
        {
            "auto": lambda: im.denoise_tv(noisy, sigma=sigma),
            "fixed": lambda: im.denoise_tv(noisy, w),
        },
        repeats=REPEATS,
    )
    out, info = im.denoise_tv(noisy, sigma=sigma, return_info=True)
    row = {
        "size": n,
        "sigma": sigma,
        "dtype": "float32",
        "auto": {
            "weight": info.weight,
            "psnr": _psnr(out, clean),
            "evaluations": len(info.search),
            "estimator_steps": info.estimator_steps,
            "probes": info.probes,
            "final_steps": info.num_steps,
            "seconds": t["auto"][1],
            "seconds_min": t["auto"][0],
            "seconds_first": t["auto"][2],
        },
        "fixed": {"weight": w, "seconds": t["fixed"][1], "seconds_min": t["fixed"][0]},
        "oracle": {"weight": w, "psnr": scores[k], "grid": [lams.tolist(), scores]},
        "ratio": t["auto"][1] / t["fixed"][1],
        "ratio_min": t["auto"][0] / t["fixed"][0],
        "gap_db": scores[k] - _psnr(out, clean),
        "loadavg": [load0, os.getloadavg()],
    }
    if before:
        fj = jnp.asarray(noisy)
        method = SplitBregman(norm=Isotropic())

        def previous():
            wb, _, rows, _ = _sure_weight(fj, sigma, method, 100, 0, 2, fast=False)
            return im.denoise_tv(noisy, wb), wb, rows

        previous()
        t0 = time.perf_counter()
        u_b, w_b, rows_b = previous()
        t_b = time.perf_counter() - t0
        t_fix = _interleaved({"fixed": lambda: im.denoise_tv(noisy, w)}, repeats=REPEATS)["fixed"][
            1
        ]
        row["before"] = {
            "config": "num_steps=100, probes=2, grid (0.71, 1, 1.41, 2)σ then Brent",
            "weight": w_b,
            "psnr": _psnr(u_b, clean),
            "gap_db": scores[k] - _psnr(u_b, clean),
            "evaluations": len(rows_b),
            "seconds": t_b,
            "fixed_seconds": t_fix,
            "ratio": t_b / t_fix,
        }
    return row


def denoise_tv_accuracy(cases, points):
    """The fast schedule's accuracy on other images and noise levels (float32, σ known): the
    PSNR of ``denoise_tv(f, sigma=σ)`` against the best of a ``points``-point log grid of
    weights from σ/4 to 4σ, each scored by ``denoise_tv(f, w)``; seconds of one auto call
    (compiled) and of one solve at the oracle weight, not interleaved (indicative only)."""
    rows = []
    for name, size, sigma in cases:
        clean = im.load_image(name, size)
        noisy = im.add_noise(clean, sigma, seed=0).astype(np.float32)
        lams = sigma * np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
        scores = [_psnr(im.denoise_tv(noisy, float(lam)), clean) for lam in lams]
        k = int(np.argmax(scores))
        im.denoise_tv(noisy, sigma=sigma)
        t0 = time.perf_counter()
        out, info = im.denoise_tv(noisy, sigma=sigma, return_info=True)
        t_auto = time.perf_counter() - t0
        t0 = time.perf_counter()
        im.denoise_tv(noisy, float(lams[k]))
        t_fixed = time.perf_counter() - t0
        rows.append(
            {
                "image": name,
                "shape": list(noisy.shape),
                "sigma": sigma,
                "weight": info.weight,
                "oracle_weight": float(lams[k]),
                "gap_db": scores[k] - _psnr(out, clean),
                "evaluations": len(info.search),
                "seconds": t_auto,
                "fixed_seconds": t_fixed,
            }
        )
        r = rows[-1]
        print(
            f"  {name} {r['shape']} σ={sigma}: w/σ={r['weight'] / sigma:.3f} (oracle "
            f"{r['oracle_weight'] / sigma:.3f}), gap {r['gap_db']:.3f} dB, "
            f"{r['evaluations']} evaluations, {t_auto:.2f} s vs one solve {t_fixed:.3f} s"
        )
    return rows


def solve_vs_skimage(n, repeats=None):
    """Target 2: one fixed-weight anisotropic solve, ``denoise_tv(f, w, isotropic=False)``
    against ``denoise_tv_bregman(f, 1/w, isotropic=False)``, both at their defaults, and
    ``split_bregman`` against it at the same stopping rule (RMS change below eps = 1e-3 and
    1e-4); 512×512 camera + N(0, 0.1²) float32, w = 0.063 (the PSNR-best anisotropic weight
    of tv_vs_skimage.py); interleaved, best and median of ``repeats``."""
    repeats = REPEATS if repeats is None else repeats
    from skimage.restoration import denoise_tv_bregman

    from invcal.imaging.tv import Anisotropic, SplitBregman

    clean = _camera(n)
    f = (clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)).astype(np.float32)
    fj = jnp.asarray(f)
    w = 0.063
    method = SplitBregman(norm=Anisotropic())
    fns = {
        "denoise_tv default": lambda: im.denoise_tv(f, w, isotropic=False),
        "skimage default": lambda: denoise_tv_bregman(f, weight=1 / w, isotropic=False),
    }
    for eps in (1e-3, 1e-4):
        fns[f"split_bregman tol={eps:g}"] = lambda eps=eps: split_bregman_u(fj, w, method, eps)
        fns[f"skimage eps={eps:g}"] = lambda eps=eps: denoise_tv_bregman(
            f, weight=1 / w, isotropic=False, eps=eps
        )
    load0 = os.getloadavg()
    t = _interleaved(fns, repeats)
    rows = {
        name: {"seconds_min": v[0], "seconds_median": v[1], "psnr": _psnr(fns[name](), clean)}
        for name, v in t.items()
    }
    ratios = {
        "default": t["denoise_tv default"][0] / t["skimage default"][0],
        "default_median": t["denoise_tv default"][1] / t["skimage default"][1],
    }
    for eps in (1e-3, 1e-4):
        a, b = t[f"split_bregman tol={eps:g}"], t[f"skimage eps={eps:g}"]
        ratios[f"eps={eps:g}"] = a[0] / b[0]
        ratios[f"eps={eps:g}_median"] = a[1] / b[1]
    return {
        "size": n,
        "weight": w,
        "rows": rows,
        "ratios": ratios,
        "loadavg": [load0, os.getloadavg()],
    }


def split_bregman_u(f, w, method, tol):
    return im.split_bregman(f, w, method, tol=tol, max_steps=100).u


def _blurred(clean, blur_sigma, noise, seed):
    """(y, psf): ``clean`` (H, W) or (H, W, 3) blurred by a Gaussian PSF (periodic) plus
    N(0, noise²), float32."""
    psf = gaussian_psf(blur_sigma, clean.shape[:2])
    blur = im.Blur.from_kernel(psf, clean.shape[:2])

    def one(c):
        return np.asarray(blur.mv(jnp.asarray(c, jnp.float32)))

    y = one(clean) if clean.ndim == 2 else np.stack([one(clean[..., k]) for k in range(3)], -1)
    y = y + noise * np.random.default_rng(seed).standard_normal(y.shape)
    return y.astype(np.float32), psf


def _former_penalty(fn):
    """``fn()`` with deblurring's former penalty ρ = 2 (before deblur_penalty)."""
    import invcal.imaging.reconstruct_model as rm

    keep = rm.deblur_penalty
    rm.deblur_penalty = lambda lam, sigma: 2.0
    try:
        return fn()
    finally:
        rm.deblur_penalty = keep


def deblur(n, points):
    from skimage.restoration import unsupervised_wiener

    clean = _camera(n)
    noise = 0.01
    y, psf = _blurred(clean, 1.5, noise, seed=1)
    rng = np.random.default_rng(2)
    y64 = y.astype(np.float64)
    load0 = os.getloadavg()
    t = _interleaved(
        {
            "invcal": lambda: im.reconstruct(y, task="deblur", psf=psf).image,
            "wiener": lambda: unsupervised_wiener(y64, psf, clip=False, rng=rng)[0],
        },
        repeats=REPEATS,
    )
    rec = im.reconstruct(y, task="deblur", psf=psf, reference=clean)
    wiener = unsupervised_wiener(y64, psf, clip=False, rng=rng)[0]
    first, warm = t["invcal"][2], t["invcal"][1]
    w_first, w_warm = t["wiener"][2], t["wiener"][1]
    model = _Model(
        "deblur",
        "tv",
        jnp.asarray(as_channels(y)),
        psf=psf,
        mask=None,
        num_steps=100,
        tol=1e-4,
        max_steps=1000,
        sigma=rec.sigma,
    )
    lams = rec.lam * np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
    scores = _grid(model, clean[None], lams)
    k = int(np.argmax(scores))
    before = _former_penalty(lambda: _deblur_row(y, psf, clean))
    return {
        "size": n,
        "blur_sigma": 1.5,
        "noise": noise,
        "auto": {
            "lambda": rec.lam,
            "sigma_hat": rec.sigma,
            "psnr": rec.psnr,
            "ssim": rec.ssim,
            "evaluations": rec.details["evaluations"],
            "schedule": rec.details["schedule"],
            "estimator_steps": rec.details["num_steps_estimator"],
            "probes": rec.details["probes"],
            "final_steps": rec.num_steps,
            "seconds_min": t["invcal"][0],
            "converged": rec.converged,
            "seconds_first": first,
            "seconds": warm,
        },
        "unsupervised_wiener": {
            "psnr": _psnr(wiener, clean),
            "seconds_min": t["wiener"][0],
            "seconds_first": w_first,
            "seconds": w_warm,
        },
        "oracle": {"lambda": float(lams[k]), "psnr": scores[k]},
        "before_penalty_2": before,
        "input_psnr": _psnr(y, clean),
        "ratio": warm / w_warm,
        "ratio_min": t["invcal"][0] / t["wiener"][0],
        "loadavg": [load0, os.getloadavg()],
    }


def _deblur_row(y, psf, clean, **kw):
    """One automatic deblur against its oracle (rec.oracle: the λ evaluated and ¼–4× λ):
    PSNR, SSIM, evaluations, seconds (second call), or the NoMinimumError's text."""
    try:
        im.reconstruct(y, task="deblur", psf=psf, **kw)  # compiles
        t0 = time.perf_counter()
        rec = im.reconstruct(y, task="deblur", psf=psf, reference=clean, **kw)
        seconds = time.perf_counter() - t0 - rec.timings.get("reference", 0.0)
    except im.NoMinimumError as e:
        return {"error": str(e)}
    return {
        "lambda": rec.lam,
        "lambda_over_sigma": rec.lam / rec.sigma,
        "psnr": rec.psnr,
        "ssim": rec.ssim,
        "input_psnr": rec.psnr_input,
        "oracle_lambda": rec.oracle["lambda"],
        "oracle_psnr": rec.oracle["psnr"],
        "gap_db": rec.oracle["gap_db"],
        "evaluations": rec.details["evaluations"],
        "final_steps": rec.num_steps,
        "converged": rec.converged,
        "seconds": seconds,
    }


DEBLUR_CASES = [
    ("camera", 1.5, 0.01),
    ("chelsea", 1.5, 0.005),  # the case that ran away with ρ = 2
    ("chelsea", 1.5, 0.02),
    ("astronaut", 1.5, 0.01),
    ("coffee", 2.5, 0.01),
    ("camera", 2.5, 0.03),
    ("moon", 1.5, 0.005),
    ("camera", 1.5, 0.05),
    ("camera", 0.7, 0.1),
    ("chelsea", 3.0, 0.002),
]


def _gray(name, n):
    from skimage.color import rgb2gray

    img = img_as_float(getattr(data, name)())
    img = rgb2gray(img) if img.ndim == 3 else img
    return resize(img, (n, n), anti_aliasing=True)


def deblur_cases(n, cases):
    """Deblurring with the penalty ρ = λ/σ against the former ρ = 2, same run: PSNR of the
    SURE λ (σ estimated), its gap to the oracle, evaluations; gray n×n photographs."""
    rows = []
    for name, blur_sigma, noise in cases:
        clean = _gray(name, n)
        y, psf = _blurred(clean, blur_sigma, noise, seed=1)
        row = {
            "image": name,
            "size": n,
            "blur_sigma": blur_sigma,
            "noise": noise,
            "now": _deblur_row(y, psf, clean),
            "penalty_2": _former_penalty(lambda y=y, psf=psf, c=clean: _deblur_row(y, psf, c)),
        }
        rows.append(row)
        cells = []
        for key in ("now", "penalty_2"):
            r = row[key]
            if "error" in r:
                cells.append(f"{key}: no minimum (NoMinimumError)")
            else:
                cells.append(
                    f"{key}: λ/σ {r['lambda_over_sigma']:.3g}, {r['psnr']:.2f} dB (oracle "
                    f"{r['oracle_psnr']:.2f}, gap {r['gap_db']:.2f}), {r['evaluations']} ev, "
                    f"{r['seconds']:.2f} s"
                )
        print(f"  {name} blur {blur_sigma} noise {noise}: " + " | ".join(cells))
    return rows


COLOR_CASES = [("astronaut", 256, 0.1), ("chelsea", None, 0.1), ("coffee", 256, 0.05)]


def color(cases):
    """RGB denoising, per-channel TV against vectorial TV, each at its own SURE λ (σ
    estimated): PSNR, SSIM, the oracle of the λ each evaluated and ¼–4× λ, seconds (second
    call, without the reference's work)."""
    rows = []
    for name, n, sigma in cases:
        img = img_as_float(getattr(data, name)())
        clean = img if n is None else resize(img, (n, n), anti_aliasing=True)
        noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
        noisy = noisy.astype(np.float32)
        row = {"image": name, "shape": list(clean.shape), "sigma": sigma}
        for mode in ("per-channel", "vectorial"):
            im.reconstruct(noisy, color=mode)  # compiles
            t0 = time.perf_counter()
            rec = im.reconstruct(noisy, color=mode, reference=clean)
            seconds = time.perf_counter() - t0 - rec.timings["reference"]
            row[mode] = {
                "lambda": rec.lam,
                "psnr": rec.psnr,
                "ssim": rec.ssim,
                "oracle_psnr": rec.oracle["psnr"],
                "gap_db": rec.oracle["gap_db"],
                "evaluations": rec.details["evaluations"],
                "seconds": seconds,
            }
        row["vectorial_minus_per_channel_db"] = (
            row["vectorial"]["psnr"] - row["per-channel"]["psnr"]
        )
        row["input_psnr"] = rec.psnr_input
        rows.append(row)
        a, b = row["per-channel"], row["vectorial"]
        print(
            f"  {name} {row['shape']} σ={sigma}: per-channel {a['psnr']:.2f} dB (SSIM "
            f"{a['ssim']:.4f}, gap {a['gap_db']:.2f}, {a['seconds']:.2f} s), vectorial "
            f"{b['psnr']:.2f} dB (SSIM {b['ssim']:.4f}, gap {b['gap_db']:.2f}, "
            f"{b['seconds']:.2f} s): {row['vectorial_minus_per_channel_db']:+.2f} dB"
        )
    return rows


#: RGB photographs for the colour comparison over tasks: the three of ``color`` and five
#: more of scikit-image's RGB images (256×256 centre crops, native texture, no resizing)
COLOR_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)
#: (task, settings): denoising at two noise levels, deblurring (Gaussian PSF 1.5 px,
#: periodic) and inpainting (60% of the pixels kept, one mask for the three channels)
COLOR_TASKS = (
    ("denoise", {"noise": 0.05}),
    ("denoise", {"noise": 0.1}),
    ("deblur", {"blur_sigma": 1.5, "noise": 0.01}),
    ("inpaint", {"keep": 0.6, "noise": 0.03}),
)


def _crop(name, n):
    img = img_as_float(getattr(data, name)())[..., :3]
    h, w = img.shape[:2]
    i, j = (h - n) // 2, (w - n) // 2
    return np.ascontiguousarray(img[i : i + n, j : j + n])


def color_tasks(n, images, tasks):
    """Per-channel against vectorial TV over tasks and images, each at its own SURE λ (σ
    estimated): PSNR, SSIM, the oracle gap (λ evaluated and ¼–4× λ) and seconds of one call
    (the first call of each task and mode compiles and is not timed; the reference's extra
    work is subtracted), the two modes interleaved image by image."""
    rows = []
    for task, settings in tasks:
        warmed = set()
        for name in images:
            clean = _crop(name, n)
            rng = np.random.default_rng(1)
            kw = {"task": task}
            if task == "deblur":
                y, psf = _blurred(clean, settings["blur_sigma"], settings["noise"], seed=1)
                kw["psf"] = psf
            else:
                y = clean + settings["noise"] * rng.standard_normal(clean.shape)
                y = y.astype(np.float32)
                if task == "inpaint":
                    mask = rng.random(clean.shape[:2]) < settings["keep"]
                    y = np.where(mask[..., None], y, 0.0).astype(np.float32)
                    kw["mask"] = mask
            row = {"task": task, **settings, "image": name, "shape": list(clean.shape)}
            for mode in ("per-channel", "vectorial"):
                if mode not in warmed:
                    im.reconstruct(y, color=mode, **kw)
                    warmed.add(mode)
                t0 = time.perf_counter()
                try:
                    rec = im.reconstruct(y, color=mode, reference=clean, **kw)
                except im.NoMinimumError as e:
                    row[mode] = {"error": str(e)}
                    continue
                seconds = time.perf_counter() - t0 - rec.timings["reference"]
                row[mode] = {
                    "lambda": rec.lam,
                    "sigma": rec.sigma,
                    "psnr": rec.psnr,
                    "ssim": rec.ssim,
                    "gap_db": rec.oracle["gap_db"],
                    "evaluations": rec.details["evaluations"],
                    "seconds": seconds,
                }
                row["input_psnr"] = rec.psnr_input
            a, b = row["per-channel"], row["vectorial"]
            if "error" in a or "error" in b:
                print(f"  {task} {settings} {name}: per-channel {a} | vectorial {b}")
            else:
                row["gain_db"] = b["psnr"] - a["psnr"]
                row["gain_ssim"] = b["ssim"] - a["ssim"]
                row["time_ratio"] = b["seconds"] / a["seconds"]
                print(
                    f"  {task:<8}{str(settings):<40}{name:<22} per-channel {a['psnr']:6.2f} dB "
                    f"({a['ssim']:.4f}, gap {a['gap_db']:.2f}, {a['seconds']:5.2f} s) vectorial "
                    f"{b['psnr']:6.2f} dB ({b['ssim']:.4f}, gap {b['gap_db']:.2f}, "
                    f"{b['seconds']:5.2f} s): {row['gain_db']:+.2f} dB, time ×"
                    f"{row['time_ratio']:.2f}"
                )
            rows.append(row)
    summary = {}
    for task, settings in tasks:
        key = f"{task} {settings}"
        sel = [
            r
            for r in rows
            if r["task"] == task
            and "gain_db" in r
            and all(r.get(k) == v for k, v in settings.items())
        ]
        if sel:
            gains = [r["gain_db"] for r in sel]
            summary[key] = {
                "cases": len(sel),
                "gain_db_min": min(gains),
                "gain_db_median": statistics.median(gains),
                "gain_db_max": max(gains),
                "ssim_gain_median": statistics.median(r["gain_ssim"] for r in sel),
                "time_ratio_median": statistics.median(r["time_ratio"] for r in sel),
                "vectorial_better": sum(g > 0 for g in gains),
            }
            print(f"  {key}: {summary[key]}")
    return {"size": n, "rows": rows, "summary": summary}


#: scikit-image photographs that no issue, test or other benchmark used before issue 20's
#: closing measurement (256×256 centre crops; microaneurysms is 102×102 whole)
UNSEEN_IMAGES = (
    ("stereo_motorcycle", 256),
    ("grass", 256),
    ("gravel", 256),
    ("microaneurysms", None),
)
#: (task, settings, command-line options)
UNSEEN_TASKS = (
    ("denoise", {"noise": 0.05}, []),
    ("denoise", {"noise": 0.1}, []),
    ("deblur", {"blur_sigma": 1.5, "noise": 0.01}, ["--blur-sigma", "1.5"]),
    ("inpaint", {"keep": 0.6, "noise": 0.03}, []),
)


def _unseen(name, n):
    img = getattr(data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disp)
    img = img_as_float(img)
    if n is None:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    i, j = (h - n) // 2, (w - n) // 2
    return np.ascontiguousarray(img[i : i + n, j : j + n])


def unseen(images, tasks, folder):
    """Issue 20's closing measurement: ``invcal reconstruct`` (the command, in this process,
    float32, every default: SURE, σ estimated, vectorial TV for colour) on photographs no
    issue used, with noise, blur or missing pixels added, and ``--reference`` the clean
    image: the PSNR at the chosen λ against the oracle λ of the command's own grid (the λ the
    search evaluated and 13 log-spaced multiples ¼–4× the chosen λ, each the final solve)."""
    from invcal.cli import main as invcal_main

    rows = []
    folder = Path(folder)
    for task, settings, options in tasks:
        for name, n in images:
            clean = _unseen(name, n)
            rng = np.random.default_rng(2)
            case = folder / f"{task}-{settings['noise']}-{name}"
            case.mkdir(parents=True, exist_ok=True)
            argv = ["reconstruct", str(case / "y.npy"), "--task", task, *options]
            if task == "deblur":
                y, _ = _blurred(clean, settings["blur_sigma"], settings["noise"], seed=2)
            else:
                y = (clean + settings["noise"] * rng.standard_normal(clean.shape)).astype(
                    np.float32
                )
                if task == "inpaint":
                    mask = rng.random(clean.shape[:2]) < settings["keep"]
                    y = np.where(mask[..., None] if y.ndim == 3 else mask, y, 0.0)
                    y = y.astype(np.float32)
                    np.save(case / "mask.npy", mask.astype(np.uint8))
                    argv += ["--mask", str(case / "mask.npy")]
            np.save(case / "y.npy", y)
            np.save(case / "clean.npy", clean)
            argv += ["--reference", str(case / "clean.npy"), "--out", str(case / "run")]
            argv += ["--overwrite", "--no-progress"]
            t0 = time.perf_counter()
            status = invcal_main(argv)
            seconds = time.perf_counter() - t0
            row = {"task": task, **settings, "image": name, "shape": list(clean.shape)}
            row["status"] = status
            # the same with the true σ (--sigma): how much of a gap is the σ estimate's
            known_argv = [*argv[:-4], "--out", str(case / "run_true_sigma"), *argv[-2:]]
            known = invcal_main([*known_argv, "--sigma", str(settings["noise"])])
            if known == 0:
                r = json.loads((case / "run_true_sigma" / "results.json").read_text())
                row["true_sigma"] = {
                    "lambda": r["lambda"],
                    "psnr": r["psnr"],
                    "oracle_psnr": r["oracle"]["psnr"],
                    "gap_db": r["oracle"]["gap_db"],
                }
            if status == 0:
                r = json.loads((case / "run" / "results.json").read_text())
                o = r["oracle"]
                row["lambda"] = r["lambda"]
                row.update(
                    sigma=r["sigma"],
                    color=r.get("color"),
                    psnr=r["psnr"],
                    psnr_input=r["psnr_input"],
                    ssim=r["ssim"],
                    oracle_lambda=o["lambda"],
                    oracle_psnr=o["psnr"],
                    gap_db=o["gap_db"],
                    oracle_points=len(o["curve"]),
                    evaluations=r["evaluations"],
                    seconds_command=seconds,
                    seconds_reconstruct=r["timings"]["total"],
                )
                print(
                    f"  {task:<8}{str(settings):<40}{name:<18} λ {r['lambda']:.4g} PSNR "
                    f"{r['psnr']:6.2f} dB (input {r['psnr_input']:.2f}), oracle λ "
                    f"{o['lambda']:.4g} {o['psnr']:6.2f} dB: gap {o['gap_db']:.3f} dB, "
                    f"{r['evaluations']} evaluations, {r['timings']['total']:.1f} s; "
                    f"σ estimated {r['sigma']:.4g} (true {settings['noise']:g}); with the true σ "
                    + (
                        f"gap {row['true_sigma']['gap_db']:.3f} dB"
                        if "true_sigma" in row
                        else f"exit status {known}"
                    )
                )
            else:
                print(f"  {task} {settings} {name}: exit status {status}")
            rows.append(row)
    summary = {}
    for task, settings, _ in tasks:
        key = f"{task} {settings}"
        sel = [
            r
            for r in rows
            if r["task"] == task
            and r["status"] == 0
            and all(r[k] == v for k, v in settings.items())
        ]
        gaps = [r["gap_db"] for r in sel]
        known = [r["true_sigma"]["gap_db"] for r in sel if "true_sigma" in r]
        if gaps:
            summary[key] = {
                "cases": len(gaps),
                "gap_db_max": max(gaps),
                "gap_db_mean": float(np.mean(gaps)),
                "true_sigma_gap_db_max": max(known) if known else None,
            }
            print(f"  {key}: {summary[key]}")
    return {"rows": rows, "summary": summary}


class _PackageDB4:
    """jaxwavelets' periodized db4 (``wavedec2``/``waverec2``, mode "periodization") packed
    into the (H, W) layout of :class:`invcal.imaging.Wavelet` (the coarsest LL block top
    left, each level's (cH, cV, cD) around it), so that reconstruct's elastic net can run on
    it unchanged."""

    def __init__(self, name="db4", levels=4):
        import jaxwavelets as jw

        self.jw, self.name, self.levels = jw, name, levels

    def forward(self, x):
        cs = self.jw.wavedec2(x, self.name, mode="periodization", level=self.levels)
        out = cs[0]
        for c_h, c_v, c_d in cs[1:]:
            out = jnp.block([[out, c_v], [c_h, c_d]])
        return out

    def inverse(self, c):
        h, w = c.shape[-2:]
        r, s = h >> self.levels, w >> self.levels
        coeffs = [c[:r, :s]]
        for _ in range(self.levels):
            coeffs.append((c[r : 2 * r, :s], c[:r, s : 2 * s], c[r : 2 * r, s : 2 * s]))
            r, s = 2 * r, 2 * s
        return self.jw.waverec2(coeffs, self.name, mode="periodization")

    def detail_mask(self, shape):
        return im.Wavelet("db4", levels=self.levels).detail_mask(shape)


def wavelets(n):
    """invcal's hand-written periodic db4 (``invcal.imaging.Wavelet``) against the JAX
    wavelet package jaxwavelets (periodization mode; PyPI, 0.1.13; not a dependency: pip
    install jaxwavelets): orthonormality, forward + inverse of one n×n image (jit, warm,
    median of ``REPEATS``), and reconstruct's elastic-net deblur of camera n×n (blur 1.5 px,
    noise 0.01, SURE, σ estimated) with each transform: λ, PSNR, seconds; and invcal's on the
    image shifted by (k, k) pixels, k = 0…3, at the same λ (the periodized bases of the two
    sit one pixel apart: the shift alone moves the PSNR by about 0.9 dB). (jaxwt 0.1.1, the
    other JAX package, pads ('reflect', 'symmetric', 'zero'), has no periodization: its
    transform is not orthonormal, not a drop-in for the synthesis elastic net.)"""
    try:
        import jaxwavelets  # noqa: F401
    except ImportError:
        return {"skipped": "jaxwavelets is not installed (pip install jaxwavelets)"}
    import equinox as eqx

    import invcal.imaging.reconstruct_model as rm

    levels = 4
    ours, theirs = im.Wavelet("db4", levels=levels), _PackageDB4("db4", levels)
    x = jnp.asarray(_camera(n), jnp.float32)
    try:
        from importlib.metadata import version

        package = f"jaxwavelets {version('jaxwavelets')}"
    except Exception:  # installed without metadata (e.g. on PYTHONPATH)
        package = "jaxwavelets"
    row = {"size": n, "levels": levels, "package": package}
    for name, t in (("invcal", ours), ("jaxwavelets", theirs)):
        fwd = eqx.filter_jit(lambda x, t=t: t.forward(x))
        rnd = eqx.filter_jit(lambda x, t=t: t.inverse(t.forward(x)))
        c = fwd(x)
        row[name] = {
            "reconstruction_error": float(jnp.max(jnp.abs(rnd(x) - x))),
            "norm_ratio": float(jnp.linalg.norm(c) / jnp.linalg.norm(x)),
            "forward_inverse_ms": 1e3 * _warm(lambda: jax.block_until_ready(rnd(x)))[2],
        }
    y, psf = _blurred(np.asarray(x, np.float64), 1.5, 0.01, seed=1)
    clean = np.asarray(x, np.float64)
    keep = rm.Wavelet
    for name, make in (
        ("invcal", keep),
        ("jaxwavelets", lambda name, levels: _PackageDB4(name, levels)),
    ):
        rm.Wavelet = make
        try:
            kw = dict(task="deblur", psf=psf, regularizer="elastic-net")
            _, first, warm = _warm(lambda kw=kw: im.reconstruct(y, **kw))
            rec = im.reconstruct(y, reference=clean, **kw)
        finally:
            rm.Wavelet = keep
        row[name].update(
            {
                "deblur_lambda": rec.lam,
                "deblur_psnr": rec.psnr,
                "deblur_evaluations": rec.details["evaluations"],
                "deblur_final_steps": rec.num_steps,
                "deblur_seconds": warm,
                "deblur_seconds_first": first,
            }
        )
    # the two differ by where the basis sits on the pixel grid: invcal's transform of the
    # image shifted by (k, k) pixels, the final solve at invcal's λ
    lam = row["invcal"]["deblur_lambda"]
    row["invcal_shifted_psnr"] = []
    for k in range(4):
        ys, cs = np.roll(y, (k, k), (0, 1)), np.roll(clean, (k, k), (0, 1))
        model = _Model(
            "deblur",
            "elastic-net",
            jnp.asarray(as_channels(ys)),
            psf=psf,
            mask=None,
            num_steps=100,
            tol=1e-4,
            max_steps=1000,
            sigma=0.01,
        )
        row["invcal_shifted_psnr"].append([k, _psnr(model.solve(lam)[0][0], cs)])
    a, b = row["invcal"], row["jaxwavelets"]
    print(
        "  invcal's db4 on the image shifted by (k, k), same λ: "
        + ", ".join(f"k={k}: {v:.2f} dB" for k, v in row["invcal_shifted_psnr"])
    )
    print(
        f"  forward+inverse {n}²: invcal {a['forward_inverse_ms']:.2f} ms, jaxwavelets "
        f"{b['forward_inverse_ms']:.2f} ms (reconstruction errors {a['reconstruction_error']:.1e}, "
        f"{b['reconstruction_error']:.1e}; norm ratios {a['norm_ratio']:.6f}, "
        f"{b['norm_ratio']:.6f})"
    )
    print(
        f"  elastic-net deblur: invcal λ {a['deblur_lambda']:.4g} {a['deblur_psnr']:.2f} dB "
        f"{a['deblur_seconds']:.2f} s; jaxwavelets λ {b['deblur_lambda']:.4g} "
        f"{b['deblur_psnr']:.2f} dB {b['deblur_seconds']:.2f} s"
    )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/reconstruct.json")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (medians)")
    p.add_argument(
        "--only-wavelets",
        action="store_true",
        help="run only the wavelet comparison and update its entry in --out",
    )
    p.add_argument(
        "--only-color",
        action="store_true",
        help="run only the colour comparison over tasks (per-channel against vectorial TV, "
        "eight RGB photographs) and write it to benchmarks/results/reconstruct_color.json",
    )
    p.add_argument(
        "--only-unseen",
        action="store_true",
        help="run only issue 20's closing measurement (invcal reconstruct on photographs no "
        "issue used, automatic against oracle λ) and write benchmarks/results/"
        "reconstruct_unseen.json",
    )
    p.add_argument(
        "--only-solve",
        action="store_true",
        help="run only solve_vs_skimage (target 2) and update its entry in --out",
    )
    args = p.parse_args(argv)
    global REPEATS
    REPEATS = args.repeats
    sys.stdout.reconfigure(line_buffering=True)
    if args.only_solve:
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {}
        print(f"solve_vs_skimage (load {os.getloadavg()}; XLA threads: {THREADS}):")
        sv = solve_vs_skimage(256 if args.quick else 512)
        for name, r in sv["rows"].items():
            print(
                f"  {name:<26}{r['seconds_min'] * 1e3:8.1f} ms (median "
                f"{r['seconds_median'] * 1e3:.1f}), PSNR {r['psnr']:.2f} dB"
            )
        print(
            f"  ratios (best of {REPEATS}; median):",
            {k: round(v, 3) for k, v in sv["ratios"].items()},
        )
        sv["repeats"] = REPEATS
        result["solve_vs_skimage"] = sv
        out.write_text(json.dumps(result, indent=1))
        print(f"written: {out}")
        return
    if args.only_unseen:
        import tempfile

        out = Path("benchmarks/results/reconstruct_unseen.json")
        print(f"invcal reconstruct on unseen photographs (load {os.getloadavg()}):")
        images = UNSEEN_IMAGES[-1:] if args.quick else UNSEEN_IMAGES
        with tempfile.TemporaryDirectory() as tmp:
            result = unseen(images, UNSEEN_TASKS, tmp)
        result["jax"] = jax.__version__
        result["threads"] = thread_settings(omp=False)
        result["loadavg_at_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        print(f"written: {out}")
        return
    if args.only_color:
        out = Path("benchmarks/results/reconstruct_color.json")
        print(f"colour over tasks (load {os.getloadavg()}; XLA threads: {THREADS}):")
        n = 128 if args.quick else 256
        images = COLOR_IMAGES[:2] if args.quick else COLOR_IMAGES
        result = color_tasks(n, images, COLOR_TASKS)
        result["threads"] = thread_settings(omp=False)
        result["jax"] = jax.__version__
        result["loadavg_at_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        print(f"written: {out}")
        return
    if args.only_wavelets:
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {}
        print(f"wavelets (load {os.getloadavg()}; XLA threads: {THREADS}):")
        result["wavelets"] = wavelets(128 if args.quick else 256)
        result["wavelets"]["loadavg"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        print(f"written: {out}")
        return
    points = 9 if args.quick else 21
    load_at_start = os.getloadavg()
    print(f"load average at start: {load_at_start}; XLA threads: {THREADS}")
    sv = solve_vs_skimage(256 if args.quick else 512)
    print("one anisotropic solve, invcal against skimage.denoise_tv_bregman (target ≤ 0.5×):")
    for name, r in sv["rows"].items():
        print(
            f"  {name:<26}{r['seconds_min'] * 1e3:8.1f} ms (median "
            f"{r['seconds_median'] * 1e3:.1f}), PSNR {r['psnr']:.2f} dB"
        )
    print(
        f"  ratios (best of {REPEATS}; median):",
        {k: round(v, 3) for k, v in sv["ratios"].items()},
    )
    t1 = denoise_tv_auto(256 if args.quick else 512, points)
    a = t1["auto"]
    print(
        f"\ndenoise_tv(weight='auto', sigma=σ) {t1['size']}² σ={t1['sigma']}: w={a['weight']:.4g} "
        f"PSNR {a['psnr']:.2f} dB ({a['evaluations']} SURE evaluations of the "
        f"{a['estimator_steps']}-iteration estimator, {a['probes']} probe(s)); oracle "
        f"w={t1['oracle']['weight']:.4g} {t1['oracle']['psnr']:.2f} dB: gap {t1['gap_db']:.3f} dB"
    )
    print(
        f"  auto {a['seconds']:.3f} s, one fixed solve {t1['fixed']['seconds']:.3f} s (medians): "
        f"ratio {t1['ratio']:.1f}× (best-of ratio {t1['ratio_min']:.1f}×; target ≤ 10×)"
    )
    if "before" in t1:
        bf = t1["before"]
        print(
            f"  before ({bf['config']}): w={bf['weight']:.4g} gap {bf['gap_db']:.3f} dB, "
            f"{bf['evaluations']} evaluations, {bf['seconds']:.2f} s: ratio {bf['ratio']:.1f}×"
        )
    print("  other images (fast schedule, σ known):")
    cases = (
        [("camera", 384, 0.2)]
        if args.quick
        else [
            ("camera", 512, 0.05),
            ("camera", 512, 0.2),
            ("astronaut", 512, 0.1),
            ("coffee", 512, 0.1),
            ("chelsea", None, 0.2),
            ("cell", None, 0.2),
        ]
    )
    t1["other_images"] = denoise_tv_accuracy(cases, points)
    d = denoise(256 if args.quick else 512, points)
    print(
        f"denoise {d['size']}×{d['size']} σ={d['sigma']}: auto λ={d['auto']['lambda']:.4g} "
        f"PSNR {d['auto']['psnr']:.2f} dB ({d['auto']['evaluations']} SURE evaluations), "
        f"oracle λ={d['oracle']['lambda']:.4g} {d['oracle']['psnr']:.2f} dB (gap "
        f"{d['gap_db']:.3f} dB; target ≤ 0.2), input {d['input_psnr']:.2f} dB"
    )
    print(
        f"  auto {d['auto']['seconds']:.3f} s (first call {d['auto']['seconds_first']:.2f} s), "
        f"fixed-weight solve {d['fixed']['seconds']:.3f} s: ratio {d['ratio']:.1f}× "
        "(target ≤ 10×)"
    )
    b = deblur(128 if args.quick else 256, points)
    print(f"\ndeblur {b['size']}×{b['size']}, PSF σ=1.5 px, noise {b['noise']}:")
    print(f"{'method':<24}{'PSNR dB':>9}{'seconds':>9}{'first':>9}")
    print(f"{'input (blurred)':<24}{b['input_psnr']:>9.2f}")
    a, w = b["auto"], b["unsupervised_wiener"]
    print(
        f"{'invcal TV, SURE λ':<24}{a['psnr']:>9.2f}{a['seconds']:>9.3f}{a['seconds_first']:>9.2f}"
    )
    print(
        f"{'unsupervised_wiener':<24}{w['psnr']:>9.2f}{w['seconds']:>9.3f}{w['seconds_first']:>9.2f}"
    )
    print(f"{'invcal TV, oracle λ':<24}{b['oracle']['psnr']:>9.2f}")
    print(f"  ratio invcal / unsupervised_wiener: {b['ratio']:.1f}× (target ≤ 5×)")
    bp = b["before_penalty_2"]
    print(
        "  former penalty ρ = 2 (same run): "
        + (
            "no minimum"
            if "error" in bp
            else f"{bp['psnr']:.2f} dB, λ/σ {bp['lambda_over_sigma']:.3g}, {bp['seconds']:.2f} s"
        )
    )
    print(f"\ndeblurring {128 if args.quick else 256}² photographs, ρ = λ/σ against ρ = 2:")
    cases = DEBLUR_CASES[:2] if args.quick else DEBLUR_CASES
    dc = deblur_cases(128 if args.quick else 256, cases)
    print("\nRGB denoising, per-channel against vectorial TV (SURE λ, σ estimated):")
    col = color([("astronaut", 128, 0.1)] if args.quick else COLOR_CASES)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "python": sys.version.split()[0],
        },
        "quick": args.quick,
        "threads": thread_settings(),
        "repeats": REPEATS,
        "solve_vs_skimage": sv,
        "denoise_tv_auto": t1,
        "denoise": d,
        "deblur": b,
        "deblur_cases": dc,
        "color": col,
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # parts run on their own (--only-wavelets) keep their numbers from an earlier run
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **result}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
