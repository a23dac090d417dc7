r"""A calibration's files: ``results.json``, ``estimates.csv``, ``diagnostics.csv``,
``report.md`` and its figures (what users of nlme, NONMEM, Monolix read first).

- Estimates with SE, RSE% and 95% CI for the fixed effects, ω (SDs; correlations for a full
  Ω) and σ; the covariance method; the correlation matrix of the estimates and its
  condition number; η- and ε-shrinkage; −2LL, AIC, BIC.
- Figures: DV vs PRED and vs IPRED with identity lines, CWRES vs TIME and vs PRED
  (``gof.png``); individual fits on a grid of subjects (``individual_fits.png``); NPDE
  (``npde.png``); the visual predictive check (``vpc.png``); η against each covariate
  (``eta_covariates.png``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

__all__ = ["write_calibration"]

#: Most subjects drawn in the individual-fits grid.
MAX_SUBJECTS = 24


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _g(v, digits=4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "-" if math.isnan(f) else ("inf" if f > 0 else "-inf")
    return f"{f:.{digits}g}"


def write_calibration(cal, out, *, fit_record: dict | None = None) -> Path:
    """Write every file of calibration ``cal`` into folder ``out``; return report.md's path.
    ``fit_record``: the fit's own results.json (:func:`invcal.ode.fit_population`'s, with
    its outer state), kept under ``fit_record`` so that ``--resume`` can continue from it."""
    from ..outer import atomic_write_json
    from ..runfolder import RESULTS_FILE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_estimates(cal, out / "estimates.csv")
    _write_diagnostics(cal, out / "diagnostics.csv")
    figures = _figures(cal, out)
    results = cal.to_json()
    results["figures"] = [list(f) for f in figures]
    if fit_record and fit_record.get("kind") == "fit_population":
        results["fit_record"] = fit_record
    atomic_write_json(out / RESULTS_FILE, results)
    path = out / "report.md"
    path.write_text(_markdown(cal, figures))
    return path


def _write_estimates(cal, path):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["parameter", "kind", "estimate", "se", "rse_percent", "ci95_low", "ci95_high"])
        for r in cal.estimates:
            w.writerow(
                [r["name"], r["kind"], r["value"], r["se"], r["rse"], r["ci_low"], r["ci_high"]]
            )


def _write_diagnostics(cal, path):
    d = cal.diagnostics
    keys = ("ID", "TIME", "DV", "PRED", "IPRED", "IWRES", "CWRES", "NPDE")
    vbin = cal.vpc.get("bin")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys + (("VPC_BIN",) if vbin else ()))
        for i in range(len(d["ID"])):
            w.writerow([d[k][i] for k in keys] + ([vbin[i]] if vbin else []))


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def _identity(ax, x, y):
    lo, hi = float(min(np.min(x), np.min(y))), float(max(np.max(x), np.max(y)))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)


def _figures(cal, out: Path) -> list[tuple[str, str]]:
    plt = _pyplot()
    d = cal.diagnostics
    figs = []

    fig, axes = plt.subplots(2, 2, figsize=(9, 7.5))
    for ax, x, name in ((axes[0][0], d["PRED"], "PRED"), (axes[0][1], d["IPRED"], "IPRED")):
        ax.plot(x, d["DV"], "o", ms=3, alpha=0.7)
        _identity(ax, x, d["DV"])
        ax.set_xlabel(name)
        ax.set_ylabel("DV")
        ax.set_title(f"DV vs {name} (line: identity)", fontsize=10)
    for ax, x, name in ((axes[1][0], d["TIME"], "TIME"), (axes[1][1], d["PRED"], "PRED")):
        ax.plot(x, d["CWRES"], "o", ms=3, alpha=0.7)
        ax.axhline(0.0, color="k", lw=0.8)
        for yv in (-2.0, 2.0):
            ax.axhline(yv, color="k", lw=0.5, ls=":")
        ax.set_xlabel(name)
        ax.set_ylabel("CWRES")
        ax.set_title(f"CWRES vs {name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "gof.png", dpi=110)
    plt.close(fig)
    figs.append(("Goodness of fit: DV vs PRED and IPRED, CWRES vs TIME and PRED", "gof.png"))

    subjects = list(cal.events.subjects)[:MAX_SUBJECTS]
    fig = cal.fit.plot_subjects(subjects=subjects)
    fig.savefig(out / "individual_fits.png", dpi=100)
    plt.close(fig)
    more = (
        f" (the first {MAX_SUBJECTS} of {cal.fit.n_subjects})"
        if cal.fit.n_subjects > MAX_SUBJECTS
        else ""
    )
    figs.append((f"Individual fits: DV, IPRED and PRED per subject{more}", "individual_fits.png"))

    npde = d["NPDE"]
    finite = np.isfinite(npde)
    if finite.any():
        t_npde = d["TIME"][finite]
        npde = npde[finite]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        axes[0].hist(npde, bins=min(30, max(5, npde.size // 6)), density=True, alpha=0.7)
        xs = np.linspace(-4, 4, 200)
        axes[0].plot(xs, np.exp(-0.5 * xs**2) / math.sqrt(2 * math.pi), "k-", lw=0.8)
        axes[0].set_title("NPDE histogram vs N(0, 1)", fontsize=10)
        from scipy.special import ndtri

        n = npde.size
        theo = ndtri((np.arange(1, n + 1) - 0.5) / n)
        axes[1].plot(theo, np.sort(npde), "o", ms=3)
        axes[1].plot([-3, 3], [-3, 3], "k-", lw=0.8)
        axes[1].set_xlabel("N(0, 1) quantiles")
        axes[1].set_ylabel("NPDE")
        axes[1].set_title("NPDE QQ plot", fontsize=10)
        axes[2].plot(t_npde, npde, "o", ms=3, alpha=0.7)
        axes[2].axhline(0.0, color="k", lw=0.8)
        axes[2].set_xlabel("TIME")
        axes[2].set_ylabel("NPDE")
        axes[2].set_title("NPDE vs TIME", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "npde.png", dpi=110)
        plt.close(fig)
        figs.append(("Normalized prediction distribution errors (NPDE)", "npde.png"))

    bins = cal.vpc.get("bins") or []
    if bins:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        t = np.array([b["time"] for b in bins])
        d_obs = cal.diagnostics
        ax.plot(d_obs["TIME"], _vpc_dv(cal), "o", ms=2.5, color="0.6", alpha=0.6)
        colors = ("C0", "C3", "C0")
        for k, (q, color) in enumerate(zip(cal.vpc["percentiles"], colors, strict=True)):
            lo = [b["simulated_lo"][k] for b in bins]
            hi = [b["simulated_hi"][k] for b in bins]
            ax.fill_between(t, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(t, [b["observed"][k] for b in bins], "-", color=color, label=f"observed {q}th")
        ax.set_xlabel("TIME")
        ax.set_ylabel("prediction-corrected DV" if cal.vpc["prediction_corrected"] else "DV")
        ax.set_title(
            f"VPC: observed percentiles, {cal.vpc['interval']}% intervals of "
            f"{cal.vpc['n_simulations']} simulations",
            fontsize=10,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "vpc.png", dpi=110)
        plt.close(fig)
        figs.append(("Visual predictive check", "vpc.png"))

    covs = cal.covariate_values
    if covs and cal.fit.eta:
        etas = list(cal.fit.eta)
        fig, axes = plt.subplots(
            len(etas), len(covs), figsize=(3 * len(covs), 2.6 * len(etas)), squeeze=False
        )
        for i, p in enumerate(etas):
            for j, (c, v) in enumerate(covs.items()):
                ax = axes[i][j]
                ax.plot(v, cal.fit.eta[p], "o", ms=3)
                ax.axhline(0.0, color="k", lw=0.8)
                ax.set_xlabel(c)
                ax.set_ylabel(f"eta {p}")
        fig.tight_layout()
        fig.savefig(out / "eta_covariates.png", dpi=100)
        plt.close(fig)
        figs.append(
            ("Random effects against the covariates (baseline values)", "eta_covariates.png")
        )
    return figs


def _vpc_dv(cal):
    return np.asarray(cal.vpc.get("dv", cal.diagnostics["DV"]), dtype=float)


# --------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------
def _markdown(cal, figures) -> str:
    fit = cal.fit
    o = cal.options
    lines = [
        f"# Population calibration: {fit.source}, model {cal.model_name}",
        "",
        f"- data: {fit.source}; {fit.n_subjects} subjects, {fit.n_obs} observations",
        f"- model: {cal.model_name}; random effects on {', '.join(o['random'])} "
        f"({o['omega']} Omega); {o['error']} residual error",
        f"- estimation: {fit.method} ({fit.algorithm}); {fit.message}; {fit.iterations} iterations",
        f"- covariance of the estimates: {_COV_TEXT[cal.covariance]}",
        "- observations below the limit of quantification: "
        + {
            "none": "none in the table",
            "M3": f"{o['n_censored']}, M3 likelihood P(y < limit) (their residuals and "
            "NPDE are not defined: left out)",
            "M1": f"{o['n_censored']}, dropped (M1)",
        }[o.get("censoring", "none")],
    ]
    lines.append("- dosing: " + _dosing_text(o))
    if o.get("iov"):
        occ = cal.to_json().get("occasions") or {}
        per = ", ".join(
            f"{n} subject(s) with {k}" for k, n in (occ.get("per_subject") or {}).items()
        )
        lines.append(
            f"- inter-occasion variability on {', '.join(o['iov'])} (OCC column): an occasion "
            "effect κ ~ N(0, π²) per occasion of a subject on top of its η, one π per "
            f"parameter for every occasion (NONMEM's BLOCK SAME), iov_<param> = π; {per} "
            "occasion(s)"
        )
    if o["covariates"]:
        med = ", ".join(f"{c} median {_g(v)}" for c, v in cal.covariate_medians.items())
        lines.append(
            "- covariates (power model log(value/median), coefficient beta_<param>_<column>): "
            + "; ".join(f"{p} ~ {' + '.join(cs)}" for p, cs in o["covariates"].items())
            + f" ({med})"
        )
    if not fit.converged:
        lines.append(f"- **warning: the fit did not converge ({fit.message})**")
    if cal.covariance_note:
        lines.append(f"- **covariance: {cal.covariance_note}**")
    lines += [
        "",
        "## Objective",
        "",
        "| -2LL | AIC | BIC | parameters |",
        "|---:|---:|---:|---:|",
        f"| {_g(-2 * fit.loglik, 8)} | {_g(fit.aic, 8)} | {_g(fit.bic, 8)} | {fit.n_params} |",
        "",
        "## Estimates",
        "",
        "| parameter | kind | estimate | SE | RSE % | 95% CI |",
        "|---|---|---:|---:|---:|---|",
    ]
    poor = []
    for r in cal.estimates:
        mark = ""
        if not (r["rse"] <= 100.0):  # NaN too
            mark = " †"
            poor.append(r["name"])
        lines.append(
            f"| {r['name']}{mark} | {r['kind']} | {_g(r['value'], 5)} | {_g(r['se'], 3)} | "
            f"{_g(r['rse'], 3)} | [{_g(r['ci_low'])}, {_g(r['ci_high'])}] |"
        )
    lines += [""]
    if poor:
        lines += [
            f"† {', '.join(poor)}: RSE above 100% (or no SE): poorly determined by the data; "
            "for an SD estimated near 0 the estimate sits at its boundary and its interval "
            "means little (consider removing that random effect with --random).",
            "",
        ]
    lines += [
        "Fixed effects are on the scale the model declares them (log scale for the built-in PK "
        "models); omega_<p> are SDs of the random effects, "
        + ("iov_<p> SDs of the occasion effects, " if o.get("iov") else "")
        + "sigma_* residual SDs. Intervals of SDs are taken on the log scale (they stay "
        "positive).",
        "",
        "## Correlation matrix of the estimates",
        "",
        f"Condition number (largest / smallest eigenvalue of the correlation matrix, NONMEM's "
        f"convention): **{_g(cal.condition_number)}**.",
        "",
    ]
    names = list(cal.estimate_names)
    corr = np.asarray(cal.correlation)
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(_g(corr[i, j], 3) for j in range(len(names))) + " |")
    sh = cal.shrinkage
    lines += [
        "",
        "## Shrinkage",
        "",
        "| | shrinkage % |",
        "|---|---:|",
    ]
    for p, v in sh["eta"].items():
        lines.append(f"| eta {p} | {_g(100 * v, 3)} |")
    for p, v in (sh.get("iov") or {}).items():
        lines.append(f"| kappa {p} (occasions) | {_g(100 * v, 3)} |")
    lines.append(f"| epsilon | {_g(100 * sh['epsilon'], 3)} |")
    lines += [
        "",
        "η-shrinkage = 1 − SD(η̂)/ω; ε-shrinkage = 1 − SD(IWRES)"
        + ("; κ-shrinkage = 1 − SD(κ̂)/π over every (subject, occasion)." if sh.get("iov") else "."),
        "",
        "## Goodness of fit",
        "",
    ]
    d = cal.diagnostics
    cw, nd = d["CWRES"][np.isfinite(d["CWRES"])], d["NPDE"][np.isfinite(d["NPDE"])]
    lines.append(
        f"CWRES mean {_g(np.mean(cw), 3)}, SD {_g(np.std(cw, ddof=1), 3)}; "
        + (
            f"NPDE mean {_g(np.mean(nd), 3)}, SD {_g(np.std(nd, ddof=1), 3)} "
            f"({o['n_simulations']} simulations, seed {o['seed']})"
            if nd.size
            else "no NPDE (no simulations)"
        )
        + ". Per-observation values: diagnostics.csv."
    )
    vb = cal.vpc.get("bins") or []
    if vb:
        lines += [
            "",
            "VPC"
            + (
                " (prediction-corrected, Bergstrand et al. 2011)"
                if o["prediction_corrected"]
                else ""
            )
            + f": {len(vb)} time bins, clusters of the observation times (one per nominal time), "
            "each drawn at its median time: "
            + ", ".join(f"{_g(b['t_min'], 3)}–{_g(b['t_max'], 3)} (n={b['n']})" for b in vb)
            + "; the bin of each observation is diagnostics.csv's VPC_BIN.",
        ]
    lines.append("")
    for caption, name in figures:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines) + "\n"


def _dosing_text(o) -> str:
    """What the report says of lag times, steady state and occasions."""
    parts = [
        "lag time Tlag = exp(lTlag) on the doses into the depot (NONMEM's ALAG1; --lag)"
        if o.get("lag")
        else "no lag time"
    ]
    ss = o.get("steady_state") or {}
    n_ss = sum(ss.values())
    if n_ss:
        parts.append(
            f"{n_ss} steady-state dose record(s) ("
            + ", ".join(f"{k}: {v}" for k, v in ss.items() if v)
            + "; the state from the periodic condition x = Φ(II)x + c, a linear solve with"
            " the model's matrix exponential)"
        )
    else:
        parts.append("no steady-state doses")
    return "; ".join(parts)


_COV_TEXT = {
    "sandwich": "sandwich R⁻¹SR⁻¹ (NONMEM's default)",
    "R": "R⁻¹ (inverse Hessian of the objective)",
    "S": "S⁻¹ (outer products of the subjects' gradients)",
    "lme": "nlme's linear mixed-effects approximation at the conditional modes",
}
