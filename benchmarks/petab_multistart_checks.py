"""Checks behind the Boehm multistart's low success rate (issue 18 item 4): are the starts,
the objective, its gradient and the hierarchical problem right away from the nominal point?

    python benchmarks/petab_multistart_checks.py [--points 6] [--starts 100]

1. The seeded Latin-hypercube starts (``petab.calibrate``'s) lie one per 1/n stratum of
   every parameter's PEtab scale (log10 here) within the bounds.
2. At the first ``--points`` starts: invcal's objective against an independent one (the
   reactions written by hand from the SBML model's kinetic laws, PEtab's observable
   formulas and normal noise, integrated by scipy's Radau at rtol 1e-12, atol 1e-14); the
   forward-sensitivity gradient against central differences (h 1e-4) of that independent
   objective; the hierarchical value against the flat objective at the closed-form
   sigmas, the flat gradient in the sigmas there (zero at an inner optimum), and the
   hierarchical gradient against the flat one in the dynamic parameters.
3. Of ``--starts`` starts, how many begin on the plateau at 249.746 (the hierarchical value
   where the simulated signals are flat), and the gradient there.

Writes benchmarks/results/petab_multistart_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp

ROOT = Path(__file__).resolve().parents[1]
D = ROOT / "tests" / "data" / "petab" / "Boehm_JProteomeRes2014"
meas = pd.read_csv(D / "measurementData_Boehm_JProteomeRes2014.tsv", sep="\t")

IDS = [
    "Epo_degradation_BaF3",
    "k_exp_hetero",
    "k_exp_homo",
    "k_imp_hetero",
    "k_imp_homo",
    "k_phos",
    "sd_pSTAT5A_rel",
    "sd_pSTAT5B_rel",
    "sd_rSTAT5A_rel",
]
# compartment sizes (SBML), fixed parameters (parameter table)
cyt, nuc, ratio, specC17 = 1.4, 0.45, 0.693, 0.107


def rhs(t, s, p):
    """The nine reactions of the SBML model (kinetic laws as written there), in concentrations."""
    A, B, pApB, pApA, pBpB, nApA, nApB, nBpB = s
    epo = 1.25e-7 * np.exp(-p["Epo_degradation_BaF3"] * t)
    v1 = cyt * epo * A**2 * p["k_phos"]
    v2 = cyt * epo * A * B * p["k_phos"]
    v3 = cyt * epo * B**2 * p["k_phos"]
    v4 = cyt * p["k_imp_homo"] * pApA
    v5 = cyt * p["k_imp_hetero"] * pApB
    v6 = cyt * p["k_imp_homo"] * pBpB
    v7 = nuc * p["k_exp_homo"] * nApA
    v8 = nuc * p["k_exp_hetero"] * nApB
    v9 = nuc * p["k_exp_homo"] * nBpB
    return np.array(
        [
            (-2 * v1 - v2 + 2 * v7 + v8) / cyt,
            (-v2 - 2 * v3 + v8 + 2 * v9) / cyt,
            (v2 - v5) / cyt,
            (v1 - v4) / cyt,
            (v3 - v6) / cyt,
            (v4 - v7) / nuc,
            (v5 - v8) / nuc,
            (v6 - v9) / nuc,
        ]
    )


def nllh(x_log10, method="Radau", rtol=1e-12, atol=1e-14):
    p = dict(zip(IDS, 10.0 ** np.asarray(x_log10), strict=True))
    s0 = [207.6 * ratio, 207.6 - 207.6 * ratio, 0, 0, 0, 0, 0, 0]
    ts = np.sort(meas.time.unique())
    sol = solve_ivp(rhs, (0, ts[-1]), s0, method=method, t_eval=ts, rtol=rtol, atol=atol, args=(p,))
    if not sol.success:
        return np.inf
    A, B, pApB, pApA, pBpB = sol.y[:5]
    c = specC17
    obs = {
        "pSTAT5A_rel": (100 * pApB + 200 * pApA * c) / (pApB + A * c + 2 * pApA * c),
        "pSTAT5B_rel": -(100 * pApB - 200 * pBpB * (c - 1))
        / ((B * (c - 1) - pApB) + 2 * pBpB * (c - 1)),
        "rSTAT5A_rel": (100 * pApB + 100 * A * c + 200 * pApA * c)
        / (2 * pApB + A * c + 2 * pApA * c - B * (c - 1) - 2 * pBpB * (c - 1)),
    }
    sd = {
        "pSTAT5A_rel": p["sd_pSTAT5A_rel"],
        "pSTAT5B_rel": p["sd_pSTAT5B_rel"],
        "rSTAT5A_rel": p["sd_rSTAT5A_rel"],
    }
    total = 0.0
    for r in meas.itertuples():
        y = obs[r.observableId][np.searchsorted(ts, r.time)]
        s = sd[r.observableId]
        total += 0.5 * np.log(2 * np.pi * s**2) + 0.5 * ((r.measurement - y) / s) ** 2
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/petab_multistart_checks.json")
    )
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    from invcal.ode import petab
    from invcal.ode.petab.hierarchical import hierarchical_problem
    from invcal.ode.petab.multistart import start_points

    p = petab.load(D / "Boehm_JProteomeRes2014.yaml")
    assert list(p.parameter_ids) == IDS, p.parameter_ids
    h = hierarchical_problem(p)
    outer, inner = list(h.outer), list(h.inner)
    out = {"benchmark": "petab_multistart_checks", "load_at_start": os.getloadavg()[0]}
    pts = start_points(p, args.starts, 0)
    strata = np.floor((pts - p.lower) / (p.upper - p.lower) * args.starts).astype(int)
    out["lhs_one_point_per_stratum_in_every_dimension"] = all(
        sorted(strata[:, j]) == list(range(args.starts)) for j in range(pts.shape[1])
    )
    out["scales"], out["lower"], out["upper"] = list(p.scales), p.lower.tolist(), p.upper.tolist()
    rows = []
    for k in range(args.points):
        x = pts[k]
        g = p.gradient(x)
        gs = np.array([(nllh(x + e) - nllh(x - e)) / 2e-4 for e in np.eye(x.size) * 1e-4])
        vh, gh, ok, eta = h.evaluate(x[outer], petab.Forward())
        xf = h.full_x(x[outer], eta)
        gf = p.gradient(xf)
        rows.append(
            {
                "start": k,
                "x": x.tolist(),
                "invcal": p.objective(x),
                "independent_radau": float(nllh(x)),
                "gradient_vs_independent_differences": float(
                    np.max(np.abs(g - gs)) / np.max(np.abs(g))
                ),
                "hierarchical": vh,
                "flat_at_closed_form_sigmas": p.objective(xf),
                "independent_at_closed_form_sigmas": float(nllh(xf)),
                "flat_gradient_in_sigmas_there": gf[inner].tolist(),
                "hierarchical_vs_flat_gradient": float(
                    np.max(np.abs(gh - gf[outer])) / np.max(np.abs(gh))
                ),
            }
        )
        print(rows[-1], flush=True)
    out["points"] = rows
    t = time.perf_counter()
    vals, gmax = [], []
    for x in pts:
        v, g, ok, _ = h.evaluate(x[outer], petab.Forward())
        vals.append(v)
        gmax.append(float(np.max(np.abs(g))) if ok else None)
    vals = np.array(vals)
    plateau = np.abs(vals - 249.746) < 0.01
    out["plateau"] = {
        "starts": args.starts,
        "on_plateau_249.746_at_start": int(plateau.sum()),
        "within_2_of_it": int(np.sum(np.abs(vals - 249.746) < 2)),
        "not_finite": int(np.sum(~np.isfinite(vals))),
        "median_max_abs_gradient_on_plateau": float(
            np.median([g for g, q in zip(gmax, plateau, strict=True) if q and g is not None])
        ),
        "hierarchical_start_values": vals.tolist(),
        "seconds": time.perf_counter() - t,
    }
    print({k: v for k, v in out["plateau"].items() if k != "hierarchical_start_values"})
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
