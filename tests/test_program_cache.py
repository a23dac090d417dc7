"""invcal.program_cache: traced programs kept on disk under a fingerprint of everything the
trace depends on, and a plain jit wherever the fingerprint cannot be certain."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from invcal import program_cache  # noqa: E402
from invcal.program_cache import Unkeyable, cached, fingerprint  # noqa: E402

SOURCE = """
import jax.numpy as jnp
K = {k}
W = {w}

def helper(x):
    return x * {h}

def make(scale):
    def rhs(x, n=2):
        return helper(x) * K + scale * jnp.sum(W) ** n
    return rhs
"""


def user_function(k=2.0, w="np.ones(3)", h=1.0, scale=0.5):
    """A function as a user's own module would define it (not importable by name, so it is
    fingerprinted by its code, its closure and the globals it reads)."""
    namespace = {"__name__": "a_users_module", "np": np}
    exec(SOURCE.format(k=k, w=w, h=h), namespace)
    return namespace["make"](scale)


def test_the_fingerprint_follows_the_code_and_what_it_reads():
    x = (jnp.ones(3),)
    base = fingerprint(user_function(), x)
    assert fingerprint(user_function(), x) == base  # same code, another function object
    changed = {
        "a global number": user_function(k=3.0),
        "a global array": user_function(w="np.arange(3.0)"),
        "a helper's code": user_function(h=2.0),
        "a closure value": user_function(scale=0.25),
    }
    for what, fn in changed.items():
        assert fingerprint(fn, x) != base, what
    assert fingerprint(user_function(), (jnp.ones(4),)) != base  # another shape
    assert fingerprint(user_function(), (jnp.ones(3, jnp.int32),)) != base  # another dtype
    assert fingerprint(user_function(), (np.ones(3), 2.0)) != fingerprint(
        user_function(), (np.ones(3), 3.0)
    )  # a static value


class _Stateful:
    def __init__(self, v):
        self.v = v


def test_what_it_cannot_name_goes_through_jit(tmp_path, monkeypatch):
    with pytest.raises(Unkeyable):
        fingerprint(lambda x, s: x * s.v, (jnp.ones(2), _Stateful(2.0)))
    monkeypatch.setattr(program_cache, "_folder", lambda: tmp_path)
    f = cached(lambda x, s: x * s.v)
    assert np.allclose(f(jnp.ones(2), _Stateful(2.0)), 2.0)
    assert np.allclose(f(jnp.ones(2), _Stateful(3.0)), 3.0)  # not a stale program
    assert not list(tmp_path.iterdir())


def _program(x, n, table):
    return jnp.sin(x) * n + table["a"]


def test_a_kept_program_is_loaded_and_gives_the_same_result(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "_folder", lambda: tmp_path)
    x, table = jnp.linspace(0.0, 1.0, 5), {"a": jnp.asarray(0.5)}
    first = cached(_program)(x, 3, table)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("_program-"), files
    fresh = cached(_program)  # what a new process holds: nothing in memory
    fresh.jitted = None  # so a call that did not load the file would fail here
    again = fresh(x, 3, table)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    jitted = eqx.filter_jit(_program)(x, 3, table)  # the same program without the cache
    np.testing.assert_array_equal(np.asarray(first), np.asarray(jitted))
    cached(_program)(x, 4, table)  # another static value: another program
    assert len(list(tmp_path.iterdir())) == 2


def test_the_folder_keeps_the_most_recently_used_programs(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(program_cache, "_folder", lambda: tmp_path)
    monkeypatch.setattr(program_cache, "KEEP_PER_FUNCTION", 3)
    old = []
    for i in range(5):  # programs of earlier versions, oldest first
        f = tmp_path / f"_program-old{i}.jax"
        f.write_bytes(b"")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        old.append(f)
    other = tmp_path / "_another-old.jax"
    other.write_bytes(b"")
    os.utime(other, (1, 1))
    x, table = jnp.linspace(0.0, 1.0, 5), {"a": jnp.asarray(0.5)}
    cached(_program)(x, 3, table)  # writes a new program, then prunes _program's files
    kept = sorted(p.name for p in tmp_path.glob("_program-*.jax"))
    assert len(kept) == 3 and "_program-old4.jax" in kept and "_program-old3.jax" in kept
    assert not old[0].exists() and not old[2].exists()
    assert other.exists()  # another function's programs are not touched
    # a load marks a program used: it outlives older ones at the next pruning
    new = next(p for p in tmp_path.glob("_program-*.jax") if "old" not in p.name)
    os.utime(new, (1, 1))
    fresh = cached(_program)
    fresh.jitted = None
    fresh(x, 3, table)  # loaded from the file
    assert new.stat().st_mtime > 1_000_004


def _with_callback(x):
    y = jax.pure_callback(np.cos, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y + 1.0


def test_a_program_that_cannot_be_exported_runs_under_jit_and_is_tried_once(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "_folder", lambda: tmp_path)
    tries = []
    export = program_cache._Cached._export

    def counted(self, *args):
        tries.append(1)
        return export(self, *args)

    monkeypatch.setattr(program_cache._Cached, "_export", counted)
    f = cached(_with_callback)
    x = jnp.linspace(0.0, 1.0, 4)
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(f(x)), np.cos(np.asarray(x)) + 1.0)
    assert len(tries) == 1
    assert not list(tmp_path.iterdir())


def test_switched_off_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "cache_dir", lambda: str(tmp_path))
    monkeypatch.setenv("INVCAL_PROGRAM_CACHE", "0")
    assert program_cache._folder() is None
    monkeypatch.setenv("INVCAL_PROGRAM_CACHE", "1")
    assert program_cache._folder() == tmp_path / "invcal-programs"


FIT = r"""
import sys
from invcal import ode, program_cache
from problems.hierarchical_ode import INIT, load_theoph, theophylline_model

if sys.argv[1] == "load":  # this process must find the traced fit on disk
    def refuse(*args, **kwargs):
        raise AssertionError("traced again")
    program_cache._Cached._export = refuse
fit = ode.fit_population(theophylline_model(), load_theoph(), init=INIT)
print("LOGLIK", repr(float(fit.loglik)), fit.iterations)
"""


@pytest.mark.slow
def test_a_fresh_process_loads_the_traced_population_fit(tmp_path):
    """Theoph in two fresh processes on one cache folder: the first keeps the traced
    Lindstrom-Bates loop, the second loads it (exporting is refused there) and gives the
    same log-likelihood and iterations, bit for bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "cache")
    out = []
    for mode in ("keep", "load"):
        proc = subprocess.run(
            [sys.executable, "-c", FIT, mode], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append([line for line in proc.stdout.splitlines() if line.startswith("LOGLIK")])
    programs = sorted(p.name for p in (tmp_path / "cache" / "invcal-programs").iterdir())
    assert len(programs) == 1 and programs[0].startswith("_lb_steps-"), programs
    assert out[0] == out[1] and out[0], out
