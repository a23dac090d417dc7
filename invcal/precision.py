r"""The dtype policy: which precision each public entry point computes in.

JAX computes in float32 unless the process turned ``jax_enable_x64`` on, and most users
never do. invcal's entry points therefore fall in two groups:

- **float64 whatever the global flag** (:func:`computes_in_float64`): the scikit-learn
  estimators (:mod:`invcal.sklearn`), the population ODE fits (:mod:`invcal.ode`),
  :func:`invcal.check_hypergradient` and the command line. Their tolerances (duality gaps of
  1e-12, FOCEI's second derivatives, central finite differences) need float64. The switch is
  scoped: ``jax.enable_x64(True)`` around the call, so the caller's configuration is left
  as it was; results come back as NumPy arrays or Python floats, or as JAX float64 arrays
  where the docstring says so.
- **the caller's precision**: the engine (:func:`invcal.solve`, :func:`invcal.hypergradient`,
  :func:`invcal.tune`) and imaging (:func:`invcal.imaging.denoise_tv`, the elastic-net
  problems) compute in the dtype of the arrays they are given. Their default tolerances are
  derived from that dtype (:func:`default_tol`), and a solve that stops short in float32
  says that float32 may be the cause (:func:`float32_hint`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "computes_in_float64",
    "to_float64",
    "default_tol",
    "default_linear_rtol",
    "is_single",
    "float_dtype",
    "float32_hint",
]

# The default tolerances in float64: absolute for inner residuals, relative for the
# implicit linear solves.
TOL_FLOAT64 = 1e-10
# In a lower precision an absolute residual stalls near (a few hundred) × eps × the scale
# of the terms; 1e-5 suits problems whose terms are O(1) to O(100) (the residual of the
# README's ridge example stalls at 7e-8 in float32).
TOL_FLOAT32 = 1e-5


def computes_in_float64(fn):
    """Run ``fn`` with JAX's 64-bit mode on (``jax.enable_x64(True)``), whatever the global
    flag, and leave the caller's configuration as it was. Compiled programs are cached per
    mode, so a float64 entry point called from a float32 session compiles once, as usual."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def to_float64(tree):
    """``tree`` with its floating (JAX or NumPy) array leaves in float64 (complex128);
    other leaves unchanged. Call it with 64-bit mode on, or JAX truncates them again."""

    def promote(a):
        if isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(a.dtype, jnp.inexact):
            kind = jnp.complex128 if jnp.issubdtype(a.dtype, jnp.complexfloating) else jnp.float64
            return jnp.asarray(a, kind) if isinstance(a, jax.Array) else np.asarray(a, kind)
        return a

    return jax.tree_util.tree_map(promote, tree)


def float_dtype(tree) -> np.dtype:
    """The widest floating dtype among the array leaves of ``tree``, as JAX will compute in
    it now (JAX's default float dtype when it has none)."""
    dtypes = [
        jnp.result_type(leaf)
        for leaf in jax.tree_util.tree_leaves(tree)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not dtypes:
        return np.dtype(jnp.result_type(float))
    # canonicalize: NumPy float64 data compute in float32 when 64-bit mode is off
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.result_type(*dtypes)))


def is_single(dtype) -> bool:
    """True for float32 and narrower (and their complex kinds)."""
    return np.finfo(dtype).bits <= 32


def default_tol(dtype) -> float:
    """The default absolute residual tolerance of the inner solvers in ``dtype``."""
    return TOL_FLOAT32 if is_single(dtype) else TOL_FLOAT64


def default_linear_rtol(dtype) -> float:
    """The default relative tolerance of the implicit linear solves in ``dtype``:
    1e-10 in float64, 100·eps (1.2e-5) in float32."""
    return max(TOL_FLOAT64, 100.0 * float(np.finfo(dtype).eps))


def float32_hint(dtype) -> str:
    """A clause naming single precision as the likely cause of a solve that stopped short
    (empty for float64)."""
    if dtype is None or not is_single(dtype):
        return ""
    return (
        f"; the arrays are {np.dtype(dtype).name} (eps {float(np.finfo(dtype).eps):.2g}): a "
        "residual that stalls there is float32's floor, not a lack of steps, so loosen the "
        "tolerance or compute in float64 (jax.config.update('jax_enable_x64', True) at "
        "start-up, or the call and the problem's arrays inside `with jax.enable_x64(True):`)"
    )
