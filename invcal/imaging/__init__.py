"""Imaging: finite-difference and blur operators, image metrics, test images, total-variation
denoising by Split Bregman, and its weight tuned by hypergradients.

``from invcal.imaging import denoise_tv`` is the one-call entry point; the pieces below it are
reusable (the operators by any imaging problem, :func:`split_bregman` as a fast solver,
:func:`tv_problem` to tune TV weights with the invcal engine).
"""

from .data import IMAGES, TRAIN, VALIDATION, add_noise, load_image, load_images
from .metrics import mse, psnr
from .operators import (
    AbstractBoundary,
    Blur,
    Neumann,
    Periodic,
    dct2,
    divergence,
    gaussian_kernel,
    gradient,
    idct2,
    laplacian,
)

__all__ = [
    "AbstractBoundary",
    "Blur",
    "IMAGES",
    "Neumann",
    "Periodic",
    "TRAIN",
    "VALIDATION",
    "add_noise",
    "dct2",
    "divergence",
    "gaussian_kernel",
    "gradient",
    "idct2",
    "laplacian",
    "load_image",
    "load_images",
    "mse",
    "psnr",
]
