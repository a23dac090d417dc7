r"""Total-variation denoising and deblurring: the TV model, solved by Split Bregman.

The TV model (ROF, weighted, anisotropic or isotropic, Huber-smoothed) and its Split Bregman
iteration are described in :mod:`invcal.solvers.bregman`.

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

from ..solvers import bregman as _bregman
from ..solvers.bregman import *  # noqa: F403  (the old import path keeps working)

__all__ = list(_bregman.__all__)
