r"""Inter-occasion variability (``invcal calibrate --iov``): against R's nlme, and recovery.

**Against nlme.** IIV plus IOV is a model with random effects nested in two levels, subject
and occasion within subject, which nlme fits by the same Lindstrom–Bates algorithm as
invcal's default for FOCEI with additive error:

    nlme(DV ~ f(Dose, TAD, lKa, lCl, lV), fixed = lKa + lCl + lV ~ 1,
         random = list(ID = pdDiag(lKa + lCl + lV ~ 1), OCC = pdDiag(lCl ~ 1)),
         groups = ~ ID/OCC, method = "ML")

with f the one-compartment oral closed form in the time after the occasion's dose. The data:
1cmt-oral, 24 subjects × 2 occasions 500 h apart (no carry-over between occasions, which the
closed form ignores), a 100 mg dose and 8 samples over 24 h per occasion, IIV on every
parameter, IOV on lCl (π = 0.2), additive error. Both read the same CSV; the script reports
both fits side by side (estimates, SDs, log-likelihood, nlme's SEs of the fixed effects
against invcal's ``--covariance lme``). Needs ``Rscript`` with nlme (``apt-get install
r-base-core r-cran-nlme``); without it that part is skipped.

**Recovery.** ``tests/test_ode_iov.py``'s design (occasions a week apart, proportional
error, FOCEI by L-BFGS) for several seeds: each estimate's distance from the truth in SEs
(z) and whether its 95% CI holds the truth.

    python benchmarks/iov.py [--seeds 5] [--no-nlme] [--out benchmarks/results/iov.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from invcal import ode  # noqa: E402
from invcal.ode.calibrate import calibrate  # noqa: E402
from invcal.ode.models import builtin_model  # noqa: E402

R_SCRIPT = r"""
suppressMessages(library(nlme))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], na.strings = ".")
dose <- d[d$EVID == 1, ]
obs <- d[d$EVID == 0, ]
key <- paste(obs$ID, obs$OCC)
dkey <- paste(dose$ID, dose$OCC)
obs$Dose <- dose$AMT[match(key, dkey)]
obs$TAD <- obs$TIME - dose$TIME[match(key, dkey)]
f1 <- function(Dose, TAD, lKa, lCl, lV) {
  ka <- exp(lKa); v <- exp(lV); k <- exp(lCl) / v
  Dose * ka / (v * (ka - k)) * (exp(-k * TAD) - exp(-ka * TAD))
}
t0 <- proc.time()[["elapsed"]]
fm <- nlme(DV ~ f1(Dose, TAD, lKa, lCl, lV), data = obs, fixed = lKa + lCl + lV ~ 1,
           random = list(ID = pdDiag(lKa + lCl + lV ~ 1), OCC = pdDiag(lCl ~ 1)),
           groups = ~ ID / OCC, start = c(lKa = 0, lCl = 0.7, lV = 3.4), method = "ML",
           control = nlmeControl(tolerance = 1e-8, pnlsTol = 1e-6, msMaxIter = 200))
secs <- proc.time()[["elapsed"]] - t0
fe <- fixef(fm)
id <- as.matrix(fm$modelStruct$reStruct$ID)
occ <- as.matrix(fm$modelStruct$reStruct$OCC)
cat("version", as.character(packageVersion("nlme")), "\n")
for (p in c("lKa", "lCl", "lV")) cat(p, format(fe[[p]], digits = 12), "\n")
sdid <- sqrt(diag(id)) * fm$sigma
cat("omega_lKa", format(sdid[1], digits = 12), "\n")
cat("omega_lCl", format(sdid[2], digits = 12), "\n")
cat("omega_lV", format(sdid[3], digits = 12), "\n")
cat("iov_lCl", format(sqrt(occ[1, 1]) * fm$sigma, digits = 12), "\n")
cat("sigma_add", format(fm$sigma, digits = 12), "\n")
cat("loglik", format(as.numeric(logLik(fm)), digits = 12), "\n")
se <- sqrt(diag(vcov(fm)))
for (p in c("lKa", "lCl", "lV")) cat(paste0("se_", p), format(se[[p]], digits = 12), "\n")
cat("seconds", secs, "\n")
"""

NLME_TRUTH = {
    "lKa": math.log(1.0),
    "lCl": math.log(2.0),
    "lV": math.log(30.0),
    "omega_lKa": 0.3,
    "omega_lCl": 0.25,
    "omega_lV": 0.2,
    "iov_lCl": 0.2,
    "sigma_add": 0.15,
}


def nlme_table(path: Path, n: int = 24, seed: int = 7) -> Path:
    """The nlme comparison's data (module docstring): ``path``, written."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        for k in range(2):
            rows.append((i, 500.0 * k, None, 100.0, 1, k + 1))
            rows += [(i, 500.0 * k + t, 0.0, 0.0, 0, k + 1) for t in (0.5, 1, 2, 4, 6, 8, 12, 24)]
    cols = dict(
        zip(["ID", "TIME", "DV", "AMT", "EVID", "OCC"], zip(*rows, strict=True), strict=True)
    )
    cols["DV"] = ["." if v is None else v for v in cols["DV"]]
    ev = ode.read_events(cols)
    params = {
        p: NLME_TRUTH[p] + rng.standard_normal(n) * NLME_TRUTH[f"omega_{p}"]
        for p in ("lKa", "lCl", "lV")
    }
    kappa = rng.standard_normal((n, 2)) * NLME_TRUTH["iov_lCl"]
    sim = ode.simulate(
        builtin_model("1cmt-oral").build(), ev, params, occasion_effects={"lCl": kappa}
    )
    f = np.concatenate([sim[s][1] for s in ev.subjects])
    dv = iter(f + NLME_TRUTH["sigma_add"] * rng.standard_normal(f.size))
    lines = ["ID,TIME,DV,AMT,EVID,OCC"]
    for i, t, _, amt, evid, o in rows:
        lines.append(f"{i},{t:g},{'.' if evid else f'{next(dv):.8g}'},{amt:g},{evid},{o}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_nlme(csv: Path) -> dict | None:
    rscript = shutil.which("Rscript")
    if rscript is None:
        print("R side skipped: Rscript not found (apt-get install r-base-core r-cran-nlme).")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
        script = f.name
    try:
        proc = subprocess.run(
            [rscript, script, str(csv)], capture_output=True, text=True, timeout=600
        )
    finally:
        os.unlink(script)
    if proc.returncode != 0:
        print(f"R side failed:\n{proc.stderr.strip()[-2000:]}")
        return None
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        out[key] = value.strip() if key == "version" else float(value)
    return out


def run_invcal_nlme(csv: Path) -> dict:
    t = time.perf_counter()
    cal = calibrate(
        str(csv), "1cmt-oral", error="additive", iov=["lCl"], covariance="lme", n_simulations=0
    )
    fit = cal.fit
    out = dict(fit.fixed_effects)
    out.update({f"omega_{p}": v for p, v in fit.random_sd.items()})
    out.update({f"iov_{p}": v for p, v in fit.iov_sd.items()})
    out["sigma_add"] = fit.residual_sd
    out["loglik"] = fit.loglik
    out.update({f"se_{p}": cal.standard_errors[p] for p in ("lKa", "lCl", "lV")})
    out.update(
        seconds=time.perf_counter() - t,
        algorithm=fit.algorithm,
        converged=fit.converged,
        iterations=fit.iterations,
        message=fit.message,
    )
    return out


def recovery(seed: int) -> dict:
    from test_ode_iov import IOV_TRUTH, iov_population_table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "iov.csv"
        realized = iov_population_table(path, seed=seed)
        t = time.perf_counter()
        cal = calibrate(str(path), "1cmt-oral", error="proportional", iov=["lCl"], n_simulations=0)
        seconds = time.perf_counter() - t
    rows = {}
    for r in cal.estimates:
        truth = IOV_TRUTH[r["name"]]
        rows[r["name"]] = {
            "truth": truth,
            "realized": realized.get(r["name"]),
            "estimate": r["value"],
            "se": r["se"],
            "ci": [r["ci_low"], r["ci_high"]],
            "z": (r["value"] - truth) / r["se"],
            "covered": bool(r["ci_low"] <= truth <= r["ci_high"]),
        }
    return {
        "seed": seed,
        "converged": cal.fit.converged,
        "seconds": seconds,
        "seconds_parts": cal.seconds,
        "estimates": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-nlme", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "iov.json"))
    args = ap.parse_args()
    result = {"machine": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__}
    if not args.no_nlme:
        with tempfile.TemporaryDirectory() as tmp:
            csv = nlme_table(Path(tmp) / "iov_nlme.csv")
            r = run_nlme(csv)
            inv = run_invcal_nlme(csv)
        result["nlme"] = {"truth": NLME_TRUTH, "nlme": r, "invcal": inv}
        if r is not None:
            print(f"{'':12s} {'nlme':>14s} {'invcal':>14s} {'diff':>10s}")
            for k, v in r.items():
                if isinstance(v, float) and k in inv and k != "seconds":
                    print(f"{k:12s} {v:14.8f} {inv[k]:14.8f} {inv[k] - v:10.2e}")
    result["recovery"] = []
    for seed in range(args.seeds):
        rec = recovery(seed)
        result["recovery"].append(rec)
        zs = ", ".join(f"{k} {v['z']:+.2f}" for k, v in rec["estimates"].items())
        print(
            f"seed {seed}: {sum(v['covered'] for v in rec['estimates'].values())}/"
            f"{len(rec['estimates'])} CIs hold the truth; z: {zs} ({rec['seconds']:.0f} s)"
        )
    if result["recovery"]:
        allz = [v["covered"] for rec in result["recovery"] for v in rec["estimates"].values()]
        result["coverage"] = float(np.mean(allz))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
