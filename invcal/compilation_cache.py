"""JAX's persistent compilation cache, on by default.

A first call of each problem shape compiles it (seconds); JAX can keep the compiled
programs on disk so that the next process loads them instead. ``import invcal`` turns that
cache on in a per-user folder unless the user chose otherwise:

- ``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config.update("jax_compilation_cache_dir", ...)``
  before ``import invcal``): that folder is used, as JAX itself would.
- ``INVCAL_COMPILATION_CACHE=0`` (or ``off``/``false``/``no``): invcal leaves the cache off.
- otherwise: ``$XDG_CACHE_HOME/invcal/jax`` (``~/.cache/invcal/jax``).

invcal also lowers JAX's threshold for caching a program
(``jax_persistent_cache_min_compile_time_secs``, 1 s by default) to 0, unless that option was
set through its environment variable: a fit is one large program and dozens of small ones
(its setup's array operations, each compiled in 5–100 ms), and a fresh process loads each
small one from the cache faster than it compiles it. Theoph ``fit_population`` in a fresh
process with a filled cache: 5.25–5.34 s → 4.49–4.58 s (48 programs loaded instead of 7;
one core). The cache is JAX's own; it is keyed by the program, the
JAX version and the device, so a stale entry is never used.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import numpy as np

__all__ = ["cache_dir", "checks_without_callbacks", "enable_default_cache", "to_device"]

_OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.0


def _default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "invcal" / "jax"


def cache_dir() -> str | None:
    """The folder JAX's persistent compilation cache writes to, or None when it is off."""
    return jax.config.jax_compilation_cache_dir or None


def enable_default_cache() -> str | None:
    """Turn the persistent cache on as the module docstring says; returns its folder (None:
    left off). Called once by ``import invcal``; a folder that cannot be made leaves the
    cache off (never an error at import)."""
    if os.environ.get("INVCAL_COMPILATION_CACHE", "").strip().lower() in _OFF:
        return cache_dir()
    if cache_dir() is None:  # else JAX_COMPILATION_CACHE_DIR or the user's own setting
        path = _default_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if not os.access(path, os.W_OK):
            return None
        jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return cache_dir()


@contextlib.contextmanager
def checks_without_callbacks():
    """Inside this block equinox lowers its runtime checks (``eqx.error_if``; diffrax uses
    them to check ``SaveAt(ts=...)`` inside every ODE solve) as NaN in the checked value
    rather than as a host callback that raises. JAX's persistent cache refuses programs with
    host callbacks, so without this a population fit, the largest program invcal compiles,
    would compile again in every process. The caller must treat a non-finite result as the
    failure (the population fits do: they raise naming the subjects). Applies to programs
    traced inside the block; it changes equinox's module-level default for the block only."""
    try:
        from equinox import _errors
    except ImportError:  # a future equinox: keep its behaviour, lose only the caching
        yield
        return
    previous = getattr(_errors, "EQX_ON_ERROR", None)
    if previous != "raise":  # the user chose another mode (EQX_ON_ERROR): respect it
        yield
        return
    _errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        _errors.EQX_ON_ERROR = previous


def to_device(x, dtype=None) -> jax.Array:
    """``x`` as a JAX array, compiling nothing: a JAX array (or a tracer) of the right dtype
    is returned as is, anything else goes through NumPy (in JAX's canonical dtype: float32
    with ``jax_enable_x64`` off) and ``jax.device_put``, which transfers without a program.
    ``jnp.asarray`` of a NumPy array compiles a small conversion program for each shape and
    dtype, and ``jnp.zeros`` two; in a fresh process each costs 10–20 ms even when loaded
    from the persistent cache (a fresh Theoph ``fit_population`` ran 46 such programs beside
    its one compiled loop)."""
    if isinstance(x, jax.core.Tracer):
        return jax.numpy.asarray(x, dtype=dtype)
    if isinstance(x, jax.Array) and (dtype is None or x.dtype == np.dtype(dtype)):
        return x
    a = np.asarray(x, dtype=dtype)
    canonical = jax.dtypes.canonicalize_dtype(a.dtype)
    return jax.device_put(a if a.dtype == canonical else a.astype(canonical))
