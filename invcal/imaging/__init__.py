"""Imaging: finite-difference and blur operators, image metrics, test images, total-variation
denoising by Split Bregman, and its weight tuned by hypergradients.

``from invcal.imaging import denoise_tv`` is the one-call entry point; the pieces below it are
reusable (the operators by any imaging problem, :func:`split_bregman` as a fast solver,
:func:`tv_problem` to tune TV weights with the invcal engine). The Split Bregman solver
(:class:`SplitBregman`, its u-steps, TV norms and :func:`split_bregman`) is in
:mod:`invcal.imaging.bregman`, re-exported here and from :mod:`invcal.imaging.tv`.
"""

from .data import IMAGES, TRAIN, VALIDATION, add_noise, load_image, load_images
from .denoise import DenoiseInfo, denoise_tv
from .elastic_net import ImagingData, elastic_net_problem, measurement_noise, observe
from .metrics import mse, psnr
from .noise import estimate_sigma
from .operators import (
    AbstractBoundary,
    Blur,
    Inpainting,
    Neumann,
    Periodic,
    SubsampledFourier,
    dct2,
    divergence,
    gaussian_kernel,
    gradient,
    idct2,
    laplacian,
    random_mask,
    variable_density_mask,
)
from .reconstruct_report import reconstruct_file
from .reconstruction import NoMinimumError, Reconstruction, reconstruct
from .tuning import MSE, PSNR, SURE, AbstractImageCriterion, AbstractTVCriterion, tv_problem
from .tv import (
    AbstractTVNorm,
    AbstractUStep,
    Anisotropic,
    GaussSeidel,
    Isotropic,
    SpectralSolve,
    SplitBregman,
    SplitBregmanState,
    TVSolution,
    Vectorial,
    split_bregman,
)
from .wavelets import (
    AbstractBasis,
    IdentityTransform,
    Wavelet,
    daubechies_filter,
    wavelet_filters,
)
from .weights import AbstractWeightLayout, BlockWeights, DirectionalWeights, ScalarWeight

__all__ = [
    "AbstractBasis",
    "IdentityTransform",
    "Inpainting",
    "SubsampledFourier",
    "Wavelet",
    "daubechies_filter",
    "ImagingData",
    "elastic_net_problem",
    "measurement_noise",
    "observe",
    "random_mask",
    "variable_density_mask",
    "wavelet_filters",
    "AbstractBoundary",
    "AbstractImageCriterion",
    "AbstractTVCriterion",
    "AbstractTVNorm",
    "AbstractUStep",
    "AbstractWeightLayout",
    "Anisotropic",
    "BlockWeights",
    "Blur",
    "DenoiseInfo",
    "DirectionalWeights",
    "GaussSeidel",
    "IMAGES",
    "Isotropic",
    "MSE",
    "Neumann",
    "PSNR",
    "Periodic",
    "SURE",
    "ScalarWeight",
    "SpectralSolve",
    "SplitBregman",
    "SplitBregmanState",
    "TRAIN",
    "TVSolution",
    "VALIDATION",
    "Vectorial",
    "add_noise",
    "dct2",
    "denoise_tv",
    "divergence",
    "estimate_sigma",
    "gaussian_kernel",
    "gradient",
    "idct2",
    "laplacian",
    "load_image",
    "load_images",
    "mse",
    "psnr",
    "NoMinimumError",
    "Reconstruction",
    "reconstruct",
    "reconstruct_file",
    "split_bregman",
    "tv_problem",
]


def __getattr__(name):
    if name == "AbstractTransform":  # renamed: warns, naming AbstractBasis
        from . import wavelets

        return wavelets.AbstractTransform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
