r"""Predictions of one subject's observations, and their derivatives, from diffrax.

For a subject with solve segments [t₀ₖ, t₁ₖ] (cut at doses and infusion changes), the state
is carried across segments with the bolus jumps, y(t₀ₖ⁺) = y(t₀ₖ⁻) + Δₖ, and each segment is
one ``diffeqsolve`` saving at the observation times that fall in it. The prediction of
observation j is f_j(φ) = observe(y(t_j; φ), φ).

:func:`prediction_jets` returns f and its derivatives ∂ᵏf/∂φᵏ up to a given order by nested
forward-mode differentiation of the solve (``jax.jacfwd`` through ``diffrax.ForwardMode``);
:func:`taylor` evaluates the degree-k Taylor polynomial they define. Any function of f
composed with that polynomial, evaluated at the expansion point, has exactly the value and
the first k derivatives of the same function of the true f — and it contains no ODE solve, so
reverse mode, ``jax.hessian`` and implicit differentiation apply freely to it. The population
objectives are built that way: the ODE is solved (with its sensitivities) once per subject
and evaluation, everything downstream is small dense algebra.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..precision import computes_in_float64
from .segment import solve_segment

__all__ = ["predict", "prediction_jets", "taylor", "simulate"]


def occasion_params(model, subject, phi):
    """(K, d): each occasion's parameter vector from a subject's φ = (φ (d), δ₁, …, δ_K)
    (``SubjectArrays.iov``: φ + δₖ on the parameters with inter-occasion variability)."""
    d, K, iov = len(model.params), subject.n_occasions, subject.iov
    delta = jnp.reshape(phi[d:], (K, len(iov)))
    return jnp.broadcast_to(phi[:d], (K, d)).at[:, jnp.asarray(iov)].add(delta)


def _solve_segments(model, subject, phi, obs_t, obs_seg, obs_key=None):
    """States at ``obs_t`` (each in its segment ``obs_seg``; with dose events, the segment
    follows from the events' times and the tie-break keys ``obs_key``), a success flag and
    the parameters the observations see: a dict, or with occasions (``subject.iov``) their
    occasions' parameter vectors (M, d)."""
    if subject.iov:
        return _solve_occasions(model, subject, phi, obs_t, obs_seg, obs_key)
    p = model.param_dict(phi)
    y0 = model.initial_state(p).astype(jnp.result_type(phi, float))
    if subject.doses is not None:  # lag times / steady state: segments from traced times
        from .dosing import solve_with_doses

        y_obs, ok = solve_with_doses(model, subject, p, y0, obs_t, obs_key)
        return y_obs, ok, p

    def one(y, seg):
        t0, t1, jump, rate = seg
        return solve_segment(model, y + jump, t0, t1, obs_t, p, rate)

    segs = (subject.seg_t0, subject.seg_t1, subject.seg_jump, subject.seg_rate)
    _, (ys, oks) = jax.lax.scan(one, y0, segs)
    y_obs = ys[obs_seg, jnp.arange(obs_t.shape[0])]
    return y_obs, jnp.all(oks), p


def _solve_occasions(model, subject, phi, obs_t, obs_seg, obs_key):
    """:func:`_solve_segments` for a subject with occasions: each segment solves with its
    occasion's parameters (:mod:`invcal.ode.occasions`)."""
    P = occasion_params(model, subject, phi)
    if subject.doses is not None:
        from .dosing import solve_with_doses

        p0 = model.param_dict(P[subject.doses.occ0])
        y0 = model.initial_state(p0).astype(jnp.result_type(phi, float))
        y_obs, ok, occ = solve_with_doses(model, subject, p0, y0, obs_t, obs_key, P)
        return y_obs, ok, P[occ]
    p0 = model.param_dict(P[subject.seg_occ[0]])
    y0 = model.initial_state(p0).astype(jnp.result_type(phi, float))

    def one(y, seg):
        t0, t1, jump, rate, k = seg
        return solve_segment(model, y + jump, t0, t1, obs_t, model.param_dict(P[k]), rate)

    segs = (subject.seg_t0, subject.seg_t1, subject.seg_jump, subject.seg_rate, subject.seg_occ)
    _, (ys, oks) = jax.lax.scan(one, y0, segs)
    y_obs = ys[obs_seg, jnp.arange(obs_t.shape[0])]
    return y_obs, jnp.all(oks), P[subject.seg_occ[obs_seg]]


def _observe(model, y_obs, p):
    """observe(y, p) at every observation; ``p`` a dict, or one parameter vector per
    observation (occasions)."""
    if isinstance(p, dict):
        return jax.vmap(lambda y: model.observe(y, p))(y_obs)
    return jax.vmap(lambda y, v: model.observe(y, model.param_dict(v)))(y_obs, p)


def predict(model, subject, phi):
    """(f, ok): predictions at the subject's observation times (padding included) and
    whether every solve segment succeeded with finite predictions. ``phi``: the subject's
    parameters (d,), or with occasions (``subject.iov``) (φ, δ₁, …, δ_K)."""
    key = None if subject.doses is None else subject.doses.obs_key
    y_obs, ok, p = _solve_segments(model, subject, phi, subject.obs_t, subject.obs_seg, key)
    f = _observe(model, y_obs, p)
    return f, ok & jnp.all(jnp.isfinite(f))


def prediction_jets(model, subject, phi, order: int):
    """(jets, ok) with jets = (f, ∂f/∂φ, ∂²f/∂φ², …) up to ``order`` (shapes (M,), (M, d),
    (M, d, d), …), by nested ``jax.jacfwd`` of the solve (one primal solve, shared)."""
    model.check_order(order, "these derivatives")

    def level0(q):
        f, ok = predict(model, subject, q)
        return (f,), ok

    fn = level0
    for k in range(1, order + 1):
        prev = fn
        if k == 1 and not model.forward_mode:

            def fn(q, prev=prev):
                (f,), ok = prev(q)
                J = jax.jacrev(lambda r: prev(r)[0][0])(q)
                return (f, J), ok

            continue

        def fn(q, prev=prev):
            def top(r):
                jets, ok = prev(r)
                return jets[-1], (jets, ok)

            d_top, (jets, ok) = jax.jacfwd(top, has_aux=True)(q)
            return (*jets, d_top), ok

    jets, ok = fn(phi)
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(j)) for j in jets]))
    return jets, ok & finite


def taylor(jets, dphi):
    """The Taylor polynomial Σₖ (1/k!) ∂ᵏf[dφ, …, dφ] of the jets at the displacement dφ."""
    out = jets[0]
    if len(jets) > 1:
        out = out + jets[1] @ dphi
    if len(jets) > 2:
        out = out + 0.5 * jnp.einsum("mij,i,j->m", jets[2], dphi, dphi)
    if len(jets) > 3:
        out = out + jnp.einsum("mijk,i,j,k->m", jets[3], dphi, dphi, dphi) / 6.0
    if len(jets) > 4:
        raise ValueError("taylor: jets above order 3 are not supported.")
    return out


def predict_at(model, subject, phi, times):
    """Predictions at arbitrary ``times`` (e.g. a dense grid for plots); a time equal to a
    dose time sees the dose."""
    times = jnp.asarray(times, dtype=float)
    # The last segment starting at or before t (after every jump at t).
    seg = jnp.clip(jnp.searchsorted(subject.seg_t0, times, side="right") - 1, 0, None)
    key = jnp.full(times.shape, 2**31 - 1, dtype=jnp.int32)  # after every event at t
    y, ok, p = _solve_segments(model, subject, phi, times, seg, key)
    return _observe(model, y, p), ok


@computes_in_float64
def simulate(model, events, params, *, times=None, occasion_effects=None):
    """Predictions for every subject of ``events`` with parameters ``params``.

    ``params``: dict name → scalar (every subject) or array over subjects (ordered as
    ``events.subjects``), on the declared scale. ``times``: a 1-D array of times to predict
    at for every subject (past the last observation the segments are extended); default the
    subject's observation times. ``occasion_effects``: ``{p: array (N, K)}``, the occasion
    effects κ added to parameter p on each subject's occasions (the table's OCC column,
    :mod:`invcal.ode.occasions`; NaN counts as 0). Returns dict subject ID → (times,
    predictions) as NumPy arrays; raises if a solve fails, naming the subject.
    """
    from .events import subject_arrays

    missing = [n for n in model.params if n not in params]
    if missing:
        raise ValueError(
            f"simulate: params lacks {missing} (the model's params are {model.params})."
        )
    iov = tuple(occasion_effects or ())
    arrays = subject_arrays(events, model, iov=iov)
    N = arrays.n_subjects
    phi = np.stack(
        [np.broadcast_to(np.asarray(params[n], dtype=float), (N,)) for n in model.params], axis=1
    )
    if iov:
        K = arrays.n_occasions
        kappa = [np.nan_to_num(np.asarray(occasion_effects[p], dtype=float)) for p in iov]
        if any(k.shape != (N, K) for k in kappa):
            raise ValueError(
                f"simulate: occasion_effects need shape ({N}, {K}) (subjects, occasions); got "
                f"{[k.shape for k in kappa]}."
            )
        phi = np.concatenate([phi, np.stack(kappa, axis=2).reshape(N, K * len(iov))], axis=1)
    out = {}
    for i, sid in enumerate(events.subjects):
        subj = jax.tree_util.tree_map(lambda a, i=i: a[i], arrays)
        if times is None:
            f, ok = _predict_jit(model, subj, jnp.asarray(phi[i]))
            mask = np.asarray(subj.obs_mask)
            t, f = np.asarray(subj.obs_t)[mask], np.asarray(f)[mask]
        else:
            t = np.asarray(times, dtype=float)
            tmax = float(np.max(t))
            subj = _extend(subj, tmax)
            f, ok = _predict_at_jit(model, subj, jnp.asarray(phi[i]), jnp.asarray(t))
            f = np.asarray(f)
        if not bool(ok):
            raise RuntimeError(
                f"simulate: the ODE solve failed for subject {sid!r} (max_steps reached or a "
                "non-finite state); check its parameters or raise the model's max_steps."
            )
        out[sid] = (t, f)
    return out


def _extend(subject, tmax):
    """Stretch the last segment to ``tmax`` so predictions past the last record exist."""
    if subject.doses is not None:
        te = subject.doses.t_end
        return eqx.tree_at(lambda s: s.doses.t_end, subject, jnp.maximum(te, tmax))
    t1 = subject.seg_t1
    return eqx.tree_at(lambda s: s.seg_t1, subject, t1.at[-1].set(jnp.maximum(t1[-1], tmax)))


_predict_jit = jax.jit(predict, static_argnums=0)
_predict_at_jit = jax.jit(predict_at, static_argnums=0)
