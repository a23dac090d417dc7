"""Image files for :func:`invcal.imaging.reconstruct_file` and ``invcal reconstruct``: read
PNG, TIFF, JPEG and NumPy ``.npy`` files, and write a float image back in a file's format
and dtype.

Reading uses imageio (its tifffile plugin for TIFF) and ``numpy.load`` (no pickles) for
``.npy``; every failure is one ValueError line that names the file and what was expected.
Writing converts the float image back to the input's dtype as scikit-image's ``img_as_*``
converters do (integers: clipped to the dtype's float range [0, 1] or [−1, 1] and rounded;
floats: cast, not clipped), so that a uint8 PNG gives a uint8 PNG and a float32 TIFF a
float32 TIFF.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "read_image", "write_image"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")


def _suffix(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{what} {path}: unsupported file type {path.suffix or '(none)'!r}; expected a PNG, "
            "TIFF, JPEG or NumPy .npy file."
        )
    return suffix


def read_image(path, what: str = "image") -> np.ndarray:
    """The array stored in ``path`` (PNG, TIFF, JPEG or ``.npy``), as stored (dtype kept).
    Raises FileNotFoundError or a one-line ValueError naming ``what`` and the file."""
    path = Path(path)
    suffix = _suffix(path, what)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such file.")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected an image file.")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import imageio.v3 as iio

            with warnings.catch_warnings():  # imageio's plugin search on a file it can't read
                warnings.simplefilter("ignore", DeprecationWarning)
                arr = iio.imread(path, extension=suffix)
    except Exception as e:  # any decoder's failure: one line, what was expected
        detail = " ".join(str(e).split())[:160]
        raise ValueError(
            f"{what} {path} cannot be read as a {suffix[1:].upper()} image ({type(e).__name__}: "
            f"{detail}); expected a gray or RGB image file."
        ) from None
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} {path} holds {arr.dtype} data; expected numbers (an image).")
    return arr


def _from_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of ``img_as_float`` for ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return x.astype(dtype)
    if dtype.kind == "u":
        hi = np.iinfo(dtype).max
        return np.round(np.clip(x, 0.0, 1.0) * hi).astype(dtype)
    if dtype.kind == "i":  # img_as_float maps [min, max] to [−1, 1]
        info = np.iinfo(dtype)
        y = (np.clip(x, -1.0, 1.0) * (float(info.max) - info.min) - 1.0) / 2.0
        return np.clip(np.round(y), info.min, info.max).astype(dtype)
    return x.astype(np.float64)


def write_image(path, image: np.ndarray, dtype) -> Path:
    """Write the float ``image`` to ``path`` in ``dtype`` (format from the suffix), through a
    temporary file in the same folder, so that a reader never sees half a file."""
    path = Path(path)
    suffix = _suffix(path, "output")
    data = _from_float(np.asarray(image), dtype)
    tmp = path.with_name(f".results-{os.getpid()}-{path.name}")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, data, allow_pickle=False)
        else:
            import imageio.v3 as iio

            kwargs = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
            iio.imwrite(tmp, data, extension=suffix, **kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
