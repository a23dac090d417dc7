"""The report of a PEtab multistart run: report.md and its figures (matplotlib, Agg).

- ``waterfall.png``: the starts' final objectives, sorted (failed starts marked), with the
  objective at the parameter table's nominal values as a line;
- ``parameters.png``: the best estimates on the parameters' scales against their bounds,
  the nominal values marked;
- ``fit_<observable>.png``: per observable, the measurements and the model at the best
  parameters, per experiment.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .sensitivities import Checkpointed
from .solve import observe, simulate

__all__ = ["predictions", "write_report"]


@eqx.filter_jit
def _predict(problem, x):
    sim = simulate(problem, x, Checkpointed())
    return [observe(problem, sim, k) for k in range(len(problem.rows))], sim.ok


def predictions(problem, x) -> list[dict]:
    """Per observable: experiment index, time, measurement, model value y and noise σ of
    its measurements at x (on the parameters' scales), float64."""
    with jax.enable_x64(True):
        out, ok = _predict(problem, jnp.asarray(np.asarray(x, np.float64)))
        out = [[np.asarray(a) for a in triple] for triple in out]
    rows = []
    for k, (m, y, sigma) in enumerate(out):
        r = problem.rows[k]
        rows.append(
            {
                "observable": problem.observable_ids[k],
                "experiment": np.asarray(r.experiment),
                "time": np.asarray(r.time),
                "measurement": m,
                "simulation": y,
                "sigma": sigma,
                "ok": bool(np.all(np.asarray(ok))),
            }
        )
    return rows


def _rows(problem, model_values) -> list[dict]:
    return [
        {
            "observable": problem.observable_ids[k],
            "experiment": np.asarray(r.experiment),
            "time": np.asarray(r.time),
            "measurement": np.asarray(r.measurement),
            "simulation": np.asarray(model_values[k]),
        }
        for k, r in enumerate(problem.rows)
    ]


def _fmt(v, digits=6) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_report(problem, record: dict, out, *, model_values=None) -> Path:
    """Write report.md and the figures of the run ``record`` (results.json's content);
    ``model_values``: the model at the best point per observable (default: simulated here,
    which compiles a solve of its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    starts = sorted(
        record["starts"],
        key=lambda s: (s["objective"] is None, s["objective"] or 0.0),
    )
    ids, scales = record["parameter_ids"], record["scales"]
    nominal = record.get("nominal_objective")
    best = record.get("objective")
    settings = record["settings"]
    figures = []

    # waterfall
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [s for s in starts if s["objective"] is not None]
    if finite:
        values = np.array([s["objective"] for s in finite])
        offset = 1.0 - min(values.min(), nominal if nominal is not None else np.inf)
        shifted = values + offset
        ok = np.array([s["status"] != "failed" for s in finite])
        ranks = np.arange(1, len(values) + 1)
        ax.plot(ranks, shifted, "-", color="0.6", lw=1)
        ax.plot(ranks[ok], shifted[ok], "o", color="C0", label="converged / max. iterations")
        if (~ok).any():
            ax.plot(ranks[~ok], shifted[~ok], "x", color="C3", label="failed")
        if nominal is not None:
            ax.axhline(nominal + offset, color="k", ls="--", lw=1, label="nominal parameters")
        ax.set_yscale("log")
        ax.set_ylabel(f"objective − {1.0 - offset:.8g} + 1 (log scale)")
        ax.legend(fontsize=8)
    ax.set_xlabel("start (sorted by final objective)")
    ax.set_title(f"waterfall: {len(finite)} finite of {len(starts)} starts")
    fig.tight_layout()
    fig.savefig(out / "waterfall.png", dpi=110)
    plt.close(fig)
    figures.append(("Waterfall", "waterfall.png"))

    # parameters
    x_best = record.get("x")
    if x_best is not None:
        n = len(ids)
        fig, ax = plt.subplots(figsize=(6.5, 0.35 * n + 1.5))
        y = np.arange(n)
        lower, upper = np.array(record["lower"]), np.array(record["upper"])
        ax.hlines(y, lower, upper, color="0.8", lw=6, label="bounds")
        xb = np.array([np.nan if v is None else v for v in x_best])
        ax.plot(xb, y, "o", color="C0", label="best estimate")
        ax.plot(record["x_nominal"], y, "|", color="k", ms=14, mew=2, label="nominal")
        ax.set_yticks(y, [f"{p} ({s})" for p, s in zip(ids, scales, strict=True)], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("value on the parameter's scale")
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        fig.tight_layout()
        fig.savefig(out / "parameters.png", dpi=110)
        plt.close(fig)
        figures.append(("Parameters", "parameters.png"))

        # data vs simulation
        if model_values is not None or np.all(np.isfinite(xb)):
            given = model_values is not None
            rows = _rows(problem, model_values) if given else predictions(problem, xb)
            for obs in rows:
                fig, ax = plt.subplots(figsize=(6, 4))
                for e in np.unique(obs["experiment"]):
                    sel = obs["experiment"] == e
                    order = np.argsort(obs["time"][sel])
                    t = obs["time"][sel][order]
                    pre, sim = problem.experiments[int(e)]
                    label = sim + (f" (pre: {pre})" if pre else "")
                    (line,) = ax.plot(t, obs["simulation"][sel][order], "-", label=label)
                    ax.plot(t, obs["measurement"][sel][order], "o", color=line.get_color(), ms=4)
                ax.set_xlabel("time")
                ax.set_ylabel(obs["observable"])
                ax.set_title(f"{obs['observable']}: data (dots) and model at the best estimate")
                if len(np.unique(obs["experiment"])) <= 8:
                    ax.legend(fontsize=7)
                fig.tight_layout()
                name = f"fit_{_safe(obs['observable'])}.png"
                fig.savefig(out / name, dpi=110)
                plt.close(fig)
                figures.append((f"Data and model: {obs['observable']}", name))

    counts = {}
    for s in starts:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    lines = [
        f"# PEtab multistart calibration: {Path(record['problem']).name}",
        "",
        f"- problem: `{record['problem']}`",
        f"- starts: {len(starts)} of {settings['starts']} (Latin hypercube, seed "
        f"{settings['seed']}); optimizer {settings['optimizer']}; sensitivities "
        f"{settings['sensitivities']}; hierarchical: {'yes' if settings['hierarchical'] else 'no'}"
        + (
            f" (inner: {', '.join(f'{p} ({t})' for p, t in zip(settings['inner'], settings['inner_types'], strict=True))})"  # noqa: E501
            if settings["hierarchical"]
            else ""
        ),
        f"- best objective (negative log-likelihood): {_fmt(best)}; at the nominal "
        f"parameters: {_fmt(nominal)}",
        f"- starts within 0.1 of the best: {_fmt(record.get('success_rate'), 3)}; status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        f"- start points re-drawn because the objective was not finite there: "
        f"{sum(1 for s in starts if s.get('redraws'))} of {len(starts)} starts, "
        f"{sum(s.get('redraws') or 0 for s in starts)} draws rejected (at most "
        f"{settings.get('redraws', 0)} per start)",
        f"- time: {_fmt(record.get('seconds'), 4)} s",
        "",
        "## Best estimates",
        "",
        "| parameter | scale | estimate (scale) | linear | nominal (linear) | lower | upper |",
        "|---|---|---|---|---|---|---|",
    ]
    best_lin = record.get("best") or {}
    for i, pid in enumerate(ids):
        xv = None if x_best is None else x_best[i]
        nom = record["x_nominal"][i]
        nom_lin = 10**nom if scales[i] == "log10" else math.exp(nom) if scales[i] == "log" else nom
        lines.append(
            f"| {pid} | {scales[i]} | {_fmt(xv)} | {_fmt(best_lin.get(pid))} | {_fmt(nom_lin)} "
            f"| {_fmt(record['lower'][i])} | {_fmt(record['upper'][i])} |"
        )
    lines += [
        "",
        "## Starts (sorted)",
        "",
        "| rank | start | objective | status | iterations | evaluations | failed evals | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, s in enumerate(starts, start=1):
        lines.append(
            f"| {r} | {s['index']} | {_fmt(s['objective'], 8)} | {s['status']} | "
            f"{s['iterations']} | {s['evaluations']} | {s['failed_evaluations']} | "
            f"{s['seconds']:.1f} |"
        )
    failed = [s for s in starts if s["status"] == "failed"]
    if failed:
        lines += ["", "Failed starts:", ""]
        lines += [f"- start {s['index']}: {s['message']}" for s in failed[:20]]
    lines += [""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
