"""How a population fit splits its subjects: over devices (:func:`subject_mesh`, on
:mod:`invcal.batching`) and in chunks."""

from __future__ import annotations

import numpy as np

from .. import batching

__all__ = ["SUBJECT_AXIS", "CHUNK_SIZE", "subject_mesh"]

#: Name of the mesh axis the subjects are split along (see :func:`subject_mesh`).
SUBJECT_AXIS = "subjects"
#: Subjects solved together (vmapped) per chunk on a device (:func:`invcal.batching.map_batched`).
CHUNK_SIZE = 128


def subject_mesh(devices=None):
    """The 1-D ``jax.sharding.Mesh`` (axis ``"subjects"``) that population fits split their
    subjects across, or ``None`` (no sharding) for a single device.

    ``devices``: ``None`` (every device of the default backend, ``jax.devices()``), a
    number k (the first k of them), a sequence of devices, or a Mesh with a ``"subjects"``
    axis. On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=k`` (set before JAX
    starts) splits the host into k devices. (:func:`invcal.batching.device_mesh`.)"""
    mesh = batching.device_mesh(devices, axis=SUBJECT_AXIS)
    return mesh if mesh.size > 1 else None


def _shard_subjects(arrays, eta0, mesh):
    """(arrays, η0, valid): the subject axis padded with copies of the last subject
    (``valid`` False there) to a multiple of the mesh size and, with a mesh, split across it
    (:func:`invcal.batching.shard_batch`; chunks are padded where they are mapped)."""
    (arrays, eta0), valid = batching.shard_batch((arrays, eta0), mesh)
    return arrays, eta0, valid


def _unpad(out, n):
    """Drop the padding subjects from a run's per-subject outputs (NumPy arrays)."""
    out = dict(out)
    out["eta"], out["info"] = batching.unpad((out["eta"], out["info"]), n)
    return out


def _chunk(chunk_size):
    if chunk_size is None:
        return None
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an integer >= 1; got {chunk_size!r}.")
    return int(chunk_size)
