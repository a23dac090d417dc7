"""The peers' multistart on a PEtab problem: pyPESTO with AMICI, same starts and bounds as
benchmarks/petab_multistart.py (issue 18, "Peers for the benchmark").

    python3 -m venv /work/peer_venv && /work/peer_venv/bin/pip install pypesto amici fides petab
    PATH=/work/peer_venv/bin:$PATH python benchmarks/petab_peers.py [--starts 30]

Runs in a separate virtual environment (pyPESTO, AMICI and fides are not dependencies of
invcal, and invcal is not imported here). AMICI compiles the SBML model to C++ (CVODES,
forward sensitivities; the compilation is timed apart). The start points are the same
seeded Latin hypercube as invcal.ode.petab.start_points: scipy.stats.qmc.LatinHypercube(d,
seed).random(starts) scaled to the PEtab bounds on the parameters' scales, the estimated
parameters in the parameter table's order (the ids are recorded, and checked against
invcal's when its results are at hand). Optimizers, flat problem (every estimated
parameter), pyPESTO's defaults otherwise:

- ``lbfgsb``: pypesto.optimize.ScipyOptimizer(method="L-BFGS-B"), scipy's tolerances
  (the local optimizer of invcal before its relative offset test);
- ``fides``: pypesto.optimize.FidesOptimizer(), a trust-region method with AMICI's Fisher
  information matrix as its Hessian (pyPESTO's recommended optimizer for PEtab problems).

Writes benchmarks/results/petab_peers.json: per optimizer, the best objective against the
nominal one, the starts within 0.1 of the nominal objective or better, the starts ending on
the 249.746 plateau, iterations (function evaluations) and times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"


def start_points(lower, upper, starts: int, seed: int):
    """invcal.ode.petab.start_points' formula, without invcal."""
    from scipy.stats import qmc

    unit = qmc.LatinHypercube(d=len(lower), seed=int(seed)).random(int(starts))
    return qmc.scale(unit, lower, upper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Boehm_JProteomeRes2014")
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizers", nargs="+", default=["lbfgsb", "fides"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    import amici
    import numpy as np
    import petab.v1 as petab
    import pypesto
    import pypesto.optimize as optimize
    import pypesto.petab

    load_at_start = os.getloadavg()
    petab_problem = petab.Problem.from_yaml(DATA / args.model / f"{args.model}.yaml")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as build:
        importer = pypesto.petab.PetabImporter(
            petab_problem, model_name=f"{args.model}_peers", output_folder=build
        )
        problem = importer.create_problem()
        compile_s = time.perf_counter() - t0
        ids = [problem.x_names[i] for i in problem.x_free_indices]
        lower, upper = np.asarray(problem.lb), np.asarray(problem.ub)
        table = petab_problem.parameter_df
        nominal_x = np.asarray(
            [
                petab.parameters.scale(table.loc[i, "nominalValue"], table.loc[i, "parameterScale"])
                for i in ids
            ]
        )
        nominal = float(problem.objective(nominal_x))
        points = start_points(lower, upper, args.starts, args.seed)
        rows = []
        for name in args.optimizers:
            optimizer = {
                "lbfgsb": lambda: optimize.ScipyOptimizer(method="L-BFGS-B"),
                "fides": lambda: optimize.FidesOptimizer(verbose=0),
            }[name]()
            problem.set_x_guesses([problem.get_full_vector(p) for p in points])
            t1 = time.perf_counter()
            result = optimize.minimize(
                problem,
                optimizer,
                n_starts=args.starts,
                engine=pypesto.engine.SingleCoreEngine(),
                progress_bar=False,
            )
            wall = time.perf_counter() - t1
            by_start = sorted(result.optimize_result.list, key=lambda r: int(r.id))
            finals = np.array(
                [r.fval if r.fval is not None and np.isfinite(r.fval) else np.inf for r in by_start]
            )
            pairs = zip(by_start, points, strict=True)
            free = list(problem.x_free_indices)
            x0_match = float(max(np.max(np.abs(np.asarray(r.x0)[free] - p)) for r, p in pairs))
            rows.append(
                {
                    "optimizer": repr(optimizer),
                    "key": name,
                    "starts": args.starts,
                    "best_objective": float(finals.min()),
                    "nominal_objective": nominal,
                    "best_minus_nominal": float(finals.min()) - nominal,
                    "within_0.1_of_nominal_or_better": int(np.sum(finals <= nominal + 0.1)),
                    "on_plateau_249.746": int(np.sum(np.abs(finals - 249.746) < 0.01)),
                    "median_function_evaluations": float(np.median([r.n_fval for r in by_start])),
                    "median_start_s": float(np.median([r.time for r in by_start])),
                    "wall_s": wall,
                    "start_points_equal_to_the_drawn_ones": x0_match,
                    "best_x": np.asarray(by_start[int(np.argmin(finals))].x)[free].tolist(),
                    "finals_by_start": [None if not np.isfinite(f) else float(f) for f in finals],
                    "messages_by_start": [str(r.message)[:120] for r in by_start],
                }
            )
            print(
                f"{name}: best {finals.min():.6f} (nominal {nominal:.6f}), "
                f"{rows[-1]['within_0.1_of_nominal_or_better']}/{args.starts} within 0.1, "
                f"{rows[-1]['on_plateau_249.746']} on the plateau, {wall:.0f} s",
                flush=True,
            )
    record = {
        "benchmark": "petab_peers",
        "model": args.model,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {
            "pypesto": pypesto.__version__,
            "amici": amici.__version__,
            "fides": __import__("fides").__version__,
        },
        "install": "python3 -m venv /work/peer_venv && pip install pypesto amici fides petab: "
        "installed (amici 1.0.1 built from its source distribution with g++ and cmake/swig "
        "from PyPI; petab installed separately: pypesto does not pull it in; the venv's bin "
        "on PATH, where AMICI's model build finds swig)",
        "amici_model_compile_s": compile_s,
        "parameter_ids": ids,
        "settings": {
            "starts": args.starts,
            "seed": args.seed,
            "sampler": "latin_hypercube (scipy.stats.qmc, as invcal.ode.petab.start_points)",
            "problem": "flat (all estimated parameters)",
            "sensitivities": "AMICI forward sensitivities (pyPESTO defaults)",
        },
        "rows": rows,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "petab_peers.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
