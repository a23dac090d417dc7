"""invcal.batching: chunked and sharded maps equal a plain vmap; padding round-trips; and a
batch sharded over two local processes (jax.distributed, a coordinator on 127.0.0.1, gloo
collectives on the CPU, two devices each) gives the one-process result.

The two-process problem (tests/distributed_worker.py) is a small population: per-subject
Gauss–Newton solves in a while loop, the sum of the subjects' objectives and its gradient
with respect to the shared θ under jit. The reference is computed here, in this process,
with a plain ``jax.vmap`` and no invcal.batching at all."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invcal import batching

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import distributed_worker as problem  # noqa: E402

sys.path.remove(str(HERE))


def _value_and_grad_vmap(theta, y):
    """The reference: F(θ) = Σᵢ fᵢ(xᵢ*, θ) and dF/dθ by a plain vmap over all subjects."""

    def total(th):
        vals, aux = jax.vmap(problem.subject_value, in_axes=(None, 0))(th, y)
        return jnp.sum(vals), aux

    (value, (x, it)), grad = jax.value_and_grad(total, has_aux=True)(theta)
    return value, grad, x, it


@pytest.fixture(scope="module")
def reference():
    y = problem.make_data()
    value, grad, x, it = jax.jit(_value_and_grad_vmap)(jnp.asarray(problem.THETA), y)
    return {"y": y, "value": value, "grad": grad, "x": x, "iterations": it}


# -- (a) one process --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_map_batched_equals_vmap(reference, chunk):
    """Chunks of 1, of 4 (9 subjects: padded to 12 inside), or one batch (None): the
    per-subject solutions, iteration counts and the θ-gradient of the sum equal the vmap's."""
    y, theta = reference["y"], jnp.asarray(problem.THETA)

    @jax.jit
    def run(th):
        def total(t):
            vals, aux = batching.map_batched(
                problem.subject_value, t, y, in_axes=(None, 0), chunk=chunk
            )
            return jnp.sum(vals), aux

        return jax.value_and_grad(total, has_aux=True)(th)

    (value, (x, it)), grad = run(theta)
    assert x.shape == (problem.N_SUBJECTS, 2)
    np.testing.assert_array_equal(it, reference["iterations"])
    np.testing.assert_allclose(x, reference["x"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(value, reference["value"], rtol=1e-13)
    np.testing.assert_allclose(grad, reference["grad"], rtol=1e-13)


def test_map_batched_pytrees_shared_arguments_and_one_device_mesh():
    """Pytree arguments and outputs, a shared argument, the shard_map path on a mesh of this
    process's device, and a function that maps over the batch itself: all equal vmap."""

    def fn(scale, data, offset):
        return {"s": scale * jnp.sum(data["a"]) + offset, "v": data["b"] * scale}

    data = {"a": np.arange(15.0).reshape(5, 3), "b": np.arange(10.0).reshape(5, 2) ** 2}
    offsets = np.linspace(0.0, 1.0, 5)
    want = jax.vmap(fn, in_axes=(None, 0, 0))(2.5, data, offsets)
    mesh = batching.device_mesh(1)
    for kw in ({}, {"chunk": 2}, {"mesh": mesh}, {"mesh": mesh, "chunk": 3}):
        got = jax.jit(
            lambda s, d, o, kw=kw: batching.map_batched(fn, s, d, o, in_axes=(None, 0, 0), **kw)
        )(2.5, data, offsets)
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    # vectorized=True: fn maps over the batch itself; map_batched only chunks/shards it
    fn_batch = jax.vmap(fn, in_axes=(None, 0, 0))
    for kw in ({"chunk": 2}, {"mesh": mesh, "chunk": 3}):
        got = batching.map_batched(
            fn_batch, 2.5, data, offsets, in_axes=(None, 0, 0), vectorized=True, **kw
        )
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_pad_unpad_round_trip(xp):
    tree = {"a": xp.arange(7.0), "b": xp.arange(21).reshape(7, 3)}
    padded, valid = batching.pad_batch(tree, 4)
    assert padded["a"].shape == (8,) and padded["b"].shape == (8, 3)
    np.testing.assert_array_equal(valid, [True] * 7 + [False])
    np.testing.assert_array_equal(padded["b"][7], tree["b"][6])  # "edge": the last entry
    for n in (7, valid):
        back = batching.unpad(padded, n)
        jax.tree_util.tree_map(np.testing.assert_array_equal, back, tree)
    zeros, _ = batching.pad_batch(tree, 5, pad="zeros")
    assert zeros["b"].shape == (10, 3)
    np.testing.assert_array_equal(zeros["b"][7:], 0)
    same, valid = batching.pad_batch(tree, 7, pad=None)
    assert same["a"].shape == (7,) and bool(np.all(valid))
    with pytest.raises(ValueError, match="not a multiple of 4, and pad=None"):
        batching.pad_batch(tree, 4, pad=None)


def test_pad_batch_under_jit():
    padded, valid = jax.jit(lambda x: batching.pad_batch(x, 3))(jnp.arange(4.0))
    np.testing.assert_array_equal(padded, [0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(valid, [True] * 4 + [False] * 2)


def test_shard_batch_one_process():
    y = problem.make_data()
    mesh = batching.device_mesh()
    for m in (mesh, None):
        batch, valid = batching.shard_batch(y, m)
        assert isinstance(batch, jax.Array) and batch.shape == y.shape  # 1 device: no padding
        np.testing.assert_array_equal(batch, y)
        assert bool(jnp.all(valid))
    # local=True in a single process: this process's part is the whole batch
    batch, valid = batching.shard_batch({"y": y}, mesh, local=True)
    np.testing.assert_array_equal(batching.unpad(batching.gather(batch), np.asarray(valid))["y"], y)
    assert batch["y"].sharding.spec == jax.sharding.PartitionSpec("batch")


def test_device_mesh():
    mesh = batching.device_mesh()
    assert mesh.axis_names == ("batch",) and mesh.size == len(jax.devices())
    assert batching.device_mesh(mesh) is mesh
    assert batching.device_mesh(jax.devices(), axis="subjects").axis_names == ("subjects",)
    with pytest.raises(ValueError, match="between 1 and the"):
        batching.device_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="single axis 'subjects'"):
        batching.device_mesh(mesh, axis="subjects")
    with pytest.raises(TypeError, match="devices must be None, a number"):
        batching.device_mesh("cpu")


def test_bad_input_fails_with_a_message():
    with pytest.raises(ValueError, match=r"disagree on the batch length.*\[3, 4\]"):
        batching.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1; got 0"):
        batching.map_batched(jnp.sin, jnp.zeros(3), chunk=0)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1; got True"):
        batching.map_batched(jnp.sin, jnp.zeros(3), chunk=True)
    with pytest.raises(ValueError, match="one entry per argument"):
        batching.map_batched(jnp.add, jnp.zeros(3), jnp.zeros(3), in_axes=(0,))
    with pytest.raises(ValueError, match="at least one argument must be batched"):
        batching.map_batched(jnp.add, 1.0, 2.0, in_axes=(None, None))
    with pytest.raises(ValueError, match="pad must be one of"):
        batching.shard_batch(np.zeros(3), None, pad="wrap")
    with pytest.raises(TypeError, match="1-D jax.sharding.Mesh"):
        batching.shard_batch(np.zeros(3), "mesh")
    with pytest.raises(ValueError, match="needs a leading batch axis"):
        batching.shard_batch({"a": np.zeros(3), "s": 1.0}, None)


# -- (b) two processes --------------------------------------------------------------------------

TIMEOUT_S = 120


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both processes' results (dicts), from tests/distributed_worker.py run twice."""
    tmp = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = "2"  # two devices per process: a mesh of 4 over 2 processes
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["INVCAL_COMPILATION_CACHE"] = "0"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "distributed_worker.py"), str(i), "2", str(port)]
            + [str(tmp / f"out{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[0][-2000:] for p in procs]
        pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s:\n" + "\n".join(tails))
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        if p.returncode == 3 and "DISTRIBUTED_INIT_FAILED" in log:
            pytest.skip(f"jax.distributed cannot initialize on this platform: {log.strip()[-500:]}")
        assert p.returncode == 0, f"process {i} failed (rc {p.returncode}):\n{log[-3000:]}"
    return [json.loads((tmp / f"out{i}.json").read_text()) for i in range(2)]


def test_two_processes_see_one_mesh(two_processes):
    for i, out in enumerate(two_processes):
        assert out["process_index"] == i and out["process_count"] == 2
        assert out["devices"] == 4 and out["local_devices"] == 2
        for name in ("whole", "local"):
            res = out[name]
            assert res["batch_length"] == 12  # 9 subjects padded for 4 devices
            assert not res["batch_fully_addressable"]  # each process holds only its half
            assert len(res["x_devices"]) == 4  # results spread over both processes' devices
    # whole batch: padding at the end; local parts of 5 and 4: each padded to 6
    assert two_processes[0]["whole"]["valid"] == [True] * 9 + [False] * 3
    assert two_processes[0]["local"]["valid"] == [True] * 5 + [False] + [True] * 4 + [False] * 2


@pytest.mark.parametrize("layout", ["whole", "local"])
def test_two_processes_equal_one_process(two_processes, reference, layout):
    """Total objective, its θ-gradient (jit, reverse mode through shard_map: a cross-process
    sum) and the per-subject solutions equal the one-process vmap to 1e-12."""
    for out in two_processes:
        res = out[layout]
        assert res["iterations"] == np.asarray(reference["iterations"]).tolist()
        np.testing.assert_allclose(res["x"], reference["x"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(res["value"], reference["value"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(res["grad"], reference["grad"], rtol=1e-12, atol=1e-12)
