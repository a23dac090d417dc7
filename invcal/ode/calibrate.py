r"""Population calibration of a user's table: fit, uncertainty, diagnostics.

:func:`calibrate` is the Python side of ``invcal calibrate``: it reads a NONMEM-style table
(:func:`invcal.ode.read_events`), resolves the model (a built-in name of
:mod:`invcal.ode.models`, ``path/to/file.py:NAME`` or an :class:`ODEModel`), checks every
option against the model and the table before anything is compiled, fits by
:func:`invcal.ode.fit_population`, and returns a :class:`Calibration`: the fit with the
covariance of its estimates, shrinkage, residuals and simulation diagnostics.

**Covariates.** ``"lCl~WT"`` is the power model on the log scale centred at the median:
φ_lCl,i = μ_lCl + β·log(WTᵢ/median WT) + η, i.e. Clᵢ = Cl·(WTᵢ/median)^β (the covariate
must be positive); the coefficient is ``beta_lCl_WT``.

**Covariance of the estimates** (z: the unconstrained coordinates of θ: fixed effects as
they are, log SDs), reported on the scale of θ by the delta method:

- ``"R"``: the inverse Hessian of −ℓ(z) (−ℓ the FOCEI/Laplace objective), by central
  differences of its implicit hypergradient;
- ``"S"``: the inverse of S = Σᵢ gᵢgᵢᵀ, gᵢ = ∂(−ℓᵢ)/∂z (outer products of the subjects'
  gradients);
- ``"sandwich"`` (default; NONMEM's default ``$COV``): R⁻¹SR⁻¹;
- ``"lme"``: nlme's: the fixed effects' covariance of the linear mixed-effects model at the
  conditional modes, (Σᵢ XᵢᵀVᵢ⁻¹Xᵢ)⁻¹ (Pinheiro & Bates 2000, §7.2); the variance
  parameters' block from the inverse Hessian of that linearized model's −log-likelihood in
  z (exact, by automatic differentiation; nlme's ``apVar`` in its log-SD
  parameterization); the two blocks uncorrelated, as nlme reports them.

The correlation matrix of the estimates and its condition number (largest over smallest
eigenvalue: NONMEM's convention, on the correlation matrix) come from the same covariance.

**Shrinkage** (NONMEM): η-shrinkage_p = 1 − SD(η̂_p)/ω_p over subjects; ε-shrinkage =
1 − SD(IWRES) over observations (sample SDs, ddof = 1); with inter-occasion variability,
κ-shrinkage_p = 1 − SD(κ̂_p)/π_p over every (subject, occasion) of the table.

**Inter-occasion variability** (``iov``, the table's OCC column; :mod:`invcal.ode.occasions`):
the parameters named get an occasion effect κ ~ N(0, π²) per occasion of a subject, one π
per parameter for every occasion (NONMEM's BLOCK SAME), integrated with η by FOCEI/Laplace.

**Residuals.** IWRES = (DV − IPRED)/√R(IPRED). CWRES (Hooker, Staatz & Karlsson 2007):
per subject, with Zᵢ = ∂f/∂η at ηᵢ*, E(yᵢ) = f(ηᵢ*) − Zᵢηᵢ*, Cov(yᵢ) = ZᵢΩZᵢᵀ + diag R(f(ηᵢ*)),
CWRESᵢ = Cov(yᵢ)^{−½}(yᵢ − E(yᵢ)) with the symmetric inverse square root.

**Simulations** (seeded): ηᵢ ~ N(0, Ω), y = f(φᵢ) + √R(f)·ε. NPDE (Brendel et al. 2006;
Comets, Brendel & Mentré 2008): per subject, the observations and each simulated vector are
decorrelated by the simulations' mean and covariance (symmetric inverse square root),
pde = the fraction of decorrelated simulated values below the decorrelated observation
(clipped to [1/2K, 1 − 1/2K]), NPDE = Φ⁻¹(pde). The visual predictive check bins the
observations by clusters of their times (one bin per nominal time of the design: optimal
1-D k-means on log(t + c), :func:`invcal.ode.residuals.vpc_bins`) and compares the observed
5/50/95th percentiles per bin with the 90% intervals of the same percentiles over the
simulated replicates (prediction-corrected as an option: Bergstrand et al. 2011,
DV·median(PRED_bin)/PRED).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..precision import computes_in_float64
from .covariance import _covariance
from .events import Events, read_events
from .model import ODEModel
from .models import BuiltinModel, builtin_model, lag_initial_estimate
from .residuals import _diagnostics, _npde, _shrinkage, _simulations, _vpc

__all__ = [
    "Calibration",
    "calibrate",
    "resolve_model",
    "parse_covariates",
    "COVARIANCES",
    "ERRORS",
    "APPROXIMATIONS",
]

COVARIANCES = ("sandwich", "R", "S", "lme")
ERRORS = ("additive", "proportional", "combined")
APPROXIMATIONS = ("focei", "laplace")
OMEGAS = ("diagonal", "full")


# --------------------------------------------------------------------------------------
# Input: model, table, options (all checked before any compilation)
# --------------------------------------------------------------------------------------
def resolve_model(model) -> tuple[str, ODEModel, BuiltinModel | None]:
    """(name, ODEModel, built-in entry or None) for a built-in name, ``path/file.py:NAME``
    (an :class:`ODEModel` or a function of no arguments returning one), or an ODEModel."""
    if isinstance(model, ODEModel):
        return "ODEModel", model, None
    if isinstance(model, BuiltinModel):
        return model.name, model.build(), model
    if not isinstance(model, str):
        raise TypeError(
            "model must be a built-in model's name, 'path/to/file.py:NAME' or an "
            f"invcal.ode.ODEModel; got {type(model).__name__}."
        )
    path, sep, attr = model.rpartition(":")
    if sep and path.endswith(".py"):
        return model, _load_user_model(path, attr), None
    if model.endswith(".py"):
        raise ValueError(
            f"--model {model}: name the model inside the file, e.g. {model}:model "
            "(path/to/file.py:NAME)."
        )
    entry = builtin_model(model)
    return entry.name, entry.build(), entry


def _load_user_model(path: str, attr: str) -> ODEModel:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model: no file {path!r}.")
    spec = importlib.util.spec_from_file_location(f"_invcal_user_model_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: show its error in one line
        raise ValueError(
            f"--model {path}:{attr}: importing {path} failed: {type(e).__name__}: {e}"
        ) from None
    if not hasattr(module, attr):
        names = [n for n, v in vars(module).items() if isinstance(v, ODEModel)]
        raise ValueError(
            f"--model {path}:{attr}: {path} has no {attr!r}"
            + (f"; its ODEModels: {names}." if names else "; it defines no invcal.ode.ODEModel.")
        )
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, ODEModel):
        try:
            obj = obj()
        except Exception as e:
            raise ValueError(
                f"--model {path}:{attr}: calling {attr}() failed: {type(e).__name__}: {e}"
            ) from None
    if not isinstance(obj, ODEModel):
        raise TypeError(
            f"--model {path}:{attr} is a {type(obj).__name__}, not an invcal.ode.ODEModel "
            "(or a function returning one)."
        )
    return obj


def _unknown(kind: str, names, known) -> None:
    bad = [n for n in names if n not in known]
    if bad:
        near = difflib.get_close_matches(bad[0], list(known), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"{kind}: unknown parameter {bad[0]!r}{hint}; the model's parameters are "
            f"{', '.join(known)}."
        )


def parse_covariates(spec) -> dict[str, tuple[str, ...]]:
    """``"lCl~WT"`` strings (or ``"lCl~WT+AGE"``), a list of them, or a dict
    ``{param: columns}`` → ``{param: (column, ...)}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(p): (c,) if isinstance(c, str) else tuple(c) for p, c in spec.items()}
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, list[str]] = {}
    for item in items:
        p, sep, cols = str(item).partition("~")
        cs = [c.strip() for c in cols.split("+") if c.strip()]
        if not sep or not p.strip() or not cs:
            raise ValueError(
                f"--covariate {item!r}: expected PARAM~COLUMN (e.g. 'lCl~WT'; several "
                "columns: 'lCl~WT+AGE')."
            )
        out.setdefault(p.strip(), [])
        for c in cs:
            if c not in out[p.strip()]:
                out[p.strip()].append(c)
    return {p: tuple(cs) for p, cs in out.items()}


def _center_covariates(events: Events, covariates: dict) -> tuple[Events, dict]:
    """The table with each covariate column used replaced by log(value / median over the
    subjects' baselines) (the power model; module docstring), and the medians."""
    used = sorted({c for cs in covariates.values() for c in cs})
    missing = [c for c in used if c not in events.covariates]
    if missing:
        near = difflib.get_close_matches(missing[0], list(events.covariates), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"--covariate: column {missing[0]!r} is not in {events.source}{hint}; its "
            f"covariate columns: {sorted(events.covariates) or 'none'}."
        )
    covs = dict(events.covariates)
    medians = {}
    for c in used:
        v = covs[c]
        bad = np.flatnonzero(~(v > 0))
        if bad.size:
            raise ValueError(
                f"{events.where(int(bad[0]))}: covariate {c} is {v[bad[0]]:g}; the power "
                "model log(value/median) needs values > 0."
            )
        med = float(np.median(events.baseline()[c]))
        medians[c] = med
        covs[c] = np.log(v / med)
    return dataclasses.replace(events, covariates=covs), medians


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A population calibration (:func:`calibrate`).

    - ``fit``: the :class:`invcal.ode.PopulationFit`; ``model_name``; ``options``.
    - ``estimates``: one row per reported parameter (fixed effects, covariate effects,
      ω SDs (``omega_<p>``) and correlations (``corr_<p>_<r>``, full Ω), residual SDs):
      ``{"name", "kind", "value", "se", "rse", "ci_low", "ci_high"}`` (RSE in %, 95% Wald
      interval; for SDs on the log scale, exp(log value ± 1.96·SE/value), which stays
      positive).
    - ``covariance``: the method; ``covariance_matrix``, ``correlation`` (over
      ``estimate_names``), ``condition_number``; ``covariance_note``: why a matrix is
      missing, if it is.
    - ``shrinkage``: ``{"eta": {p: ...}, "epsilon": ...}`` (and ``"iov": {p: ...}`` with
      occasions).
    - ``diagnostics``: per observation arrays ``ID, TIME, DV, PRED, IPRED, IWRES, CWRES,
      NPDE``; ``vpc``: the visual predictive check's bins and percentiles;
      ``covariate_medians``: the centring of the power covariate models.
    """

    fit: Any
    model_name: str
    options: dict
    estimates: list
    estimate_names: tuple
    covariance: str
    covariance_matrix: np.ndarray
    correlation: np.ndarray
    condition_number: float
    covariance_note: str
    shrinkage: dict
    diagnostics: dict
    vpc: dict
    covariate_medians: dict = field(default_factory=dict)
    covariate_values: dict = field(default_factory=dict)
    events: Any = None
    seconds: dict = field(default_factory=dict)

    @property
    def standard_errors(self) -> dict:
        return {r["name"]: r["se"] for r in self.estimates}

    def to_json(self) -> dict:
        """The ``results.json`` content (values by parameter name)."""
        fit = self.fit
        res = fit.residual_sd
        return {
            "kind": "calibration",
            "status": "done",
            "model": self.model_name,
            "data": fit.source,
            "options": self.options,
            "method": fit.method,
            "algorithm": fit.algorithm,
            "converged": bool(fit.converged),
            "message": fit.message,
            "iterations": int(fit.iterations),
            "n_subjects": int(fit.n_subjects),
            "n_obs": int(fit.n_obs),
            "n_params": int(fit.n_params),
            "fixed_effects": dict(fit.fixed_effects),
            "standard_errors": self.standard_errors,
            "random_sd": dict(fit.random_sd),
            **({"iov_sd": dict(fit.iov_sd), "occasions": self._occasions()} if fit.iov_sd else {}),
            "random_corr": {f"{p},{r}": v for (p, r), v in fit.random_corr.items()},
            "residual_sd": res if not isinstance(res, dict) else dict(res),
            "loglik": float(fit.loglik),
            "minus_2_loglik": -2.0 * float(fit.loglik),
            "aic": float(fit.aic),
            "bic": float(fit.bic),
            "shrinkage": self.shrinkage,
            "condition_number": self.condition_number,
            "covariance_method": self.covariance,
            "covariance_note": self.covariance_note,
            "correlation": {
                "names": list(self.estimate_names),
                "matrix": np.asarray(self.correlation).tolist(),
            },
            "estimates": self.estimates,
            "vpc": {k: v for k, v in self.vpc.items() if k not in ("bin", "dv")},
            "theta": dict(fit.theta),
            "covariate_medians": self.covariate_medians,
            "history": [float(v) for v in np.asarray(fit.history)],
            "seconds": self.seconds,
        }

    def _occasions(self) -> dict:
        """How many occasions the subjects have (results.json's ``occasions``)."""
        per = np.sum(self.fit.occasions, axis=1)
        return {
            "max": int(self.fit.occasions.shape[1]),
            "per_subject": {str(k): int(np.sum(per == k)) for k in np.unique(per)},
            "parameters": list(self.fit.iov_sd),
        }


# --------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------
def prepare(
    table,
    model,
    *,
    random=None,
    error="additive",
    omega="diagonal",
    approximation="focei",
    covariance="sandwich",
    init=None,
    covariates=None,
    model_options=None,
    censoring="m3",
    lag=False,
    iov=None,
) -> dict:
    """Every check of :func:`calibrate`, no compilation: the resolved model, the table
    (adapted to the model, covariates centred) and the fit's arguments."""
    name, ode_model, entry = resolve_model(model)
    if lag:
        if entry is None:
            raise ValueError(
                f"--lag adds a lag time to a built-in oral model; model {name} is your own: "
                "give its ODEModel lag=lambda p: {state: Tlag} (and a parameter for it)."
            )
        ode_model = entry.build(lag=True)
    params = tuple(ode_model.params)
    _choice("error", error, ERRORS)
    _choice("omega", omega, OMEGAS)
    _choice("approximation", approximation, APPROXIMATIONS)
    _choice("covariance", covariance, COVARIANCES)
    random = tuple(params) if random is None else tuple(random)
    _unknown("--random", random, params)
    if not random:
        raise ValueError("--random must name at least one parameter.")
    init = dict(init or {})
    covs = parse_covariates(covariates)
    _unknown("--covariate", list(covs), params)
    iov = () if iov is None else ((iov,) if isinstance(iov, str) else tuple(iov))
    _unknown("--iov", iov, params)
    if len(set(iov)) != len(iov):
        raise ValueError(f"--iov names a parameter twice: {','.join(iov)}.")
    omega_names = [f"omega_{p}" for p in random] + [f"iov_{p}" for p in iov]
    sigma_names = {"additive": ["sigma_add"], "proportional": ["sigma_prop"]}.get(
        error, ["sigma_add", "sigma_prop"]
    )
    beta_names = [f"beta_{p}_{c}" for p, cs in covs.items() for c in cs]
    allowed = list(params) + omega_names + sigma_names + beta_names
    bad = [k for k in init if k not in allowed]
    if bad:
        _unknown("--init", bad, allowed)
    for k, v in init.items():
        if not (isinstance(v, (int, float)) and math.isfinite(float(v))):
            raise ValueError(f"--init {k}={v!r}: expected a finite number.")
        if (k in omega_names or k in sigma_names) and not float(v) > 0:
            raise ValueError(f"--init {k}={v!r}: a standard deviation must be > 0.")
    if isinstance(table, Events):
        events = table
    else:
        if isinstance(table, (str, os.PathLike)) and str(table).endswith((".yaml", ".yml")):
            raise ValueError(
                f"{table}: a PEtab problem (.yaml); calibrate it with invcal.ode.petab."
                f"calibrate(invcal.ode.petab.load({str(table)!r})) or `invcal calibrate "
                f"{table}`. This function fits population models to NONMEM-style tables."
            )
        events = read_events(table)
    model_options = dict(model_options or {})
    if entry is not None:
        events = entry.prepare(events, **model_options)
    elif model_options:
        raise ValueError(
            f"model options {sorted(model_options)} apply to built-in models only "
            f"(--input/--t0/--interpolation are the seed model's)."
        )
    n_states = len(ode_model.states)
    big = np.flatnonzero(events.is_dose & (events.cmt > n_states))
    if big.size:
        raise ValueError(
            f"{events.where(int(big[0]))}: a dose into CMT={events.cmt[big[0]]}, but model "
            f"{name} has {n_states} state(s) {ode_model.states}."
        )
    skip = {model_options.get("input", "U")} if entry is not None and entry.options else set()
    baseline = {c: v for c, v in events.baseline().items() if c not in skip}
    events, medians = _center_covariates(events, covs)
    if iov:
        from .occasions import occasion_index

        occasion_index(events)  # OCC present, complete and integer: one line naming the row
    _choice("censoring", censoring, ("m3", "m1"))
    n_cens = int(events.is_censored.sum())
    if n_cens and censoring == "m1":  # drop them (Beal's M1)
        events = dataclasses.replace(
            events, mdv=np.where(events.is_censored, 1, events.mdv), cens=None
        )
    elif n_cens and approximation != "laplace":
        raise ValueError(
            f"{events.source} has {n_cens} observation(s) below the limit of quantification; "
            "their M3 likelihood needs --approximation laplace (NONMEM's LAPLACIAN), or pass "
            "--censoring m1 to drop them."
        )
    start = dict(entry.initial_estimates(events)) if entry and entry.initial_estimates else {}
    if lag:
        start["lTlag"] = lag_initial_estimate(events)
    n_ss = 0 if events.ss is None else int(np.sum(events.ss > 0))
    if n_ss and not ode_model.linear:
        i = int(np.flatnonzero(events.ss > 0)[0])
        raise ValueError(
            f"{events.where(i)}: steady-state dosing (SS) needs a linear model (ODEModel("
            f"linear=True), as the built-in PK models are); model {name} is not."
        )
    missing = [p for p in params if p not in init and p not in start]
    if missing:
        raise ValueError(
            f"--init: model {name} has no default initial values; give every parameter, "
            f"e.g. --init {','.join(f'{p}=0' for p in missing)}."
        )
    start.update(init)
    return {
        "name": name,
        "model": ode_model,
        "events": events,
        "random": random,
        "covariates": covs,
        "medians": medians,
        "baseline": baseline,
        "init": start,
        "censoring": ("M3" if censoring == "m3" else "M1") if n_cens else "none",
        "n_censored": n_cens,
        "error": error,
        "omega": omega,
        "approximation": approximation,
        "covariance": covariance,
        "lag": bool(lag),
        "iov": iov,
        "steady_state": {
            f"SS={k}": int(np.sum(events.ss == k)) if events.ss is not None else 0 for k in (1, 2)
        },
    }


@computes_in_float64
def calibrate(
    table,
    model,
    *,
    random=None,
    error: str = "additive",
    omega: str = "diagonal",
    approximation: str = "focei",
    covariance: str = "sandwich",
    init=None,
    covariates=None,
    model_options=None,
    censoring: str = "m3",
    lag: bool = False,
    iov=None,
    n_simulations: int = 500,
    seed: int = 0,
    vpc_bins: int | None = None,
    prediction_corrected: bool = False,
    max_iter: int = 200,
    progress=None,
    rtol: float | None = None,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
) -> Calibration:
    """Calibrate a population ODE model on a NONMEM-style table.

    **Arguments**

    - ``table``: a CSV path, a DataFrame, a dict of columns or :class:`Events`.
    - ``model``: a built-in name (:func:`invcal.ode.models.describe_models`),
      ``"path/to/file.py:NAME"`` or an :class:`ODEModel`; ``model_options``: the built-in
      model's options (the seed model's ``input``, ``t0``, ``interpolation``).
    - ``random``: parameters with random effects (default all); ``error``: additive,
      proportional or combined; ``omega``: diagonal or full; ``approximation``: focei or
      laplace; ``covariance``: sandwich (default), R, S or lme (module docstring).
    - ``init``: initial values by name (fixed effects, ``omega_<p>``, ``sigma_*``,
      ``beta_*``); built-in PK models start from non-compartmental estimates otherwise.
    - ``covariates``: ``"lCl~WT"`` strings (power model centred at the median).
    - ``censoring``: for observations below the limit of quantification (CENS/LLOQ
      columns): ``"m3"`` (default; their likelihood P(y < limit), Beal 2001; needs
      ``approximation="laplace"``) or ``"m1"`` (drop them). Their residuals and NPDE are
      NaN (not defined for a censored value).
    - ``lag``: add a lag time to a built-in oral model: parameter ``lTlag`` (log Tlag; doses
      into the depot enter Tlag later; random like the others unless ``random`` says
      otherwise). Steady-state doses come from the table's SS and II columns
      (:mod:`invcal.ode.dosing`).
    - ``iov``: parameters with inter-occasion variability (the table's OCC column; a name or
      names): an occasion effect κ ~ N(0, π²) per occasion of a subject, ``iov_<p>`` = π
      (:func:`fit_population`'s ``iov``).
    - ``n_simulations``, ``seed``: the simulations of NPDE and the VPC (0: none);
      ``vpc_bins``: number of time bins (default: the distinct times if at most 12, else
      clusters of the observation times, their number chosen from the data:
      :func:`invcal.ode.residuals.vpc_bins`), each drawn at its median time;
      ``prediction_corrected``: pcVPC.
    - ``progress``: as :func:`fit_population`'s.
    - ``out``, ``resume``, ``overwrite``: the fit's run folder, as :func:`fit_population`'s
      (``out/results.json`` after every outer iteration; ``resume=True`` continues a fit
      saved there to the estimates of an uninterrupted one).
    - ``rtol``: the ODE solver's relative tolerance for a built-in model (atol = rtol/100;
      default ODEModel's).

    Every check (model, table, parameter and column names) runs before any compilation.
    Computes in float64 whatever JAX's global flag. Returns a :class:`Calibration`.
    """
    import time

    from .fit import fit_population

    prep = prepare(
        table,
        model,
        random=random,
        error=error,
        omega=omega,
        approximation=approximation,
        covariance=covariance,
        init=init,
        covariates=covariates,
        model_options=model_options,
        censoring=censoring,
        lag=lag,
        iov=iov,
    )
    ode_model = prep["model"]
    if rtol is not None and isinstance(model, str) and ":" not in model:
        ode_model = builtin_model(prep["name"]).build(
            rtol=float(rtol), atol=float(rtol) * 1e-2, lag=bool(lag)
        )
    t0 = time.perf_counter()
    fit = fit_population(
        ode_model,
        prep["events"],
        init=prep["init"],
        random=prep["random"],
        error=error,
        approximation=approximation,
        covariates=prep["covariates"] or None,
        omega=omega,
        iov=prep["iov"] or None,
        max_iter=max_iter,
        progress=progress,
        out=out,
        resume=resume,
        overwrite=overwrite,
    )
    seconds = {"fit": time.perf_counter() - t0}
    t0 = time.perf_counter()
    cov = _covariance(fit, covariance)
    seconds["covariance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # one batch (one compilation): PRED first, then the simulated replicates
    sims = _simulations(fit, int(n_simulations), int(seed))
    diag = _diagnostics(fit, sims.pop("pred"))
    if n_simulations:
        diag["NPDE"] = _npde(fit, diag, sims)
    else:
        sims = None
    diag["NPDE"] = diag.get("NPDE", np.full(diag["DV"].shape, np.nan))
    if sims is not None:
        mask = np.asarray(fit._context[3].obs_mask)
        vpc = _vpc(diag, sims["y"][:, mask], vpc_bins, prediction_corrected)
    else:
        vpc = {"bins": []}
    seconds["diagnostics"] = time.perf_counter() - t0
    options = {
        "random": list(prep["random"]),
        "error": error,
        "omega": omega,
        "approximation": approximation,
        "covariance": covariance,
        "covariates": {p: list(c) for p, c in prep["covariates"].items()},
        "init": prep["init"],
        "model_options": dict(model_options or {}),
        "censoring": prep["censoring"],
        "n_censored": prep["n_censored"],
        "lag": prep["lag"],
        "iov": list(prep["iov"]),
        "steady_state": prep["steady_state"],
        "n_simulations": int(n_simulations),
        "seed": int(seed),
        "prediction_corrected": bool(prediction_corrected),
    }
    return Calibration(
        fit=fit,
        model_name=prep["name"],
        options=options,
        estimates=cov["rows"],
        estimate_names=cov["names"],
        covariance=covariance,
        covariance_matrix=cov["cov"],
        correlation=cov["corr"],
        condition_number=cov["cond"],
        covariance_note=cov["note"],
        shrinkage=_shrinkage(fit, diag),
        diagnostics=diag,
        vpc=vpc,
        covariate_medians=prep["medians"],
        covariate_values=prep["baseline"],
        events=prep["events"],
        seconds=seconds,
    )


def read_results(path) -> dict | None:
    """A previous ``results.json`` (None if absent)."""
    import json

    p = Path(path)
    if not p.exists():
        return None
    with open(p) as fh:
        return json.load(fh)
