r"""Hierarchical ODE models: theophylline pharmacokinetics (R's ``Theoph``) and the seed
model with an initial-condition population model.

**Theophylline.** After an oral dose D (mg/kg) into the gut (depot), the drug is absorbed
into the central compartment at rate k_a and eliminated at rate k_e:

    d depot/dt   = −k_a · depot,
    d central/dt =  k_a · depot − k_e · central,        C(t) = central(t) / V,

with V = Cl / k_e. The parameters are declared on the log scale, lKe = log k_e,
lKa = log k_a, lCl = log Cl, so the population model φᵢ = μ + ηᵢ, ηᵢ ~ N(0, Ω) (Ω diagonal,
or with ``omega="full"`` a general covariance, nlme's ``pdSymm``), gives log-normal
individual parameters; C is observed with additive N(0, σ²) error. The
closed form (R's ``SSfol``) is

    C(t) = D e^{lKe + lKa − lCl} (e^{−k_e t} − e^{−k_a t}) / (k_a − k_e).

Data: R's ``Theoph`` (12 subjects, 132 concentrations; Boeckmann, Sheiner & Beal 1994) in
``problems/data/theoph.csv`` (provenance in ``problems/data/README.md``). Pinheiro & Bates
(2000, §8.2) fit it with nlme; with maximum likelihood nlme 3.1-162 gives lKe −2.4546,
lKa 0.4655, lCl −3.2272, random-effect SDs 1.6e-5, 0.6439, 0.1669, residual SD 0.7092 and
log-likelihood −177.02. With a general Ω (``pdSymm``) nlme gives the values in
:data:`NLME_REFERENCE_FULL` (log-likelihood −173.32; corr(lKe, lCl) = 0.995).

The inner problem is each subject's MAP ηᵢ*(θ); the criterion is the FOCEI (default) or
Laplace approximation of −log-likelihood, differentiated implicitly through ηᵢ*
(:mod:`invcal.ode.population`). ``invcal run theophylline`` tunes θ with the engine's
:func:`invcal.tune`; :func:`fit` calls :func:`invcal.ode.fit_population` (one compiled
loop, much faster for repeated fits; nlme's Lindstrom-Bates algorithm by default for FOCEI).

**Seed model.** ẋ = −x + p·u(t) with u(t) = sin t and x(0) = q, where both p and q vary
between subjects (pᵢ = μ_p + η_pᵢ, qᵢ = μ_q + η_qᵢ): the initial condition has a population
model. :func:`seed_events` simulates a synthetic population from it.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import lineax as lx
import numpy as np

import invcal as ic
from invcal import ode
from invcal.catalog import Setup

from ._options import choice, integer

__all__ = [
    "THEOPH_CSV",
    "INIT",
    "NLME_REFERENCE",
    "NLME_REFERENCE_FULL",
    "OMEGAS",
    "theophylline_model",
    "ssfol",
    "load_theoph",
    "build",
    "methods",
    "setup",
    "fit",
    "random_effects",
    "seed_model",
    "seed_events",
]

THEOPH_CSV = Path(__file__).resolve().parent / "data" / "theoph.csv"

#: The issue's initial values of the fixed effects.
INIT = {"lKe": -2.5, "lKa": 0.5, "lCl": -3.0}

#: R nlme 3.1-162 (maximum likelihood) on Theoph, as run for the issue.
NLME_REFERENCE = {
    "lKe": -2.4546457747,
    "lKa": 0.4655047601,
    "lCl": -3.2271983419,
    "omega_lKe": 1.624641e-05,
    "omega_lKa": 0.6438571,
    "omega_lCl": 0.1669212,
    "sigma_add": 0.7092257363,
    "loglik": -177.0235,
}

#: R nlme 3.1-162 (maximum likelihood) on Theoph with a general Ω,
#: ``random = pdSymm(lKe + lKa + lCl ~ 1)`` (benchmarks/results/theoph_vs_nlme.json,
#: ``full_omega``): random-effect SDs and correlations ``corr_<p>_<r>``.
NLME_REFERENCE_FULL = {
    "lKe": -2.432677892,
    "lKa": 0.4514158239,
    "lCl": -3.214454744,
    "omega_lKe": 0.1310338,
    "omega_lKa": 0.6377396,
    "omega_lCl": 0.2511798,
    "corr_lKa_lKe": 0.01204983428,
    "corr_lCl_lKe": 0.9948799705,
    "corr_lCl_lKa": -0.08906031274,
    "sigma_add": 0.6818331193,
    "loglik": -173.3201248,
}

#: The random-effect covariance structures: "diagonal" (nlme's pdDiag, the default) or
#: "full" (pdSymm: a general Ω by its log-Cholesky factor).
OMEGAS = ("diagonal", "full")


# --------------------------------------------------------------------------------------
# Theophylline
# --------------------------------------------------------------------------------------
def one_compartment_oral(t, y, p):
    """Depot → central → elimination, rate constants from the log-parameters."""
    ke, ka = jnp.exp(p["lKe"]), jnp.exp(p["lKa"])
    depot, central = y[0], y[1]
    return jnp.stack([-ka * depot, ka * depot - ke * central])


def concentration(y, p):
    """C = central / V with V = Cl / k_e."""
    return y[1] * jnp.exp(p["lKe"] - p["lCl"])


def theophylline_model(**options) -> ode.ODEModel:
    """The one-compartment first-order-absorption model as an :class:`invcal.ode.ODEModel`
    (``options`` go to ODEModel: solver, rtol, atol, max_steps, adjoint)."""
    return ode.ODEModel(
        one_compartment_oral,
        states=("depot", "central"),
        params=("lKe", "lKa", "lCl"),
        observe=concentration,
        **options,
    )


def ssfol(dose, t, lKe, lKa, lCl):
    """R's SSfol: the closed-form concentration of the model above."""
    ke, ka = jnp.exp(lKe), jnp.exp(lKa)
    return dose * jnp.exp(lKe + lKa - lCl) * (jnp.exp(-ke * t) - jnp.exp(-ka * t)) / (ka - ke)


def load_theoph(path=THEOPH_CSV, *, subjects: int | None = None) -> ode.Events:
    """The Theoph event table (WT is a covariate column); ``subjects`` keeps the first n."""
    events = ode.read_events(path)
    if subjects is None:
        return events
    n = integer("subjects", subjects, 1, events.n_subjects)
    keep = np.isin(events.id, list(events.subjects[:n]))
    cols = {
        "ID": events.id[keep],
        "TIME": events.time[keep],
        "DV": np.where(np.isnan(events.dv[keep]), ".", events.dv[keep].astype(str)),
        "AMT": events.amt[keep],
        "EVID": events.evid[keep],
        "CMT": events.cmt[keep],
        "MDV": events.mdv[keep],
        **{k: v[keep] for k, v in events.covariates.items()},
    }
    return ode.read_events(cols, source=f"{events.source} (first {n} subjects)")


def _check_approximation(approximation):
    if approximation not in ("focei", "laplace"):
        raise ValueError(f"approximation must be 'focei' or 'laplace'; got {approximation!r}.")
    return approximation


def _check_omega(omega):
    return choice("omega", omega, OMEGAS)


def build(*, approximation="focei", rtol=1e-7, subjects=None, omega="diagonal"):
    """(problem, solver): Theoph as an :class:`invcal.Problem` over the stacked random
    effects, criterion −log-likelihood (FOCEI or Laplace), with the vmapped
    Levenberg–Marquardt inner solver. ``rtol`` is the ODE solver's relative tolerance
    (atol = rtol/100); ``subjects`` keeps the first n subjects; ``omega``: "diagonal" or
    "full" (see :data:`OMEGAS`)."""
    approximation, omega = _check_approximation(approximation), _check_omega(omega)
    model = theophylline_model(rtol=float(rtol), atol=float(rtol) * 1e-2)
    events = load_theoph(subjects=subjects)
    problem, solver = ode.population_problem(
        model, events, init=INIT, approximation=approximation, name="theophylline", omega=omega
    )
    return problem, ode.PopulationLM(population=solver.population, tol=1e-9)


def methods():
    """The implicit hypergradients ``invcal check`` compares (the unrolled methods do not
    apply: they would need reverse-mode derivatives of the ODE solves)."""
    return {
        "implicit-cg": ic.Implicit(),
        "implicit-forward": ic.Implicit(mode="forward"),
        "implicit-dense": ic.Implicit(lx.LU()),
    }


def random_effects(population, theta) -> dict:
    """The random effects' covariance at ``theta`` (population parameters by name, as in a
    tuning result): ``{"omega": "diagonal" | "full", "sd": {p: SD}, "corr": {(p, r): ρ}
    (full Ω only, r before p in ``population.random``), "omega_matrix": Ω}`` — what
    :meth:`invcal.ode.PopulationFit.summary` prints, for ``invcal run``'s report."""
    th = {k: jnp.asarray(float(np.asarray(v))) for k, v in theta.items()}
    omega = np.asarray(population.omega_matrix(th))
    sd = np.sqrt(np.diagonal(omega))
    names = tuple(population.random)
    corr = {}
    if population.omega == "full":
        corr = {
            (p, r): float(omega[i, j] / (sd[i] * sd[j]))
            for i, p in enumerate(names)
            for j, r in enumerate(names[:i])
        }
    return {
        "omega": population.omega,
        "sd": {p: float(sd[k]) for k, p in enumerate(names)},
        "corr": corr,
        "omega_matrix": omega,
    }


def _report_extra(population, theta) -> dict:
    """The report's lines on the random effects (scalars, shown by ``invcal run``'s report)
    and Ω itself (kept in results.json)."""
    re = random_effects(population, theta)
    out = {
        "random effects (best theta)": (
            "diagonal Omega (independent random effects)"
            if re["omega"] == "diagonal"
            else "general Omega (log-Cholesky), nlme's pdSymm"
        )
    }
    out.update({f"random-effect SD {p}": v for p, v in re["sd"].items()})
    out.update({f"random-effect correlation ({p}, {r})": v for (p, r), v in re["corr"].items()})
    out["omega_matrix"] = re["omega_matrix"].tolist()
    return out


def _extra_report(model, events, pop):
    """Figures for ``invcal run``: subjects with IPRED/PRED, goodness of fit; the random
    effects' SDs (and correlations, full Ω) go into the report's list of results."""

    def report(result, outdir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        theta = {k: float(np.asarray(v)) for k, v in result.theta.items()}
        result.results.setdefault("extra", {}).update(_report_extra(pop, theta))
        eta = np.asarray(result.x)
        popn = {p: np.full(events.n_subjects, theta[p]) for p in model.params}
        indiv = {p: v.copy() for p, v in popn.items()}
        for k, p in enumerate(pop.random):
            indiv[p] = indiv[p] + eta[:, k]
        th = {k: jnp.asarray(v) for k, v in theta.items()}
        out = []
        fig = ode.plots.plot_subjects(model, events, indiv, popn, ylabel="concentration (mg/L)")
        fig.savefig(Path(outdir) / "subjects.png", dpi=110)
        plt.close(fig)
        out.append(
            (
                "Observed concentrations with individual (IPRED) and population (PRED) predictions",
                "subjects.png",
            )
        )
        fig = ode.plots.plot_goodness_of_fit(
            model, events, indiv, popn, lambda f: pop.error.variance(jnp.asarray(f), th)
        )
        fig.savefig(Path(outdir) / "goodness_of_fit.png", dpi=110)
        plt.close(fig)
        out.append(
            ("DV vs PRED and IPRED; individual weighted residuals vs time", "goodness_of_fit.png")
        )
        return out

    return report


def setup(**options) -> Setup:
    """Theophylline PK (R's Theoph), one-compartment ODE, FOCEI likelihood (nlme's reference).

    ``options``: ``approximation`` ("focei" or "laplace"; ``method`` is its old name),
    ``rtol`` (ODE tolerance, default 1e-7), ``subjects`` (keep the first n), ``omega``
    ("diagonal", the default, or "full": a general random-effect covariance by its
    log-Cholesky factor, nlme's pdSymm; the report then lists the correlations). Defaults:
    vmapped Levenberg–Marquardt inner solver, implicit differentiation with CG on the
    block-diagonal Hessian, L-BFGS in the unconstrained parameters (log SDs).
    """
    known = ("approximation", "rtol", "subjects", "omega")
    if "method" in options:  # the old name, which `invcal run --method` means otherwise
        if "approximation" in options:
            raise ValueError("theophylline: give approximation= only (method= is its old name).")
        options["approximation"] = options.pop("method")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"theophylline got unknown option(s) {unknown}; known: {list(known)}.")
    _check_omega(options.get("omega", "diagonal"))
    problem, solver = build(**options)
    model = solver.population.model
    events = load_theoph(subjects=options.get("subjects"))
    return Setup(
        problem=problem,
        solver=solver,
        method=ic.Implicit(),
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=methods(),
        optimizer="lbfgs",
        learning_rate=1.0,
        steps=60,
        extra_report=_extra_report(model, events, solver.population),
    )


def fit(
    *, approximation="focei", rtol=1e-7, subjects=None, omega="diagonal", **kwargs
) -> ode.PopulationFit:
    """Fit Theoph from the issue's initial values with :func:`invcal.ode.fit_population`
    (``omega``: "diagonal" or "full"; ``kwargs`` go to it; FOCEI fits default to nlme's
    Lindstrom-Bates algorithm, ``algorithm="lbfgs"`` gives the exact maximum of the FOCEI
    likelihood)."""
    approximation, omega = _check_approximation(approximation), _check_omega(omega)
    model = theophylline_model(rtol=float(rtol), atol=float(rtol) * 1e-2)
    return ode.fit_population(
        model,
        load_theoph(subjects=subjects),
        init=INIT,
        approximation=approximation,
        omega=omega,
        **kwargs,
    )


# --------------------------------------------------------------------------------------
# The seed model: a population model for the initial condition
# --------------------------------------------------------------------------------------
def _seed_field(t, y, p):
    return -y + p["p"] * jnp.sin(t)


def seed_model(**options) -> ode.ODEModel:
    """ẋ = −x + p·sin t with x(0) = q, observing x."""
    return ode.ODEModel(
        _seed_field,
        states=("x",),
        params=("p", "q"),
        observe=lambda y, p: y[0],
        initial=lambda p: jnp.stack([p["q"]]),
        **options,
    )


SEED_TRUTH = {"p": 2.0, "q": 1.0, "omega_p": 0.3, "omega_q": 0.5, "sigma_add": 0.1}


def seed_events(n_subjects: int = 20, *, times=None, truth=None, seed: int = 0):
    """A synthetic population from :func:`seed_model`: (events, true individual params).

    Each subject is observed at ``times`` (default 0, 0.5, …, 6) with N(0, σ²) noise; pᵢ and
    qᵢ are drawn from the population model ``truth`` (default ``SEED_TRUTH``)."""
    truth = dict(SEED_TRUTH if truth is None else truth)
    times = np.arange(0.0, 6.01, 0.5) if times is None else np.asarray(times, float)
    rng = np.random.default_rng(seed)
    n = int(n_subjects)
    params = {
        "p": truth["p"] + truth["omega_p"] * rng.standard_normal(n),
        "q": truth["q"] + truth["omega_q"] * rng.standard_normal(n),
    }
    ids = np.repeat(np.arange(1, n + 1), times.size)
    skeleton = ode.read_events(
        {"ID": ids, "TIME": np.tile(times, n), "DV": np.zeros(ids.size)}, source="seed"
    )
    sim = ode.simulate(seed_model(), skeleton, params)
    dv = np.concatenate([sim[i][1] for i in skeleton.subjects])
    dv = dv + truth["sigma_add"] * rng.standard_normal(dv.size)
    events = ode.read_events(
        {"ID": ids, "TIME": np.tile(times, n), "DV": dv}, source="seed (synthetic)"
    )
    return events, params
