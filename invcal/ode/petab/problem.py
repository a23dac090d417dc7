r"""A PEtab parameter-estimation problem as a JAX objective.

PEtab (Schmiester et al. 2021, "PEtab — interoperable specification of parameter
estimation problems in systems biology", PLoS Comput Biol 17:e1008646) specifies an SBML
model, the experimental conditions, the measurements, the observation and noise models and
the parameters to estimate. For estimated parameters θ on their scales (lin, log, log10),
each experiment e (a simulation condition, possibly after a pre-equilibration condition)
has inputs pₑ(θ) and states xₑ(t) with

    ẋₑ = f(t, xₑ, pₑ),   xₑ(0) = x̄ₑ (pre-equilibration: f(x̄ₑ, pₑ^pre) = 0) or x₀(pₑ),

and each measurement mⱼ of observable o at time tⱼ has the model value
yⱼ = hₒ(xₑ(tⱼ), pₑ, φⱼ, tⱼ) and noise σⱼ = σₒ(xₑ(tⱼ), pₑ, ψⱼ, tⱼ), with φⱼ and ψⱼ the
measurement's observable and noise parameters (numbers or parameter-table ids). The
negative log-likelihood is

    J(θ) = −Σⱼ log π(mⱼ | yⱼ, σⱼ),

π the normal or Laplace density of mⱼ (observableTransformation lin), of log mⱼ (log) or
of log₁₀ mⱼ (log10), in the measurement's own scale (the Jacobian 1/(m·ln b) included),
as ``petab.calculate_llh`` computes it. Priors are not part of J.

Every number J uses is gathered from one vector v = (θ in linear scale, constants) by
integer index arrays built at load time, so J is a pure function of θ: jit-able,
differentiable, and compiled once per problem and sensitivity method.
"""

from __future__ import annotations

import re

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import petab.v1 as petab
import sympy as sp
from petab.v1 import C

from ...precision import computes_in_float64
from .errors import PEtabError
from .sbml import TIME, sympify_formula
from .sensitivities import AbstractSensitivities, Checkpointed, Forward
from .solve import observe, simulate
from .tables import Tables, lint, read_tables

__all__ = ["PEtabProblem", "load", "neg_log_likelihood"]

_LN10 = float(np.log(10.0))


def _scale(value: float, scale: str) -> float:
    if scale == C.LOG10:
        return float(np.log10(value))
    if scale == C.LOG:
        return float(np.log(value))
    return float(value)


def _log_density(m, y, sigma, transformation, distribution):
    """log π(m | y, σ) of a measurement m (PEtab's noise models)."""
    if transformation == C.LOG:
        r, log_jacobian = jnp.log(m) - jnp.log(y), jnp.log(m)
    elif transformation == C.LOG10:
        r, log_jacobian = jnp.log10(m) - jnp.log10(y), jnp.log(m * _LN10)
    else:
        r, log_jacobian = m - y, 0.0
    if distribution == C.LAPLACE:
        return -jnp.log(2.0 * sigma) - jnp.abs(r) / sigma - log_jacobian
    return -0.5 * jnp.log(2.0 * jnp.pi * sigma**2) - 0.5 * (r / sigma) ** 2 - log_jacobian


class _Lambdified(eqx.Module):
    """A list of sympy expressions as a JAX function of vectors (one per argument
    group), returning one array (stacked); ``groups`` and ``exprs`` keep the symbols and
    the expressions (the hierarchical problem reads their structure)."""

    fn: object = eqx.field(static=True)
    groups: tuple = eqx.field(static=True)
    exprs: tuple = eqx.field(static=True)

    def __init__(self, groups, exprs):
        self.fn = sp.lambdify(groups, list(exprs), modules="jax", cse=True)
        self.groups = tuple(tuple(g) if isinstance(g, list) else g for g in groups)
        self.exprs = tuple(exprs)

    def __call__(self, *args):
        dtype = jnp.result_type(*[a for a in args if hasattr(a, "dtype")], float)
        out = self.fn(*args)
        return jnp.stack([jnp.asarray(o, dtype) for o in out])


class _Rows(eqx.Module):
    """The measurements of one observable: index arrays into the solution and into v."""

    experiment: np.ndarray  # (R,) int: experiment of each row
    time_index: np.ndarray  # (R,) int: into the experiment's save times
    time: np.ndarray  # (R,) float
    observable_parameters: np.ndarray  # (R, n_obs_par) int into v
    noise_parameters: np.ndarray  # (R, n_noise_par) int into v
    globals_: np.ndarray  # (n_glob,) int into v: parameter-table ids in the formulas
    measurement: np.ndarray  # (R,) float


class PEtabProblem(eqx.Module):
    """A PEtab problem ready to simulate: made by :func:`load`.

    Attributes: ``parameter_ids`` (the estimated parameters, in the order of the vector
    ``x`` the objective takes), ``scales`` (their parameterScale), ``nominal`` (dict id →
    nominalValue, linear scale), ``x_nominal`` (the nominal values on their scales),
    ``lower``/``upper`` (bounds on their scales), ``state_ids``, ``experiments``
    ((preequilibrationConditionId or '', simulationConditionId) per experiment).

    Methods: :meth:`log_likelihood` (of a dict of linear-scale values),
    :meth:`objective`, :meth:`gradient`, :meth:`value_and_gradient` (of ``x`` on the
    problem's scales); they compute in float64 whatever JAX's global flag. The pure
    function is :func:`neg_log_likelihood`.
    """

    # static description
    file: str = eqx.field(static=True)
    parameter_ids: tuple = eqx.field(static=True)
    scales: tuple = eqx.field(static=True)
    parameter_types: tuple = eqx.field(static=True)  # parameterType column or ''
    nominal_values: tuple = eqx.field(static=True)
    lower_bounds: tuple = eqx.field(static=True)
    upper_bounds: tuple = eqx.field(static=True)
    state_ids: tuple = eqx.field(static=True)
    input_ids: tuple = eqx.field(static=True)
    experiments: tuple = eqx.field(static=True)
    observable_ids: tuple = eqx.field(static=True)
    transformations: tuple = eqx.field(static=True)
    distributions: tuple = eqx.field(static=True)
    preequilibrated: tuple = eqx.field(static=True)  # experiment indices
    rhs: _Lambdified = eqx.field(static=True)
    initial: _Lambdified = eqx.field(static=True)
    observables: tuple = eqx.field(static=True)  # _Lambdified (y, sigma) per observable
    solver: dfx.AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    # arrays
    constants: np.ndarray
    inputs_index: np.ndarray  # (E, P) into v
    x0_index: np.ndarray  # (E, X) into v: condition-table initial values
    x0_mask: np.ndarray  # (E, X) bool: whether the condition table sets them
    pre_inputs_index: np.ndarray  # (E_pre, P)
    pre_x0_index: np.ndarray  # (E_pre, X)
    pre_x0_mask: np.ndarray  # (E_pre, X)
    save_times: np.ndarray  # (E, T), padded with the last time
    end_times: np.ndarray  # (E,)
    rows: tuple  # _Rows per observable

    @property
    def nominal(self) -> dict:
        return dict(zip(self.parameter_ids, self.nominal_values, strict=True))

    @property
    def x_nominal(self) -> np.ndarray:
        return np.array(
            [_scale(v, s) for v, s in zip(self.nominal_values, self.scales, strict=True)]
        )

    @property
    def lower(self) -> np.ndarray:
        return np.array([_scale(v, s) for v, s in zip(self.lower_bounds, self.scales, strict=True)])

    @property
    def upper(self) -> np.ndarray:
        return np.array([_scale(v, s) for v, s in zip(self.upper_bounds, self.scales, strict=True)])

    def to_scaled(self, params: dict) -> np.ndarray:
        """The vector x (on the parameters' scales) of a dict id → linear-scale value."""
        missing = [p for p in self.parameter_ids if p not in params]
        extra = sorted(set(params) - set(self.parameter_ids))
        if missing or extra:
            raise ValueError(
                f"{self.file}: the parameters must be the estimated ones {list(self.parameter_ids)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not estimated {extra}" if extra else "")
                + "."
            )
        return np.array(
            [
                _scale(float(params[p]), s)
                for p, s in zip(self.parameter_ids, self.scales, strict=True)
            ]
        )

    def _check_x(self, x):
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (len(self.parameter_ids),):
            raise ValueError(
                f"{self.file}: x must have shape ({len(self.parameter_ids)},) (one value per "
                f"estimated parameter, on its scale); got shape {x.shape}."
            )
        return jnp.asarray(x)

    def _failed_names(self, ok) -> str:
        bad = [self.experiments[i] for i in np.flatnonzero(~np.asarray(ok))]
        return ", ".join(f"{s!r}" + (f" (pre-equilibrated in {p!r})" if p else "") for p, s in bad)

    def _raise_failed(self, ok):
        ok = np.asarray(ok)
        if ok.all():
            return
        raise RuntimeError(
            f"{self.file}: the ODE solve failed for simulation condition(s) "
            f"{self._failed_names(ok)} at these parameters (max_steps={self.max_steps} "
            "reached, a non-finite state or no steady state); check the parameters or load "
            "with a larger max_steps."
        )

    @computes_in_float64
    def log_likelihood(self, params: dict | None = None) -> float:
        """PEtab's log-likelihood at ``params`` (dict estimated id → linear-scale value;
        default ``self.nominal``), a Python float computed in float64. Raises
        ``RuntimeError`` naming the simulation conditions whose ODE solve fails."""
        x = self.to_scaled(self.nominal if params is None else params)
        value, ok = _guarded(_value_jit, self, jnp.asarray(x), Checkpointed())
        self._raise_failed(ok)
        return -float(value)

    @computes_in_float64
    def objective(self, x) -> float:
        """The negative log-likelihood at ``x`` (estimated parameters on their scales);
        ``inf`` where an ODE solve fails (:meth:`failed_experiments` says which)."""
        value, ok = _guarded(_value_jit, self, self._check_x(x), Checkpointed())
        return float(value) if np.all(ok) else np.inf

    @computes_in_float64
    def failed_experiments(self, x) -> list:
        """The experiments ((preequilibrationConditionId or '', simulationConditionId))
        whose ODE solve fails at ``x``; empty where the objective is finite."""
        _, ok = _guarded(_value_jit, self, self._check_x(x), Checkpointed())
        return [self.experiments[i] for i in np.flatnonzero(~np.asarray(ok))]

    @computes_in_float64
    def value_and_gradient(self, x, *, sensitivities: AbstractSensitivities | None = None):
        """(J(x), ∇J(x)) as (float, NumPy array) for x on the parameters' scales, with the
        sensitivity method ``sensitivities`` (default :class:`Forward`).

        Never raises for a failed solve: where an ODE solve fails (max_steps, a non-finite
        state, no steady state, or a check inside the solver such as a singular linear
        system in a differentiated Newton step) the value is ``inf`` and the gradient NaN;
        where only the sensitivities fail (an adjoint's backward solve) the value is finite
        and the gradient has NaN entries. Test with ``np.isfinite``."""
        sensitivities = _check_sensitivities(sensitivities)
        (value, ok), grad = _guarded(_value_and_grad_jit, self, self._check_x(x), sensitivities)
        grad = np.array(grad, dtype=np.float64)
        if not np.all(ok) or not np.isfinite(float(value)):
            return np.inf, np.full_like(grad, np.nan)
        grad[~np.isfinite(grad)] = np.nan
        return float(value), grad

    def gradient(self, x, *, sensitivities: AbstractSensitivities | None = None) -> np.ndarray:
        """∇J(x) (see :meth:`value_and_gradient`; NaN entries where it is not defined)."""
        return self.value_and_gradient(x, sensitivities=sensitivities)[1]


def _check_sensitivities(sensitivities):
    if sensitivities is None:
        return Forward()
    if not isinstance(sensitivities, AbstractSensitivities):
        raise TypeError(
            "sensitivities must be invcal.ode.petab.Forward(), Adjoint() or Checkpointed(); "
            f"got {sensitivities!r}."
        )
    return sensitivities


# ----------------------------------------------------------------------------- objective


def _evaluate(problem: PEtabProblem, x, sensitivities: AbstractSensitivities):
    """(J(x), ok per experiment)."""
    sim = simulate(problem, x, sensitivities)
    llh = jnp.zeros((), sim.v.dtype)
    pairs = zip(problem.transformations, problem.distributions, strict=True)
    for k, (trafo, dist) in enumerate(pairs):
        m, y, sigma = observe(problem, sim, k)
        llh = llh + jnp.sum(_log_density(m, y, sigma, trafo, dist))
    return -llh, sim.ok


def neg_log_likelihood(
    problem: PEtabProblem, x, *, sensitivities: AbstractSensitivities | None = None
):
    """J(x), PEtab's negative log-likelihood at ``x`` (estimated parameters on their
    scales), as a JAX scalar: a pure function, jit-able and differentiable as
    ``sensitivities`` says (:class:`Forward`: forward mode, ``jax.jacfwd``/``jax.jvp``;
    :class:`Adjoint`, :class:`Checkpointed`: reverse mode, ``jax.grad``). A failed ODE
    solve gives +inf. Computes in the dtype of ``x``: call it in 64-bit mode
    (``with jax.enable_x64(True):``), the tolerances are float64's.

    Under differentiation a failed solve can also surface as an
    ``equinox.EquinoxRuntimeError`` raised when the compiled program runs: lineax checks the
    tangent and transposed linear solves of an implicit solver's Newton steps (and of a
    pre-equilibration's implicit function theorem) unconditionally, with no flag to return.
    :meth:`PEtabProblem.value_and_gradient` catches it and returns inf and a NaN gradient."""
    value, ok = _evaluate(problem, x, _check_sensitivities(sensitivities))
    return jnp.where(jnp.all(ok), value, jnp.inf)


def _guarded(fn, problem, x, sensitivities):
    """``fn(problem, x, sensitivities)`` (a compiled program returning ``((J, ok), ...)``
    or ``(J, ok)``) with a check raised inside the solve taken as a failed solve: an
    ``equinox.EquinoxRuntimeError`` (lineax refuses a singular or non-finite linear system in
    the tangent or transposed Newton solves of an implicit step, which carry no failure
    flag) gives ``J = inf``, ``ok = False`` and a NaN gradient."""
    try:
        return fn(problem, x, sensitivities)
    except eqx.EquinoxRuntimeError:
        ok = jnp.zeros(len(problem.experiments), bool)
        failed = (jnp.asarray(jnp.inf, x.dtype), ok)
        if fn is _value_jit:
            return failed
        return failed, jnp.full(x.shape, jnp.nan, x.dtype)


@eqx.filter_jit
def _value_jit(problem, x, sensitivities):
    return _evaluate(problem, x, sensitivities)


@eqx.filter_jit
def _value_and_grad_jit(problem, x, sensitivities):
    return sensitivities.value_and_grad(lambda y: _evaluate(problem, y, sensitivities), x)


# ----------------------------------------------------------------------------- loading


class _Values:
    """The vector v = (θ linear, constants): every number J uses, with an index for each."""

    def __init__(self, tables: Tables):
        par = tables.problem.parameter_df
        self.estimated = {}
        self.fixed = {}
        for pid, row in par.iterrows():
            if int(row[C.ESTIMATE]) == 1:
                self.estimated[pid] = len(self.estimated)
            else:
                self.fixed[pid] = float(row[C.NOMINAL_VALUE])
        self.constants = []
        self._index = {}

    def constant(self, value: float) -> int:
        key = repr(float(value))
        if key not in self._index:
            self._index[key] = len(self.estimated) + len(self.constants)
            self.constants.append(float(value))
        return self._index[key]

    def index(self, value, where: str) -> int:
        """The index in v of a number or a parameter-table id."""
        number = petab.to_float_if_float(value) if isinstance(value, str) else value
        if not isinstance(number, str):
            number = float(number)
            if np.isnan(number):
                raise PEtabError(f"{where}: a value is missing (NaN).")
            return self.constant(number)
        if number in self.estimated:
            return self.estimated[number]
        if number in self.fixed:
            return self.constant(self.fixed[number])
        raise PEtabError(
            f"{where}: {number!r} is neither a number nor a parameter of the parameter table."
        )


_PLACEHOLDER = re.compile(r"^(observable|noise)Parameter([0-9]+)_(.+)$")


def _observable_function(tables: Tables, values: _Values, oid: str, row):
    """(_Lambdified (y, σ), placeholders (obs, noise), global ids) of one observable."""
    ode = tables.ode
    where = str(tables.observable_rows[oid])
    formulas = {}
    for col in (C.OBSERVABLE_FORMULA, C.NOISE_FORMULA):
        text = row.get(col)
        if text is None or (not isinstance(text, str) and np.isnan(float(text))):
            raise PEtabError(f"{where} (observableId {oid!r}): {col} is missing.")
        formulas[col] = sympify_formula(str(text), f"{where} (observableId {oid!r}) {col}")
    obs_ph = petab.get_formula_placeholders(str(row[C.OBSERVABLE_FORMULA]), oid, "observable")
    noise_ph = petab.get_formula_placeholders(str(row[C.NOISE_FORMULA]), oid, "noise")
    y_expr = formulas[C.OBSERVABLE_FORMULA]
    s_expr = formulas[C.NOISE_FORMULA].xreplace({sp.Symbol(oid): y_expr})
    expr_subs = {sp.Symbol(k): v for k, v in ode.expressions.items()}
    y_expr, s_expr = y_expr.xreplace(expr_subs), s_expr.xreplace(expr_subs)
    known = set(ode.states) | set(ode.inputs) | {"time"} | set(obs_ph) | set(noise_ph)
    glob = []
    for col, e in ((C.OBSERVABLE_FORMULA, y_expr), (C.NOISE_FORMULA, s_expr)):
        for s in sorted(e.free_symbols, key=lambda s: s.name):
            if s.name in known or s.name in glob:
                continue
            if s.name in values.estimated or s.name in values.fixed:
                glob.append(s.name)
            else:
                raise PEtabError(
                    f"{where} (observableId {oid!r}): the {col} refers to {s.name!r}, which is "
                    "not a model entity, a placeholder of this observable or a parameter of "
                    "the parameter table."
                )
    sym = [sp.Symbol(n) for n in ode.states], [sp.Symbol(n) for n in ode.inputs]
    groups = [
        sym[0],
        sym[1],
        TIME,
        [sp.Symbol(n) for n in obs_ph],
        [sp.Symbol(n) for n in noise_ph],
        [sp.Symbol(n) for n in glob],
    ]
    return _Lambdified(groups, [y_expr, s_expr]), obs_ph, noise_ph, glob


def _condition_inputs(tables: Tables, values: _Values, par_map: dict, condition_id: str):
    """(inputs index (P,), initial-value index (X,), initial-value mask (X,)) of a
    condition, from petab's parameter mapping and the condition table's species and
    compartment columns."""
    ode = tables.ode
    cond = tables.problem.condition_df
    where = f"{tables.condition_rows[condition_id]} (conditionId {condition_id!r})"
    model_cols = set(ode.inputs) | set(ode.states) | set(ode.species)
    for col in cond.columns:
        if col == C.CONDITION_NAME:
            continue
        if col not in model_cols:
            raise PEtabError(
                f"{tables.condition_rows[condition_id].file}: the condition table's column {col!r} "
                "is not a parameter, compartment or species of the model."
            )
        if col in ode.species and col not in ode.states:
            raise PEtabError(
                f"{tables.condition_rows[condition_id].file}: the condition table sets species "
                f"{col!r}, which an assignment rule defines."
            )
    idx = []
    for k, name in enumerate(ode.inputs):
        value = par_map.get(name, ode.input_values[k])
        if name in cond.columns and name not in par_map:  # compartments: petab skips them
            cell = cond.loc[condition_id, name]
            if not (isinstance(cell, float) and np.isnan(cell)):
                value = cell
        if isinstance(value, float) and np.isnan(value):
            raise PEtabError(
                f"{where}: model parameter {name!r} has no value (set it in the parameter or "
                "condition table, or in the SBML file)."
            )
        idx.append(values.index(value, f"{where}: the value of {name!r}"))
    x_idx, x_mask = [], []
    for name in ode.states:
        cell = cond.loc[condition_id, name] if name in cond.columns else np.nan
        if isinstance(cell, (float, int, np.floating)) and np.isnan(cell):
            x_idx.append(0)
            x_mask.append(False)
        else:
            x_idx.append(values.index(cell, f"{where}: the initial value of {name!r}"))
            x_mask.append(True)
    return idx, x_idx, x_mask


@computes_in_float64
def load(
    path,
    *,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    check: bool = True,
) -> PEtabProblem:
    """Read the PEtab problem ``path`` (its YAML file) into a :class:`PEtabProblem`.

    The ``petab`` package reads and lints the tables, python-libsbml the SBML model.
    ``solver`` integrates the ODEs (default ``diffrax.Kvaerno5()``, an implicit solver:
    signalling models are stiff) with a PID step-size controller of tolerances ``rtol``,
    ``atol`` and at most ``max_steps`` steps per solve. ``check=False`` skips petab's
    linter (the import's own checks still run).

    Raises :class:`PEtabError` naming the file and row of a malformed problem, and
    :class:`UnsupportedModelError` naming a model construct the import does not handle.
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"load: rtol and atol must be > 0; got {rtol!r}, {atol!r}.")
    tables = read_tables(path)
    problem = tables.problem
    ode = tables.ode
    values = _Values(tables)
    par = problem.parameter_df
    m = problem.measurement_df

    # Observables.
    obs_info = {}
    for oid, row in problem.observable_df.iterrows():
        obs_info[oid] = _observable_function(tables, values, oid, row)

    # Experiments and their parameters (petab's mapping: model < condition < parameter table).
    has_pre = C.PREEQUILIBRATION_CONDITION_ID in m.columns

    def experiment_of(r):
        pre = r.get(C.PREEQUILIBRATION_CONDITION_ID, "") if has_pre else ""
        pre = pre if isinstance(pre, str) else ""
        return pre, r[C.SIMULATION_CONDITION_ID]

    keys = list(dict.fromkeys(experiment_of(r._asdict()) for r in m.itertuples(index=False)))
    # The measurement-level overrides are applied per row below (petab's mapping is per
    # condition); an empty pre-equilibration is '' (petab's timepoint-specific check
    # miscounts NaN when some experiments are pre-equilibrated and others not).
    m_map = m.drop(columns=[c for c in (C.OBSERVABLE_PARAMETERS, C.NOISE_PARAMETERS) if c in m])
    if has_pre:
        m_map[C.PREEQUILIBRATION_CONDITION_ID] = (
            m_map[C.PREEQUILIBRATION_CONDITION_ID].astype(object).fillna("")
        )
    sim_conditions = petab.get_simulation_conditions(m_map)
    try:
        mapping = petab.get_optimization_to_simulation_parameter_mapping(
            condition_df=problem.condition_df,
            measurement_df=m_map,
            parameter_df=par,
            observable_df=None,
            model=problem.model,
            simulation_conditions=sim_conditions,
            warn_unmapped=False,
            scaled_parameters=False,
            fill_fixed_parameters=True,
        )
    except (AssertionError, ValueError, KeyError, NotImplementedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PEtabError(
            f"{tables.yaml}: petab cannot map the parameters to the conditions: {msg}"
        ) from None
    by_key = {}
    for (_, cond), maps in zip(sim_conditions.iterrows(), mapping, strict=True):
        pre = cond.get(C.PREEQUILIBRATION_CONDITION_ID, "") if has_pre else ""
        by_key[(pre if isinstance(pre, str) else "", cond[C.SIMULATION_CONDITION_ID])] = maps

    inputs_index, x0_index, x0_mask = [], [], []
    pre_inputs_index, pre_x0_index, pre_x0_mask, preequilibrated = [], [], [], []
    for e, (pre, sim) in enumerate(keys):
        pre_map, sim_map, _, _ = by_key[(pre, sim)]
        a, b, c = _condition_inputs(tables, values, sim_map, sim)
        inputs_index.append(a)
        x0_index.append(b)
        x0_mask.append(c)
        if pre:
            a, b, c = _condition_inputs(tables, values, pre_map, pre)
            pre_inputs_index.append(a)
            pre_x0_index.append(b)
            pre_x0_mask.append(c)
            preequilibrated.append(e)

    # Save times per experiment, padded.
    times = {k: set() for k in keys}
    for r in m.itertuples(index=False):
        r = r._asdict()
        times[experiment_of(r)].add(float(r[C.TIME]))
    times = {k: sorted(v) for k, v in times.items()}
    width = max(len(v) for v in times.values())
    save_times = np.array([v + [v[-1]] * (width - len(v)) for v in (times[k] for k in keys)])
    end_times = np.array([times[k][-1] for k in keys])

    # Measurements, grouped by observable.
    observable_ids = tuple(problem.observable_df.index)
    groups = {oid: [] for oid in observable_ids}
    for i, r in enumerate(m.itertuples(index=False)):
        r = r._asdict()
        where = f"{tables.measurement_rows[i]}"
        oid = r[C.OBSERVABLE_ID]
        _, obs_ph, noise_ph, _ = obs_info[oid]
        e = keys.index(experiment_of(r))
        ov = []
        for col, ph in ((C.OBSERVABLE_PARAMETERS, obs_ph), (C.NOISE_PARAMETERS, noise_ph)):
            overrides = petab.split_parameter_replacement_list(r.get(col)) if col in r else []
            if len(overrides) != len(ph):
                raise PEtabError(
                    f"{where}: {col} gives {len(overrides)} value(s) but observable {oid!r} has "
                    f"{len(ph)} placeholder(s) {ph}."
                )
            ov.append([values.index(o, f"{where}: {col}") for o in overrides])
        t = float(r[C.TIME])
        groups[oid].append((e, times[keys[e]].index(t), t, ov[0], ov[1], float(r[C.MEASUREMENT])))

    rows, fns, trafos, dists, used = [], [], [], [], []
    for oid in observable_ids:
        g = groups[oid]
        if not g:
            continue
        fn, obs_ph, noise_ph, glob = obs_info[oid]
        orow = problem.observable_df.loc[oid]
        trafo = orow.get(C.OBSERVABLE_TRANSFORMATION, C.LIN)
        dist = orow.get(C.NOISE_DISTRIBUTION, C.NORMAL)
        trafos.append(trafo if isinstance(trafo, str) and trafo else C.LIN)
        dists.append(dist if isinstance(dist, str) and dist else C.NORMAL)
        fns.append(fn)
        used.append(oid)
        rows.append(
            _Rows(
                experiment=np.array([a[0] for a in g], dtype=np.int32),
                time_index=np.array([a[1] for a in g], dtype=np.int32),
                time=np.array([a[2] for a in g]),
                observable_parameters=np.array([a[3] for a in g], dtype=np.int32).reshape(
                    len(g), len(obs_ph)
                ),
                noise_parameters=np.array([a[4] for a in g], dtype=np.int32).reshape(
                    len(g), len(noise_ph)
                ),
                globals_=np.array([values.index(n, tables.yaml) for n in glob], dtype=np.int32),
                measurement=np.array([a[5] for a in g]),
            )
        )
    for trafo, oid in zip(trafos, used, strict=True):
        if trafo != C.LIN:
            bad = [
                i
                for i, r in enumerate(m.itertuples(index=False))
                if r._asdict()[C.OBSERVABLE_ID] == oid and float(r._asdict()[C.MEASUREMENT]) <= 0
            ]
            if bad:
                raise PEtabError(
                    f"{tables.measurement_rows[bad[0]]}: measurement of {trafo}-transformed "
                    f"observable {oid!r} must be > 0."
                )

    if check:
        lint(tables)

    est = [pid for pid in par.index if int(par.loc[pid, C.ESTIMATE]) == 1]
    sym_x, sym_p = [sp.Symbol(n) for n in ode.states], [sp.Symbol(n) for n in ode.inputs]
    n_x = len(ode.states)

    def arr(a, shape, dtype):
        return np.array(a, dtype=dtype).reshape(shape)

    n_pre = len(preequilibrated)
    return PEtabProblem(
        file=tables.yaml,
        parameter_ids=tuple(est),
        parameter_types=tuple(
            str(par.loc[pid, "parameterType"])
            if "parameterType" in par and isinstance(par.loc[pid, "parameterType"], str)
            else ""
            for pid in est
        ),
        scales=tuple(par.loc[pid, C.PARAMETER_SCALE] for pid in est),
        nominal_values=tuple(float(par.loc[pid, C.NOMINAL_VALUE]) for pid in est),
        lower_bounds=tuple(float(par.loc[pid, C.LOWER_BOUND]) for pid in est),
        upper_bounds=tuple(float(par.loc[pid, C.UPPER_BOUND]) for pid in est),
        state_ids=ode.states,
        input_ids=ode.inputs,
        experiments=tuple(keys),
        observable_ids=tuple(used),
        transformations=tuple(trafos),
        distributions=tuple(dists),
        preequilibrated=tuple(preequilibrated),
        rhs=_Lambdified([TIME, sym_x, sym_p], ode.rhs),
        initial=_Lambdified([sym_p], ode.initial),
        observables=tuple(fns),
        solver=dfx.Kvaerno5() if solver is None else solver,
        rtol=float(rtol),
        atol=float(atol),
        max_steps=int(max_steps),
        constants=np.array(values.constants, dtype=np.float64),
        inputs_index=arr(inputs_index, (len(keys), len(ode.inputs)), np.int32),
        x0_index=arr(x0_index, (len(keys), n_x), np.int32),
        x0_mask=arr(x0_mask, (len(keys), n_x), bool),
        pre_inputs_index=arr(pre_inputs_index, (n_pre, len(ode.inputs)), np.int32),
        pre_x0_index=arr(pre_x0_index, (n_pre, n_x), np.int32),
        pre_x0_mask=arr(pre_x0_mask, (n_pre, n_x), bool),
        save_times=save_times,
        end_times=end_times,
        rows=tuple(rows),
    )
