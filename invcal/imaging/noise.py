r"""Estimating the standard deviation of additive white Gaussian noise in an image.

The robust wavelet estimator of Donoho & Johnstone (1994, "Ideal spatial adaptation by wavelet
shrinkage", Biometrika 81(3)): in the finest diagonal detail band HH of an orthonormal wavelet
transform, natural images are sparse and the noise keeps its variance σ², so

    σ̂ = median(|HH|) / Φ⁻¹(3/4),      Φ⁻¹(3/4) ≈ 0.6745,

the median absolute deviation of a normal variable. Daubechies' 4-tap filter (db2) with
periodic boundaries, as scikit-image's ``estimate_sigma`` does (that one needs PyWavelets,
which invcal does not depend on). Measured on the eight test images (256×256): σ̂/σ between
1.006 and 1.072 at σ = 0.05 (texture leaks into HH: coffee, astronaut, camera), within 1.3%
at σ = 0.2.
"""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_sigma"]

_S3 = np.sqrt(3.0)
_LOW = np.array([1 + _S3, 3 + _S3, 3 - _S3, 1 - _S3]) / (4 * np.sqrt(2.0))
_HIGH = _LOW[::-1] * np.array([1.0, -1.0, 1.0, -1.0])
_MAD = 0.6744897501960817  # Φ⁻¹(3/4)


def _high_pass(x, axis):
    # periodic convolution with the db2 high-pass filter, then keep every other sample
    out = sum(c * np.roll(x, -k, axis=axis) for k, c in enumerate(_HIGH))
    return np.take(out, np.arange(0, x.shape[axis], 2), axis=axis)


def estimate_sigma(image) -> float:
    """σ̂ of additive white Gaussian noise in a 2-D image (see the module docstring)."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(
            f"estimate_sigma needs a 2-D image of at least 8×8 pixels; got shape {x.shape}."
        )
    hh = _high_pass(_high_pass(x, 0), 1)
    return float(np.median(np.abs(hh)) / _MAD)
