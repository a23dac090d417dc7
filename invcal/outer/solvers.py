"""Outer solvers: objects that say where the next hypergradient is evaluated and what to
make of it. One driver (:func:`invcal.tune`) runs them all, with one history and one resume
format (each solver's state as JSON in ``results.json``).

An outer solver has ``init(z0)`` → state; ``point(state)`` → the next :class:`Request` (a z
in the space's unconstrained coordinates, and optionally the inner and linear tolerances),
or ``None`` once it has stopped by itself; ``step(state, request, hg, grad_z, context)`` →
the next state and :class:`StepInfo` (accepted or rejected, extra history fields); and
``to_json``/``from_json``/``check_json`` for resuming. Concrete: :class:`Optax` (any optax
transformation, line searches included), :class:`HOAG`, :class:`Secant` and
:class:`BarzilaiBorwein`.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..diagnostics import OnFailure, enforce
from .record import _is_number, _to_json, _tree_from_json, _tree_to_json

__all__ = [
    "AbstractOuterSolver",
    "BarzilaiBorwein",
    "HOAG",
    "Optax",
    "Request",
    "Secant",
    "StepInfo",
]


class Request(NamedTuple):
    """Where to evaluate next: z, and the inner / linear-solve tolerances (None: defaults)."""

    z: Any
    tol: float | None = None
    linear_tol: float | None = None


@dataclass
class StepInfo:
    """What a step made of its evaluation: ``accepted`` (a rejected trial point leaves the
    solver where it was, and does not warm-start the next solve) and extra history fields."""

    accepted: bool = True
    extra: dict = field(default_factory=dict)


class Context(NamedTuple):
    """What a solver may need besides the evaluation: the problem, inner solver and
    hypergradient method (a line search evaluates trial points), and where the next inner
    solve starts."""

    problem: Any
    solver: Any
    method: Any
    x0: Any


class AbstractOuterSolver(eqx.Module):
    """An outer solver (see the module docstring). ``name`` is what results.json records."""

    name = "outer"

    def check(self, problem) -> None:
        """Raise a clear error before any work if this solver cannot serve ``problem``."""

    def policy(self, on_failure):
        """The failure policy of its hypergradients (``tune``'s, unless the solver adapts)."""
        return on_failure

    def init(self, z0):
        raise NotImplementedError

    def point(self, state) -> Request | None:
        raise NotImplementedError

    def update(self, state, request, hg, gz, context):
        raise NotImplementedError

    def to_json(self, state) -> dict:
        raise NotImplementedError

    def from_json(self, saved: dict, z0):
        raise NotImplementedError

    def check_json(self, state: dict, bad, z_list) -> None:
        """Check a saved state before any work; ``bad(field, value, expected)`` raises."""


class _OptaxState(NamedTuple):
    z: Any
    opt_state: Any


# optax is imported where it is used: importing it takes ~0.13 s (its contrib package), which
# a fresh process that never tunes with an optax optimizer (a population fit, a Lasso CV
# fit) need not pay.
@functools.lru_cache(maxsize=1)
def _linesearch_states() -> tuple:
    import optax

    return tuple(
        getattr(optax, n)
        for n in ("ScaleByZoomLinesearchState", "ScaleByBacktrackingLinesearchState")
        if hasattr(optax, n)
    )


def _needs_value_fn(opt_state) -> bool:
    """Whether an optax state belongs to a transformation with a line search, whose
    ``update`` needs ``value``, ``grad`` and ``value_fn`` (optax.lbfgs(),
    scale_by_zoom_linesearch, ...): recognised from the state, so a transformation passed as
    an object works like its name."""

    states = _linesearch_states()

    def is_search(node):
        return isinstance(node, states)

    return any(map(is_search, jax.tree_util.tree_leaves(opt_state, is_leaf=is_search)))


@eqx.filter_jit
def _optax_update(opt, gz, opt_state, z):
    return opt.update(gz, opt_state, z)


@eqx.filter_jit
def _linesearch_update(opt, problem, solver, method, gz, opt_state, z, value, x0):
    # The line search evaluates E (and its gradient, through invcal.solve) at trial points,
    # warm-started from the last x*. Module level, so repeated runs reuse the compilation.
    from ..hypergradient import solve

    def value_fn(zz):
        theta = problem.space.to_theta(zz)
        x = solve(problem, theta, solver=solver, method=method, x0=x0)
        return problem.criterion(x, theta, problem.data)

    return opt.update(gz, opt_state, z, value=value, grad=gz, value_fn=value_fn)


class Optax(AbstractOuterSolver):
    """Any optax ``GradientTransformation`` in z; transformations with a line search (their
    update needs the value function) are recognised from their state."""

    tx: Any = eqx.field(static=True)
    label: str = eqx.field(default="optax", static=True)

    @property
    def name(self):
        return self.label

    def init(self, z0):
        return _OptaxState(z=z0, opt_state=self.tx.init(z0))

    def point(self, state):
        return Request(z=state.z)

    def update(self, state, request, hg, gz, context):
        z = state.z
        if _needs_value_fn(state.opt_state):
            p = context
            updates, opt_state = _linesearch_update(
                self.tx, p.problem, p.solver, p.method, gz, state.opt_state, z, hg.value, p.x0
            )
        else:
            updates, opt_state = _optax_update(self.tx, gz, state.opt_state, z)
        import optax

        return _OptaxState(z=optax.apply_updates(z, updates), opt_state=opt_state), StepInfo()

    def to_json(self, state):
        return {"z": _to_json(state.z), "opt_state": _tree_to_json(state.opt_state)}

    def from_json(self, saved, z0):
        fresh = self.init(z0)
        z = jnp.asarray(saved["z"], dtype=z0.dtype)
        return _OptaxState(z=z, opt_state=_tree_from_json(fresh.opt_state, saved["opt_state"]))

    def check_json(self, state, bad, z_list):
        check_optax_state(state, bad, z_list)


def check_optax_state(state, bad, z_list):
    """A saved optax state (z and the transformation's leaves), as Optax and RTHO save it."""
    z_list("state.z", state.get("z"))
    if not isinstance(state.get("opt_state"), list):
        bad("state.opt_state", state.get("opt_state"), "the optimizer's state (a list)")


class _HOAGState(NamedTuple):
    z: Any
    L: float | None
    k: int
    accepted: tuple | None  # (z, value, grad_z, eps) of the last accepted point


class _SecantState(NamedTuple):
    z: float | None
    expand: float
    lo: tuple | None
    hi: tuple | None


_DECREASE = ("quadratic", "cubic", "exponential")


class HOAG(AbstractOuterSolver):
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

    name = "hoag"

    def policy(self, on_failure):
        # an inexact hypergradient is HOAG's design: recorded, and the tolerance adapts
        return OnFailure.RECORD

    def init(self, z0):
        L = None if self.step0 is None else 1.0 / self.step0
        return _HOAGState(z=z0, L=L, k=1, accepted=None)

    def point(self, state):
        eps = self.tolerance(state.k)
        if state.accepted is None:
            return Request(z=state.z, tol=eps, linear_tol=eps)
        z, _, gz, _ = state.accepted
        step = gz / state.L
        size = float(jnp.linalg.norm(step))
        if size > self.max_step:  # trust region on ‖Δz‖
            step = step * (self.max_step / size)
        return Request(z=z - step, tol=eps, linear_tol=eps)

    def update(self, state, request, hg, gz, context):
        eps = request.tol
        z_row = request.z
        L, k = state.L, state.k
        if state.accepted is None:
            if L is None:
                gnorm = float(jnp.linalg.norm(gz))
                L = gnorm * gz.shape[0] if gnorm > 1e-3 else 1.0
            new = _HOAGState(z=z_row, L=L, k=k, accepted=(z_row, float(hg.value), gz, eps))
            return new, StepInfo(accepted=True, extra={"tol": eps, "L": L})
        z_old, e_old, _, eps_old = state.accepted
        incr = float(jnp.linalg.norm(z_row - z_old))
        e_new = float(hg.value)
        if e_new - eps <= e_old + eps_old * (1.0 + incr) - 0.5 * L * incr**2:
            accepted, L = True, L * self.shrink
        elif e_new <= e_old + self.C * (eps + eps_old):
            accepted = True
        else:
            accepted, L = False, 2.0 * L
        if accepted:
            new = _HOAGState(z=z_row, L=L, k=k + 1, accepted=(z_row, e_new, gz, eps))
        else:
            new = _HOAGState(z=state.z, L=L, k=k, accepted=state.accepted)
        return new, StepInfo(accepted=accepted, extra={"tol": eps, "L": L})

    def to_json(self, state):
        z, value, gz, eps = state.accepted
        return {
            "z": _to_json(z),
            "L": state.L,
            "k": state.k,
            "value": value,
            "grad_z": _to_json(gz),
            "eps": eps,
        }

    def from_json(self, saved, z0):
        z = jnp.asarray(saved["z"], dtype=z0.dtype)
        accepted = None
        if saved.get("grad_z") is not None:
            # The accepted point itself is saved: resuming does not evaluate it again (that
            # recorded a duplicate θ and shifted every later step by one).
            gz = jnp.asarray(saved["grad_z"], dtype=z0.dtype)
            accepted = (z, float(saved["value"]), gz, float(saved["eps"]))
        return _HOAGState(z=z, L=saved["L"], k=int(saved["k"]), accepted=accepted)

    def check_json(self, state, bad, z_list):
        z_list("state.z", state.get("z"))
        if not _is_number(state.get("L"), none_ok=True):
            bad("state.L", state.get("L"), "a number (or null)")
        if not (isinstance(state.get("k"), int) and state.get("k") >= 1):
            bad("state.k", state.get("k"), "an integer >= 1")


class Secant(AbstractOuterSolver):
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

    name = "secant"

    def check(self, problem):
        if problem.space.size != 1:
            raise ValueError(
                "optimizer='secant' tunes one scalar hyperparameter; problem "
                f"{problem.name!r} has {problem.space.size} ({problem.space.flat_names()}). "
                "Use 'lbfgs' or 'adam' for several."
            )

    def init(self, z0):
        return _SecantState(z=float(z0[0]), expand=self.step, lo=None, hi=None)

    def point(self, state):
        return None if state.z is None else Request(z=jnp.asarray([state.z]))

    def update(self, state, request, hg, gz, context):
        z, g = state.z, float(gz[0])
        lo, hi = state.lo, state.hi
        if g < 0:
            lo = (z, g)
        elif g > 0:
            hi = (z, g)
        expand = state.expand
        z_next, expand = (None, expand) if g == 0 else self.next_point(z, g, lo, hi, expand)
        return _SecantState(z=z_next, expand=expand, lo=lo, hi=hi), StepInfo(accepted=True)

    def to_json(self, state):
        return {"z": state.z, "expand": state.expand, "lo": state.lo, "hi": state.hi}

    def from_json(self, saved, z0):
        lo = None if saved["lo"] is None else tuple(saved["lo"])
        hi = None if saved["hi"] is None else tuple(saved["hi"])
        z = None if saved.get("z") is None else float(saved["z"])  # None: it had converged
        return _SecantState(z=z, expand=float(saved["expand"]), lo=lo, hi=hi)

    def check_json(self, state, bad, z_list):
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


class _BBState(NamedTuple):
    z: Any  # the first point, until it is evaluated
    accepted: tuple | None  # (z, value, grad_z) of the last accepted point, as NumPy
    step: float  # the trust radius on the largest change of z
    bb: float | None  # the Barzilai–Borwein step length; None: a normalized gradient step
    done: bool = False


class BarzilaiBorwein(AbstractOuterSolver):
    r"""Monotone Barzilai–Borwein descent in z (for one scalar z, the secant step on
    dE/dz = 0), with a trust region on the largest change of z.

    After an accepted step Δz with gradient change Δg, the next step is −(Δz·Δz / Δz·Δg)·g
    (the BB1 length; a normalized gradient step of length ``step0`` first, after a rejection
    or where Δz·Δg ≤ 0), cut to the trust radius. A trial point is accepted when E decreases
    (the radius then doubles, up to ``max_step``); otherwise, or when its solve did not
    converge, it is rejected, E stays where it was and the radius halves. The search stops
    when the radius, the proposed step or an accepted step falls below ``tol`` (in z: a
    relative change of θ for a ``Log`` parameter). Each evaluation is one hypergradient, and
    the criterion never increases, so the last accepted point is the best.

    This is the outer loop of :class:`invcal.sklearn.BilevelLassoCV`: for one α it needs
    no learning rate and settles in a handful of evaluations.
    """

    step0: float = 0.5
    max_step: float = 1.0
    tol: float = 1e-4

    def __check_init__(self):
        for name in ("step0", "max_step", "tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"BarzilaiBorwein {name} must be a finite number > 0; got {v!r}.")

    name = "barzilai-borwein"

    def policy(self, on_failure):
        # an unconverged trial point is a rejected step (its value and gradient are unused)
        return OnFailure.RECORD

    def init(self, z0):
        return _BBState(z=z0, accepted=None, step=self.step0, bb=None)

    def point(self, state):
        if state.accepted is None:
            return Request(z=state.z)
        if state.done or state.step < self.tol:
            return None
        z, _, g = state.accepted
        scale = float(np.max(np.abs(g)))
        if scale == 0.0 or not math.isfinite(scale):
            return None
        direction = -(state.bb * g if state.bb is not None else state.step * g / scale)
        largest = float(np.max(np.abs(direction)))
        if largest < self.tol:  # the step moves z by less than ``tol``: settled
            return None
        if largest > state.step:  # trust region on the largest change of z
            direction = direction * (state.step / largest)
        return Request(z=jnp.asarray(z + direction))

    def update(self, state, request, hg, gz, context):
        z_try, g_try = np.asarray(request.z), np.asarray(gz)
        converged = bool(np.all(np.asarray(hg.diagnostics.converged)))
        if state.accepted is None:  # the starting point: it must be usable
            if not converged:
                enforce(hg.diagnostics, OnFailure.RAISE, None, where="BarzilaiBorwein")
            return state._replace(accepted=(z_try, float(hg.value), g_try)), StepInfo()
        z, value, g = state.accepted
        v = float(hg.value) if converged else math.inf
        if v < value:
            dz, dg = z_try - z, g_try - g
            curv = float(np.vdot(dz, dg))
            bb = float(np.vdot(dz, dz)) / curv if curv > 0 else None
            done = float(np.max(np.abs(dz))) < self.tol  # z settled to ``tol``
            step = min(2.0 * state.step, self.max_step)
            new = _BBState(z=state.z, accepted=(z_try, v, g_try), step=step, bb=bb, done=done)
            return new, StepInfo(accepted=True)
        step = 0.5 * float(np.max(np.abs(z_try - z)))  # half the rejected step's length
        return state._replace(step=step, bb=None), StepInfo(accepted=False)

    def to_json(self, state):
        acc = state.accepted
        return {
            "z": _to_json(state.z),
            "accepted": None if acc is None else [_to_json(acc[0]), acc[1], _to_json(acc[2])],
            "step": state.step,
            "bb": state.bb,
            "done": state.done,
        }

    def from_json(self, saved, z0):
        acc = saved.get("accepted")
        if acc is not None:
            acc = (np.asarray(acc[0], dtype=float), float(acc[1]), np.asarray(acc[2], dtype=float))
        z = jnp.asarray(saved["z"], dtype=z0.dtype)
        return _BBState(
            z=z,
            accepted=acc,
            step=float(saved["step"]),
            bb=saved.get("bb"),
            done=bool(saved.get("done", False)),
        )

    def check_json(self, state, bad, z_list):
        z_list("state.z", state.get("z"))
        if not _is_number(state.get("step")):
            bad("state.step", state.get("step"), "a number")
        if not _is_number(state.get("bb"), none_ok=True):
            bad("state.bb", state.get("bb"), "a number (or null)")
        acc = state.get("accepted")
        if acc is not None and not (isinstance(acc, list) and len(acc) == 3 and _is_number(acc[1])):
            bad("state.accepted", acc, "null or [z, value, grad_z]")


@functools.lru_cache(maxsize=32)
def _optax_by_name(name: str, learning_rate: float) -> Optax:
    """The optax transformation a name stands for, one object per (name, rate): the compiled
    update steps are cached by it, so a second ``tune`` call compiles nothing."""
    import optax

    if name == "gd":
        tx = optax.sgd(learning_rate)
    elif name == "adam":
        tx = optax.adam(learning_rate)
    else:
        tx = optax.lbfgs()
    return Optax(tx, label=name)


def outer_solver(optimizer, learning_rate: float):
    """The outer solver an ``optimizer`` argument stands for: a name (``"gd"``, ``"adam"``,
    ``"lbfgs"``, ``"hoag"``, ``"secant"``), an optax transformation or an outer solver.
    Names are parsed here only; everything past this point works on objects."""
    if isinstance(optimizer, AbstractOuterSolver):
        return optimizer
    optax = sys.modules.get("optax")  # an optax object means optax is imported already
    if optax is not None and isinstance(optimizer, optax.GradientTransformation):
        return Optax(optimizer, label=getattr(optimizer, "__name__", None) or "optax")
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name in ("gd", "adam", "lbfgs"):
            return _optax_by_name(name, learning_rate)
        if name == "hoag":
            return HOAG()
        if name == "secant":
            return Secant()
        if name in ("bb", "barzilai-borwein"):
            return BarzilaiBorwein()
    return None
