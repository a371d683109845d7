"""User-provided image + mask pairs: the pipeline's regions against a reference segmentation.

The image is a DICOM file (first frame, or the frame the SEG references) or a PNG/JPEG; the mask
is a PNG/JPEG of the image's size (non-zero = lesion; connected parts are the lesions) or a DICOM
SEG that references the image (all its segments combined, read with highdicom).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from miemss_node.errors import DecodeError, MiemssError
from miemss_node.evaluate.metrics import match
from miemss_node.pipeline.anomaly import intensity_zscore
from miemss_node.pipeline.base import DecodedImage, PipelineSettings
from miemss_node.pipeline.runner import analyse_image

logger = logging.getLogger(__name__)

#: Picture files (no DICOM header).
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


class MaskError(MiemssError):
    """A reference mask does not fit its image: give a mask of the same size, or a SEG that references it."""


def load_pair(image_path: Path, mask_path: Path, picture_modality: str = "CR") -> tuple[DecodedImage, np.ndarray]:
    """Decode an image and its reference mask.

    Returns
    -------
    tuple
        The decoded frame and a uint16 label image of the lesions (connected parts of the mask).

    Raises
    ------
    DecodeError
        If the image cannot be decoded.
    MaskError
        If the mask cannot be read or does not match the image.
    """
    from miemss_node.pipeline.decode import decode_dataset, decode_image_file, read_dicom_file

    if image_path.suffix.lower() in PICTURE_SUFFIXES:
        image = replace(decode_image_file(image_path), modality=picture_modality)
        source = None
    else:
        source = read_dicom_file(image_path)
        image = decode_dataset(source, max_frames=1)[0]
    if mask_path.suffix.lower() in PICTURE_SUFFIXES:
        try:
            with Image.open(mask_path) as picture:
                mask = np.asarray(picture.convert("L")) > 0
        except OSError as exc:
            raise MaskError(f"{mask_path.name} cannot be read as a picture: {exc}") from exc
    else:
        mask = _seg_mask(mask_path, source)
    if mask.shape != image.pixels.shape:
        raise MaskError(f"{mask_path.name} is {mask.shape}, the image {image_path.name} is {image.pixels.shape}")
    labels, _count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return image, labels.astype(np.uint16)


def _seg_mask(path: Path, source: Any) -> np.ndarray:
    """All segments of a DICOM SEG combined, on the source image's first frame."""
    import highdicom as hd

    if source is None:
        raise MaskError(f"{path.name} is a DICOM SEG: its image must be DICOM too (the SEG references it)")
    try:
        seg = hd.seg.segread(path)
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(source.SOPInstanceUID)], combine_segments=True, skip_overlap_checks=True
        )
    except Exception as exc:  # noqa: BLE001 - highdicom raises several types for a SEG that does not fit
        raise MaskError(f"{path.name} gives no mask for {source.SOPInstanceUID}: {type(exc).__name__}: {exc}") from exc
    return np.asarray(pixels[0]) > 0


def evaluate_pairs(pairs: Sequence[tuple[Path, Path]], settings: PipelineSettings) -> list[dict[str, Any]]:
    """Run the pipeline (and the z-score baseline) on each pair and compare with its mask.

    A pair that cannot be read is reported with its error, and the others are still evaluated.
    """
    records: list[dict[str, Any]] = []
    for image_path, mask_path in pairs:
        try:
            image, lesions = load_pair(image_path, mask_path)
        except (DecodeError, MaskError) as exc:
            logger.warning("pair %s skipped: %s", image_path.name, exc, extra={"action": "evaluate.pair_skipped"})
            records.append({"image": image_path.name, "mask": mask_path.name, "error": str(exc)})
            continue
        analysis = analyse_image(image, settings)
        method = analysis.scores.method if analysis.scores is not None else analysis.method
        detectors = {method: analysis.region_map}
        from miemss_node.pipeline.features import patch_features
        from miemss_node.pipeline.modality import settings_for_image
        from miemss_node.pipeline.regions import find_regions

        chosen = settings_for_image(settings, image)
        # The baseline scores patches; the chest analysis has none, so they are computed for it here.
        features = analysis.features if analysis.features is not None else patch_features(analysis.enhanced, chosen)
        baseline = intensity_zscore(analysis.enhanced, features, chosen)
        detectors["zscore"] = find_regions(baseline, features, image, chosen)
        for name, region_map in detectors.items():
            detection = match(region_map.labels, lesions)
            records.append(
                {
                    "image": image_path.name,
                    "mask": mask_path.name,
                    "detector": name,
                    "dice": detection.dice,
                    "iou": detection.iou,
                    "lesions": detection.lesions,
                    "hits": detection.hits,
                    "false_positives": detection.false_positives,
                }
            )
    return records
