"""Enhance stage: edge-preserving denoising at full resolution.

The default, ``"vst_wavelet"``, was chosen by measurement (``benchmarks/denoise.py``): X-ray noise is
Poisson-Gaussian (its variance grows with the signal), so the image is first stabilised with the
generalised Anscombe transform, using a noise-level function ``var = alpha * value + beta`` fitted
on the image itself (Foi et al. 2008, simplified: robust variance of the finest Haar diagonal
coefficients against the local mean); the stabilised image has unit noise, which BayesShrink soft
thresholding of a ``sym8`` decomposition (at least 5 levels) removes; the inverse transform brings
it back. About 0.4 s for 2048x2048 on two cores, within about 0.1-0.7 dB of BM3D in PSNR.

``"jinv_wavelet"`` is the self-supervised variant: the threshold scale is chosen by J-invariant
calibration (Batson and Royer, Noise2Self, 2019) on a central crop, with no clean image. The older
methods stay for comparison and per-modality configuration: ``"wavelet"`` (Haar BayesShrink on the
display values, the first default), ``"bilateral"``, ``"tv"`` and ``"nlmeans"``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import pywt
from scipy import ndimage

from miemss_node.pipeline.base import DecodedImage, EnhancedImage
from miemss_node.pipeline.wavelet import bayes_shrink, noise_sigma

logger = logging.getLogger(__name__)

#: Weight of the total-variation method; small, since pixels are in [0, 1] and edges matter.
_TV_WEIGHT = 0.02

#: Frames smaller than this on a side are passed through: too small to estimate noise.
_MIN_SIDE = 8

#: Wavelet of ``vst_wavelet``; sym8 beat db1, db2, db4, sym4, coif3 and bior4.4 after the transform.
_VST_WAVELET = "sym8"
#: At least this many levels: skimage's default (max - 3) leaves coarse noise at high noise levels.
_VST_MIN_LEVELS = 5
#: Bins of the local mean for the noise-level fit, and the fewest coefficients per bin.
_NLF_BINS = 20
_NLF_MIN_PER_BIN = 200
#: Below this alpha / beta ratio the noise is treated as signal-independent.
_MIN_ALPHA = 1e-6
#: Side of the central crop used by the J-invariant calibration, and the scales it tries.
_CALIBRATION_CROP = 384
_CALIBRATION_SCALES = (0.7, 0.85, 1.0, 1.2, 1.45)


# The wavelet methods use :mod:`~miemss_node.pipeline.wavelet`; the others import scikit-image's
# restoration module where they run, since it imports scipy.stats (0.7 s of a cold start).


def _wavelet(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return bayes_shrink(pixels, sigma, "db1")


def _bilateral(pixels: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_bilateral

    return denoise_bilateral(pixels, win_size=5, sigma_color=max(3.0 * sigma, 0.01), sigma_spatial=1.5)


def _tv(pixels: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(pixels, weight=_TV_WEIGHT, max_num_iter=50)


def _nlmeans(pixels: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(pixels, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=5, fast_mode=True)


def _vst_wavelet(pixels: np.ndarray, sigma: float, scale: float = 1.0) -> np.ndarray:
    """Generalised Anscombe transform, sym8 BayesShrink at unit noise, then the inverse."""
    if pywt.dwtn_max_level(pixels.shape, _VST_WAVELET) < 1:
        # Smaller than the sym8 filter (16 px): no decomposition level fits, nothing to threshold.
        return pixels.copy()
    alpha, beta = noise_level_function(pixels, fallback_sigma=sigma)
    stabilised, inverse = _anscombe(pixels, alpha, beta)
    levels = _levels(pixels.shape)
    return inverse(bayes_shrink(stabilised, scale, _VST_WAVELET, levels))


def _jinv_wavelet(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`_vst_wavelet` with its threshold scale chosen by J-invariant calibration."""
    return _vst_wavelet(pixels, sigma, scale=calibrated_scale(pixels, sigma))


def calibrated_scale(pixels: np.ndarray, sigma: float) -> float:
    """The threshold scale of ``vst_wavelet`` with the lowest J-invariant loss on a central crop.

    The loss of a J-invariant denoiser against the noisy image itself tracks its loss against the
    clean image (Batson and Royer 2019), so no clean data is needed.
    """
    from skimage.restoration import calibrate_denoiser

    rows, cols = pixels.shape
    half = _CALIBRATION_CROP // 2
    crop = pixels[max(0, rows // 2 - half) : rows // 2 + half, max(0, cols // 2 - half) : cols // 2 + half]
    if min(crop.shape) < 2 * _MIN_SIDE:
        return 1.0
    with warnings.catch_warnings():
        # pywt warns about boundary effects on the small, masked crops the calibration makes.
        warnings.filterwarnings("ignore", message="Level value of", category=UserWarning)
        _, (parameters, losses) = calibrate_denoiser(
            crop,
            lambda image, scale: _vst_wavelet(image, sigma, scale=scale),
            {"scale": list(_CALIBRATION_SCALES)},
            extra_output=True,
        )
    return float(parameters[int(np.argmin(losses))]["scale"])


def noise_level_function(pixels: np.ndarray, fallback_sigma: float = 0.0) -> tuple[float, float]:
    """Fit the noise variance as ``alpha * value + beta`` (Poisson-Gaussian) on the image itself.

    The finest Haar diagonal coefficient of each 2x2 block is, for a smooth image, pure noise with
    the block's variance; its robust variance (MAD) is taken per bin of the local mean and a line is
    fitted through the bins.

    Parameters
    ----------
    pixels
        2-D float image in [0, 1].
    fallback_sigma
        Gaussian noise level used when the fit fails (too few pixels or a flat image).

    Returns
    -------
    tuple of float
        (alpha, beta), both >= 0.
    """
    rows, cols = (pixels.shape[0] // 2) * 2, (pixels.shape[1] // 2) * 2
    blocks = pixels[:rows, :cols].astype(np.float32)
    top_left, top_right = blocks[0::2, 0::2], blocks[0::2, 1::2]
    bottom_left, bottom_right = blocks[1::2, 0::2], blocks[1::2, 1::2]
    diagonal = (top_left - top_right - bottom_left + bottom_right) / 2
    local_mean = ndimage.uniform_filter((top_left + top_right + bottom_left + bottom_right) / 4, size=3)
    means: list[float] = []
    variances: list[float] = []
    if diagonal.size >= _NLF_BINS * _NLF_MIN_PER_BIN:
        edges = np.quantile(local_mean, np.linspace(0.02, 0.98, _NLF_BINS + 1))
        which = np.digitize(local_mean, edges)
        for k in range(1, _NLF_BINS + 1):
            selected = which == k
            if int(selected.sum()) < _NLF_MIN_PER_BIN:
                continue
            mad = float(np.median(np.abs(diagonal[selected])))
            means.append(float(local_mean[selected].mean()))
            variances.append((mad / 0.6745) ** 2)
    if len(means) >= 3 and np.ptp(means) > 0:
        alpha, beta = np.polyfit(np.asarray(means), np.asarray(variances), 1)
        alpha, beta = max(float(alpha), 0.0), max(float(beta), 0.0)
        if alpha > 0 or beta > 0:
            return alpha, beta
    return 0.0, float(fallback_sigma) ** 2


def _anscombe(
    pixels: np.ndarray, alpha: float, beta: float
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The generalised Anscombe transform for ``var = alpha * x + beta`` and its algebraic inverse."""
    if alpha <= _MIN_ALPHA * max(beta, 1e-12) or alpha <= 1e-12:
        # Signal-independent noise: a plain scaling to unit variance.
        scale = 1.0 / np.sqrt(max(beta, 1e-12))
        return pixels * np.float32(scale), lambda z: z / np.float32(scale)
    offset = 0.375 * alpha * alpha + beta
    stabilised = (2.0 / alpha) * np.sqrt(np.maximum(alpha * pixels + offset, 0.0))

    def inverse(z: np.ndarray) -> np.ndarray:
        return (np.square(alpha * z / 2.0) - offset) / alpha

    return stabilised.astype(np.float32), inverse


def _levels(shape: tuple[int, ...]) -> int:
    """Decomposition levels: skimage's default (three fewer than the maximum), at least
    :data:`_VST_MIN_LEVELS`, never more than the maximum (pywt warns beyond it)."""
    most = int(pywt.dwtn_max_level(shape, _VST_WAVELET))
    return max(1, min(most, max(_VST_MIN_LEVELS, most - 3)))


def _none(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return pixels.copy()


#: The denoising methods by configured name.
METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "wavelet": _wavelet,
    "bilateral": _bilateral,
    "tv": _tv,
    "nlmeans": _nlmeans,
    "vst_wavelet": _vst_wavelet,
    "jinv_wavelet": _jinv_wavelet,
    "none": _none,
}

#: The default method, chosen by ``benchmarks/denoise.py``.
DEFAULT_METHOD = "vst_wavelet"


def enhance(image: DecodedImage, method: str = DEFAULT_METHOD) -> EnhancedImage:
    """Denoise a decoded frame while keeping its edges.

    Parameters
    ----------
    image
        The decoded frame (float32 in [0, 1]).
    method
        A name of :data:`METHODS`; ``"vst_wavelet"`` by default.

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
        # noise_sigma takes the median of the non-zero diagonal coefficients; a piecewise flat
        # frame has none, and numpy warns about the empty slice before returning nan.
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        sigma = noise_sigma(pixels)
    return sigma if np.isfinite(sigma) else 0.0
