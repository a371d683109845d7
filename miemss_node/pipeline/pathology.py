"""A chest classifier's output on a frame: findings, regions from its attribution, and its share of the score.

* **Findings.** A pathology whose probability reaches its threshold (``[models] chest_threshold``, per
  pathology in ``[models.chest_thresholds]``) is reported, as the model's output.
* **Regions.** Each reported pathology's Grad-CAM, inside the lungs (the hemithoraces, less what is
  not anatomy), is cut at :data:`ATTRIBUTION_FRACTION` of its peak there; the largest part is a region
  of kind "pathology". A pathology region keeps its pixels where it overlaps a region of the chest
  analysis (that region loses them): each region is one label of the label image, and the classifier's
  region is the more specific statement.
* **Heatmap.** Inside a pathology region the heatmap is at least the probability times the
  normalised attribution, so the SC and the Parametric Map show it and the region's scores (mean and
  peak of the heatmap) follow from it.
* **Score.** :func:`pathology_score` maps a probability onto the abnormality scale: its threshold
  goes to 0.5, as the chest analysis's flagging evidence does (``pipeline/score.py`` combines them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage

from miemss_node.pipeline.base import Anatomy, DecodedImage, ModelRun, PathologyProbability, Region, RegionMap
from miemss_node.pipeline.chest import location_words, resize_labels
from miemss_node.pipeline.regions import draft_region, measure_drafts
from miemss_node.pipeline.zones import SIDES, ZONE_NAMES, ZoneKey, zone_masks

logger = logging.getLogger(__name__)

#: A pathology region is where its attribution reaches this fraction of its peak inside the lungs.
ATTRIBUTION_FRACTION = 0.5
#: A zone counts in a region's location when it holds at least this fraction of the region.
ZONE_SHARE = 0.15


def pathology_score(pathology: PathologyProbability) -> float:
    """A probability on the abnormality scale: 0.5 at its threshold, linear on either side."""
    p, t = float(pathology.probability), min(max(float(pathology.threshold), 1e-6), 1.0 - 1e-6)
    return p / (2.0 * t) if p < t else 1.0 - (1.0 - p) / (2.0 * (1.0 - t))


def add_pathology_regions(
    region_map: RegionMap,
    attributions: dict[str, np.ndarray],
    pathologies: Sequence[PathologyProbability],
    anatomy: Anatomy,
    image: DecodedImage,
) -> RegionMap:
    """The region map with one region per reported pathology whose attribution lies in the lungs.

    Parameters
    ----------
    region_map
        The chest analysis's regions, at the source's shape.
    attributions
        Grad-CAM per pathology label, [0, 1], at the source's shape.
    pathologies
        The classifier's outputs (their probabilities weight the heatmap).
    anatomy
        The frame's anatomy: the lungs and what is not anatomy, at its working shape.
    image
        The decoded frame (its pixel spacing, for areas).

    Returns
    -------
    RegionMap
        Regions relabelled 1..N by decreasing peak score, then mean score.
    """
    probability = {p.label: p.probability for p in pathologies}
    inside = (anatomy.hemithoraces > 0) & ~anatomy.not_anatomy
    zones = zone_masks(anatomy.hemithoraces, anatomy.zone_bottoms)
    heat = region_map.heatmap.copy()
    labels = np.zeros(region_map.labels.shape, dtype=np.int32)
    regions: list[Region] = []
    for label, attribution in attributions.items():
        work_cam = _to_work(attribution, anatomy.shape)
        mask = _peak_part(work_cam, inside)
        if mask is None:
            continue
        source_mask = resize_labels(mask.astype(np.uint8), anatomy.source_shape).astype(bool) & (labels == 0)
        if not source_mask.any():
            continue
        heat[source_mask] = np.maximum(heat[source_mask], probability[label] * attribution[source_mask])
        labels[source_mask] = len(regions) + 1
        side = _side(mask, anatomy)
        covered = _zones_of(mask, zones, side)
        words, patient_side = location_words(side, covered, anatomy.patient_right_on_image_left)
        regions.append(
            draft_region(
                len(regions) + 1,
                words,
                side=patient_side,
                zone=covered[len(covered) // 2],
                kind="pathology",
                pathology=label,
            )
        )
    if not regions:
        return region_map
    for region in region_map.regions:
        labels[(region_map.labels == region.label) & (labels == 0)] = len(regions) + 1
        regions.append(replace(region, label=len(regions) + 1))
    return measure_drafts(labels, heat, regions, image.pixel_spacing_mm)


def _to_work(attribution: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A source-sized map averaged down to the anatomy's working shape."""
    rows = np.linspace(0, attribution.shape[0], shape[0] + 1).astype(np.intp)
    cols = np.linspace(0, attribution.shape[1], shape[1] + 1).astype(np.intp)
    summed = np.add.reduceat(np.add.reduceat(attribution, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.outer(np.diff(rows), np.diff(cols))
    return (summed / np.maximum(counts, 1)).astype(np.float32)


def _peak_part(cam: np.ndarray, inside: np.ndarray) -> np.ndarray | None:
    """The largest connected part of the lungs where the attribution reaches its share of the peak."""
    values = cam[inside]
    if not values.size or float(values.max()) <= 0:
        return None
    strong = inside & (cam >= ATTRIBUTION_FRACTION * float(values.max()))
    parts, count = ndimage.label(strong)
    if count == 0:
        return None
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return parts == int(sizes.argmax())


def _side(mask: np.ndarray, anatomy: Anatomy) -> str:
    """The image side whose hemithorax holds most of the mask."""
    left = int((mask & (anatomy.hemithoraces == 1)).sum())
    right = int((mask & (anatomy.hemithoraces == 2)).sum())
    return SIDES[0] if left >= right else SIDES[1]


def _zones_of(mask: np.ndarray, zones: dict[ZoneKey, np.ndarray], side: str) -> tuple[str, ...]:
    """The zones of ``side`` holding a share of the mask, top to bottom (at least the largest)."""
    shares = {zone: int((mask & zones[ZoneKey(side=side, zone=zone)]).sum()) for zone in ZONE_NAMES}
    total = max(sum(shares.values()), 1)
    chosen = tuple(zone for zone in ZONE_NAMES if shares[zone] >= ZONE_SHARE * total)
    return chosen or (max(ZONE_NAMES, key=lambda zone: shares[zone]),)


def pathology_sentences(pathologies: Sequence[PathologyProbability], model: ModelRun) -> tuple[str, ...]:
    """The report's sentences on a frame's classifier output, marked as the model's output.

    Names the model and its weights hash, the pathologies that reach their thresholds with their
    probabilities (or that none does), and the most probable others.
    """
    if not pathologies:
        return ()
    reported = sorted((p for p in pathologies if p.reported), key=lambda p: -p.probability)
    others = sorted((p for p in pathologies if not p.reported), key=lambda p: -p.probability)[:3]
    source = f"Chest classifier output (model {model.name}, {model.revision}; not a diagnosis)"
    if reported:
        named = ", ".join(f"{p.label} {p.probability:.2f} (threshold {p.threshold:.2f})" for p in reported)
        sentences = [f"{source}: {named}."]
    else:
        sentences = [f"{source}: no pathology reached its threshold."]
    if others:
        sentences.append(f"Below threshold, most probable: {', '.join(f'{p.label} {p.probability:.2f}' for p in others)}.")
    return tuple(sentences)
