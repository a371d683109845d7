"""Regions stage: patch scores to a heatmap, a mask and measured regions at the source size.

The patch scores are interpolated bilinearly between patch centres. Thresholding, morphology
(opening, then closing) and labelling run at the working resolution, where they are cheap; the labels
are then upsampled to the source with nearest neighbour, and areas, centroids and bounding boxes are
measured there, in source pixels and (with a known pixel spacing) mm².
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from miemss_node.pipeline.base import (
    AnomalyScores,
    DecodedImage,
    PatchFeatures,
    PipelineSettings,
    Region,
    RegionMap,
)
from miemss_node.pipeline.features import working_shape

logger = logging.getLogger(__name__)

#: At most this many regions are kept (the strongest), so a report stays readable.
MAX_REGIONS = 10

#: 8-connectivity for labelling: diagonal neighbours belong to the same region.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def find_regions(
    scores: AnomalyScores, features: PatchFeatures, image: DecodedImage, settings: PipelineSettings
) -> RegionMap:
    """Turn patch scores into a heatmap, a label image and regions.

    Parameters
    ----------
    scores
        Patch scores in [0, 1] on ``features.grid_shape``.
    features
        Gives the grid, the patch size in source pixels and the field-of-view validity.
    image
        The decoded frame: its shape and pixel spacing.
    settings
        ``threshold`` on the heatmap, ``min_region_area_mm2`` (source pixels when the spacing is
        unknown) and ``analysis_max_side`` for the working resolution.

    Returns
    -------
    RegionMap
        Heatmap (float32) and labels (uint16) of the source's shape; regions labelled 1..N in
        decreasing order of max score, then mean score; N is at most :data:`MAX_REGIONS`.
    """
    source_shape = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
    work_shape = working_shape(source_shape, settings.analysis_max_side)
    work_heat = heatmap(scores.scores, features.patch_size_px, source_shape, work_shape)
    inside = _valid_pixels(features, source_shape, work_shape)
    work_labels, stats = _label_work(work_heat, inside, settings, image.pixel_spacing_mm, source_shape)
    labels = _upsample_nearest(work_labels, source_shape)
    regions = _measure(labels, stats, image.pixel_spacing_mm)
    logger.debug(
        "%d region(s)", len(regions), extra={"action": "regions.found", "sop_instance_uid": image.sop_instance_uid}
    )
    return RegionMap(
        heatmap=heatmap(scores.scores, features.patch_size_px, source_shape, source_shape),
        labels=labels,
        regions=regions,
    )


def heatmap(
    grid_scores: np.ndarray,
    patch_size_px: tuple[float, float],
    source_shape: tuple[int, int],
    out_shape: tuple[int, int],
) -> np.ndarray:
    """Interpolate patch scores bilinearly between patch centres onto an image of ``out_shape``.

    ``out_shape`` covers the whole source image; pixels beyond the outer patch centres take the
    nearest patch's value.
    """
    row_weights = _axis_weights(out_shape[0], grid_scores.shape[0], patch_size_px[0] * out_shape[0] / source_shape[0])
    col_weights = _axis_weights(out_shape[1], grid_scores.shape[1], patch_size_px[1] * out_shape[1] / source_shape[1])
    heat = row_weights @ grid_scores.astype(np.float32) @ col_weights.T
    return np.clip(heat, 0.0, 1.0).astype(np.float32, copy=False)


def location_words(centroid: tuple[float, float], shape: tuple[int, int]) -> str:
    """Describe where a point lies in the image, in thirds: "upper left" ... "central" ... "lower right".

    Left and right are the image's as displayed, not the patient's.
    """
    vertical = ("upper", "middle", "lower")[min(2, int(3 * centroid[0] / max(shape[0], 1)))]
    horizontal = ("left", "central", "right")[min(2, int(3 * centroid[1] / max(shape[1], 1)))]
    if vertical == "middle":
        return "central" if horizontal == "central" else f"middle {horizontal}"
    return f"{vertical} {horizontal}"


def _axis_weights(n_out: int, n_grid: int, patch: float) -> np.ndarray:
    """(n_out, n_grid) linear interpolation weights from patch centres to output pixel centres."""
    position = (np.arange(n_out, dtype=np.float64) + 0.5) / patch - 0.5
    position = np.clip(position, 0.0, n_grid - 1)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, n_grid - 1)
    fraction = (position - lower).astype(np.float32)
    weights = np.zeros((n_out, n_grid), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lower), 1.0 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


def _valid_pixels(features: PatchFeatures, source_shape: tuple[int, int], work_shape: tuple[int, int]) -> np.ndarray:
    """Working-resolution mask of the pixels covered by a valid patch (beyond the grid: invalid)."""
    grid_rows, grid_cols = features.grid_shape
    valid = np.ones(features.grid_shape, dtype=bool) if features.valid is None else features.valid.astype(bool)
    padded = np.zeros((grid_rows + 1, grid_cols + 1), dtype=bool)
    padded[:grid_rows, :grid_cols] = valid
    row_patch = features.patch_size_px[0] * work_shape[0] / source_shape[0]
    col_patch = features.patch_size_px[1] * work_shape[1] / source_shape[1]
    rows = np.minimum(((np.arange(work_shape[0]) + 0.5) / row_patch).astype(np.intp), grid_rows)
    cols = np.minimum(((np.arange(work_shape[1]) + 0.5) / col_patch).astype(np.intp), grid_cols)
    return padded[np.ix_(rows, cols)]


def _label_work(
    heat: np.ndarray,
    inside: np.ndarray,
    settings: PipelineSettings,
    spacing: tuple[float, float] | None,
    source_shape: tuple[int, int],
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Threshold, clean and label at working resolution; keep the strongest regions, relabelled.

    Returns the uint16 label image and (max score, mean score) of regions 1..N.
    """
    mask = (heat >= settings.threshold) & inside
    radius = max(1, round(min(heat.shape) / 256))
    structure = disk(radius)
    mask = ndimage.binary_closing(ndimage.binary_opening(mask, structure=structure), structure=structure) & inside
    labels, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count == 0:
        return np.zeros(heat.shape, dtype=np.uint16), []
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    maxima = np.asarray(ndimage.maximum(heat, labels, index), dtype=np.float64)
    means = np.asarray(ndimage.mean(heat, labels, index), dtype=np.float64)
    big_enough = areas >= _min_area_work_px(settings.min_region_area_mm2, spacing, source_shape, heat.shape)
    order = [i for i in np.lexsort((-means, -maxima)) if big_enough[i]][:MAX_REGIONS]
    lookup = np.zeros(count + 1, dtype=np.uint16)
    lookup[np.asarray(order, dtype=np.intp) + 1] = np.arange(1, len(order) + 1, dtype=np.uint16)
    return lookup[labels], [(float(maxima[i]), float(means[i])) for i in order]


def _min_area_work_px(
    min_area: float, spacing: tuple[float, float] | None, source_shape: tuple[int, int], work_shape: tuple[int, ...]
) -> float:
    """The minimum region area (mm², or source px without spacing) in working pixels."""
    source_px_per_work_px = (source_shape[0] / work_shape[0]) * (source_shape[1] / work_shape[1])
    unit_per_source_px = 1.0 if spacing is None else spacing[0] * spacing[1]
    return min_area / (source_px_per_work_px * unit_per_source_px)


def _upsample_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def _measure(
    labels: np.ndarray, stats: list[tuple[float, float]], spacing: tuple[float, float] | None
) -> tuple[Region, ...]:
    """Measure regions 1..N of the source label image."""
    if not stats:
        return ()
    index = np.arange(1, len(stats) + 1)
    areas = np.bincount(labels.ravel(), minlength=len(stats) + 1)
    centroids = ndimage.center_of_mass(np.ones(labels.shape, dtype=np.float32), labels, index)
    boxes = ndimage.find_objects(labels, max_label=len(stats))
    regions = []
    for label, (max_score, mean_score), centroid, box in zip(index, stats, centroids, boxes, strict=True):
        area_px = int(areas[label])
        center = (float(centroid[0]), float(centroid[1]))
        regions.append(
            Region(
                label=int(label),
                area_px=area_px,
                area_mm2=None if spacing is None else area_px * spacing[0] * spacing[1],
                centroid=center,
                bbox=(box[0].start, box[1].start, box[0].stop, box[1].stop),
                mean_score=mean_score,
                max_score=max_score,
                location=f"{location_words(center, labels.shape)} of the image",
            )
        )
    return tuple(regions)



def draft_region(
    label: int,
    location: str,
    *,
    side: str | None = None,
    zone: str | None = None,
    kind: str = "patch",
    pathology: str | None = None,
) -> Region:
    """A region before :func:`measure_drafts` measures it: its words, side, zone and kind set, its
    area, centroid, box and scores zero until then."""
    return Region(
        label=label,
        area_px=0,
        area_mm2=None,
        centroid=(0.0, 0.0),
        bbox=(0, 0, 0, 0),
        mean_score=0.0,
        max_score=0.0,
        location=location,
        side=side,
        zone=zone,
        kind=kind,
        pathology=pathology,
    )


def measure_drafts(
    labels: np.ndarray, heat: np.ndarray, drafts: Sequence[Region], spacing: tuple[float, float] | None
) -> RegionMap:
    """Measure drafted regions at source resolution and number them by score.

    Parameters
    ----------
    labels
        Label image of the source's shape: draft ``k`` (1-based, ``drafts[k - 1].label == k``) is label k.
    heat
        Heatmap of the same shape; a region's mean and peak scores are taken from it.
    drafts
        Regions whose words, side, zone and kind are set; their measurements are filled in here.
    spacing
        Pixel spacing in mm, for areas; None leaves ``area_mm2`` None.

    Returns
    -------
    RegionMap
        Empty drafts (wholly overlapped by an earlier one) are dropped; the rest are relabelled 1..N by
        decreasing peak, then mean, score.
    """
    count = len(drafts)
    if count == 0:
        return RegionMap(heatmap=heat.astype(np.float32), labels=np.zeros(labels.shape, dtype=np.uint16), regions=())
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    # An empty draft's centroid and mean are NaN; it is dropped below.
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = _centroids(labels, areas, count)
    boxes = ndimage.find_objects(labels, max_label=count)
    # Within each region's box: a scan of the whole film per region is most of this function's time.
    inside = [None if box is None else heat[box][labels[box] == k] for k, box in enumerate(boxes, start=1)]
    means = [math.nan if values is None or not values.size else float(values.mean(dtype=np.float64)) for values in inside]
    maxima = [math.nan if values is None or not values.size else float(values.max()) for values in inside]
    measured = []
    for draft, centroid, box, mean, peak in zip(drafts, centroids, boxes, means, maxima, strict=True):
        area = int(areas[draft.label])
        if box is None or area == 0:
            continue
        measured.append(
            replace(
                draft,
                area_px=area,
                area_mm2=None if spacing is None else area * spacing[0] * spacing[1],
                centroid=(float(centroid[0]), float(centroid[1])),
                bbox=(box[0].start, box[1].start, box[0].stop, box[1].stop),
                mean_score=float(mean),
                max_score=float(peak),
            )
        )
    ordered = sorted(measured, key=lambda region: (-region.max_score, -region.mean_score))
    relabel = np.zeros(count + 1, dtype=np.uint16)
    for new_label, region in enumerate(ordered, start=1):
        relabel[region.label] = new_label
    return RegionMap(
        heatmap=heat.astype(np.float32),
        labels=relabel[labels],
        regions=tuple(replace(region, label=new_label) for new_label, region in enumerate(ordered, start=1)),
    )


def _centroids(labels: np.ndarray, areas: np.ndarray, count: int) -> list[tuple[float, float]]:
    """Centroid (row, column) of labels 1..count; NaN for an empty one.

    Per-row and per-column label counts, weighted by their index: the same figures as
    ``ndimage.center_of_mass`` of a ones image, a tenth of its time on a 2k film.
    """
    rows, cols = labels.shape
    per_row = np.zeros((count + 1, rows))
    per_col = np.zeros((count + 1, cols))
    for label in range(1, count + 1):
        inside = labels == label
        per_row[label] = inside.sum(axis=1)
        per_col[label] = inside.sum(axis=0)
    row_sum = per_row @ np.arange(rows, dtype=np.float64)
    col_sum = per_col @ np.arange(cols, dtype=np.float64)
    return [(row_sum[k] / areas[k], col_sum[k] / areas[k]) for k in range(1, count + 1)]
