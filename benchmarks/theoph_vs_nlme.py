r"""invcal's FOCEI fit of Theoph against R's nlme, side by side.

Model: one-compartment first-order absorption (R's SSfol) written as an ODE and solved with
diffrax (invcal) / in closed form (nlme); log-parameters lKe, lKa, lCl with diagonal random
effects, additive residual error, maximum likelihood:

    nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph,
         fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKe + lKa + lCl ~ 1))

nlme runs Lindstrom & Bates' (1990) alternating algorithm; invcal fits the FOCEI likelihood
(for additive error the same likelihood formula) two ways: ``focei`` maximizes it exactly by
L-BFGS with implicit hypergradients through the conditional modes, ``focei-lb`` (the
default, ``algorithm="auto"``) runs the Lindstrom-Bates algorithm (relinearize, maximize the
linear mixed-effects likelihood, repeat), whose fixed point is nlme's. At nlme's estimates the
script also reports both gradients: the full FOCEI hypergradient and the gradient of the
likelihood linearized there (the one nlme's iteration zeroes). Both read
``problems/data/theoph.csv``. Wall times are taken cold (first fit in a fresh process: JAX
compilation included for invcal) and warm (the same fit again). The R side needs
``Rscript`` with nlme (``apt-get install r-base-core r-cran-nlme``); without it the script
says so and reports invcal alone.

With a full Ω the script also compares nlme's ``random = pdSymm(lKe + lKa + lCl ~ 1)``
with invcal's ``omega="full"`` (``--no-full`` skips it).

    python benchmarks/theoph_vs_nlme.py [--laplace] [--no-full] [--rtol 1e-7] [--out ...]
"""

from __future__ import annotations

import argparse
import json
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

from problems import hierarchical_ode as theo  # noqa: E402

R_SCRIPT = r"""
suppressMessages(library(nlme))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], na.strings = ".")
dose <- d[d$EVID == 1, c("ID", "AMT")]
obs <- d[d$EVID == 0 & d$MDV == 0, ]
obs$Dose <- dose$AMT[match(obs$ID, dose$ID)]
th <- groupedData(DV ~ TIME | ID, data = data.frame(ID = obs$ID, TIME = obs$TIME,
                  DV = obs$DV, Dose = obs$Dose))
pd <- if (args[2] == "pdSymm") pdSymm else pdDiag
fitit <- function() nlme(DV ~ SSfol(Dose, TIME, lKe, lKa, lCl), data = th,
                         fixed = lKe + lKa + lCl ~ 1, random = pd(lKe + lKa + lCl ~ 1))
t_cold <- system.time(fm <- tryCatch(fitit(), error = function(e) {
  cat("error", gsub("\n", " ", conditionMessage(e)), "\n"); quit(status = 0)
}))[["elapsed"]]
t_warm <- min(sapply(1:as.integer(args[3]), function(i) system.time(fitit())[["elapsed"]]))
fe <- fixef(fm)
sds <- as.numeric(VarCorr(fm)[1:3, "StdDev"])
cat("version", as.character(packageVersion("nlme")), "\n")
cat("lKe", format(fe[["lKe"]], digits = 10), "\n")
cat("lKa", format(fe[["lKa"]], digits = 10), "\n")
cat("lCl", format(fe[["lCl"]], digits = 10), "\n")
cat("omega_lKe", format(sds[1], digits = 10), "\n")
cat("omega_lKa", format(sds[2], digits = 10), "\n")
cat("omega_lCl", format(sds[3], digits = 10), "\n")
cat("sigma_add", format(fm$sigma, digits = 10), "\n")
if (args[2] == "pdSymm") {
  cm <- corMatrix(fm$modelStruct$reStruct[[1]])
  cat("corr_lKa_lKe", format(cm[2, 1], digits = 10), "\n")
  cat("corr_lCl_lKe", format(cm[3, 1], digits = 10), "\n")
  cat("corr_lCl_lKa", format(cm[3, 2], digits = 10), "\n")
}
cat("loglik", format(as.numeric(logLik(fm)), digits = 10), "\n")
cat("aic", format(AIC(fm), digits = 10), "\n")
cat("bic", format(BIC(fm), digits = 10), "\n")
se <- sqrt(diag(vcov(fm)))
cat("se_lKe", format(se[["lKe"]], digits = 10), "\n")
cat("se_lKa", format(se[["lKa"]], digits = 10), "\n")
cat("se_lCl", format(se[["lCl"]], digits = 10), "\n")
cat("seconds_cold", t_cold, "\n")
cat("seconds_warm", t_warm, "\n")
"""

NAMES = ("lKe", "lKa", "lCl", "omega_lKe", "omega_lKa", "omega_lCl", "sigma_add")
# The acceptance: fixed effects within 0.01, SDs of lKa, lCl within 5%, residual SD
# within 2%, log-likelihood within 0.5.
TOLERANCES = {
    "lKe": ("abs", 0.01),
    "lKa": ("abs", 0.01),
    "lCl": ("abs", 0.01),
    "omega_lKa": ("rel", 0.05),
    "omega_lCl": ("rel", 0.05),
    "sigma_add": ("rel", 0.02),
    "loglik": ("abs", 0.5),
}


def run_nlme(csv: Path, random: str = "pdDiag", reps: int = 5) -> dict | None:
    rscript = shutil.which("Rscript")
    if rscript is None:
        print("R side skipped: Rscript not found (apt-get install r-base-core r-cran-nlme).")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
        script = f.name
    try:
        proc = subprocess.run(
            [rscript, script, str(csv), random, str(reps)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.unlink(script)
    if proc.returncode != 0:
        print(f"R side skipped: Rscript failed:\n{proc.stderr.strip()[-2000:]}")
        return None
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        out[key] = value.strip() if key in ("version", "error") else float(value)
    if "error" in out:
        print(f"R nlme {random} failed: {out['error']}")
        return None
    return out


def run_invcal(method: str, rtol: float, algorithm: str, omega: str = "diagonal") -> dict:
    t = time.perf_counter()
    fit = theo.fit(approximation=method, rtol=rtol, algorithm=algorithm, omega=omega)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        fit = theo.fit(approximation=method, rtol=rtol, algorithm=algorithm, omega=omega)
        warm.append(time.perf_counter() - t)
    out = {k: fit.theta[k] for k in NAMES if k in fit.theta}
    out.update({f"omega_{p}": v for p, v in fit.random_sd.items()})
    out.update({f"corr_{p}_{r}": v for (p, r), v in fit.random_corr.items()})
    out.update(
        loglik=fit.loglik,
        aic=fit.aic,
        bic=fit.bic,
        se_lKe=fit.standard_errors["lKe"],
        se_lKa=fit.standard_errors["lKa"],
        se_lCl=fit.standard_errors["lCl"],
        seconds_cold=cold,
        seconds_warm=min(warm),
        iterations=fit.iterations,
        evaluations=fit.evaluations,
        converged=fit.converged,
        message=fit.message,
    )
    out["summary"] = fit.summary()
    return out


def gradients_at(theta: dict, rtol: float) -> dict:
    """Why the exact FOCEI maximum is not nlme's estimate: at ``theta`` (nlme's), the full
    hypergradient of −log-likelihood (which follows the linearization point through
    η*(θ)) against the gradient of the linear mixed-effects likelihood linearized there
    (what nlme's algorithm zeroes), both in the unconstrained z (log SDs)."""
    import jax.numpy as jnp
    import numpy as np

    from invcal import ode
    from invcal.ode import population as P

    model = theo.theophylline_model(rtol=rtol, atol=rtol * 1e-2)
    events = theo.load_theoph()
    th = {k: theta[k] for k in NAMES}
    obj = ode.population_objective(model, events, th, inner_tol=1e-12)
    pop, _, arrays, space = P._prepare(model, events, th, None, "additive", "focei", None)
    z = space.to_z(space.validate(th))
    theta_j = space.to_theta(z)
    eta = jnp.asarray(obj.eta)

    def lin(e, s):
        phi = pop.phi(e, theta_j, s.cov)
        jets, _ = ode.prediction_jets(model, s, phi, 1)
        return jets[0], jets[1], phi, e

    F0, F1, phi_hat, eta_hat = jax.vmap(lin)(eta, arrays)

    def total(zz):
        vals, _ = jax.vmap(lambda a, b, c, d, s: pop.linearized_value(space, (a, b, c, d), zz, s))(
            F0, F1, phi_hat, eta_hat, arrays
        )
        return jnp.sum(vals)

    g_lin = np.asarray(jax.grad(total)(z))
    names = list(space.names)
    return {
        "loglik": obj.loglik,
        "full_hypergradient": dict(zip(names, obj.grad_z.tolist(), strict=True)),
        "linearized_gradient": dict(zip(names, g_lin.tolist(), strict=True)),
        "full_norm": float(np.linalg.norm(obj.grad_z)),
        "linearized_norm": float(np.linalg.norm(g_lin)),
    }


FULL_NAMES = NAMES + ("corr_lKa_lKe", "corr_lCl_lKe", "corr_lCl_lKa")


def compare_full(rtol: float) -> dict:
    """A full (general positive-definite) Ω: nlme's ``pdSymm(lKe + lKa + lCl ~ 1)`` against
    invcal's ``omega="full"`` (log-Cholesky), by Lindstrom-Bates (the default) and by the
    exact FOCEI maximum (L-BFGS, implicit hypergradients)."""
    ref = run_nlme(theo.THEOPH_CSV, "pdSymm", reps=2)
    fits = {
        "focei-lb": run_invcal("focei", rtol, "auto", omega="full"),
        "focei": run_invcal("focei", rtol, "lbfgs", omega="full"),
    }
    keys = list(FULL_NAMES) + ["loglik", "aic", "bic", "seconds_cold", "seconds_warm"]
    print("\nFull Omega: nlme random = pdSymm(lKe + lKa + lCl ~ 1) vs invcal omega='full'")
    print(f"{'':14s}{'nlme pdSymm':>16s}{'invcal lb':>16s}{'invcal focei':>16s}{'Δ lb':>11s}")
    rows = []
    for k in keys:
        r = None if ref is None else ref.get(k)
        vals = [r, fits["focei-lb"].get(k), fits["focei"].get(k)]
        cells = "".join(f"{'—':>16s}" if v is None else f"{v:16.6g}" for v in vals)
        delta = "" if r is None or k.startswith("seconds") else f"{vals[1] - r:+11.3g}"
        print(f"{k:14s}{cells}{delta}")
        rows.append({"name": k, "nlme": r, **{m: f.get(k) for m, f in fits.items()}})
    print()
    print(fits["focei-lb"]["summary"])
    return {
        "nlme": ref,
        "invcal": {m: {k: v for k, v in f.items() if k != "summary"} for m, f in fits.items()},
        "rows": rows,
    }


def within(name, ours, ref) -> bool | None:
    if name not in TOLERANCES or ref is None:
        return None
    kind, tol = TOLERANCES[name]
    diff = abs(ours - ref)
    return bool(diff <= tol if kind == "abs" else diff <= tol * abs(ref))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--laplace", action="store_true", help="also fit by Laplace")
    ap.add_argument("--rtol", type=float, default=1e-7, help="ODE relative tolerance")
    ap.add_argument(
        "--no-full", action="store_true", help="skip the full-Omega (nlme pdSymm) comparison"
    )
    ap.add_argument(
        "--full-only",
        action="store_true",
        help="run only the full-Omega comparison and update it in the existing JSON",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.full_only:
        path = Path(args.out) / "theoph_vs_nlme.json"
        doc = json.loads(path.read_text())
        doc["full_omega"] = compare_full(args.rtol)
        doc["full_omega"]["load_average"] = os.getloadavg()
        path.write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {path} (full_omega)")
        return 0

    ref = run_nlme(theo.THEOPH_CSV)
    fits = {
        "focei": run_invcal("focei", args.rtol, "lbfgs"),
        # the default (algorithm="auto") for FOCEI with additive error
        "focei-lb": run_invcal("focei", args.rtol, "auto"),
    }
    if args.laplace:
        fits["laplace"] = run_invcal("laplace", args.rtol, "lbfgs")

    cols = ["nlme"] + [f"invcal {m}" for m in fits]
    rows = []
    keys = list(NAMES) + ["loglik", "aic", "bic", "se_lKe", "se_lKa", "se_lCl"]
    keys += ["seconds_cold", "seconds_warm"]
    print()
    head = f"{'':14s}" + "".join(f"{c:>16s}" for c in cols)
    print(head + f"{'Δ focei':>11s}{'Δ focei-lb':>11s}  target met (focei, lb)")
    for k in keys:
        r = None if ref is None else ref.get(k)
        vals = [r] + [f[k] for f in fits.values()]
        deltas, marks, oks = "", [], {}
        for m in ("focei", "focei-lb"):
            ours = fits[m][k]
            skip = r is None or k.startswith("seconds")
            deltas += f"{'':>11s}" if skip else f"{ours - r:+11.3g}"
            oks[m] = within(k, ours, r)
            marks.append("" if oks[m] is None else ("yes" if oks[m] else "NO"))
        cells = "".join(f"{'—':>16s}" if v is None else f"{v:16.6g}" for v in vals)
        print(f"{k:14s}{cells}{deltas}  {', '.join(m for m in marks if m)}")
        rows.append({"name": k, "nlme": r, **{m: f[k] for m, f in fits.items()}, "within": oks})
    print()
    print("focei: exact maximum of the FOCEI likelihood (L-BFGS, implicit hypergradients);")
    print("focei-lb: nlme's Lindstrom-Bates algorithm on the same likelihood (the default).")
    at = gradients_at(ref if ref is not None else theo.NLME_REFERENCE, args.rtol)
    print(
        f"At nlme's estimates: FOCEI log-likelihood {at['loglik']:.4f}; |full hypergradient| "
        f"{at['full_norm']:.3g} (nonzero: not the FOCEI maximum), |gradient of the "
        f"linearized likelihood| {at['linearized_norm']:.3g} (nlme's stopping condition)."
    )
    print()
    print(fits["focei"]["summary"])
    print()
    print(fits["focei-lb"]["summary"])
    full = None if args.no_full else compare_full(args.rtol)

    result = {
        "benchmark": "theoph_vs_nlme",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "rtol": args.rtol,
        "nlme": ref,
        "invcal": {m: {k: v for k, v in f.items() if k != "summary"} for m, f in fits.items()},
        "rows": rows,
        "at_nlme_estimates": at,
        "full_omega": full,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "theoph_vs_nlme.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
