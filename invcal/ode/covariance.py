"""Covariance of a population fit's estimates for :func:`invcal.ode.calibrate`: ``"R"``,
``"S"``, ``"sandwich"`` and nlme's ``"lme"`` (definitions in :mod:`invcal.ode.calibrate`)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


@eqx.filter_jit
def _subject_terms(pop, space, z, eta0, arrays, tol, max_steps):
    """Per-subject −ℓᵢ and ∂(−ℓᵢ)/∂z at z (implicit through ηᵢ*), η*, ok."""
    vals, grads, eta, info = pop.subject_terms(space, z, eta0, arrays, tol, max_steps)
    return vals, grads, eta, info["ok"]


def _reported(pop, space):
    """(names, kinds, z ↦ reported values): fixed effects, covariate effects, ω SDs (and
    correlations for a full Ω), the occasion effects' SDs π (kind ``"iov"``), residual
    SDs."""
    params = tuple(pop.model.params)
    names = list(params) + [f"beta_{p}_{c}" for p, c in pop.covariates]
    kinds = ["fixed"] * len(params) + ["covariate"] * len(pop.covariates)
    names += [f"omega_{p}" for p in pop.random]
    kinds += ["omega"] * pop.n_random
    full = pop.omega == "full"
    pairs = [(i, j) for i in range(pop.n_random) for j in range(i)] if full else []
    names += [f"corr_{pop.random[i]}_{pop.random[j]}" for i, j in pairs]
    kinds += ["corr"] * len(pairs)
    names += list(pop.iov_names())
    kinds += ["iov"] * len(pop.iov)
    names += list(pop.error.names)
    kinds += ["sigma"] * len(pop.error.names)

    def values(z):
        th = space.to_theta(z)
        out = [th[p] for p in params] + [th[f"beta_{p}_{c}"] for p, c in pop.covariates]
        om = pop.omega_matrix(th)
        sd = jnp.sqrt(jnp.diagonal(om))
        out += list(sd)
        out += [om[i, j] / (sd[i] * sd[j]) for i, j in pairs]
        out += [th[k] for k in pop.iov_names()]
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
    th = {k: jnp.asarray(v) for k, v in fit.theta.items()}
    omega = pop.eta_covariance(th)
    k = len(params) + len(pop.covariates)
    info = np.zeros((k, k))
    for i in range(J.shape[0]):
        m = mask[i]
        Ji = J[i][m]
        R = np.asarray(pop.error.variance(jnp.asarray(f[i][m]), th))
        X = np.zeros((Ji.shape[0], k))
        X[:, : len(params)] = Ji[:, : len(params)]
        for j, (p, c) in enumerate(pop.covariates):
            X[:, len(params) + j] = Ji[:, params.index(p)] * cov[i, pop.cov_names.index(c)]
        Z = pop.random_design(Ji)
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
        if kind in ("omega", "iov", "sigma") and v > 0 and math.isfinite(s):
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
