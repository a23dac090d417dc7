"""``invcal.imaging.reconstruct``: what choosing λ per image costs, and what it gives.

    python benchmarks/reconstruct.py [--quick] [--out benchmarks/results/reconstruct.json]

JAX's default configuration (float32), this CPU, one process; the load average is recorded
(the machine is shared: compare the figures of one run, taken side by side).

0. ``solve_vs_skimage`` — target 2: one fixed-weight 512×512 anisotropic solve,
   ``denoise_tv(f, w, isotropic=False)`` against ``skimage.restoration.denoise_tv_bregman(f,
   1/w, isotropic=False)`` at both defaults (tol 1e-4 × range against eps 1e-3), and
   ``split_bregman`` against it at the same stopping rule; interleaved, best and median of 7.
1. ``denoise_tv_auto`` — target 1: ``denoise_tv(f, weight="auto", sigma=σ)`` on 512×512
   camera + N(0, 0.1²) against one ``denoise_tv(f, w)`` at the oracle weight (the best of a
   21-point log grid σ/4–4σ scored by that same solve), interleaved (medians of 5); the
   previous default search (100-iteration estimators, two probes, grid then Brent) in the
   same run; and the fast schedule's accuracy on other images and noise levels.
2. ``denoise`` — ``reconstruct(f)`` (SURE, σ estimated) on the same image, against one
   solve at a fixed weight: ratio and PSNR gap to the 21-point oracle.
3. ``deblur`` — target 3: 256×256 camera blurred by a Gaussian PSF (width 1.5 px, periodic)
   + N(0, 0.01²): ``reconstruct(y, task="deblur", psf=…)`` (SURE, σ estimated) against
   ``skimage.restoration.unsupervised_wiener`` (Orieux, Giovannelli & Rodet 2010: a Gibbs
   sampler for the Wiener filter's hyperparameters; same PSF, its default settings, seeded):
   PSNR and wall time, interleaved (medians of 5). The oracle of a 21-point λ grid is
   reported too.

``--quick``: 256×256 denoising, 128×128 deblurring, 9-point grids.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402
from skimage.transform import resize  # noqa: E402
from skimage.util import img_as_float  # noqa: E402

import invcal.imaging as im  # noqa: E402
from invcal.imaging.reconstruct_inputs import as_channels, gaussian_psf  # noqa: E402
from invcal.imaging.reconstruction import _Model  # noqa: E402


def _psnr(u, ref):
    return 10 * math.log10(1.0 / float(np.mean((np.asarray(u, float) - ref) ** 2)))


def _camera(n):
    img = img_as_float(data.camera())
    return resize(img, (n, n), anti_aliasing=True) if img.shape[0] != n else img


def _warm(fn, repeats=3):
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
    rec, first, warm = _warm(lambda: im.reconstruct(noisy, reference=clean), repeats=2)
    model = _Model(
        "denoise",
        "tv",
        jnp.asarray(as_channels(noisy)),
        psf=None,
        mask=None,
        num_steps=100,
        tol=1e-4,
        max_steps=300,
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
        repeats=5,
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
        t_fix = _interleaved({"fixed": lambda: im.denoise_tv(noisy, w)}, repeats=3)["fixed"][1]
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


def solve_vs_skimage(n, repeats=7):
    """Target 2: one fixed-weight anisotropic solve, ``denoise_tv(f, w, isotropic=False)``
    against ``denoise_tv_bregman(f, 1/w, isotropic=False)``, both at their defaults, and
    ``split_bregman`` against it at the same stopping rule (RMS change below eps = 1e-3 and
    1e-4); 512×512 camera + N(0, 0.1²) float32, w = 0.063 (the PSNR-best anisotropic weight
    of tv_vs_skimage.py); interleaved, best and median of ``repeats``."""
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


def deblur(n, points):
    from skimage.restoration import unsupervised_wiener

    clean = _camera(n)
    psf = gaussian_psf(1.5, clean.shape)
    blur = im.Blur.from_kernel(psf, clean.shape)
    noise = 0.01
    y = np.asarray(blur.mv(jnp.asarray(clean, jnp.float32)))
    y = (y + noise * np.random.default_rng(1).standard_normal(y.shape)).astype(np.float32)
    rng = np.random.default_rng(2)
    y64 = y.astype(np.float64)
    load0 = os.getloadavg()
    t = _interleaved(
        {
            "invcal": lambda: im.reconstruct(y, task="deblur", psf=psf, reference=clean).image,
            "wiener": lambda: unsupervised_wiener(y64, psf, clip=False, rng=rng)[0],
        },
        repeats=5,
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
    )
    lams = rec.lam * np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
    scores = _grid(model, clean[None], lams)
    k = int(np.argmax(scores))
    return {
        "size": n,
        "blur_sigma": 1.5,
        "noise": noise,
        "auto": {
            "lambda": rec.lam,
            "sigma_hat": rec.sigma,
            "psnr": rec.psnr,
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
        "input_psnr": _psnr(y, clean),
        "ratio": warm / w_warm,
        "ratio_min": t["invcal"][0] / t["wiener"][0],
        "loadavg": [load0, os.getloadavg()],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/reconstruct.json")
    args = p.parse_args(argv)
    points = 9 if args.quick else 21
    print(f"load average at start: {os.getloadavg()}")
    sv = solve_vs_skimage(256 if args.quick else 512)
    print("one anisotropic solve, invcal against skimage.denoise_tv_bregman (target ≤ 0.5×):")
    for name, r in sv["rows"].items():
        print(
            f"  {name:<26}{r['seconds_min'] * 1e3:8.1f} ms (median "
            f"{r['seconds_median'] * 1e3:.1f}), PSNR {r['psnr']:.2f} dB"
        )
    print("  ratios (best of 7; median):", {k: round(v, 3) for k, v in sv["ratios"].items()})
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
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "python": sys.version.split()[0],
        },
        "quick": args.quick,
        "solve_vs_skimage": sv,
        "denoise_tv_auto": t1,
        "denoise": d,
        "deblur": b,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
