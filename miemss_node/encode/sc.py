"""The Secondary Capture (SC) of one analysed image or frame: the heatmap drawn over it.

For viewers that display neither SEG nor SR: 8-bit RGB (PS3.3 A.8.1 Secondary Capture Image IOD)
with the heatmap, the region outlines and "NOT FOR DIAGNOSIS" / "AI-generated" burned in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from highdicom.sc import SCImage
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from miemss_node.encode.equipment import Equipment, processing_equipment
from miemss_node.encode.overlay import render_analysis_overlay
from miemss_node.encode.series_attributes import copy_laterality
from miemss_node.encode.templates import CaptureTemplate
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis

logger = logging.getLogger(__name__)

#: highdicom's SCImage insists on a biped orientation for the PATIENT coordinate system; this
#: placeholder is replaced at once by the source's own (possibly empty, Type 2C) value.
_ORIENTATION_PLACEHOLDER = ("A", "F")


@dataclass(frozen=True, kw_only=True)
class ScRequest:
    """Everything needed to encode one SC."""

    source: Dataset
    analysis: ImageAnalysis
    template: CaptureTemplate
    equipment: Equipment
    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int


def _source_reference(source: Dataset, frame_number: int | None) -> Dataset:
    """An item of the Source Image Sequence (PS3.3 C.7.6.1, Table 10-3)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None:
        item.ReferencedFrameNumber = frame_number
    purpose = Dataset()
    purpose.CodeValue = codes.DCM.SourceImageForImageProcessingOperation.value
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = codes.DCM.SourceImageForImageProcessingOperation.meaning
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _copy_lossy_flag(source: Dataset, sc: SCImage) -> None:
    """Once lossy, always flagged: the overlay derives from lossy pixels (PS3.3 C.7.6.1.1.5)."""
    if source.get("LossyImageCompression") != "01":
        return
    sc.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in source:
            setattr(sc, keyword, source[keyword].value)


def build_secondary_capture(request: ScRequest) -> SCImage:
    """Encode the heatmap overlay of one analysed image or frame.

    Parameters
    ----------
    request
        The repaired source header, its analysis, the template and the UIDs.

    Returns
    -------
    highdicom.sc.SCImage
        Rows and Columns of the source, RGB, 8 bits, Explicit VR Little Endian.

    Raises
    ------
    EncodeError
        When the decoded image does not have the source's size, or highdicom rejects it.
    """
    source = request.source
    analysis = request.analysis
    source_uid = str(source.SOPInstanceUID)
    shape = (int(source.Rows), int(source.Columns))
    if analysis.decoded.pixels.shape != shape:
        raise EncodeError(
            f"decoded image of {source_uid} has shape {analysis.decoded.pixels.shape}, the source has {shape}"
        )
    template = request.template
    try:
        rgb = render_analysis_overlay(analysis, template)
        sc = SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=request.instance_number,
            manufacturer=request.equipment.manufacturer,
            patient_orientation=_ORIENTATION_PLACEHOLDER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[processing_equipment(request.equipment)],
            series_description=template.series_description,
            manufacturer_model_name=request.equipment.model_name,
            software_versions=request.equipment.software_versions[0],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"SC of {source_uid} could not be built: {exc}") from exc
    orientation = source.get("PatientOrientation", "") or ""
    sc.add_new("PatientOrientation", "CS", orientation)
    if orientation and "AnatomicalOrientationType" in source:
        sc.AnatomicalOrientationType = source.AnatomicalOrientationType
    copy_laterality(source, sc)
    sc.ConversionType = template.conversion_type
    sc.DerivationDescription = template.derivation_description
    if analysis.attention is not None:
        sc.DerivationDescription += "; magenta outline: ViT attention rollout, upper half of its range"
    sc.SourceImageSequence = [_source_reference(source, analysis.decoded.frame_number)]
    if source.get("BurnedInAnnotation") in ("YES", "NO"):
        # Our text does not identify the patient; the source's own annotation is still there.
        sc.BurnedInAnnotation = source.BurnedInAnnotation
    _copy_lossy_flag(source, sc)
    logger.info(
        "SC encoded for %s",
        source_uid,
        extra={
            "action": "encode.sc",
            "sop_instance_uid": str(sc.SOPInstanceUID),
            "source_sop_instance_uid": source_uid,
            "frame_number": analysis.decoded.frame_number,
        },
    )
    return sc
