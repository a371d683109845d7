"""Small PNGs of each analysed image, saved beside a job's results for the dashboard.

Per analysed image (or frame): the heatmap drawn over the image, as in the Secondary Capture, and
the heatmap alone, at most :data:`MAX_SIDE` pixels on the longest side. ``index.json`` lists them
with the source's SOP Instance UID, frame number and whether the source has burned-in annotation
(text that may identify the patient, so the dashboard hides that overlay unless patient data is
shown). The folder is :meth:`miemss_node.storage.StorageLayout.thumbnail_dir`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset

from miemss_node.encode.overlay import heat_colours, render_overlay
from miemss_node.encode.templates import CaptureTemplate
from miemss_node.pipeline.base import ImageAnalysis
from miemss_node.storage import write_atomically

logger = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels.
MAX_SIDE = 256

INDEX_NAME = "index.json"


@dataclass(frozen=True, kw_only=True)
class Thumbnail:
    """The thumbnails of one analysed image, as listed in ``index.json``."""

    image: int
    sop_instance_uid: str
    frame_number: int | None
    overlay: str
    heatmap: str
    burned_in_annotation: bool
    regions: int


def _small_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = int(shape[0]), int(shape[1])
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _resize(array: np.ndarray, shape: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    rows, cols = shape
    image = Image.fromarray(np.ascontiguousarray(array))
    return np.asarray(image.resize((cols, rows), resample))


#: Pillow's PNG options. Its ``optimize`` made a 2k film's overlay thumbnail 6 % smaller (48.6 against
#: 51.8 kB) for 0.10 s more of CPU, spent while the sender is delivering the job's results
#: (``benchmarks/thumbnails.py``).
PNG_OPTIONS: dict[str, object] = {}


def _png(rgb: np.ndarray, options: dict[str, object] | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", **(PNG_OPTIONS if options is None else options))
    return buffer.getvalue()


def render_thumbnails(
    analysis: ImageAnalysis, template: CaptureTemplate, png_options: dict[str, object] | None = None
) -> tuple[bytes, bytes]:
    """Return the overlay and heatmap PNGs of one analysed image, downscaled first (fast).

    Parameters
    ----------
    analysis
        The analysed image.
    template
        The SC template, so the overlay looks like the Secondary Capture (without the text).
    png_options
        Pillow's PNG options; :data:`PNG_OPTIONS` when None.

    Returns
    -------
    tuple of bytes
        (overlay PNG, heatmap PNG).
    """
    shape = _small_shape(analysis.decoded.pixels.shape)
    pixels = _resize(analysis.decoded.pixels.astype(np.float32), shape, Image.Resampling.BILINEAR)
    heatmap = _resize(analysis.region_map.heatmap.astype(np.float32), shape, Image.Resampling.BILINEAR)
    labels = _resize(analysis.region_map.labels.astype(np.int32), shape, Image.Resampling.NEAREST)
    overlay = render_overlay(
        pixels,
        heatmap,
        labels,
        opacity=template.heatmap_opacity,
        outline_rgb=template.outline_rgb,
        text_rgb=template.text_rgb,
        text=(),
    )
    heat = np.clip(np.rint(heat_colours(heatmap)), 0, 255).astype(np.uint8)
    return _png(overlay, png_options), _png(heat, png_options)


def write_thumbnails(
    folder: Path, sources: Sequence[Dataset], analyses: Sequence[ImageAnalysis], template: CaptureTemplate
) -> list[Thumbnail]:
    """Write every analysed image's thumbnails and ``index.json`` into ``folder``.

    Parameters
    ----------
    folder
        From :meth:`miemss_node.storage.StorageLayout.thumbnail_dir`.
    sources
        The analysed source datasets (for Burned In Annotation).
    analyses
        One per analysed image or frame.
    template
        The SC template.

    Returns
    -------
    list of Thumbnail
        What ``index.json`` lists.

    Raises
    ------
    OSError
        When the folder cannot be written.
    """
    burned_in = {str(source.SOPInstanceUID): source.get("BurnedInAnnotation") == "YES" for source in sources}
    listed = []
    for number, analysis in enumerate(analyses, start=1):
        overlay, heatmap = render_thumbnails(analysis, template)
        names = (f"image-{number}-overlay.png", f"image-{number}-heatmap.png")
        for name, data in zip(names, (overlay, heatmap), strict=True):
            write_atomically(folder / name, data)
        uid = analysis.decoded.sop_instance_uid or ""
        listed.append(
            Thumbnail(
                image=number,
                sop_instance_uid=uid,
                frame_number=analysis.decoded.frame_number,
                overlay=names[0],
                heatmap=names[1],
                burned_in_annotation=burned_in.get(uid, False),
                regions=len(analysis.region_map.regions),
            )
        )
    index = json.dumps([thumbnail.__dict__ for thumbnail in listed], indent=1).encode("utf-8")
    write_atomically(folder / INDEX_NAME, index)
    return listed


def read_thumbnails(folder: Path) -> list[Thumbnail]:
    """The thumbnails listed in ``folder/index.json``; empty when there is none or it is unreadable."""
    try:
        entries = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        return [Thumbnail(**entry) for entry in entries]
    except (OSError, ValueError, TypeError):
        return []
