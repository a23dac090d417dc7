"""PEtab multistart with a Gauss-Newton trust-region optimizer (fides, as pyPESTO runs it):
does the best objective reach the nominal one on Boehm_JProteomeRes2014?

    PYTHONPATH=/path/to/fides python benchmarks/petab_fides.py [--starts 20] [--seconds 900]

fides (Fröhlich & Sorger 2022, PLoS Comput Biol 18:e1010322) is a trust-region method for
box-bounded problems; here with the Fisher information matrix of the normal-noise
likelihood as its Hessian, FIM = Σⱼ (∂yⱼ/∂x)(∂yⱼ/∂x)ᵀ/σⱼ² + 2(∂σⱼ/∂x)(∂σⱼ/∂x)ᵀ/σⱼ²
(x on the parameters' scales; y, σ and their derivatives by forward sensitivities, one
compiled program). Flat problem (every estimated parameter, σ included), the same seeded
Latin-hypercube starts as benchmarks/petab_multistart.py. fides is not a dependency of
invcal; this script is the measurement behind the issue-18 question "which local optimizer".
Writes benchmarks/results/petab_fides.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"


def model_and_noise(problem):
    """A compiled x -> (m, y, σ, ∂y/∂x, ∂σ/∂x, ok) over every measurement (normal, lin)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from invcal.ode.petab import Forward
    from invcal.ode.petab.solve import observe, simulate

    if set(problem.transformations) != {"lin"} or set(problem.distributions) != {"normal"}:
        raise SystemExit("petab_fides: only lin-transformed, normal-noise observables")

    def outputs(x):
        sim = simulate(problem, x, Forward())
        ms, ys, ss = zip(*(observe(problem, sim, k) for k in range(len(problem.rows))), strict=True)
        y, s = jnp.concatenate(ys), jnp.concatenate(ss)
        return (y, s), (jnp.concatenate(ms), y, s, jnp.all(sim.ok))

    @eqx.filter_jit
    def run(x):
        (dy, ds), aux = jax.jacfwd(outputs, has_aux=True)(x)
        return aux, dy, ds

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Boehm_JProteomeRes2014")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iterations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1e9, help="stop starting new starts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    import logging

    import fides
    import jax
    import numpy as np

    from invcal.ode import petab

    jax.config.update("jax_enable_x64", True)
    problem = petab.load(DATA / args.model / f"{args.model}.yaml")
    run = model_and_noise(problem)
    evaluations = {"n": 0, "failed": 0}

    def fun(x):
        evaluations["n"] += 1
        (m, y, s, ok), dy, ds = run(jax.numpy.asarray(x))
        m, y, s, dy, ds = (np.asarray(a, np.float64) for a in (m, y, s, dy, ds))
        if not bool(ok) or not np.all(np.isfinite(dy)) or not np.all(np.isfinite(ds)):
            evaluations["failed"] += 1
            return np.inf, np.full(x.size, np.nan), np.full((x.size, x.size), np.nan)
        r = m - y
        f = float(np.sum(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (r / s) ** 2))
        g = -(r / s**2) @ dy + (1 / s - r**2 / s**3) @ ds
        fim = (dy / s[:, None] ** 2).T @ dy + 2 * (ds / s[:, None] ** 2).T @ ds
        return f, g, fim

    nominal = problem.objective(problem.x_nominal)
    points = petab.start_points(problem, args.starts, args.seed)
    rows, t_all = [], time.perf_counter()
    for k, x0 in enumerate(points):
        if time.perf_counter() - t_all > args.seconds:
            break
        evaluations.update(n=0, failed=0)
        t0 = time.perf_counter()
        opt = fides.Optimizer(
            fun,
            ub=problem.upper,
            lb=problem.lower,
            verbose=logging.WARNING,
            options={fides.Options.MAXITER: args.max_iterations},
        )
        try:
            f, x, _, _ = opt.minimize(np.asarray(x0))
            status, iterations = str(opt.exitflag), int(opt.iteration)
        except Exception as e:  # noqa: BLE001 (recorded, never a success)
            f, x, status, iterations = np.inf, x0, f"error: {type(e).__name__}: {e}"[:200], 0
        f = float(f) if np.isfinite(f) else None
        rows.append(
            {
                "start": k,
                "objective": f,
                "status": status,
                "iterations": iterations,
                "evaluations": evaluations["n"],
                "failed_evaluations": evaluations["failed"],
                "seconds": time.perf_counter() - t0,
                "x": np.asarray(x).tolist(),
            }
        )
        print(f"start {k}: {f} {status} it {iterations} {rows[-1]['seconds']:.1f} s", flush=True)
    finals = np.array([r["objective"] if r["objective"] is not None else np.inf for r in rows])
    reached = int(np.sum(finals <= nominal + 0.1))
    result = {
        "benchmark": "petab_fides",
        "model": args.model,
        "machine": {
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
            "note": "2 cores shared with 3 other engineers' jobs while measured",
        },
        "settings": {
            "starts_requested": args.starts,
            "starts_run": len(rows),
            "seed": args.seed,
            "sampler": "latin_hypercube (petab.start_points, as petab_multistart.py)",
            "optimizer": f"fides {fides.__version__}, Hessian = Fisher information (forward sens.)",
            "problem": "flat (all estimated parameters)",
            "max_iterations": args.max_iterations,
        },
        "nominal_objective": nominal,
        "best_objective": float(finals.min()) if rows else None,
        "starts_within_0.1_of_nominal_or_better": reached,
        "wall_s": time.perf_counter() - t_all,
        "starts": rows,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "petab_fides.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"best {result['best_objective']} (nominal {nominal:.6f}); {reached}/{len(rows)} starts "
        f"within 0.1 of the nominal or better; wrote {path}"
    )


if __name__ == "__main__":
    main()
