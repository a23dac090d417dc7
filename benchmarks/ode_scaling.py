r"""Time per outer step of a FOCEI population fit against the number of subjects, on one
device and with the subjects split across 2 host devices (jax.sharding).

Synthetic populations of N = 100, 1,000, 10,000 subjects are drawn from the Theoph model
(one-compartment first-order absorption, R's ``SSfol`` closed form for the data): subject i
takes the dose and sampling times of Theoph subject (i mod 12), log-parameters
φᵢ = μ + ηᵢ with nlme's estimates μ, ω, and additive N(0, σ²) noise, σ = 0.7092.

One *outer step* is what every evaluation of :func:`invcal.ode.fit_population`'s L-BFGS
does: at a trial θ (a step Δz away from the last point, ‖Δz‖∞ = 0.05 in the unconstrained
coordinates) solve every subject's inner MAP problem from the first-order prediction
η* + (dη*/dz)Δz of the last solution (warm), then return the FOCEI objective and its
implicit hypergradient. It is timed as the median over ``--reps`` steps along a random walk
in z, after a first (cold) evaluation from η = 0 that also compiles the program.

Each device count runs in its own process: ``--devices 1`` plainly, ``--devices 2`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (this machine has 2 cores); both see
the same random walk, so the objectives, hypergradients and η* they return are compared
(identical results up to the order of the sums over subjects).

    python benchmarks/ode_scaling.py [--sizes 100 1000 10000] [--reps 5] [--out benchmarks/results]

Run timings alone on the machine. The parent process writes
``ode_scaling.json``; ``--child`` is the per-device-count worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRUTH = {
    "lKe": -2.4546,
    "lKa": 0.4655,
    "lCl": -3.2272,
    "omega_lKe": 0.05,  # nlme's is ~0 (1.6e-5); a small SD keeps the synthetic data regular
    "omega_lKa": 0.6439,
    "omega_lCl": 0.1669,
    "sigma_add": 0.7092,
}


def synthetic_table(n: int, seed: int = 0) -> dict:
    """A NONMEM-style table (dict of columns) of n subjects with Theoph's designs."""
    import numpy as np

    from problems.hierarchical_ode import THEOPH_CSV

    base = np.genfromtxt(THEOPH_CSV, delimiter=",", names=True, dtype=float, missing_values=".")
    designs = []
    for sid in np.unique(base["ID"]):
        rows = base[base["ID"] == sid]
        dose = float(rows["AMT"][rows["EVID"] == 1][0])
        times = rows["TIME"][rows["EVID"] == 0]
        designs.append((dose, times))
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV")}
    for i in range(n):
        dose, t = designs[i % len(designs)]
        lke, lka, lcl = (
            TRUTH[p] + TRUTH[f"omega_{p}"] * rng.standard_normal() for p in ("lKe", "lKa", "lCl")
        )
        ke, ka = np.exp(lke), np.exp(lka)
        conc = dose * np.exp(lke + lka - lcl) * (np.exp(-ke * t) - np.exp(-ka * t)) / (ka - ke)
        dv = conc + TRUTH["sigma_add"] * rng.standard_normal(t.size)
        m = t.size + 1
        cols["ID"] += [i + 1] * m
        cols["TIME"] += [0.0, *t.tolist()]
        cols["DV"] += [".", *dv.tolist()]
        cols["AMT"] += [dose] + [0.0] * t.size
        cols["EVID"] += [1] + [0] * t.size
        cols["CMT"] += [1] + [2] * t.size
        cols["MDV"] += [1] + [0] * t.size
    return cols


def child(args) -> dict:
    """Time the outer steps for every size on the devices this process has."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from invcal import ode
    from invcal.ode import loops, sharding
    from invcal.ode import population as P
    from problems.hierarchical_ode import theophylline_model

    model = theophylline_model(rtol=1e-7, atol=1e-9)
    mesh = ode.subject_mesh(args.devices)
    out = {"devices": len(jax.devices()) if mesh is None else mesh.size, "sizes": {}}
    for n in args.sizes:
        t0 = time.perf_counter()
        events = ode.read_events(synthetic_table(n), source=f"synthetic Theoph ({n})")
        pop, events, arrays, space = P._prepare(
            model, events, TRUTH, None, "additive", "focei", None
        )
        prep = time.perf_counter() - t0
        opts = loops._options(0, 1.0, 1.0, 1e-9, 50, 1.0, min_iter=0)
        chunk = None if args.chunk <= 0 else args.chunk
        a, eta0, valid = sharding._shard_subjects(arrays, jnp.zeros((n, pop.n_random)), mesh)
        z = space.to_z(space.validate(dict(TRUTH)))

        def step(z_t, eta_guess):
            run = loops._fit_lbfgs(pop, space, a, z_t, eta_guess, opts, valid, mesh, chunk)
            return jax.block_until_ready(run)

        t0 = time.perf_counter()
        run = step(z, eta0)
        cold = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        times, rows = [], []
        for _ in range(args.reps):
            dz = rng.uniform(-0.05, 0.05, z.shape[0])
            # the L-BFGS evaluation's warm start: eta* + (deta*/dz) dz
            guess = run["eta"] + run["info"]["deta_dz"] @ dz
            z = z + dz
            t0 = time.perf_counter()
            run = step(z, guess)
            times.append(time.perf_counter() - t0)
            steps = np.asarray(run["info"]["inner_steps"])[:n]
            conv = np.asarray(run["info"]["inner_converged"])[:n]
            step_len = np.asarray(run["info"]["inner_step"])[:n]
            rows.append(
                {
                    "value": float(run["f"]),
                    "grad_z": np.asarray(run["g"]).tolist(),
                    "eta_sum_abs": float(np.abs(np.asarray(run["eta"])[:n]).sum()),
                    "eta_head": np.asarray(run["eta"])[:3].tolist(),
                    "max_inner_steps": int(steps.max()),
                    # inner fits not converged, and converged at the noise floor of L
                    "inner_unconverged": int((~conv).sum()),
                    "inner_noise_floor": int((conv & (step_len > 1e-9)).sum()),
                }
            )
        ok = np.asarray(run["info"]["ok"])[:n]
        out["sizes"][str(n)] = {
            "prep_seconds": prep,
            "cold_seconds": cold,
            "step_seconds": times,
            "step_median": float(np.median(times)),
            "all_subjects_ok": bool(ok.all()),
            "steps": rows,
        }
        print(
            f"  [{out['devices']} device(s)] N={n:>6}: prep {prep:6.1f} s, cold {cold:6.1f} s, "
            f"warm step median {np.median(times):8.3f} s",
            file=sys.stderr,
            flush=True,
        )
    return out


def run_child(devices: int, args) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = env.get("XLA_FLAGS", "")
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = flags.strip()
    cmd = [sys.executable, __file__, "--child", "--devices", str(devices), "--reps", str(args.reps)]
    cmd += ["--chunk", str(args.chunk)]
    cmd += ["--sizes", *map(str, args.sizes)]
    # a hung child must not hold the machine: give up well before an exclusive run's cap
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, text=True, check=True, timeout=args.timeout
    )
    return json.loads(proc.stdout)


def compare(a: dict, b: dict) -> dict:
    """Largest differences between two device counts' results along the same walk."""
    import numpy as np

    dv, dg, de = 0.0, 0.0, 0.0
    # the same walk: compare the steps both runs took (runs merged from --reps differing)
    for ra, rb in zip(a["steps"], b["steps"], strict=False):
        dv = max(dv, abs(ra["value"] - rb["value"]) / abs(ra["value"]))
        ga, gb = np.asarray(ra["grad_z"]), np.asarray(rb["grad_z"])
        dg = max(dg, float(np.linalg.norm(ga - gb) / np.linalg.norm(ga)))
        de = max(de, float(np.max(np.abs(np.subtract(ra["eta_head"], rb["eta_head"])))))
        de = max(de, abs(ra["eta_sum_abs"] - rb["eta_sum_abs"]) / ra["eta_sum_abs"])
    return {"value_rel": dv, "grad_rel": dg, "eta": de}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--chunk", type=int, default=128, help="subjects per vmapped chunk (0: all at once)"
    )
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--merge",
        action="store_true",
        help="take the device counts not run now from the existing ode_scaling.json "
        "(to split the run: --devices 1 --sizes 100 1000, then --devices 1 --sizes 10000 "
        "--merge, ...)",
    )
    ap.add_argument(
        "--timeout", type=float, default=400.0, help="seconds before a child run is killed"
    )
    ap.add_argument(
        "--chunk-comparison",
        action="store_true",
        help="record this run (e.g. --chunk 512) under 'chunk_comparison' in the existing "
        "ode_scaling.json instead of replacing its main table",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.devices = args.devices[0]
        json.dump(child(args), sys.stdout)
        return

    path = Path(args.out) / "ode_scaling.json"
    results = {d: run_child(d, args) for d in args.devices}
    if args.chunk_comparison:
        doc = json.loads(path.read_text())
        comp = doc.setdefault("chunk_comparison", {})
        for d, r in results.items():
            for n, entry in r["sizes"].items():
                key = f"chunk{args.chunk}_{d}dev_{n}"
                comp[key] = {
                    "chunk_size": args.chunk,
                    "devices": d,
                    "subjects": int(n),
                    "step_median": entry["step_median"],
                    "step_seconds": entry["step_seconds"],
                    "cold_seconds": entry["cold_seconds"],
                    "max_inner_steps": max(s["max_inner_steps"] for s in entry["steps"]),
                }
                print(f"chunk {args.chunk}, {d} device(s), N={n}: {entry['step_median']:.3f} s")
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path} (chunk_comparison)")
        return
    if args.merge and path.exists():
        # keep earlier runs' (device count, size) entries that this run did not redo
        old = json.loads(path.read_text())["raw"]
        for d, r in old.items():
            new = results.setdefault(int(d), {"devices": r["devices"], "sizes": {}})
            for n, entry in r["sizes"].items():
                new["sizes"].setdefault(n, entry)
        args.devices = sorted(results)
        common = set.intersection(*(set(results[d]["sizes"]) for d in args.devices))
        args.sizes = sorted(int(n) for n in common)
    table = []
    print(f"\n{'N':>7} " + " ".join(f"{f'{d} dev step (s)':>16}" for d in args.devices), end="")
    print(f" {'speedup':>8} {'value rel diff':>15} {'grad rel diff':>14}")
    for n in args.sizes:
        row = {"subjects": n}
        for d in args.devices:
            r = results[d]["sizes"][str(n)]
            row[f"step_seconds_{d}dev"] = r["step_median"]
            row[f"cold_seconds_{d}dev"] = r["cold_seconds"]
            row[f"prep_seconds_{d}dev"] = r["prep_seconds"]
            row[f"max_inner_steps_{d}dev"] = max(s["max_inner_steps"] for s in r["steps"])
            row[f"all_subjects_ok_{d}dev"] = r["all_subjects_ok"]
        if len(args.devices) > 1:
            d0, d1 = args.devices[0], args.devices[-1]
            row["speedup"] = row[f"step_seconds_{d0}dev"] / row[f"step_seconds_{d1}dev"]
            row["difference"] = compare(results[d0]["sizes"][str(n)], results[d1]["sizes"][str(n)])
        table.append(row)
        cells = " ".join(f"{row[f'step_seconds_{d}dev']:16.3f}" for d in args.devices)
        extra = ""
        if "speedup" in row:
            diff = row["difference"]
            extra = f" {row['speedup']:8.2f} {diff['value_rel']:15.2e} {diff['grad_rel']:14.2e}"
        print(f"{n:>7} {cells}{extra}")
    growth = {}
    for d in args.devices:
        for lo, hi in zip(args.sizes[:-1], args.sizes[1:], strict=True):
            r = (
                results[d]["sizes"][str(hi)]["step_median"]
                / results[d]["sizes"][str(lo)]["step_median"]
            )
            growth[f"{d}dev_{lo}_to_{hi}"] = {"time_ratio": r, "size_ratio": hi / lo}
            print(f"{d} device(s): step time x{r:.2f} from {lo} to {hi} subjects (x{hi / lo:g})")

    import jax

    out = {
        "benchmark": "ode_scaling",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "load_average": os.getloadavg(),
        },
        "truth": TRUTH,
        "reps": args.reps,
        "chunk_size": args.chunk,
        "step": "FOCEI objective + implicit hypergradient, inner solves warm-started from "
        "the first-order prediction, |dz|_inf <= 0.05 per step",
        "table": table,
        "growth": growth,
        "raw": {str(d): results[d] for d in args.devices},
    }
    if path.exists() and "chunk_comparison" in json.loads(path.read_text()):
        out["chunk_comparison"] = json.loads(path.read_text())["chunk_comparison"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
