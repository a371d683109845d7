"""Anatomy of a frontal chest film: body, midline, both hemithoraces (opaque lung included),
mediastinum, and what is not anatomy.

Classical image analysis on a small working image (:data:`ANATOMY_SIDE` pixels on the long side):

1. **Body**: the field of view (:func:`~miemss_node.pipeline.field_of_view.field_mask`).
2. **Midline**: the spine and superior mediastinum are the brightest vertical band of the upper
   thorax; its centre, searched in the middle 40 % of the columns, is the midline.
3. **Aerated lung cores**, one per side of the midline: the largest dark component of that side that
   has the place and shape of a lung (near the midline, taller than wide, not touching the image's
   border). Each side gets its own threshold, between its darkest pixels and the mediastinum, raised
   step by step until a lung-like core appears, so a hazy lung is still found.
4. **Hemithoraces**: lung that is opaque is not dark, so a core alone would cut off the disease it
   should find. A side whose core is much smaller than the other's is completed with the other core
   mirrored across the midline; each side is then extended down to where it becomes as bright as
   the abdomen below (the diaphragm), at most a fixed fraction of the thorax's width below the apex,
   and replaced by the convex hull of all that. A base that meets the abdomen's level without a step
   from aerated lung (an opacity there silhouettes the diaphragm) is followed further down while its
   rows keep the texture of lung (ribs and vessels; the liver, heart and an opaque but smooth abdomen
   have none); its zones' thirds stay where the aerated lung puts them (:attr:`ChestFrame.zone_bottoms`).
5. **Mediastinum**: the body between the two hemithoraces, from their apices to their bases.

When no lung core is found on one side or the other, the frame is not a frontal chest film as far
as this analysis can tell (a lateral view, another body part): :func:`chest_anatomy` returns None and
the generic analysis runs instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.draw import polygon
from skimage.filters import gaussian
from skimage.measure import label, regionprops
from skimage.morphology import disk

from miemss_node.pipeline.base import Anatomy
from miemss_node.pipeline.field_of_view import field_mask
from miemss_node.pipeline.objects import FoundObjects

logger = logging.getLogger(__name__)

#: Long side, in pixels, of the image the anatomy is estimated on.
ANATOMY_SIDE = 256

#: The midline is searched in this band of columns ...
MIDLINE_COLUMNS = (0.3, 0.7)
#: ... in this band of the rows (the upper thorax, where the mediastinum is narrow) ...
MIDLINE_ROWS = (0.15, 0.45)
#: ... as the band that stands out most above a grey opening this fraction of the width wide.
MIDLINE_OPENING = 0.25

#: A core's threshold is this fraction of the way from its side's darkest pixels to the mediastinum;
#: the fractions are tried in turn until a lung-like core is found.
CORE_FRACTIONS = (0.3, 0.45, 0.6, 0.75)
#: A core grows into connected pixels up to this much brighter than its threshold (same units) ...
CORE_GROWTH = 0.25
#: ... but never beyond this fraction of the way to the mediastinum: a hazy lung's core is found near
#: the level of the chest wall's soft tissue, and growing further leaks into the axilla and the arm ...
CORE_GROWTH_CEILING = 0.7
#: ... and at most this fraction of the image's long side away from where it started.
CORE_REACH = 0.06
#: A lung core covers at least this fraction of the image ...
CORE_MIN_AREA = 0.01
#: ... has its centroid in this band of the rows ...
CORE_CENTROID_ROWS = (0.15, 0.8)
#: ... its medial edge at most this fraction of the width from the midline ...
CORE_MAX_MEDIAL_GAP = 0.2
#: ... spans at least this fraction of the height and is at least this tall for its width ...
CORE_MIN_HEIGHT = 0.15
CORE_MIN_ASPECT = 0.8
#: ... and touches the image's border along at most this fraction of its perimeter.
CORE_MAX_BORDER = 0.03

#: Rows at a core's top narrower than this fraction of its widest row are not lung (a leak up the neck).
APEX_MIN_WIDTH = 0.3
#: A side whose core is smaller than this fraction of the other's is completed by the mirror image ...
MIRROR_BELOW = 0.6
#: ... only lateral to its own core when that core is at least this fraction of the other's (a small
#: lung beside a large heart); below it, the own core says little, and the whole mirror image is used.
LATERAL_ONLY_ABOVE = 0.3
#: A hemithorax reaches at most this many thorax widths below the apex ...
MAX_HEIGHT_PER_WIDTH = 0.85
#: ... and at most this fraction of the aerated lungs' height below the lowest of them.
MAX_BASE_REACH = 0.25

#: Texture is the local spread of a band-pass image (differences of Gaussians of these sigmas, working
#: pixels: the width of ribs and vessels) over a window this many pixels wide ...
TEXTURE_SIGMAS = (1.0, 4.0)
TEXTURE_WINDOW = 9
#: ... and a row below an opaque base is still lung while its median texture is at least this fraction of
#: the aerated core's; the base is the last such row before this many rows without it ...
TEXTURE_KEEP = 0.6
TEXTURE_GAP_ROWS = 3
#: ... at most this fraction of the aerated lungs' height below the lowest of them.
TEXTURE_REACH = 0.6
#: A base has the step of aerated lung meeting the diaphragm, and is not followed further, when the rows
#: just above it (this many to this few above) are darker than the abdomen by this fraction of the way
#: from its core's darkest pixels.
DIAPHRAGM_STEP_ROWS = (6, 2)
DIAPHRAGM_STEP = 0.25

#: Whether the patient's right is on the image's left, by Patient Orientation's first value (the
#: patient direction of increasing column).
_RIGHT_ON_IMAGE_LEFT = {"L": True, "R": False}


@dataclass(frozen=True, kw_only=True)
class ChestFrame:
    """What the hemithorax estimate found, in working pixels."""

    midline_col: int
    #: Aerated lung cores: side ("image-left" / "image-right") to boolean mask.
    cores: dict[str, np.ndarray]
    #: Hemithoraces, same keys.
    hemithoraces: dict[str, np.ndarray]
    #: Thorax rows: apex and base.
    apex_row: int
    base_row: int
    #: Per side, the row its zones' thirds are measured to: its base before it was followed down through
    #: an opacity by texture (a basal opacity joins the lower zone and leaves the other zones in place).
    zone_bottoms: dict[str, int] = field(default_factory=dict)


def chest_anatomy(
    work: np.ndarray,
    objects: FoundObjects,
    *,
    source_shape: tuple[int, int],
    view: str = "",
    patient_orientation: tuple[str, ...] | None = None,
) -> Anatomy | None:
    """Estimate the anatomy of a frontal chest film.

    Parameters
    ----------
    work
        Display-oriented working image at :data:`ANATOMY_SIDE` (bright = dense), in [0, 1].
    objects
        The not-anatomy objects found on the same working image.
    source_shape
        Rows and columns of the source image.
    view
        View Position ("PA", "AP", ...) or "" when unknown.
    patient_orientation
        Patient Orientation (0020,0020), e.g. ("L", "F"); None when absent.

    Returns
    -------
    Anatomy or None
        None when the frame does not show two lungs side by side.
    """
    body = field_mask(work)
    frame = find_chest_frame(work, body, frontal=view in ("PA", "AP"))
    if frame is None:
        return None
    hemithoraces = np.zeros(work.shape, dtype=np.uint8)
    hemithoraces[frame.hemithoraces["image-left"]] = 1
    hemithoraces[frame.hemithoraces["image-right"] & (hemithoraces == 0)] = 2
    rows = np.arange(work.shape[0])[:, None]
    thorax_rows = (rows >= frame.apex_row) & (rows <= frame.base_row)
    left_edge = _edge_columns(frame.hemithoraces["image-left"], last=True)
    right_edge = _edge_columns(frame.hemithoraces["image-right"], last=False)
    cols = np.arange(work.shape[1])[None, :]
    both = ((left_edge >= 0) & (right_edge < work.shape[1]))[:, None]
    mediastinum = thorax_rows & both & body & (cols > left_edge[:, None]) & (cols < right_edge[:, None])
    return Anatomy(
        shape=(int(work.shape[0]), int(work.shape[1])),
        source_shape=source_shape,
        view=view,
        chest_frontal=True,
        body=body,
        hemithoraces=hemithoraces,
        mediastinum=mediastinum & (hemithoraces == 0),
        midline_col=float(frame.midline_col),
        not_anatomy=objects.mask | ~body,
        devices=tuple(sorted(objects.kinds)),
        patient_right_on_image_left=right_on_image_left(patient_orientation),
        method="classical",
        zone_bottoms=frame.zone_bottoms,
    )


def right_on_image_left(patient_orientation: tuple[str, ...] | None) -> bool | None:
    """Whether the patient's right is on the image's left, from Patient Orientation; None if unsaid.

    The first value is the patient direction of the rows (increasing column): "L" means the image's
    right is the patient's left, as on a standard PA or AP display.
    """
    if not patient_orientation:
        return None
    first = str(patient_orientation[0]).strip().upper()[:1]
    return _RIGHT_ON_IMAGE_LEFT.get(first)


def find_chest_frame(work: np.ndarray, body: np.ndarray, *, frontal: bool = False) -> ChestFrame | None:
    """Midline, lung cores and hemithoraces of a working image; None without two lung cores.

    With ``frontal`` (View Position says PA or AP), one lung core is enough: the other side may be
    opaque throughout (a white-out), and gets the found core's mirror image.
    """
    rows, cols = work.shape
    if min(rows, cols) < 32 or not body.any():
        return None
    smooth = gaussian(np.asarray(work, dtype=np.float32), sigma=1.0)
    midline = find_midline(smooth, body)
    band = smooth[int(0.2 * rows) : int(0.6 * rows), max(0, midline - int(0.03 * cols)) : midline + int(0.03 * cols) + 1]
    mediastinum_level = float(np.median(band))
    cores = {side: _lung_core(smooth, body, midline, side, mediastinum_level) for side in ("image-left", "image-right")}
    found = [side for side, core in cores.items() if core.any()]
    if len(found) < (1 if frontal else 2):
        logger.debug("no lung core on one side: not a frontal chest", extra={"action": "anatomy.not_chest"})
        return None
    completed = _complete_by_mirror(cores, midline, body)
    if not all(mask.any() for mask in completed.values()):
        return None
    boxes = {side: _bbox(mask) for side, mask in completed.items()}
    apex = min(box[0] for box in boxes.values())
    width = boxes["image-right"][3] - boxes["image-left"][1]
    lowest = max(box[2] for box in boxes.values())
    # Below the lowest aerated lung the diaphragm is not seen through an opacity: reach at most a
    # fraction of the aerated height further, and at most a fixed share of the thorax's width.
    reach = min(int(apex + MAX_HEIGHT_PER_WIDTH * width), int(lowest + MAX_BASE_REACH * (lowest - apex)))
    limit = min(rows - 1, max(lowest, reach))
    abdomen = _abdomen_level(smooth, body, limit)
    deepest = min(rows - 1, int(lowest + TEXTURE_REACH * (lowest - apex)))
    texture = _texture(work)
    hemithoraces, zone_bottoms = {}, {}
    bases = []
    for side, mask in completed.items():
        base = max(boxes[side][2], _base_row(smooth, mask, body, limit, abdomen))
        zone_bottoms[side] = base
        core = cores[side] if cores[side].any() else mask
        if not _meets_diaphragm(smooth, mask, core, body, base, abdomen):
            base = max(base, _textured_rows_end(texture, mask, core, body, deepest))
        bases.append(base)
        hemithoraces[side] = _hemithorax(mask, side, base) & body
    left, right = hemithoraces["image-left"], hemithoraces["image-right"]
    hemithoraces["image-left"] = left & (np.arange(cols)[None, :] < midline)
    hemithoraces["image-right"] = right & (np.arange(cols)[None, :] >= midline)
    return ChestFrame(
        midline_col=midline,
        cores=cores,
        hemithoraces=hemithoraces,
        apex_row=apex,
        base_row=max(bases),
        zone_bottoms=zone_bottoms,
    )


def find_midline(smooth: np.ndarray, body: np.ndarray) -> int:
    """Column of the spine: the brightest vertical band of the upper thorax, near the centre."""
    rows, cols = smooth.shape
    body_rows = np.flatnonzero(body.any(axis=1))
    top, bottom = int(body_rows[0]), int(body_rows[-1])
    band = smooth[top + int(MIDLINE_ROWS[0] * (bottom - top)) : top + int(MIDLINE_ROWS[1] * (bottom - top)) + 1]
    profile = ndimage.gaussian_filter1d(np.median(band, axis=0), max(1.0, 0.02 * cols))
    # The spine stands out from the lungs on both sides; a bright plateau (an opaque hemithorax, the
    # shoulder) does not: take the band's prominence over a grey opening wider than the spine.
    prominence = profile - ndimage.grey_opening(profile, size=max(3, int(MIDLINE_OPENING * cols)))
    low, high = int(MIDLINE_COLUMNS[0] * cols), int(MIDLINE_COLUMNS[1] * cols)
    return low + int(np.argmax(prominence[low:high]))


def _lung_core(smooth: np.ndarray, body: np.ndarray, midline: int, side: str, mediastinum: float) -> np.ndarray:
    """The aerated lung core of one side (see the module docstring); all False when none is found."""
    rows, cols = smooth.shape
    half = np.zeros(smooth.shape, dtype=bool)
    half[:, :midline] = side == "image-left"
    half[:, midline:] = side == "image-right"
    region = half & body
    region[: int(0.05 * rows)] = False
    if not region.any():
        return np.zeros(smooth.shape, dtype=bool)
    darkest = float(np.percentile(smooth[region], 2))
    opening = disk(max(2, round(0.025 * max(rows, cols))))
    for fraction in CORE_FRACTIONS:
        dark = (smooth < darkest + fraction * (mediastinum - darkest)) & region
        labels = label(ndimage.binary_opening(dark, structure=opening))
        candidates = [p for p in regionprops(labels) if _core_like(p, labels, midline, side)]
        if not candidates:
            continue
        core = labels == max(candidates, key=lambda p: p.area).label
        ceiling = max(fraction, min(CORE_GROWTH_CEILING, fraction + CORE_GROWTH))
        grow = (smooth < darkest + ceiling * (mediastinum - darkest)) & region
        reach = max(1, round(CORE_REACH * max(rows, cols)))
        # Geodesic growth: into less dark lung (the periphery, the apex) connected to the core, but
        # never further than ``reach`` from it, so a leak into the axilla stays short.
        # Within ``reach`` of the core (a dilation by disk(reach), 20x faster as a distance transform).
        limit = ndimage.distance_transform_edt(~core) <= reach
        core = ndimage.binary_propagation(core, mask=grow & limit)
        return _without_narrow_top(ndimage.binary_fill_holes(_largest(core)))
    return np.zeros(smooth.shape, dtype=bool)


def _without_narrow_top(core: np.ndarray) -> np.ndarray:
    """Cut the rows at the top of a core that are much narrower than the core: a leak up the neck or
    into the supraclavicular soft tissue, not the apex of a lung."""
    widths = core.sum(axis=1)
    if not widths.any():
        return core
    wide = np.flatnonzero(widths >= APEX_MIN_WIDTH * widths.max())
    trimmed = core.copy()
    trimmed[: wide[0]] = False
    return trimmed


def _core_like(region: object, labels: np.ndarray, midline: int, side: str) -> bool:
    """Whether a dark component has the size, place and shape of an aerated lung."""
    rows, cols = labels.shape
    top, left, bottom, right = region.bbox  # type: ignore[attr-defined]
    centroid_row = region.centroid[0]  # type: ignore[attr-defined]
    area = region.area  # type: ignore[attr-defined]
    medial_gap = (midline - right) if side == "image-left" else (left - midline)
    component = labels[top:bottom, left:right] == region.label  # type: ignore[attr-defined]
    border = 0
    if top == 0:
        border += int(component[0].sum())
    if bottom == rows:
        border += int(component[-1].sum())
    if left == 0:
        border += int(component[:, 0].sum())
    if right == cols:
        border += int(component[:, -1].sum())
    return (
        area >= CORE_MIN_AREA * rows * cols
        and CORE_CENTROID_ROWS[0] * rows <= centroid_row <= CORE_CENTROID_ROWS[1] * rows
        and medial_gap <= CORE_MAX_MEDIAL_GAP * cols
        and bottom - top >= CORE_MIN_HEIGHT * rows
        and bottom - top >= CORE_MIN_ASPECT * (right - left)
        and border <= CORE_MAX_BORDER * float(region.perimeter)  # type: ignore[attr-defined]
    )


def _complete_by_mirror(cores: dict[str, np.ndarray], midline: int, body: np.ndarray) -> dict[str, np.ndarray]:
    """Add the other side's core, mirrored, to a side whose own core is much smaller."""
    completed = {}
    cols = np.arange(body.shape[1])[None, :]
    for side, other in (("image-left", "image-right"), ("image-right", "image-left")):
        mask = cores[side].copy()
        if cores[side].sum() < MIRROR_BELOW * cores[other].sum():
            mirrored = _mirror(cores[other], midline) & body
            if cores[side].sum() >= LATERAL_ONLY_ABOVE * cores[other].sum():
                # Only lateral to the own core's medial edge: a small lung beside a large heart must
                # not be "completed" with the heart.
                medial = _medial_edge(cores[side], side)
                mirrored &= (cols <= medial[:, None]) if side == "image-left" else (cols >= medial[:, None])
            mask |= mirrored
            mask &= (cols < midline) if side == "image-left" else (cols >= midline)
        completed[side] = mask
    return completed


def _medial_edge(core: np.ndarray, side: str) -> np.ndarray:
    """Per row, the medial column of a core, carried up and down beyond its first and last rows."""
    present = core.any(axis=1)
    edge = _edge_columns(core, last=side == "image-left").astype(np.float64)
    rows = np.arange(core.shape[0])
    return np.interp(rows, rows[present], edge[present])


def _mirror(mask: np.ndarray, midline: int) -> np.ndarray:
    """Reflect a mask across the column ``midline``."""
    out = np.zeros(mask.shape, dtype=bool)
    rr, cc = np.nonzero(mask)
    mirrored = 2 * midline - cc
    keep = (mirrored >= 0) & (mirrored < mask.shape[1])
    out[rr[keep], mirrored[keep]] = True
    return ndimage.binary_closing(out, structure=disk(1))


def _abdomen_level(smooth: np.ndarray, body: np.ndarray, from_row: int) -> float:
    """Display level of the upper abdomen: the lower quartile of the body below ``from_row``."""
    below = smooth[from_row:][body[from_row:]]
    if below.size > 50:
        return float(np.percentile(below, 25))
    return float(np.percentile(smooth[body], 90))


def _base_row(smooth: np.ndarray, mask: np.ndarray, body: np.ndarray, limit: int, abdomen: float) -> int:
    """First row below a hemithorax's lowest pixel whose median reaches the abdomen's level."""
    lowest, columns = _lowest_and_columns(mask)
    for row in range(lowest, limit):
        inside = body[row, columns]
        if not inside.any():
            return row
        window = smooth[max(0, row - 1) : row + 2, columns][body[max(0, row - 1) : row + 2, columns]]
        if float(np.median(window)) >= abdomen:
            return row
    return limit


def _texture(work: np.ndarray) -> np.ndarray:
    """Local spread of the working image's band of rib and vessel widths (:data:`TEXTURE_SIGMAS`)."""
    image = np.asarray(work, dtype=np.float64)
    band = ndimage.gaussian_filter(image, TEXTURE_SIGMAS[0]) - ndimage.gaussian_filter(image, TEXTURE_SIGMAS[1])
    # A running mean of squares can come out a rounding error below 0.
    return np.sqrt(np.maximum(ndimage.uniform_filter(band * band, TEXTURE_WINDOW), 0.0))


def _meets_diaphragm(
    smooth: np.ndarray, mask: np.ndarray, core: np.ndarray, body: np.ndarray, base: int, abdomen: float
) -> bool:
    """Whether the rows just above a base are aerated lung, well darker than the abdomen (the diaphragm's
    step), rather than an opacity that has already reached the abdomen's level."""
    _, columns = _lowest_and_columns(mask)
    above_rows = slice(max(0, base - DIAPHRAGM_STEP_ROWS[0]), max(1, base - DIAPHRAGM_STEP_ROWS[1]))
    above = smooth[above_rows, columns][body[above_rows, columns]]
    if not above.size:
        return True
    darkest = float(np.percentile(smooth[core], 2))
    return abdomen - float(np.median(above)) > DIAPHRAGM_STEP * (abdomen - darkest)


def _textured_rows_end(texture: np.ndarray, mask: np.ndarray, core: np.ndarray, body: np.ndarray, limit: int) -> int:
    """The last row below a hemithorax's lowest whose median texture is still the lung's (see
    :data:`TEXTURE_KEEP`), searched down to ``limit``."""
    last, columns = _lowest_and_columns(mask)
    level = TEXTURE_KEEP * float(np.median(texture[core]))
    for row in range(last + 1, limit):
        inside = body[row, columns]
        if inside.sum() < 0.5 * (columns.stop - columns.start):
            break
        if float(np.median(texture[row, columns][inside])) >= level:
            last = row
        elif row - last >= TEXTURE_GAP_ROWS:
            break
    return last


def _lowest_and_columns(mask: np.ndarray) -> tuple[int, slice]:
    """A mask's lowest row and the columns it spans."""
    rr, cc = np.nonzero(mask)
    return int(rr.max()), slice(int(cc.min()), int(cc.max()) + 1)


def _hemithorax(mask: np.ndarray, side: str, base: int) -> np.ndarray:
    """Convex hull of a side's lung and its base line, from the medial to the lateral edge."""
    rr, cc = np.nonzero(mask)
    lowest = rr >= rr.max() - max(3, 0.1 * (rr.max() - rr.min()))
    medial = cc[lowest].max() if side == "image-left" else cc[lowest].min()
    lateral = cc.min() if side == "image-left" else cc.max()
    points = np.concatenate([np.column_stack([rr, cc]), [[base, medial], [base, lateral]]]).astype(np.float64)
    out = np.zeros(mask.shape, dtype=bool)
    try:
        hull = points[ConvexHull(points).vertices]
    except QhullError:
        return mask.copy()
    fill_rows, fill_cols = polygon(hull[:, 0], hull[:, 1], mask.shape)
    out[fill_rows, fill_cols] = True
    return out | mask


def _edge_columns(mask: np.ndarray, *, last: bool) -> np.ndarray:
    """Per row, the last (or first) column of ``mask``; -1 (or the width) on empty rows."""
    rows, cols = mask.shape
    any_row = mask.any(axis=1)
    if last:
        index = cols - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.where(any_row, index, -1)
    return np.where(any_row, np.argmax(mask, axis=1), cols)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rr, cc = np.nonzero(mask)
    return int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())
