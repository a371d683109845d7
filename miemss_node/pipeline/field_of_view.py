"""Field of view: where in the working image the patient is, so that only those patches are scored.

Radiographs carry much that is not anatomy: constant padding and shutter areas, collimated (near
white) and direct-exposure (near black) background, burned-in letters and markers. Those are the most
"unusual" patches of any image, so without a field-of-view mask the anomaly stage would flag them
first. The mask is deliberately simple: pixels that are neither near-black, near-white nor locally
flat, cleaned by a morphological opening, restricted to the large connected parts, with holes filled
(a saturated structure inside the body, such as metal or a dense lesion, stays in the field).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

logger = logging.getLogger(__name__)

#: Display values at or below this are background (direct exposure, black padding).
DARK_LEVEL = 0.04
#: Display values at or above this are background (clipped collimation, white padding, burned-in
#: text). Only clipped values: a dense abdomen or heart shadow is nearly as bright.
BRIGHT_LEVEL = 0.99
#: A pixel whose neighbourhood has a standard deviation below this is flat: constant padding or
#: shutters. Far below the texture of denoised anatomy (about 1e-3 in a smooth abdomen).
FLAT_STD = 2e-4
#: Connected parts of the field smaller than this fraction of the largest one are dropped.
MIN_PART_FRACTION = 0.05
#: A patch is valid when at least this fraction of its pixels is in the field.
MIN_PATCH_COVERAGE = 0.9


def field_mask(working: np.ndarray) -> np.ndarray:
    """Return the field-of-view mask of a working-resolution image.

    Parameters
    ----------
    working
        A 2-D float image in [0, 1], display-oriented (higher is brighter).

    Returns
    -------
    numpy.ndarray
        Boolean, same shape; True inside the field of view. All False for a flat image.
    """
    image = np.asarray(working, dtype=np.float32)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    smooth = ndimage.uniform_filter(image, size=3)
    field = (smooth > DARK_LEVEL) & (smooth < BRIGHT_LEVEL) & (_local_std(image, size=7) >= FLAT_STD)
    radius = max(1, min(image.shape) // 128)
    field = ndimage.binary_opening(field, structure=disk(radius))
    field = _large_parts(field)
    return ndimage.binary_fill_holes(field)


def patch_validity(field: np.ndarray, patch: int, grid_shape: tuple[int, int]) -> np.ndarray:
    """Say which patches of a regular grid lie inside the field of view.

    Parameters
    ----------
    field
        The mask from :func:`field_mask`.
    patch
        Patch side in working pixels; the grid starts at the top left corner.
    grid_shape
        (rows, cols) of the patch grid.

    Returns
    -------
    numpy.ndarray
        Boolean of shape ``grid_shape``; True where at least :data:`MIN_PATCH_COVERAGE` of the
        patch is in the field eroded by half a patch.
    """
    rows, cols = grid_shape
    # Erode by half a patch: a patch that touches the edge of the field holds the skin line or the
    # collimator edge, the strongest and least interesting edges of the image. The image's own
    # border counts as an edge too: shutters, markers and labels sit there, and a patch on it
    # has neighbours on one side only.
    margin = patch // 2
    if margin:
        field = ndimage.binary_erosion(field, structure=disk(margin))
    cropped = field[: rows * patch, : cols * patch].astype(np.float32)
    coverage = cropped.reshape(rows, patch, cols, patch).mean(axis=(1, 3))
    return coverage >= MIN_PATCH_COVERAGE


def _local_std(image: np.ndarray, size: int) -> np.ndarray:
    mean = ndimage.uniform_filter(image, size=size)
    mean_sq = ndimage.uniform_filter(image * image, size=size)
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def _large_parts(field: np.ndarray) -> np.ndarray:
    """Keep the connected parts of at least MIN_PART_FRACTION of the largest one."""
    labels, count = ndimage.label(field)
    if count <= 1:
        return field
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= MIN_PART_FRACTION * sizes.max()
    return keep[labels]

