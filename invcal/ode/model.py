r"""An ODE model of one subject: a vector field with named states and parameters, an
observation function and the diffrax solver that integrates it.

A subject's state y(t) ∈ ℝˢ follows

    ẏ = vector_field(t, y, p) + r(t),      y(t_start) = initial(p),

where p is the dict of the subject's parameters by their declared names (on the declared
scale: declare ``lKe`` and take ``exp`` inside for a log-normal rate constant), r(t) the
zero-order infusion rates of the current dosing segment, and bolus doses add their amount
to the compartment they name between two solve segments. The model prediction of an
observation at time t is ``observe(y(t), p)``.

Derivatives of the predictions with respect to p come from diffrax in forward mode
(``diffrax.ForwardMode``, the default): a subject has few parameters, and forward mode
nests to the second and third derivatives that implicit differentiation of FOCEI and
Laplace objectives needs (reverse-mode adjoints of ``diffeqsolve`` do not; see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

__all__ = ["ODEModel"]

_FORWARD_ADJOINTS = (dfx.ForwardMode, dfx.DirectAdjoint)
_REVERSE_ADJOINTS = (dfx.RecursiveCheckpointAdjoint, dfx.BacksolveAdjoint)


def _names(kind: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(
            f"ODEModel {kind} must be a tuple of names, e.g. {kind}=('depot', 'central'); "
            f"got {value!r}."
        )
    names = tuple(value)
    if not names:
        raise ValueError(f"ODEModel needs at least one name in {kind}.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"ODEModel {kind} has duplicate names {dup}.")
    return names


class ODEModel(eqx.Module):
    """An ODE model of one subject.

    **Arguments**

    - ``vector_field(t, y, p)``: dy/dt for the state vector ``y`` (shape ``(len(states),)``)
      and the parameter dict ``p = {name: scalar}``.
    - ``states``: names of the state components; dose CMT k (1-based) goes into
      ``states[k - 1]``.
    - ``params``: names of the subject parameters, on the scale the population model puts a
      normal distribution on (log-parameters give log-normal individual parameters).
    - ``observe(y, p)``: the model prediction of DV from the state at an observation time.
    - ``initial(p)``: the state at the subject's first record, before any dose (default
      zeros). An initial-condition model is a parameter used here.
    - ``solver``: a diffrax solver (``Tsit5()`` default; ``Kvaerno5()`` for stiff systems).
    - ``rtol``, ``atol``: the step-size controller's tolerances; ``max_steps`` per solve
      segment; ``dt0`` the first step (``None``: diffrax picks it).
    - ``lag``: ``lag(p) -> {state: Tlag}``, the lag times of doses into the named states
      (NONMEM's ALAG): a dose recorded at t enters at t + Tlag (an infusion starts then, for
      its recorded duration); Tlag may depend on p (and so on random effects). The solver
      cuts its segments at the lagged times, traced values, so predictions differentiate
      in p through them (:mod:`invcal.ode.dosing`).
    - ``linear``: True when ``vector_field(t, y, p) = A(p)·y`` with A constant in t and y (the
      built-in PK models); steady-state doses (SS column) need it: their state comes from
      the matrix exponential of A.
    - ``adjoint``: how diffrax differentiates the solve. ``diffrax.ForwardMode()`` (default)
      or ``diffrax.DirectAdjoint()`` support every derivative order population fits need;
      ``RecursiveCheckpointAdjoint()`` and ``BacksolveAdjoint()`` are reverse-mode only and
      serve first derivatives (the inner fit), not implicit hypergradients.
    """

    vector_field: Callable = eqx.field(static=True)
    states: tuple[str, ...] = eqx.field(static=True)
    params: tuple[str, ...] = eqx.field(static=True)
    observe: Callable = eqx.field(static=True)
    initial: Callable | None = eqx.field(default=None, static=True)
    solver: dfx.AbstractSolver = eqx.field(default_factory=dfx.Tsit5, static=True)
    rtol: float = eqx.field(default=1e-8, static=True)
    atol: float = eqx.field(default=1e-10, static=True)
    max_steps: int = eqx.field(default=10_000, static=True)
    dt0: float | None = eqx.field(default=None, static=True)
    adjoint: dfx.AbstractAdjoint = eqx.field(default_factory=dfx.ForwardMode, static=True)
    lag: Callable | None = eqx.field(default=None, static=True)
    linear: bool = eqx.field(default=False, static=True)

    def __init__(
        self,
        vector_field: Callable,
        *,
        states,
        params,
        observe: Callable,
        initial: Callable | None = None,
        solver: dfx.AbstractSolver | None = None,
        rtol: float = 1e-8,
        atol: float = 1e-10,
        max_steps: int = 10_000,
        dt0: float | None = None,
        adjoint: dfx.AbstractAdjoint | None = None,
        lag: Callable | None = None,
        linear: bool = False,
    ):
        if not callable(vector_field):
            raise TypeError("ODEModel vector_field must be a function vector_field(t, y, p).")
        if not callable(observe):
            raise TypeError("ODEModel observe must be a function observe(y, p) -> prediction.")
        if initial is not None and not callable(initial):
            raise TypeError("ODEModel initial must be None or a function initial(p) -> y0.")
        self.vector_field = vector_field
        self.states = _names("states", states)
        self.params = _names("params", params)
        clash = sorted(set(self.states) & set(self.params))
        if clash:
            raise ValueError(f"ODEModel names {clash} are both states and params.")
        self.observe = observe
        self.initial = initial
        self.solver = dfx.Tsit5() if solver is None else solver
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise TypeError(
                f"ODEModel solver must be a diffrax solver (diffrax.Tsit5(), "
                f"diffrax.Kvaerno5(), ...); got {solver!r}."
            )
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"ODEModel rtol and atol must be > 0; got {rtol!r}, {atol!r}.")
        self.rtol, self.atol = float(rtol), float(atol)
        if int(max_steps) < 1:
            raise ValueError(f"ODEModel max_steps must be >= 1; got {max_steps!r}.")
        self.max_steps = int(max_steps)
        self.dt0 = None if dt0 is None else float(dt0)
        if lag is not None and not callable(lag):
            raise TypeError("ODEModel lag must be None or a function lag(p) -> {state: Tlag}.")
        self.lag = lag
        self.linear = bool(linear)
        self.adjoint = dfx.ForwardMode() if adjoint is None else adjoint
        if not isinstance(self.adjoint, _FORWARD_ADJOINTS + _REVERSE_ADJOINTS):
            raise TypeError(
                "ODEModel adjoint must be diffrax.ForwardMode() (default), DirectAdjoint(), "
                f"RecursiveCheckpointAdjoint() or BacksolveAdjoint(); got {adjoint!r}."
            )

    @property
    def forward_mode(self) -> bool:
        """Whether the adjoint supports forward-mode (and nested) derivatives."""
        return isinstance(self.adjoint, _FORWARD_ADJOINTS)

    def check_order(self, order: int, what: str) -> None:
        """Raise if ``what`` needs derivatives of order ``order`` the adjoint cannot give."""
        if order >= 2 and not self.forward_mode:
            raise ValueError(
                f"{what} needs derivatives of order {order} of the ODE solution with respect "
                f"to the subject's parameters, but the model's adjoint is "
                f"{type(self.adjoint).__name__}, which supports reverse-mode first derivatives "
                "only (nesting it fails inside diffrax). Pass adjoint=diffrax.ForwardMode() "
                "(the default) or diffrax.DirectAdjoint() to ODEModel."
            )

    def param_dict(self, phi) -> dict:
        """The vector φ (ordered as ``params``) as the dict ``vector_field`` receives."""
        return {name: phi[k] for k, name in enumerate(self.params)}

    def lagged_states(self) -> tuple[int, ...]:
        """Indices of the states whose doses have a lag time (``lag``'s keys), checked."""
        if self.lag is None:
            return ()
        names = self.lag({k: jnp.asarray(0.0) for k in self.params})
        if not isinstance(names, dict):
            raise TypeError(
                f"ODEModel lag(p) must return a dict {{state: Tlag}}; got {type(names).__name__}."
            )
        bad = [k for k in names if k not in self.states]
        if bad:
            raise ValueError(
                f"ODEModel lag(p) names {bad}, which are not states of the model {self.states}."
            )
        return tuple(self.states.index(k) for k in names)

    def lag_times(self, p) -> jnp.ndarray:
        """The lag time of each state's doses (n_states,), 0 for the states ``lag`` omits."""
        lags = self.lag(p)
        out = jnp.zeros(len(self.states), jnp.result_type(*p.values(), float))
        for k, v in lags.items():
            out = out.at[self.states.index(k)].set(v)
        return out

    def initial_state(self, p) -> jnp.ndarray:
        n = len(self.states)
        if self.initial is None:
            dtype = jnp.result_type(*p.values(), float) if p else float
            return jnp.zeros(n, dtype)
        y0 = jnp.asarray(self.initial(p))
        if y0.shape != (n,):
            raise ValueError(
                f"ODEModel initial(p) must return shape ({n},) (one value per state "
                f"{self.states}); got shape {y0.shape}."
            )
        return y0
