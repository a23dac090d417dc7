"""results.json → ``report.md`` and its figures.

:func:`write_report` reads the dict that :func:`invcal.tune` / :func:`invcal.grid_search`
write to ``results.json`` (see :mod:`invcal.outer`) and writes, next to it,

- ``trajectory.png``: each hyperparameter entry against the outer step (arrays with many
  components are summarized by their min–max band and median);
- ``criterion.png``: the outer criterion E per step, with the best point;
- ``grad_norm.png``: the hypergradient norm ‖dE/dz‖ per step on a log scale (skipped for
  searches, whose rows carry no gradient);
- ``landscape.png``: when ``results["landscape"]`` holds a grid over one or two scalar
  entries, E along that grid (a curve or a contour map) with the trajectory drawn on it;
- ``report.md``: the run's settings, a table of the initial, final and best θ and E, the work
  done by the inner and linear solvers, convergence flags, and the figures with captions.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no
window, no global backend switch), so reports can be written from any thread or server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .history import HistoryRow
from .runfolder import RESULTS_FILE

__all__ = ["load_results", "write_report", "REPORT_FILE"]

REPORT_FILE = "report.md"

# Array-valued entries with more components than this are drawn as a band + a few lines.
_MAX_LINES = 5
_SAMPLE_LINES = 3
# At most this many θ entries get a panel in the trajectory figure.
_MAX_PANELS = 8
_DPI = 110
_OWN_FIGURES = ("trajectory.png", "criterion.png", "grad_norm.png", "landscape.png")


# --------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------
def load_results(path) -> dict:
    """Read a ``results.json`` (``path`` is the file or the run directory holding it).

    Raises ``FileNotFoundError`` when there is no such file and ``ValueError`` when it is not
    a results file (invalid JSON, or no ``history`` list).
    """
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"no results file at {str(p)!r}; pass a run directory (the --out of `invcal run`) "
            f"or the path of its {RESULTS_FILE}."
        )
    try:
        results = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{str(p)!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "it is corrupt or not an invcal results file. Re-run without --resume to start over."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {str(p)!r}: {e}") from None
    _check_results(results, where=repr(str(p)))
    return results


def _check_results(results, *, where: str = "results") -> None:
    if not isinstance(results, Mapping):
        raise ValueError(
            f"{where} must be a results dict (the content of results.json); "
            f"got {type(results).__name__}."
        )
    history = results.get("history")
    if not isinstance(history, list):
        raise ValueError(
            f"{where} has no 'history' list; it is not an invcal results file "
            "(written by invcal.tune or invcal.grid_search)."
        )
    for i, row in enumerate(history):
        if not isinstance(row, Mapping) or "value" not in row or "theta" not in row:
            raise ValueError(
                f"{where}: history row {i} is not a step record with 'theta' and 'value'; "
                f"got {row!r:.80}."
            )


# --------------------------------------------------------------------------------------
# Series extracted from the history
# --------------------------------------------------------------------------------------
def _float(v) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _rows(results) -> list[HistoryRow]:
    """The history as typed rows (tolerant: a missing or mistyped field reads as None)."""
    return [HistoryRow.from_json(row) for row in results["history"]]


def _series(history, key) -> np.ndarray:
    return np.array([_float(getattr(row, key)) for row in history], dtype=float)


def _step(row: HistoryRow, i: int) -> int:
    return row.step if row.step is not None else i


def _steps(history) -> np.ndarray:
    return np.array(
        [row.step if row.step is not None else i for i, row in enumerate(history)],
        dtype=float,
    )


def _entry_names(results) -> list[str]:
    history = _rows(results)
    space = results.get("space")
    if isinstance(space, Mapping) and space:
        names = list(space)
    elif history:
        names = list(history[0].theta)
    else:
        names = []
    return [n for n in names if not history or n in history[0].theta]


def _entry_values(history, name) -> np.ndarray:
    """(steps, components) array of θ[name] along the history (scalars: one component)."""
    vals = []
    for row in history:
        v = row.theta.get(name)
        a = np.asarray(np.nan if v is None else v, dtype=float).ravel()
        vals.append(a)
    width = max((a.size for a in vals), default=1)
    out = np.full((len(vals), width), np.nan)
    for i, a in enumerate(vals):
        out[i, : a.size] = a
    return out


def _transform(results, name) -> str:
    space = results.get("space")
    if isinstance(space, Mapping) and isinstance(space.get(name), Mapping):
        return str(space[name].get("transform", ""))
    return ""


def _shape(results, name) -> tuple:
    space = results.get("space")
    if isinstance(space, Mapping) and isinstance(space.get(name), Mapping):
        shape = space[name].get("shape")
        if isinstance(shape, list):
            return tuple(shape)
    history = _rows(results)
    if history:
        return np.shape(history[0].theta.get(name))
    return ()


def _is_scalar(results, name) -> bool:
    return int(np.prod(_shape(results, name))) == 1


def _fmt(v, digits: int = 6) -> str:
    f = _float(v)
    if math.isnan(f):
        return "—"
    if math.isinf(f):
        return "inf" if f > 0 else "−inf"
    return f"{f:.{digits}g}"


def _fmt_theta(v, digits: int = 6) -> str:
    a = np.asarray(np.nan if v is None else v, dtype=float)
    if a.size == 1:
        return _fmt(a.reshape(()), digits)
    fin = a[np.isfinite(a)]
    shape = "×".join(str(s) for s in a.shape)
    if fin.size == 0:
        return f"array {shape}, no finite entries"
    return (
        f"array {shape}: mean {_fmt(fin.mean(), 4)}, range [{_fmt(fin.min(), 4)}, "
        f"{_fmt(fin.max(), 4)}]"
    )


def _log_friendly(a: np.ndarray, *, ratio: float = 100.0) -> bool:
    """Positive values spanning more than ``ratio``: a log axis reads better."""
    fin = a[np.isfinite(a)]
    return fin.size > 1 and bool(np.all(fin > 0)) and fin.max() / fin.min() > ratio


def _geometric(axis: np.ndarray) -> bool:
    """A positive axis with (nearly) constant ratios and a wide span: plot it on a log scale."""
    a = np.asarray(axis, dtype=float)
    if a.size < 3 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        return False
    d = np.diff(np.log(a))
    return bool(np.allclose(d, d[0], rtol=1e-3)) and a.max() / a.min() > 20


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=_DPI)


def _mark_rejected(ax, x, y, rejected) -> None:
    if np.any(rejected):
        ax.plot(x[rejected], y[rejected], "x", color="tab:red", ms=7, label="rejected step")


def _plot_trajectory(results, path: Path) -> str:
    history = _rows(results)
    names = _entry_names(results)
    shown = names[:_MAX_PANELS]
    steps = _steps(history)
    rejected = np.array([row.accepted is False for row in history])
    n = len(shown)
    fig = Figure(figsize=(7.0, 1.0 + 2.0 * n), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    notes = []
    for ax, name in zip(axes, shown, strict=True):
        vals = _entry_values(history, name)
        k = vals.shape[1]
        if k == 1:
            ax.plot(steps, vals[:, 0], "o-", ms=3, lw=1.2, color="tab:blue")
            _mark_rejected(ax, steps, vals[:, 0], rejected)
        elif k <= _MAX_LINES:
            for j in range(k):
                ax.plot(steps, vals[:, j], "o-", ms=2.5, lw=1.0, label=f"{name}[{j}]")
            ax.legend(fontsize=7, ncol=min(k, 5), loc="best")
        else:
            with np.errstate(all="ignore"):
                lo, med, hi = (
                    np.nanmin(vals, axis=1),
                    np.nanmedian(vals, axis=1),
                    np.nanmax(vals, axis=1),
                )
            ax.fill_between(steps, lo, hi, color="tab:blue", alpha=0.2, label="min–max")
            ax.plot(steps, med, "-", color="tab:blue", lw=1.5, label="median")
            for j in range(_SAMPLE_LINES):
                ax.plot(steps, vals[:, j], "-", lw=0.7, alpha=0.8, label=f"{name}[{j}]")
            ax.legend(fontsize=7, ncol=3, loc="best")
            notes.append(
                f"θ[{name!r}] has {k} components: the band is their min–max, the thick line "
                f"their median, and components 0–{_SAMPLE_LINES - 1} are drawn thin."
            )
        if "Log" in _transform(results, name) and _log_friendly(vals, ratio=1.0):
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("outer step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Hyperparameter trajectory")
    _save(fig, path)
    caption = "Each hyperparameter entry (user values) against the outer step."
    if np.any(rejected):
        caption += " Red crosses are rejected steps (the point was evaluated, then discarded)."
    if len(names) > len(shown):
        caption += (
            f" Only the first {len(shown)} of {len(names)} entries are drawn "
            f"({', '.join(shown)}); the table lists all."
        )
    if notes:
        caption += " " + " ".join(notes)
    return caption


def _plot_criterion(results, path: Path) -> str:
    history = _rows(results)
    steps = _steps(history)
    values = _series(history, "value")
    rejected = np.array([row.accepted is False for row in history])
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, values, "o-", ms=3, lw=1.2, color="tab:blue", label="E at step")
    ok = np.isfinite(values) & ~rejected
    if np.any(ok):
        running = np.fmin.accumulate(np.where(ok, values, np.inf))
        running[np.isinf(running)] = np.nan
        ax.plot(steps, running, "--", lw=1.0, color="tab:gray", label="best so far")
    _mark_rejected(ax, steps, values, rejected)
    best = results.get("best")
    if isinstance(best, Mapping) and best.get("value") is not None:
        ax.plot(
            [_float(best.get("step"))],
            [_float(best["value"])],
            "*",
            ms=13,
            color="tab:orange",
            label=f"best: {_fmt(best['value'], 5)}",
        )
    if _log_friendly(values):
        ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("criterion E")
    ax.set_title("Outer criterion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    caption = (
        "The outer criterion E(x*(θ), θ) at each evaluated θ; the dashed line is the best so far"
    )
    caption += ", the star the best point." if isinstance(best, Mapping) else "."
    return caption


def _plot_grad_norm(results, path: Path) -> str | None:
    history = _rows(results)
    steps = _steps(history)
    g = _series(history, "grad_norm")
    good = np.isfinite(g) & (g > 0)
    if not np.any(good):
        return None
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(steps[good], g[good], "o-", ms=3, lw=1.2, color="tab:purple")
    zero = np.isfinite(g) & (g == 0)
    caption = (
        "The hypergradient norm ‖dE/dz‖ in the optimizer's unconstrained coordinates z (log scale)."
    )
    if np.any(zero):
        caption += f" {int(zero.sum())} step(s) with an exactly zero gradient are not drawn."
    ax.set_xlabel("outer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("‖dE/dz‖")
    ax.set_title("Hypergradient norm")
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)
    return caption


def _landscape(results) -> dict | None:
    """The landscape, if it is drawable: 1 or 2 scalar entries, axes and values that agree."""
    land = results.get("landscape")
    if not isinstance(land, Mapping):
        return None
    names, axes = land.get("names"), land.get("axes")
    if not (isinstance(names, list) and isinstance(axes, list) and len(names) == len(axes)):
        return None
    if len(names) not in (1, 2) or not (1 <= len(_entry_names(results)) <= 2):
        return None
    if not all(_is_scalar(results, n) for n in names):
        return None
    try:
        ax_arrays = [np.asarray(a, dtype=float).ravel() for a in axes]
        values = np.array(land.get("values"), dtype=float)
    except (TypeError, ValueError):
        return None
    if values.shape != tuple(a.size for a in ax_arrays):
        return None
    return {"names": names, "axes": ax_arrays, "values": values}


def _plot_landscape(results, land: dict, path: Path) -> str:
    history = _rows(results)
    names, axes, V = land["names"], land["axes"], np.ma.masked_invalid(land["values"])
    traj = [_entry_values(history, n)[:, 0] for n in names]
    values = _series(history, "value")
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    others = [n for n in _entry_names(results) if n not in names]
    if len(names) == 1:
        a = axes[0]
        ax.plot(a, V, "-", color="tab:gray", lw=1.5, label="E on the grid")
        ax.plot(
            traj[0], values, "o-", ms=3, lw=0.8, color="tab:blue", alpha=0.8, label="trajectory"
        )
        ax.set_xlabel(names[0])
        ax.set_ylabel("criterion E")
        if _geometric(a):
            ax.set_xscale("log")
        if _log_friendly(np.ma.filled(V, np.nan)):
            ax.set_yscale("log")
        shape = "curve"
    else:
        a0, a1 = axes
        # Levels at quantiles of E put the colour resolution where the values are: a flat
        # valley next to steep walls stays readable.
        fin = V.compressed()
        levels = np.unique(np.quantile(fin, np.linspace(0.0, 1.0, 21))) if fin.size else 20
        if np.size(levels) < 3:
            levels = 20
        cs = ax.contourf(a0, a1, V.T, levels=levels, cmap="viridis")
        ax.contour(a0, a1, V.T, levels=cs.levels[::4], colors="white", linewidths=0.4, alpha=0.6)
        fig.colorbar(cs, ax=ax, label="criterion E (levels at quantiles)", format="%.4g")
        ax.plot(traj[0], traj[1], "o-", ms=3, lw=1.0, color="tab:red", label="trajectory")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        if _geometric(a0):
            ax.set_xscale("log")
        if _geometric(a1):
            ax.set_yscale("log")
        shape = "contour map"
    if len(history):
        start = (traj[0][0], traj[1][0]) if len(names) == 2 else (traj[0][0], values[0])
        ax.plot(*start, "s", ms=8, mfc="none", mec="black", mew=1.5, label="start")
    best = results.get("best")
    if isinstance(best, Mapping) and isinstance(best.get("theta"), Mapping):
        bt = [_float(np.ravel(best["theta"].get(n, np.nan))[0]) for n in names]
        bp = (bt[0], bt[1]) if len(names) == 2 else (bt[0], _float(best.get("value")))
        ax.plot(*bp, "*", ms=14, color="tab:orange", mec="black", label="best")
    if V.count():
        i = np.unravel_index(np.argmin(np.ma.filled(V, np.inf)), V.shape)
        gp = (axes[0][i[0]], axes[1][i[1]]) if len(names) == 2 else (axes[0][i[0]], V[i])
        ax.plot(
            *gp,
            "+",
            ms=12,
            mew=2,
            color="white" if len(names) == 2 else "black",
            label="grid minimum",
        )
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Criterion landscape")
    _save(fig, path)
    n_points = int(np.prod(V.shape))
    caption = (
        f"E on a grid of {n_points} points over {' × '.join(names)} ({shape}), with the "
        "optimizer's trajectory (square: start, star: best evaluated point, +: grid minimum)."
    )
    if others:
        caption += (
            f" The other entries ({', '.join(others)}) are held at their initial values on the "
            "grid."
        )
    if V.count() < n_points:
        caption += f" {n_points - V.count()} grid point(s) with a non-finite E are left blank."
    return caption


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------
def _html_escape(text) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MD_SPECIAL = "\\`*_{}[]()#+!|~"


def _plain(text) -> str:
    """Text from results.json as literal text in the report: HTML and every Markdown
    character escaped, newlines flattened (a results.json from elsewhere may carry markup,
    script tags or links in its strings)."""
    out = _html_escape(" ".join(str(text).split()))
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in out)


def _code(text) -> str:
    """Text shown as inline code: backticks cannot close the span, HTML is escaped."""
    return "`" + _html_escape(" ".join(str(text).split())).replace("`", "'") + "`"


def _figure_name(filename: str) -> str | None:
    """``filename`` if it names a file directly inside the run folder (no folders, no
    ``..``, not absolute), else None: a report links and probes only its own run folder."""
    name = str(filename)
    if not name or name != Path(name).name or name in (".", "..") or "\\" in name:
        return None
    return name


def _table(results) -> list[str]:
    history = _rows(results)
    names = _entry_names(results)
    header = "| | step | " + " | ".join(f"{_plain(n)}" for n in names) + " | criterion E |"
    lines = [header, "|---|---:|" + "---:|" * len(names) + "---:|"]

    def row_line(label, row, bold=False):
        cells = [_plain(_fmt_theta(row.theta.get(n))) for n in names]
        value = _fmt(row.value)
        if bold:
            value = f"**{value}**"
        step = "—" if row.step is None else row.step
        return f"| {label} | {step} | " + " | ".join(cells) + f" | {value} |"

    lines.append(row_line("initial", history[0]))
    lines.append(row_line("final", history[-1]))
    best = results.get("best")
    if isinstance(best, Mapping) and isinstance(best.get("theta"), Mapping):
        lines.append(row_line("**best**", HistoryRow.from_json(best), bold=True))
    return lines


def _work(results) -> list[str]:
    history = _rows(results)
    n = len(history)
    out = []
    elapsed = _float(history[-1].elapsed)
    walls = _series(history, "wall_time")
    wall_sum = float(np.nansum(walls)) if np.any(np.isfinite(walls)) else math.nan
    if math.isfinite(elapsed):
        line = f"- total wall time: {elapsed:.3g} s"
        if math.isfinite(wall_sum):
            line += f" (outer steps themselves: {wall_sum:.3g} s)"
        out.append(line)
    elif math.isfinite(wall_sum):
        out.append(f"- total wall time of the steps: {wall_sum:.3g} s")
    requested = results.get("steps_requested")
    rejected = [_step(row, i) for i, row in enumerate(history) if row.accepted is False]
    line = f"- outer steps: {n}" + (f" of {requested} requested" if requested is not None else "")
    if rejected:
        line += f"; {len(rejected)} rejected ({_list_steps(rejected)})"
    out.append(line)
    for key, label in (("inner", "inner solver"), ("linear", "implicit linear solve")):
        steps = _series(history, f"{key}_steps")
        res = _series(history, f"{key}_residual")
        if np.any(np.isfinite(steps)) and (key == "inner" or np.nansum(steps) > 0):
            line = (
                f"- {label} iterations: {int(np.nansum(steps))} in total, "
                f"at most {int(np.nanmax(steps))} per step"
            )
            if np.any(np.isfinite(res)):
                line += f"; largest residual {_fmt(np.nanmax(res), 3)}"
            out.append(line)
    flags = [row.converged for row in history]
    known = [f for f in flags if isinstance(f, bool)]
    if known:
        bad = [_step(row, i) for i, row in enumerate(history) if row.converged is False]
        if bad:
            out.append(
                f"- convergence: **{len(bad)} of {len(known)} steps did not converge** "
                f"({_list_steps(bad)}); their hypergradients are approximate."
            )
        else:
            out.append(
                f"- convergence: all {len(known)} steps converged (inner and linear solves)."
            )
    g = _series(history, "grad_norm")
    if np.any(np.isfinite(g)):
        fin = g[np.isfinite(g)]
        out.append(
            f"- hypergradient norm ‖dE/dz‖: first {_fmt(fin[0], 3)}, last {_fmt(fin[-1], 3)}"
        )
    return out


def _list_steps(steps, limit: int = 12) -> str:
    shown = ", ".join(str(s) for s in steps[:limit])
    return (
        ("step " if len(steps) == 1 else "steps ")
        + shown
        + (f", … (+{len(steps) - limit})" if len(steps) > limit else "")
    )


def _landscape_summary(results, land) -> str | None:
    V = np.ma.masked_invalid(land["values"])
    if not V.count():
        return None
    i = np.unravel_index(np.argmin(np.ma.filled(V, np.inf)), V.shape)
    where = ", ".join(
        f"{n} = {_fmt(a[j], 4)}" for n, a, j in zip(land["names"], land["axes"], i, strict=True)
    )
    text = f"- landscape: grid minimum E = {_fmt(V[i])} at {where}"
    best = results.get("best")
    if isinstance(best, Mapping) and best.get("value") is not None:
        diff = _float(best["value"]) - float(V[i])
        text += (
            f" (best evaluated E is {'below' if diff <= 0 else 'above'} it by {_fmt(abs(diff), 3)})"
        )
    return text


def _settings_line(results) -> str:
    parts = []
    method = results.get("method")
    if method is not None:
        detail = results.get("method_detail")
        parts.append(
            f"method {_code(method)}"
            + (f" ({_plain(detail)})" if detail and detail != method else "")
        )
    if results.get("optimizer") is not None:
        opt = f"optimizer {_code(results['optimizer'])}"
        lr = results.get("learning_rate")
        if isinstance(lr, (int, float)) and lr > 0:
            opt += f" (learning rate {_fmt(lr, 4)})"
        parts.append(opt)
    if results.get("finished") is not None:
        parts.append(
            "finished" if results.get("finished") else "**not finished** (resume with --resume)"
        )
    if results.get("invcal_version"):
        parts.append(f"invcal {_plain(results['invcal_version'])}")
    return " · ".join(parts)


def _extras_lines(results) -> list[str]:
    extra = results.get("extra")
    if not isinstance(extra, Mapping):
        return []
    lines = []
    for k, v in extra.items():
        if k == "figures":
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            lines.append(f"- {_plain(k)}: {_fmt(v) if isinstance(v, float) else _plain(v)}")
    return lines


def _check_extra_figures(extra_figures) -> list[tuple[str, str]]:
    out = []
    for item in extra_figures or ():
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(s, str) for s in item)
        ):
            raise TypeError(
                f"extra_figures must be a list of (caption, filename) string pairs; got {item!r}."
            )
        out.append((item[0], item[1]))
    return out


def write_report(results: Mapping, outdir, *, extra_figures: Iterable = ()) -> Path:
    """Write ``outdir/report.md`` and its PNG figures from a results dict; return the path.

    **Arguments**

    - ``results``: the content of ``results.json`` (:func:`load_results`, or
      ``TuneResult.results``).
    - ``outdir``: the directory to write to (created if needed); usually the run's ``--out``.
    - ``extra_figures``: ``(caption, filename)`` pairs for figures the problem already wrote
      into ``outdir``; they are listed after invcal's own figures.
    """
    _check_results(results)
    extras = _check_extra_figures(extra_figures)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    history = results["history"]
    problem = results.get("problem") or "problem"
    md = [f"# invcal report — {_plain(problem)}", ""]
    settings = _settings_line(results)
    if settings:
        md += [settings, ""]
    figures: list[tuple[str, str, str]] = []  # (title, filename, caption)
    if not history:
        md += ["No outer step was recorded: there is nothing to report yet.", ""]
    else:
        md += ["## Result", ""] + _table(results) + [""]
        md += ["## Work and convergence", ""] + _work(results)
        land = _landscape(results)
        if land is not None:
            summary = _landscape_summary(results, land)
            if summary:
                md.append(summary)
        md += _extras_lines(results)
        md.append("")
        figures.append(
            (
                "Hyperparameter trajectory",
                "trajectory.png",
                _plot_trajectory(results, outdir / "trajectory.png"),
            )
        )
        figures.append(
            ("Outer criterion", "criterion.png", _plot_criterion(results, outdir / "criterion.png"))
        )
        cap = _plot_grad_norm(results, outdir / "grad_norm.png")
        if cap is not None:
            figures.append(("Hypergradient norm", "grad_norm.png", cap))
        if land is not None:
            figures.append(
                (
                    "Criterion landscape",
                    "landscape.png",
                    _plot_landscape(results, land, outdir / "landscape.png"),
                )
            )
    # A figure left over from an earlier report in this directory would contradict this one.
    written = {f for _, f, _ in figures}
    for stale in set(_OWN_FIGURES) - written:
        (outdir / stale).unlink(missing_ok=True)
    if figures:
        md += ["## Figures", ""]
        for title, filename, caption in figures:
            md += [f"### {title}", "", f"![{title}]({filename})", "", f"*{_plain(caption)}*", ""]
    if extras:
        md += ["## Problem-specific figures", ""]
        for caption, filename in extras:
            name = _figure_name(filename)
            if name is None:
                md += [
                    f"*{_plain(caption)}* — not shown: its path {_code(filename)} is not a "
                    "file in the run folder.",
                    "",
                ]
            elif (outdir / name).is_file():
                md += [f"![{_plain(caption)}]({name})", "", f"*{_plain(caption)}*", ""]
            else:
                md += [
                    f"*{_plain(caption)}* — figure {_code(name)} is missing from the run folder.",
                    "",
                ]
    path = outdir / REPORT_FILE
    path.write_text("\n".join(md).rstrip() + "\n")
    return path
