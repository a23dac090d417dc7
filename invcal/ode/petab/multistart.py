r"""Multistart calibration of a PEtab problem: local optimizations from many starts.

The objective of a systems-biology model has local minima and flat ridges; the standard
remedy is many local optimizations from points spread over the parameter box (Raue et al.
2013, "Lessons learned from quantitative dynamical modeling in systems biology", PLoS ONE
8:e74335; Villaverde et al. 2019, Bioinformatics 35:830). Here:

- **Starts**: a seeded Latin hypercube (``scipy.stats.qmc.LatinHypercube``) over the PEtab
  bounds on the parameters' scales (lin, log, log10), drawn in the dimension of all
  estimated parameters; the hierarchical problem uses the same points' outer coordinates,
  so flat and hierarchical runs start from the same dynamic parameters.
- **Local optimizer**: ``scipy.optimize.minimize(method="L-BFGS-B")`` with the bounds and
  invcal's compiled value and gradient (one compilation per problem and sensitivity method).
  Why: PEtab problems are box-constrained (log10 bounds of ±5 decades are common), and
  L-BFGS-B is the well-kept quasi-Newton method with bounds (the optimizer pyPESTO and
  Data2Dynamics users fall back on); optimistix and optax have no box constraints.
  The starts run one after another on the host: each start's line search asks for its own
  number of evaluations, and a stiff solve's step count depends on its parameters, so a
  vmapped batch would wait for its slowest member at every evaluation.
- **Stopping**: L-BFGS-B's own tests (projected gradient below 1e-5, relative decrease
  below ftol) are absolute in the parameters' units and fire on plateaus where the
  simulated observables hardly move (on Boehm_JProteomeRes2014, 68 of 100 starts began on
  one and stopped there). A stop is accepted only where the scale-free relative offset
  criterion of Bates & Watts (1981) holds; elsewhere a Gauss-Newton step leaves the plateau
  and L-BFGS-B starts again (:mod:`.stopping`). Starts whose Gauss-Newton step cannot
  decrease the objective either stay, with the offset in their message.
- **Failures are never successes.** An evaluation whose ODE solve fails (or whose value or
  gradient is not finite) returns +inf to the optimizer and is counted. L-BFGS-B may then
  stop where it stands and call it convergence; a segment that met failed evaluations is
  restarted from its best point in a box of radius 1, then 0.1, around it (at most six
  segments) and, if it still meets failures without progress, the start is recorded as
  ``failed``. A start whose objective is not finite at its first point
  is ``failed`` too. Status: ``converged``, ``max_iterations`` or ``failed`` (with the
  optimizer's message).
- **Re-drawn starts** (as pyPESTO's start-point resampling): a start point whose objective
  is not finite (an ODE solve fails there: on Fujita_SciSignal2010 5 of 6 Latin-hypercube
  points) is replaced, before any optimization, by a uniform draw in the bounds on the
  parameters' scales from ``numpy.random.default_rng([seed, index])`` (reproducible per
  start, also on resume), up to ``redraws`` times; the start records the number of draws it
  rejected, and the first point drawn (``drawn_x0``). A start with no finite draw is
  ``failed`` at its last draw.
- **Record**: with ``out``, ``out/results.json`` is rewritten atomically after every start
  (:func:`invcal.outer.atomic_write_json`); the folder is held by
  :func:`invcal.runfolder.claim_run_folder` (one run per folder; ``resume`` continues a run
  with the same settings, skipping its finished starts; ``overwrite`` replaces it); at the
  end ``report.md`` and its figures (:mod:`.report`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ...precision import computes_in_float64
from .problem import PEtabProblem, _check_sensitivities, _log_density
from .solve import observe, simulate
from .stopping import RELATIVE_OFFSET, relative_offset_step

__all__ = ["MultistartResult", "StartResult", "calibrate", "start_points"]

KIND = "petab_multistart"
_SEGMENTS = 6  # L-BFGS-B runs per start (restarts after failed evaluations)
_GAUSS_NEWTON_STEPS = 10  # steps off a plateau per start (.stopping)


@dataclasses.dataclass
class StartResult:
    """One local optimization: ``x0`` and ``x`` on the parameters' scales (all estimated
    parameters; for a hierarchical run, the inner ones at their closed-form optimum),
    ``objective`` (the negative log-likelihood at ``x``; inf if not finite), ``status``
    (``converged``, ``max_iterations``, ``failed``), ``message``, ``iterations``,
    ``evaluations``, ``failed_evaluations``, ``seconds``; ``redraws`` (start points rejected
    because the objective was not finite there) and ``drawn_x0`` (the Latin-hypercube point,
    equal to ``x0`` when nothing was re-drawn)."""

    index: int
    x0: list
    x: list
    objective: float
    status: str
    message: str
    iterations: int
    evaluations: int
    failed_evaluations: int
    seconds: float
    redraws: int = 0
    drawn_x0: list | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> StartResult:
        d = dict(d)
        d["objective"] = np.inf if d.get("objective") is None else float(d["objective"])
        d["x"] = [np.nan if v is None else v for v in d["x"]]
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass
class MultistartResult:
    """The outcome of :func:`calibrate`: ``x`` / ``objective`` of the best start (on the
    parameters' scales; ``best`` the same as a dict id → linear-scale value), ``starts``
    sorted by objective (failed and non-finite last), ``nominal_objective`` (at the
    parameter table's nominal values), ``settings``, ``seconds``, ``path`` (the run folder
    or None) and ``model_values`` (the model at ``x``, per observable's measurements)."""

    problem: str
    parameter_ids: tuple
    x: np.ndarray
    objective: float
    best: dict
    starts: list
    nominal_objective: float
    settings: dict
    seconds: float
    path: Path | None = None
    model_values: list | None = None  # y of each observable's measurements at ``x``

    def success_rate(self, tolerance: float = 0.1) -> float:
        """Fraction of starts whose final objective is within ``tolerance`` of the best."""
        if not self.starts or not np.isfinite(self.objective):
            return 0.0
        hits = [s for s in self.starts if s.objective <= self.objective + tolerance]
        return len(hits) / len(self.starts)

    @property
    def counts(self) -> dict:
        """Number of starts per status."""
        out = {}
        for s in self.starts:
            out[s.status] = out.get(s.status, 0) + 1
        return out


def start_points(problem: PEtabProblem, starts: int, seed: int = 0) -> np.ndarray:
    """(starts, n) Latin-hypercube points in the PEtab bounds on the parameters' scales."""
    from scipy.stats import qmc

    n = len(problem.parameter_ids)
    unit = qmc.LatinHypercube(d=n, seed=int(seed)).random(int(starts))
    return qmc.scale(unit, problem.lower, problem.upper)


def _finite_at(problem, x) -> bool:
    """Whether every solve succeeds and the flat objective is finite at the full point x
    (no derivatives: the value program of :meth:`PEtabProblem.objective`)."""
    return bool(np.isfinite(problem.objective(x)))


def _redraw(problem, x0, index: int, seed: int, redraws: int):
    """(start point, number of rejected draws, ``x0`` included) for a start point ``x0``
    whose objective is not finite: the first of up to ``redraws`` uniform draws in the
    bounds (on the parameters' scales, ``default_rng([seed, index])``) where it is finite;
    the last draw if none is."""
    rng = np.random.default_rng([int(seed), int(index)])
    lo, hi = problem.lower, problem.upper
    x = np.asarray(x0, np.float64)
    for k in range(1, redraws + 1):
        x = lo + rng.random(lo.size) * (hi - lo)
        if _finite_at(problem, x):
            return x, k
    return x, redraws + 1


def _flat_objective(problem, x, sensitivities):
    """(J(x), (ok, model values per observable)): the flat objective with the model values
    as auxiliary output, so that the report's data-vs-model figures need no other program."""
    sim = simulate(problem, x, sensitivities)
    llh, ys = jnp.zeros((), sim.v.dtype), []
    pairs = zip(problem.transformations, problem.distributions, strict=True)
    for k, (trafo, dist) in enumerate(pairs):
        m, y, sigma = observe(problem, sim, k)
        llh = llh + jnp.sum(_log_density(m, y, sigma, trafo, dist))
        ys.append(jax.lax.stop_gradient(y))
    return jnp.where(jnp.all(sim.ok), -llh, jnp.inf), (sim.ok, ys)


@eqx.filter_jit
def _flat_jit(problem, x, sensitivities):
    return sensitivities.value_and_grad(lambda y: _flat_objective(problem, y, sensitivities), x)


class _Objective:
    """f(z), ∇f(z) for scipy: +inf (and a zero gradient) where the solve fails; counts."""

    def __init__(self, problem, sensitivities, hierarchy):
        self.problem = problem
        self.sensitivities = sensitivities
        self.hierarchy = hierarchy
        self.evaluations = 0
        self.failures = 0
        self.best = (np.inf, None)
        self.inner = None  # the inner parameters at the best point (hierarchical)

    def evaluate(self, z):
        """(value or inf, gradient, ok, inner values or None, model values)."""
        try:
            return self._evaluate(z)
        except eqx.EquinoxRuntimeError:
            # a check inside the solve raised (e.g. a singular Newton system in an implicit
            # step, seen on Fujita_SciSignal2010): a failed evaluation like any other
            return np.inf, np.zeros(len(z)), False, None, None

    def _evaluate(self, z):
        if self.hierarchy is not None:
            return self.hierarchy.evaluate(z, self.sensitivities, model_values=True)
        with jax.enable_x64(True):
            (value, (ok, ys)), grad = _flat_jit(
                self.problem, jnp.asarray(np.asarray(z, np.float64)), self.sensitivities
            )
            value, grad = float(value), np.asarray(grad, np.float64)
            ys = [np.asarray(y) for y in ys]
        ok = bool(np.all(ok)) and np.isfinite(value) and bool(np.all(np.isfinite(grad)))
        return (value if ok else np.inf), grad, ok, None, ys

    def __call__(self, z):
        self.evaluations += 1
        value, grad, ok, inner, _ = self.evaluate(z)
        if not ok:
            self.failures += 1
            return np.inf, np.zeros(len(z))
        if value < self.best[0]:
            self.best = (value, np.array(z, dtype=np.float64))
            self.inner = inner
        return value, grad


def _optimize(fun: _Objective, z0, bounds, max_iterations: int):
    """(z, objective, status, message, iterations) of L-BFGS-B from z0; after a segment that
    met failed evaluations, L-BFGS-B restarts from its best point inside a box of radius
    1, then 0.1 (on the parameters' scales) around it, so that its first steps cannot jump
    back into the region where the solves fail; a restricted segment that ends on its own
    box's edge is followed by one with the whole bounds (module docstring). A stop that
    the relative offset test does not accept (a plateau, :mod:`.stopping`) is followed by
    a Gauss-Newton step and L-BFGS-B again, at most ``_GAUSS_NEWTON_STEPS`` times; each
    step counts as an iteration."""
    from scipy.optimize import minimize

    f0, _ = fun(z0)
    if not np.isfinite(f0):
        return np.asarray(z0), np.inf, "failed", "objective not finite at the start point", 0
    lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    z, f, iterations, radius = np.asarray(z0, np.float64), f0, 0, None
    segments, steps = 0, 0
    while segments < _SEGMENTS:
        segments += 1
        failures = fun.failures
        if radius is None:
            box_lo, box_hi = lo, hi
        else:
            box_lo, box_hi = np.maximum(lo, z - radius), np.minimum(hi, z + radius)
        res = minimize(
            fun,
            z,
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip(box_lo.tolist(), box_hi.tolist(), strict=True)),
            options={"maxiter": max(max_iterations - iterations, 1)},
        )
        iterations += int(res.nit)
        # the optimizer's x is its last accepted point; keep the best point evaluated
        f_new, z_new = fun.best
        improved = f_new < f - 1e-9 * (1.0 + abs(f))
        z, f = (z_new, f_new) if f_new <= f else (z, f)
        message = str(res.message)
        if iterations >= max_iterations:
            status = "max_iterations" if fun.failures == failures else "failed"
            return z, f, status, message, iterations
        if fun.failures == failures:  # no failed evaluation: scipy's word stands
            on_edge = np.any(((z <= box_lo) & (box_lo > lo)) | ((z >= box_hi) & (box_hi < hi)))
            if radius is not None and on_edge:
                radius = None  # the restricted box held it back: the whole bounds again
                continue
            if res.status != 0:
                return z, f, "failed", message, iterations
            if steps >= _GAUSS_NEWTON_STEPS:
                message += f"; stopped after {steps} Gauss-Newton steps off plateaus"
                return z, f, "max_iterations", message, iterations
            z_new, offset = relative_offset_step(fun, z, f, lo, hi)
            if z_new is None:
                if offset > RELATIVE_OFFSET:
                    message += (
                        f"; relative offset {offset:.2g}, no Gauss-Newton step decreases "
                        "the objective"
                    )
                return z, f, "converged", message, iterations
            # a stop on a plateau, not at a minimum (.stopping): L-BFGS-B again from there
            steps, segments, iterations = steps + 1, segments - 1, iterations + 1
            z, f, radius = fun.best[1], fun.best[0], None
            continue
        if not improved and radius is not None and radius <= 0.1:
            break
        radius = 1.0 if radius is None else 0.1
    message = (
        f"stopped next to parameters where the ODE solve fails ({fun.failures} failed "
        f"evaluations; L-BFGS-B: {message})"
    )
    return z, f, "failed", message, iterations


def _sorted(starts: list) -> list:
    return sorted(starts, key=lambda s: (not np.isfinite(s.objective), s.objective, s.index))


def _settings(problem, starts, seed, sensitivities, hierarchy, max_iterations, redraws) -> dict:
    return {
        "problem": str(problem.file),
        "starts": int(starts),
        "seed": int(seed),
        "sampler": "latin_hypercube",
        "optimizer": "scipy L-BFGS-B",
        "sensitivities": type(sensitivities).__name__,
        "hierarchical": hierarchy is not None,
        "max_iterations": int(max_iterations),
        "redraws": int(redraws),
        "inner": list(hierarchy.inner_ids) if hierarchy is not None else [],
        "inner_types": list(hierarchy.types) if hierarchy is not None else [],
    }


def _check_previous(previous: dict, settings: dict, path: Path) -> None:
    if previous.get("kind") != KIND:
        raise ValueError(
            f"--resume: {path} holds a run of kind {previous.get('kind')!r}, not a PEtab "
            "multistart; pass another --out or drop --resume."
        )
    old = previous.get("settings") or {}
    diff = [k for k in settings if old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise ValueError(
            f"--resume: {path} is a run with {k}={old.get(k)!r}, this one has "
            f"{k}={settings[k]!r}; pass the same settings, --overwrite, or another --out."
        )


@computes_in_float64
def calibrate(
    problem: PEtabProblem,
    *,
    starts: int = 20,
    sensitivities=None,
    seed: int = 0,
    hierarchical: bool = False,
    max_iterations: int = 1000,
    redraws: int = 20,
    out=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable | None = None,
) -> MultistartResult:
    """Multistart calibration of ``problem`` (module docstring).

    - ``starts``: number of local optimizations; ``seed``: the Latin hypercube's seed.
    - ``sensitivities``: :class:`Forward` (default), :class:`Adjoint`, :class:`Checkpointed`.
    - ``hierarchical``: solve the observation parameters (scaling, offset, sigma) in closed
      form inside the objective (:mod:`.hierarchical`); the optimizer sees the others.
    - ``max_iterations``: L-BFGS-B's iterations per start (all segments together).
    - ``redraws``: how many times a start point whose objective is not finite is replaced
      by a seeded uniform draw in the bounds (0: never; module docstring).
    - ``out``: a run folder for results.json (after every start), report.md and figures;
      ``resume``/``overwrite`` as in ``invcal calibrate``.
    - ``progress``: called ``progress(done, total, start_result)`` after every start.

    Computes in float64 whatever JAX's global flag. Returns a :class:`MultistartResult`.
    """
    if isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or starts < 1:
        raise ValueError(f"starts must be a positive integer; got {starts!r}.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)):
        raise ValueError(f"max_iterations must be a positive integer; got {max_iterations!r}.")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive integer; got {max_iterations!r}.")
    if isinstance(redraws, bool) or not isinstance(redraws, (int, np.integer)) or redraws < 0:
        raise ValueError(f"redraws must be a non-negative integer; got {redraws!r}.")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other; pass one.")
    sensitivities = _check_sensitivities(sensitivities)
    hierarchy = None
    if hierarchical:
        from .hierarchical import hierarchical_problem

        hierarchy = hierarchical_problem(problem)
    settings = _settings(problem, starts, seed, sensitivities, hierarchy, max_iterations, redraws)
    points = start_points(problem, starts, seed)
    if out is None:
        return _run(problem, hierarchy, sensitivities, settings, points, None, {}, progress)
    from ...outer import atomic_write_json
    from ...runfolder import RESULTS_FILE, claim_run_folder

    out = Path(out)
    with claim_run_folder(out, resume=resume, overwrite=overwrite or resume):
        path = out / RESULTS_FILE
        done = {}
        if resume and path.exists():
            import json

            try:
                previous = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"--resume: {path} does not read ({e}).") from None
            _check_previous(previous, settings, path)
            done = {int(d["index"]): StartResult.from_json(d) for d in previous.get("starts", [])}
        record = {
            "kind": KIND,
            "problem": str(problem.file),
            "status": "running",
            "settings": settings,
            "parameter_ids": list(problem.parameter_ids),
            "scales": list(problem.scales),
            "lower": problem.lower.tolist(),
            "upper": problem.upper.tolist(),
            "x_nominal": problem.x_nominal.tolist(),
            "start_points": points.tolist(),
            "starts": [s.to_json() for s in done.values()],
        }
        atomic_write_json(path, record)

        def written(result: StartResult):
            record["starts"].append(result.to_json())
            atomic_write_json(path, record)

        result = _run(problem, hierarchy, sensitivities, settings, points, written, done, progress)
        result.path = out
        record.update(
            status="finished",
            objective=result.objective,
            x=result.x.tolist(),
            best=result.best,
            nominal_objective=result.nominal_objective,
            success_rate=result.success_rate(),
            seconds=result.seconds,
        )
        atomic_write_json(path, record)
        from .report import write_report

        write_report(problem, record, out, model_values=result.model_values)
        return result


def _run(problem, hierarchy, sensitivities, settings, points, written, done, progress):
    t_start = time.perf_counter()
    outer = list(hierarchy.outer) if hierarchy is not None else list(range(points.shape[1]))
    lower, upper = problem.lower[outer], problem.upper[outer]
    bounds = list(zip(lower.tolist(), upper.tolist(), strict=True))
    results = list(done.values())
    for k, drawn in enumerate(points):
        if k in done:
            continue
        t0 = time.perf_counter()
        x0, rejected = np.asarray(drawn, np.float64), 0
        fun = _Objective(problem, sensitivities, hierarchy)
        if settings.get("redraws", 0) and not np.isfinite(fun.evaluate(x0[outer])[0]):
            # the optimizer's own program said no; the draws use the value program alone
            x0, rejected = _redraw(problem, x0, k, settings["seed"], settings["redraws"])
        try:
            z, f, status, message, iterations = _optimize(
                fun, x0[outer], bounds, settings["max_iterations"]
            )
        except (RuntimeError, ValueError, FloatingPointError) as e:  # never a success
            z, f, status, iterations = x0[outer], np.inf, "failed", 0
            message = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        if hierarchy is not None and fun.inner is not None and np.isfinite(f):
            x = hierarchy.full_x(z, fun.inner)
        else:  # a failed start keeps its start point's other coordinates
            x = np.array(x0, dtype=np.float64)
            x[outer] = z
        result = StartResult(
            index=k,
            x0=np.asarray(x0).tolist(),
            x=np.asarray(x).tolist(),
            objective=float(f) if np.isfinite(f) else np.inf,
            status=status,
            message=message,
            iterations=int(iterations),
            evaluations=fun.evaluations,
            failed_evaluations=fun.failures,
            seconds=time.perf_counter() - t0,
            redraws=int(rejected),
            drawn_x0=np.asarray(drawn).tolist(),
        )
        results.append(result)
        if written is not None:
            written(result)
        if progress is not None:
            progress(len(results), len(points), result)
    ordered = _sorted(results)
    finite = [s for s in ordered if np.isfinite(s.objective)]
    if finite:
        x_best, f_best = np.asarray(finite[0].x, np.float64), finite[0].objective
    else:
        x_best, f_best = np.full(points.shape[1], np.nan), np.inf
    # the nominal objective by the function the flat runs compiled (no other compilation)
    nominal = _Objective(problem, sensitivities, None).evaluate(problem.x_nominal)[0]
    model_values = None
    if finite:  # the model at the best point, by the runs' own compiled function
        model_values = _Objective(problem, sensitivities, hierarchy).evaluate(x_best[outer])[4]
    best = {
        pid: (float(_linear(v, s)) if np.isfinite(v) else None)
        for pid, v, s in zip(problem.parameter_ids, x_best, problem.scales, strict=True)
    }
    return MultistartResult(
        problem=str(problem.file),
        parameter_ids=tuple(problem.parameter_ids),
        x=x_best,
        objective=float(f_best),
        best=best,
        starts=ordered,
        nominal_objective=float(nominal),
        settings=settings,
        seconds=time.perf_counter() - t_start,
        model_values=model_values,
    )


def _linear(value: float, scale: str) -> float:
    if scale == "log10":
        return 10.0**value
    if scale == "log":
        return float(np.exp(value))
    return value
