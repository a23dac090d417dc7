r"""Split Bregman, the inner solver of total-variation denoising and deblurring, and its
fixed-point map.

This module only iterates: the TV norms with their proximal maps (the d-step), the u-step
solvers, the state, one iteration T and the stopping loop. The imaging side stays in
:mod:`invcal.imaging`: the boundaries, ∇ and the blur (:mod:`invcal.imaging.operators`), the
weight layouts, the criteria and the hyperparameter problem (:func:`invcal.imaging.tv_problem`)
and :func:`invcal.imaging.denoise_tv`. Every name here is also importable from
:mod:`invcal.imaging` and :mod:`invcal.imaging.tv`, where it used to live.

**The problem** (Rudin, Osher & Fatemi 1992; the weighted and anisotropic forms): for an
observed image f ∈ ℝ^{H×W}, a blur K (identity for denoising) and TV weights w > 0,

    u*(w) = argmin_u  TV_w(u) + ½‖Ku − f‖²,

    anisotropic:  TV_w(u) = Σ_{c,i} w_{c,i} |(∇u)_{c,i}|            (c = vertical, horizontal),
    isotropic:    TV_w(u) = Σ_i w_i ((∇u)²_{0,i} + (∇u)²_{1,i})^{1/2}.

    vectorial:    TV_w(u) = Σ_i w_i (Σ_k (∇u_k)²_{0,i} + (∇u_k)²_{1,i})^{1/2}   (u = (u_1…u_C))

w is a scalar, a (vertical, horizontal) pair (anisotropic only) or a per-pixel map. The
**vectorial** (colour) TV of an image with C channels (Blomgren & Chan 1998, "Color TV: total
variation methods for restoration of vector-valued images", IEEE TIP 7(3); Bresson & Chan
2008, "Fast dual minimization of the vectorial total variation norm", Inverse Probl. Imaging
2(4)) couples the channels in the isotropic norm: one Euclidean norm per pixel over the C × 2
gradient components, so that an edge is shared by the channels (per-channel TV lets each
channel place and shrink its edges on its own, which leaves colour fringes). With
:class:`Vectorial` the state carries the channel axis: u is (C, H, W), d and b (C, 2, H, W);
the u-step is separable over the channels (it is run on each), the d-step is the vector
shrinkage over the C × 2 components at each pixel. In the
μ-form of Goldstein & Osher, min ‖∇u‖₁ + (μ/2)‖Ku − f‖², the same solution has w = 1/μ.
With the **Huber** smoothing (``huber=ε``) each |·| becomes h_ε(s) = s²/(2ε) for s ≤ ε and
s − ε/2 beyond: a strongly convex, C¹ energy whose solution is smooth in w.

**Split Bregman** (Goldstein & Osher 2009, "The split Bregman method for L1-regularized
problems", SIAM J. Imaging Sci. 2(2)): split d = ∇u, add the Bregman variable b and iterate,
with a penalty ρ > 0,

    u⁺ = (KᵀK + ρ∇ᵀ∇)⁻¹ (Kᵀf + ρ∇ᵀ(d − b))                       (u-step)
    d⁺ = shrink(∇u⁺ + b, w/ρ)                                        (d-step)
    b⁺ = b + ∇u⁺ − d⁺                                                 (Bregman update)

with shrink the soft threshold (anisotropic), the vector shrinkage v·max(|v| − t, 0)/|v|
(isotropic) or the Huber proximal map. The u-step is solved exactly in the basis that
diagonalizes ∇ᵀ∇ (:class:`SpectralSolve`: FFT for periodic boundaries, DCT-II for Neumann
boundaries; a periodic blur K is diagonal in the FFT basis too), or approximately by
:class:`GaussSeidel` sweeps (red-black ordering) started from the current u, as Goldstein &
Osher recommend for denoising (one sweep per iteration).

**The fixed point.** The iteration is a map T(s; w, f) of the state s = (u, d, b). At a fixed
point, b⁺ = b gives d = ∇u; the u-step (exact or Gauss–Seidel: a sweep leaves u unchanged
only at the exact solution of its linear system) gives Kᵀ(Ku − f) + ρ∇ᵀ(∇u − d + b) =
Kᵀ(Ku − f) + ∇ᵀ(ρb) = 0; and the d-step says ρb ∈ ∂TV_w(d) (the shrinkage is a prox):
together, 0 ∈ Kᵀ(Ku − f) + ∇ᵀ∂TV_w(∇u), the optimality condition of u*(w). So u* is the u
of every fixed point whatever ρ and the u-step, and the engine can differentiate it by the
implicit function theorem on s − T(s) (``invcal.Implicit(system="fixed_point")`` with GMRES)
or by unrolling T. For exact TV the fixed point is not unique in b (the dual field ρb may
move along divergence-free directions inside flat regions, where |ρb| < w), so I − ∂T/∂s is
singular there; the systems the hypergradient solves are consistent (those directions leave
u unchanged). Measured at 64×64 (``tests/test_tv.py``): reverse-mode GMRES converges in a few
restarts and matches finite differences to 2e-10; BiCGStab breaks down (NaN); forward-mode
GMRES reaches a relative residual of 3e-15 but lineax reports a breakdown. Exact isotropic TV
converges sublinearly (‖s − T(s)‖ ≈ 7e-7 after 20 000 iterations at 64×64), too slowly for a
fixed point tight enough to differentiate: use anisotropic TV, the Huber smoothing, or
differentiate a fixed number of iterations (``invcal.ForwardUnrolled``).

The shrinkages are written with ``jnp.where`` on both branches and a norm that is never
evaluated at 0 (:mod:`invcal.prox`): the derivative at 0 is 0, never NaN (scico's isotropic TV
gives NaN gradients there).

**Relation to scikit-image.** ``skimage.restoration.denoise_tv_bregman(f, weight=μ,
isotropic=False)`` iterates this method (one Gauss–Seidel sweep, penalty 2μ in the μ-form,
i.e. ρ = 2 here) for min ‖∇u‖₁ + (μ/2)‖u − f‖²: its ``weight`` μ is our 1/w. (Its docstring
says weight = λ/2; the code solves the μ-form above.) Its ``isotropic=True`` d-step is not the
isotropic shrinkage and matches no ROF energy, and its boundary treatment differs from both
of ours (ghost pixels around the image fixed at the data: a TV term to the data beyond the
last row and column, a quadratic one before the first), so the two agree in the interior and
differ near the image border, the difference decaying inwards (``tests/test_tv.py``,
``benchmarks/tv_vs_skimage.py``).
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import prox
from .._renamed import renamed_from_method
from ..prox import soft_threshold, vector_shrink
from .operators import AbstractBoundary, Blur, Neumann, Periodic

__all__ = [
    "AbstractTVNorm",
    "Anisotropic",
    "Isotropic",
    "Vectorial",
    "AbstractUStep",
    "SpectralSolve",
    "GaussSeidel",
    "SplitBregman",
    "SplitBregmanState",
    "TVSolution",
    "split_bregman",
    "soft_threshold",
    "vector_shrink",
]


def _default_boundary():
    return Neumann()


def _is_periodic(boundary) -> bool:
    return isinstance(boundary, Periodic)


def _is_boundary(boundary) -> bool:
    return isinstance(boundary, AbstractBoundary)


# --------------------------------------------------------------------------------------
# TV norms
# --------------------------------------------------------------------------------------
class AbstractTVNorm(eqx.Module):
    """How the two gradient components are combined in TV_w."""

    @abc.abstractmethod
    def value(self, g, w, huber):
        """TV_w evaluated at a gradient field g (2, H, W) (Huber-smoothed if ``huber``)."""

    @abc.abstractmethod
    def shrink(self, v, t, huber):
        """The proximal map of t·|·| (or t·h_ε) applied to v (2, H, W)."""

    @abc.abstractmethod
    def check_weight_shape(self, shape) -> None:
        """Raise if weights of this shape do not fit the norm."""


class Anisotropic(AbstractTVNorm):
    """Σ w|∂₀u| + w|∂₁u|: the ℓ¹ norm of the gradient components (separable)."""

    def value(self, g, w, huber):
        a = jnp.abs(g) if huber is None else prox.huber(jnp.abs(g), huber)
        return jnp.sum(w * a)

    def shrink(self, v, t, huber):
        if huber is None:
            return soft_threshold(v, t)
        return prox.prox_huber(v, t, huber)

    def check_weight_shape(self, shape):
        ok = shape in ((), (2, 1, 1)) or len(shape) == 2 or (len(shape) == 3 and shape[0] == 2)
        if not ok:
            raise ValueError(
                "anisotropic TV weights must be a scalar, a (2, 1, 1) vertical/horizontal pair, "
                f"an (H, W) map or a (2, H, W) per-component map; got shape {shape}."
            )


class Isotropic(AbstractTVNorm):
    """Σ w‖∇u‖₂ per pixel: rotation-invariant up to discretization."""

    def value(self, g, w, huber):
        n = jnp.sqrt(_squared_norm(g) + jnp.finfo(g.dtype).tiny)
        a = n if huber is None else prox.huber(n, huber)
        return jnp.sum(w * a)

    def shrink(self, v, t, huber):
        # invcal.prox.vector_shrink / prox_huber_vector, with the norm over the two
        # components written out: XLA's CPU reduction over the leading axis of a (2, H, W)
        # array is not vectorized (measured 4.8 ms at 512×512 against 0.06 ms for
        # v₀² + v₁², 80× slower; it made an isotropic iteration 5× slower than an
        # anisotropic one). Same values, same zero derivative where ‖v‖ <= threshold.
        if huber is None:
            n, mask = _safe_norm2(v, t)
            return jnp.where(mask, (1.0 - t / n) * v, jnp.zeros_like(v))
        n, mask = _safe_norm2(v, huber + t)
        return jnp.where(mask, (1.0 - t / n) * v, v * (huber / (huber + t)))

    def check_weight_shape(self, shape):
        if not (shape == () or len(shape) == 2):
            raise ValueError(
                "isotropic TV weights must be a scalar or an (H, W) per-pixel map (separate "
                "vertical/horizontal weights need Anisotropic()); got shape "
                f"{shape}."
            )


class Vectorial(AbstractTVNorm):
    """Σ w (Σ_k ‖∇u_k‖²)^{1/2} per pixel over the C channels of u (C, H, W): colour
    (vectorial) TV (see the module docstring). The gradient fields are (C, 2, H, W); the
    shrinkage is the isotropic one with the norm taken over the C × 2 components."""

    def value(self, g, w, huber):
        n = jnp.sqrt(_channel_squared_norm(g) + jnp.finfo(g.dtype).tiny)
        a = n if huber is None else prox.huber(n, huber)
        return jnp.sum(w * a)

    def shrink(self, v, t, huber):
        # as Isotropic.shrink, the squares written out (C is 3 for RGB)
        floor = t if huber is None else huber + t
        sq = _channel_squared_norm(v)
        mask = sq > floor * floor
        n = jnp.sqrt(jnp.where(mask, sq, jnp.ones_like(sq)))
        if huber is None:
            return jnp.where(mask, (1.0 - t / n) * v, jnp.zeros_like(v))
        return jnp.where(mask, (1.0 - t / n) * v, v * (huber / (huber + t)))

    def check_weight_shape(self, shape):
        if not (shape == () or len(shape) == 2):
            raise ValueError(
                "vectorial TV weights must be a scalar or an (H, W) per-pixel map (one weight "
                f"for all channels at a pixel); got shape {shape}."
            )


def _channel_squared_norm(v):
    """Σ_k ‖v_k‖² over the channels and the two components of a (C, 2, …) field."""
    out = v[0, 0] * v[0, 0] + v[0, 1] * v[0, 1]
    for k in range(1, v.shape[0]):
        out = out + v[k, 0] * v[k, 0] + v[k, 1] * v[k, 1]
    return out


def _squared_norm(v):
    """‖v‖² over the leading axis of a (2, …) field, as v₀² + v₁² (see Isotropic.shrink)."""
    return v[0] * v[0] + v[1] * v[1]


def _safe_norm2(v, floor):
    """invcal.prox._safe_norm for a (2, …) field: (‖v‖, mask) with ‖v‖ replaced by 1 where
    ‖v‖² <= floor², so that the square root is never taken at 0."""
    sq = _squared_norm(v)
    mask = sq > floor * floor
    return jnp.sqrt(jnp.where(mask, sq, jnp.ones_like(sq))), mask


# --------------------------------------------------------------------------------------
# u-step strategies
# --------------------------------------------------------------------------------------
class AbstractUStep(eqx.Module):
    """How the u-step's linear system (α KᵀK + ρ∇ᵀ∇)u = r is solved."""

    @abc.abstractmethod
    def __call__(self, u, r, rho, boundary, blur):
        """The new u (``u`` is the current one, a starting point for iterative sweeps)."""


class SpectralSolve(AbstractUStep):
    """Exact solve in the basis that diagonalizes ∇ᵀ∇: FFT (periodic) or DCT-II (Neumann).
    With a blur, periodic boundaries are needed (KᵀK is then diagonal in the same basis)."""

    def __call__(self, u, r, rho, boundary, blur):
        if blur is not None:
            return blur.solve_normal(r, 1.0, rho)
        return boundary.solve_shifted(r, 1.0, rho)


class GaussSeidel(AbstractUStep):
    """``sweeps`` red-black Gauss–Seidel sweeps on (M + ρ∇ᵀ∇)u = r from the current u, with
    M = I (denoising) or M = diag(``mask``) (inpainting: min λTV(u) + ½‖M(u − y)‖², whose
    step's right-hand side takes f = M y; the diagonal mᵢ + ρnᵢ stays ≥ ρ > 0).

    A stationary linear iteration, so its fixed point is the exact solution and its
    derivative is a fixed linear map: implicit and unrolled differentiation both apply.
    No blur."""

    sweeps: int = eqx.field(default=1, static=True)
    mask: Any = None

    def __check_init__(self):
        if int(self.sweeps) < 1:
            raise ValueError(f"GaussSeidel sweeps must be >= 1; got {self.sweeps!r}.")

    def __call__(self, u, r, rho, boundary, blur):
        if blur is not None:
            raise ValueError(
                "GaussSeidel() solves the denoising u-step only; with a blur use SpectralSolve() "
                "and Periodic() boundaries."
            )
        h, w = u.shape
        periodic = _is_periodic(boundary)
        # The update u_i = (r_i + ρ Σ_{j∈N(i)} u_j) / (m_i + ρ n_i), n_i = |N(i)|. With
        # Neumann boundaries the neighbour sum is taken on a zero-padded copy (the missing
        # neighbours add 0), periodic ones wrap; n_i and the red/black colouring come from
        # iotas inside the fused loop instead of stored arrays (measured at 512×512 float32:
        # one sweep 0.36 ms against 0.60 ms with an edge-padded copy and stored constants).
        i = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0)
        j = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1)
        if periodic:
            n = jnp.full((h, w), 4.0, u.dtype)
        else:
            n = (4 - (i == 0) - (i == h - 1) - (j == 0) - (j == w - 1)).astype(u.dtype)
            n = jnp.maximum(n, 0.0)  # (a single row or column has no vertical neighbours)
        inv = 1.0 / ((1.0 if self.mask is None else self.mask.astype(u.dtype)) + rho * n)
        red = ((i + j) % 2) == 0
        mode = "wrap" if periodic else "constant"

        def half(u, colour):
            p = jnp.pad(u, 1, mode=mode)
            s = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
            return jnp.where(colour, (r + rho * s) * inv, u)

        for _ in range(int(self.sweeps)):
            u = half(u, red)
            u = half(u, ~red)
        return u


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------
class SplitBregmanState(eqx.Module):
    """The Split Bregman state: image u (H, W), split variable d ≈ ∇u and Bregman variable b
    (both (2, H, W)). Leading batch axes are allowed (vmapped problems)."""

    u: jax.Array
    d: jax.Array
    b: jax.Array


class SplitBregman(eqx.Module):
    """Split Bregman for min_u TV_w(u) + ½‖Ku − f‖² (see the module docstring).

    **Arguments**

    - ``norm``: :class:`Isotropic` (default), :class:`Anisotropic` or :class:`Vectorial`
      (colour TV: the state then carries the channel axis, u (C, H, W)).
    - ``boundary``: :class:`~invcal.imaging.Neumann` (default) or
      :class:`~invcal.imaging.Periodic`.
    - ``u_step``: :class:`GaussSeidel` (default: one red-black sweep) or
      :class:`SpectralSolve` (exact; needed for deblurring). At 512×512 one sweep takes about
      as many iterations as the exact solve and is several times cheaper (measured in
      ``benchmarks/tv_vs_skimage.py``).
    - ``penalty``: ρ > 0; it changes the speed, not the solution. ρ = 2 (default; the value
      scikit-image's iteration uses) is the fastest at the RMS-change stops of
      :func:`split_bregman` and :func:`~invcal.imaging.denoise_tv`. Measured on 512×512
      camera (anisotropic, σ = 0.05/0.1/0.2, PSNR-best w, float32): stopping at 1e-4, ρ = 2
      takes 28–36 iterations and ends 0.011–0.020 (max |Δu|) from the converged image, ρ = 4
      takes 41–46 and ends 0.027–0.043 away; at 1e-3, ρ = 4 stopped after 12 iterations at
      σ = 0.05, 0.36 dB below skimage's PSNR, ρ = 2 above it. For max |Δu| < 1e-3 at
      σ = 0.2, ρ = 4 needs fewer iterations (165–195 against 305–355), and the tight fixed
      points of implicit differentiation use ρ = 8 (``problems/split_bregman_tv.py``).
      A scalar array (not a Python number) lets one compiled solver serve every ρ, as
      :func:`invcal.imaging.reconstruct` does for deblurring (ρ = λ/σ there), at a price on
      the CPU: a Python number is folded into XLA's fused loops, and a Gauss–Seidel
      iteration with ρ a runtime scalar took 1.4–1.8× as long (512×512, measured for
      :func:`~invcal.imaging.denoise_tv`, which therefore passes ρ = 2 as a number).
    - ``huber``: ε > 0 for the Huber-smoothed TV, ``None`` (default) for exact TV.
    - ``blur``: an :class:`~invcal.imaging.Blur` K for deblurring (periodic boundaries,
      spectral u-step), ``None`` for denoising.
    """

    norm: AbstractTVNorm = Isotropic()
    boundary: AbstractBoundary = eqx.field(default_factory=_default_boundary)
    u_step: AbstractUStep = GaussSeidel()
    penalty: float = 2.0
    huber: float | None = None
    blur: Blur | None = None

    def __check_init__(self):
        if not isinstance(self.norm, AbstractTVNorm):
            raise TypeError(
                f"norm must be Isotropic(), Anisotropic() or Vectorial(); got {self.norm!r}."
            )
        if not _is_boundary(self.boundary):
            raise TypeError(f"boundary must be Neumann() or Periodic(); got {self.boundary!r}.")
        if not isinstance(self.u_step, AbstractUStep):
            raise TypeError(
                f"u_step must be SpectralSolve() or GaussSeidel(sweeps); got {self.u_step!r}."
            )
        if not isinstance(self.penalty, jax.core.Tracer) and not (
            np.isfinite(self.penalty) and self.penalty > 0
        ):
            raise ValueError(f"SplitBregman penalty must be > 0; got {self.penalty!r}.")
        if self.huber is not None and not (np.isfinite(self.huber) and self.huber > 0):
            raise ValueError(f"SplitBregman huber must be > 0 or None; got {self.huber!r}.")
        if self.blur is not None:
            if not _is_periodic(self.boundary):
                raise ValueError(
                    "deblurring (blur=...) needs boundary=Periodic(): the blur is a periodic "
                    "convolution, diagonal in the same Fourier basis as the periodic ∇ᵀ∇."
                )
            if not isinstance(self.u_step, SpectralSolve):
                raise ValueError("deblurring (blur=...) needs u_step=SpectralSolve().")

    # -- pieces ------------------------------------------------------------------------
    @property
    def coupled(self) -> bool:
        """Whether the state carries a channel axis (u (C, H, W)): :class:`Vectorial` TV."""
        return isinstance(self.norm, Vectorial)

    def _per_channel(self, fn):
        """``fn`` of one (H, W) channel, mapped over the channel axis when ``coupled``."""
        return jax.vmap(fn) if self.coupled else fn

    def forward(self, u):
        """K u (u itself for denoising)."""
        return u if self.blur is None else self._per_channel(self.blur.mv)(u)

    def adjoint(self, v):
        return v if self.blur is None else self._per_channel(self.blur.rmv)(v)

    def gradient(self, u):
        """∇u: (2, H, W), or (C, 2, H, W) for :class:`Vectorial` TV."""
        return self._per_channel(self.boundary.gradient)(u)

    def energy(self, u, f, w):
        """TV_w(u) + ½‖Ku − f‖² (Huber-smoothed if ``huber``), the energy u* minimizes."""
        r = self.forward(u) - f
        return self.norm.value(self.gradient(u), w, self.huber) + 0.5 * jnp.sum(r * r)

    def init(self, f, u0=None) -> SplitBregmanState:
        """The state at u0 (default: f, or Kᵀf for deblurring) with d = b = 0, as in
        scikit-image (d = ∇u0 would make the first u-step return u0 and a change-based
        stopping test stop at once)."""
        u = self.adjoint(f) if u0 is None else u0
        lead = u.shape[:-2] if self.coupled else ()
        z = jnp.zeros(lead + (2,) + u.shape[-2:], u.dtype)
        return SplitBregmanState(u=u, d=z, b=z)

    def step(self, state: SplitBregmanState, f, w) -> SplitBregmanState:
        """One Split Bregman iteration T(s; w, f) (single image: u is (H, W), or (C, H, W)
        with :class:`Vectorial` TV, whose u-step runs on each channel)."""
        rho = jnp.asarray(self.penalty, f.dtype)
        w = jnp.asarray(w).astype(f.dtype)  # a float64 θ must not promote a float32 state
        bnd = self.boundary

        def u_step(u, f, d, b):
            if self.blur is not None:
                return self._deblur_u_step(d - b, f, rho)
            r = f - rho * bnd.divergence(d - b)
            return self.u_step(u, r, rho, bnd, self.blur)

        u = self._per_channel(u_step)(state.u, f, state.d, state.b)
        v = self.gradient(u) + state.b
        d = self.norm.shrink(v, w / rho, self.huber)
        b = v - d
        return SplitBregmanState(u=u, d=d, b=b)

    def _deblur_u_step(self, p, f, rho):
        """The exact u-step (KᵀK + ρ∇ᵀ∇)u = Kᵀf + ρ div(d − b) in the Fourier basis, with
        Kᵀf taken there too: F(Kᵀf) = conj(k̂)·F(f). Two real FFTs and one inverse per
        iteration instead of two pairs (Kᵀf in image space, then the solve's pair), and the
        FFT of f does not change between iterations; the same u as
        ``SpectralSolve()(u, Kᵀf + ρ div(d − b), …)`` up to rounding. ``p`` is d − b."""
        blur = self.blur
        otf = blur.otf
        lam = self.boundary.laplacian_eigenvalues(blur.shape, f.dtype)
        denom = jnp.abs(otf) ** 2 + rho * lam
        div = self.boundary.divergence(p)
        rhat = jnp.conj(otf) * jnp.fft.rfft2(f) - rho * jnp.fft.rfft2(div)
        return jnp.fft.irfft2(rhat / denom, s=blur.shape).astype(f.dtype)

    def check_weight(self, w, shape):
        """Validate the shape of concrete TV weights for an image of ``shape``."""
        wshape = tuple(jnp.shape(w))
        self.norm.check_weight_shape(wshape)
        tail = wshape[-2:] if len(wshape) >= 2 else ()
        if tail and tail not in ((1, 1), tuple(shape)):
            raise ValueError(f"TV weight map shape {wshape} does not match the image {shape}.")


class TVSolution(eqx.Module):
    """Result of :func:`split_bregman`: the image ``u``, the final ``state`` (to warm-start),
    ``num_steps``, the last root-mean-square change of u (``change``) and ``converged``
    (``change < tol``)."""

    u: jax.Array
    state: SplitBregmanState
    num_steps: jax.Array
    change: jax.Array
    converged: jax.Array


@eqx.filter_jit
def _split_bregman(method, f, w, state, tol, max_steps):
    """The stopping loop; ``state`` None starts from ``method.init(f)`` (inside the compiled
    program: no eager zeros and adjoint before it)."""
    n = f.size
    if state is None:
        state = method.init(f)

    def cond(c):
        # at least two iterations: warm-started at the fixed point of another weight, the
        # first u-step reads the old (d, b) and leaves u unchanged, which would stop the
        # change test at once (measured: a 61-point grid chain kept the previous images)
        k, _, ch = c
        return (k < max_steps) & ((ch >= tol) | (k < 2))

    def body(c):
        k, s, _ = c
        s_new = method.step(s, f, w)
        ch = jnp.sqrt(jnp.sum((s_new.u - s.u) ** 2) / n)
        return k + 1, s_new, ch

    inf = jnp.asarray(jnp.inf, f.dtype)
    k, s, ch = jax.lax.while_loop(cond, body, (jnp.asarray(0), state, inf))
    return TVSolution(u=s.u, state=s, num_steps=k, change=ch, converged=ch < tol)


def split_bregman(
    f,
    weight,
    tv: SplitBregman | None = None,
    *,
    tol: float = 1e-3,
    max_steps: int = 100,
    init: SplitBregmanState | None = None,
    method: SplitBregman | None = None,
) -> TVSolution:
    r"""Solve min_u TV_w(u) + ½‖Ku − f‖² by Split Bregman, stopping (as scikit-image does)
    when the root-mean-square change of u between iterations, ‖u_k − u_{k−1}‖₂/√N, falls below
    ``tol`` or after ``max_steps`` iterations, and never before two iterations (warm-started
    from the fixed point of another weight, the first iteration leaves u unchanged). ``weight``
    is w (scalar, (2, 1, 1) or an (H, W) / (2, H, W) map); ``init`` warm-starts from a
    previous state. Jit-compiled; the
    dtype of f (float32 or float64) is kept.

    For a solution to high accuracy with a residual-based test, or differentiable in w, use
    the engine: :func:`invcal.imaging.tv_problem` with ``invcal.FixedPointIteration``.

    ``tv`` is the TV model and its :class:`SplitBregman` settings (``method=`` is its old
    name and warns: elsewhere ``method`` is the hypergradient method)."""
    tv = renamed_from_method(tv, method, who="split_bregman", new="tv")
    method = SplitBregman() if tv is None else tv
    f = jnp.asarray(f)
    if method.coupled and f.ndim != 3:
        raise ValueError(
            f"split_bregman: Vectorial() TV takes a (C, H, W) image of C channels; got shape "
            f"{f.shape}."
        )
    if not method.coupled and f.ndim != 2:
        hint = " (for a (C, H, W) colour image use norm=Vectorial())" if f.ndim == 3 else ""
        raise ValueError(f"split_bregman: f must be a 2-D image (H, W); got shape {f.shape}{hint}.")
    if f.size == 0:
        raise ValueError(f"split_bregman: f is empty (shape {f.shape}).")
    if not jnp.issubdtype(f.dtype, jnp.floating):
        raise TypeError(
            f"split_bregman: f must be a real float32 or float64 image; got dtype {f.dtype}."
        )
    if not isinstance(f, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(f))):
        raise ValueError("split_bregman: f contains NaN or inf.")
    if not isinstance(weight, jax.core.Tracer):
        wv = np.asarray(weight)
        if wv.dtype.kind not in "iuf" or not np.all(np.isfinite(wv)) or np.any(wv <= 0):
            got = repr(weight) if wv.ndim == 0 else f"shape {wv.shape}, min {np.min(wv)!r}"
            raise ValueError(
                f"split_bregman: weight must be > 0 and finite (a TV weight w = 1/μ); got {got}."
            )
    w = jnp.asarray(weight, dtype=f.dtype)
    method.check_weight(w, f.shape[-2:])
    return _split_bregman(
        method, f, w, init, jnp.asarray(tol, f.dtype), jnp.asarray(int(max_steps))
    )
