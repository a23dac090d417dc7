"""The run record: history rows, ``results.json`` (strict JSON, written atomically after
every step), the checks of a saved run before it is resumed, and :class:`TuneResult`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..history import HistoryRow
from ..runfolder import RESULTS_FILE, claim_run_folder

__all__ = ["TuneResult", "atomic_write_json"]


def _to_json(v):
    a = np.asarray(v)
    return a.item() if a.shape == () else a.tolist()


def _theta_json(theta) -> dict:
    return {k: _to_json(v) for k, v in theta.items()}


def _space_json(space) -> dict:
    return {
        k: {"shape": list(p.init.shape), "transform": repr(p.transform)}
        for k, p in space.params.items()
    }


def _strict_json(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``, so a
    reader (or a resumed run) never sees half a file; the temporary file is removed if the
    write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            # strict JSON (readers such as JavaScript's or jq reject NaN/Infinity tokens): a
            # non-finite number is written as null, which NumPy reads back as NaN.
            json.dump(_strict_json(obj), f, indent=1, allow_nan=False)
        # mkstemp creates the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class TuneResult:
    """Outcome of :func:`tune` / :func:`grid_search` / :func:`random_search`.

    ``theta`` is the best evaluated θ (lowest criterion; for gradient methods usually the
    last), ``value`` its criterion, ``x`` the inner solution at the last evaluation,
    ``history`` the rows, ``results`` the whole results.json content.
    """

    theta: dict
    z: np.ndarray
    value: float
    x: Any
    history: list[dict]
    results: dict
    hypergradient: Any = None
    path: Path | None = None
    evaluations: int = field(default=0)

    @property
    def rows(self) -> list[HistoryRow]:
        """The history as typed rows."""
        return [HistoryRow.from_json(r) for r in self.history]


def _is_number(v, none_ok=False) -> bool:
    if v is None:
        return none_ok
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_saved_run(prev, path, size: int, optimizer: str, check_state=None) -> None:
    """The whole saved run, checked before any work: one line naming the first field that
    is not what a run writes (a hand-edited or damaged file must not splice a wrong state
    into the history, or fail after compilation). ``check_state(state, bad, z_list)`` checks
    the outer solver's saved state (its ``check_json``)."""

    def bad(field, value, expected):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(
            f"cannot resume from {path}: {field} is {shown}, expected {expected}. Restore or "
            "delete the file, or use another --out directory."
        )

    def z_list(field, v):
        if not (isinstance(v, list) and len(v) == size and all(_is_number(x) for x in v)):
            bad(field, v, f"a list of {size} numbers")

    if not isinstance(prev, dict):
        bad("the file", prev, "a JSON object")
    history = prev.get("history")
    if not isinstance(history, list):
        bad("history", history, "a list of rows")
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            bad(f"history[{i}]", row, "an object")
        if row.get("step") != i:
            bad(f"history[{i}].step", row.get("step"), str(i))
        z_list(f"history[{i}].z", row.get("z"))
        if not _is_number(row.get("value"), none_ok=True):
            bad(f"history[{i}].value", row.get("value"), "a number (or null)")
        if not isinstance(row.get("theta"), dict):
            bad(f"history[{i}].theta", row.get("theta"), "an object {name: value}")
    best = prev.get("best")
    if best is not None:
        if not isinstance(best, dict):
            bad("best", best, "an object (or null)")
        if not _is_number(best.get("value")):
            bad("best.value", best.get("value"), "a number")
        z_list("best.z", best.get("z"))
        if not isinstance(best.get("theta"), dict):
            bad("best.theta", best.get("theta"), "an object {name: value}")
    if check_state is None or not history:
        return
    state = prev.get("state")
    if not isinstance(state, dict):
        bad("state", state, f"the {optimizer} state of the last step (an object)")
    check_state(state, bad, z_list)


class _Recorder:
    """Accumulates rows and writes results.json after each one."""

    def __init__(
        self,
        problem,
        *,
        method,
        optimizer_name,
        learning_rate,
        steps,
        out,
        resume,
        meta,
        check_state=None,
    ):
        self.check_state = check_state
        self.problem = problem
        self.path = None if out is None else Path(out) / RESULTS_FILE
        self.t0 = time.perf_counter()
        self.results = {
            "invcal_version": _version(),
            "problem": problem.name,
            "method": method,
            "optimizer": optimizer_name,
            "learning_rate": learning_rate,
            "steps_requested": steps,
            "names": problem.space.flat_names(),
            "space": _space_json(problem.space),
            "history": [],
            "finished": False,
            "best": None,
            "landscape": None,
            "state": None,
            "extra": {},
        }
        self.results.update(meta or {})
        self.elapsed0 = 0.0
        if resume and self.path is not None and self.path.exists():
            self._load_previous()

    def _load_previous(self):
        try:
            prev = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot resume from {self.path}: {e}") from None
        # Everything that shapes the history must match (steps_requested may grow).
        old_opts, new_opts = prev.get("options") or {}, self.results.get("options") or {}
        if old_opts != new_opts:
            differ = sorted(
                k for k in set(old_opts) | set(new_opts) if old_opts.get(k) != new_opts.get(k)
            )
            shown = ", ".join(
                f"{k}: {old_opts.get(k, '(default)')!r} -> {new_opts.get(k, '(default)')!r}"
                for k in differ
            )
            raise ValueError(
                f"cannot resume from {self.path}: its run had other problem options ({shown}); "
                "resume with the same -o options, or use another --out directory."
            )
        for key in ("problem", "names", "space", "optimizer", "method", "learning_rate"):
            if prev.get(key) != self.results.get(key):
                raise ValueError(
                    f"cannot resume from {self.path}: it holds a run with {key}="
                    f"{prev.get(key)!r}, this run has {key}={self.results.get(key)!r}. "
                    "Use another --out directory, or drop --resume to start over."
                )
        _check_saved_run(
            prev, self.path, self.problem.space.size, self.results["optimizer"], self.check_state
        )
        self.results["history"] = prev.get("history", [])
        self.results["state"] = prev.get("state")
        self.results["best"] = prev.get("best")
        if self.results["history"]:
            self.elapsed0 = float(self.results["history"][-1].get("elapsed", 0.0))

    @property
    def history(self) -> list[dict]:
        return self.results["history"]

    @property
    def resumed_state(self):
        return self.results.get("state")

    def add(
        self, *, z, theta, value, grad_z_=None, diag=None, accepted=True, wall, state=None, **extra
    ) -> HistoryRow:
        """Record one evaluation (and the outer solver's ``state`` after it), write
        results.json, and return the row."""
        fields = {}
        if diag is not None:
            d = diag.as_dict()
            fields.update(
                inner_steps=d["inner_steps"],
                inner_residual=d["inner_residual"],
                linear_steps=d["linear_steps"],
                linear_residual=d["linear_residual"],
                converged=d["inner_converged"] and d["linear_converged"] and d["finite"],
            )
        common = set(HistoryRow.__dataclass_fields__) - {"extra"}
        fields.update({k: v for k, v in extra.items() if k in common})
        row = HistoryRow(
            step=len(self.history),
            z=_to_json(z),
            theta=_theta_json(theta),
            value=float(value),
            grad_norm=None if grad_z_ is None else float(np.linalg.norm(np.asarray(grad_z_))),
            grad_z=None if grad_z_ is None else _to_json(grad_z_),
            accepted=bool(accepted),
            wall_time=wall,
            elapsed=self.elapsed0 + time.perf_counter() - self.t0,
            extra={k: v for k, v in extra.items() if k not in common},
            **fields,
        )
        self.history.append(row.to_json())
        best = self.results["best"]
        # The best point is one whose solves converged, where there is one: an unconverged
        # trial (recorded under on_failure='record', or rejected by Barzilai–Borwein) can
        # read lower than it is. RTHO's rows before its full horizon are all approximate.
        ok = row.converged is not False
        best_ok = best is None or best.get("converged", True)
        if math.isfinite(row.value) and (
            best is None or (ok and not best_ok) or (ok == best_ok and row.value < best["value"])
        ):
            self.results["best"] = {
                "step": row.step,
                "theta": row.theta,
                "value": row.value,
                "z": row.z,
                "converged": ok,
            }
        self.results["state"] = state
        self.write()
        return row

    def write(self):
        if self.path is not None:
            atomic_write_json(self.path, self.results)

    def finish(self, x=None, hg=None) -> TuneResult:
        self.results["finished"] = True
        self.write()
        best = self.results["best"]
        if best is None:
            raise RuntimeError("no finite criterion value was evaluated; nothing to report.")
        return TuneResult(
            theta={k: np.asarray(v) for k, v in best["theta"].items()},
            z=np.asarray(best["z"]),
            value=best["value"],
            x=x,
            history=self.history,
            results=self.results,
            hypergradient=hg,
            path=self.path,
            evaluations=len(self.history),
        )


def _run_folder(out, resume: bool):
    """The folder lock of a run (one run at a time per folder, for the whole run), or
    nothing without ``out``."""
    if out is None:
        return contextlib.nullcontext()
    return claim_run_folder(out, resume=resume, flag="out")


def _check_run(steps, learning_rate) -> None:
    """The arguments every outer loop takes, checked before any work."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if not (
        isinstance(learning_rate, (int, float))
        and math.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise ValueError(f"learning_rate must be a positive finite number; got {learning_rate!r}.")


def _warm_start(problem, x):
    """Where the next inner solve starts: the last solution, except for a solution defined
    by a fixed number of steps from ``problem.x0`` (warm-starting would change its meaning)."""
    return problem.x0 if problem.fixed_steps else x


def _version() -> str:
    from .._version import __version__

    return __version__


def _tree_to_json(tree):
    leaves, _ = jax.tree_util.tree_flatten(tree)
    return [_to_json(leaf) for leaf in leaves]


def _tree_from_json(like, leaves):
    ref, treedef = jax.tree_util.tree_flatten(like)
    if len(ref) != len(leaves):
        raise ValueError("saved optimizer state does not match this optimizer; drop --resume.")
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jnp.asarray(v, dtype=jnp.asarray(r).dtype).reshape(jnp.shape(r))
            for r, v in zip(ref, leaves, strict=True)
        ],
    )
