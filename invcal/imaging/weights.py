r"""How the TV hyperparameter θ becomes the weights w of TV_w (see :mod:`invcal.imaging.tv`).

* :class:`ScalarWeight` — one weight, w = θ > 0 (the classical ROF model).
* :class:`DirectionalWeights` — θ = (w_vertical, w_horizontal): w_{c,i} = θ_c, one weight per
  difference direction (anisotropic TV only).
* :class:`BlockWeights` — θ ∈ ℝ^{R×C}: a coarse grid of weights, each applied to the pixels
  of its block (nearest-neighbour upsampling, w_i = θ_{⌊rR/H⌋, ⌊cC/W⌋} for pixel i = (r, c)).
  With 8×8 blocks that is 64 hyperparameters: out of reach for grid search, one adjoint
  solve for a hypergradient.

Each layout turns θ into w with :meth:`expand` (differentiable) and gives the
:class:`invcal.Param` of its initial value on the log scale (weights stay positive).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..space import Log, Param

__all__ = ["AbstractWeightLayout", "ScalarWeight", "DirectionalWeights", "BlockWeights"]


def _positive(name, value):
    v = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be > 0 (a TV weight); got {value!r}.")
    return v


class AbstractWeightLayout(eqx.Module):
    """A map from the hyperparameter θ to TV weights w."""

    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The shape of θ."""

    @abc.abstractmethod
    def expand(self, theta, image_shape):
        """w from θ, broadcastable against the (2, H, W) gradient."""

    def param(self, init) -> Param:
        """The Param (log scale) with initial value ``init`` (a scalar fills every entry)."""
        v = _positive("the initial TV weight", init)
        if v.shape == ():
            v = np.full(self.shape(), float(v))
        if v.shape != self.shape():
            raise ValueError(
                f"initial TV weight has shape {v.shape}; {type(self).__name__} needs "
                f"{self.shape()} (or a scalar)."
            )
        return Param(v, Log())

    def check_norm(self, norm) -> None:
        """Raise if the layout does not fit the TV norm."""


class ScalarWeight(AbstractWeightLayout):
    """One TV weight for the whole image."""

    def shape(self):
        return ()

    def expand(self, theta, image_shape):
        return jnp.asarray(theta)


class DirectionalWeights(AbstractWeightLayout):
    """Separate weights for vertical (θ₀) and horizontal (θ₁) differences."""

    def shape(self):
        return (2,)

    def expand(self, theta, image_shape):
        return jnp.reshape(jnp.asarray(theta), (2, 1, 1))

    def check_norm(self, norm):
        from .tv import Anisotropic

        if not isinstance(norm, Anisotropic):
            raise ValueError(
                "DirectionalWeights (separate vertical/horizontal weights) need anisotropic TV: "
                "pass SplitBregman(norm=Anisotropic(), ...)."
            )


class BlockWeights(AbstractWeightLayout):
    """A ``rows``×``cols`` grid of weights, piecewise constant over image blocks."""

    rows: int = eqx.field(default=8, static=True)
    cols: int = eqx.field(default=8, static=True)

    def __check_init__(self):
        if int(self.rows) < 1 or int(self.cols) < 1:
            raise ValueError(
                f"BlockWeights needs rows, cols >= 1; got ({self.rows!r}, {self.cols!r})."
            )

    def shape(self):
        return (int(self.rows), int(self.cols))

    def indices(self, image_shape):
        h, w = image_shape
        if h < self.rows or w < self.cols:
            raise ValueError(
                f"BlockWeights({self.rows}, {self.cols}) needs an image at least that large; "
                f"got {image_shape}."
            )
        return (np.arange(h) * self.rows) // h, (np.arange(w) * self.cols) // w

    def expand(self, theta, image_shape):
        ri, ci = self.indices(image_shape)
        return jnp.asarray(theta)[ri[:, None], ci[None, :]]
