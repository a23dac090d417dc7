"""Split Bregman TV: invcal against scikit-image's ``denoise_tv_bregman``, and its weights tuned
by hypergradients.

    python benchmarks/tv_vs_skimage.py [--quick] [--skip solve methods learn sure blocks]
                                       [--sigmas 0.05 0.1 0.2] [--images clock page cell]
                                       [--out benchmarks/results/tv_vs_skimage.json]
                                       [--repeats 3]

Threads: one for BLAS/OpenMP and for XLA's CPU pool, the process pinned to one core (set by
``benchmarks/one_core.py``, imported before numpy and jax load);
``INVCAL_BENCH_THREADS=default`` leaves XLA's pool and the affinity as a user gets them, and
the solve part then goes to ``solve_xla_default_threads``. The load average is recorded with
every timed row: the machine is shared.

Parts (each prints a table; all numbers go to the JSON, where parts skipped in a run keep the
numbers of an earlier one):

1. ``solve`` — one 512×512 float32 denoise (camera, anisotropic TV, σ = 0.05/0.1/0.2, the weight
   best for PSNR on a 19-point grid), invcal's ``split_bregman`` against
   ``skimage.restoration.denoise_tv_bregman(isotropic=False)`` at the same weight (w = 1/μ)
   and the same stopping rule (RMS change of u below eps), with invcal's default penalty
   ρ = 2 (the penalty skimage's iteration uses) and with ρ = 4 (the earlier default): warm
   wall time (median and best of ``--repeats``, interleaved; ``ratio`` is the medians'),
   iterations, PSNR, and the RMS and max distance of each stopped image from that solver's
   own converged image (RMS change below 1e-6): the accuracy each stop buys. Rows with
   ``eps: "default"`` compare ``denoise_tv(f, w, isotropic=False)`` (tol 1e-4 × the image's
   range) with ``denoise_tv_bregman`` at its defaults (eps 1e-3); then both solved to
   convergence in
   float64: PSNR, max |difference| over the image and 16 px in from the border, and the ROF
   energy each reaches.
2. ``methods`` — hypergradients of the scalar weight (MSE to truth, camera, σ = 0.1, float64) by
   implicit differentiation of the Split Bregman fixed point (GMRES), reverse unrolling and
   Huber-TV implicit (CG on the Hessian): relative error against central finite differences
   and warm wall time, at 64×64 and 128×128.
3. ``learn`` — per noise level: the scalar weight learned by invcal on the five training images
   (−mean PSNR, implicit hypergradients, ``ic.tune(optimizer=ic.Secant())``: the library's
   safeguarded secant search on dE/dlog w) against a 30-point grid search with skimage's
   solver (best mean training PSNR) and a 61-point log grid with invcal's solver: mean
   training PSNR (the optimizer's accuracy) and mean validation PSNR (clock, page, cell),
   every weight scored by the same cold, tight solve (same solver, discretisation, boundary,
   tolerance and w); per-image PSNRs, the grid's per-image best weights and the grid from the
   learned weight to the validation-best point; wall times. 128×128 (``--size``).
4. ``sure`` — ``denoise_tv(weight="auto")`` (SURE, σ known and estimated) against the oracle
   weight (best PSNR on a 41-point grid, each point the same tol-1e-4 solve denoise_tv
   returns), per validation image and noise level; seconds per call.
5. ``blocks`` — 8×8 block weights against the best scalar weight, both learned on one noise
   draw of each validation image (σ = 0.1), evaluated on that draw and on a fresh one.
   128×128 (``--size``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# One thread for every library and the process pinned to one core, set before numpy and jax
# load (benchmarks/one_core.py). INVCAL_BENCH_THREADS=default leaves XLA's pool alone (what a
# user gets), and the solve part is then recorded under "solve_xla_default_threads".
import one_core  # noqa: E402

THREADS = one_core.THREADS
thread_settings = one_core.record

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PARTS = ("solve", "methods", "learn", "sure", "blocks")
REPEATS = 3  # timed calls per row of the solve part (--repeats)
SIGMAS = (0.05, 0.1, 0.2)


def _best_of(fn, repeats=7):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return out, min(times), float(np.median(times))


def _table(header, rows):
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print()


def _progress(label):
    t0 = time.perf_counter()

    def report(step, total, row):  # row: an invcal.history.HistoryRow
        print(
            f"  [{label}] step {step}/{total} value {float(row.value):.5f} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    return report


def _psnr_np(u, truth):
    u, truth = np.asarray(u, np.float64), np.asarray(truth, np.float64)
    return float(10 * np.log10(1.0 / np.mean((u - truth) ** 2)))


# --------------------------------------------------------------------------------------
# 1. one solve against skimage (float32, warm)
# --------------------------------------------------------------------------------------
class _Stopped:
    """denoise_tv's image and iteration count, shaped as split_bregman's solution."""

    def __init__(self, u, num_steps):
        self.u, self.num_steps = jnp.asarray(u), num_steps


def part_solve(size):
    from skimage.restoration import denoise_tv_bregman

    from invcal.imaging import (
        Anisotropic,
        SplitBregman,
        add_noise,
        denoise_tv,
        load_image,
        split_bregman,
    )

    truth = load_image("camera", None if size == 512 else size).astype(np.float32)
    method = SplitBregman(Anisotropic())
    rows, out = [], []
    for sigma in SIGMAS:
        f = add_noise(truth, sigma, seed=0).astype(np.float32)
        fj = jnp.asarray(f)
        # the weight that is best for PSNR (anisotropic, converged solves, float32); the grid
        # reaches σ/4 (a grid from σ/2 had camera's best at σ = 0.05 on its edge)
        grid = sigma * np.geomspace(0.25, 2.0, 19)
        scores = [
            _psnr_np(split_bregman(fj, w, method, tol=1e-5, max_steps=2000).u, truth) for w in grid
        ]
        k_best = int(np.argmax(scores))
        w = float(grid[k_best])
        # each solver's own converged image (float32), to say how far each stopped solve is
        # from where it is going: the equal-accuracy comparison
        ours_star = np.asarray(split_bregman(fj, w, method, tol=1e-6, max_steps=5000).u)
        theirs_star = denoise_tv_bregman(
            f, weight=1.0 / w, isotropic=False, eps=1e-6, max_num_iter=5000
        )

        def dist(u, star):
            e = np.asarray(u, np.float64) - star
            return float(np.sqrt(np.mean(e * e))), float(np.max(np.abs(e)))

        for rho, eps in [(r, e) for r in (4.0, 2.0) for e in (1e-3, 1e-4, "default")]:
            if eps == "default" and rho != 2.0:
                continue
            m_rho = SplitBregman(Anisotropic(), penalty=rho)

            def ours(eps=eps, w=w, m_rho=m_rho):
                if eps == "default":  # denoise_tv's defaults (tol 1e-4 × the range)
                    u, info = denoise_tv(f, w, isotropic=False, return_info=True)
                    return _Stopped(u, info.num_steps)
                return split_bregman(fj, w, m_rho, tol=eps, max_steps=100)

            def theirs(eps=eps, w=w):
                if eps == "default":  # scikit-image's defaults (eps 1e-3, 100 iterations)
                    return denoise_tv_bregman(f, weight=1.0 / w, isotropic=False)
                return denoise_tv_bregman(f, weight=1.0 / w, isotropic=False, eps=eps)

            ours()  # compile
            t_o, t_s = [], []
            for _ in range(REPEATS):  # interleaved, so both see the same machine load
                t0 = time.perf_counter()
                sol = ours()
                jax.block_until_ready(sol.u)
                t_o.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sk = theirs()
                t_s.append(time.perf_counter() - t0)
            row = {
                "sigma": sigma,
                "weight": w,
                "weight_on_grid_edge": k_best in (0, len(grid) - 1),
                "skimage_weight": 1.0 / w,
                "penalty": rho,
                "eps": eps,
                "invcal_seconds": min(t_o),
                "skimage_seconds": min(t_s),
                "invcal_median": float(np.median(t_o)),
                "skimage_median": float(np.median(t_s)),
                "ratio": float(np.median(t_o) / np.median(t_s)),
                "ratio_min": min(t_o) / min(t_s),
                "repeats": REPEATS,
                "loadavg": os.getloadavg(),
                "invcal_steps": int(sol.num_steps),
                "invcal_psnr": _psnr_np(sol.u, truth),
                "skimage_psnr": _psnr_np(sk, truth),
                "invcal_dtype": str(sol.u.dtype),
                "skimage_dtype": str(sk.dtype),
            }
            (row["invcal_rms_to_converged"], row["invcal_max_to_converged"]) = dist(
                sol.u, ours_star
            )
            (row["skimage_rms_to_converged"], row["skimage_max_to_converged"]) = dist(
                sk, theirs_star
            )
            out.append(row)
            rows.append(
                [
                    sigma,
                    f"{w:.4f}",
                    rho,
                    eps,
                    f"{row['invcal_seconds'] * 1e3:.1f}",
                    f"{row['skimage_seconds'] * 1e3:.1f}",
                    f"{row['ratio']:.2f}",
                    row["invcal_steps"],
                    f"{row['invcal_psnr']:.3f}",
                    f"{row['skimage_psnr']:.3f}",
                    f"{row['invcal_rms_to_converged']:.2e}",
                    f"{row['skimage_rms_to_converged']:.2e}",
                ]
            )
    print(
        f"One solve, {truth.shape[0]}×{truth.shape[1]} float32, anisotropic TV, warm (medians "
        f"of {REPEATS}, interleaved; XLA threads: {THREADS}):"
    )
    _table(
        [
            "sigma",
            "w=1/mu",
            "rho",
            "eps",
            "invcal ms",
            "skimage ms",
            "ratio",
            "steps",
            "PSNR invcal",
            "PSNR skimage",
            "RMS to u* invcal",
            "RMS to u* skimage",
        ],
        rows,
    )
    return out


def part_agreement(size):
    """Both solvers to convergence, float64: where they agree and which energy is lower."""
    from skimage.restoration import denoise_tv_bregman

    from invcal.imaging import (
        Anisotropic,
        SplitBregman,
        add_noise,
        denoise_tv,
        load_image,
        split_bregman,
    )

    truth = load_image("camera", None if size == 512 else size)
    method = SplitBregman(Anisotropic(), penalty=8.0)
    rows, out = [], []
    for sigma in SIGMAS:
        f = add_noise(truth, sigma, seed=0)
        w = {0.05: 0.045, 0.1: 0.1, 0.2: 0.2}[sigma]
        ours = np.asarray(split_bregman(jnp.asarray(f), w, method, tol=1e-9, max_steps=20000).u)
        sk = denoise_tv_bregman(f, weight=1.0 / w, isotropic=False, eps=1e-9, max_num_iter=20000)
        diff = np.abs(ours - sk)
        h, wd = diff.shape
        ii, jj = np.indices(diff.shape)
        border = np.minimum.reduce([ii, jj, h - 1 - ii, wd - 1 - jj])
        # the one-call API at its defaults against skimage at its defaults (same w = 1/μ)
        dflt = np.abs(
            denoise_tv(f, w, isotropic=False) - denoise_tv_bregman(f, 1.0 / w, isotropic=False)
        )
        e_o = float(method.energy(jnp.asarray(ours), jnp.asarray(f), w))
        e_s = float(method.energy(jnp.asarray(sk), jnp.asarray(f), w))
        row = {
            "sigma": sigma,
            "weight": w,
            "max_abs_diff": float(diff.max()),
            "max_abs_diff_16px_in": float(diff[border >= 16].max()),
            "rms_diff": float(np.sqrt(np.mean(diff**2))),
            "share_pixels_diff_above_1e-3": float(np.mean(diff > 1e-3)),
            "defaults_max_abs_diff": float(dflt.max()),
            "defaults_max_abs_diff_16px_in": float(dflt[border >= 16].max()),
            "defaults_rms_diff": float(np.sqrt(np.mean(dflt**2))),
            "energy_invcal": e_o,
            "energy_skimage": e_s,
            "psnr_invcal": _psnr_np(ours, truth),
            "psnr_skimage": _psnr_np(sk, truth),
        }
        out.append(row)
        rows.append(
            [
                sigma,
                w,
                f"{row['max_abs_diff']:.3g}",
                f"{row['max_abs_diff_16px_in']:.3g}",
                f"{row['rms_diff']:.3g}",
                f"{row['share_pixels_diff_above_1e-3']:.4f}",
                f"{row['defaults_max_abs_diff']:.3g}",
                f"{row['defaults_max_abs_diff_16px_in']:.3g}",
                f"{e_o:.6f}",
                f"{e_s:.6f}",
                f"{row['psnr_invcal']:.3f}",
                f"{row['psnr_skimage']:.3f}",
            ]
        )
    print(
        "Converged solutions, float64 (invcal: Neumann ROF energy; skimage: its own boundary); "
        "'defaults': denoise_tv(f, w, isotropic=False) against denoise_tv_bregman(f, 1/w, "
        "isotropic=False), both at their default tolerances:"
    )
    _table(
        [
            "sigma",
            "w",
            "max|diff|",
            "max|diff| 16px in",
            "rms diff",
            ">1e-3",
            "max|diff| defaults",
            "16px in",
            "E invcal",
            "E(skimage)",
            "PSNR invcal",
            "PSNR skimage",
        ],
        rows,
    )
    return out


# --------------------------------------------------------------------------------------
# 2. hypergradient methods
# --------------------------------------------------------------------------------------
def part_methods(sizes):
    import lineax as lx

    import invcal as ic
    from invcal.imaging import (
        MSE,
        Anisotropic,
        GaussSeidel,
        Isotropic,
        Neumann,
        SplitBregman,
        add_noise,
        load_image,
        tv_problem,
    )
    from invcal.testing import check_hypergradient

    out, rows = [], []
    # restart 30: at 128×128 a restart of 100 took 26 s (its Gram–Schmidt dominates), 30 took
    # 7 s for the same answer (measured while writing this benchmark)
    gmres = lx.GMRES(rtol=1e-11, atol=1e-14, restart=30, max_steps=2000)
    for size in sizes:
        truth = load_image("camera", size)
        f = add_noise(truth, 0.1, seed=0)
        exact = tv_problem(
            f,
            truth=truth,
            criterion=MSE(),
            init=0.1,
            tv=SplitBregman(Anisotropic(), Neumann(), GaussSeidel(), 8.0),
        )
        huber_iso = tv_problem(
            f, truth=truth, criterion=MSE(), init=0.1, tv=SplitBregman(Isotropic(), huber=0.01)
        )
        huber_ani = tv_problem(
            f,
            truth=truth,
            criterion=MSE(),
            init=0.1,
            tv=SplitBregman(Anisotropic(), huber=0.01),
        )
        n_state = 5 * size * size
        tol = 1e-12 * math.sqrt(n_state)
        cases = [
            (
                "implicit (GMRES)",
                exact,
                ic.Implicit(gmres, system="fixed_point"),
                ic.FixedPointIteration(tol=tol, max_steps=20000),
            ),
            (
                "implicit (Neumann series, 2000 terms)",
                exact,
                ic.Implicit(ic.NeumannSeries(2000, rtol=1e-9), system="fixed_point"),
                ic.FixedPointIteration(tol=tol, max_steps=20000),
            ),
            (
                "unrolled (3000 steps)",
                exact,
                ic.Unrolled(3000),
                ic.FixedPointIteration(tol=tol, max_steps=3000),
            ),
            (
                "Huber-implicit (CG), isotropic",
                huber_iso,
                ic.Implicit(lx.CG(rtol=1e-11, atol=1e-14, max_steps=5000)),
                ic.FISTA(tol=1e-12 * size, max_steps=50000),
            ),
            (
                "Huber-implicit (CG), anisotropic",
                huber_ani,
                ic.Implicit(lx.CG(rtol=1e-11, atol=1e-14, max_steps=5000)),
                ic.FISTA(tol=1e-12 * size, max_steps=50000),
            ),
        ]
        for name, problem, method, solver in cases:
            theta = problem.space.init()
            res = check_hypergradient(problem, theta, method, solver=solver)
            _, t_min, _ = _best_of(
                lambda problem=problem, method=method, solver=solver, theta=theta: (
                    ic.hypergradient(problem, theta, solver=solver, method=method).grad
                ),
                repeats=3,
            )
            row = {
                "size": size,
                "method": name,
                "relative_error": res.relative_error,
                "gradient": float(res.gradient[0]),
                "finite_difference": float(res.finite_difference[0]),
                "seconds_warm": t_min,
                **res.diagnostics,
            }
            out.append(row)
            rows.append(
                [
                    f"{size}×{size}",
                    name,
                    f"{res.relative_error:.2e}",
                    f"{row['gradient']:.8f}",
                    f"{t_min:.3f}",
                    res.diagnostics["inner_steps"],
                    res.diagnostics["linear_steps"],
                ]
            )
    print(
        "Hypergradient dE/dlog w (MSE to truth, camera, σ = 0.1, w = 0.1, float64) against "
        "central finite differences (Huber rows: their own smoothed problem, ε = 0.01):"
    )
    _table(["image", "method", "rel. error", "dE/dlog w", "warm s", "inner steps", "linear"], rows)
    return out


# --------------------------------------------------------------------------------------
# 3. the learned scalar weight against grid searches
# --------------------------------------------------------------------------------------
# Every PSNR of the learn part (grid points, the learned weight, training and validation) comes
# from a cold solve (from f) stopped at the same RMS change. A first version warm-started each
# grid point from the previous weight's state: at a fixed point the first iteration for a new
# weight leaves u unchanged (the u-step reads the old d, b), so the RMS-change test stopped
# after one step and the grid kept (nearly) the previous weight's image, 0.09 dB off at
# σ = 0.1 (w = 0.0617 after 0.0606: 30.365 dB warm vs 30.454 dB cold, validation mean).
# Cold solves at 1e-7 / 1e-8 / 1e-9 agree to 2e-4 dB there (measured 19:05 UTC, 2026-11-23).
# (ρ = 8, the learning solver's penalty: the fastest to tight tolerances)
EVAL_TOL, EVAL_STEPS = 1e-8, 20000


def _grid_psnr(noisy, truth, weights, method, tol=EVAL_TOL, max_steps=EVAL_STEPS):
    """PSNR of each image (columns) at each weight (rows), each image solved cold (from f);
    an array (len(weights), len(noisy)). The benchmark's scores are its row means."""
    from invcal.imaging import split_bregman

    return np.array(
        [
            [
                _psnr_np(
                    split_bregman(jnp.asarray(f), w, method, tol=tol, max_steps=max_steps).u, t
                )
                for f, t in zip(noisy, truth, strict=True)
            ]
            for w in weights
        ]
    )


def part_learn(size, steps, sigmas=SIGMAS, cache_dir=None):
    import lineax as lx
    from skimage.restoration import denoise_tv_bregman

    import invcal as ic
    from invcal.imaging import (
        PSNR,
        TRAIN,
        VALIDATION,
        Anisotropic,
        GaussSeidel,
        Neumann,
        SplitBregman,
        add_noise,
        load_images,
        tv_problem,
    )

    # the learning problem and every score below use this one solver and discretisation
    # (anisotropic TV, Neumann boundary, Gauss–Seidel u-step, ρ = 8) and weight convention
    # (w = 1/μ, the weight of ‖∇u‖₁ in w‖∇u‖₁ + ½‖u − f‖²); scores are cold solves to EVAL_TOL
    method = SplitBregman(Anisotropic(), Neumann(), GaussSeidel(), 8.0)
    eval_method = method
    secant = ic.Secant()  # the library's defaults (as `invcal run split-bregman-tv` uses)
    t_train, t_val = load_images(TRAIN, size), load_images(VALIDATION, size)
    out, rows, curves = [], [], []
    for sigma in sigmas:
        f_train, f_val = add_noise(t_train, sigma, 0), add_noise(t_val, sigma, 1)
        # invcal: −mean training PSNR, implicit hypergradients (GMRES on the Split Bregman
        # fixed point), ic.tune's secant search on dE/dlog w from w = σ/2. (Adam at rate 0.1
        # oscillated around the start at σ = 0.05 and never improved on it.)
        problem = tv_problem(f_train, truth=t_train, criterion=PSNR(), tv=method, init=sigma / 2)
        n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(problem.x0))
        solver = ic.FixedPointIteration(tol=1e-8 * math.sqrt(n), max_steps=20000)
        imp = ic.Implicit(
            lx.GMRES(rtol=1e-6, atol=1e-14, restart=30, max_steps=1000), system="fixed_point"
        )
        t0 = time.perf_counter()
        res = ic.tune(
            problem,
            solver=solver,
            method=imp,
            optimizer=secant,
            steps=steps,
            progress=_progress(f"learn σ={sigma}"),
            # a run cut short (cpu-share's cap) resumes the same search from results.json
            out=None if cache_dir is None else Path(cache_dir) / f"learn_{size}_{sigma}",
            resume=cache_dir is not None,
        )
        t_learn = time.perf_counter() - t0
        if cache_dir is not None:  # the search's own clock, over all the runs it took
            t_learn = float(res.history[-1]["elapsed"])
        w_learned = float(res.theta["weight"])
        search = [
            {
                "weight": float(r["theta"]["weight"]),
                "train_psnr": -r["value"],
                "dE_dlogw": float(np.ravel(r["grad_z"])[0]),
            }
            for r in res.history
        ]
        # skimage: 30-point log grid of μ = 1/w, best mean training PSNR (its default eps)
        mus = 1.0 / (sigma * np.geomspace(0.2, 5.0, 30))
        t0 = time.perf_counter()
        sk_scores = [
            np.mean(
                [
                    _psnr_np(denoise_tv_bregman(f, weight=mu, isotropic=False), t)
                    for f, t in zip(f_train, t_train, strict=True)
                ]
            )
            for mu in mus
        ]
        t_sk = time.perf_counter() - t0
        mu_best = float(mus[int(np.argmax(sk_scores))])
        sk_val = float(
            np.mean(
                [
                    _psnr_np(denoise_tv_bregman(f, weight=mu_best, isotropic=False), t)
                    for f, t in zip(f_val, t_val, strict=True)
                ]
            )
        )
        # invcal solver on a 61-point log grid: training and validation PSNR at each point
        grid = sigma * np.geomspace(0.2, 5.0, 61)
        t0 = time.perf_counter()
        gi_train = _grid_psnr(f_train, t_train, grid, eval_method)
        t_grid61 = time.perf_counter() - t0
        gi_val = _grid_psnr(f_val, t_val, grid, eval_method)
        li_val = _grid_psnr(f_val, t_val, [w_learned], eval_method)[0]
        li_train = _grid_psnr(f_train, t_train, [w_learned], eval_method)[0]
        g_train, g_val = gi_train.mean(axis=1), gi_val.mean(axis=1)
        val_learned, train_learned = float(li_val.mean()), float(li_train.mean())
        k_oracle = int(np.argmax(g_val))
        k_train = int(np.argmax(g_train))
        k_near = int(np.argmin(np.abs(np.log(grid / w_learned))))
        row = {
            "sigma": sigma,
            "size": size,
            "learned_weight": w_learned,
            "learned_val_psnr": val_learned,
            "learned_train_psnr": train_learned,
            "learned_train_psnr_at_inner_tol": -float(res.value),
            "learned_val_psnr_per_image": dict(zip(VALIDATION, li_val.tolist(), strict=True)),
            "learn_seconds": t_learn,
            "learn_evaluations": res.evaluations,
            "learn_search": search,
            "optimizer": (
                f"ic.tune(optimizer=ic.Secant(step={secant.step}, xtol={secant.xtol})): "
                "safeguarded secant on dE/dlog w"
            ),
            "timing": "wall times under shared load (cpu-share), not exclusive",
            "skimage_grid30_mu": mu_best,
            "skimage_grid30_weight": 1.0 / mu_best,
            "skimage_grid30_val_psnr": sk_val,
            "skimage_grid30_seconds": t_sk,
            "grid61_weights": grid.tolist(),
            "grid61_train_psnr": g_train.tolist(),
            "grid61_val_psnr": g_val.tolist(),
            "grid61_best_val_weight": float(grid[k_oracle]),
            "grid61_best_val_psnr": float(g_val[k_oracle]),
            "grid61_best_train_weight": float(grid[k_train]),
            "grid61_best_train_psnr": float(g_train[k_train]),
            "grid61_per_image_best_train_weight": {
                name: float(grid[int(np.argmax(gi_train[:, i]))]) for i, name in enumerate(TRAIN)
            },
            "grid61_per_image_best_val_weight": {
                name: float(grid[int(np.argmax(gi_val[:, i]))]) for i, name in enumerate(VALIDATION)
            },
            "learned_over_grid61_train_pick": w_learned / float(grid[k_train]),
            "grid61_val_best_over_learned": float(grid[k_oracle]) / w_learned,
            "train_gap_to_grid61_db": float(g_train[k_train] - train_learned),
            "grid61_train_pick_val_psnr": float(g_val[k_train]),
            "grid61_train_pick_val_psnr_per_image": dict(
                zip(VALIDATION, gi_val[k_train].tolist(), strict=True)
            ),
            "grid61_best_val_psnr_per_image": dict(
                zip(VALIDATION, gi_val[k_oracle].tolist(), strict=True)
            ),
            "grid61_train_seconds": t_grid61,
            "gap_to_grid61_oracle_db": float(g_val[k_oracle] - val_learned),
            "gap_to_grid61_train_pick_db": float(g_val[k_train] - val_learned),
        }
        out.append(row)
        rows.append(
            [
                sigma,
                f"{w_learned:.4f}",
                f"{train_learned:.4f}",
                f"{g_train[k_train]:.4f} @ {grid[k_train]:.4f}",
                res.evaluations,
                f"{val_learned:.3f}",
                f"{g_val[k_train]:.3f}",
                f"{t_learn:.0f}",
                f"{1 / mu_best:.4f}",
                f"{sk_val:.3f}",
                f"{t_sk:.0f}",
                f"{grid[k_oracle]:.4f}",
                f"{g_val[k_oracle]:.3f}",
                f"{row['gap_to_grid61_oracle_db']:+.3f}",
                f"{row['gap_to_grid61_train_pick_db']:+.3f}",
            ]
        )
        # the grid around the learned weight, up to the validation-best point: how steep the
        # validation curve is where the training optimum lies
        lo, hi = max(0, min(k_near, k_train) - 2), min(len(grid), max(k_near, k_oracle) + 2)
        for k in range(lo, hi):
            curves.append(
                [
                    sigma,
                    f"{grid[k]:.5f}",
                    f"{grid[k] / w_learned:.3f}",
                    f"{g_train[k]:.4f}",
                    f"{g_val[k]:.4f}",
                    *(f"{x:.3f}" for x in gi_val[k]),
                    ("train pick " if k == k_train else "") + ("val best" if k == k_oracle else ""),
                ]
            )
        curves.append(
            [
                sigma,
                f"{w_learned:.5f}",
                "1.000",
                f"{train_learned:.4f}",
                f"{val_learned:.4f}",
                *(f"{x:.3f}" for x in li_val),
                "learned",
            ]
        )
    print(
        f"Learned scalar weight ({size}×{size}, anisotropic TV, 5 training / 3 validation "
        "images; validation PSNR is the mean over clock, page, cell):"
    )
    _table(
        [
            "sigma",
            "w learned",
            "train PSNR",
            "grid61 best train",
            "evals",
            "val PSNR",
            "val grid61 train-pick",
            "s",
            "w skimage30",
            "val PSNR",
            "s",
            "w grid61 best",
            "val PSNR",
            "gap oracle",
            "gap train-pick",
        ],
        rows,
    )
    print("The 61-point grid from the learned weight to the validation-best point:")
    _table(["sigma", "w", "w/learned", "train", "val", *VALIDATION, ""], curves)
    return out


# --------------------------------------------------------------------------------------
# 4. SURE against the oracle
# --------------------------------------------------------------------------------------
def part_sure(size, sigmas=SIGMAS, images=None):
    from invcal.imaging import (
        VALIDATION,
        Isotropic,
        SplitBregman,
        add_noise,
        denoise_tv,
        load_image,
        split_bregman,
    )

    method = SplitBregman(Isotropic())
    out, rows = [], []
    for name in images or VALIDATION:
        truth = load_image(name, size)
        for sigma in sigmas:
            f = add_noise(truth, sigma, seed=2)
            grid = sigma * np.geomspace(0.3, 3.0, 41)
            scores = [
                _psnr_np(split_bregman(jnp.asarray(f), w, method, tol=1e-4, max_steps=300).u, truth)
                for w in grid
            ]
            k = int(np.argmax(scores))
            t0 = time.perf_counter()
            u_known, info_known = denoise_tv(f, sigma=sigma, return_info=True)
            t_known = time.perf_counter() - t0
            u_est, info_est = denoise_tv(f, return_info=True)
            row = {
                "image": name,
                "sigma": sigma,
                "size": size,
                "oracle_weight": float(grid[k]),
                "oracle_psnr": float(scores[k]),
                "sure_weight": info_known.weight,
                "sure_psnr": _psnr_np(u_known, truth),
                "sure_seconds": t_known,
                "sure_evaluations": len(info_known.search),
                "estimated_sigma": info_est.sigma,
                "sure_est_weight": info_est.weight,
                "sure_est_psnr": _psnr_np(u_est, truth),
                "noisy_psnr": _psnr_np(f, truth),
            }
            row["gap_db"] = row["oracle_psnr"] - row["sure_psnr"]
            row["gap_est_db"] = row["oracle_psnr"] - row["sure_est_psnr"]
            out.append(row)
            rows.append(
                [
                    name,
                    sigma,
                    f"{row['oracle_weight']:.4f}",
                    f"{row['oracle_psnr']:.3f}",
                    f"{row['sure_weight']:.4f}",
                    f"{row['sure_psnr']:.3f}",
                    f"{row['gap_db']:+.3f}",
                    f"{t_known:.1f}",
                    f"{row['estimated_sigma']:.4f}",
                    f"{row['sure_est_psnr']:.3f}",
                    f"{row['gap_est_db']:+.3f}",
                ]
            )
    print(
        f"denoise_tv(weight='auto') (isotropic, {size}×{size}) against the oracle weight "
        "(41-point grid on the truth):"
    )
    _table(
        [
            "image",
            "sigma",
            "w oracle",
            "PSNR",
            "w SURE",
            "PSNR",
            "gap",
            "s",
            "sigma est.",
            "PSNR",
            "gap",
        ],
        rows,
    )
    return out


# --------------------------------------------------------------------------------------
# 5. block weights against the best scalar
# --------------------------------------------------------------------------------------
def part_blocks(size, steps, images=None):
    import lineax as lx

    import invcal as ic
    from invcal.imaging import (
        PSNR,
        VALIDATION,
        Anisotropic,
        BlockWeights,
        GaussSeidel,
        Neumann,
        SplitBregman,
        add_noise,
        load_image,
        split_bregman,
        tv_problem,
    )

    sigma = 0.1
    method = SplitBregman(Anisotropic(), Neumann(), GaussSeidel(), 8.0)
    imp = ic.Implicit(
        lx.GMRES(rtol=1e-6, atol=1e-14, restart=30, max_steps=1000), system="fixed_point"
    )
    layout = BlockWeights(8, 8)
    out, rows = [], []
    for name in images or VALIDATION:
        truth = load_image(name, size)
        f_a, f_b = add_noise(truth, sigma, 3), add_noise(truth, sigma, 4)

        def score(f, w):
            u = split_bregman(jnp.asarray(f), w, method, tol=1e-7, max_steps=5000).u
            return _psnr_np(u, truth)

        # the best scalar weight on draw A: a fine grid (it is one number)
        grid = sigma * np.geomspace(0.3, 3.0, 61)
        scalar_scores = [score(f_a, w) for w in grid]
        w_scalar = float(grid[int(np.argmax(scalar_scores))])
        # 64 block weights learned on draw A from the best scalar, −PSNR, implicit
        problem = tv_problem(
            f_a, truth=truth, criterion=PSNR(), tv=method, weights=layout, init=w_scalar
        )
        n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(problem.x0))
        solver = ic.FixedPointIteration(tol=1e-8 * math.sqrt(n), max_steps=20000)
        t0 = time.perf_counter()
        res = ic.tune(
            problem,
            solver=solver,
            method=imp,
            optimizer="adam",
            learning_rate=0.05,
            steps=steps,
            progress=_progress(f"blocks {name}"),
        )
        t_learn = time.perf_counter() - t0
        wmap = layout.expand(jnp.asarray(res.theta["weight"]), truth.shape)
        row = {
            "image": name,
            "sigma": sigma,
            "size": size,
            "scalar_weight": w_scalar,
            "scalar_psnr_A": score(f_a, w_scalar),
            "scalar_psnr_B": score(f_b, w_scalar),
            "blocks_psnr_A": score(f_a, wmap),
            "blocks_psnr_B": score(f_b, wmap),
            "blocks_weight_min": float(np.min(res.theta["weight"])),
            "blocks_weight_max": float(np.max(res.theta["weight"])),
            "learn_seconds": t_learn,
            "steps": steps,
        }
        row["gain_A_db"] = row["blocks_psnr_A"] - row["scalar_psnr_A"]
        row["gain_B_db"] = row["blocks_psnr_B"] - row["scalar_psnr_B"]
        out.append(row)
        rows.append(
            [
                name,
                f"{w_scalar:.4f}",
                f"{row['scalar_psnr_A']:.3f}",
                f"{row['blocks_psnr_A']:.3f}",
                f"{row['gain_A_db']:+.3f}",
                f"{row['scalar_psnr_B']:.3f}",
                f"{row['blocks_psnr_B']:.3f}",
                f"{row['gain_B_db']:+.3f}",
                f"{row['blocks_weight_min']:.3f}–{row['blocks_weight_max']:.3f}",
                f"{t_learn:.0f}",
            ]
        )
    print(
        f"8×8 block weights vs the best scalar weight ({size}×{size}, σ = 0.1, anisotropic; "
        "learned on noise draw A, also scored on a fresh draw B):"
    )
    _table(
        [
            "image",
            "w scalar",
            "scalar A",
            "blocks A",
            "gain A",
            "scalar B",
            "blocks B",
            "gain B",
            "block w range",
            "s",
        ],
        rows,
    )
    return out


# --------------------------------------------------------------------------------------
def _merge(old, new, keys):
    """Rows of ``old`` whose ``keys`` no row of ``new`` has, then ``new`` (a part run for some
    noise levels or images keeps the other rows of an earlier run)."""
    seen = {tuple(r.get(k) for k in keys) for r in new}
    return [r for r in old or [] if tuple(r.get(k) for k in keys) not in seen] + new


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small images, few steps (a smoke run)")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    ap.add_argument(
        "--sigmas", nargs="*", type=float, default=None, help="noise levels of learn and sure"
    )
    ap.add_argument("--images", nargs="*", default=None, help="validation images of sure, blocks")
    ap.add_argument("--out", default="benchmarks/results/tv_vs_skimage.json")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed calls per row of the solve part (median)"
    )
    ap.add_argument(
        "--cache",
        default=None,
        help="folder for the learn search's results.json per noise level (ic.tune's out=; a run "
        "cut short resumes from it)",
    )
    ap.add_argument(
        "--size",
        type=int,
        default=128,
        help="image size of learn and blocks (default 128: at 256 one hypergradient over the "
        "five training images took over 11 min on the shared 2-core CPU; runs are capped at "
        "15 min)",
    )
    args = ap.parse_args(argv)
    global REPEATS
    REPEATS = args.repeats
    sys.stdout.reconfigure(line_buffering=True)
    quick = args.quick
    sigmas = tuple(args.sigmas) if args.sigmas else SIGMAS
    path = Path(args.out)
    # parts (noise levels, images) not run this time keep their numbers from an earlier run
    results = json.loads(path.read_text()) if path.exists() else {}
    from skimage import __version__ as skv

    results["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "skimage": skv,
        "threads": thread_settings(),
    }
    results["quick"] = quick
    runs = results.setdefault("runs", {})

    def run(part, fn, keys=None):
        t0, load = time.perf_counter(), os.getloadavg()
        rows = fn()
        results[part] = _merge(results.get(part), rows, keys) if keys else rows
        runs[part] = {
            "seconds": time.perf_counter() - t0,
            "loadavg_at_start": load,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        # after every part: a part that fails later loses nothing before it
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))

    if "solve" not in args.skip:  # float32 first (x64 off), then float64 for the rest
        key = "solve" if THREADS == "one" else "solve_xla_default_threads"
        run(key, lambda: part_solve(64 if quick else 512))
    jax.config.update("jax_enable_x64", True)
    if "solve" not in args.skip:
        run("agreement", lambda: part_agreement(64 if quick else 256))
    if "methods" not in args.skip:
        run("methods", lambda: part_methods((32,) if quick else (64, 128)))
    if "learn" not in args.skip:
        run(
            "learn",
            lambda: part_learn(32 if quick else args.size, 4 if quick else 14, sigmas, args.cache),
            ["sigma"],
        )
    if "sure" not in args.skip:
        run(
            "sure",
            lambda: part_sure(32 if quick else 256, sigmas, args.images),
            ["image", "sigma"],
        )
    if "blocks" not in args.skip:
        run(
            "blocks",
            lambda: part_blocks(32 if quick else args.size, 3 if quick else 30, args.images),
            ["image"],
        )
    results.pop("seconds", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
