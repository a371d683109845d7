"""Enhance stage: edge-preserving denoising at full resolution.

The default, ``"wavelet"``, is BayesShrink soft thresholding of a Haar (``db1``) decomposition with
the noise level estimated from the finest diagonal sub-band (Donoho's MAD estimator); it takes about
0.3-0.4 s for a 2048x2048 image on two cores. The other methods are there for comparison and
per-modality configuration: at that size ``"bilateral"`` takes about 0.7 s, ``"nlmeans"`` about 3 s
and ``"tv"`` about 3.5 s.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
from skimage.restoration import (
    denoise_bilateral,
    denoise_nl_means,
    denoise_tv_chambolle,
    denoise_wavelet,
    estimate_sigma,
)

from miemss_node.pipeline.base import DecodedImage, EnhancedImage

logger = logging.getLogger(__name__)

#: Weight of the total-variation method; small, since pixels are in [0, 1] and edges matter.
_TV_WEIGHT = 0.02

#: Frames smaller than this on a side are passed through: too small to estimate noise.
_MIN_SIDE = 8


def _wavelet(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_wavelet(pixels, sigma=sigma, wavelet="db1", method="BayesShrink", mode="soft", rescale_sigma=True)


def _bilateral(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_bilateral(pixels, win_size=5, sigma_color=max(3.0 * sigma, 0.01), sigma_spatial=1.5)


def _tv(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_tv_chambolle(pixels, weight=_TV_WEIGHT, max_num_iter=50)


def _nlmeans(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return denoise_nl_means(pixels, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=5, fast_mode=True)


def _none(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return pixels.copy()


#: The denoising methods by configured name.
METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "wavelet": _wavelet,
    "bilateral": _bilateral,
    "tv": _tv,
    "nlmeans": _nlmeans,
    "none": _none,
}


def enhance(image: DecodedImage, method: str = "wavelet") -> EnhancedImage:
    """Denoise a decoded frame while keeping its edges.

    Parameters
    ----------
    image
        The decoded frame (float32 in [0, 1]).
    method
        One of ``"wavelet"`` (default), ``"bilateral"``, ``"tv"``, ``"nlmeans"`` or ``"none"``.

    Returns
    -------
    EnhancedImage
        Same shape as the input, float32 in [0, 1].

    Raises
    ------
    ValueError
        If ``method`` is not one of the names above.
    """
    denoise = METHODS.get(method)
    if denoise is None:
        raise ValueError(f"unknown denoise method {method!r}; valid methods: {', '.join(METHODS)}")
    pixels = np.asarray(image.pixels, dtype=np.float32)
    sigma = _noise_sigma(pixels) if min(pixels.shape) >= _MIN_SIDE and method != "none" else 0.0
    # No measurable noise (a flat or tiny frame): there is nothing to denoise.
    out = denoise(pixels, sigma) if sigma > 0 else pixels.copy()
    out = np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0).astype(np.float32, copy=False)
    logger.debug(
        "denoised with %s", method, extra={"action": "enhance.denoised", "sop_instance_uid": image.sop_instance_uid}
    )
    return EnhancedImage(pixels=out, method=method)


def _noise_sigma(pixels: np.ndarray) -> float:
    """Noise standard deviation estimated from the finest wavelet sub-band (0 when flat)."""
    with warnings.catch_warnings():
        # estimate_sigma takes the median of the non-zero diagonal coefficients; a piecewise flat
        # frame has none, and numpy warns about the empty slice before returning nan.
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        sigma = float(estimate_sigma(pixels))
    return sigma if np.isfinite(sigma) else 0.0
