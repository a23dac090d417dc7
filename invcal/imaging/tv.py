r"""Total-variation denoising and deblurring: the TV model, solved by Split Bregman.

The TV model (ROF, weighted, anisotropic or isotropic, Huber-smoothed) and its Split Bregman
iteration (:class:`SplitBregman`, its state, the u-steps :class:`SpectralSolve` and
:class:`GaussSeidel`, the TV norms :class:`Anisotropic` and :class:`Isotropic` with their
shrinkages, and :func:`split_bregman`) are in :mod:`invcal.imaging.bregman`, with the maths
of the iteration, its fixed point and its relation to scikit-image; this module re-exports
those names (``from invcal.imaging.tv import SplitBregman`` and ``from invcal.imaging import
SplitBregman`` both work). The rest of TV: ∇, the boundaries and the blur
(:mod:`invcal.imaging.operators`), the weight layouts (:mod:`invcal.imaging.weights`), the
criteria and the hyperparameter problem (:mod:`invcal.imaging.tuning`) and the one-call
:func:`invcal.imaging.denoise_tv`.
"""

from . import bregman as _bregman
from .bregman import *  # noqa: F403  (the old import path keeps working)

__all__ = list(_bregman.__all__)
