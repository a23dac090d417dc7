"""Gradient agreement of the PEtab sensitivity methods (issue 18 item 1): forward
sensitivities, the continuous adjoint and the checkpointed discrete adjoint against each
other and against fourth-order central differences of the objective, on the benchmark
collection's models, at the nominal point and at points away from it.

    python benchmarks/petab_gradients.py [--models Boehm_JProteomeRes2014 ...] [--points 3]

Points: the nominal one, then ``--points - 1`` more, each the nominal point moved by
±0.3 on every parameter's scale (signs seeded; clipped to the bounds). For each solver
tolerance (``--tolerances``: the import's default rtol 1e-10, atol 1e-12, then a tighter
one), point and method: the gradient, its time (the first call includes the compilation,
the second is warm), and its difference from the forward one, max |g - g_fwd| / max |g_fwd|
("normwise") and the largest |g_i - g_fwd,i| / |g_fwd,i| over the entries with
|g_fwd,i| >= 1e-3 max |g_fwd| ("entrywise"); then every method's gradient at the default
tolerance against the forward gradient at the tightest one (how accurate the gradient
itself is: two methods cannot agree better than that). Central differences: fourth order,
step h on the parameters' scales (their error is the solver's tolerance over h).
Writes benchmarks/results/petab_gradients.json. Timings are those of a shared 2-core
machine; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"


def differences(g, ref):
    import numpy as np

    scale = float(np.max(np.abs(ref)))
    big = np.abs(ref) >= 1e-3 * scale
    return {
        "normwise": float(np.max(np.abs(g - ref)) / scale),
        "entrywise": float(np.max(np.abs(g - ref)[big] / np.abs(ref)[big])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["Boehm_JProteomeRes2014", "Fujita_SciSignal2010"]
    )
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--h", type=float, default=1e-3)
    parser.add_argument(
        "--tolerances",
        nargs="+",
        default=["1e-10,1e-12", "1e-12,1e-14"],
        help="rtol,atol pairs (the first is the import's default)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/petab_gradients.json"))
    args = parser.parse_args()

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from invcal.ode import petab
    from invcal.testing import central_difference4

    methods = {
        "forward": petab.Forward(),
        "adjoint": petab.Adjoint(),
        "checkpointed": petab.Checkpointed(),
    }
    tolerances = [tuple(float(v) for v in t.split(",")) for t in args.tolerances]
    out = {
        "benchmark": "petab_gradients",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "settings": {
            "points": args.points,
            "h": args.h,
            "solver": "Kvaerno5",
            "tolerances": [{"rtol": r, "atol": a} for r, a in tolerances],
        },
        "models": [],
    }

    def write(extra=None):
        models = out["models"] + ([extra] if extra else [])
        Path(args.out).write_text(json.dumps(out | {"models": models}, indent=2) + "\n")

    for name in args.models:
        entry = {"model": name, "runs": []}
        for rtol, atol in tolerances:
            problem = petab.load(DATA / name / f"{name}.yaml", rtol=rtol, atol=atol)
            entry["parameters"] = list(problem.parameter_ids)
            x0 = problem.x_nominal
            points = [("nominal", x0)]
            for k in range(1, args.points):
                signs = np.random.default_rng(k).choice([-1.0, 1.0], size=x0.size)
                x = np.clip(x0 + 0.3 * signs, problem.lower, problem.upper)
                points.append((f"nominal ±0.3 (signs seed {k})", x))
            run = {"rtol": rtol, "atol": atol, "points": []}
            entry["runs"].append(run)
            for label, x in points:
                row = {"point": label, "x": x.tolist(), "objective": problem.objective(x)}
                grads = {}
                for mname, method in methods.items():
                    times = []
                    for _ in range(2):
                        load = os.getloadavg()[0]
                        t = time.perf_counter()
                        value, g = problem.value_and_gradient(x, sensitivities=method)
                        times.append(time.perf_counter() - t)
                    grads[mname] = g
                    row[mname] = {
                        "gradient": [float(v) for v in g],
                        "value": value,
                        "first_call_s": times[0],
                        "warm_s": times[1],
                        "load_at_warm_call": load,
                    }
                    print(
                        f"{name} rtol {rtol:g} {label} {mname}: {times[0]:.1f} s, "
                        f"warm {times[1]:.2f} s (load {load:.1f})",
                        flush=True,
                    )
                t = time.perf_counter()
                fd = central_difference4(problem.objective, x, args.h)
                row["central_differences"] = {"gradient": fd.tolist(), "s": time.perf_counter() - t}
                ref = grads["forward"]
                row["vs_forward"] = {
                    m: differences(g, ref) for m, g in grads.items() if m != "forward"
                }
                row["vs_central_differences"] = {m: differences(g, fd) for m, g in grads.items()}
                print(
                    f"  vs forward {row['vs_forward']}\n  vs fd {row['vs_central_differences']}",
                    flush=True,
                )
                run["points"].append(row)
                write(entry)
        # the gradients' own accuracy: each run's against the forward gradient of the tightest
        tight = entry["runs"][-1]
        for run in entry["runs"][:-1]:
            for row, ref_row in zip(run["points"], tight["points"], strict=True):
                ref = np.array(ref_row["forward"]["gradient"])
                row["vs_forward_at_tightest_tolerance"] = {
                    m: differences(np.array(row[m]["gradient"]), ref) for m in methods
                }
                vs = row["vs_forward_at_tightest_tolerance"]
                print(f"  {name} {row['point']} vs tightest: {vs}")
        out["models"].append(entry)
        write()


if __name__ == "__main__":
    main()
