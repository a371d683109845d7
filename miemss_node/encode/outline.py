"""Region outlines as polygons in DICOM image coordinates, for SR SCOORDs and GSPS graphics.

DICOM 2-D image coordinates are (column, row) with the top left corner of the top left pixel at
(0, 0), so the centre of pixel [r, c] is (c + 0.5, r + 0.5) (PS3.3 C.18.6.1.1, C.10.5.1.2). The
outline follows the region's boundary, half a pixel outside the centres of its edge pixels.
"""

from __future__ import annotations

import numpy as np

from miemss_node.encode.polygon import approximate_polygon

#: Largest distance, in pixels, between the outline and the boundary it simplifies.
TOLERANCE_PX = 0.75

#: Most points an outline keeps; viewers draw thousands slowly and the SR grows.
MAX_POINTS = 400


def region_outline(labels: np.ndarray, label: int) -> np.ndarray:
    """The closed outline of one region, as (column, row) points in DICOM image coordinates.

    Parameters
    ----------
    labels
        Label image (0 = background) at the source's size.
    label
        The region's label.

    Returns
    -------
    numpy.ndarray
        float32, shape (n, 2), n >= 4; the last point repeats the first (a closed POLYLINE).
        For a region of several pieces, the outline of the largest.

    Raises
    ------
    ValueError
        When no pixel has the label.
    """
    from skimage.measure import find_contours

    mask = np.asarray(labels) == label
    if not mask.any():
        raise ValueError(f"no pixel is labelled {label}")
    # The region's bounding box from its rows' and columns' projections (cheaper than np.nonzero).
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    # A one-pixel margin closes contours that touch the crop's border.
    crop = np.pad(mask[top : int(rows[-1]) + 1, left : int(cols[-1]) + 1], 1).astype(np.float32)
    contours = find_contours(crop, 0.5)
    longest = max(contours, key=len)
    tolerance = TOLERANCE_PX
    simplified = approximate_polygon(longest, tolerance=tolerance)
    while len(simplified) > MAX_POINTS:
        tolerance *= 2
        simplified = approximate_polygon(longest, tolerance=tolerance)
    if len(simplified) < 4:
        simplified = longest
    # Back to source indices (undo the crop and the margin), then to DICOM's pixel-corner origin.
    points_rc = simplified + np.array([top - 1 + 0.5, left - 1 + 0.5])
    outline = np.stack([points_rc[:, 1], points_rc[:, 0]], axis=1).astype(np.float32)
    if not np.array_equal(outline[0], outline[-1]):
        outline = np.vstack([outline, outline[:1]])
    return outline
