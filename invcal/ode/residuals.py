"""Residuals (IWRES, CWRES), shrinkage and simulation diagnostics (NPDE, visual predictive
check) of a population fit for :func:`invcal.ode.calibrate` (definitions in
:mod:`invcal.ode.calibrate`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


@eqx.filter_jit
def _simulate_batch(model, arrays, phi):
    """Predictions (K, N, M) for parameters phi (K, N, d), and whether every solve worked."""
    from .simulate import predict

    def one(ph):
        return jax.vmap(lambda s, p: predict(model, s, p))(arrays, ph)

    f, ok = jax.vmap(one)(phi)
    return f, jnp.all(ok)


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
