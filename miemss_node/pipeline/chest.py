"""The anatomy-aware analysis of a frontal (PA/AP) chest film.

1. **Measure** (:func:`measure_chest`): the working images, what is not anatomy
   (:mod:`~miemss_node.pipeline.objects`), the hemithoraces and mediastinum
   (:mod:`~miemss_node.pipeline.anatomy`), the density of the six lung zones
   (:mod:`~miemss_node.pipeline.zones`) and round-density candidates (:mod:`~miemss_node.pipeline.focal`).
2. **Judge against normal** (:func:`judge_chest`): each zone's evidence against the normal reference
   and its mirror zone, each candidate's strength against the reference
   (:mod:`~miemss_node.pipeline.chest_reference`).
3. **Regions that describe the disease**: the flagged zones of one side that touch become one
   region covering them (an opaque hemithorax is one region, not a sliver at its edge); a flagged
   round density outside them is a region of its own. Objects are cut out of every region. Each
   region is located in the patient's terms when Patient Orientation says which side is which.
4. **Abnormality score** of the frame: the logistic of its strongest evidence, 0.5 at the flagging
   threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian

from miemss_node.pipeline.anatomy import ANATOMY_SIDE, chest_anatomy
from miemss_node.pipeline.base import Anatomy, DecodedImage, Region, RegionMap
from miemss_node.pipeline.chest_reference import (
    ChestReference,
    ZoneEvidence,
    abnormality,
    evidence_at,
    focal_evidence,
    zone_evidence,
)
from miemss_node.pipeline.features import to_working
from miemss_node.pipeline.field_of_view import field_mask
from miemss_node.pipeline.focal import FocalCandidate, focal_candidates
from miemss_node.pipeline.objects import FoundObjects, electrode_snap_near, find_objects
from miemss_node.pipeline.regions import draft_region, measure_drafts
from miemss_node.pipeline.zones import SIDES, ZONE_NAMES, ZoneKey, normalised_density, zone_features, zone_masks

if TYPE_CHECKING:
    from miemss_node.pipeline.xrv_models import AnatomySegmenter

logger = logging.getLogger(__name__)

#: Long side (pixels) of the image objects and round densities are looked for on.
DETAIL_SIDE = 512
#: When the pixel spacing is unknown, the image is taken to span this many mm on its long side
#: (a 35 x 43 cm detector), so that sizes in mm stay meaningful.
ASSUMED_FIELD_MM = 400.0
#: Modalities of projection radiographs (OT: a picture file, or a Secondary Capture of a film).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT"})
#: View Position values analysed as a frontal chest film ("" = unknown: the image decides).
FRONTAL_VIEWS = frozenset({"", "PA", "AP"})


@dataclass(frozen=True, kw_only=True)
class ChestMeasurements:
    """What :func:`measure_chest` measured on one frame."""

    anatomy: Anatomy
    #: Zone masks at the anatomy's working shape.
    zones: dict[ZoneKey, np.ndarray]
    features: dict[str, float]
    #: Round-density candidates, in pixels of the detail image (``detail_shape``).
    candidates: tuple[FocalCandidate, ...]
    detail_shape: tuple[int, int]
    #: mm per pixel of the detail image.
    detail_mm_per_px: float


@dataclass(frozen=True, kw_only=True)
class ChestFindings:
    """What :func:`judge_chest` concluded on one frame."""

    region_map: RegionMap
    abnormality_score: float
    zone_evidence: dict[ZoneKey, ZoneEvidence]
    #: Evidence of each round-density candidate, in the order of ``measurements.candidates``.
    focal_evidence: tuple[float, ...]


def mm_per_pixel(image: DecodedImage, working_rows: int) -> float:
    """Size in mm of a working pixel, from the pixel spacing or :data:`ASSUMED_FIELD_MM`."""
    rows, cols = image.pixels.shape[:2]
    if image.pixel_spacing_mm is not None:
        return float(min(image.pixel_spacing_mm)) * rows / working_rows
    return ASSUMED_FIELD_MM / max(rows, cols) * rows / working_rows


def is_frontal_chest_candidate(image: DecodedImage) -> bool:
    """Whether a frame may be a frontal chest film: a projection radiograph (or a picture) whose
    Modality, View Position and Body Part do not say otherwise."""
    from miemss_node.pipeline.modality import CHEST_PARTS

    return (
        image.modality.strip().upper() in RADIOGRAPH_MODALITIES
        and image.view_position.strip().upper() in FRONTAL_VIEWS
        and image.body_part.strip().upper() in CHEST_PARTS
    )


def measure_chest(
    image: DecodedImage, enhanced: np.ndarray, anatomy_model: AnatomySegmenter | None = None
) -> ChestMeasurements | None:
    """Measure a frame as a frontal chest film; None when it does not show two lungs side by side.

    Parameters
    ----------
    image
        The decoded frame (its spacing, view and orientation).
    enhanced
        Its enhanced pixels, at source resolution.
    anatomy_model
        ``[models] anatomy``: its lungs, heart and mediastinum replace the classical estimate's
        (:mod:`~miemss_node.pipeline.model_anatomy`); None keeps the classical estimate.
    """
    detail = to_working(enhanced, DETAIL_SIDE)
    detail_mm = mm_per_pixel(image, detail.shape[0])
    detail_body = field_mask(detail)
    objects = find_objects(detail, detail_body, detail_mm)
    work = to_working(detail, ANATOMY_SIDE)
    coarse_objects = FoundObjects(mask=_resize_mask(objects.mask, work.shape), kinds=objects.kinds)
    orientation = image.patient_orientation or None
    anatomy = chest_anatomy(
        work,
        coarse_objects,
        source_shape=(int(image.pixels.shape[0]), int(image.pixels.shape[1])),
        view=image.view_position.strip().upper(),
        patient_orientation=orientation,
    )
    if anatomy_model is not None:
        from miemss_node.pipeline.model_anatomy import anatomy_from_model, model_method

        anatomy = anatomy_from_model(
            anatomy_model.segment(image.pixels, (int(work.shape[0]), int(work.shape[1]))),
            method=model_method(anatomy_model.run.name, anatomy_model.run.revision),
            classical=anatomy,
            work=work,
            objects=coarse_objects,
            image=image,
        )
    if anatomy is None:
        return None
    usable = ~anatomy.not_anatomy
    smooth = gaussian(work, sigma=1.0)
    density = normalised_density(smooth, anatomy.hemithoraces, anatomy.midline_col or work.shape[1] / 2, usable)
    zones = zone_masks(anatomy.hemithoraces, anatomy.zone_bottoms)
    lungs_detail = _resize_mask(anatomy.hemithoraces > 0, detail.shape)
    midline = midline_column(anatomy, int(detail.shape[1]))
    candidates = focal_candidates(detail, lungs_detail, objects.mask | ~detail_body, detail_mm, midline_col=midline)
    candidates = _off_electrodes(candidates, enhanced, mm_per_pixel(image, enhanced.shape[0]), detail.shape)
    return ChestMeasurements(
        anatomy=anatomy,
        zones=zones,
        features=zone_features(density, zones, usable),
        candidates=tuple(candidates),
        detail_shape=(int(detail.shape[0]), int(detail.shape[1])),
        detail_mm_per_px=detail_mm,
    )


def midline_column(anatomy: Anatomy, width: int) -> float:
    """The midline's column in an image of the film ``width`` pixels wide (the middle when none was found)."""
    column = anatomy.midline_col if anatomy.midline_col is not None else anatomy.shape[1] / 2
    return column * width / anatomy.shape[1]


def _off_electrodes(
    candidates: list[FocalCandidate], enhanced: np.ndarray, source_mm_per_px: float, detail_shape: tuple[int, ...]
) -> list[FocalCandidate]:
    """The candidates that are not on an ECG electrode: its disc is a round density as faint as a
    nodule at the detail resolution, and only its snap's ring, at the source resolution, tells them apart."""
    row_scale = enhanced.shape[0] / detail_shape[0]
    col_scale = enhanced.shape[1] / detail_shape[1]
    kept = [
        candidate
        for candidate in candidates
        if not electrode_snap_near(enhanced, candidate.row * row_scale, candidate.col * col_scale, source_mm_per_px)
    ]
    if len(kept) < len(candidates):
        logger.debug(
            "%d round densities on electrodes left out",
            len(candidates) - len(kept),
            extra={"action": "anatomy.electrodes"},
        )
    return kept


@dataclass(frozen=True, kw_only=True)
class _Part:
    """A region before it is measured: its mask at working resolution and what it is."""

    mask: np.ndarray
    side: str
    zones: tuple[str, ...]
    kind: str
    evidence: float


def judge_chest(
    measured: ChestMeasurements,
    image: DecodedImage,
    reference: ChestReference,
    *,
    threshold: float = 0.5,
    max_focal_regions: int = 2,
    focal_threshold: float | None = None,
) -> ChestFindings:
    """Turn the measurements of a frame into regions, a heatmap and an abnormality score.

    Parameters
    ----------
    measured
        From :func:`measure_chest`.
    image
        The decoded frame (its pixel spacing, for areas).
    reference
        The normal reference.
    threshold
        Abnormality score from which a zone or a round density becomes a region; 0.5 is the
        reference's flagging evidence (``[pipeline] threshold``).
    max_focal_regions
        At most this many round densities become regions (``[pipeline] max_focal_regions``).
    focal_threshold
        The abnormality score from which a round density becomes a region; None: ``threshold``.
    """
    anatomy = measured.anatomy
    flag = evidence_at(threshold)
    evidence = zone_evidence(measured.features, reference)
    focal = tuple(focal_evidence(candidate, reference) for candidate in measured.candidates)
    parts = _zone_parts(measured, evidence, flag)
    covered = np.zeros(anatomy.shape, dtype=bool)
    for part in parts:
        covered |= part.mask
    focal_flag = flag if focal_threshold is None else evidence_at(focal_threshold)
    parts += _focal_parts(measured, focal, covered, focal_flag, max_focal_regions)
    heat = np.zeros(anatomy.shape, dtype=np.float32)
    for key, mask in measured.zones.items():
        heat[mask] = abnormality(evidence[key].evidence)
    heat = gaussian(heat, sigma=2.0, preserve_range=True).astype(np.float32) * (anatomy.hemithoraces > 0)
    labels = np.zeros(anatomy.shape, dtype=np.int32)
    for index, part in enumerate(parts, start=1):
        labels[part.mask & (labels == 0)] = index
        # A region is never cooler than its own evidence, whatever the smoothing did at its edges.
        heat[part.mask] = np.maximum(heat[part.mask], abnormality(part.evidence))
    source_labels = resize_labels(labels, anatomy.source_shape)
    source_heat = resize_float(heat, anatomy.source_shape)
    drafts = [_draft(label, part, anatomy) for label, part in enumerate(parts, start=1)]
    region_map = measure_drafts(source_labels, source_heat, drafts, image.pixel_spacing_mm)
    # A round-density candidate below the flag says nothing: every film has its strongest blob.
    strongest = max([e.evidence for e in evidence.values()] + [e for e in focal if e >= focal_flag], default=-math.inf)
    return ChestFindings(
        region_map=region_map,
        abnormality_score=abnormality(strongest),
        zone_evidence=evidence,
        focal_evidence=focal,
    )


def _zone_parts(measured: ChestMeasurements, evidence: dict[ZoneKey, ZoneEvidence], flag: float) -> list[_Part]:
    """One part per run of touching flagged zones of one side, objects cut out."""
    parts = []
    for side in SIDES:
        flagged = [zone for zone in ZONE_NAMES if evidence[ZoneKey(side=side, zone=zone)].evidence >= flag]
        for run in _touching_runs(flagged):
            mask = np.zeros(measured.anatomy.shape, dtype=bool)
            for zone in run:
                mask |= measured.zones[ZoneKey(side=side, zone=zone)]
            strongest = max(evidence[ZoneKey(side=side, zone=zone)].evidence for zone in run)
            parts.append(
                _Part(mask=mask & ~measured.anatomy.not_anatomy, side=side, zones=run, kind="zone", evidence=strongest)
            )
    return parts


def _focal_parts(
    measured: ChestMeasurements, focal: tuple[float, ...], covered: np.ndarray, flag: float, limit: int
) -> list[_Part]:
    """A disc per flagged round density outside the flagged zones: at most ``limit``, the most evident
    first (the candidates come strongest first, and the focal model may rank them otherwise)."""
    anatomy = measured.anatomy
    scale = (anatomy.shape[0] / measured.detail_shape[0], anatomy.shape[1] / measured.detail_shape[1])
    midline = anatomy.midline_col if anatomy.midline_col is not None else anatomy.shape[1] / 2
    parts: list[_Part] = []
    by_evidence = sorted(zip(measured.candidates, focal, strict=True), key=lambda pair: -pair[1])
    for candidate, candidate_evidence in by_evidence:
        if candidate_evidence < flag or len(parts) >= limit:
            continue
        row, col, radius = candidate.outline or (candidate.row, candidate.col, candidate.radius_px)
        centre = (row * scale[0], col * scale[1])
        disc = _disc(anatomy.shape, centre, max(1.5, radius * scale[0]))
        if (disc & covered).sum() > 0.5 * disc.sum():
            continue  # already inside a flagged zone's region
        disc &= ~anatomy.not_anatomy & ~covered
        if not disc.any():
            continue
        covered = covered | disc
        side = SIDES[0] if centre[1] < midline else SIDES[1]
        zone = _zone_at(measured.zones, side, centre[0])
        parts.append(_Part(mask=disc, side=side, zones=(zone,), kind="focal", evidence=candidate_evidence))
    return parts


def location_words(side: str, zones: tuple[str, ...], right_on_image_left: bool | None) -> tuple[str, str | None]:
    """Where a region is, in words, and the patient's side ("right"/"left", or None when unknown).

    Parameters
    ----------
    side
        "image-left" or "image-right".
    zones
        The zones the region covers, top to bottom.
    right_on_image_left
        From Patient Orientation; None when it does not say.
    """
    if len(zones) == len(ZONE_NAMES):
        where = "all zones"
    elif len(zones) == 1:
        where = f"{zones[0]} zone"
    else:
        where = f"{' and '.join(zones)} zones"
    if right_on_image_left is None:
        image_side = side.replace("-", " ")
        return f"{image_side}, {where} (image side: patient orientation unknown)", None
    patient = "right" if (side == "image-left") == right_on_image_left else "left"
    if len(zones) == len(ZONE_NAMES):
        return f"{patient} lung, all zones", patient
    return f"{patient} {where}", patient


def _touching_runs(flagged: list[str]) -> list[tuple[str, ...]]:
    """Group flagged zone names into runs of neighbours (upper-middle-lower)."""
    runs: list[list[str]] = []
    for zone in ZONE_NAMES:
        if zone not in flagged:
            continue
        if runs and ZONE_NAMES.index(runs[-1][-1]) == ZONE_NAMES.index(zone) - 1:
            runs[-1].append(zone)
        else:
            runs.append([zone])
    return [tuple(run) for run in runs]


def _zone_at(zones: dict[ZoneKey, np.ndarray], side: str, row: float) -> str:
    """The zone of ``side`` whose rows are nearest to ``row``."""

    def distance(zone: str) -> float:
        rows = np.flatnonzero(zones[ZoneKey(side=side, zone=zone)].any(axis=1))
        if not rows.size:
            return math.inf
        return 0.0 if rows[0] <= row <= rows[-1] else float(min(abs(rows[0] - row), abs(rows[-1] - row)))

    return min(ZONE_NAMES, key=distance)


def _draft(label: int, part: _Part, anatomy: Anatomy) -> Region:
    """A region's words and kind, before :func:`~miemss_node.pipeline.regions.measure_drafts` measures it."""
    words, patient_side = location_words(part.side, part.zones, anatomy.patient_right_on_image_left)
    return draft_region(
        label, words, side=patient_side, zone=part.zones[len(part.zones) // 2], kind=part.kind
    )


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius * radius


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask (any-pooling when shrinking)."""
    if mask.shape == tuple(shape):
        return mask.copy()
    if mask.shape[0] >= shape[0] and mask.shape[1] >= shape[1]:
        factor_r, factor_c = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
        dilated = ndimage.maximum_filter(mask, size=(max(1, round(factor_r)), max(1, round(factor_c))))
        return resize_labels(dilated.astype(np.int32), shape).astype(bool)
    return resize_labels(mask.astype(np.int32), shape).astype(bool)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (or mask) to ``shape``."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def resize_float(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map in [0, 1] to ``shape`` (edges repeated), clipped to [0, 1]."""
    zoom = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    out = ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)
    out = out[: shape[0], : shape[1]]
    if out.shape != tuple(shape):
        out = np.pad(out, ((0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])), mode="edge")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
