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
    th = {k: jnp.asarray(v) for k, v in fit.theta.items()}
    omega = pop.eta_covariance(th)  # diag(Ω, Π, …, Π) with occasions
    mask = np.asarray(arrays.obs_mask)
    J = np.asarray(run["info"]["J"])
    f = np.asarray(run["info"]["ipred"])
    dv = np.asarray(arrays.dv)
    eta = np.asarray(run["eta"])  # (η, κ₁, …, κ_K) with occasions
    cens = None if arrays.cens is None else np.asarray(arrays.cens)
    out = {k: [] for k in ("ID", "TIME", "DV", "PRED", "IPRED", "IWRES", "CWRES")}
    for i, sid in enumerate(events.subjects):
        m = mask[i]
        y, fi, Ji = dv[i][m], f[i][m], J[i][m]
        R = np.asarray(pop.error.variance(jnp.asarray(fi), th))
        Z = pop.random_design(Ji)
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


def _shrink(values, sd) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not (sd > 0 and values.size > 1):
        return float("nan")
    return float(1.0 - np.std(values, ddof=1) / sd)


def _shrinkage(fit, diag) -> dict:
    """η-shrinkage per parameter, ε-shrinkage and, with occasions, κ-shrinkage per
    parameter over every (subject, occasion) the table has (``"iov"``)."""
    eta = {p: _shrink(fit.eta[p], fit.random_sd[p]) for p in fit.random_sd}
    iwres = diag["IWRES"][np.isfinite(diag["IWRES"])]  # censored observations: NaN
    eps = float(1.0 - np.std(iwres, ddof=1)) if iwres.size > 1 else float("nan")
    out = {"eta": eta, "epsilon": eps}
    if fit.iov_sd:
        out["iov"] = {p: _shrink(fit.kappa[p], fit.iov_sd[p]) for p in fit.iov_sd}
    return out


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
    if pop.iov:  # κ ~ N(0, Π) per occasion (unused occasions of a subject: no effect)
        pi = np.asarray(pop.iov_sd(th))
        kappa = rng.standard_normal((K, N, pop.n_occasions, len(pop.iov))) * pi
        kappa = np.concatenate([np.zeros((1,) + kappa.shape[1:]), kappa], axis=0)
        phi = np.concatenate([phi, kappa.reshape(K + 1, N, -1)], axis=2)
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


def _silhouette_1d(u: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) of a partition of sorted values ``u`` into contiguous
    clusters ``labels`` (0, 1, …), exact, in O(n·K) by prefix sums (no n × n distances)."""
    n = u.size
    K = int(labels.max()) + 1
    if K < 2:
        return -1.0
    cs = np.concatenate([[0.0], np.cumsum(u)])
    start = np.searchsorted(labels, np.arange(K), side="left")
    stop = np.searchsorted(labels, np.arange(K), side="right")
    pos = np.searchsorted(u, u, side="right")  # points ≤ u_i (sorted)
    mean = np.empty((n, K))
    for k in range(K):
        a, b = start[k], stop[k]
        p = np.clip(pos, a, b)  # cluster members ≤ u_i are a..p-1
        left = u * (p - a) - (cs[p] - cs[a])
        right = (cs[b] - cs[p]) - u * (b - p)
        mean[:, k] = (left + right) / max(b - a, 1)
    size = (stop - start)[labels]
    own = mean[np.arange(n), labels] * size / np.maximum(size - 1, 1)
    mean[np.arange(n), labels] = np.inf
    other = mean.min(axis=1)
    s = np.where(size > 1, (other - own) / np.maximum(np.maximum(other, own), 1e-300), 0.0)
    return float(np.mean(s))


#: Most time bins the automatic VPC binning considers.
MAX_VPC_BINS = 20


def vpc_bins(t, bins=None) -> np.ndarray:
    """Time bin (0, 1, …, in time order) of each observation time ``t`` for the VPC.

    Observations are binned by clusters of their times, so a bin holds the samples of one
    nominal time of the design however much the actual times jitter around it (quantile
    bins mix nominal times: on Theoph the ~12 h and ~24 h samples fell into one bin drawn
    at 24.15 h). The clusters are the optimal 1-D k-means partition (``kmeans1d``,
    Grønlund et al. 2017's O(kn) algorithm) of u = log(t + c), c the smallest positive
    time: on that scale a jitter proportional to the nominal time has the same spread at
    0.25 h as at 24 h, and t = 0 stays finite. The number of bins is ``bins`` when given;
    by default each distinct time is a bin if there are at most 12 of them, else the k
    in 2..20 with the largest mean silhouette (Rousseeuw 1987; computed exactly in 1-D),
    which on Theoph is 11, its 11 nominal times."""
    import kmeans1d

    t = np.asarray(t, dtype=float)
    distinct = np.unique(t)
    if bins is None and distinct.size <= 12:
        return np.searchsorted(distinct, t)
    if bins is not None and int(bins) < 1:
        raise ValueError(f"vpc_bins must be >= 1; got {bins!r}.")
    pos = distinct[distinct > 0]
    c = float(pos[0]) if pos.size else 1.0
    order = np.argsort(t, kind="stable")
    u = np.log(np.maximum(t[order], 0.0) + c)

    def partition(k):
        lab = np.asarray(kmeans1d.cluster(u, int(k))[0], dtype=int)
        # contiguous in sorted order; renumber 0.. without gaps (equal values share a label)
        return np.unique(lab, return_inverse=True)[1]

    if bins is not None:
        k = min(int(bins), distinct.size)
        best = partition(k)
    else:
        best, score = None, -np.inf
        for k in range(2, min(MAX_VPC_BINS, distinct.size) + 1):
            lab = partition(k)
            s = _silhouette_1d(u, lab)
            if s > score + 1e-12:
                best, score = lab, s
    labels = np.empty(t.size, dtype=int)
    labels[order] = best
    return labels


def _vpc(diag, ys, bins, prediction_corrected) -> dict:
    """Observed 5/50/95th percentiles per time bin (:func:`vpc_bins`) and the 90% intervals of
    the simulated replicates' percentiles; ``ys`` (K, n_obs): the simulated observations in
    the order of ``diag`` (subject by subject). Prediction-corrected (Bergstrand et al.
    2011, lower bound 0): every observed and simulated value y of bin b becomes
    y·PRED_b/PRED with PRED_b the median PRED of the bin (y as it is where PRED = 0, e.g.
    a sample at the time of an oral dose, where the formula is undefined)."""
    t = diag["TIME"]
    obs = np.asarray(diag["DV"], dtype=float).copy()
    ys = np.asarray(ys, dtype=float)
    labels = vpc_bins(t, bins)
    nb = int(labels.max()) + 1 if labels.size else 0
    if prediction_corrected:
        pred = np.asarray(diag["PRED"], dtype=float)
        corr = np.ones_like(pred)
        for b in range(nb):
            sel = labels == b
            pb = np.median(pred[sel])
            corr[sel] = np.divide(pb, pred[sel], out=np.ones(int(sel.sum())), where=pred[sel] != 0)
        obs = obs * corr
        ys = ys * corr[None, :]
    qs = (5, 50, 95)
    rows = []
    for b in range(nb):
        sel = labels == b
        o = np.percentile(obs[sel], qs)
        s = np.percentile(ys[:, sel], qs, axis=1)  # (3, K)
        lo, hi = np.percentile(s, 5, axis=1), np.percentile(s, 95, axis=1)
        med = np.percentile(s, 50, axis=1)
        rows.append(
            {
                "time": float(np.median(t[sel])),
                "t_min": float(np.min(t[sel])),
                "t_max": float(np.max(t[sel])),
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
        "bin": [int(v) for v in labels],
        "dv": [float(v) for v in obs],
        "bins": rows,
        "n_simulations": int(ys.shape[0]),
    }
