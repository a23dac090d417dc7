r"""Total-variation denoising and deblurring: the TV model, solved by Split Bregman.

**The problem** (Rudin, Osher & Fatemi 1992; the weighted and anisotropic forms): for an
observed image f ∈ ℝ^{H×W}, a blur K (identity for denoising) and TV weights w > 0,

    u*(w) = argmin_u  TV_w(u) + ½‖Ku − f‖²,

    anisotropic:  TV_w(u) = Σ_{c,i} w_{c,i} |(∇u)_{c,i}|            (c = vertical, horizontal),
    isotropic:    TV_w(u) = Σ_i w_i ((∇u)²_{0,i} + (∇u)²_{1,i})^{1/2}.

w is a scalar, a (vertical, horizontal) pair (anisotropic only) or a per-pixel map. In the
μ-form of Goldstein & Osher, min ‖∇u‖₁ + (μ/2)‖Ku − f‖², the same solution has w = 1/μ.
With the **Huber** smoothing (``huber=ε``) each |·| becomes h_ε(s) = s²/(2ε) for s ≤ ε and
s − ε/2 beyond: a strongly convex, C¹ energy whose solution is smooth in w.

**Where things live.** The solver only iterates, so it lives with the other inner solvers:
Split Bregman (:class:`SplitBregman`, its state, the u-steps :class:`SpectralSolve` and
:class:`GaussSeidel`, the TV norms :class:`Anisotropic` and :class:`Isotropic` with their
shrinkages, and :func:`split_bregman`) is in :mod:`invcal.solvers.bregman`, with the
maths of the iteration, its fixed point and its relation to scikit-image. This module
re-exports those names, so ``from invcal.imaging.tv import SplitBregman`` (and
``from invcal.imaging import SplitBregman``) keep working. The imaging side of TV stays in
:mod:`invcal.imaging`: ∇, the boundaries and the blur (:mod:`invcal.imaging.operators`), the
weight layouts (:mod:`invcal.imaging.weights`), the criteria and the hyperparameter problem
(:mod:`invcal.imaging.tuning`) and the one-call :func:`invcal.imaging.denoise_tv`.
"""

from ..solvers.bregman import (
    AbstractTVNorm,
    AbstractUStep,
    Anisotropic,
    GaussSeidel,
    Isotropic,
    SpectralSolve,
    SplitBregman,
    SplitBregmanState,
    TVSolution,
    _huber_prox_scalar,  # noqa: F401  (private; tests/test_tv.py imports it from here)
    _huber_prox_vector,  # noqa: F401
    soft_threshold,
    split_bregman,
    vector_shrink,
)

__all__ = [
    "AbstractTVNorm",
    "Anisotropic",
    "Isotropic",
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
