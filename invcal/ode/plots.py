r"""Diagnostic plots of a population fit (matplotlib).

- :func:`plot_subjects`: each subject's observations with its individual prediction
  (IPRED: φᵢ = μ + Bᵢβ + ηᵢ*) and population prediction (PRED: ηᵢ = 0) as curves.
- :func:`plot_goodness_of_fit`: DV against PRED and IPRED (with the identity line) and the
  individual weighted residuals IWRES = (DV − IPRED)/√R(IPRED) against time.

Both take the model, the events and per-subject parameter dicts, so they serve a
:class:`~invcal.ode.PopulationFit` (see its ``plot_*`` methods) as well as a θ from
``invcal run``.
"""

from __future__ import annotations

import math

import numpy as np

from .simulate import simulate

__all__ = ["plot_subjects", "plot_goodness_of_fit"]


def _pyplot():
    import matplotlib.pyplot as plt  # imported on use: invcal.ode works without a display

    return plt


def plot_subjects(
    model,
    events,
    individual: dict,
    population: dict | None = None,
    *,
    num_points: int = 200,
    ncols: int = 4,
    subjects=None,
    ylabel: str = "DV",
    occasion_effects=None,
):
    """One panel per subject: DV (points), IPRED and PRED curves. ``individual`` and
    ``population`` map parameter names to arrays over ``events.subjects`` (or scalars);
    ``occasion_effects``: the occasion effects IPRED adds (:func:`simulate`'s)."""
    plt = _pyplot()
    subjects = list(events.subjects if subjects is None else subjects)
    tmax = float(np.max(events.time))
    grid = np.linspace(float(np.min(events.time)), tmax, num_points)
    ipred = simulate(model, events, individual, times=grid, occasion_effects=occasion_effects)
    pred = None if population is None else simulate(model, events, population, times=grid)
    n = len(subjects)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), sharex=True, squeeze=False
    )
    for k, sid in enumerate(subjects):
        ax = axes[k // ncols][k % ncols]
        t, dv = events.observations(sid)
        ax.plot(t, dv, "o", ms=3.5, color="k", label="DV")
        ax.plot(grid, ipred[sid][1], "-", color="C0", label="IPRED")
        if pred is not None:
            ax.plot(grid, pred[sid][1], "--", color="C1", label="PRED")
        ax.set_title(f"ID {sid}", fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("time")
    fig.tight_layout()
    return fig


def plot_goodness_of_fit(
    model, events, individual: dict, population: dict, variance, *, occasion_effects=None
):
    """DV vs PRED, DV vs IPRED and IWRES vs time. ``variance(f)`` is R(f), the residual
    variance at prediction f (e.g. ``lambda f: sigma**2`` for additive error);
    ``occasion_effects``: the occasion effects IPRED adds (:func:`simulate`'s)."""
    plt = _pyplot()
    ipred = simulate(model, events, individual, occasion_effects=occasion_effects)
    pred = simulate(model, events, population)
    t = np.concatenate([ipred[s][0] for s in events.subjects])
    ip = np.concatenate([ipred[s][1] for s in events.subjects])
    pp = np.concatenate([pred[s][1] for s in events.subjects])
    dv = np.concatenate([events.observations(s)[1] for s in events.subjects])
    iwres = (dv - ip) / np.sqrt(np.asarray(variance(ip)))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, x, name in ((axes[0], pp, "PRED"), (axes[1], ip, "IPRED")):
        lo, hi = float(min(x.min(), dv.min())), float(max(x.max(), dv.max()))
        ax.plot(x, dv, "o", ms=3, alpha=0.7)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(name)
        ax.set_ylabel("DV")
        ax.set_title(f"DV vs {name}", fontsize=10)
    axes[2].plot(t, iwres, "o", ms=3, alpha=0.7)
    axes[2].axhline(0.0, color="k", lw=0.8)
    axes[2].set_xlabel("time")
    axes[2].set_ylabel("IWRES")
    axes[2].set_title("individual weighted residuals", fontsize=10)
    fig.tight_layout()
    return fig
