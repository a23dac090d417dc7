r"""Built-in population ODE models, by stable names, for ``invcal calibrate``.

Pharmacokinetic models (amounts in compartments, concentration observed in the central
one; doses go into compartment CMT, 1 = the first state listed; RATE > 0 gives zero-order
infusions). Their parameters are on the log scale, so random effects are log-normal:

- ``1cmt-iv`` (lCl, lV): A' = −(Cl/V)·A, C = A/V.
- ``1cmt-oral`` (lKa, lCl, lV): depot' = −ka·depot, A' = ka·depot − (Cl/V)·A, C = A/V.
- ``1cmt-oral-ke`` (lKe, lKa, lCl): the same model with ke = Cl/V as a parameter and
  V = Cl/ke: R's ``SSfol`` parameterization, which nlme fits to Theoph (Pinheiro & Bates
  2000, §8.2); it is ``problems/hierarchical_ode.py``'s theophylline model.
- ``2cmt-iv`` (lCl, lV1, lQ, lV2): A1' = −(Cl/V1)·A1 − (Q/V1)·A1 + (Q/V2)·A2,
  A2' = (Q/V1)·A1 − (Q/V2)·A2, C = A1/V1.
- ``2cmt-oral`` (lKa, lCl, lV1, lQ, lV2): the same with a depot absorbing at ka.

The seed model (parameters on their natural scale, additive random effects):

- ``seed`` (p, q): x' = −x + p·u(t), x(t0) = q, y = x; u(t) is a per-subject column of the
  table (``input``, default ``U``), piecewise constant (the value of a record holds until
  the next record) or piecewise linear between records. The initial condition holds at
  ``t0`` (default 0), not at the subject's first record: :meth:`BuiltinModel.prepare`
  starts every subject's timeline at t0.

How the seed model's input enters the solver: u = u₊ − u₋ with two extra states u₊, u₋
that have no dynamics of their own; a step of u by Δ at time t is a bolus of |Δ| into u₊
(Δ > 0) or u₋ (Δ < 0), and a slope s between two records is an infusion of rate |s| into
u₊ or u₋. The event machinery (segments cut at doses and infusion changes,
:func:`invcal.ode.subject_arrays`) then carries u(t) exactly, and the ODE solver never
steps across a discontinuity of u.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .events import Events, read_events
from .model import ODEModel

__all__ = ["BuiltinModel", "MODELS", "builtin_model", "describe_models", "lag_initial_estimate"]


# --------------------------------------------------------------------------------------
# Vector fields and observations (module level: stable hashes, so fits compile once)
# --------------------------------------------------------------------------------------
def _one_cmt_iv(t, y, p):
    k = jnp.exp(p["lCl"] - p["lV"])
    return jnp.stack([-k * y[0]])


def _obs_central_v(y, p):
    return y[-1] * jnp.exp(-p["lV"])


def _one_cmt_oral(t, y, p):
    ka, k = jnp.exp(p["lKa"]), jnp.exp(p["lCl"] - p["lV"])
    return jnp.stack([-ka * y[0], ka * y[0] - k * y[1]])


def _one_cmt_oral_ke(t, y, p):
    ka, ke = jnp.exp(p["lKa"]), jnp.exp(p["lKe"])
    return jnp.stack([-ka * y[0], ka * y[0] - ke * y[1]])


def _obs_ke(y, p):
    return y[1] * jnp.exp(p["lKe"] - p["lCl"])  # central / V with V = Cl/ke


def _two_cmt_rates(p):
    k10 = jnp.exp(p["lCl"] - p["lV1"])
    k12 = jnp.exp(p["lQ"] - p["lV1"])
    k21 = jnp.exp(p["lQ"] - p["lV2"])
    return k10, k12, k21


def _two_cmt_iv(t, y, p):
    k10, k12, k21 = _two_cmt_rates(p)
    a1, a2 = y[0], y[1]
    return jnp.stack([-(k10 + k12) * a1 + k21 * a2, k12 * a1 - k21 * a2])


def _obs_two_cmt_iv(y, p):
    return y[0] * jnp.exp(-p["lV1"])


def _two_cmt_oral(t, y, p):
    k10, k12, k21 = _two_cmt_rates(p)
    ka = jnp.exp(p["lKa"])
    d, a1, a2 = y[0], y[1], y[2]
    return jnp.stack([-ka * d, ka * d - (k10 + k12) * a1 + k21 * a2, k12 * a1 - k21 * a2])


def _obs_two_cmt_oral(y, p):
    return y[1] * jnp.exp(-p["lV1"])


def _depot_lag(p):
    """The oral models' lag time (``--lag``): doses into the depot enter Tlag later."""
    return {"depot": jnp.exp(p["lTlag"])}


def _seed(t, y, p):
    u = y[1] - y[2]
    return jnp.stack([-y[0] + p["p"] * u, jnp.zeros_like(u), jnp.zeros_like(u)])


def _obs_seed(y, p):
    return y[0]


def _seed_initial(p):
    q = jnp.asarray(p["q"])
    return jnp.stack([q, jnp.zeros_like(q), jnp.zeros_like(q)])


# --------------------------------------------------------------------------------------
# Initial estimates from the data (non-compartmental analysis)
# --------------------------------------------------------------------------------------
def _subject_nca(t, c, dose, t_dose):
    """(ke, Cl, tmax) of one subject's concentrations after a dose at ``t_dose``, or None:
    terminal rate from a log-linear fit of the last three positive concentrations, AUC to
    infinity by trapezoids (from C = 0 at the dose when it is not observed) plus C_last/ke."""
    keep = (t >= t_dose) & np.isfinite(c)
    t, c = t[keep] - t_dose, c[keep]
    pos = c > 0
    if pos.sum() < 3:
        return None
    tp, cp = t[pos], c[pos]
    slope = np.polyfit(tp[-3:], np.log(cp[-3:]), 1)[0]
    if not (np.isfinite(slope) and slope < 0):
        return None
    ke = -slope
    tt = np.concatenate([[0.0], t]) if t[0] > 0 else t
    cc = np.concatenate([[0.0], c]) if t[0] > 0 else c
    auc = float(np.sum(np.diff(tt) * (cc[1:] + cc[:-1]) / 2.0)) + cp[-1] / ke
    if not auc > 0:
        return None
    return ke, dose / auc, float(t[int(np.argmax(c))])


def _ka_from_tmax(tmax, ke):
    """ka > ke with tmax = log(ka/ke)/(ka − ke) (bisection); 3·ke when tmax says nothing."""
    if not (tmax > 0 and ke > 0) or tmax >= 1.0 / ke:  # tmax(ka → ke⁺) = 1/ke
        return 3.0 * ke

    def tm(ka):
        return math.log(ka / ke) / (ka - ke)

    lo, hi = ke * (1 + 1e-6), ke * 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if tm(mid) > tmax:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _nca(events: Events) -> tuple[float, float, float] | None:
    """Geometric means over subjects of (ke, Cl, ka) from :func:`_subject_nca`."""
    rows = []
    for a, b in zip(*events.blocks(), strict=True):
        dose = events.is_dose[a:b]
        obs = events.is_observation[a:b]
        if not dose.any() or not obs.any():
            continue
        t_dose = float(events.time[a:b][dose][0])
        res = _subject_nca(
            events.time[a:b][obs], events.dv[a:b][obs], float(events.amt[a:b][dose].sum()), t_dose
        )
        if res is not None:
            ke, cl, tmax = res
            rows.append((ke, cl, _ka_from_tmax(tmax, ke)))
    if not rows:
        return None
    arr = np.log(np.asarray(rows))
    return tuple(float(v) for v in np.exp(arr.mean(axis=0)))


def _pk_init(name):
    def init(events: Events) -> dict:
        nca = _nca(events)
        if nca is None:  # nothing to learn from: generic values, the user may --init
            ke, cl, ka = 0.1, 1.0, 1.0
        else:
            ke, cl, ka = nca
        v = cl / ke
        values = {
            "1cmt-iv": {"lCl": cl, "lV": v},
            "1cmt-oral": {"lKa": ka, "lCl": cl, "lV": v},
            "1cmt-oral-ke": {"lKe": ke, "lKa": ka, "lCl": cl},
            "2cmt-iv": {"lCl": cl, "lV1": v / 2, "lQ": cl, "lV2": v / 2},
            "2cmt-oral": {"lKa": ka, "lCl": cl, "lV1": v / 2, "lQ": cl, "lV2": v / 2},
        }[name]
        return {k: math.log(x) for k, x in values.items()}

    return init


def lag_initial_estimate(events: Events) -> float:
    """log Tlag to start ``--lag`` from: per subject, midway between the dose and the first
    positive concentration after it (or its last non-positive one, if later), the median
    over subjects; 1% of the sampling span when no subject tells."""
    guesses = []
    for a, b in zip(*events.blocks(), strict=True):
        dose = events.is_dose[a:b]
        obs = events.is_observation[a:b]
        if not dose.any() or not obs.any():
            continue
        t_dose = float(events.time[a:b][dose][0])
        t, c = events.time[a:b][obs], events.dv[a:b][obs]
        after = t > t_dose
        pos = np.flatnonzero(after & (c > 0))
        if not pos.size:
            continue
        t_pos = float(t[pos[0]])
        zero = np.flatnonzero(after & (t < t_pos) & ~(c > 0))
        t_zero = float(t[zero[-1]]) if zero.size else t_dose
        guesses.append(0.5 * (t_zero + t_pos) - t_dose)
    span = float(np.ptp(events.time)) or 1.0
    tl = float(np.median(guesses)) if guesses else 0.01 * span
    return math.log(max(tl, 1e-3 * span))


def _seed_init(events: Events) -> dict:
    return {"p": 1.0, "q": 0.0}


# --------------------------------------------------------------------------------------
# The seed model's input u(t) and initial time
# --------------------------------------------------------------------------------------
def _prepare_seed(events: Events, *, input: str = "U", t0: float = 0.0, interpolation="constant"):
    """The table with each subject's timeline starting at ``t0`` and its input column
    turned into bolus steps / infusion slopes of the states u₊, u₋ (module docstring)."""
    if input not in events.covariates:
        cols = sorted(events.covariates)
        near = difflib.get_close_matches(input, cols, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"model 'seed' reads its input u(t) from column {input!r}, which is not in "
            f"{events.source}{hint}; its other columns: {cols}. Pass the column's name "
            "with --input."
        )
    if interpolation not in ("constant", "linear"):
        raise ValueError(
            f"the seed model's input interpolation must be 'constant' or 'linear'; got "
            f"{interpolation!r}."
        )
    t0 = float(t0)
    late = np.flatnonzero(events.time < t0)
    if late.size:
        raise ValueError(
            f"{events.where(int(late[0]))}: TIME {events.time[late[0]]:g} is before the "
            f"initial time t0 = {t0:g} of the seed model; pass --t0 at or before every record."
        )
    if events.has_steady_state:
        i = int(np.flatnonzero(events.ss > 0)[0])
        raise ValueError(
            f"{events.where(i)}: steady-state doses (SS) are not supported with the seed "
            "model (its input comes from a column, not from doses)."
        )
    if events.addl is not None and np.any(events.addl > 0):
        i = int(np.flatnonzero(events.addl > 0)[0])
        raise ValueError(
            f"{events.where(i)}: ADDL is not supported with the seed model; write each dose "
            "as a row."
        )
    dose_big = np.flatnonzero(events.is_dose & (events.cmt > 1))
    if dose_big.size:
        raise ValueError(
            f"{events.where(int(dose_big[0]))}: a dose into CMT={events.cmt[dose_big[0]]}; "
            "the seed model has one state x (CMT=1); its input comes from the "
            f"column {input!r}."
        )
    cols = {k: [] for k in ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "CENS")}
    censored = events.is_censored
    covs = {c: [] for c in events.covariates}

    def add(i, time, dv, amt, evid, cmt, mdv, rate, cens=0):
        values = (events.id[i], time, dv, amt, evid, cmt, mdv, rate, cens)
        for k, v in zip(cols, values, strict=True):
            cols[k].append(v)
        for c in covs:
            covs[c].append(events.covariates[c][i])

    u_all = events.covariates[input]
    for a, b in zip(*events.blocks(), strict=True):
        t = events.time[a:b]
        u = u_all[a:b]
        # u's knots: (time, value) at each change of record time (the last record at a time
        # gives the value from that time on).
        knots_t, knots_u = [], []
        for k in range(b - a):
            if knots_t and knots_t[-1] == t[k]:
                knots_u[-1] = u[k]
            else:
                knots_t.append(float(t[k]))
                knots_u.append(float(u[k]))
        if knots_t[0] > t0:  # u before the first record: its first value (held constant)
            knots_t.insert(0, t0)
            knots_u.insert(0, knots_u[0])
        add(a, t0, np.nan, 0.0, 2, 1, 1, 0.0)  # the timeline starts at t0
        inputs = []  # (time, amt, cmt, rate)
        if interpolation == "constant":
            prev = 0.0
            for tk, uk in zip(knots_t, knots_u, strict=True):
                d = uk - prev
                if d != 0.0:
                    inputs.append((tk, abs(d), 2 if d > 0 else 3, 0.0))
                prev = uk
        else:
            if knots_u[0] != 0.0:
                d = knots_u[0]
                inputs.append((knots_t[0], abs(d), 2 if d > 0 else 3, 0.0))
            for k in range(len(knots_t) - 1):
                dt = knots_t[k + 1] - knots_t[k]
                du = knots_u[k + 1] - knots_u[k]
                if du != 0.0:
                    inputs.append((knots_t[k], abs(du), 2 if du > 0 else 3, abs(du) / dt))
        # merge the input rows with the subject's own rows, in time order; at equal times
        # the input comes first, so an observation sees u's value of its own record
        rows = [(x[0], 0, -1, x) for x in inputs]
        rows += [(float(t[k]), 1, a + k, None) for k in range(b - a)]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        for tm, kind, i, inp in rows:
            if kind == 0:
                _, amt, cmt, rate = inp
                add(a, tm, np.nan, amt, 1, cmt, 1, rate)
            else:
                add(
                    i,
                    float(events.time[i]),
                    events.dv[i],
                    events.amt[i],
                    int(events.evid[i]),
                    int(events.cmt[i]),
                    int(events.mdv[i]),
                    events.rate[i],
                    int(censored[i]),
                )
    table = {k: np.asarray(v) for k, v in cols.items()}
    if not censored.any():
        del table["CENS"]
    table["DV"] = np.where(np.isnan(table["DV"]), ".", table["DV"].astype(str))
    table.update({c: np.asarray(v) for c, v in covs.items()})
    return read_events(table, source=events.source)


# --------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: its ``name``, ``params``, ``states``, the ``equations`` as text,
    the :class:`ODEModel` it builds (``build(**ODEModel options)``) and initial values of
    its fixed effects from a table (``initial_estimates(events)``: non-compartmental
    estimates for the PK models). ``prepare(events, **options)`` adapts a table to the model
    (the seed model's input and initial time; identity for the others); ``options`` are
    the names it accepts."""

    name: str
    params: tuple[str, ...]
    states: tuple[str, ...]
    equations: str
    vector_field: Callable
    observe: Callable
    initial: Callable | None = None
    initial_estimates: Callable[[Events], dict] | None = None
    prepare_fn: Callable | None = None
    options: tuple[str, ...] = ()
    linear: bool = False

    @property
    def has_lag(self) -> bool:
        """Whether the model takes a lag time (``--lag``): the oral models, by their depot."""
        return "depot" in self.states

    def build(self, *, lag: bool = False, **options) -> ODEModel:
        """The :class:`ODEModel`; ``lag=True`` adds the parameter ``lTlag`` (log of the lag
        time of the doses into the depot, NONMEM's ALAG1) to an oral model."""
        params = self.params
        if lag:
            if not self.has_lag:
                oral = ", ".join(n for n, m in MODELS.items() if m.has_lag)
                raise ValueError(
                    f"--lag: model {self.name!r} has no depot to delay doses into; a lag time "
                    f"applies to the oral models ({oral})."
                )
            params = params + ("lTlag",)
        return ODEModel(
            self.vector_field,
            states=self.states,
            params=params,
            observe=self.observe,
            initial=self.initial,
            lag=_depot_lag if lag else None,
            linear=self.linear,
            **options,
        )

    def prepare(self, events: Events, **options) -> Events:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"model {self.name!r} takes no option(s) {unknown}"
                + (f"; its options: {list(self.options)}." if self.options else ".")
            )
        return events if self.prepare_fn is None else self.prepare_fn(events, **options)


_PK = "amounts in compartments (dose CMT=1 is the first state); C is observed"
MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "1cmt-iv",
            ("lCl", "lV"),
            ("central",),
            "central' = -(Cl/V)*central;  C = central/V",
            _one_cmt_iv,
            _obs_central_v,
            initial_estimates=_pk_init("1cmt-iv"),
            linear=True,
        ),
        BuiltinModel(
            "1cmt-oral",
            ("lKa", "lCl", "lV"),
            ("depot", "central"),
            "depot' = -Ka*depot;  central' = Ka*depot - (Cl/V)*central;  C = central/V",
            _one_cmt_oral,
            _obs_central_v,
            initial_estimates=_pk_init("1cmt-oral"),
            linear=True,
        ),
        BuiltinModel(
            "1cmt-oral-ke",
            ("lKe", "lKa", "lCl"),
            ("depot", "central"),
            "depot' = -Ka*depot;  central' = Ka*depot - Ke*central;  C = central*Ke/Cl (R's SSfol)",
            _one_cmt_oral_ke,
            _obs_ke,
            initial_estimates=_pk_init("1cmt-oral-ke"),
            linear=True,
        ),
        BuiltinModel(
            "2cmt-iv",
            ("lCl", "lV1", "lQ", "lV2"),
            ("central", "peripheral"),
            "central' = -(Cl+Q)/V1*central + Q/V2*peripheral;  "
            "peripheral' = Q/V1*central - Q/V2*peripheral;  C = central/V1",
            _two_cmt_iv,
            _obs_two_cmt_iv,
            initial_estimates=_pk_init("2cmt-iv"),
            linear=True,
        ),
        BuiltinModel(
            "2cmt-oral",
            ("lKa", "lCl", "lV1", "lQ", "lV2"),
            ("depot", "central", "peripheral"),
            "depot' = -Ka*depot;  central' = Ka*depot - (Cl+Q)/V1*central + Q/V2*peripheral;"
            "  peripheral' = Q/V1*central - Q/V2*peripheral;  C = central/V1",
            _two_cmt_oral,
            _obs_two_cmt_oral,
            initial_estimates=_pk_init("2cmt-oral"),
            linear=True,
        ),
        BuiltinModel(
            "seed",
            ("p", "q"),
            ("x", "u_pos", "u_neg"),
            "x' = -x + p*u(t),  x(t0) = q;  y = x  (u: the input column, --input, default U;"
            " t0: --t0, default 0)",
            _seed,
            _obs_seed,
            initial=_seed_initial,
            initial_estimates=_seed_init,
            prepare_fn=_prepare_seed,
            options=("input", "t0", "interpolation"),
        ),
    )
}
_UNITS = {m: "log scale" if m != "seed" else "natural scale" for m in MODELS}


def builtin_model(name: str) -> BuiltinModel:
    """The built-in model ``name``; an unknown name raises ``KeyError`` listing them all."""
    if name in MODELS:
        return MODELS[name]
    near = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise KeyError(
        f"unknown model {name!r}{hint}; the built-in models are {', '.join(MODELS)}, or pass "
        "path/to/file.py:NAME for an invcal.ode.ODEModel of your own (--list-models shows "
        "the built-ins)."
    )


def describe_models() -> str:
    """The built-in models with their parameters and equations (``--list-models``)."""
    lines = []
    for m in MODELS.values():
        lines.append(f"{m.name}  parameters {', '.join(m.params)} ({_UNITS[m.name]})")
        lines.append(f"    states {', '.join(m.states)}: {m.equations}")
    lines.append(
        "PK models: " + _PK + "; lX = log X. Oral models (a depot) take --lag: parameter lTlag,"
        " doses into the depot enter Tlag = exp(lTlag) later. Steady-state doses: SS=1|2 with"
        " II in the table. A model of your own: --model path/to/file.py:NAME "
        "(an invcal.ode.ODEModel, or a function returning one)."
    )
    return "\n".join(lines)
