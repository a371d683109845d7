"""Features stage: a feature vector per patch of a regular grid over a downscaled working image.

Per patch: a HOG histogram (Dalal and Triggs; one cell per block, so each patch is normalised on its
own and describes edge directions regardless of contrast), plus the patch's mean, standard deviation
and mean gradient magnitude, which HOG's normalisation throws away. The working image keeps
computation independent of the detector size; ``patch_size_px`` maps the grid back to the source.
"""

from __future__ import annotations

import logging

import numpy as np
from skimage.feature import hog
from skimage.transform import resize

from miemss_node.pipeline.base import EnhancedImage, PatchFeatures, PipelineSettings
from miemss_node.pipeline.field_of_view import field_mask, patch_validity

logger = logging.getLogger(__name__)

#: HOG orientation bins (unsigned gradients, 0-180 degrees).
HOG_ORIENTATIONS = 9

#: Names of the per-patch statistics appended after the HOG bins.
STATISTICS = ("mean", "std", "gradient")


def working_shape(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Shape of the working image: the longest side at most ``max_side``, aspect kept, never upscaled."""
    rows, cols = shape
    scale = min(1.0, max_side / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def effective_patch(work_shape: tuple[int, int], patch_size: int) -> int:
    """Patch side in working pixels: ``patch_size``, or the short side of a smaller image."""
    return max(1, min(patch_size, *work_shape))


def to_working(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale an image (with anti-aliasing) to :func:`working_shape`, as float32."""
    target = working_shape(pixels.shape, max_side)
    if target == pixels.shape:
        return np.asarray(pixels, dtype=np.float32)
    return resize(pixels, target, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def patch_features(enhanced: EnhancedImage, settings: PipelineSettings) -> PatchFeatures:
    """Compute HOG and intensity features for each patch of the working image.

    Parameters
    ----------
    enhanced
        The enhanced frame at source resolution.
    settings
        ``analysis_max_side`` sets the working image, ``patch_size`` the patch in its pixels.

    Returns
    -------
    PatchFeatures
        Row-major vectors of ``HOG_ORIENTATIONS + 3`` columns, the grid shape, the patch size in
        source pixels and the field-of-view validity of each patch.
    """
    source_shape = enhanced.pixels.shape
    work = to_working(enhanced.pixels, settings.analysis_max_side)
    patch = effective_patch(work.shape, settings.patch_size)
    grid = (work.shape[0] // patch, work.shape[1] // patch)
    histograms = hog(
        work,
        orientations=HOG_ORIENTATIONS,
        pixels_per_cell=(patch, patch),
        cells_per_block=(1, 1),
        feature_vector=False,
    ).reshape(grid[0] * grid[1], HOG_ORIENTATIONS)
    vectors = np.hstack([histograms, _statistics(work, patch, grid)]).astype(np.float32)
    valid = patch_validity(field_mask(work), patch, grid)
    logger.debug(
        "features on a %dx%d grid, %d valid patches", grid[0], grid[1], int(valid.sum()), extra={"action": "features"}
    )
    return PatchFeatures(
        vectors=vectors,
        grid_shape=grid,
        patch_size_px=(patch * source_shape[0] / work.shape[0], patch * source_shape[1] / work.shape[1]),
        extractors=("hog",),
        valid=valid,
    )


def _statistics(work: np.ndarray, patch: int, grid: tuple[int, int]) -> np.ndarray:
    """Mean, standard deviation and mean gradient magnitude of every patch, row-major."""
    rows, cols = grid

    def blocks(image: np.ndarray) -> np.ndarray:
        return image[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch)

    grad_rows, grad_cols = np.gradient(work) if min(work.shape) > 1 else (work * 0, work * 0)
    intensity = blocks(work)
    gradient = blocks(np.hypot(grad_rows, grad_cols))
    return np.stack(
        [intensity.mean(axis=(1, 3)).ravel(), intensity.std(axis=(1, 3)).ravel(), gradient.mean(axis=(1, 3)).ravel()],
        axis=1,
    )
