r"""Doses whose times or states depend on the parameters: lag times and steady state.

**Lag times** (NONMEM's ALAG). A model with ``lag(p) = {state: Tlag}`` doses a state named
there at t + Tlag(p) instead of t (an infusion starts then and lasts its recorded AMT/RATE).
The dose times are traced values: each subject's events are sorted at run time by their
lagged times (ties broken by record order, as in the table), the solve segments run between
consecutive event times, and each observation falls in the segment of the events before it.
For a bolus into a depot the concentration is continuous in Tlag (the dose enters the depot,
not the observed compartment), and the state at an observation differentiates in Tlag through
the segment bounds of ``diffeqsolve`` (forward mode, to any order): no smoothing is needed. The
order of the events is piecewise constant in Tlag; a derivative is exact away from the
values of Tlag where an event crosses an observation or another event.

**Steady state** (SS = 1 or 2 on a dose row, with II; NONMEM's convention): before the
record's time t the subject has received AMT every II for ever; SS = 1 resets the state to
that regime's state at t, SS = 2 adds it to the current state; the record's own dose then
follows as an ordinary dose (lagged if its state is). For a linear model y' = A(p)y + r(t)
(``ODEModel(linear=True)``, every built-in PK model) the regime's state is one linear solve:
with Φ(τ) = e^{Aτ} and c the state one interval after a single dose from zero (c = Φ(II)b for
a bolus b; for an infusion of rate R over D ≤ II, c = Φ(II − D)∫₀ᴰΦ(s)R ds), the state
just before each dose of the regime is x = (I − Φ(II))⁻¹c (it solves x = Φ(II)x + c: the
periodic condition), and the state at t is Φ(II − Tlag)(x + b) for a bolus entering Tlag
after t (x itself when Tlag = 0). This is exact, costs one matrix exponential of the small
A per steady-state record (expm of the block matrix [[A, R], [0, 0]] gives the infusion's
integral), and differentiates like the rest; summing the doses one by one (superposition)
needs as many doses as half-lives fit in the past to converge, which grows without bound as
elimination slows. Lag times shorter than II are assumed (a lagged dose of the regime still
pending at t would need an event of its own), and steady-state infusions are not lagged.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .segment import solve_segment

__all__ = ["DoseEvents", "dose_events", "solve_with_doses"]

#: Tie-break key of the padding events (after every real event at the same time).
_PAD_KEY = 2**30


class DoseEvents(eqx.Module):
    """One subject's dose events (a leading subject axis in :class:`SubjectArrays`).

    - ``t`` (E,): the recorded time (an infusion's end: its start plus AMT/RATE); ``key``
      (E,): the tie-break among equal times (record order; infusion ends first, a
      steady-state reset just before its dose); ``state`` (E,): the dosed state;
      ``lagged`` (E,): whether the state's lag applies; ``jump`` (E, n): bolus amounts;
      ``drate`` (E, n): change of the infusion rates; ``ss`` (E,): index into the
      steady-state records, −1 for none; ``reset`` (E,): SS = 1 (the state is replaced).
    - ``ss_amt``, ``ss_ii``, ``ss_rate``, ``ss_state``, ``ss_lagged`` (K,): the steady-state
      records (AMT, II, RATE, dosed state, whether its lag applies); None without any.
    - ``obs_key`` (M,): the observations' tie-break keys; ``t_start``, ``t_end``: the
      subject's first record and the end of its timeline.
    - With occasions (:mod:`invcal.ode.occasions`): ``occ`` (E,) each event's occasion (a
      dose's lag time is its occasion's), ``switch`` (E,) the events that start a new
      occasion (at the first record of one, before that record's dose), ``occ0`` the first
      record's occasion, ``ss_occ`` (K,) each steady-state record's; None without.
    """

    t: jax.Array
    key: jax.Array
    state: jax.Array
    lagged: jax.Array
    jump: jax.Array
    drate: jax.Array
    ss: jax.Array
    reset: jax.Array
    obs_key: jax.Array
    t_start: jax.Array
    t_end: jax.Array
    ss_amt: jax.Array | None = None
    ss_ii: jax.Array | None = None
    ss_rate: jax.Array | None = None
    ss_state: jax.Array | None = None
    ss_lagged: jax.Array | None = None
    occ: jax.Array | None = None
    switch: jax.Array | None = None
    occ0: jax.Array | None = None
    ss_occ: jax.Array | None = None


def dose_events(events, model, obs_rows, M: int, occ=None) -> DoseEvents:
    """The :class:`DoseEvents` of every subject of ``events`` (padded to common sizes), with
    the observations ``obs_rows`` (each subject's observation rows, in the order of its
    ``obs_*`` arrays, padded to M) and, given ``occ`` (each row's occasion index), the
    occasions. Checks the steady-state records against the model."""
    n = len(model.states)
    lagged_states = set(model.lagged_states())
    ss_col = events.ss if events.ss is not None else np.zeros(events.id.shape[0], int)
    if events.has_steady_state and not model.linear:
        i = int(np.flatnonzero(ss_col > 0)[0])
        raise ValueError(
            f"{events.where(i)}: steady-state dosing (SS={ss_col[i]}) needs a linear model "
            "(ODEModel(linear=True): its state at steady state is a linear solve); this "
            "model is not declared linear. Expand the doses into rows (or ADDL) instead."
        )
    subjects = []
    # tie-break keys of row `order` at one time: infusion ends 3·order (before every row),
    # then per row: a new occasion big + 3·order, a steady-state reset + 1, the dose or the
    # observation + 2
    for a, b in zip(*events.blocks(), strict=True):
        big = 3 * (b - a + 1)
        ev, ss = [], []  # (t, key, state, lagged, jump, drate, ss index, reset, occ, switch)
        for i in range(a, b):
            order = i - a
            o = 0 if occ is None else int(occ[i])
            if occ is not None and i > a and occ[i] != occ[i - 1]:
                ev.append((events.time[i], big + 3 * order, 0, False, 0.0, 0.0, -1, False, o, True))
            if events.evid[i] != 1:
                continue
            c = int(events.cmt[i]) - 1
            lag = c in lagged_states
            amt, rate = float(events.amt[i]), float(events.rate[i])
            if ss_col[i] > 0:
                if rate > 0 and lag:
                    raise ValueError(
                        f"{events.where(i)}: a steady-state infusion (SS with RATE > 0) into "
                        f"the lagged state {model.states[c]!r} is not supported."
                    )
                reset = ss_col[i] == 1
                ev.append(
                    (
                        events.time[i],
                        big + 3 * order + 1,
                        c,
                        False,
                        0.0,
                        0.0,
                        len(ss),
                        reset,
                        o,
                        False,
                    )
                )
                ss.append((amt, float(events.ii[i]), rate, c, lag, o))
            for t in events.dose_times(i):
                key = big + 3 * order + 2
                if rate > 0:
                    ev.append((t, key, c, lag, 0.0, rate, -1, False, o, False))
                    ev.append((t + amt / rate, 3 * order, c, lag, 0.0, -rate, -1, False, o, False))
                else:
                    ev.append((t, key, c, lag, amt, 0.0, -1, False, o, False))
        obs_key = [big + 3 * (int(r) - a) + 2 for r in obs_rows[len(subjects)]]
        obs_t = events.time[np.asarray(obs_rows[len(subjects)], int)]
        t_end = max([float(np.max(obs_t))] + [e[0] for e in ev])
        o0 = 0 if occ is None else int(occ[a])
        subjects.append((ev, ss, obs_key, float(events.time[a]), t_end, o0))
    E = max(1, max(len(s[0]) for s in subjects))
    K = max(len(s[1]) for s in subjects)
    N = len(subjects)
    t = np.zeros((N, E))
    key = np.full((N, E), _PAD_KEY, dtype=np.int32)
    state = np.zeros((N, E), dtype=np.int32)
    lagged = np.zeros((N, E), bool)
    jump = np.zeros((N, E, n))
    drate = np.zeros((N, E, n))
    ssi = np.full((N, E), -1, dtype=np.int32)
    reset = np.zeros((N, E), bool)
    okey = np.full((N, M), _PAD_KEY - 1, dtype=np.int32)
    t_start, t_end = np.zeros(N), np.zeros(N)
    ss_amt, ss_ii = np.zeros((N, K)), np.ones((N, K))
    ss_rate, ss_state = np.zeros((N, K)), np.zeros((N, K), dtype=np.int32)
    ss_lagged = np.zeros((N, K), bool)
    occ_e, switch = np.zeros((N, E), dtype=np.int32), np.zeros((N, E), bool)
    occ0, ss_occ = np.zeros(N, dtype=np.int32), np.zeros((N, K), dtype=np.int32)
    for s, (ev, ss, ok, t0, t1, o0) in enumerate(subjects):
        t_start[s], t_end[s], occ0[s] = t0, t1, o0
        t[s, :] = t1  # padding: no-op events at the end of the timeline
        for e, (te, k, c, lg, amt, dr, si, rs, o, sw) in enumerate(ev):
            t[s, e], key[s, e], state[s, e], lagged[s, e] = te, k, c, lg
            jump[s, e, c], drate[s, e, c], ssi[s, e], reset[s, e] = amt, dr, si, rs
            occ_e[s, e], switch[s, e] = o, sw
        okey[s, : len(ok)] = ok
        for k, (amt, ii, rate, c, lg, o) in enumerate(ss):
            ss_amt[s, k], ss_ii[s, k], ss_rate[s, k], ss_state[s, k] = amt, ii, rate, c
            ss_lagged[s, k], ss_occ[s, k] = lg, o
    arr = jnp.asarray
    iov = occ is not None
    return DoseEvents(
        t=arr(t),
        key=arr(key),
        state=arr(state),
        lagged=arr(lagged),
        jump=arr(jump),
        drate=arr(drate),
        ss=arr(ssi),
        reset=arr(reset),
        obs_key=arr(okey),
        t_start=arr(t_start),
        t_end=arr(t_end),
        ss_amt=arr(ss_amt) if K else None,
        ss_ii=arr(ss_ii) if K else None,
        ss_rate=arr(ss_rate) if K else None,
        ss_state=arr(ss_state) if K else None,
        ss_lagged=arr(ss_lagged) if K else None,
        occ=arr(occ_e) if iov else None,
        switch=arr(switch) if iov else None,
        occ0=arr(occ0) if iov else None,
        ss_occ=arr(ss_occ) if iov and K else None,
    )


# --------------------------------------------------------------------------------------
# Steady state of a linear model
# --------------------------------------------------------------------------------------
def steady_state(A, amt, ii, rate, state, lag):
    """The state at the time of a steady-state record (module docstring): doses of ``amt``
    into ``state`` every ``ii`` (infusions at ``rate`` if > 0), the record's own dose entering
    ``lag`` after it. ``A``: the model's constant Jacobian (n, n)."""
    n = A.shape[0]
    e = jnp.zeros(n, A.dtype).at[state].set(1.0)
    eye = jnp.eye(n, dtype=A.dtype)
    phi_ii = jax.scipy.linalg.expm(A * ii)
    infusion = rate > 0
    dur = jnp.where(infusion, amt / jnp.where(infusion, rate, 1.0), 0.0)
    # x(D) from zero under the rate R·e for D: the last column of expm([[A, Re], [0, 0]]·D)
    M = jnp.zeros((n + 1, n + 1), A.dtype).at[:n, :n].set(A).at[:n, n].set(rate * e)
    x_dur = jax.scipy.linalg.expm(M * dur)[:n, n]
    c_inf = jax.scipy.linalg.expm(A * (ii - dur)) @ x_dur
    c = jnp.where(infusion, c_inf, phi_ii @ (amt * e))
    trough = jnp.linalg.solve(eye - phi_ii, c)  # x = Φ(II)x + c
    phase = ii - jnp.mod(lag, ii)  # time from the regime's last dose to the record
    at_record = jax.scipy.linalg.expm(A * phase) @ (trough + amt * e)  # = trough at lag 0
    return jnp.where(infusion, trough, at_record)


def _jacobian(model, p, y0):
    return jax.jacfwd(lambda y: model.vector_field(0.0, y, p))(jnp.zeros_like(y0))


# --------------------------------------------------------------------------------------
# The solve
# --------------------------------------------------------------------------------------
def solve_with_doses(model, subject, p, y0, obs_t, obs_key, P=None):
    """States at ``obs_t`` (tie-break keys ``obs_key``) and a success flag, for a subject
    with :class:`DoseEvents` (module docstring). With occasions, ``P`` (K, d) holds each
    occasion's parameter vector (``p``: the first record's) and the result gains each
    observation's occasion."""
    d = subject.doses
    if P is not None:  # each event's lag time from its own occasion's parameters
        lags = jax.vmap(lambda v: _lag(model, model.param_dict(v), y0))(P)  # (K, n)
        tau = d.t + jnp.where(d.lagged, lags[d.occ, d.state], 0.0)
    else:
        lag = _lag(model, p, y0)
        tau = d.t + jnp.where(d.lagged, lag[d.state], 0.0)
    perm = jnp.lexsort((d.key, jax.lax.stop_gradient(tau)))
    ts = tau[perm]
    t_end = jnp.maximum(d.t_end, ts[-1])
    starts = jnp.concatenate([d.t_start[None], ts])
    ends = jnp.concatenate([ts, t_end[None]])
    zero = jnp.zeros((1,) + d.jump.shape[1:], y0.dtype)
    jumps = jnp.concatenate([zero, d.jump[perm]])
    rates = jnp.cumsum(jnp.concatenate([zero, d.drate[perm]]), axis=0)
    ss_idx = jnp.concatenate([jnp.asarray([-1]), d.ss[perm]])
    reset = jnp.concatenate([jnp.asarray([False]), d.reset[perm]])
    if d.ss_amt is not None and P is not None:  # each record's occasion's A and lag time
        A = jax.vmap(lambda v: _jacobian(model, model.param_dict(v), y0))(P)[d.ss_occ]
        ss_lag = jnp.where(d.ss_lagged, lags[d.ss_occ, d.ss_state], 0.0)
        S = jax.vmap(steady_state)(A, d.ss_amt, d.ss_ii, d.ss_rate, d.ss_state, ss_lag)
    elif d.ss_amt is not None:
        A = _jacobian(model, p, y0)
        ss_lag = jnp.where(d.ss_lagged, lag[d.ss_state], 0.0)
        S = jax.vmap(lambda *a: steady_state(A, *a))(
            d.ss_amt, d.ss_ii, d.ss_rate, d.ss_state, ss_lag
        )
    else:
        S = jnp.zeros((1, y0.shape[0]), y0.dtype)
    # the observations' segments: the number of events before each (ties by key)
    before = (tau[None, :] < obs_t[:, None]) | (
        (tau[None, :] == obs_t[:, None]) & (d.key[None, :] < obs_key[:, None])
    )
    obs_seg = jnp.sum(before, axis=1)

    def one(y, seg):
        t0, t1, jump, si, rs, rate, k = seg
        y = jnp.where(rs, jnp.zeros_like(y), y) + jnp.where(si >= 0, S[jnp.maximum(si, 0)], 0.0)
        pk = p if P is None else model.param_dict(P[k])
        return solve_segment(model, y + jump, t0, t1, obs_t, pk, rate)

    rows = jnp.arange(obs_t.shape[0])
    if P is None:
        segs = (starts, ends, jumps, ss_idx, reset, rates, jnp.zeros_like(ss_idx))
        _, (ys, oks) = jax.lax.scan(one, y0, segs)
        return ys[obs_seg, rows], jnp.all(oks)
    # each segment's occasion: that of the last occasion switch at or before its start
    sw = jnp.concatenate([d.occ0[None], jnp.where(d.switch[perm], d.occ[perm], -1)])
    last = jax.lax.cummax(jnp.where(sw >= 0, jnp.arange(sw.shape[0]), 0))
    seg_occ = sw[last]
    _, (ys, oks) = jax.lax.scan(one, y0, (starts, ends, jumps, ss_idx, reset, rates, seg_occ))
    return ys[obs_seg, rows], jnp.all(oks), seg_occ[obs_seg]


def _lag(model, p, y0):
    """Each state's lag time (n,) under parameters p (zeros for a model without lags)."""
    return model.lag_times(p) if model.lag is not None else jnp.zeros_like(y0)
