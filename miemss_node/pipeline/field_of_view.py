"""Field of view: where in the working image the patient is, so that only those patches are scored.

Radiographs carry much that is not anatomy: constant padding and shutter areas, collimated (near
white) and direct-exposure (near black) background, burned-in letters and markers. Those are the most
"unusual" patches of any image, so without a field-of-view mask the anomaly stage would flag them
first. The mask is deliberately simple: pixels that are neither near-black, near-white nor locally
flat, cleaned by a morphological opening, restricted to the large connected parts, with holes filled
(a saturated structure inside the body, such as metal or a dense lesion, stays in the field).

On a chest film the lungs are where nodules and opacities are looked for, and the mediastinum,
shoulders, diaphragm and abdomen hold the strongest normal structure, so :func:`lung_field` adds an
estimate of the lung fields: the two large dark parts of the body, one on each side, taller than wide,
each replaced by its convex hull (so that a dense lesion at a lung's edge stays inside). When no such
pair is found (not a PA/AP chest film), it returns None and the whole field of view is used.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import convex_hull_image, disk

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

#: A lung candidate covers at least this fraction of the image ...
LUNG_MIN_AREA = 0.03
#: ... spans at least this fraction of its height, and between these fractions of its width ...
LUNG_MIN_HEIGHT = 0.3
LUNG_WIDTH = (0.1, 0.45)
#: ... is at least this much taller than wide, with its centroid in this band of rows ...
LUNG_MIN_ASPECT = 1.1
LUNG_CENTROID_ROWS = (0.2, 0.7)
#: ... and is not near-black background (its median display value is at least this).
LUNG_MIN_LEVEL = 0.08
#: The larger lung is at most this many times the smaller one.
LUNG_MAX_AREA_RATIO = 2.5


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


def lung_field(working: np.ndarray, field: np.ndarray) -> np.ndarray | None:
    """Estimate the lung fields of a PA/AP chest film at working resolution.

    Parameters
    ----------
    working
        The working image, display-oriented (lungs dark).
    field
        Its field-of-view mask (:func:`field_mask`).

    Returns
    -------
    numpy.ndarray or None
        Boolean, True inside either lung's convex hull (and the field); None when the image does
        not show two lungs side by side.
    """
    rows, cols = working.shape
    if min(rows, cols) < 32:
        return None
    smooth = gaussian(np.asarray(working, dtype=np.float32), sigma=max(1.0, min(rows, cols) / 128))
    inner = ndimage.binary_erosion(field, structure=disk(max(1, min(rows, cols) // 64)))
    if inner.sum() < 0.1 * rows * cols:
        return None
    dark = (smooth < threshold_otsu(smooth[inner])) & inner
    # A wide opening breaks the thin links between a lung and the dark outside of the body.
    dark = ndimage.binary_opening(dark, structure=disk(max(1, min(rows, cols) // 40)))
    labels, _count = ndimage.label(dark)
    candidates = [p for p in regionprops(labels, intensity_image=smooth) if _lung_like(p, rows, cols)]
    left = [p for p in candidates if p.centroid[1] < cols / 2]
    right = [p for p in candidates if p.centroid[1] >= cols / 2]
    if not left or not right:
        return None
    lungs = [max(left, key=lambda p: p.area), max(right, key=lambda p: p.area)]
    if max(p.area for p in lungs) > LUNG_MAX_AREA_RATIO * min(p.area for p in lungs):
        return None
    hull = np.zeros((rows, cols), dtype=bool)
    for lung in lungs:
        hull |= convex_hull_image(labels == lung.label)
    return hull & field


def _lung_like(region: object, rows: int, cols: int) -> bool:
    """Whether a dark part of the body has the size, shape and place of a lung."""
    top, left, bottom, right = region.bbox  # type: ignore[attr-defined]
    height, width = (bottom - top) / rows, (right - left) / cols
    centroid_row = region.centroid[0] / rows  # type: ignore[attr-defined]
    touches_border = top == 0 or left == 0 or bottom == rows or right == cols
    level = float(np.median(region.image_intensity[region.image]))  # type: ignore[attr-defined]
    return (
        region.area >= LUNG_MIN_AREA * rows * cols  # type: ignore[attr-defined]
        and not touches_border
        and height >= LUNG_MIN_HEIGHT
        and LUNG_WIDTH[0] <= width <= LUNG_WIDTH[1]
        and height * rows >= LUNG_MIN_ASPECT * width * cols
        and LUNG_CENTROID_ROWS[0] <= centroid_row <= LUNG_CENTROID_ROWS[1]
        and level >= LUNG_MIN_LEVEL
    )


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

