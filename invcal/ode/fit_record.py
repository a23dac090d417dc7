"""``results.json`` of a population fit: written after every outer iteration, read to resume.

:func:`invcal.ode.fit_population` with ``out=DIR`` holds ``DIR`` for the run
(:func:`invcal.runfolder.claim_run_folder`: a lock, and a folder holding another run or
files no run wrote is refused) and writes ``DIR/results.json`` atomically
(:func:`invcal.outer.record.atomic_write_json`) after every accepted outer iteration: one
:class:`invcal.history.HistoryRow` per iteration (θ, z, objective, gradient norm, elapsed
time) and the compiled loop's whole carry (``state``: the L-BFGS memory, the random effects
η* and their first-order predictor dη*/dz, counters) so that ``resume=True`` continues the
loop where it stopped: the same iterations as an uninterrupted fit.

The compiled loop pauses after every accepted iteration (:func:`invcal.ode.loops._drive`)
and the host writes the row there, from the carry: no host callback inside the program, so
JAX's persistent cache keeps it, and the saved state is the carry bit for bit;
``progress`` is called after the write.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..history import HistoryRow
from ..outer.record import atomic_write_json
from ..runfolder import RESULTS_FILE

__all__: list[str] = []

#: ``results.json``'s ``kind`` for a population fit.
KIND = "fit_population"


def encode_tree(tree) -> list[dict]:
    """The leaves of ``tree`` as JSON: dtype, shape and the flat values (non-finite floats
    as the strings ``"inf"``, ``"-inf"``, ``"nan"``; Python's float repr round-trips)."""
    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        flat = a.ravel().tolist()
        if a.dtype.kind == "f":
            flat = [v if math.isfinite(v) else repr(v) for v in flat]
        out.append({"dtype": a.dtype.name, "shape": list(a.shape), "data": flat})
    return out


def decode_tree(like, leaves: list[dict], where: str):
    """The tree of ``like``'s structure with the leaves saved by :func:`encode_tree`;
    ``ValueError`` naming ``where`` if they do not fit (another problem or devices)."""
    ref, treedef = jax.tree_util.tree_flatten(like)
    if not isinstance(leaves, list) or len(leaves) != len(ref):
        raise ValueError(f"cannot resume from {where}: its saved state does not fit this fit.")
    out = []
    for r, leaf in zip(ref, leaves, strict=True):
        shape = tuple(np.shape(r))
        if tuple(leaf.get("shape", ())) != shape:
            raise ValueError(
                f"cannot resume from {where}: a saved array has shape {leaf.get('shape')}, "
                f"this fit needs {list(shape)} (same data, options and number of devices?)."
            )
        dtype = jnp.asarray(r).dtype
        data = leaf["data"]
        if dtype.kind == "f":
            data = [float(v) for v in data]
        out.append(jnp.asarray(np.asarray(data, dtype=dtype).reshape(shape)))
    return jax.tree_util.tree_unflatten(treedef, out)


class FitRecord:
    """results.json of one fit (see the module docstring)."""

    def __init__(self, out, header: dict, *, resume: bool, progress=None):
        self.path = Path(out) / RESULTS_FILE
        self.progress = progress
        self.t0 = time.perf_counter()
        self.elapsed0 = 0.0
        self.results = {
            "invcal_version": _version(),
            "kind": KIND,
            "problem": header.get("problem", "population"),
            **header,
            "history": [],
            "state": None,
            "finished": False,
            "result": None,
        }
        if resume and self.path.exists():
            self._load_previous(header)

    def _load_previous(self, header):
        try:
            prev = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot resume from {self.path}: {e}") from None
        if prev.get("kind") == "calibration" and isinstance(prev.get("fit_record"), dict):
            prev = prev["fit_record"]  # a finished invcal calibrate run keeps its fit's record
        if prev.get("kind") != KIND:
            raise ValueError(
                f"cannot resume from {self.path}: it holds a {prev.get('kind') or 'tune'!r} "
                "run, not a fit_population one; use another folder or drop resume."
            )
        differ = sorted(k for k in header if prev.get(k) != header[k])
        if differ:
            shown = ", ".join(f"{k}: {prev.get(k)!r} -> {header[k]!r}" for k in differ)
            raise ValueError(
                f"cannot resume from {self.path}: its fit had other settings ({shown}); "
                "resume with the same arguments, or use another folder."
            )
        self.results["history"] = prev.get("history") or []
        self.results["state"] = prev.get("state")
        if self.results["history"]:
            self.elapsed0 = float(self.results["history"][-1].get("elapsed") or 0.0)

    @property
    def saved_state(self) -> dict | None:
        """``{"phase": "lbfgs" | "lindstrom-bates", "leaves": [...]}`` or None."""
        return self.results.get("state")

    def accept(self, space, phase: str, state) -> None:
        """Record the compiled loop's carry ``state`` (device arrays) after an accepted
        iteration of ``phase``."""
        from .loops import _theta_vector

        st = jax.tree_util.tree_map(np.asarray, state)
        theta = np.asarray(_theta_vector(space, jnp.asarray(st["z"])))
        self.add(phase, st, theta, st["g"])

    def add(self, phase, state, theta, grad):
        z = np.asarray(state["z"])
        value = float(np.asarray(state["f"]))
        iteration = int(np.asarray(state["iter"] if "iter" in state else state["k"]))
        g = np.asarray(grad)
        info = state["info"]
        # padding subjects (a sharded fit) are copies of real ones: the maxima are unchanged
        ift = np.asarray(info["ift_residual"])
        row = HistoryRow(
            step=len(self.results["history"]),
            z=z.tolist(),
            theta=dict(zip(self.results["names"], np.asarray(theta).tolist(), strict=True)),
            value=value,
            grad_z=g.tolist(),
            grad_norm=float(np.linalg.norm(g)),
            accepted=True,
            elapsed=self.elapsed0 + time.perf_counter() - self.t0,
            inner_steps=int(np.max(np.asarray(info["inner_steps"]))),
            # the IFT solves (invcal.implicit.solve_system): L-BFGS only; Lindstrom-Bates
            # iterates on the linearized model, with no implicit solve
            linear_residual=float(np.max(ift)) if phase == "lbfgs" else None,
            converged=bool(
                np.all(np.asarray(info["ok"])) and np.all(np.asarray(info["inner_converged"]))
            ),
            extra={"phase": phase, "iteration": iteration},
        )
        self.results["history"].append(row.to_json())
        self.results["state"] = {"phase": phase, "leaves": encode_tree(state)}
        atomic_write_json(self.path, self.results)
        if self.progress is not None:
            self.progress(phase, iteration, value)

    def finish(self, result: dict):
        self.results["finished"] = True
        self.results["result"] = result
        atomic_write_json(self.path, self.results)


def _version() -> str:
    from .._version import __version__

    return __version__


def result_json(fit) -> dict[str, Any]:
    """The summary of a finished fit for results.json."""
    return {
        "theta": {k: float(v) for k, v in fit.theta.items()},
        "objective": float(fit.criterion),
        "loglik": fit.loglik,
        "converged": bool(fit.converged),
        "message": fit.message,
        "algorithm": fit.algorithm,
        "iterations": int(fit.iterations),
        "evaluations": int(fit.evaluations),
    }
