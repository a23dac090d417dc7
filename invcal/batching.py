"""Batches of independent problems: vmapped, in chunks, sharded over devices and processes.

Subjects of a population fit, images, cross-validation folds and θ candidates are independent
inner problems sharing the hyperparameters θ. This module is the one place that batches them:

- :func:`device_mesh` — the 1-D ``jax.sharding.Mesh`` a batch is split along (by default all
  devices of all processes: ``jax.devices()``);
- :func:`shard_batch` — pad the leading (batch) axis of a pytree to a multiple of the mesh's
  size and place it sharded along the mesh axis; in a multi-process run (``jax.distributed``)
  either every process passes the whole batch or each passes its own part;
- :func:`map_batched` — ``fn`` vmapped over the leading axis, optionally in chunks
  (``lax.map`` over vmapped chunks) to bound memory and lockstep, and with a mesh, each device
  mapping its own block (``jax.shard_map``);
- :func:`pad_batch`, :func:`unpad`, :func:`gather` — padding, its removal, and host copies of
  (possibly multi-process) results.

Everything is a pure function of pytrees; padding entries are copies of a real entry (so that
an inner solver runs on them as on real data) and are marked ``False`` in the ``valid`` mask
that :func:`shard_batch` returns: multiply or ``jnp.where`` by it before summing.

Multi-process (JAX's own runtime, nothing home-made): every process calls
``jax.distributed.initialize(coordinator_address="HOST:PORT", num_processes=P, process_id=i)``
before any other JAX call, then runs the same program; ``jax.devices()`` then lists the devices
of all processes and a jitted function over arrays sharded on :func:`device_mesh` runs across
them, its reductions crossing processes. On CPUs the cross-process collectives are gloo's
(``jax_cpu_collectives_implementation``, the default in JAX 0.10)."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .compilation_cache import to_device

__all__ = [
    "BATCH_AXIS",
    "device_mesh",
    "pad_batch",
    "shard_batch",
    "map_batched",
    "unpad",
    "gather",
]

#: Default name of the mesh axis a batch is split along.
BATCH_AXIS = "batch"

_PAD_MODES = ("edge", "zeros")


def device_mesh(devices=None, axis: str = BATCH_AXIS) -> Mesh:
    """The 1-D mesh, with the single axis ``axis``, that a batch is split along.

    ``devices``: ``None`` (every device of every process, ``jax.devices()``), a number k (the
    first k of them), a sequence of ``jax.Device``, or a 1-D ``Mesh`` whose axis is ``axis``
    (returned as is). On a CPU, ``JAX_NUM_CPU_DEVICES=k`` (or
    ``XLA_FLAGS=--xla_force_host_platform_device_count=k``), set before JAX starts, splits the
    host into k devices."""
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"axis must be a non-empty string (a mesh axis name); got {axis!r}.")
    if isinstance(devices, Mesh):
        if devices.axis_names != (axis,):
            raise ValueError(
                f"devices: a Mesh must have the single axis {axis!r}; got axis names "
                f"{devices.axis_names}."
            )
        return devices
    available = jax.devices()
    if devices is None:
        devs = list(available)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} available device(s); "
                f"got {devices}."
            )
        devs = list(available[: int(devices)])
    else:
        try:
            devs = list(devices)
        except TypeError:
            devs = None
        if not devs or not all(isinstance(d, jax.Device) for d in devs):
            raise TypeError(
                "devices must be None, a number of devices, a sequence of jax devices or a "
                f"jax.sharding.Mesh; got {devices!r}."
            )
        if len(set(devs)) != len(devs):
            raise ValueError(f"devices: each device may appear once; got {devs}.")
    return Mesh(np.asarray(devs), (axis,))


def _batch_length(tree, what="tree") -> int:
    """The common length of the leading axis of every leaf of ``tree``."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no array leaves: there is nothing to batch.")
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in lengths:
        raise ValueError(
            f"every leaf of {what} needs a leading batch axis; got a scalar leaf. Pass shared "
            "values separately (in_axes=None in map_batched)."
        )
    if len(lengths) != 1:
        raise ValueError(
            f"the leaves of {what} disagree on the batch length (leading axis): got lengths "
            f"{sorted(lengths)}."
        )
    (n,) = lengths
    if n == 0:
        raise ValueError(f"{what} has an empty batch (leading axis of length 0).")
    return int(n)


def _check_pad(pad):
    if pad is not None and pad not in _PAD_MODES:
        raise ValueError(f"pad must be one of {_PAD_MODES} or None; got {pad!r}.")


def _pad_leaf(x, extra, pad, xp):
    if extra == 0:
        return x
    if pad == "edge":
        fill = xp.repeat(x[-1:], extra, axis=0)
    else:
        fill = xp.zeros((extra,) + x.shape[1:], x.dtype)
    return xp.concatenate([x, fill], axis=0)


def _padded(tree, multiple, pad, xp, what="tree"):
    """(tree padded to a multiple of ``multiple`` along the leading axis, its length n)."""
    n = _batch_length(tree, what)
    extra = (-n) % multiple
    if extra and pad is None:
        raise ValueError(
            f"{what} has a batch of {n}, not a multiple of {multiple}, and pad=None forbids "
            "padding; pass pad='edge' (copies of the last entry) or pad='zeros'."
        )
    return jax.tree_util.tree_map(lambda x: _pad_leaf(x, extra, pad, xp), tree), n


def pad_batch(tree, multiple: int, *, pad: str | None = "edge"):
    """(padded tree, valid): the leading axis of every leaf padded to the next multiple of
    ``multiple``; ``valid`` (bool, padded length) is ``True`` on the original entries.

    ``pad``: ``"edge"`` (copies of the last entry: an inner solver behaves on them as on real
    data, no NaN from zeros), ``"zeros"``, or ``None`` (no padding: the length must already be
    a multiple). Works on NumPy and JAX arrays, also under ``jit``."""
    _check_pad(pad)
    multiple = _positive_int(multiple, "multiple")
    xp = np if all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(tree)) else jnp
    out, n = _padded(tree, multiple, pad, xp)
    m = _batch_length(out)
    return out, xp.arange(m) < n


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def _check_mesh(mesh):
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise TypeError(
            "mesh must be a 1-D jax.sharding.Mesh (see invcal.batching.device_mesh) or None; "
            f"got {mesh!r}."
        )
    return mesh.axis_names[0]


def _host(x):
    """A NumPy copy of a leaf in JAX's canonical dtype (float64 → float32 when x64 is off)."""
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def shard_batch(tree, mesh: Mesh | None, *, pad: str | None = "edge", local: bool = False):
    """(sharded tree, valid): the batch ``tree`` padded to a multiple of the mesh's size and
    placed split along the mesh's axis; ``valid`` (bool, padded length, sharded alike) marks
    the real entries.

    - ``mesh``: a 1-D mesh (:func:`device_mesh`), or ``None``: no sharding and no padding (the
      tree comes back as JAX arrays, ``valid`` all ``True``).
    - ``pad``: as for :func:`pad_batch`.
    - ``local=False``: ``tree`` is the whole batch, the same on every process (each process
      reads the same file); each process keeps only the blocks of its own devices. Padding
      goes at the end, so :func:`unpad` with the original length undoes it.
    - ``local=True`` (multi-process): ``tree`` is this process's part of the batch; the parts,
      of any lengths, are each padded to one common length (a multiple of the process's
      device count in the mesh; the lengths are exchanged between processes, so every
      process must call this) and joined in the mesh's device order (process 0's part first
      on :func:`device_mesh`'s default mesh) with ``jax.make_array_from_process_local_data``.
      Padding then sits at the end of each part: select results with ``valid`` (see
      :func:`unpad`). Requires every process to hold the same number of the mesh's devices,
      its devices consecutive in the mesh.

    Call it outside ``jit``; the global arrays it returns then go into jitted functions."""
    _check_pad(pad)
    if mesh is None:
        n = _batch_length(tree)
        return jax.tree_util.tree_map(to_device, tree), to_device(np.ones(n, bool))
    axis = _check_mesh(mesh)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    if not local:
        if sharding.is_fully_addressable:
            # One process: pad on the device, no host round trip.
            out, n = _padded(jax.tree_util.tree_map(jnp.asarray, tree), mesh.size, pad, jnp)
            valid = jnp.arange(_batch_length(out)) < n
            return jax.device_put((out, valid), sharding)
        host, n = _padded(jax.tree_util.tree_map(_host, tree), mesh.size, pad, np)
        valid = np.arange(_batch_length(host)) < n

        def place(x):
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree_util.tree_map(place, (host, valid))
    return _shard_local(tree, mesh, sharding, pad)


def _shard_local(tree, mesh, sharding, pad):
    me = jax.process_index()
    per_process = {}
    for d in mesh.devices.flat:
        per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
    if me not in per_process:
        raise ValueError(f"shard_batch(local=True): the mesh has no device of process {me}.")
    counts = set(per_process.values())
    if len(counts) != 1:
        raise ValueError(
            "shard_batch(local=True) needs every process to hold the same number of the mesh's "
            f"devices; got {per_process} (process: devices)."
        )
    n_local = _batch_length(tree, "tree (this process's part)")
    if jax.process_count() == 1:
        n_max = n_local
    else:
        from jax.experimental import multihost_utils

        n_max = int(np.max(multihost_utils.process_allgather(np.asarray(n_local, np.int64))))
    per = per_process[me]
    m = -(-n_max // per) * per  # every process's part padded to this common length
    host = jax.tree_util.tree_map(_host, tree)
    extra = m - n_local
    if extra and pad is None:
        raise ValueError(
            f"shard_batch(local=True, pad=None): this process's part has {n_local} entries, "
            f"the common padded length is {m}; pass pad='edge' or pad='zeros'."
        )
    host = jax.tree_util.tree_map(lambda x: _pad_leaf(x, extra, pad, np), host)
    valid = np.arange(m) < n_local
    n_parts = len(per_process)

    def place(x):
        return jax.make_array_from_process_local_data(
            sharding, x, global_shape=(m * n_parts,) + x.shape[1:]
        )

    return jax.tree_util.tree_map(place, (host, valid))


def _normalize_in_axes(in_axes, n_args):
    if in_axes == 0 or in_axes is None:
        return (in_axes,) * n_args
    if not isinstance(in_axes, (tuple, list)) or len(in_axes) != n_args:
        raise ValueError(
            f"in_axes must be 0, None, or a tuple of 0/None with one entry per argument "
            f"({n_args}); got {in_axes!r}."
        )
    if any(a not in (0, None) for a in in_axes):
        raise ValueError(
            f"in_axes entries must be 0 (batched along the leading axis) or None (shared); "
            f"got {in_axes!r}."
        )
    if all(a is None for a in in_axes):
        raise ValueError("in_axes: at least one argument must be batched (0); got all None.")
    return tuple(in_axes)


def _map_chunks(fn, args, in_axes, chunk, vectorized=False):
    """``vmap(fn, in_axes)(*args)``, as ``lax.map`` over chunks of ``chunk`` entries when the
    batch is longer. The batch is padded (copies of its last entry) to a multiple of
    ``chunk`` and the padding dropped from the result, so that ``fn`` is traced once (the
    remainder that ``lax.map(batch_size=…)`` runs separately would trace and compile ``fn`` a
    second time: costly for ODE solves)."""
    batched = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
    n = _batch_length(batched, "the batched arguments")
    vfn = fn if vectorized else jax.vmap(fn, in_axes=in_axes)
    if chunk is None or n <= chunk:
        return vfn(*args)
    batched, _ = pad_batch(batched, chunk, pad="edge")
    k = _batch_length(batched) // chunk
    split = jax.tree_util.tree_map(lambda x: x.reshape((k, chunk) + x.shape[1:]), batched)

    def one_chunk(chunk_args):
        it = iter(chunk_args)
        return vfn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes, strict=True)))

    out = jax.lax.map(one_chunk, split)
    return jax.tree_util.tree_map(lambda x: x.reshape((k * chunk,) + x.shape[2:])[:n], out)


def map_batched(
    fn: Callable,
    *args: Any,
    in_axes: int | None | Sequence[int | None] = 0,
    chunk: int | None = None,
    mesh: Mesh | None = None,
    vectorized: bool = False,
):
    """``fn`` applied to every entry of the batch: ``vmap(fn, in_axes)(*args)``.

    - ``in_axes``: ``0`` (every argument batched along its leading axis), or one ``0``/``None``
      per argument (``None``: shared by all entries, e.g. θ).
    - ``chunk``: ``None`` (one vmapped batch), or at most this many entries at a time: vmapped
      chunks run one after another (``lax.map``). Why: a vmapped ``while_loop`` (an inner
      solver, an adaptive ODE solve) runs in lockstep until its slowest entry finishes, so one
      batch of N costs N × (the most iterations any entry needs), a maximum that grows with N;
      in chunks each waits only for its own slowest entry. It also bounds memory to one chunk.
    - ``mesh``: ``None``, or the 1-D mesh the batched arguments are sharded on
      (:func:`shard_batch`; their length a multiple of the mesh's size): each device maps its
      own block, in chunks of ``chunk``, with ``jax.shard_map``, so that its loops wait for no
      other device; outputs stay sharded along the mesh axis. Shared arguments are
      replicated. Call it inside ``jit`` for a multi-process mesh.

    - ``vectorized=True``: ``fn`` already maps over the leading axis itself (takes batches,
      returns batches, no reduction across entries, e.g. its own ``vmap`` inside); it is then
      called on each chunk (on each device's block) as is, not vmapped.

    Outputs have the batch as their leading axis. Differentiable (reverse mode through
    ``shard_map`` sums a shared argument's cotangent across devices and processes)."""
    in_axes = _normalize_in_axes(in_axes, len(args))
    if chunk is not None:
        chunk = _positive_int(chunk, "chunk")
    if not isinstance(vectorized, bool):
        raise TypeError(f"vectorized must be True or False; got {vectorized!r}.")
    if mesh is None:
        return _map_chunks(fn, args, in_axes, chunk, vectorized)
    axis = _check_mesh(mesh)
    batched = [a for a, ax in zip(args, in_axes, strict=True) if ax == 0]
    n = _batch_length(batched, "the batched arguments")
    if n % mesh.size:
        raise ValueError(
            f"map_batched: a batch of {n} cannot be split evenly over the mesh's {mesh.size} "
            "devices; pad it first with shard_batch (or pad_batch)."
        )
    specs = tuple(PartitionSpec(axis) if ax == 0 else PartitionSpec() for ax in in_axes)
    per_device = jax.shard_map(
        lambda *a: _map_chunks(fn, a, in_axes, chunk, vectorized),
        mesh=mesh,
        in_specs=specs,
        out_specs=PartitionSpec(axis),
        check_vma=False,
    )
    return per_device(*args)


def unpad(tree, n):
    """``tree`` without its padding: ``n`` an int (the original batch length: the first n
    entries, as :func:`shard_batch` with ``local=False`` and :func:`pad_batch` pad at the end)
    or the boolean ``valid`` mask (the entries where it is ``True``: any layout, including
    ``local=True``'s; a concrete mask, outside ``jit``).

    Multi-process results: :func:`gather` them first."""
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return jax.tree_util.tree_map(lambda x: x[: int(n)], tree)
    mask = np.asarray(n)
    if mask.dtype != bool or mask.ndim != 1:
        raise TypeError(
            f"unpad: n must be the original batch length (an int) or a 1-D boolean valid "
            f"mask; got {n!r}."
        )
    return jax.tree_util.tree_map(lambda x: x[mask], tree)


def gather(tree):
    """NumPy copies of every leaf, whole, on every process: arrays spread over several
    processes are all-gathered (``multihost_utils.process_allgather``; every process must
    call this), the others copied to the host."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)
