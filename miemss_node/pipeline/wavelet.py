"""Wavelet BayesShrink denoising and the Donoho-Johnstone noise estimate, with PyWavelets alone.

The same arithmetic as scikit-image 0.26's ``denoise_wavelet(..., method="BayesShrink")`` on a float
image and its ``estimate_sigma`` (``tests/unit/test_wavelet.py`` checks them bit for bit). Importing
``skimage.restoration`` imports ``scipy.stats`` for one constant, the normal distribution's 75th
percentile: 0.7 s of every cold start, for an enhance stage that needs neither.
"""

from __future__ import annotations

import numpy as np
import pywt

#: The standard normal distribution's 75th percentile (``scipy.stats.norm.ppf(0.75)``): the median
#: absolute value of Gaussian noise of unit spread.
NORMAL_MAD = 0.6744897501960817


def bayes_shrink(image: np.ndarray, sigma: float, wavelet: str, levels: int | None = None) -> np.ndarray:
    """Soft-threshold every detail band of a float image at its BayesShrink threshold (Chang, Yu and
    Vetterli 2000) for noise of spread ``sigma``.

    Parameters
    ----------
    image
        2-D float image (its dtype is kept).
    sigma
        The noise's standard deviation.
    wavelet
        A PyWavelets wavelet name.
    levels
        Decomposition levels; None: three fewer than the most the image allows, at least one.
    """
    if levels is None:
        levels = max(int(pywt.dwtn_max_level(image.shape, wavelet)) - 3, 1)
    coeffs = pywt.wavedecn(image, wavelet=wavelet, level=levels)
    variance = sigma**2
    details = [
        {key: pywt.threshold(band, value=_bayes_threshold(band, variance), mode="soft") for key, band in level.items()}
        for level in coeffs[1:]
    ]
    # An odd-sized image comes back one sample larger (PyWavelets issue #80).
    extent = tuple(slice(size) for size in image.shape)
    return np.asarray(pywt.waverecn([coeffs[0], *details], wavelet)[extent]).astype(image.dtype)


def noise_sigma(image: np.ndarray) -> float:
    """The noise's standard deviation from the finest diagonal ``db2`` band: its median absolute
    value over :data:`NORMAL_MAD` (Donoho and Johnstone 1994), exact zeros left out."""
    diagonal = pywt.dwtn(image, wavelet="db2")["d" * image.ndim]
    diagonal = diagonal[np.nonzero(diagonal)]
    return float(np.float64(np.median(np.abs(diagonal))) / NORMAL_MAD)


def _bayes_threshold(band: np.ndarray, variance: float) -> float:
    """The BayesShrink threshold of one detail band: noise variance over the signal's spread."""
    band_variance = np.mean(band * band)
    eps = np.finfo(band.dtype).eps
    return float(variance / np.sqrt(max(band_variance - variance, eps)))
