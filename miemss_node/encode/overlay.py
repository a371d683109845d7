"""Draw the heatmap, the region outlines and the warning text over an image (8-bit RGB)."""

from __future__ import annotations

import threading
import weakref

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from skimage.morphology import dilation, footprint_rectangle
from skimage.segmentation import find_boundaries

from miemss_node.encode.templates import CaptureTemplate
from miemss_node.pipeline.base import ImageAnalysis
from miemss_node.pipeline.objects import SATURATED

#: Colour stops of the heatmap, from a score of 0 (blue) to 1 (red), like a "jet" map.
_HEAT_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_HEAT_COLOURS = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float32)

#: Colour of the ViT attention outline: magenta, apart from the heatmap's colours and the outlines.
ATTENTION_RGB = (255, 0, 255)

#: The attention outline encloses the pixels whose rollout (min-max scaled to [0, 1]) reaches this.
ATTENTION_LEVEL = 0.5

#: Burned-in line that explains the attention outline, added when there is one.
ATTENTION_TEXT = "Magenta: ViT attention"


def heat_colours(heatmap: np.ndarray) -> np.ndarray:
    """Map scores in [0, 1] to RGB float colours in [0, 255], shape ``heatmap.shape + (3,)``."""
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colours = np.empty((*heat.shape, 3), dtype=np.float32)
    for channel in range(3):  # into place: no float64 stack of three channels to convert afterwards
        colours[..., channel] = np.interp(heat, _HEAT_STOPS, _HEAT_COLOURS[:, channel])
    return colours


def outline_pixels(labels: np.ndarray) -> np.ndarray:
    """Region boundaries, about 1 pixel per 512 pixels of the shorter side, at least 1."""
    width = max(1, round(min(labels.shape) / 512))
    boundaries = np.zeros(labels.shape, dtype=bool)
    labelled = labels != 0
    rows, cols = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
    if not rows.size:
        return boundaries
    # Only around the regions: a film is mostly background, and its boundaries are found the same in
    # a crop with a margin wider than the dilation.
    margin = width + 2
    top, bottom = max(0, int(rows[0]) - margin), min(labels.shape[0], int(rows[-1]) + margin + 1)
    left, right = max(0, int(cols[0]) - margin), min(labels.shape[1], int(cols[-1]) + margin + 1)
    crop = find_boundaries(labels[top:bottom, left:right], mode="inner")
    if width > 1:
        crop = dilation(crop, footprint_rectangle((width, width)))
    boundaries[top:bottom, left:right] = crop
    return boundaries


#: A pixel may be burned-in text or a lead marker (drawn at full white, ``objects.SATURATED``) when it
#: stands out this much above its surroundings (a white top-hat): bright anatomy does not.
ANNOTATION_CONTRAST = 0.25
#: Annotations are looked for on every this-many-th pixel, with a top-hat this many of those wide.
ANNOTATION_STRIDE = 4
ANNOTATION_TOPHAT = 9
#: The text stays in the top left corner while annotations and regions cover at most this fraction of
#: its box there.
TEXT_STAYS_BELOW = 0.002


def _draw_text(
    image: Image.Image, lines: tuple[str, ...], colour: tuple[int, int, int], avoid: np.ndarray | None = None
) -> None:
    """Burn ``lines`` into a corner, sized to the image, outlined in black.

    The corner is the top left one, unless ``avoid`` (True on the film's own annotations and on the
    regions) covers part of it; then the freest corner (:func:`_text_corner`): a radiologist must still
    read the film's lead marker and burned-in text, and see every outline.
    """
    size = max(8, min(image.width, image.height) // 24)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    margin = max(1, size // 3)
    step = int(size * 1.25)
    width = int(max((draw.textlength(line, font=font) for line in lines), default=0)) + 2 * margin
    height = step * len(lines) + margin
    left, top = _text_corner(avoid, width, height, margin)
    y = top
    for line in lines:
        x = left if left == margin else image.width - margin - int(draw.textlength(line, font=font))
        draw.text((x, y), line, fill=colour, font=font, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
        y += step


def _text_corner(avoid: np.ndarray | None, width: int, height: int, margin: int) -> tuple[int, int]:
    """(left, top) of the text block: the top left corner, unless ``avoid`` covers more than
    :data:`TEXT_STAYS_BELOW` of its box there; then the corner whose box ``avoid`` covers least (ties
    keep the order top left, top right, bottom left, bottom right)."""
    if avoid is None:
        return margin, margin
    rows, cols = avoid.shape
    width, height = min(width, cols), min(height, rows)
    corners = {
        (margin, margin): avoid[:height, :width],
        (cols - width, margin): avoid[:height, cols - width :],
        (margin, rows - height): avoid[rows - height :, :width],
        (cols - width, rows - height): avoid[rows - height :, cols - width :],
    }
    covered = {corner: int(box.sum()) for corner, box in corners.items()}
    if covered[(margin, margin)] <= TEXT_STAYS_BELOW * width * height:
        return margin, margin  # a speck is not worth moving the text away from where readers expect it
    return min(covered, key=lambda corner: covered[corner])


def film_annotations(pixels: np.ndarray) -> np.ndarray:
    """The film's own burned-in text and lead markers: full-white strokes on a darker background,
    found on a subsampled image (a letter or a marker is several pixels wide) and returned full size."""
    step = ANNOTATION_STRIDE
    small = np.nan_to_num(np.asarray(pixels, dtype=np.float32)[::step, ::step])
    tophat = small - ndimage.grey_opening(small, size=(ANNOTATION_TOPHAT, ANNOTATION_TOPHAT))
    marks = (small >= SATURATED) & (tophat >= ANNOTATION_CONTRAST)
    return np.repeat(np.repeat(marks, step, axis=0), step, axis=1)[: pixels.shape[0], : pixels.shape[1]]


def render_overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    labels: np.ndarray,
    *,
    opacity: float,
    outline_rgb: tuple[int, int, int],
    text_rgb: tuple[int, int, int],
    text: tuple[str, ...],
    attention: np.ndarray | None = None,
) -> np.ndarray:
    """Return the overlay image as uint8 RGB, shape ``pixels.shape + (3,)``.

    Parameters
    ----------
    pixels
        Display image in [0, 1] (higher is brighter).
    heatmap
        Anomaly score per pixel in [0, 1], same shape; blended with alpha ``opacity * score``
        so low scores leave the image visible.
    labels
        Region label image, same shape; its boundaries are drawn in ``outline_rgb``.
    opacity
        Heatmap opacity at a score of 1.
    outline_rgb, text_rgb
        Colours of the outlines and of the text.
    text
        Lines burned in (e.g. "NOT FOR DIAGNOSIS").
    attention
        ViT attention rollout in [0, 1], same shape, or None; where it reaches
        :data:`ATTENTION_LEVEL` is outlined in :data:`ATTENTION_RGB`, and :data:`ATTENTION_TEXT` is
        burned in.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, columns, 3).

    Raises
    ------
    ValueError
        When the arrays' shapes differ.
    """
    if pixels.shape != heatmap.shape or pixels.shape != labels.shape or pixels.ndim != 2:
        raise ValueError(
            f"pixels {pixels.shape}, heatmap {heatmap.shape} and labels {labels.shape} must be the "
            "same 2-D shape"
        )
    grey = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0) * 255.0
    rgb = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., np.newaxis], 3, axis=-1)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    alpha = heat * np.float32(opacity)
    # Blended where the heatmap shows; elsewhere (alpha 0) the blend is the grey pixel itself.
    tinted = alpha > 0
    if tinted.any():
        weight = alpha[tinted][:, np.newaxis]
        blended = grey[tinted][:, np.newaxis] * (1.0 - weight) + heat_colours(heat[tinted]) * weight
        rgb[tinted] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    rgb[outline_pixels(labels)] = np.array(outline_rgb, dtype=np.uint8)
    if attention is not None:
        if attention.shape != pixels.shape:
            raise ValueError(f"attention {attention.shape} must have the shape of pixels {pixels.shape}")
        attended = (np.nan_to_num(attention) >= ATTENTION_LEVEL).astype(np.uint8)
        rgb[outline_pixels(attended)] = np.array(ATTENTION_RGB, dtype=np.uint8)
        text = (*text, ATTENTION_TEXT)
    image = Image.fromarray(rgb)
    _draw_text(image, text, text_rgb, avoid=film_annotations(pixels) | (labels != 0))
    return np.asarray(image, dtype=np.uint8).copy()


#: Overlays drawn for analyses still alive, by (analysis, how the template draws): the SC, the PDF
#: and ``process`` each want the same picture, and drawing a 2k film takes a noticeable share of a job.
_DRAWN: dict[tuple[object, ...], tuple[weakref.ref[ImageAnalysis], np.ndarray]] = {}
_DRAWN_LOCK = threading.Lock()


def render_analysis_overlay(analysis: ImageAnalysis, template: CaptureTemplate) -> np.ndarray:
    """The overlay of one analysed image, drawn as ``sc/secondary_capture.json`` says (uint8 RGB).

    The burned-in text is the template's lines and the image's abnormality score. The array is
    read-only: it is drawn once per analysis and template and shared while the analysis lives.
    """
    key = _overlay_key(analysis, template)
    with _DRAWN_LOCK:
        drawn = _DRAWN.get(key)
    if drawn is not None and drawn[0]() is analysis:
        return drawn[1]
    return remember_overlay(analysis, template, _draw_analysis_overlay(analysis, template))


def remember_overlay(analysis: ImageAnalysis, template: CaptureTemplate, rgb: np.ndarray) -> np.ndarray:
    """Keep ``rgb``, drawn by :func:`render_analysis_overlay` for ``analysis`` in another process (an
    image pool's), as its overlay here, so that the SC, the PDF and the thumbnails do not draw it again.
    Returns the kept, read-only array."""
    key = _overlay_key(analysis, template)
    rgb.setflags(write=False)

    def forget(_: object) -> None:
        with _DRAWN_LOCK:
            _DRAWN.pop(key, None)

    with _DRAWN_LOCK:
        _DRAWN[key] = (weakref.ref(analysis, forget), rgb)
    return rgb


def _overlay_key(analysis: ImageAnalysis, template: CaptureTemplate) -> tuple[object, ...]:
    """What an overlay depends on: the analysis (while it lives) and how the template draws."""
    return (
        id(analysis),
        template.heatmap_opacity,
        template.outline_rgb,
        template.text_rgb,
        template.burned_in_text,
        template.abnormality_score_format,
    )


def _draw_analysis_overlay(analysis: ImageAnalysis, template: CaptureTemplate) -> np.ndarray:
    score_line = template.abnormality_score_format.format(score=float(analysis.abnormality_score))
    return render_overlay(
        analysis.decoded.pixels,
        analysis.region_map.heatmap,
        analysis.region_map.labels,
        opacity=template.heatmap_opacity,
        outline_rgb=template.outline_rgb,
        text_rgb=template.text_rgb,
        text=(*template.burned_in_text, score_line),
        attention=None if analysis.attention is None else analysis.attention.heatmap,
    )
