"""The Key Object Selection (KO) document of a study: the key image, flagged "Of Interest".

PS3.3 A.59 Key Object Selection Document IOD, content PS3.16 TID 2010, built with
:class:`highdicom.ko.KeyObjectSelectionDocument`. The key image is the analysed image (or frame)
with the highest anomaly score of the study: the highest region score when it has regions, else
the heatmap's maximum; the first one wins a tie. The selection is made by a device (the node,
TID 1004 as in the SR) and its description says it is AI-generated and unverified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import DeviceObserverIdentifyingAttributes, ObserverContext
from pydicom import Dataset
from pydicom.sr.codedict import codes

from miemss_node.encode.equipment import DEVICE_OBSERVER_UID, Equipment, processing_equipment
from miemss_node.encode.templates import KeyObjectsTemplate
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class KeyImage:
    """One analysed image (or frame) that may be the key image."""

    source: Dataset
    analysis: ImageAnalysis


@dataclass(frozen=True, kw_only=True)
class KoRequest:
    """Everything needed to encode the study's KO."""

    candidates: tuple[KeyImage, ...]
    template: KeyObjectsTemplate
    equipment: Equipment
    series_uid: str
    sop_instance_uid: str
    series_number: int


def image_score(analysis: ImageAnalysis) -> float:
    """The highest anomaly score of an analysed image: of its regions, else of its heatmap."""
    regions = analysis.region_map.regions
    if regions:
        return max(region.max_score for region in regions)
    heatmap = analysis.region_map.heatmap
    return float(np.nanmax(heatmap)) if heatmap.size else 0.0


def key_image_index(analyses: Sequence[ImageAnalysis]) -> int:
    """Index of the key image among ``analyses``: images with regions first, then the highest score.

    Raises
    ------
    EncodeError
        When there is no analysis.
    """
    if not analyses:
        raise EncodeError("a key image needs at least one analysed image")
    ranked = [(bool(a.region_map.regions), image_score(a), -index) for index, a in enumerate(analyses)]
    return -max(ranked)[2]


def _reference_frame(ko: Dataset, frame_number: int) -> None:
    """Name the key frame of a multi-frame image in the IMAGE item (PS3.3 Table 10-3)."""
    for item in ko.ContentSequence:
        for reference in item.get("ReferencedSOPSequence", []):
            reference.ReferencedFrameNumber = frame_number


def build_key_object_selection(request: KoRequest) -> KeyObjectSelectionDocument:
    """Encode the KO that flags the study's key image.

    Parameters
    ----------
    request
        The analysed images (repaired headers and analyses), the template and the UIDs.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        In the sources' study, referencing the key image (and its frame).

    Raises
    ------
    EncodeError
        When there is no candidate, or highdicom rejects the content.
    """
    candidates = request.candidates
    index = key_image_index([candidate.analysis for candidate in candidates])
    key = candidates[index]
    template = request.template
    analysis = key.analysis
    description = template.description_format.format(
        score=image_score(analysis), regions=len(analysis.region_map.regions)
    )
    equipment = request.equipment
    try:
        content = KeyObjectSelection(
            document_title=template.document_title,
            referenced_objects=[key.source],
            observer_device_context=ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                    uid=DEVICE_OBSERVER_UID,
                    name=template.device_observer_name,
                    manufacturer_name=equipment.manufacturer,
                    model_name=equipment.model_name,
                ),
            ),
            description=description,
        )
        ko = KeyObjectSelectionDocument(
            evidence=[key.source],
            content=content,
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=1,
            manufacturer=equipment.manufacturer,
            institution_name=equipment.institution_name,
            series_description=template.series_description,
            contributing_equipment=[processing_equipment(equipment)],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"KO could not be built: {exc}") from exc
    frame = analysis.decoded.frame_number
    if frame is not None:
        _reference_frame(ko, frame)
    logger.info(
        "KO encoded: key image %s",
        key.source.SOPInstanceUID,
        extra={
            "action": "encode.ko",
            "sop_instance_uid": str(ko.SOPInstanceUID),
            "source_sop_instance_uid": str(key.source.SOPInstanceUID),
            "frame_number": frame,
        },
    )
    return ko
