r"""Test images from scikit-image's offline data, and reproducible noise.

Every image named here ships inside the scikit-image wheel (``skimage.data`` reads them from
its package directory; nothing is downloaded). They are converted to grayscale float64 in
[0, 1] (ITU-R BT.709 luma for the colour ones), resized so that the shorter side is ``size``
(anti-aliased) and centre-cropped to ``size``×``size``, so that a training set stacks into one
array and its denoising problems can be solved side by side with ``vmap``.

Training images: camera, astronaut, coffee, chelsea, text; validation: clock, page, cell.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TRAIN", "VALIDATION", "IMAGES", "load_image", "load_images", "add_noise"]

TRAIN = ("camera", "astronaut", "coffee", "chelsea", "text")
VALIDATION = ("clock", "page", "cell")
IMAGES = TRAIN + VALIDATION


def _raw(name: str) -> np.ndarray:
    from skimage import data

    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}; available (offline): {', '.join(IMAGES)}.")
    return getattr(data, name)()


def load_image(name: str, size: int | None = 256) -> np.ndarray:
    """Grayscale float64 image in [0, 1], resized (shorter side = ``size``, anti-aliased) and
    centre-cropped to ``size``×``size``; ``size=None`` returns the full image unchanged."""
    from skimage.color import rgb2gray
    from skimage.transform import resize
    from skimage.util import img_as_float

    img = _raw(name)
    img = rgb2gray(img) if img.ndim == 3 else img_as_float(img)
    img = np.asarray(img, dtype=np.float64)
    if size is None:
        return img
    size = int(size)
    if size < 2:
        raise ValueError(f"size must be an integer >= 2 (or None); got {size!r}.")
    h, w = img.shape
    scale = size / min(h, w)
    if scale != 1.0:
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        img = resize(img, new, anti_aliasing=scale < 1, preserve_range=True)
    h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return np.clip(img[top : top + size, left : left + size], 0.0, 1.0)


def load_images(names, size: int = 256) -> np.ndarray:
    """A stack (n, size, size) of :func:`load_image` results."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("load_images needs at least one image name.")
    return np.stack([load_image(n, size) for n in names])


def add_noise(images, sigma: float, seed: int = 0) -> np.ndarray:
    """images + σ·ε with ε ~ N(0, I) drawn from ``numpy.random.default_rng(seed)`` (not
    clipped, so the noise stays Gaussian as SURE assumes)."""
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"add_noise: sigma must be > 0; got {sigma!r}.")
    images = np.asarray(images, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return images + sigma * rng.standard_normal(images.shape)
