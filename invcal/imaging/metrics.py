r"""Image quality against a reference: mean squared error and PSNR.

    MSE(u, u₀) = (1/N) Σᵢ (uᵢ − u₀ᵢ)²,      PSNR(u, u₀) = 10 log₁₀(R² / MSE(u, u₀))  [dB]

with R the data range of the reference (1 for images in [0, 1], the convention of
:mod:`invcal.imaging.data` and the default here, as in ``skimage.metrics``' float images).
Both are differentiable and batch over leading axes (the last two axes are the image).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["mse", "psnr"]


def mse(u, reference):
    """Mean squared error over the last two (image) axes; leading axes are kept."""
    u, reference = jnp.asarray(u), jnp.asarray(reference)
    if u.shape != reference.shape:
        raise ValueError(f"mse: shapes differ: {u.shape} vs reference {reference.shape}.")
    if u.ndim < 2:
        raise ValueError(f"mse: expected images (..., H, W); got shape {u.shape}.")
    return jnp.mean((u - reference) ** 2, axis=(-2, -1))


def psnr(u, reference, *, data_range: float = 1.0):
    """Peak signal-to-noise ratio 10 log₁₀(R²/MSE) in dB over the last two axes, with R =
    ``data_range`` (default 1: images in [0, 1])."""
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0; got {data_range!r}.")
    return 10.0 * jnp.log10(data_range**2 / mse(u, reference))
