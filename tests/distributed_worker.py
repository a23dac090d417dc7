"""One process of the two-process test of :mod:`invcal.batching` (tests/test_batching.py).

Usage: ``python distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.json``. Each process
joins ``jax.distributed`` through a coordinator on 127.0.0.1:PORT, builds the global batch of
a small population problem sharded over the devices of all processes, and writes the total
objective, its gradient with respect to the shared θ (under ``jit``) and the per-subject
solutions, twice: with every process passing the whole batch (``shard_batch(local=False)``)
and with each passing only its own subjects (``local=True``, uneven parts).

The problem (also imported by the test, which solves it in one process with a plain
``jax.vmap``): subject i observes yᵢ(t) = exp(aᵢ − exp(bᵢ)·t) + noise; its inner problem is
xᵢ* = argmin_x fᵢ(x, θ) = ½‖yᵢ − exp(x₀ − exp(x₁)t)‖² + ½·exp(θ₂)·‖x − (θ₀, θ₁)‖², solved by
Gauss–Newton in a ``while_loop`` (iteration counts differ between subjects). The outer
objective is F(θ) = Σᵢ fᵢ(xᵢ*(θ), θ); by the envelope theorem dF/dθ = Σᵢ ∂fᵢ/∂θ(xᵢ*, θ)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

T = np.linspace(0.0, 2.0, 7)
THETA = np.array([0.3, -0.2, 1.5])
N_SUBJECTS = 9
CHUNK = 2


def make_data(n=N_SUBJECTS, seed=0):
    """(n, len(T)) observations: per-subject (a, b) scattered around (0.3, −0.2)."""
    rng = np.random.default_rng(seed)
    ab = np.array([0.3, -0.2]) + 0.3 * rng.standard_normal((n, 2))
    clean = np.exp(ab[:, :1] - np.exp(ab[:, 1:]) * T)
    return clean + 0.05 * rng.standard_normal(clean.shape)


def inner_objective(x, theta, y):
    r = y - jnp.exp(x[0] - jnp.exp(x[1]) * T)
    return 0.5 * jnp.vdot(r, r) + 0.5 * jnp.exp(theta[2]) * jnp.sum((x - theta[:2]) ** 2)


def solve_subject(theta, y, tol=1e-13, max_steps=60):
    """(xᵢ*, iterations): Gauss–Newton with the prior's exact Hessian, from x = (θ₀, θ₁)."""
    prec = jnp.exp(theta[2])

    def residual(x):
        return y - jnp.exp(x[0] - jnp.exp(x[1]) * T)

    def step(x):
        r = residual(x)
        J = jax.jacfwd(residual)(x)
        H = J.T @ J + prec * jnp.eye(2)
        g = J.T @ r + prec * (x - theta[:2])
        return x - jnp.linalg.solve(H, g)

    def cond(c):
        x, dx, it = c
        return (it < max_steps) & (dx > tol * (1.0 + jnp.linalg.norm(x)))

    def body(c):
        x, _, it = c
        x_new = step(x)
        return x_new, jnp.linalg.norm(x_new - x), it + 1

    x0 = theta[:2]
    x, _, it = jax.lax.while_loop(cond, body, (x0, jnp.asarray(jnp.inf, x0.dtype), 0))
    return x, it


def subject_value(theta, y):
    """(fᵢ(xᵢ*, θ), (xᵢ*, iterations)); differentiable in θ by the envelope theorem (the
    solve sees θ through ``stop_gradient``, so no derivative goes through the while loop)."""
    x, it = solve_subject(jax.lax.stop_gradient(theta), y)
    x = jax.lax.stop_gradient(x)
    return inner_objective(x, theta, y), (x, it)


def main(pid, nproc, port, out_path):
    jax.config.update("jax_enable_x64", True)
    try:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=nproc,
            process_id=pid,
            initialization_timeout=60,
        )
    except Exception as e:  # reported to the test, which skips only on this
        print(f"DISTRIBUTED_INIT_FAILED: {e!r}", flush=True)
        sys.exit(3)
    # invcal after initialize: jax.distributed must come before any JAX computation.
    from invcal import batching

    mesh = batching.device_mesh()
    y = make_data()
    theta = THETA

    @jax.jit
    def run(theta, y, valid):
        def total(th):
            vals, aux = batching.map_batched(
                subject_value, th, y, in_axes=(None, 0), chunk=CHUNK, mesh=mesh
            )
            return jnp.sum(jnp.where(valid, vals, 0.0)), aux

        (value, (x, it)), grad = jax.value_and_grad(total, has_aux=True)(theta)
        return value, grad, x, it

    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
    }
    mine = np.array_split(np.arange(N_SUBJECTS), nproc)[pid]
    for name, (batch, valid) in {
        "whole": batching.shard_batch(y, mesh),
        "local": batching.shard_batch(y[mine], mesh, local=True),
    }.items():
        value, grad, x, it = run(theta, batch, valid)
        res = {
            "batch_length": int(batch.shape[0]),
            "batch_fully_addressable": bool(batch.is_fully_addressable),
            "x_devices": sorted(d.id for d in x.sharding.device_set),
        }
        value, grad, x, it, valid_host = batching.gather((value, grad, x, it, valid))
        res.update(
            value=float(value),
            grad=grad.tolist(),
            valid=valid_host.tolist(),
            x=batching.unpad(x, valid_host).tolist(),
            iterations=batching.unpad(it, valid_host).tolist(),
        )
        out[name] = res
    with open(out_path, "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
