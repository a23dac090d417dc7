"""The population fit's outer loops, each compiled as one ``while_loop``: L-BFGS on the
approximate likelihood with implicit hypergradients (:func:`_fit_lbfgs`) and nlme's
Lindström–Bates alternation (:func:`_fit_lindstrom_bates`); their options and progress."""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from .. import batching, program_cache
from ..compilation_cache import to_device

__all__: list[str] = []

#: Memory (pairs kept) of the outer L-BFGS.
LBFGS_MEMORY = 10


def _theta_vector(space, z):
    """θ (user values) as one vector in the order of ``space.names`` (for the record)."""
    theta = space.to_theta(z)
    return jnp.stack([jnp.ravel(jnp.asarray(theta[k], dtype=float))[0] for k in space.names])


def _two_loop(g, S, Y, rho, count, head, m):
    """L-BFGS two-loop recursion: −H_k g from the last ``count`` pairs (ring buffer)."""
    q = g
    idx = (head - 1 - jnp.arange(m)) % m  # newest first
    valid = jnp.arange(m) < count

    def first(q, i):
        k, ok = idx[i], valid[i]
        a = jnp.where(ok, rho[k] * jnp.vdot(S[k], q), 0.0)
        return q - a * Y[k], a

    q, alphas = jax.lax.scan(first, q, jnp.arange(m))
    newest = idx[0]
    gamma = jnp.where(
        count > 0, jnp.vdot(S[newest], Y[newest]) / jnp.vdot(Y[newest], Y[newest]), 1.0
    )
    r = gamma * q

    def second(r, i):
        k, ok, a = idx[i], valid[i], alphas[i]
        b = jnp.where(ok, rho[k] * jnp.vdot(Y[k], r), 0.0)
        return r + jnp.where(ok, a - b, 0.0) * S[k], None

    r, _ = jax.lax.scan(second, r, jnp.arange(m)[::-1])
    return -r


def _info0(pop, arrays, q, n):
    N, M = arrays.obs_t.shape
    d = pop.n_phi
    return {
        "ok": np.zeros(N, bool),
        "inner_converged": np.zeros(N, bool),
        "inner_step": np.zeros(N),
        "inner_steps": np.zeros(N, int),
        "ipred": np.zeros((N, M)),
        "J": np.zeros((N, M, d)),
        "nll": np.zeros(N),
        "deta_dz": np.zeros((N, q, n)),
        "ift_residual": np.zeros(N),
    }


def _fit_lbfgs(
    pop, space, arrays, z0, eta0, opts, valid, mesh=None, chunk=None, state0=None, on_accept=None
):
    """The exact maximum of the approximate likelihood by :func:`_lbfgs`; every evaluation
    solves the inner problems from the first-order prediction of η* at the trial point.
    ``valid``/``mesh``: see :meth:`Population.value_and_grad` and :func:`_shard_subjects`;
    ``state0``: the loop's carry to continue from (a resumed fit; :func:`lbfgs_init`'s
    structure); ``on_accept(phase, state)``: called on the host with the carry after every
    accepted pass (progress, results.json), the loop pausing there (:func:`_drive`)."""
    info0 = _info0(pop, arrays, eta0.shape[1], z0.shape[0])
    state = lbfgs_init(z0, eta0, info0, opts) if state0 is None else state0
    state = _drive(
        _lbfgs_steps, (pop, space, arrays, _compiled(opts), valid, mesh, chunk), state, on_accept
    )
    out = dict(state)
    out["n_history"] = out["iter"] + 1
    out["n_inner"] = out["evals"]
    return out


def _drive(steps, args, state, on_accept, phase="lbfgs"):
    """Run a compiled loop ``steps(*args, state, pause)`` to its end. With ``on_accept`` the
    loop pauses after each accepted iteration (``pause``: a runtime flag, so the paused and
    the unpaused runs are one compiled program) and the host calls ``on_accept(phase,
    state)`` there. The carry stays on the device between calls, so a paused run is the
    same computation as an unpaused one, bit for bit. No host callback inside the program:
    JAX's persistent cache keeps it (a program with one is compiled again in every
    process)."""
    state = _strong(state)
    if on_accept is None:
        return steps(*args, state, _flag(False))
    while True:
        before = int(state["evals"])
        state = _strong(steps(*args, state, _flag(True)))
        if int(state["evals"]) > before and int(state["ls"]) == 0:  # its last pass: accepted
            on_accept(phase, state)
        if bool(state["done"]):
            return state


def _flag(value: bool):
    """A boolean argument of a compiled loop, transferred without a program."""
    return to_device(value)


def _strong(tree):
    """``tree`` without weakly typed leaves (``jnp.asarray(0.0)``): a carry passed back into
    a compiled loop (paused, resumed) must have the types of the first one, or the loop
    compiles a second time; every carry enters strongly typed."""

    def strong(x):
        if isinstance(x, jax.Array) and x.weak_type:
            return jax.lax.convert_element_type(x, x.dtype)
        return to_device(x)  # NumPy values: strongly typed, transferred without a program

    return jax.tree_util.tree_map(strong, tree)


def _compiled(opts):
    """The options a compiled loop takes (arrays and the history length; no callables)."""
    return {k: v for k, v in opts.items() if k not in ("progress", "record")}


@program_cache.cached
def _lbfgs_steps(pop, space, arrays, opts, valid, mesh, chunk, state, pause):
    inner_tol, inner_max = opts["inner_tol"], opts["inner_max_steps"]

    def evaluate(z_t, z, eta, info):
        # Warm start at η* + (dη*/dz)Δz: first-order accurate, so Newton needs ~2 steps.
        eta_guess = eta + info["deta_dz"] @ (z_t - z)
        return pop.value_and_grad(
            space, z_t, eta_guess, arrays, inner_tol, inner_max, valid=valid, mesh=mesh, chunk=chunk
        )

    return _lbfgs_loop(evaluate, state, opts, pause)


def _fit_lindstrom_bates(
    pop, space, arrays, z0, eta0, opts, valid, mesh=None, chunk=None, state0=None, on_accept=None
):
    """nlme's algorithm (Lindstrom & Bates 1990; Pinheiro & Bates 2000, §7.2): solve the
    inner problems at θ_k, linearize the predictions there, maximize the linear
    mixed-effects likelihood over θ by :func:`_lbfgs` (no ODE solve in that loop), repeat
    until θ stops moving. Its fixed point zeroes the gradient of the likelihood with the
    linearization held fixed: not the maximum of the FOCEI objective (which also follows
    the linearization point), but what nlme reports. ``state0``, ``on_accept``: as for
    :func:`_fit_lbfgs` (every relinearization is accepted)."""
    n, q = z0.shape[0], eta0.shape[1]
    info0 = _info0(pop, arrays, q, n)
    c = lindstrom_bates_init(z0, eta0, info0, opts["history"]) if state0 is None else state0
    c = _strong(c)
    args = (pop, space, arrays, _compiled(opts), valid, mesh, chunk)
    if on_accept is None:
        c = _lb_steps(*args, c, _flag(False))
    else:
        while True:
            before = int(c["k"])
            c = _strong(_lb_steps(*args, c, _flag(True)))
            if int(c["k"]) > before:
                on_accept("lindstrom-bates", c)
            k, change, f = int(c["k"]), float(c["change"]), float(c["f"])  # on the host
            if not (
                k < int(opts["max_iter"]) and change > float(opts["xtol"]) and math.isfinite(f)
            ):
                break
    f, change = float(c["f"]), float(c["change"])  # on the host: no small programs
    status = np.asarray(4 if not math.isfinite(f) else 6 if change <= float(opts["xtol"]) else 5)
    return {
        "z": c["z"],
        "f": c["f"],
        "g": c["g"],
        "eta": c["eta"],
        "info": c["info"],
        "iter": c["k"],
        "evals": c["evals"],
        "history": c["history"],
        "inner_history": c["inner_history"],
        "status": status,
        "n_history": c["k"],
        "n_inner": c["k"],
    }


def _lb_continues(c, opts):
    return (c["k"] < opts["max_iter"]) & (c["change"] > opts["xtol"]) & jnp.isfinite(c["f"])


@program_cache.cached
def _lb_steps(pop, space, arrays, opts, valid, mesh, chunk, c0, pause):
    """Lindström–Bates relinearizations from the carry ``c0`` until it stops (or, with
    ``pause``, after one)."""
    inner_tol, inner_max = opts["inner_tol"], opts["inner_max_steps"]
    n, q = c0["z"].shape[0], c0["eta"].shape[1]
    info0 = _info0(pop, arrays, q, n)
    hist = opts["history"]

    def relinearize(c):
        theta = space.to_theta(c["z"])

        eta, dec, steps, ok, jets, conv = batching.map_batched(
            lambda e, s: pop.solve_inner(e, theta, s, inner_tol, inner_max),
            c["eta"],
            arrays,
            chunk=chunk,
            mesh=mesh,
            vectorized=True,
        )
        ok = ok | ~valid
        conv = conv | ~valid
        phi_hat = jax.vmap(lambda e, s: pop.phi(e, theta, s.cov))(eta, arrays)
        lin = (jets[0], jets[1], phi_hat, eta)

        def evaluate(z_t, z, e, info):
            def total(zz):
                vals, eta_lin = jax.vmap(
                    lambda l0, l1, ph, eh, s: pop.linearized_value(space, (l0, l1, ph, eh), zz, s)
                )(*lin, arrays)
                vals = jnp.where(valid, vals, 0.0)  # padding copies count for nothing
                ok_i = ok & jnp.isfinite(vals)
                return jnp.where(jnp.all(ok_i), jnp.sum(vals), jnp.inf), (vals, eta_lin, ok_i)

            (f, (vals, eta_lin, ok_i)), g = jax.value_and_grad(total, has_aux=True)(z_t)
            g = jnp.where(jnp.isfinite(f), g, 0.0)
            new = dict(info)
            new.update(
                ok=ok_i,
                inner_converged=conv,
                inner_step=dec,
                inner_steps=steps,
                ipred=jets[0],
                J=jets[1],
                nll=vals,
            )
            return f, g, eta_lin, new

        run = _lbfgs_loop(evaluate, lbfgs_init(c["z"], eta, info0, opts), opts)
        th_old = jnp.stack(list(theta.values()))
        th_new = jnp.stack(list(space.to_theta(run["z"]).values()))
        change = jnp.max(jnp.abs(th_new - th_old) / (1.0 + jnp.abs(th_old)))
        k = c["k"]
        return {
            "z": run["z"],
            "g": run["g"],
            "eta": run["eta"],
            "f": run["f"],
            "info": run["info"],
            "k": k + 1,
            "change": change,
            "evals": c["evals"] + run["evals"],
            "lme_iter": c["lme_iter"] + run["iter"],
            "history": c["history"].at[jnp.minimum(k, hist - 1)].set(run["f"]),
            "inner_history": c["inner_history"].at[jnp.minimum(k, hist - 1)].set(jnp.max(steps)),
            "lme_status": run["status"],
        }

    k0 = c0["k"]

    def cond(c):
        return _lb_continues(c, opts) & ~(pause & (c["k"] > k0))

    return jax.lax.while_loop(cond, relinearize, c0)


def lindstrom_bates_init(z0, eta0, info0, hist):
    """The carry of :func:`_fit_lindstrom_bates`'s loop before its first iteration."""
    return {
        "z": z0,
        "g": np.zeros_like(z0),
        "eta": eta0,
        "f": np.asarray(0.0),
        "info": info0,
        "k": np.asarray(0),
        "change": np.asarray(np.inf),
        "evals": np.asarray(0),
        "lme_iter": np.asarray(0),
        "history": np.full((hist,), np.nan),
        "inner_history": np.zeros((hist,), int),
        "lme_status": np.asarray(0),
    }


def lbfgs_init(z0, eta0, info0, opts, m=LBFGS_MEMORY):
    """The carry of :func:`_lbfgs`'s loop before its first pass."""
    n = z0.shape[0]
    return {
        "z": z0,
        "f": np.asarray(np.inf),
        "g": np.zeros(n),
        "eta": eta0,
        "d": np.zeros(n),
        "alpha": np.asarray(0.0),
        "started": np.asarray(False),
        "S": np.zeros((m, n)),
        "Y": np.zeros((m, n)),
        "rho": np.zeros(m),
        "count": np.asarray(0),
        "head": np.asarray(0),
        "iter": np.asarray(0),
        "evals": np.asarray(0),
        "ls": np.asarray(0),
        "done": np.asarray(False),
        "status": np.asarray(0),
        "small": np.asarray(0),
        "history": np.full((opts["history"],), np.nan),
        "inner_history": np.zeros((opts["history"],), int),
        "info": info0,
    }


def _lbfgs_loop(evaluate, state, opts, pause=None):
    """L-BFGS (memory 10) with backtracking (Armijo) line search, as one ``while_loop``
    from the carry ``state`` (:func:`lbfgs_init`'s structure) with one call of
    ``evaluate(z_trial, z, eta, info) -> (f, g, eta, info)`` per pass (so the objective,
    and the ODE solves in it, are compiled once). The first pass evaluates z0 itself;
    trial steps are capped at ``max_step`` in every coordinate. ``pause`` (a traced
    boolean): stop after the first accepted pass of this call (:func:`_drive`)."""
    m = LBFGS_MEMORY
    max_iter, gtol, ftol, max_step = (
        opts["max_iter"],
        opts["gtol"],
        opts["ftol"],
        opts["max_step"],
    )
    evals0 = state["evals"]

    def cond(s):
        if pause is None:
            return ~s["done"]
        return ~s["done"] & ~(pause & (s["evals"] > evals0) & (s["ls"] == 0))

    def body(s):
        z_t = s["z"] + s["alpha"] * s["d"]
        f_t, g_t, eta_t, info_t = evaluate(z_t, s["z"], s["eta"], s["info"])
        slope = jnp.vdot(s["g"], s["d"])
        armijo = jnp.isfinite(f_t) & (f_t <= s["f"] + 1e-4 * s["alpha"] * slope)
        accept = armijo | ~s["started"]
        # -- accepted: update the memory and the direction -------------------------
        sv, yv = z_t - s["z"], g_t - s["g"]
        sy = jnp.vdot(sv, yv)
        push = accept & s["started"] & (sy > 1e-12 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv))
        head = s["head"]
        S = jnp.where(push, s["S"].at[head].set(sv), s["S"])
        Y = jnp.where(push, s["Y"].at[head].set(yv), s["Y"])
        rho = jnp.where(push, s["rho"].at[head].set(1.0 / jnp.where(push, sy, 1.0)), s["rho"])
        head = jnp.where(push, (head + 1) % m, head)
        count = jnp.where(push, jnp.minimum(s["count"] + 1, m), s["count"])
        d_new = _two_loop(g_t, S, Y, rho, count, head, m)
        descent = jnp.vdot(d_new, g_t) < 0
        d_new = jnp.where(descent, d_new, -g_t)
        count = jnp.where(descent, count, 0)
        dmax = jnp.max(jnp.abs(d_new))
        alpha_new = jnp.where(dmax > 0, jnp.minimum(1.0, max_step / jnp.maximum(dmax, 1e-300)), 0.0)
        # -- rejected: backtrack by safeguarded quadratic interpolation ---------------
        a = s["alpha"]
        denom = 2.0 * (f_t - s["f"] - a * slope)
        a_q = jnp.where(jnp.isfinite(f_t) & (denom > 0), -slope * a * a / denom, 0.1 * a)
        a_back = jnp.clip(a_q, 0.1 * a, 0.5 * a)
        f_prev = s["f"]
        new = {
            "z": jnp.where(accept, z_t, s["z"]),
            "f": jnp.where(accept, f_t, s["f"]),
            "g": jnp.where(accept, g_t, s["g"]),
            "eta": jnp.where(accept, eta_t, s["eta"]),
            "d": jnp.where(accept, d_new, s["d"]),
            "alpha": jnp.where(accept, alpha_new, a_back),
            "started": jnp.asarray(True),
            "S": S,
            "Y": Y,
            "rho": rho,
            "count": count,
            "head": head,
            "iter": s["iter"] + jnp.where(accept & s["started"], 1, 0),
            "evals": s["evals"] + 1,
            "ls": jnp.where(accept, 0, s["ls"] + 1),
            "info": jax.tree_util.tree_map(
                lambda a_, b_: jnp.where(accept, a_, b_), info_t, s["info"]
            ),
        }
        rel = jnp.abs(f_prev - f_t) / (1.0 + jnp.abs(f_t))
        small = jnp.where(
            accept & s["started"], jnp.where(rel <= ftol, s["small"] + 1, 0), s["small"]
        )
        gmax = jnp.max(jnp.abs(new["g"]))
        history = jnp.where(
            accept,
            s["history"].at[jnp.minimum(new["iter"], opts["history"] - 1)].set(f_t),
            s["history"],
        )
        status = jnp.where(
            ~jnp.isfinite(new["f"]),
            4,  # the starting point failed
            jnp.where(
                gmax <= gtol,
                1,
                jnp.where(
                    small >= 3,
                    2,
                    jnp.where(new["ls"] >= 30, 3, jnp.where(new["iter"] >= max_iter, 5, 0)),
                ),
            ),
        )
        inner_history = (
            s["inner_history"]
            .at[jnp.minimum(s["evals"], opts["history"] - 1)]
            .set(jnp.max(info_t["inner_steps"]))
        )
        status = status.astype(s["status"].dtype)  # strongly typed, as the carry it enters
        new.update(
            history=history,
            inner_history=inner_history,
            small=small,
            status=status,
            done=status > 0,
        )
        return new

    return jax.lax.while_loop(cond, body, state)


_STATUS = {
    1: "converged: gradient norm below gtol",
    2: "converged: relative change of the objective below ftol",
    3: "stopped: the line search failed to decrease the objective",
    4: "failed: the objective is not finite at the starting point",
    5: "stopped: max_iter reached",
    6: "converged: Lindstrom-Bates fixed point (relative change of theta below xtol)",
}


def _options(
    max_iter,
    gtol,
    ftol,
    inner_tol,
    inner_max_steps,
    max_step,
    *,
    min_iter=1,
    xtol=1e-7,
    progress=None,
    record=None,
):
    for name, v, lo in (
        ("max_iter", max_iter, min_iter),
        ("inner_max_steps", inner_max_steps, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}.")
    for name, v in (
        ("gtol", gtol),
        ("ftol", ftol),
        ("inner_tol", inner_tol),
        ("max_step", max_step),
        ("xtol", xtol),
    ):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number; got {v!r}.")
    # Arrays, not Python numbers: changing an option must not recompile the fit.
    return {
        "max_iter": to_device(int(max_iter)),
        "gtol": to_device(float(gtol)),
        "ftol": to_device(float(ftol)),
        "inner_tol": to_device(float(inner_tol)),
        "inner_max_steps": to_device(int(inner_max_steps)),
        "max_step": to_device(float(max_step)),
        "xtol": to_device(float(xtol)),
        "history": 512,
        "progress": _progress_callback(progress),
        "record": record,
    }


def _print_progress(algorithm, iteration, objective):
    print(
        f"fit_population [{algorithm}] iteration {iteration}: objective {objective:.10g}",
        file=sys.stderr,
        flush=True,
    )


def _progress_callback(progress):
    """``progress`` of :func:`fit_population` as a host callback, or None. A module-level
    function for ``True``, so repeated fits reuse the compiled loop."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return _print_progress
    if not callable(progress):
        raise TypeError(
            "progress must be None, True (a line per iteration on stderr) or a callable "
            f"progress(algorithm, iteration, objective); got {progress!r}."
        )
    return progress
