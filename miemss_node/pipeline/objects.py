"""What on a radiograph is not anatomy: burned-in text and lead markers, lines and wires, electrodes,
clips and other metal. None of it is ever outlined as a finding.

Everything here is classical morphology on the display-oriented working image (bright = dense):

* a **white top-hat** (the image minus its grey opening) keeps bright structures narrower than the
  structuring element. With a small disk it keeps lines, wires, ECG leads and letter strokes; with a
  larger one, compact things up to about a centimetre: electrodes, clips, lead markers;
* **saturated** pixels (at the very top of the display range) in small components are burned-in text,
  lead markers or metal;
* an ECG electrode's disc is as faint as a nodule; its snap, a thin bright ring a few mm across, is
  looked for at the source resolution where a round density was found (:func:`electrode_snap_near`);
* what is found is classified by shape (long and thin: a line or wire; compact: an electrode, clip or
  marker; large and very bright: a metal device) and dilated by a margin, so that its edges are
  excluded too. What lies along the frame's edge (the film's or the collimator's) is masked the same
  way but not reported: the SR must not say that a film without devices has a wire. Each object is
  reported once: one found over a burned-in annotation is text (:func:`_reported_kinds`).

Contrasts are measured in units of the film's own range inside the body (2nd to 98th percentile), so
the same thresholds hold for a dark CR and a bright portable film. They were chosen on the development
films (``benchmarks/zones``): high enough that rib and clavicle margins, which are also thin and
bright, are mostly not taken, since wires and metal are far brighter than bone edges around them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage.measure import label, regionprops
from skimage.morphology import disk

logger = logging.getLogger(__name__)

#: Words the report and the SR use for each kind of object.
LINE = "line, tube or wire"
COMPACT = "electrode, clip or lead marker"
METAL = "metal device"
TEXT = "burned-in text or marker"

#: Radius (mm) of the small top-hat: structures narrower than about twice this are "thin".
THIN_RADIUS_MM = 1.5
#: Radius (mm) of the large top-hat: compact objects up to about twice this.
COMPACT_RADIUS_MM = 6.0
#: An edge this many times sharper than the body's 99th-percentile gradient outlines metal.
SHARP_EDGE_FACTOR = 1.8
#: Contrast (fraction of the body's display range) above which a thin structure is a line or wire.
THIN_CONTRAST = 0.2
#: Contrast above which a compact structure is an electrode, clip or marker.
COMPACT_CONTRAST = 0.45
#: A line is at least this long (mm) and this many times longer than wide.
LINE_MIN_LENGTH_MM = 25.0
LINE_MIN_ELONGATION = 5.0
#: A compact object covers at most this area (mm²).
COMPACT_MAX_AREA_MM2 = 900.0
#: A metal device covers between these areas (mm²).
METAL_AREA_MM2 = (300.0, 6000.0)
#: What is reported, not only masked: a line, tube or wire at least this long (mm; a lead marker's
#: circle or a word is 20 to 35 mm across), and a metal device only with a device's body: this large
#: (mm², a disc 36 mm across: above a lead marker), this solid (area over its convex hull's) and this
#: thick (mm, its minor axis: above a line of burned-in text).
REPORTED_LINE_MIN_MM = 40.0
REPORTED_METAL_MIN_AREA_MM2 = 1000.0
REPORTED_METAL_MIN_SOLIDITY = 0.85
REPORTED_METAL_MIN_WIDTH_MM = 10.0
#: Display value above which a pixel is saturated (burned-in annotations are drawn at full white).
SATURATED = 0.985
#: Saturated components larger than this fraction of the image are anatomy or background, not text.
SATURATED_MAX_FRACTION = 0.01
#: Margin (mm) added around every object.
MARGIN_MM = 3.0
#: An object lying wholly within this distance (mm) of one edge of the frame is the film's or the
#: collimator's edge: it is masked like any object, but not reported as a device, line or text.
FRAME_EDGE_MM = 8.0
#: A saturated component up to this area (mm², of its bounding box) is a burned-in annotation ...
ANNOTATION_MAX_AREA_MM2 = 600.0
#: ... and so is a row of at least this many compact glyphs of one height; an object found over one,
#: within this margin (mm), is the annotation found again, not a device.
TEXT_MIN_GLYPHS = 3
TEXT_MARGIN_MM = 4.0
#: An ECG electrode's snap is a thin bright ring (the metal eyelet) of about these radii (mm). Its disc
#: is as faint as a nodule at the detail resolution; the ring shows only at the source resolution.
SNAP_RADII_MM = (1.6, 1.9, 2.2, 2.5, 2.8)
#: Half the width (mm) of the ring looked for, and the gap (mm) between it and the disc inside it and
#: the annulus outside it (this wide) that it is compared with.
SNAP_HALF_WIDTH_MM = 0.3
SNAP_GAP_MM = 0.7
SNAP_SURROUND_MM = 0.6
#: Every eighth of the ring is brighter than the inside and the outside by this much (display units,
#: of a top-hat :data:`SNAP_LINE_MM` wide). On the development films the snaps measure 0.045 to 0.05
#: and every other round-density candidate at most 0.007: a line crossing the ring lights two
#: eighths, a vessel loop or noise does not stay bright all the way round.
SNAP_MIN_CONTRAST = 0.025
SNAP_LINE_MM = 1.1
SNAP_SECTORS = 8
#: The snap's centre is looked for this far (mm) around a round density's centre.
SNAP_SEARCH_MM = 4.0


@dataclass(frozen=True, kw_only=True)
class FoundObjects:
    """The not-anatomy mask of a working image and what kinds of objects it holds."""

    #: Boolean, the working image's shape; True on (and just around) an object.
    mask: np.ndarray
    #: Each kind found, in words (:data:`LINE`, :data:`COMPACT`, :data:`METAL`, :data:`TEXT`), with
    #: the number of objects of that kind.
    kinds: dict[str, int]


def find_objects(work: np.ndarray, body: np.ndarray, mm_per_px: float) -> FoundObjects:
    """Find the objects of a working image that are not anatomy.

    Parameters
    ----------
    work
        Display-oriented working image in [0, 1] (bright = dense).
    body
        The patient's body (field of view) at the same shape.
    mm_per_px
        Working pixel size in mm (assumed when the source's spacing is unknown).

    Returns
    -------
    FoundObjects
        Outside the body is not included here; callers combine it with the body mask.
    """
    image = np.asarray(work, dtype=np.float32)
    inside = body if body.any() else np.ones(image.shape, dtype=bool)
    low, high = np.percentile(image[inside], [2, 98])
    scale = max(float(high - low), 1e-3)

    def radius(mm: float) -> int:
        return max(1, round(mm / mm_per_px))

    def tophat(mm: float) -> np.ndarray:
        # A square element: scipy runs it as separable 1-D filters, fast even 6 cm wide.
        side = 2 * radius(mm) + 1
        return (image - ndimage.grey_opening(image, size=(side, side))) / scale

    mask = np.zeros(image.shape, dtype=bool)
    area_px = mm_per_px * mm_per_px
    thin = label(tophat(THIN_RADIUS_MM) > THIN_CONTRAST, connectivity=2)
    compact = label(tophat(COMPACT_RADIUS_MM) > COMPACT_CONTRAST)
    metal = label(_sharp_outlined(image, inside, radius(2.0)))
    saturated = label(image >= SATURATED)
    edge = radius(FRAME_EDGE_MM)
    found: list[tuple[str, tuple[int, ...]]] = []
    for kind, labels, keep in (
        (LINE, thin, [p for p in regionprops(thin) if _is_line(p, mm_per_px)]),
        (COMPACT, compact, [p for p in regionprops(compact) if 4 <= p.area and p.area * area_px <= COMPACT_MAX_AREA_MM2]),
        (METAL, metal, [p for p in regionprops(metal) if METAL_AREA_MM2[0] <= p.area * area_px <= METAL_AREA_MM2[1]]),
        (TEXT, saturated, [p for p in regionprops(saturated) if p.area <= SATURATED_MAX_FRACTION * image.size]),
    ):
        if keep:
            lookup = np.zeros(int(labels.max()) + 1, dtype=bool)
            lookup[[p.label for p in keep]] = True
            mask |= lookup[labels]
        found += [
            (kind, tuple(p.bbox))
            for p in keep
            if not _along_frame_edge(p.bbox, image.shape, edge) and _reportable(kind, p, mm_per_px)
        ]
    kinds = _reported_kinds(found, mm_per_px)

    mask = ndimage.binary_dilation(mask, structure=disk(radius(MARGIN_MM)))
    logger.debug("objects: %s", kinds, extra={"action": "anatomy.objects"})
    return FoundObjects(mask=mask, kinds=kinds)


def electrode_snap_near(image: np.ndarray, row: float, col: float, mm_per_px: float) -> bool:
    """Whether the thin bright ring of an ECG electrode's snap is centred within :data:`SNAP_SEARCH_MM`
    of (row, col), where a round density was found (the snap sits in the middle of its disc).

    ``image`` is a display-oriented image at the source resolution (bright = dense) and ``mm_per_px``
    its pixel size. Each radius of :data:`SNAP_RADII_MM` is a matched filter (the ring's mean minus the
    brighter of the inside's and the outside's); where it answers most, the ring must be bright all the
    way round (:data:`SNAP_MIN_CONTRAST` in each of :data:`SNAP_SECTORS` sectors).
    """
    border = int(np.ceil((max(SNAP_RADII_MM) + SNAP_GAP_MM + SNAP_SURROUND_MM) / mm_per_px)) + 1
    reach = int(np.ceil(SNAP_SEARCH_MM / mm_per_px)) + border
    r0, c0 = max(0, int(row) - reach), max(0, int(col) - reach)
    window = np.asarray(image[r0 : int(row) + reach + 1, c0 : int(col) + reach + 1], dtype=np.float32)
    if min(window.shape) <= 2 * border:
        return False
    side = max(3, round(SNAP_LINE_MM / mm_per_px) | 1)
    tophat = window - ndimage.grey_opening(window, size=(side, side))
    spectrum = np.fft.rfft2(tophat)
    shape = (int(tophat.shape[0]), int(tophat.shape[1]))
    for radius_mm in SNAP_RADII_MM:
        ring, inside, outside = (
            np.fft.irfft2(spectrum * kernel, s=shape) for kernel in _snap_kernels(shape, radius_mm, mm_per_px)
        )
        around = np.maximum(inside, outside)
        score = (ring - around)[border:-border, border:-border]
        r, c = np.unravel_index(int(np.argmax(score)), score.shape)
        centre = (int(r) + border, int(c) + border)
        if (
            score[r, c] >= SNAP_MIN_CONTRAST
            and _weakest_sector(tophat, centre, radius_mm, mm_per_px) - float(around[centre]) >= SNAP_MIN_CONTRAST
        ):
            return True
    return False


@lru_cache(maxsize=64)
def _snap_kernels(shape: tuple[int, int], radius_mm: float, mm_per_px: float) -> tuple[np.ndarray, ...]:
    """The ring, the disc inside it and the annulus outside it, as the conjugate spectra that turn an
    image's ``rfft2`` into its mean under each, centred at every pixel (circularly)."""
    distance = _distance_from_centre(shape, (shape[0] // 2, shape[1] // 2)) * mm_per_px
    ring = np.abs(distance - radius_mm) <= SNAP_HALF_WIDTH_MM
    inside = distance <= radius_mm - SNAP_GAP_MM
    outside = (distance >= radius_mm + SNAP_GAP_MM) & (distance <= radius_mm + SNAP_GAP_MM + SNAP_SURROUND_MM)
    return tuple(
        np.conj(np.fft.rfft2(np.fft.ifftshift(kernel.astype(np.float32) / max(int(kernel.sum()), 1))))
        for kernel in (ring, inside, outside)
    )


def _weakest_sector(image: np.ndarray, centre: tuple[int, int], radius_mm: float, mm_per_px: float) -> float:
    """The lowest mean of ``image`` over the :data:`SNAP_SECTORS` sectors of a ring around ``centre``."""
    rows, cols = np.indices(image.shape, dtype=np.float32)
    rows -= centre[0]
    cols -= centre[1]
    ring = np.abs(np.hypot(rows, cols) * mm_per_px - radius_mm) <= SNAP_HALF_WIDTH_MM
    angle = np.arctan2(rows, cols)
    sector = (np.floor((angle + np.pi) / (2 * np.pi) * SNAP_SECTORS).astype(int)) % SNAP_SECTORS
    sums = np.bincount(sector[ring], weights=image[ring], minlength=SNAP_SECTORS)
    counts = np.bincount(sector[ring], minlength=SNAP_SECTORS)
    return float(np.min(sums / np.maximum(counts, 1))) if counts.min() > 0 else 0.0


def _distance_from_centre(shape: tuple[int, ...], centre: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape[:2], dtype=np.float32)
    return np.hypot(rows - centre[0], cols - centre[1])


def _sharp_outlined(image: np.ndarray, inside: np.ndarray, close_px: int) -> np.ndarray:
    """Areas enclosed by edges far sharper than anatomy's: metal has a crisp outline, tissue does not."""
    gradient = ndimage.gaussian_gradient_magnitude(image, sigma=1.0)
    reference = float(np.percentile(gradient[inside], 99))
    edges = gradient > SHARP_EDGE_FACTOR * max(reference, 1e-6)
    return ndimage.binary_fill_holes(ndimage.binary_closing(edges, structure=disk(close_px)))


def _is_line(region: object, mm_per_px: float) -> bool:
    """Whether a thin component is long and thin enough to be a line, tube or wire."""
    major = float(region.axis_major_length)  # type: ignore[attr-defined]
    width = max(float(region.area) / max(major, 1.0), 1.0)  # type: ignore[attr-defined]
    return major * mm_per_px >= LINE_MIN_LENGTH_MM and major >= LINE_MIN_ELONGATION * width


def _reportable(kind: str, region: object, mm_per_px: float) -> bool:
    """Whether an object found is said to be there: a short "line" is a marker's circle or letters, and a
    sharp outline without a device's large, solid, thick body is a marker or text (all are masked)."""
    if kind == LINE:
        return float(region.axis_major_length) * mm_per_px >= REPORTED_LINE_MIN_MM  # type: ignore[attr-defined]
    if kind == METAL:
        return (
            float(region.area) * mm_per_px**2 >= REPORTED_METAL_MIN_AREA_MM2  # type: ignore[attr-defined]
            and float(region.solidity) >= REPORTED_METAL_MIN_SOLIDITY  # type: ignore[attr-defined]
            and float(region.axis_minor_length) * mm_per_px >= REPORTED_METAL_MIN_WIDTH_MM  # type: ignore[attr-defined]
        )
    return True


def _along_frame_edge(box: tuple[int, ...], shape: tuple[int, ...], edge: int) -> bool:
    """Whether a bounding box lies within ``edge`` pixels of one side of the frame."""
    return box[2] <= edge or box[0] >= shape[0] - edge or box[3] <= edge or box[1] >= shape[1] - edge


def _reported_kinds(found: list[tuple[str, tuple[int, ...]]], mm_per_px: float) -> dict[str, int]:
    """How many objects of each kind to report, each found object (kind, bounding box) counted once.

    Burned-in annotations are found by more than one test: a circled lead marker is saturated text, a
    compact blob, a closed "line" and a crisp "metal" outline at once, and a word's letters together have
    a metal's sharp outline. An object over an annotation (a small saturated component, or a row of at
    least :data:`TEXT_MIN_GLYPHS` compact glyphs of one height) is counted as text, not as a device.
    """
    margin = max(1, round(TEXT_MARGIN_MM / mm_per_px))
    annotations = [
        box
        for kind, box in found
        if kind == TEXT and (box[2] - box[0]) * (box[3] - box[1]) * mm_per_px**2 <= ANNOTATION_MAX_AREA_MM2
    ]
    annotations += _glyph_rows([box for kind, box in found if kind == COMPACT])
    kinds: dict[str, int] = {}
    for kind, box in found:
        if kind != TEXT and any(_mostly_inside(box, _grown(other, margin)) for other in annotations):
            kind = TEXT
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _glyph_rows(boxes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Bounding boxes of rows of at least :data:`TEXT_MIN_GLYPHS` boxes of about one height, side by side
    (each overlapping the next one's rows, at most two heights apart)."""
    rows: list[list[tuple[int, ...]]] = []
    for box in sorted(boxes, key=lambda b: b[1]):
        height = box[2] - box[0]
        for row in rows:
            last = row[-1]
            last_height = last[2] - last[0]
            overlap = min(box[2], last[2]) - max(box[0], last[0])
            if (
                overlap >= 0.5 * min(height, last_height)
                and max(height, last_height) <= 2 * min(height, last_height)
                and box[1] - last[3] <= 2 * max(height, last_height)
            ):
                row.append(box)
                break
        else:
            rows.append([box])
    return [
        (min(b[0] for b in row), min(b[1] for b in row), max(b[2] for b in row), max(b[3] for b in row))
        for row in rows
        if len(row) >= TEXT_MIN_GLYPHS
    ]


def _grown(box: tuple[int, ...], margin: int) -> tuple[int, ...]:
    return (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)


def _mostly_inside(box: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    """Whether at least half of ``box``'s area lies inside ``outer``."""
    rows = max(0, min(box[2], outer[2]) - max(box[0], outer[0]))
    cols = max(0, min(box[3], outer[3]) - max(box[1], outer[1]))
    return 2 * rows * cols >= (box[2] - box[0]) * (box[3] - box[1])
