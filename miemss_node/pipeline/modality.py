"""Settings for one image: the Modality's overrides, the patch size in mm, the body part.

``[pipeline.modality.CR]`` and its siblings override ``[pipeline]`` per Modality (0008,0060); a
patch size in mm becomes pixels of the working image from the pixel spacing, so that a patch covers
the same anatomy on a 0.1 mm mammogram and on a 0.2 mm chest film.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from miemss_node.pipeline.base import DecodedImage, PipelineSettings
from miemss_node.pipeline.features import working_shape

logger = logging.getLogger(__name__)

#: A patch in mm never becomes smaller than this many working pixels (HOG needs a few cells' worth).
MIN_PATCH_PX = 6

#: Body Part Examined values for which the lung-field estimate is tried.
CHEST_PARTS = frozenset({"", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS"})


def settings_for_image(settings: PipelineSettings, image: DecodedImage) -> PipelineSettings:
    """Resolve the settings that apply to one decoded frame.

    Parameters
    ----------
    settings
        The configured ``[pipeline]`` settings (with their per-Modality overrides).
    image
        The frame: its modality, pixel spacing, shape and body part.

    Returns
    -------
    PipelineSettings
        The Modality's override (or the base), with ``patch_size`` in working pixels computed from
        ``patch_size_mm`` when that and the spacing are known, and ``lung_field`` off for a body
        part other than the chest.
    """
    chosen = settings.for_modality(image.modality)
    changes: dict[str, Any] = {}
    if chosen.patch_size_mm > 0 and image.pixel_spacing_mm is not None:
        rows, cols = image.pixels.shape[:2]
        work_rows, _ = working_shape((rows, cols), chosen.analysis_max_side)
        work_spacing = min(image.pixel_spacing_mm) * rows / work_rows
        patch = round(chosen.patch_size_mm / work_spacing)
        changes["patch_size"] = int(min(max(MIN_PATCH_PX, patch), max(MIN_PATCH_PX, chosen.analysis_max_side // 4)))
    if chosen.lung_field and image.body_part.strip().upper() not in CHEST_PARTS:
        changes["lung_field"] = False
    return replace(chosen, **changes) if changes else chosen
