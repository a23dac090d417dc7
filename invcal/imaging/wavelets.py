r"""Orthonormal periodic wavelet transforms of 2-D images (Haar and Daubechies), in JAX.

**Filters.** Daubechies' minimum-phase scaling filter with N vanishing moments (``"dbN"``,
2N taps; ``"haar"`` = ``"db1"``) is built by spectral factorization (Daubechies 1988,
"Orthonormal bases of compactly supported wavelets"; *Ten Lectures on Wavelets* §6.1):

    h(z) = √2 ((1 + z⁻¹)/2)ᴺ Q(z),   |Q(e^{iω})|² = P(sin²(ω/2)),   P(y) = Σ_{k<N} C(N−1+k, k) yᵏ,

keeping the roots of P (mapped to z by y = (2 − z − z⁻¹)/4) inside the unit circle. The
high-pass filter is the quadrature mirror gⱼ = (−1)ʲ h_{L−1−j}. So ``db2`` is
(1+√3, 3+√3, 3−√3, 1−√3)/(4√2) and ``db4`` the classical 8-tap D8.

**One level along an axis** of even length n, periodic (Mallat 1989; the periodized wavelet
basis of Cohen, Daubechies & Vial 1993 in its simplest form):

    lowₖ = Σⱼ hⱼ x_{(2k+j) mod n},     highₖ = Σⱼ gⱼ x_{(2k+j) mod n},

computed by polyphase (even and odd samples) with rolls. The map x ↦ (low, high) is an
orthogonal matrix for every even n (periodization keeps the filters' double-shift
orthogonality), so the synthesis is its transpose and reconstruction is exact.

**2-D, multi-level** (Mallat's pyramid): one level along rows then columns splits an
(h, w) block into the quadrants [[LL, LH], [HL, HH]] stored in place; the next level
transforms the LL quadrant. The coefficients of a (H, W) image are one (H, W) array in this
packed layout, so the wavelet domain has the image's shape (convenient for ``vmap``, masks and
proximal maps); H and W must be divisible by 2^levels. :meth:`Wavelet.detail_mask` marks the
detail coefficients (everything but the coarsest LL block).
"""

from __future__ import annotations

import abc
import functools
import math
import re

import equinox as eqx
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AbstractBasis",
    "IdentityTransform",
    "Wavelet",
    "daubechies_filter",
    "wavelet_filters",
]


@functools.lru_cache(maxsize=32)
def _daubechies(n: int) -> tuple[float, ...]:
    if n == 1:
        return (1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))
    # P(y) = Σ_{k<N} C(N−1+k, k) yᵏ; np.roots wants the highest degree first.
    coeffs = [math.comb(n - 1 + k, k) for k in range(n)][::-1]
    ys = np.roots(coeffs)
    zs = []
    for y in ys:
        # y = (2 − z − 1/z)/4  ⇔  z² − (2 − 4y) z + 1 = 0; the two roots are z and 1/z.
        b = 2.0 - 4.0 * y
        disc = np.sqrt(b * b - 4.0 + 0j)
        r1, r2 = (b + disc) / 2.0, (b - disc) / 2.0
        zs.append(r1 if abs(r1) < 1.0 else r2)
    q = np.real(np.poly(zs))  # Π (z − zₖ): real, since the roots come in conjugate pairs
    binom = np.array([math.comb(n, k) for k in range(n + 1)], dtype=float)
    h = np.convolve(binom, q)
    h = h * (math.sqrt(2.0) / h.sum())
    # Minimum phase with the energy at the start of the filter (the usual "rec_lo" order).
    if abs(h[0]) < abs(h[-1]):
        h = h[::-1]
    return tuple(float(v) for v in h)


def daubechies_filter(n: int) -> np.ndarray:
    """The 2n-tap Daubechies scaling (low-pass) filter with n vanishing moments, Σh = √2,
    Σh² = 1 (n = 1 is Haar). Computed by spectral factorization; accurate to ~1e-14 for n ≤ 10."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 10:
        raise ValueError(f"daubechies_filter: n must be an integer in 1..10; got {n!r}.")
    return np.array(_daubechies(int(n)))


_NAME = re.compile(r"^(haar|db([1-9]|10))$")


def wavelet_filters(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(low-pass h, high-pass g) of the orthonormal wavelet ``name`` (``"haar"``, ``"db1"`` …
    ``"db10"``), with gⱼ = (−1)ʲ h_{L−1−j}."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(
            f"wavelet name must be 'haar' or 'db1' ... 'db10' (Daubechies, N vanishing "
            f"moments); got {name!r}."
        )
    n = 1 if name == "haar" else int(m.group(2))
    h = daubechies_filter(n)
    g = h[::-1] * np.where(np.arange(h.size) % 2 == 0, 1.0, -1.0)
    return h, g


# --------------------------------------------------------------------------------------
# One level along the last axis (polyphase)
# --------------------------------------------------------------------------------------
def _analysis_last(x, h, g):
    """(low, high) along the last axis of x (even length)."""
    xe, xo = x[..., 0::2], x[..., 1::2]
    low = jnp.zeros_like(xe)
    high = jnp.zeros_like(xe)
    for m in range((h.size + 1) // 2):
        se, so = jnp.roll(xe, -m, axis=-1), jnp.roll(xo, -m, axis=-1)
        low = low + h[2 * m] * se + h[2 * m + 1] * so
        high = high + g[2 * m] * se + g[2 * m + 1] * so
    return low, high


def _synthesis_last(low, high, h, g):
    """The transpose of :func:`_analysis_last`: x from (low, high)."""
    xe = jnp.zeros_like(low)
    xo = jnp.zeros_like(low)
    for m in range((h.size + 1) // 2):
        rl, rh = jnp.roll(low, m, axis=-1), jnp.roll(high, m, axis=-1)
        xe = xe + h[2 * m] * rl + g[2 * m] * rh
        xo = xo + h[2 * m + 1] * rl + g[2 * m + 1] * rh
    return jnp.stack([xe, xo], axis=-1).reshape(*low.shape[:-1], 2 * low.shape[-1])


def _analysis_2d(block, h, g):
    """One 2-D level on the last two axes: [[LL, LH], [HL, HH]] in place."""
    lo, hi = _analysis_last(block, h, g)  # along columns (axis −1)
    a = jnp.concatenate([lo, hi], axis=-1)
    a = jnp.swapaxes(a, -1, -2)
    lo, hi = _analysis_last(a, h, g)  # along rows (axis −2)
    return jnp.swapaxes(jnp.concatenate([lo, hi], axis=-1), -1, -2)


def _synthesis_2d(block, h, g):
    a = jnp.swapaxes(block, -1, -2)
    half = a.shape[-1] // 2
    a = _synthesis_last(a[..., :half], a[..., half:], h, g)
    a = jnp.swapaxes(a, -1, -2)
    half = a.shape[-1] // 2
    return _synthesis_last(a[..., :half], a[..., half:], h, g)


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------
class AbstractBasis(eqx.Module):
    """An orthonormal basis W of (…, H, W) images whose coefficients have the image's
    shape: ``forward`` is W, ``inverse`` is W⁻¹ = Wᵀ. (Named apart from
    :class:`invcal.space.AbstractTransform`, the reparametrization of a hyperparameter.)"""

    @abc.abstractmethod
    def forward(self, x):
        """Coefficients W x (same shape as x)."""

    @abc.abstractmethod
    def inverse(self, c):
        """The image Wᵀ c."""

    def check_shape(self, shape) -> None:
        """Raise a ValueError if images of ``shape`` (…, H, W) cannot be transformed."""

    def detail_mask(self, shape) -> np.ndarray:
        """Boolean (H, W): True on the coefficients an ℓ1 penalty should act on."""
        return np.ones(tuple(shape[-2:]), dtype=bool)


class IdentityTransform(AbstractBasis):
    """W = I: sparsity in the pixel domain."""

    def forward(self, x):
        return x

    def inverse(self, c):
        return c


class Wavelet(AbstractBasis):
    """The orthonormal periodic 2-D wavelet transform with ``levels`` levels of Mallat's
    pyramid (see the module docstring). ``name``: ``"haar"`` or ``"db1"`` … ``"db10"``."""

    name: str = eqx.field(default="db4", static=True)
    levels: int = eqx.field(default=4, static=True)

    def __check_init__(self):
        wavelet_filters(self.name)
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)):
            raise ValueError(f"Wavelet levels must be an integer >= 1; got {self.levels!r}.")
        if self.levels < 1:
            raise ValueError(f"Wavelet levels must be an integer >= 1; got {self.levels!r}.")

    @property
    def filters(self):
        return wavelet_filters(self.name)

    def check_shape(self, shape) -> None:
        if len(shape) < 2:
            raise ValueError(f"Wavelet: expected images (..., H, W); got shape {tuple(shape)}.")
        h, w = shape[-2:]
        q = 2**self.levels
        if h % q or w % q:
            raise ValueError(
                f"Wavelet(levels={self.levels}) needs H and W divisible by 2^levels = {q}; got "
                f"an image of {h}×{w}. Crop or resize the image, or use fewer levels."
            )

    def forward(self, x):
        self.check_shape(jnp.shape(x))
        h, g = self.filters
        out = x
        rows, cols = x.shape[-2:]
        for _ in range(self.levels):
            block = _analysis_2d(out[..., :rows, :cols], h, g)
            out = out.at[..., :rows, :cols].set(block)
            rows, cols = rows // 2, cols // 2
        return out

    def inverse(self, c):
        self.check_shape(jnp.shape(c))
        h, g = self.filters
        rows, cols = c.shape[-2:]
        sizes = [(rows // 2**k, cols // 2**k) for k in range(self.levels)]
        out = c
        for r, s in reversed(sizes):
            out = out.at[..., :r, :s].set(_synthesis_2d(out[..., :r, :s], h, g))
        return out

    def detail_mask(self, shape) -> np.ndarray:
        self.check_shape(tuple(shape))
        h, w = shape[-2:]
        mask = np.ones((h, w), dtype=bool)
        mask[: h >> self.levels, : w >> self.levels] = False
        return mask


def __getattr__(name):
    if name == "AbstractTransform":
        import warnings

        warnings.warn(
            "invcal.imaging.AbstractTransform is now invcal.imaging.AbstractBasis "
            "(invcal.space.AbstractTransform is a hyperparameter's reparametrization).",
            DeprecationWarning,
            stacklevel=2,
        )
        return AbstractBasis
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
