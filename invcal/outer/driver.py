"""The outer loop: :func:`tune` drives θ to the optimum of E(x*(θ), θ) with any outer
solver (:mod:`.solvers`) through one loop, :func:`_drive`."""

from __future__ import annotations

import time

from ..diagnostics import OnFailure
from ..hypergradient import AbstractHypergradient, Implicit, _check_args, describe, hypergradient
from .record import TuneResult, _check_run, _Recorder, _run_folder, _warm_start
from .rtho import RTHO, rtho
from .solvers import Context, outer_solver

__all__ = ["tune"]


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
    start=None,
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
    - ``start``: a :class:`~invcal.Hypergradient` already evaluated at ``theta0`` (by a path
      or grid search, say): the first step records it instead of evaluating θ₀ again, and
      the next solve starts from it. Ignored when a run is resumed.
    """
    _check_run(steps, learning_rate)
    if isinstance(optimizer, RTHO) or (isinstance(optimizer, str) and optimizer.lower() == "rtho"):
        # RTHO advances the inner iteration and its tangents itself: no hypergradient
        # method, no outer solver; it has its own entry point.
        rtho_ = optimizer if isinstance(optimizer, RTHO) else RTHO()
        return rtho(
            problem,
            solver=solver,
            settings=rtho_,
            learning_rate=learning_rate,
            steps=steps,
            theta0=theta0,
            out=out,
            resume=resume,
            progress=progress,
            meta=meta,
        )
    outer = outer_solver(optimizer, float(learning_rate))
    if outer is None:
        raise ValueError(
            "optimizer must be 'gd', 'adam', 'lbfgs', 'hoag', 'rtho', 'secant', an "
            "optax.GradientTransformation, invcal.HOAG(...), invcal.RTHO(...), "
            f"invcal.Secant(...) or an invcal.AbstractOuterSolver; got {optimizer!r}."
        )
    theta0 = problem.space.init() if theta0 is None else theta0
    method = Implicit() if method is None else method
    theta0 = _check_args(problem, theta0, solver, method, argument="theta0")
    outer.check(problem)
    policy = outer.policy(OnFailure.parse(on_failure))
    # one run at a time per folder: the folder is locked for the whole run
    with _run_folder(out, resume):
        rec = _Recorder(
            problem,
            method=describe(method),
            optimizer_name=outer.name,
            learning_rate=float(learning_rate),
            steps=int(steps),
            out=out,
            resume=resume,
            meta=meta,
            check_state=outer.check_json,
        )
        return _drive(
            problem, solver, method, outer, int(steps), theta0, rec, progress, policy, start
        )


def _drive(problem, solver, method, outer, steps, theta0, rec, progress, policy, start=None):
    """The one outer loop: ask the outer solver for a point, evaluate the hypergradient
    there (warm-started from the last accepted evaluation), let the solver update, record
    the row and the solver's state (results.json), until ``steps`` rows or the solver stops."""
    space = problem.space
    z0 = space.to_z(theta0)
    saved = rec.resumed_state
    state = outer.from_json(saved, z0) if saved is not None and rec.history else outer.init(z0)
    warm = last = None
    if saved is not None and rec.history:
        start = None  # a resumed run continues from its saved state
    while len(rec.history) < steps:
        request = outer.point(state)
        if request is None:  # the solver stopped by itself (converged)
            break
        t = time.perf_counter()
        theta = space.to_theta(request.z)
        if start is not None:  # the first point, evaluated by the caller
            hg, start = start, None
        else:
            hg = hypergradient(
                problem,
                theta,
                solver=solver,
                method=method,
                warm=warm,
                tol=request.tol,
                linear_tol=request.linear_tol,
                on_failure=policy,
            )
        gz = space.grad_to_z(theta, hg.grad)
        context = Context(problem, solver, method, _warm_start(problem, hg.x))
        state, info = outer.update(state, request, hg, gz, context)
        if info.accepted:
            warm = last = hg
        row = rec.add(
            z=request.z,
            theta=theta,
            value=hg.value,
            grad_z_=gz,
            diag=hg.diagnostics,
            accepted=info.accepted,
            wall=time.perf_counter() - t,
            state=outer.to_json(state),
            **info.extra,
        )
        if progress is not None:
            progress(row.step + 1, steps, row)
    return rec.finish(None if last is None else last.x, last)
