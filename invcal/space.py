"""Hyperparameter spaces: named entries, their shapes, transforms and initial values.

The outer optimizer never sees the user's θ directly. It works on one flat unconstrained
vector ``z``; each entry's transform maps its slice of ``z`` to the user's value
(``Log``: θ = exp(z), ``Softplus``: θ = log(1 + exp(z)), ``Bounded(lo, hi)``:
θ = lo + (hi − lo)·sigmoid(z)). Gradient steps in ``z`` keep positive or bounded
hyperparameters feasible, which is why the outer loop and the finite-difference check work
there.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .compilation_cache import to_device

__all__ = [
    "AbstractTransform",
    "Identity",
    "Log",
    "Softplus",
    "Bounded",
    "Param",
    "Space",
]


class AbstractTransform(eqx.Module):
    """Maps an unconstrained real ``z`` to a hyperparameter value and back."""

    @abc.abstractmethod
    def forward(self, z):
        """Unconstrained ``z`` → user value θ."""

    @abc.abstractmethod
    def inverse(self, theta):
        """User value θ → unconstrained ``z``."""

    def check(self, name: str, value) -> None:
        """Raise ``ValueError`` if ``value`` is outside the transform's domain."""


class Identity(AbstractTransform):
    """θ = z: an unbounded hyperparameter."""

    def forward(self, z):
        return z

    def inverse(self, theta):
        return theta


def _positive_finite(theta):
    info = jnp.finfo(theta.dtype)
    return jnp.clip(theta, info.tiny, info.max)


class Log(AbstractTransform):
    """θ = exp(z): a positive hyperparameter optimized on the log scale."""

    def forward(self, z):
        # exp under- and overflows to 0 and inf for |z| ≳ 709 (float64), 88 (float32): keep
        # θ positive and finite, as Bounded keeps it inside its bounds.
        return _positive_finite(jnp.exp(z))

    def inverse(self, theta):
        return jnp.log(theta)

    def check(self, name, value):
        if np.any(np.asarray(value) <= 0):
            raise ValueError(
                f"hyperparameter {name!r} has transform Log and must be > 0; got {value!r}. "
                "Pass a positive initial value, or use Identity() for a signed parameter."
            )


class Softplus(AbstractTransform):
    """θ = log(1 + exp(z)): positive, linear for large values."""

    def forward(self, z):
        return _positive_finite(jax.nn.softplus(z))

    def inverse(self, theta):
        return theta + jnp.log(-jnp.expm1(-theta))

    def check(self, name, value):
        if np.any(np.asarray(value) <= 0):
            raise ValueError(
                f"hyperparameter {name!r} has transform Softplus and must be > 0; got {value!r}."
            )


class Bounded(AbstractTransform):
    """θ = lo + (hi − lo)·sigmoid(z): a hyperparameter confined to the open interval (lo, hi)."""

    lo: float
    hi: float

    def __check_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(
                f"Bounded(lo, hi) needs finite lo < hi; got lo={self.lo!r}, hi={self.hi!r}."
            )

    def forward(self, z):
        theta = self.lo + (self.hi - self.lo) * jax.nn.sigmoid(z)
        # sigmoid(z) rounds to exactly 0 or 1 for |z| ≳ 37 (float64), which would put θ on a
        # bound that ``check`` rejects; keep it strictly inside (the derivative there is
        # below rounding anyway).
        # (± tiny: XLA flushes the subnormal nextafter(0, 1) to 0.)
        lo, hi = jnp.asarray(self.lo, theta.dtype), jnp.asarray(self.hi, theta.dtype)
        tiny = jnp.finfo(theta.dtype).tiny
        lo_in = jnp.maximum(jnp.nextafter(lo, hi), lo + tiny)
        hi_in = jnp.minimum(jnp.nextafter(hi, lo), hi - tiny)
        return jnp.clip(theta, lo_in, hi_in)

    def inverse(self, theta):
        u = (theta - self.lo) / (self.hi - self.lo)
        return jnp.log(u) - jnp.log1p(-u)

    def check(self, name, value):
        v = np.asarray(value)
        if np.any(v <= self.lo) or np.any(v >= self.hi):
            raise ValueError(
                f"hyperparameter {name!r} must lie strictly inside ({self.lo}, {self.hi}); "
                f"got {value!r}."
            )


class Param(eqx.Module):
    """One named hyperparameter entry: an initial value (its shape is the entry's shape)
    and a transform to the unconstrained space."""

    init: jax.Array
    transform: AbstractTransform = Identity()

    def __init__(self, init, transform: AbstractTransform | None = None):
        arr = np.asarray(init, dtype=float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"Param init must be finite; got {init!r}.")
        self.init = to_device(arr)
        self.transform = Identity() if transform is None else transform
        if not isinstance(self.transform, AbstractTransform):
            raise TypeError(
                f"Param transform must be an invcal transform (Identity(), Log(), Softplus(), "
                f"Bounded(lo, hi)); got {transform!r}."
            )


class Space(eqx.Module):
    """An ordered set of named hyperparameters θ = {name: array}.

    ``space.to_z(theta)`` flattens θ into the unconstrained vector the outer optimizer works
    on; ``space.to_theta(z)`` maps back. Both are differentiable and jit-able.
    """

    # The order is part of the meaning (it is the order of z), so it is kept in a static
    # tuple: a dict field would be flattened and rebuilt in *sorted* key order by every jit,
    # vmap or grad, and to_theta inside a transformation would then assign z's entries to
    # the wrong names whenever the names were not given in sorted order.
    _names: tuple[str, ...] = eqx.field(static=True)
    _params: tuple[Param, ...]

    def __init__(self, params: Mapping[str, Param] | None = None, **kwargs: Param):
        merged = dict(params or {})
        merged.update(kwargs)
        if not merged:
            raise ValueError(
                "Space needs at least one hyperparameter, e.g. Space(lam=Param(1.0, Log()))."
            )
        for name, p in merged.items():
            if not isinstance(p, Param):
                raise TypeError(f"Space entry {name!r} must be a Param; got {type(p).__name__}.")
            p.transform.check(name, p.init)
        self._names = tuple(merged)
        self._params = tuple(merged.values())

    @property
    def params(self) -> dict[str, Param]:
        """``{name: Param}`` in the space's order (the order of z)."""
        return dict(zip(self._names, self._params, strict=True))

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(p.init.shape) for k, p in self.params.items()}

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def init(self) -> dict[str, jax.Array]:
        """The initial θ, in user values."""
        return {k: p.init for k, p in self.params.items()}

    def validate(self, theta: Mapping, *, argument: str = "theta") -> dict[str, jax.Array]:
        """Check names, shapes, finiteness and bounds of a user θ; return it as arrays.

        Only concrete (non-traced) values are checked for finiteness and bounds.
        """
        if not isinstance(theta, Mapping):
            raise TypeError(
                f"{argument} must be a dict {{name: value}} with names {list(self.names)}; "
                f"got {type(theta).__name__}."
            )
        unknown = set(theta) - set(self.names)
        missing = set(self.names) - set(theta)
        if unknown or missing:
            raise ValueError(
                f"{argument} has names {sorted(theta)}, expected {list(self.names)}"
                + (f"; unknown: {sorted(unknown)}" if unknown else "")
                + (f"; missing: {sorted(missing)}" if missing else "")
                + "."
            )
        out = {}
        for name, p in self.params.items():
            v = theta[name]
            try:
                if isinstance(v, (str, bytes)) or (
                    not isinstance(v, jax.Array) and np.asarray(v).dtype.kind not in "biuf"
                ):
                    raise TypeError  # JAX would parse "1" as a number: refuse text
                arr = jnp.asarray(v, dtype=p.init.dtype)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{argument}[{name!r}] must be a number (or an array of numbers of shape "
                    f"{p.init.shape}); got {v!r}."
                ) from None
            if arr.shape != p.init.shape:
                raise ValueError(
                    f"{argument}[{name!r}] has shape {arr.shape}, expected {p.init.shape}."
                )
            if not isinstance(arr, jax.core.Tracer):
                if not np.all(np.isfinite(np.asarray(arr))):
                    raise ValueError(f"{argument}[{name!r}] contains NaN or inf: {v!r}.")
                p.transform.check(name, arr)
            out[name] = arr
        return out

    def to_z(self, theta: Mapping) -> jax.Array:
        """User θ → flat unconstrained vector z."""
        if not isinstance(theta, Mapping) or set(theta) != set(self.names):
            raise ValueError(
                f"theta must be a dict with names {list(self.names)}; got "
                f"{sorted(theta) if isinstance(theta, Mapping) else type(theta).__name__}."
            )
        for k, p in self.params.items():
            if not isinstance(theta[k], jax.core.Tracer):
                p.transform.check(k, theta[k])  # e.g. log of a negative value: say so
        return _to_z(self, tuple(to_device(theta[k]) for k in self.params))

    def to_theta(self, z: jax.Array) -> dict[str, jax.Array]:
        """Flat unconstrained vector z → user θ."""
        z = to_device(z)
        if z.shape != (self.size,):
            raise ValueError(f"z must have shape ({self.size},); got {z.shape}.")
        # the compiled function returns a tuple: a dict would come back with sorted keys
        return dict(zip(self.params, _to_theta(self, z), strict=True))

    def _unflatten(self, z: jax.Array) -> dict[str, jax.Array]:
        out, i = {}, 0
        for k, p in self.params.items():
            n = int(np.prod(p.init.shape))
            out[k] = p.transform.forward(z[i : i + n].reshape(p.init.shape))
            i += n
        return out

    def grad_to_z(self, theta: Mapping, grad_theta: Mapping) -> jax.Array:
        """dE/dθ (a dict like θ) → dE/dz, the gradient the outer optimizer sees, by the
        chain rule through the transforms at θ."""
        return _grad_to_z(self, self.to_z(theta), dict(grad_theta))

    def flat_names(self) -> list[str]:
        """One label per entry of z: ``name`` for scalars, ``name[i]`` for arrays."""
        labels = []
        for k, p in self.params.items():
            n = int(np.prod(p.init.shape))
            labels.extend([k] if p.init.shape == () else [f"{k}[{i}]" for i in range(n)])
        return labels


# Compiled once per space structure: an outer step calls these on concrete arrays, where
# JAX's op-by-op dispatch (and a fresh vjp trace) cost ~10 ms per call, as much as a
# small problem's whole hypergradient (BilevelLassoCV on diabetes: half of its warm fit).
@eqx.filter_jit
def _to_z(space: Space, values):
    params = space.params.values()
    return jnp.concatenate(
        [jnp.ravel(p.transform.inverse(v)) for p, v in zip(params, values, strict=True)]
    )


@eqx.filter_jit
def _to_theta(space: Space, z):
    return tuple(space._unflatten(z).values())


@eqx.filter_jit
def _grad_to_z(space: Space, z, grad_theta):
    _, vjp = jax.vjp(space._unflatten, z)
    return vjp(grad_theta)[0]
