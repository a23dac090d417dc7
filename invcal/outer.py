"""The outer loop: drive θ to the optimum of E(x*(θ), θ) by hypergradients.

:func:`tune` works in the space's unconstrained coordinates z (so positive and bounded
hyperparameters stay feasible) with any optax ``GradientTransformation`` (``"gd"``,
``"adam"``, ``"lbfgs"`` by name), with :class:`HOAG` (Pedregosa 2016) or with :class:`RTHO`
(Franceschi et al. 2017). Every outer step warm-starts the inner solve from the previous x*
(and the implicit adjoint solve from the previous adjoint), appends a row to the history and
writes ``results.json`` atomically, so a killed run resumes from its last finished step.
:func:`grid_search` and :func:`random_search` are the baselines, with the same history rows.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .diagnostics import OnFailure
from .hypergradient import (
    AbstractHypergradient,
    Hypergradient,
    Implicit,
    _check_args,
    describe,
    hypergradient,
)
from .runfolder import RESULTS_FILE, claim_run_folder
from .solvers.fixed_point import FixedSteps

__all__ = ["HOAG", "RTHO", "Secant", "TuneResult", "tune", "grid_search", "random_search"]


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------
_DECREASE = ("quadratic", "cubic", "exponential")


class HOAG(eqx.Module):
    r"""Hyperparameter optimization with approximate gradient (Pedregosa, ICML 2016).

    At outer step k the inner solve and the implicit linear solve are run only to tolerance
    ε_k, a summable sequence (``"quadratic"``: ε₀/k², ``"cubic"``: ε₀/k³,
    ``"exponential"``: ε₀·0.9^k, floored at ``min_tol``); θ moves by z ← z − g/L.

    The step size follows Pedregosa's rules, which allow for the inexactness: L starts at
    ‖g₀‖·p (a first step of unit length in z; 1 if ‖g₀‖ ≤ 1e-3), or at 1/``step0`` when given;
    after a step Δz, if E_new − ε_k ≤ E_old + ε_{k−1}(1 + ‖Δz‖) − (L/2)‖Δz‖² (sufficient
    decrease up to the tolerances) L shrinks by ``shrink``; if E merely does not increase by
    more than C(ε_k + ε_{k−1}) L is kept; otherwise the step is rejected (θ returns to the
    last accepted point, so the criterion never creeps up) and L doubles.

    ``max_step`` bounds ‖Δz‖ (a trust region; 2 is a factor e² in a log-scaled θ). Without
    it one accepted step took the README's ridge example from z = −3.76 to −27.5, into the
    flat tail λ → 0 where dE/dz = λ·dE/dλ vanishes, and HOAG stayed there (E = 26,895 for
    the optimum's 26,405).
    """

    tol0: float = 1e-3
    decrease: str = eqx.field(default="quadratic", static=True)
    C: float = 0.25
    shrink: float = 0.95
    min_tol: float = 1e-12
    step0: float | None = None
    max_step: float = 2.0

    def __check_init__(self):
        if self.decrease not in _DECREASE:
            raise ValueError(f"HOAG decrease must be one of {_DECREASE}; got {self.decrease!r}.")
        if not self.tol0 > 0:
            raise ValueError(f"HOAG tol0 must be > 0; got {self.tol0!r}.")
        if not (isinstance(self.max_step, (int, float)) and self.max_step > 0):
            raise ValueError(f"HOAG max_step must be a positive number; got {self.max_step!r}.")

    def tolerance(self, k: int) -> float:
        k = max(int(k), 1)
        if self.decrease == "quadratic":
            eps = self.tol0 / k**2
        elif self.decrease == "cubic":
            eps = self.tol0 / k**3
        else:
            eps = self.tol0 * 0.9**k
        return max(eps, self.min_tol)


class RTHO(eqx.Module):
    r"""Real-time hyperparameter optimization (Franceschi et al., ICML 2017).

    The inner iteration and its forward-mode tangent Z_t = ∂s_t/∂z are advanced together
    (Z_t = A_t Z_{t−1} + B_t, one JVP per hyperparameter entry); every ``delta`` inner steps
    θ is updated from the current hypergradient ∂E/∂z + Z_tᵀ∇ₓE(x_t) without waiting for the
    inner solve to finish. For a problem whose solution is a fixed number of steps (a
    training run), the run restarts from x0 (with Z = 0) once it reaches its length. The
    hypergradients are approximate by design; rows record the inner residual at x_t.
    ``optimizer`` (an optax transformation) defaults to SGD with tune's learning rate.
    """

    delta: int = eqx.field(default=10, static=True)
    optimizer: Any = eqx.field(default=None, static=True)

    def __check_init__(self):
        if int(self.delta) < 1:
            raise ValueError(f"RTHO delta must be >= 1; got {self.delta!r}.")


class Secant(eqx.Module):
    r"""One scalar hyperparameter: a safeguarded secant search for dE/dz = 0 in the space's
    unconstrained coordinate z (log w for a ``Log`` parameter).

    From z₀ it steps downhill by ``step`` (in z), doubling the step while dE/dz keeps its sign;
    once two points have derivatives of opposite signs they bracket a minimum, and each next
    point is the secant root of dE/dz between them, kept inside the middle 80% of the bracket
    (so the bracket shrinks by at least 10% per evaluation even where the secant stalls). It
    stops when the bracket is shorter than ``xtol`` (or at ``tune``'s ``steps``). Each
    evaluation is one hypergradient; the result is the point of least E evaluated. For one
    weight this needs no learning rate and takes a handful of evaluations, where Adam
    oscillates around the optimum (one TV weight: Adam at rate 0.1 never improved on its
    start in 12 steps; in benchmarks/tv_vs_skimage.py this search reaches a training PSNR at
    or above the best point of a 61-point grid in 6–8 evaluations; on the ridge test, 14).
    """

    step: float = 0.5
    xtol: float = 1e-3

    def __check_init__(self):
        for name in ("step", "xtol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"Secant {name} must be a finite number > 0; got {v!r}.")

    def next_point(self, z, g, lo, hi, expand):
        """The next z from the current point (z, g), the bracket ends ``lo`` = (z, g < 0)
        and ``hi`` = (z, g > 0) (``None`` while unknown) and the current expansion step.
        Returns (z_next or None when done, expand)."""
        if lo is not None and hi is not None:
            (a, ga), (b, gb) = lo, hi
            width = abs(b - a)
            if width < self.xtol:
                return None, expand
            root = a - ga * (b - a) / (gb - ga)
            low, high = min(a, b) + 0.1 * width, max(a, b) - 0.1 * width
            return min(max(root, low), high), expand
        # no bracket yet: walk downhill, doubling the step
        return z + (expand if g < 0 else -expand), 2.0 * expand


@functools.lru_cache(maxsize=32)
def _optax_by_name(name: str, learning_rate: float):
    """The optax transformation a name stands for, one object per (name, rate): the compiled
    update steps are cached by it, so a second ``tune`` call compiles nothing."""
    if name == "gd":
        return optax.sgd(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    return optax.lbfgs()


def _make_optimizer(optimizer, learning_rate):
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, _describe_opt(optimizer)
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name in ("gd", "adam", "lbfgs"):
            return _optax_by_name(name, learning_rate), name
        if name == "hoag":
            return HOAG(), "hoag"
        if name == "rtho":
            return RTHO(), "rtho"
        if name == "secant":
            return Secant(), "secant"
    if isinstance(optimizer, (HOAG, RTHO, Secant)):
        return optimizer, type(optimizer).__name__.lower()
    raise ValueError(
        "optimizer must be 'gd', 'adam', 'lbfgs', 'hoag', 'rtho', 'secant', an "
        "optax.GradientTransformation, invcal.HOAG(...), invcal.RTHO(...) or "
        f"invcal.Secant(...); got {optimizer!r}."
    )


def _describe_opt(opt) -> str:
    return getattr(opt, "__name__", None) or "optax"


# --------------------------------------------------------------------------------------
# History and results.json
# --------------------------------------------------------------------------------------
def _to_json(v):
    a = np.asarray(v)
    return a.item() if a.shape == () else a.tolist()


def _theta_json(theta) -> dict:
    return {k: _to_json(v) for k, v in theta.items()}


def _space_json(space) -> dict:
    return {
        k: {"shape": list(p.init.shape), "transform": repr(p.transform)}
        for k, p in space.params.items()
    }


def _strict_json(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``, so a
    reader (or a resumed run) never sees half a file; the temporary file is removed if the
    write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            # strict JSON (readers such as JavaScript's or jq reject NaN/Infinity tokens): a
            # non-finite number is written as null, which NumPy reads back as NaN.
            json.dump(_strict_json(obj), f, indent=1, allow_nan=False)
        # mkstemp creates the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class TuneResult:
    """Outcome of :func:`tune` / :func:`grid_search` / :func:`random_search`.

    ``theta`` is the best evaluated θ (lowest criterion; for gradient methods usually the
    last), ``value`` its criterion, ``x`` the inner solution at the last evaluation,
    ``history`` the rows, ``results`` the whole results.json content.
    """

    theta: dict
    z: np.ndarray
    value: float
    x: Any
    history: list[dict]
    results: dict
    hypergradient: Hypergradient | None = None
    path: Path | None = None
    evaluations: int = field(default=0)


def _is_number(v, none_ok=False) -> bool:
    if v is None:
        return none_ok
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_saved_run(prev, path, size: int, optimizer: str) -> None:
    """The whole saved run, checked before any work: one line naming the first field that
    is not what a run writes (a hand-edited or damaged file must not splice a wrong state
    into the history, or fail after compilation)."""

    def bad(field, value, expected):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(
            f"cannot resume from {path}: {field} is {shown}, expected {expected}. Restore or "
            "delete the file, or use another --out directory."
        )

    def z_list(field, v):
        if not (isinstance(v, list) and len(v) == size and all(_is_number(x) for x in v)):
            bad(field, v, f"a list of {size} numbers")

    if not isinstance(prev, dict):
        bad("the file", prev, "a JSON object")
    history = prev.get("history")
    if not isinstance(history, list):
        bad("history", history, "a list of rows")
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            bad(f"history[{i}]", row, "an object")
        if row.get("step") != i:
            bad(f"history[{i}].step", row.get("step"), str(i))
        z_list(f"history[{i}].z", row.get("z"))
        if not _is_number(row.get("value"), none_ok=True):
            bad(f"history[{i}].value", row.get("value"), "a number (or null)")
        if not isinstance(row.get("theta"), dict):
            bad(f"history[{i}].theta", row.get("theta"), "an object {name: value}")
    best = prev.get("best")
    if best is not None:
        if not isinstance(best, dict):
            bad("best", best, "an object (or null)")
        if not _is_number(best.get("value")):
            bad("best.value", best.get("value"), "a number")
        z_list("best.z", best.get("z"))
        if not isinstance(best.get("theta"), dict):
            bad("best.theta", best.get("theta"), "an object {name: value}")
    if optimizer in ("grid", "random") or not history:
        return
    state = prev.get("state")
    if not isinstance(state, dict):
        bad("state", state, f"the {optimizer} state of the last step (an object)")
    if optimizer == "secant":
        if not _is_number(state.get("z"), none_ok=True):
            bad("state.z", state.get("z"), "a number (or null once converged)")
        if not _is_number(state.get("expand")):
            bad("state.expand", state.get("expand"), "a number")
        for key in ("lo", "hi"):
            v = state.get(key)
            if v is not None and not (
                isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v)
            ):
                bad(f"state.{key}", v, "null or [z, dE/dz]")
        return
    z_list("state.z", state.get("z"))
    if optimizer == "hoag":
        if not _is_number(state.get("L"), none_ok=True):
            bad("state.L", state.get("L"), "a number (or null)")
        if not (isinstance(state.get("k"), int) and state.get("k") >= 1):
            bad("state.k", state.get("k"), "an integer >= 1")
    elif not isinstance(state.get("opt_state"), list):
        bad("state.opt_state", state.get("opt_state"), "the optimizer's state (a list)")


class _Recorder:
    """Accumulates rows and writes results.json after each one."""

    def __init__(self, problem, *, method, optimizer_name, learning_rate, steps, out, resume, meta):
        self.problem = problem
        self.path = None if out is None else Path(out) / RESULTS_FILE
        self.t0 = time.perf_counter()
        self.results = {
            "invcal_version": _version(),
            "problem": problem.name,
            "method": method,
            "optimizer": optimizer_name,
            "learning_rate": learning_rate,
            "steps_requested": steps,
            "names": problem.space.flat_names(),
            "space": _space_json(problem.space),
            "history": [],
            "finished": False,
            "best": None,
            "landscape": None,
            "state": None,
            "extra": {},
        }
        self.results.update(meta or {})
        self.elapsed0 = 0.0
        if resume and self.path is not None and self.path.exists():
            self._load_previous()

    def _load_previous(self):
        try:
            prev = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot resume from {self.path}: {e}") from None
        # Everything that shapes the history must match (steps_requested may grow).
        old_opts, new_opts = prev.get("options") or {}, self.results.get("options") or {}
        if old_opts != new_opts:
            differ = sorted(
                k for k in set(old_opts) | set(new_opts) if old_opts.get(k) != new_opts.get(k)
            )
            shown = ", ".join(
                f"{k}: {old_opts.get(k, '(default)')!r} -> {new_opts.get(k, '(default)')!r}"
                for k in differ
            )
            raise ValueError(
                f"cannot resume from {self.path}: its run had other problem options ({shown}); "
                "resume with the same -o options, or use another --out directory."
            )
        for key in ("problem", "names", "space", "optimizer", "method", "learning_rate"):
            if prev.get(key) != self.results.get(key):
                raise ValueError(
                    f"cannot resume from {self.path}: it holds a run with {key}="
                    f"{prev.get(key)!r}, this run has {key}={self.results.get(key)!r}. "
                    "Use another --out directory, or drop --resume to start over."
                )
        _check_saved_run(prev, self.path, self.problem.space.size, self.results["optimizer"])
        self.results["history"] = prev.get("history", [])
        self.results["state"] = prev.get("state")
        self.results["best"] = prev.get("best")
        if self.results["history"]:
            self.elapsed0 = float(self.results["history"][-1].get("elapsed", 0.0))

    @property
    def history(self) -> list[dict]:
        return self.results["history"]

    @property
    def resumed_state(self):
        return self.results.get("state")

    def add(
        self, *, z, theta, value, grad_z_=None, diag=None, accepted=True, wall, state=None, **extra
    ):
        row = {
            "step": len(self.history),
            "z": _to_json(z),
            "theta": _theta_json(theta),
            "value": float(value),
            "grad_norm": None if grad_z_ is None else float(np.linalg.norm(np.asarray(grad_z_))),
            "grad_z": None if grad_z_ is None else _to_json(grad_z_),
            "accepted": bool(accepted),
            "wall_time": wall,
            "elapsed": self.elapsed0 + time.perf_counter() - self.t0,
        }
        if diag is not None:
            d = diag.as_dict()
            row.update(
                inner_steps=d["inner_steps"],
                inner_residual=d["inner_residual"],
                linear_steps=d["linear_steps"],
                linear_residual=d["linear_residual"],
                converged=d["inner_converged"] and d["linear_converged"] and d["finite"],
            )
        row.update(extra)
        self.history.append(row)
        best = self.results["best"]
        if math.isfinite(row["value"]) and (best is None or row["value"] < best["value"]):
            self.results["best"] = {
                "step": row["step"],
                "theta": row["theta"],
                "value": row["value"],
                "z": row["z"],
            }
        self.results["state"] = state
        self.write()
        return row

    def write(self):
        if self.path is not None:
            atomic_write_json(self.path, self.results)

    def finish(self, x=None, hg=None) -> TuneResult:
        self.results["finished"] = True
        self.write()
        best = self.results["best"]
        if best is None:
            raise RuntimeError("no finite criterion value was evaluated; nothing to report.")
        return TuneResult(
            theta={k: np.asarray(v) for k, v in best["theta"].items()},
            z=np.asarray(best["z"]),
            value=best["value"],
            x=x,
            history=self.history,
            results=self.results,
            hypergradient=hg,
            path=self.path,
            evaluations=len(self.history),
        )


def _warm_start(problem, x):
    """Where the next inner solve starts: the last solution, except for a solution defined
    by a fixed number of steps from ``problem.x0`` (warm-starting would change its meaning)."""
    return problem.x0 if problem.fixed_steps else x


def _version() -> str:
    from ._version import __version__

    return __version__


def _tree_to_json(tree):
    leaves, _ = jax.tree_util.tree_flatten(tree)
    return [_to_json(leaf) for leaf in leaves]


def _tree_from_json(like, leaves):
    ref, treedef = jax.tree_util.tree_flatten(like)
    if len(ref) != len(leaves):
        raise ValueError("saved optimizer state does not match this optimizer; drop --resume.")
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jnp.asarray(v, dtype=jnp.asarray(r).dtype).reshape(jnp.shape(r))
            for r, v in zip(ref, leaves, strict=True)
        ],
    )


# --------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------
_LINESEARCH_STATES = tuple(
    getattr(optax, n)
    for n in ("ScaleByZoomLinesearchState", "ScaleByBacktrackingLinesearchState")
    if hasattr(optax, n)
)


def _needs_value_fn(opt_state) -> bool:
    """Whether an optax state belongs to a transformation with a line search, whose
    ``update`` needs ``value``, ``grad`` and ``value_fn``."""

    def is_search(node):
        return isinstance(node, _LINESEARCH_STATES)

    return any(map(is_search, jax.tree_util.tree_leaves(opt_state, is_leaf=is_search)))


@eqx.filter_jit
def _optax_update(opt, gz, opt_state, z):
    return opt.update(gz, opt_state, z)


@eqx.filter_jit
def _lbfgs_update(opt, problem, solver, method, gz, opt_state, z, value, x0):
    # The zoom line search evaluates E (and its gradient, through invcal.solve) at trial
    # points, warm-started from the last x*. Module level, so repeated runs reuse it.
    value_fn = _value_fn_z(problem, solver, method)
    return opt.update(gz, opt_state, z, value=value, grad=gz, value_fn=lambda zz: value_fn(zz, x0))


def _value_fn_z(problem, solver, method):
    from .hypergradient import solve

    def value(z, x0):
        theta = problem.space.to_theta(z)
        x = solve(problem, theta, solver=solver, method=method, x0=x0)
        return problem.criterion(x, theta, problem.data)

    return value


def tune(
    problem,
    *,
    solver,
    method: AbstractHypergradient | None = None,
    optimizer="adam",
    learning_rate: float = 0.1,
    steps: int = 50,
    theta0: dict | None = None,
    out=None,
    resume: bool = False,
    progress=None,
    on_failure: OnFailure | str = OnFailure.RAISE,
    meta: dict | None = None,
) -> TuneResult:
    """Minimize E(x*(θ), θ) over θ by hypergradient steps.

    **Arguments**

    - ``problem``, ``solver``, ``method`` (default ``Implicit()``).
    - ``optimizer``: ``"gd"``, ``"adam"``, ``"lbfgs"`` (optax's L-BFGS with zoom line
      search, whose trial points are differentiated through :func:`invcal.solve`), any
      ``optax.GradientTransformation``, ``HOAG(...)``/``"hoag"``, ``RTHO(...)``/``"rtho"`` or,
      for one scalar hyperparameter, ``Secant(...)``/``"secant"`` (stops once converged).
    - ``learning_rate``: step size in z for the optax optimizers and RTHO (HOAG sets its
      own, see :class:`HOAG`).
    - ``steps``: number of outer evaluations (hyperparameter updates for RTHO).
    - ``theta0``: initial θ (default: the space's initial values).
    - ``out``: directory for ``results.json``, written after every step; ``resume=True``
      continues a run found there.
    - ``progress``: ``callable(step, total, row)`` called after each step.
    - ``on_failure``: policy for unconverged solves (HOAG records and adapts instead).
    - ``meta``: extra top-level entries for results.json.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if not (
        isinstance(learning_rate, (int, float))
        and math.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise ValueError(f"learning_rate must be a positive finite number; got {learning_rate!r}.")
    opt, opt_name = _make_optimizer(optimizer, float(learning_rate))
    theta0 = problem.space.init() if theta0 is None else theta0
    if isinstance(opt, RTHO):
        # RTHO carries its own forward-mode tangents; no hypergradient method is involved.
        _check_inner(problem, solver)
        theta0 = problem.space.validate(theta0, argument="theta0")
        method_name = "RTHO"
    else:
        method = Implicit() if method is None else method
        theta0 = _check_args(problem, theta0, solver, method, argument="theta0")
        method_name = describe(method)
        if isinstance(opt, Secant) and problem.space.size != 1:
            raise ValueError(
                "optimizer='secant' tunes one scalar hyperparameter; problem "
                f"{problem.name!r} has {problem.space.size} ({problem.space.flat_names()}). "
                "Use 'lbfgs' or 'adam' for several."
            )
    policy = OnFailure.parse(on_failure)
    # one run at a time per folder: the folder is locked for the whole run
    folder = (
        contextlib.nullcontext()
        if out is None
        else claim_run_folder(out, resume=resume, flag="out")
    )
    with folder:
        rec = _Recorder(
            problem,
            method=method_name,
            optimizer_name=opt_name,
            learning_rate=float(learning_rate),
            steps=int(steps),
            out=out,
            resume=resume,
            meta=meta,
        )
        steps = int(steps)
        if isinstance(opt, HOAG):
            return _tune_hoag(problem, solver, method, opt, steps, theta0, rec, progress)
        if isinstance(opt, Secant):
            return _tune_secant(problem, solver, method, opt, steps, theta0, rec, progress, policy)
        if isinstance(opt, RTHO):
            return _tune_rtho(
                problem, solver, opt, float(learning_rate), steps, theta0, rec, progress
            )
        return _tune_optax(problem, solver, method, opt, steps, theta0, rec, progress, policy)


def _tune_optax(problem, solver, method, opt, steps, theta0, rec, progress, policy):
    space = problem.space
    z = space.to_z(theta0)
    opt_state = opt.init(z)
    saved = rec.resumed_state
    if saved is not None and rec.history:
        z = jnp.asarray(saved["z"], dtype=z.dtype)
        opt_state = _tree_from_json(opt_state, saved["opt_state"])
    # optax's line searches (optax.lbfgs(), scale_by_zoom_linesearch, ...) need the value,
    # gradient and value_fn at every update, by name or passed as a transformation.
    is_lbfgs = _needs_value_fn(opt_state)
    hg = None
    for _ in range(len(rec.history), steps):
        t = time.perf_counter()
        theta = space.to_theta(z)
        hg = hypergradient(problem, theta, solver=solver, method=method, warm=hg, on_failure=policy)
        gz = problem.space.grad_to_z(theta, hg.grad)
        if is_lbfgs:
            x0 = _warm_start(problem, hg.x)
            updates, opt_state = _lbfgs_update(
                opt, problem, solver, method, gz, opt_state, z, hg.value, x0
            )
        else:
            updates, opt_state = _optax_update(opt, gz, opt_state, z)
        z_next = optax.apply_updates(z, updates)
        row = rec.add(
            z=z,
            theta=theta,
            value=hg.value,
            grad_z_=gz,
            diag=hg.diagnostics,
            wall=time.perf_counter() - t,
            state={"z": _to_json(z_next), "opt_state": _tree_to_json(opt_state)},
        )
        z = z_next
        if progress is not None:
            progress(row["step"] + 1, steps, row)
    return rec.finish(None if hg is None else hg.x, hg)


def _tune_secant(problem, solver, method, secant, steps, theta0, rec, progress, policy):
    space = problem.space
    z = float(space.to_z(theta0)[0])
    lo = hi = None
    expand = secant.step
    saved = rec.resumed_state
    if saved is not None and rec.history:
        if saved.get("z") is None:  # the search had converged
            return rec.finish()
        z, expand = float(saved["z"]), float(saved["expand"])
        lo = None if saved["lo"] is None else tuple(saved["lo"])
        hi = None if saved["hi"] is None else tuple(saved["hi"])
    hg = None
    while len(rec.history) < steps and z is not None:
        t = time.perf_counter()
        theta = space.to_theta(jnp.asarray([z]))
        hg = hypergradient(problem, theta, solver=solver, method=method, warm=hg, on_failure=policy)
        gz = problem.space.grad_to_z(theta, hg.grad)
        g = float(gz[0])
        if g < 0:
            lo = (z, g)
        elif g > 0:
            hi = (z, g)
        z_next, expand = (None, expand) if g == 0 else secant.next_point(z, g, lo, hi, expand)
        row = rec.add(
            z=jnp.asarray([z]),
            theta=theta,
            value=hg.value,
            grad_z_=gz,
            diag=hg.diagnostics,
            wall=time.perf_counter() - t,
            state={"z": z_next, "expand": expand, "lo": lo, "hi": hi},
        )
        z = z_next
        if progress is not None:
            progress(row["step"] + 1, steps, row)
    return rec.finish(None if hg is None else hg.x, hg)


def _tune_hoag(problem, solver, method, hoag, steps, theta0, rec, progress):
    space = problem.space
    saved = rec.resumed_state
    z = space.to_z(theta0)
    L = None if hoag.step0 is None else 1.0 / hoag.step0
    k = 1
    cur = None  # (z, value, grad_z, eps) of the last accepted point
    if saved is not None and rec.history:
        z = jnp.asarray(saved["z"], dtype=z.dtype)
        L, k = saved["L"], int(saved["k"])
        if saved.get("grad_z") is not None:
            # The accepted point itself is saved: resuming does not evaluate it again (that
            # recorded a duplicate θ and shifted every later step by one).
            gz0 = jnp.asarray(saved["grad_z"], dtype=z.dtype)
            cur = (z, float(saved["value"]), gz0, float(saved["eps"]))
    hg = None

    def evaluate(z, eps, warm):
        theta = space.to_theta(z)
        h = hypergradient(
            problem,
            theta,
            solver=solver,
            method=method,
            warm=warm,
            tol=eps,
            linear_tol=eps,
            on_failure="record",
        )
        return theta, h, problem.space.grad_to_z(theta, h.grad)

    while len(rec.history) < steps:
        t = time.perf_counter()
        eps = hoag.tolerance(k)
        if cur is None:
            theta, h_row, gz = evaluate(z, eps, hg)
            hg, accepted, z_row = h_row, True, z
            cur = (z, float(hg.value), gz, eps)
            if L is None:
                gnorm = float(jnp.linalg.norm(gz))
                L = gnorm * gz.shape[0] if gnorm > 1e-3 else 1.0
        else:
            step = cur[2] / L
            size = float(jnp.linalg.norm(step))
            if size > hoag.max_step:  # trust region on ‖Δz‖
                step = step * (hoag.max_step / size)
            z_row = cur[0] - step
            theta, h_row, gz = evaluate(z_row, eps, hg)
            incr = float(jnp.linalg.norm(z_row - cur[0]))
            e_new, e_old, eps_old = float(h_row.value), cur[1], cur[3]
            if e_new - eps <= e_old + eps_old * (1.0 + incr) - 0.5 * L * incr**2:
                accepted, L = True, L * hoag.shrink
            elif e_new <= e_old + hoag.C * (eps + eps_old):
                accepted = True
            else:
                accepted, L = False, 2.0 * L
            if accepted:
                hg = h_row
                cur = (z_row, e_new, gz, eps)
                k += 1
        row = rec.add(
            z=z_row,
            theta=theta,
            value=h_row.value,
            grad_z_=gz,
            diag=h_row.diagnostics,
            accepted=accepted,
            wall=time.perf_counter() - t,
            state={
                "z": _to_json(cur[0]),
                "L": L,
                "k": k,
                "value": cur[1],
                "grad_z": _to_json(cur[2]),
                "eps": cur[3],
            },
            tol=eps,
            L=L,
        )
        if progress is not None:
            progress(row["step"] + 1, steps, row)
    return rec.finish(None if hg is None else hg.x, hg)


def _tune_rtho(problem, solver, rtho, learning_rate, steps, theta0, rec, progress):
    space = problem.space
    solver.check_problem(problem)
    if problem.fixed_point is None:
        raise ValueError(
            f"RTHO advances the inner iteration step by step and needs problem {problem.name!r} "
            "to define fixed_point=T(x, theta, data)."
        )
    opt = optax.sgd(learning_rate) if rtho.optimizer is None else rtho.optimizer
    z = space.to_z(theta0)
    opt_state = opt.init(z)
    saved = rec.resumed_state
    if saved is not None and rec.history:
        z = jnp.asarray(saved["z"], dtype=z.dtype)
        opt_state = _tree_from_json(opt_state, saved["opt_state"])
    run_length = solver.num_steps if isinstance(solver, FixedSteps) else None
    p = z.shape[0]
    data = problem.data
    state = solver.init(problem, problem.x0, space.to_theta(z), data)
    Z = jax.tree_util.tree_map(
        lambda a: jnp.zeros((p,) + jnp.shape(a), a.dtype),
        eqx.filter(state, eqx.is_inexact_array),
    )
    t_run = 0
    for _ in range(len(rec.history), steps):
        t = time.perf_counter()
        n = rtho.delta if run_length is None else min(rtho.delta, run_length - t_run)
        state, Z, value, gz, res = _rtho_chunk(problem, solver, state, Z, z, n)
        t_run += n
        updates, opt_state = _optax_update(opt, gz, opt_state, z)
        z_next = optax.apply_updates(z, updates)
        theta = space.to_theta(z)
        row = rec.add(
            z=z,
            theta=theta,
            value=value,
            grad_z_=gz,
            diag=None,
            wall=time.perf_counter() - t,
            state={"z": _to_json(z_next), "opt_state": _tree_to_json(opt_state)},
            inner_steps=int(t_run),
            inner_residual=float(res),
            linear_steps=0,
            linear_residual=0.0,
            converged=run_length is not None and t_run == run_length,
        )
        z = z_next
        if run_length is not None and t_run >= run_length:
            state = solver.init(problem, problem.x0, space.to_theta(z), data)
            Z = jax.tree_util.tree_map(jnp.zeros_like, Z)
            t_run = 0
        if progress is not None:
            progress(row["step"] + 1, steps, row)
    return rec.finish(solver.current(state), None)


@eqx.filter_jit
def _rtho_chunk(problem, solver, state, Z, z, n):
    # Tangents are carried for the floating-point leaves of the state only (step counters and
    # other integer leaves have none), so Z has the structure of the state's float part.
    space, data = problem.space, problem.data
    eye = jnp.eye(z.shape[0], dtype=z.dtype)

    def one(carry, _):
        s, Zs = carry
        dyn, static = eqx.partition(s, eqx.is_inexact_array)

        def f(d, z_):
            out = solver.step(problem, eqx.combine(d, static), space.to_theta(z_), data)
            return eqx.partition(out, eqx.is_inexact_array)

        dyn_new, f_lin, static_new = jax.linearize(f, dyn, z, has_aux=True)
        Zs_new = jax.vmap(f_lin)(Zs, eye)
        return (eqx.combine(dyn_new, static_new), Zs_new), None

    (state, Z), _ = jax.lax.scan(one, (state, Z), None, length=n)
    x, Zx = solver.current(state), solver.current(Z)
    x_dyn, x_static = eqx.partition(x, eqx.is_inexact_array)

    def E(xd, z_):
        return problem.criterion(eqx.combine(xd, x_static), space.to_theta(z_), data)

    value, (gx, gz_direct) = jax.value_and_grad(E, argnums=(0, 1))(x_dyn, z)
    gz = gz_direct + jax.vmap(
        lambda zx: sum(
            jnp.vdot(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(zx), jax.tree_util.tree_leaves(gx), strict=True
            )
        )
    )(Zx)
    res = solver.residual(problem, x, space.to_theta(z), data)
    return state, Z, value, gz, res


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------
def _check_inner(problem, solver):
    """The checks of ``hypergradient`` that concern the inner solve only (baselines need no
    hypergradient method, so they also serve fixed-step problems)."""
    from .problem import Problem
    from .solvers.base import AbstractInnerSolver

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an invcal.Problem; got {type(problem).__name__}.")
    if not isinstance(solver, AbstractInnerSolver):
        raise TypeError(f"solver must be an invcal inner solver; got {solver!r}.")
    solver.check_problem(problem)


@eqx.filter_jit
def _value_at(problem, solver, theta, x0):
    sol = solver.solve(problem, x0, theta)
    return problem.criterion(sol.x, theta, problem.data), sol


def _evaluate_points(problem, solver, thetas, rec, progress, total):
    done = rec.history
    if len(done) > len(thetas):
        raise ValueError(
            f"cannot resume from {rec.path}: it holds {len(done)} evaluated points, this search "
            f"has {len(thetas)}. Use another out directory, or drop resume to start over."
        )
    for i, row in enumerate(done):
        planned = np.asarray(problem.space.to_z(thetas[i]), dtype=float)
        if not np.allclose(np.asarray(row["z"], dtype=float), planned, rtol=1e-12, atol=1e-12):
            raise ValueError(
                f"cannot resume from {rec.path}: its point {i} is θ={row['theta']}, this search's "
                f"point {i} is θ={_theta_json(thetas[i])} (a different grid or seed). Use another "
                "out directory, or drop resume to start over."
            )
    x0 = problem.x0
    last_x = None
    for theta in thetas[len(rec.history) :]:
        t = time.perf_counter()
        theta = problem.space.validate(theta)
        value, sol = _value_at(problem, solver, theta, x0)
        if not bool(sol.converged):
            res = float(sol.residual)
            hint = (
                "raise the solver's max_steps"
                if math.isfinite(res)
                else "it diverged; more steps will not help: check the solver's step size and "
                "that this θ gives a well-posed inner problem"
            )
            raise RuntimeError(
                f"grid/random search: the inner solve did not converge at θ={_theta_json(theta)} "
                f"(residual {res:.3g} after {int(sol.num_steps)} steps); {hint}."
            )
        last_x = sol.x
        x0 = _warm_start(problem, sol.x)
        row = rec.add(
            z=problem.space.to_z(theta),
            theta=theta,
            value=value,
            wall=time.perf_counter() - t,
            inner_steps=int(sol.num_steps),
            inner_residual=float(sol.residual),
            linear_steps=0,
            linear_residual=0.0,
            converged=True,
        )
        if progress is not None:
            progress(row["step"] + 1, total, row)
    return rec.finish(last_x, None)


def grid_search(
    problem, *, solver, grid: dict, out=None, resume=False, progress=None, meta=None
) -> TuneResult:
    """Evaluate E at every point of the product grid ``{name: values}`` (user values),
    warm-starting each inner solve from the previous point. Array-valued θ entries are set
    to the same value in every component."""
    _check_inner(problem, solver)
    unknown = set(grid) - set(problem.space.names)
    if unknown or not grid:
        raise ValueError(
            f"grid must map hyperparameter names {list(problem.space.names)} to 1-D value arrays; "
            f"got names {sorted(grid)}."
        )
    axes = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in grid.items()}
    base = problem.space.init()
    thetas = []
    for combo in itertools.product(*axes.values()):
        theta = dict(base)
        for name, v in zip(axes, combo, strict=True):
            theta[name] = jnp.full(base[name].shape, v)
        thetas.append(theta)
    rec = _Recorder(
        problem,
        method="grid",
        optimizer_name="grid",
        learning_rate=0.0,
        steps=len(thetas),
        out=out,
        resume=resume,
        meta=meta,
    )
    return _evaluate_points(problem, solver, thetas, rec, progress, len(thetas))


def random_search(
    problem,
    *,
    solver,
    bounds: dict,
    num: int = 20,
    seed: int = 0,
    out=None,
    resume=False,
    progress=None,
    meta=None,
) -> TuneResult:
    """Evaluate E at ``num`` points drawn uniformly in z between the transformed ``bounds``
    ``{name: (lo, hi)}`` (user values; log-uniform for Log-transformed entries)."""
    _check_inner(problem, solver)
    if set(bounds) - set(problem.space.names):
        raise ValueError(
            f"bounds names {sorted(bounds)} are not all in {list(problem.space.names)}."
        )
    rng = np.random.default_rng(seed)
    base = problem.space.init()
    thetas = []
    for _ in range(int(num)):
        theta = dict(base)
        for name, (lo, hi) in bounds.items():
            tr = problem.space.params[name].transform
            zlo, zhi = float(tr.inverse(jnp.asarray(lo))), float(tr.inverse(jnp.asarray(hi)))
            zs = rng.uniform(zlo, zhi, size=base[name].shape)
            theta[name] = tr.forward(jnp.asarray(zs))
        thetas.append(theta)
    rec = _Recorder(
        problem,
        method="random",
        optimizer_name="random",
        learning_rate=0.0,
        steps=len(thetas),
        out=out,
        resume=resume,
        meta=meta,
    )
    return _evaluate_points(problem, solver, thetas, rec, progress, len(thetas))
