"""The Parametric Map (PM) of one analysed image or frame: the anomaly heatmap as float32.

PS3.3 A.75 Parametric Map IOD, built with :class:`highdicom.pm.ParametricMap`: one frame of 32-bit
float values, the anomaly score in [0, 1], with an identity Real World Value Mapping whose unit is
UCUM "1" (no units) and whose quantity is the template's (DCM 130404 "Saliency", as in the SR).

The IOD requires a patient coordinate system (Frame of Reference module, Plane Position and Plane
Orientation functional groups), which a projection radiograph does not have. For such a source
the map takes the plane the SEG of the same image has (:mod:`~miemss_node.encode.plane`): the
Frame of Reference derived from the source's SOP Instance UID and its orientation, with the plane
at the origin and the source's pixel spacing. The Derivation Image Sequence references the source
pixel for pixel (Spatial Locations Preserved YES). Sources with a Frame of Reference (CT, enhanced
MR) keep theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from highdicom import (
    PixelMeasuresSequence,
    PlaneOrientationSequence,
    PlanePositionSequence,
    VOILUTTransformation,
)
from highdicom.pm import ParametricMap, RealWorldValueMapping
from pydicom import DataElement, Dataset
from pydicom.tag import Tag

from miemss_node.encode.equipment import (
    Equipment,
    enhanced_equipment_arguments,
    processing_equipment,
)
from miemss_node.encode.plane import (
    PROJECTION_ORIENTATION,
    projection_frame_of_reference_uid,
)
from miemss_node.encode.series_attributes import copy_laterality
from miemss_node.encode.templates import ParametricMapTemplate
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis

logger = logging.getLogger(__name__)

#: Dimension Index Pointer of Frame Label (0020,9453).
_FRAME_LABEL = Tag("FrameLabel")

#: Pixel Spacing (mm) written when the source's is unknown: Type 1 in Pixel Measures, and only
#: meaningful within the map's own Frame of Reference.
_UNKNOWN_SPACING_MM = (1.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class PmRequest:
    """Everything needed to encode one Parametric Map."""

    source: Dataset
    analysis: ImageAnalysis
    template: ParametricMapTemplate
    equipment: Equipment
    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int


class _HeatmapMap(ParametricMap):
    """highdicom's ParametricMap, mended for a one-frame map indexed by Frame Label.

    highdicom 0.28 indexes a frame without spatial or channel dimension by Frame Label, but the
    Parametric Map's own channel callback replaces the one that writes Frame Label and the
    Dimension Index Values, and the constructor then fails its own consistency check. The frame
    gets both before that check.
    """

    def __init__(self, *args: object, frame_label: str, **kwargs: object) -> None:
        self._miemss_frame_label = frame_label
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _build_luts(self) -> None:
        pointers = [item.DimensionIndexPointer for item in self.get("DimensionIndexSequence", [])]
        if pointers == [_FRAME_LABEL]:
            for number, item in enumerate(self.PerFrameFunctionalGroupsSequence, start=1):
                content = item.FrameContentSequence[0]
                if not content.get("DimensionIndexValues"):
                    content.DimensionIndexValues = number
                    content.FrameLabel = self._miemss_frame_label
        super()._build_luts()


def _spacing(analysis: ImageAnalysis) -> tuple[float, float]:
    return analysis.decoded.pixel_spacing_mm or _UNKNOWN_SPACING_MM


def _frame_group(source: Dataset, frame: int, sequence: str) -> Dataset:
    """A functional group's item for one frame: the frame's own, else the shared one (PS3.3 C.7.6.16)."""
    own = source.PerFrameFunctionalGroupsSequence[frame - 1]
    if sequence in own:
        return own[sequence].value[0]
    return source.SharedFunctionalGroupsSequence[0][sequence].value[0]


def _geometry(source: Dataset, analysis: ImageAnalysis) -> tuple[Dataset, dict[str, object]]:
    """Return the header highdicom reads and the geometry arguments of the map.

    A single-frame source with a Frame of Reference and a plane is passed as is. Any other source
    is given as a one-frame copy (a shallow copy: elements replaced, never assigned) carrying our
    Frame of Reference, and the plane is passed explicitly.
    """
    frame = analysis.decoded.frame_number
    has_plane = "ImagePositionPatient" in source and "ImageOrientationPatient" in source
    if frame is None and "FrameOfReferenceUID" in source and has_plane and "PixelSpacing" in source:
        return source, {}
    header = Dataset()
    header.update(source)
    uid = str(source.SOPInstanceUID)
    if "FrameOfReferenceUID" in source and "PerFrameFunctionalGroupsSequence" in source and frame is not None:
        # An enhanced multi-frame image: the frame's own plane, in the source's Frame of Reference.
        position = [float(v) for v in _frame_group(source, frame, "PlanePositionSequence").ImagePositionPatient]
        orientation = [
            float(v) for v in _frame_group(source, frame, "PlaneOrientationSequence").ImageOrientationPatient
        ]
        spacing = [float(v) for v in _frame_group(source, frame, "PixelMeasuresSequence").PixelSpacing]
        frame_of_reference = str(source.FrameOfReferenceUID)
    else:
        position = [0.0, 0.0, 0.0]
        orientation = list(PROJECTION_ORIENTATION)
        spacing = list(_spacing(analysis))
        frame_of_reference = str(projection_frame_of_reference_uid(uid))
    if "NumberOfFrames" in source:
        # A multi-frame IOD: highdicom reads one frame's plane from the functional groups.
        header[Tag("NumberOfFrames")] = DataElement(Tag("NumberOfFrames"), "IS", 1)
        shared, per_frame = Dataset(), Dataset()
        measures = Dataset()
        measures.PixelSpacing = spacing
        shared.PixelMeasuresSequence = [measures]
        plane_orientation = Dataset()
        plane_orientation.ImageOrientationPatient = orientation
        shared.PlaneOrientationSequence = [plane_orientation]
        plane_position = Dataset()
        plane_position.ImagePositionPatient = position
        per_frame.PlanePositionSequence = [plane_position]
        for keyword, group in (
            ("SharedFunctionalGroupsSequence", shared),
            ("PerFrameFunctionalGroupsSequence", per_frame),
        ):
            header[Tag(keyword)] = DataElement(Tag(keyword), "SQ", [group])
    header[Tag("FrameOfReferenceUID")] = DataElement(Tag("FrameOfReferenceUID"), "UI", frame_of_reference)
    header[Tag("PositionReferenceIndicator")] = DataElement(
        Tag("PositionReferenceIndicator"), "LO", source.get("PositionReferenceIndicator", "") or ""
    )
    # highdicom sees a patient coordinate system only where a plane is given at the root.
    for keyword, vr, value in (
        ("ImagePositionPatient", "DS", position),
        ("ImageOrientationPatient", "DS", orientation),
        ("PixelSpacing", "DS", spacing),
        ("SliceThickness", "DS", source.get("SliceThickness")),
    ):
        header[Tag(keyword)] = DataElement(Tag(keyword), vr, value)
    geometry: dict[str, object] = {
        "plane_positions": [PlanePositionSequence("PATIENT", image_position=position)],
        "plane_orientation": PlaneOrientationSequence("PATIENT", image_orientation=orientation),
        "pixel_measures": PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=None),
    }
    return header, geometry


def _reference_frame(pm: Dataset, frame_number: int) -> None:
    """Add Referenced Frame Number to the references to a multi-frame source (PS3.3 Table 10-3)."""
    items = list(pm.get("SourceImageSequence", []))
    for frame_item in pm.PerFrameFunctionalGroupsSequence:
        for derivation in frame_item.get("DerivationImageSequence", []):
            items.extend(derivation.get("SourceImageSequence", []))
    for item in items:
        item.ReferencedFrameNumber = frame_number


def build_parametric_map(request: PmRequest) -> ParametricMap:
    """Encode the heatmap of one analysed image or frame.

    Parameters
    ----------
    request
        The repaired source header, its analysis, the template and the UIDs.

    Returns
    -------
    highdicom.pm.ParametricMap
        One frame of Float Pixel Data with the source's rows and columns.

    Raises
    ------
    EncodeError
        When the heatmap does not have the source's size, or highdicom rejects the input.
    """
    source = request.source
    analysis = request.analysis
    uid = str(source.SOPInstanceUID)
    shape = (int(source.Rows), int(source.Columns))
    heatmap = analysis.region_map.heatmap
    if heatmap.shape != shape:
        raise EncodeError(f"heatmap of {uid} has shape {heatmap.shape}, the source has {shape}")
    values = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0).astype(np.float32)
    template = request.template
    mapping = RealWorldValueMapping(
        lut_label=template.lut_label,
        lut_explanation=template.lut_explanation,
        unit=template.unit,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=template.quantity,
    )
    header, geometry = _geometry(source, analysis)
    equipment = request.equipment
    try:
        pm = _HeatmapMap(
            source_images=[header],
            pixel_array=values,
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=request.instance_number,
            **enhanced_equipment_arguments(equipment),
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                VOILUTTransformation(window_center=template.window_center, window_width=template.window_width)
            ],
            content_label=template.content_label,
            content_description=template.content_description,
            series_description=template.series_description,
            contributing_equipment=[processing_equipment(equipment)],
            frame_label=template.frame_label,
            **geometry,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise EncodeError(f"Parametric Map of {uid} could not be built: {exc}") from exc
    frame = analysis.decoded.frame_number
    if frame is not None:
        _reference_frame(pm, frame)
    copy_laterality(source, pm)
    logger.info(
        "PM encoded for %s",
        uid,
        extra={
            "action": "encode.pm",
            "sop_instance_uid": str(pm.SOPInstanceUID),
            "source_sop_instance_uid": uid,
            "frame_number": frame,
        },
    )
    return pm
