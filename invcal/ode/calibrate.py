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
1 − SD(IWRES) over observations (sample SDs, ddof = 1).

**Residuals.** IWRES = (DV − IPRED)/√R(IPRED). CWRES (Hooker, Staatz & Karlsson 2007):
per subject, with Zᵢ = ∂f/∂η at ηᵢ*, E(yᵢ) = f(ηᵢ*) − Zᵢηᵢ*, Cov(yᵢ) = ZᵢΩZᵢᵀ + diag R(f(ηᵢ*)),
CWRESᵢ = Cov(yᵢ)^{−½}(yᵢ − E(yᵢ)) with the symmetric inverse square root.

**Simulations** (seeded): ηᵢ ~ N(0, Ω), y = f(φᵢ) + √R(f)·ε. NPDE (Brendel et al. 2006;
Comets, Brendel & Mentré 2008): per subject, the observations and each simulated vector are
decorrelated by the simulations' mean and covariance (symmetric inverse square root),
pde = the fraction of decorrelated simulated values below the decorrelated observation
(clipped to [1/2K, 1 − 1/2K]), NPDE = Φ⁻¹(pde). The visual predictive check bins the
observations by time and compares the observed 5/50/95th percentiles per bin with the 90%
intervals of the same percentiles over the simulated replicates (prediction-corrected as
an option: Bergstrand et al. 2011, DV·median(PRED_bin)/PRED).
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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..precision import computes_in_float64
from .events import Events, read_events
from .model import ODEModel
from .models import BuiltinModel, builtin_model

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
# Compiled pieces
# --------------------------------------------------------------------------------------
@eqx.filter_jit
def _subject_terms(pop, space, z, eta0, arrays, tol, max_steps):
    """Per-subject −ℓᵢ and ∂(−ℓᵢ)/∂z at z (implicit through ηᵢ*), η*, ok."""
    vals, grads, eta, info = pop.subject_terms(space, z, eta0, arrays, tol, max_steps)
    return vals, grads, eta, info["ok"]


@eqx.filter_jit
def _simulate_batch(model, arrays, phi):
    """Predictions (K, N, M) for parameters phi (K, N, d), and whether every solve worked."""
    from .simulate import predict

    def one(ph):
        return jax.vmap(lambda s, p: predict(model, s, p))(arrays, ph)

    f, ok = jax.vmap(one)(phi)
    return f, jnp.all(ok)


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
    - ``shrinkage``: ``{"eta": {p: ...}, "epsilon": ...}``.
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
            "theta": dict(fit.theta),
            "covariate_medians": self.covariate_medians,
            "history": [float(v) for v in np.asarray(fit.history)],
            "seconds": self.seconds,
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
) -> dict:
    """Every check of :func:`calibrate`, no compilation: the resolved model, the table
    (adapted to the model, covariates centred) and the fit's arguments."""
    name, ode_model, entry = resolve_model(model)
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
    omega_names = [f"omega_{p}" for p in random]
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
                f"{table}: a PEtab problem (.yaml); PEtab calibration is not available in "
                "this command yet. Pass a NONMEM-style CSV table."
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
    n_simulations: int = 500,
    seed: int = 0,
    vpc_bins: int | None = None,
    prediction_corrected: bool = False,
    max_iter: int = 200,
    progress=None,
    rtol: float | None = None,
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
    - ``n_simulations``, ``seed``: the simulations of NPDE and the VPC (0: none);
      ``vpc_bins``: number of time bins (default: the distinct times if at most 12, else 10
      quantile bins, each drawn at its median time); ``prediction_corrected``: pcVPC.
    - ``progress``: as :func:`fit_population`'s.
    - ``rtol``: the ODE solver's relative tolerance for a built-in model (atol = rtol/100;
      default ODEModel's).

    Every check (model, table, parameter and column names) runs before any compilation.
    Computes in float64 whatever JAX's global flag. Returns a :class:`Calibration`.
    """
    import time

    from .population import fit_population

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
    )
    ode_model = prep["model"]
    if rtol is not None and isinstance(model, str) and ":" not in model:
        ode_model = builtin_model(prep["name"]).build(rtol=float(rtol), atol=float(rtol) * 1e-2)
    t0 = time.perf_counter()
    fit = fit_population(
        ode_model,
        prep["events"],
        init=prep["init"],
        random=prep["random"],
        error=error,
        method=approximation,
        covariates=prep["covariates"] or None,
        omega=omega,
        max_iter=max_iter,
        progress=progress,
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
    vpc = (
        _vpc(diag, sims, vpc_bins, prediction_corrected, fit) if sims is not None else {"bins": []}
    )
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


# --------------------------------------------------------------------------------------
# Covariance of the estimates
# --------------------------------------------------------------------------------------
def _reported(pop, space):
    """(names, kinds, z ↦ reported values): fixed effects, covariate effects, ω SDs (and
    correlations for a full Ω), residual SDs."""
    params = tuple(pop.model.params)
    names = list(params) + [f"beta_{p}_{c}" for p, c in pop.covariates]
    kinds = ["fixed"] * len(params) + ["covariate"] * len(pop.covariates)
    names += [f"omega_{p}" for p in pop.random]
    kinds += ["omega"] * pop.n_random
    full = pop.omega == "full"
    pairs = [(i, j) for i in range(pop.n_random) for j in range(i)] if full else []
    names += [f"corr_{pop.random[i]}_{pop.random[j]}" for i, j in pairs]
    kinds += ["corr"] * len(pairs)
    names += list(pop.error.names)
    kinds += ["sigma"] * len(pop.error.names)

    def values(z):
        th = space.to_theta(z)
        out = [th[p] for p in params] + [th[f"beta_{p}_{c}"] for p, c in pop.covariates]
        om = pop.omega_matrix(th)
        sd = jnp.sqrt(jnp.diagonal(om))
        out += list(sd)
        out += [om[i, j] / (sd[i] * sd[j]) for i, j in pairs]
        out += [th[s] for s in pop.error.names]
        return jnp.stack([jnp.asarray(v, dtype=float) for v in out])

    return tuple(names), tuple(kinds), values


@eqx.filter_jit
def _reported_jacobian(pop, space, z):
    return jax.jacfwd(_reported(pop, space)[2])(z)


@eqx.filter_jit
def _reported_values(pop, space, z):
    return _reported(pop, space)[2](z)


def _r_and_s(fit, h=1e-4):
    """(R, S) in z: R by central differences of the summed implicit hypergradient, S from
    the subjects' gradients at the estimate."""
    from ..compilation_cache import checks_without_callbacks

    pop, space, _, arrays, run = fit._context
    z = jnp.asarray(run["z"])
    eta = jnp.asarray(run["eta"])
    tol, steps = jnp.asarray(1e-10), jnp.asarray(100)

    def grads(zz):
        with checks_without_callbacks():
            _, g, _, ok = _subject_terms(pop, space, zz, eta, arrays, tol, steps)
        if not bool(np.all(np.asarray(ok))):
            raise RuntimeError("a subject's objective is not finite near the estimate")
        return np.asarray(g)

    g0 = grads(z)
    n = z.shape[0]
    R = np.zeros((n, n))
    for k in range(n):
        e = np.zeros(n)
        e[k] = h
        R[:, k] = (grads(z + e).sum(0) - grads(z - e).sum(0)) / (2 * h)
    R = 0.5 * (R + R.T)
    S = g0.T @ g0
    return R, S


@eqx.filter_jit
def _lme_hessian(pop, space, z, lin, arrays):
    """∇²_z of the linearized model's −log-likelihood (no ODE solve: F₀, F₁ held fixed)."""

    def total(zz):
        vals, _ = jax.vmap(
            lambda l0, l1, ph, eh, s: pop.linearized_value(space, (l0, l1, ph, eh), zz, s)
        )(*lin, arrays)
        return jnp.sum(vals)

    return jax.hessian(total)(z)


def _lme_cov_z(fit):
    """nlme's covariance in z: the fixed effects' from the LME formula (in PopulationFit's
    standard errors, rebuilt here as a matrix), the variance parameters' from the inverse
    Hessian of the linearized model's −log-likelihood; no cross terms."""
    pop, space, _, arrays, run = fit._context
    info = run["info"]
    z = jnp.asarray(run["z"])
    theta = space.to_theta(z)
    eta = jnp.asarray(run["eta"])
    phi_hat = jax.vmap(lambda e, s: pop.phi(e, theta, s.cov))(eta, arrays)
    lin = (jnp.asarray(info["ipred"]), jnp.asarray(info["J"]), phi_hat, eta)
    H = np.asarray(_lme_hessian(pop, space, z, lin, arrays))
    names = tuple(space.names)
    n_fixed = len(pop.model.params) + len(pop.covariates)
    cov = np.full((len(names), len(names)), 0.0)
    cov[:n_fixed, :n_fixed] = _lme_fixed_cov(fit)
    var = slice(n_fixed, len(names))
    cov[var, var] = np.linalg.inv(H[var, var])
    return cov


def _lme_fixed_cov(fit):
    """(Σᵢ XᵢᵀVᵢ⁻¹Xᵢ)⁻¹ at the conditional modes (as summary._fixed_effect_se)."""
    pop, _, _, arrays, run = fit._context
    params = tuple(pop.model.params)
    J = np.asarray(run["info"]["J"])
    f = np.asarray(run["info"]["ipred"])
    mask = np.asarray(arrays.obs_mask)
    cov = np.asarray(arrays.cov)
    ridx = [params.index(p) for p in pop.random]
    th = {k: jnp.asarray(v) for k, v in fit.theta.items()}
    omega = np.asarray(pop.omega_matrix(th))
    k = len(params) + len(pop.covariates)
    info = np.zeros((k, k))
    for i in range(J.shape[0]):
        m = mask[i]
        Ji = J[i][m]
        R = np.asarray(pop.error.variance(jnp.asarray(f[i][m]), th))
        X = np.zeros((Ji.shape[0], k))
        X[:, : len(params)] = Ji
        for j, (p, c) in enumerate(pop.covariates):
            X[:, len(params) + j] = Ji[:, params.index(p)] * cov[i, pop.cov_names.index(c)]
        Z = Ji[:, ridx]
        V = Z @ omega @ Z.T + np.diag(R)
        info += X.T @ np.linalg.solve(V, X)
    return np.linalg.inv(info)


def _covariance(fit, method):
    pop, space, _, _, run = fit._context
    z = jnp.asarray(run["z"])
    names, kinds, _ = _reported(pop, space)
    est = np.asarray(_reported_values(pop, space, z))
    n = len(names)
    note = ""
    cov_z = None
    try:
        if method == "lme":
            cov_z = _lme_cov_z(fit)
        else:
            R, S = _r_and_s(fit)
            if method == "R":
                cov_z = np.linalg.inv(R)
            elif method == "S":
                cov_z = np.linalg.inv(S)
            else:
                Ri = np.linalg.inv(R)
                cov_z = Ri @ S @ Ri
            evals = np.linalg.eigvalsh(R)
            if method in ("R", "sandwich") and evals.min() <= 0:
                note = (
                    "the R matrix (Hessian of -2LL/2) is not positive definite (smallest "
                    f"eigenvalue {evals.min():.3g}): the estimate is not a strict minimum "
                    "in some direction (a variance near 0?); its SEs are unreliable."
                )
    except (np.linalg.LinAlgError, RuntimeError) as e:
        note = f"covariance step failed ({type(e).__name__}: {e}); no standard errors."
        cov_z = None
    if cov_z is not None:
        G = np.asarray(_reported_jacobian(pop, space, z))
        cov = G @ cov_z @ G.T
        cov = 0.5 * (cov + cov.T)
        var = np.diagonal(cov).copy()
        if np.any(var < 0):
            note = (note + " " if note else "") + (
                "negative variances for "
                + ", ".join(n_ for n_, v in zip(names, var, strict=True) if v < 0)
                + " (the matrix is not positive definite)."
            )
        se = np.sqrt(np.where(var >= 0, var, np.nan))
    else:
        cov = np.full((n, n), np.nan)
        se = np.full(n, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(se, se)
    if method == "lme":
        # nlme reports no correlation between fixed effects and variance parameters
        fixed = np.array([k in ("fixed", "covariate") for k in kinds])
        corr = np.where(np.outer(fixed, fixed) | np.outer(~fixed, ~fixed), corr, 0.0)
    cond = float("nan")
    if np.all(np.isfinite(corr)):
        ev = np.linalg.eigvalsh(corr)
        cond = float(ev.max() / ev.min()) if ev.min() > 0 else float("inf")
    rows = []
    for k, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        v, s = float(est[k]), float(se[k])
        if kind in ("omega", "sigma") and v > 0 and math.isfinite(s):
            w = 1.959963984540054 * s / v  # interval on the log scale: stays positive
            lo, hi = v * math.exp(-min(w, 700.0)), v * math.exp(min(w, 700.0))
        else:
            lo, hi = v - 1.959963984540054 * s, v + 1.959963984540054 * s
        rse = 100.0 * s / abs(v) if v != 0 else float("nan")
        rows.append(
            {
                "name": name,
                "kind": kind,
                "value": v,
                "se": s,
                "rse": rse,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return {"names": names, "rows": rows, "cov": cov, "corr": corr, "cond": cond, "note": note}


# --------------------------------------------------------------------------------------
# Residuals, shrinkage, simulations
# --------------------------------------------------------------------------------------
def _inv_sqrt(C):
    w, V = np.linalg.eigh(0.5 * (C + C.T))
    return (V / np.sqrt(w)) @ V.T


def _diagnostics(fit, pred) -> dict:
    """Per observation: ID, TIME, DV, PRED, IPRED, IWRES, CWRES (module docstring)."""
    pop, _, events, arrays, run = fit._context
    params = tuple(pop.model.params)
    th = {k: jnp.asarray(v) for k, v in fit.theta.items()}
    omega = np.asarray(pop.omega_matrix(th))
    mask = np.asarray(arrays.obs_mask)
    J = np.asarray(run["info"]["J"])
    f = np.asarray(run["info"]["ipred"])
    dv = np.asarray(arrays.dv)
    eta = np.asarray(run["eta"])
    ridx = [params.index(p) for p in pop.random]
    cens = None if arrays.cens is None else np.asarray(arrays.cens)
    out = {k: [] for k in ("ID", "TIME", "DV", "PRED", "IPRED", "IWRES", "CWRES")}
    for i, sid in enumerate(events.subjects):
        m = mask[i]
        y, fi, Ji = dv[i][m], f[i][m], J[i][m]
        R = np.asarray(pop.error.variance(jnp.asarray(fi), th))
        Z = Ji[:, ridx]
        mean = fi - Z @ eta[i]
        C = Z @ omega @ Z.T + np.diag(R)
        out["ID"] += [sid] * int(m.sum())
        out["TIME"].append(np.asarray(arrays.obs_t)[i][m])
        out["DV"].append(y)
        out["PRED"].append(pred[i][m])
        out["IPRED"].append(fi)
        iw = (y - fi) / np.sqrt(R)
        cw = _inv_sqrt(C) @ (y - mean)
        if cens is not None:
            iw = np.where(cens[i][m], np.nan, iw)
            cw = np.where(cens[i][m], np.nan, cw)
        out["IWRES"].append(iw)
        out["CWRES"].append(cw)
    return {
        k: np.concatenate(v) if k != "ID" else np.asarray(v, dtype=object) for k, v in out.items()
    }


def _shrinkage(fit, diag) -> dict:
    eta = {
        p: float(1.0 - np.std(fit.eta[p], ddof=1) / fit.random_sd[p])
        if fit.random_sd[p] > 0 and len(fit.eta[p]) > 1
        else float("nan")
        for p in fit.random_sd
    }
    iwres = diag["IWRES"][np.isfinite(diag["IWRES"])]  # censored observations: NaN
    eps = float(1.0 - np.std(iwres, ddof=1)) if iwres.size > 1 else float("nan")
    return {"eta": eta, "epsilon": eps}


def _simulations(fit, K: int, seed: int) -> dict:
    """K simulated replicates of the data set: (K, N, M) predictions ``f`` and observations
    ``y``, and the population predictions ``pred`` (N, M), solved in one batch."""
    pop, _, _, arrays, _ = fit._context
    params = tuple(pop.model.params)
    th = {k: jnp.asarray(v) for k, v in fit.theta.items()}
    omega = np.asarray(pop.omega_matrix(th))
    rng = np.random.default_rng(seed)
    popp = fit.population_parameters()
    base = np.stack([np.asarray(popp[p], float) for p in params], axis=1)  # (N, d)
    N, q = base.shape[0], pop.n_random
    C = np.linalg.cholesky(omega + 1e-300 * np.eye(q))
    eta = rng.standard_normal((K, N, q)) @ C.T
    phi = np.repeat(base[None], K + 1, axis=0)
    ridx = [params.index(p) for p in pop.random]
    phi[1:, :, ridx] += eta
    f, ok = _simulate_batch(pop.model, arrays, jnp.asarray(phi))
    if not bool(ok):
        raise RuntimeError(
            "an ODE solve failed at the population parameters (PRED) or in the simulations "
            "of the NPDE/VPC (extreme random effects?)."
        )
    pred, f = np.asarray(f[0]), np.asarray(f[1:])
    R = np.asarray(pop.error.variance(jnp.asarray(f), th))
    y = f + np.sqrt(R) * rng.standard_normal(f.shape)
    return {"f": f, "y": y, "pred": pred}


def _npde(fit, diag, sims) -> np.ndarray:
    from scipy.special import ndtri

    _, _, _, arrays, _ = fit._context
    mask = np.asarray(arrays.obs_mask)
    dv = np.asarray(arrays.dv)
    y = sims["y"]
    K = y.shape[0]
    out = []
    for i in range(mask.shape[0]):
        m = mask[i]
        ys = y[:, i, m]  # (K, n_i)
        mu = ys.mean(0)
        C = np.atleast_2d(np.cov(ys, rowvar=False))
        W = _inv_sqrt(C)
        obs = W @ (dv[i][m] - mu)
        sim = (ys - mu) @ W.T
        pde = np.mean(sim < obs[None, :], axis=0)
        pde = np.clip(pde, 1.0 / (2 * K), 1.0 - 1.0 / (2 * K))
        npde = ndtri(pde)
        if arrays.cens is not None:
            npde = np.where(np.asarray(arrays.cens)[i][m], np.nan, npde)
        out.append(npde)
    return np.concatenate(out)


def _vpc(diag, sims, bins, prediction_corrected, fit) -> dict:
    """Observed 5/50/95th percentiles per time bin and the 90% intervals of the simulated
    replicates' percentiles (module docstring)."""
    _, _, _, arrays, _ = fit._context
    mask = np.asarray(arrays.obs_mask)
    t = diag["TIME"]
    ys = sims["y"][:, mask]  # (K, n_obs), same order as diag (subject by subject)
    obs = diag["DV"].copy()
    distinct = np.unique(t)
    if bins is None and distinct.size <= 12:
        edges = None
        labels = np.searchsorted(distinct, t)
        centers = distinct
    else:
        nb = int(bins or 10)
        edges = np.unique(np.quantile(t, np.linspace(0, 1, nb + 1)))
        labels = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, edges.size - 2)
        centers = np.array(
            [
                np.median(t[labels == b]) if np.any(labels == b) else np.nan
                for b in range(edges.size - 1)
            ]
        )
    if prediction_corrected:
        pred = diag["PRED"]
        corr = np.ones_like(pred)
        for b in np.unique(labels):
            sel = labels == b
            corr[sel] = np.median(pred[sel]) / pred[sel]
        obs = obs * corr
        ys = ys * corr[None, :]
    qs = (5, 50, 95)
    rows = []
    for b in range(centers.size):
        sel = labels == b
        if not sel.any():
            continue
        o = np.percentile(obs[sel], qs)
        s = np.percentile(ys[:, sel], qs, axis=1)  # (3, K)
        lo, hi = np.percentile(s, 5, axis=1), np.percentile(s, 95, axis=1)
        med = np.percentile(s, 50, axis=1)
        rows.append(
            {
                "time": float(centers[b]),
                "n": int(sel.sum()),
                "observed": [float(v) for v in o],
                "simulated_median": [float(v) for v in med],
                "simulated_lo": [float(v) for v in lo],
                "simulated_hi": [float(v) for v in hi],
            }
        )
    return {
        "percentiles": list(qs),
        "interval": 90,
        "prediction_corrected": bool(prediction_corrected),
        "edges": None if edges is None else [float(e) for e in edges],
        "dv": [float(v) for v in obs],
        "bins": rows,
        "n_simulations": int(sims["y"].shape[0]),
    }


def read_results(path) -> dict | None:
    """A previous ``results.json`` (None if absent)."""
    import json

    p = Path(path)
    if not p.exists():
        return None
    with open(p) as fh:
        return json.load(fh)
