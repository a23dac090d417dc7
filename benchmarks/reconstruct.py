"""``invcal.imaging.reconstruct``: what choosing λ per image costs, and what it gives.

    python benchmarks/reconstruct.py [--quick] [--out benchmarks/results/reconstruct.json]

JAX's default configuration (float32), this CPU, one process; warm timings (the median of 3
calls after one call that compiles), the first call's time reported too.

1. ``denoise`` — 512×512 float32 camera + N(0, σ²), σ = 0.1, isotropic TV: the automatic λ
   (SURE, σ estimated; the default warm-started estimators, and cold ones as in
   ``denoise_tv``) against one solve at a fixed weight (the same tol-stopped Split
   Bregman solve the automatic call ends with, at the oracle weight): wall-time ratio (target
   ≤ 10×), and its PSNR against the oracle, the best of a 21-point log grid of weights from
   σ/4 to 4σ, each scored by that same solve (target: within 0.2 dB).
2. ``deblur`` — 256×256 camera blurred by a Gaussian PSF (width 1.5 px, periodic) + N(0,
   0.01²): the automatic λ (SURE, σ estimated) against
   ``skimage.restoration.unsupervised_wiener`` (Orieux, Giovannelli & Rodet 2010: a Gibbs
   sampler for the Wiener filter's hyperparameters; same PSF, its default settings, seeded):
   PSNR and wall time. The oracle of a 21-point λ grid is reported too.

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
from invcal.imaging.reconstruct import _Model  # noqa: E402
from invcal.imaging.reconstruct_inputs import as_channels, gaussian_psf  # noqa: E402


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
    # cold estimators (every SURE evaluation 100 iterations from the start, as denoise_tv)
    fast, fast_first, fast_warm = _warm(
        lambda: im.reconstruct(noisy, reference=clean, warm_steps=None), repeats=2
    )
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
        "auto_cold": {
            "lambda": fast.lam,
            "psnr": fast.psnr,
            "evaluations": fast.details["evaluations"],
            "seconds_first": fast_first,
            "seconds": fast_warm,
            "ratio": fast_warm / fixed,
            "gap_db": scores[k] - fast.psnr,
        },
        "fixed": {"lambda": w, "seconds_first": fixed_first, "seconds": fixed},
        "oracle": {"lambda": w, "psnr": scores[k], "grid": [lams.tolist(), scores]},
        "ratio": warm / fixed,
        "gap_db": scores[k] - rec.psnr,
        "input_psnr": _psnr(noisy, clean),
    }


def deblur(n, points):
    from skimage.restoration import unsupervised_wiener

    clean = _camera(n)
    psf = gaussian_psf(1.5, clean.shape)
    blur = im.Blur.from_kernel(psf, clean.shape)
    noise = 0.01
    y = np.asarray(blur.mv(jnp.asarray(clean, jnp.float32)))
    y = (y + noise * np.random.default_rng(1).standard_normal(y.shape)).astype(np.float32)
    rec, first, warm = _warm(
        lambda: im.reconstruct(y, task="deblur", psf=psf, reference=clean), repeats=2
    )
    rng = np.random.default_rng(2)
    (wiener, _), w_first, w_warm = _warm(
        lambda: unsupervised_wiener(y.astype(np.float64), psf, clip=False, rng=rng)
    )
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
            "final_steps": rec.num_steps,
            "converged": rec.converged,
            "seconds_first": first,
            "seconds": warm,
        },
        "unsupervised_wiener": {
            "psnr": _psnr(wiener, clean),
            "seconds_first": w_first,
            "seconds": w_warm,
        },
        "oracle": {"lambda": float(lams[k]), "psnr": scores[k]},
        "input_psnr": _psnr(y, clean),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/reconstruct.json")
    args = p.parse_args(argv)
    points = 9 if args.quick else 21
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
    f = d["auto_cold"]
    print(
        f"  auto, cold estimators: λ={f['lambda']:.4g} PSNR {f['psnr']:.2f} dB "
        f"(gap {f['gap_db']:.3f} dB), {f['seconds']:.3f} s: ratio {f['ratio']:.1f}×"
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
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "python": sys.version.split()[0],
        },
        "quick": args.quick,
        "denoise": d,
        "deblur": b,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
