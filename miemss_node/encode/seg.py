"""The Segmentation (SEG) of the anomalous regions of one analysed image or frame.

One segment per :class:`~miemss_node.pipeline.base.Region` (BINARY; FRACTIONAL 0/1 where 1-bit
frames would not fill whole bytes, see :func:`segmentation_type`, and then RLE Lossless, see
:func:`compress_fractional`) (PS3.3 A.51, C.8.20), each referencing its source image (and frame).
An image without any region gets no SEG: an empty Segmentation carries no information and some
viewers reject a SEG without segments; the SR says for that image that no anomalous region was found.

A source without a Frame of Reference (a projection radiograph) is segmented through highdicom's
path for such images: the Derivation Image functional group ties each SEG pixel to a source pixel,
and no Pixel Measures or Plane Position is invented. The SEG then also carries the Frame of
Reference and Plane Orientation (Patient) of the source's plane (:mod:`~miemss_node.encode.plane`),
which the IOD allows next to Derivation Image and OHIF's loader needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom import PlanePositionSequence
from highdicom.seg import (
    Segmentation,
    SegmentationFractionalTypeValues,
    SegmentationTypeValues,
)
from pydicom import DataElement, Dataset
from pydicom.tag import Tag

from miemss_node.encode.equipment import (
    Equipment,
    enhanced_equipment_arguments,
    processing_equipment,
)
from miemss_node.encode.plane import (
    has_frame_of_reference,
    projection_frame_of_reference_uid,
    projection_plane_orientation,
)
from miemss_node.encode.rle import compress_mask_frames
from miemss_node.encode.templates import (
    SegmentTemplate,
    algorithm_identification,
    segment_description,
)
from miemss_node.encode.uids import derive_uid
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, ModelRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SegmentFrames:
    """Where each segment of a SEG is: the SR's TID 1410 groups reference these frames."""

    seg: Segmentation
    #: Segment Number -> 1-based frame number of the SEG holding it.
    frame_of_segment: dict[int, int]


@dataclass(frozen=True, kw_only=True)
class SegRequest:
    """Everything needed to encode one SEG."""

    source: Dataset
    analysis: ImageAnalysis
    template: SegmentTemplate
    equipment: Equipment
    job_key: str
    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int
    pipeline_version: str
    models: tuple[ModelRun, ...]


def model_parameters(models: tuple[ModelRun, ...]) -> dict[str, str]:
    """Algorithm Parameters naming the models that ran, e.g. ``{"vit": "name@revision"}``."""
    return {model.role: f"{model.name}@{model.revision}" for model in models}


def _labels_present(labels: np.ndarray) -> set[int]:
    """The labels other than 0 in a label image (counted with bincount: np.unique sorts every pixel)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return set()
    if np.issubdtype(flat.dtype, np.integer) and 0 <= int(flat.min()) and int(flat.max()) <= 65535:
        return {int(value) for value in np.flatnonzero(np.bincount(flat)) if value != 0}
    return {int(value) for value in np.unique(flat) if value != 0}


def check_region_labels(analysis: ImageAnalysis, shape: tuple[int, int]) -> None:
    """Check that the label image matches the regions and the source's size.

    Raises
    ------
    EncodeError
        When the labels are not the regions' labels 1..K, or the label image has the wrong shape:
        a segment without a region (or the reverse) would make the SEG and the SR disagree.
    """
    region_map = analysis.region_map
    if region_map.labels.shape != shape:
        raise EncodeError(
            f"label image of {analysis.decoded.sop_instance_uid} has shape {region_map.labels.shape}, "
            f"the source has {shape}"
        )
    expected = list(range(1, len(region_map.regions) + 1))
    if sorted(region.label for region in region_map.regions) != expected:
        raise EncodeError(
            f"regions of {analysis.decoded.sop_instance_uid} must be labelled 1..{len(expected)}"
        )
    present = _labels_present(region_map.labels)
    if present != set(expected):
        raise EncodeError(
            f"label image of {analysis.decoded.sop_instance_uid} holds labels {sorted(present)}, "
            f"the regions are {expected}"
        )


def _frame_source(
    source: Dataset, frame_number: int | None
) -> tuple[Dataset, list[PlanePositionSequence] | None]:
    """Return the source header (and plane position) highdicom needs for a one-frame SEG.

    highdicom makes a SEG of one frame of a multi-frame image only through its geometry. With a
    Frame of Reference the frame's Plane Position is passed. Without one (XA, a multi-frame CR
    or SC), highdicom allows a single frame only, so it is given a header that says one frame and
    the frame reference is written into the SEG afterwards (:func:`_reference_frame`).

    A source without a Frame of Reference is given without its pixel spacing: highdicom would
    copy it into a Pixel Measures group, which within the SEG's Frame of Reference would need a
    Slice Thickness (PS3.3 C.7.6.16.2.1) that a projection does not have. The Derivation Image
    group ties each SEG pixel to a source pixel, whose spacing the source states.
    """
    if not has_frame_of_reference(source) and ("PixelSpacing" in source or "ImagerPixelSpacing" in source):
        # A shallow copy shares the source's elements: delete or replace elements, never assign values.
        without_spacing = Dataset()
        without_spacing.update(source)
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            if keyword in without_spacing:
                del without_spacing[keyword]
        file_meta = getattr(source, "file_meta", None)
        if file_meta is not None:
            without_spacing.file_meta = file_meta
        source = without_spacing
    if frame_number is None:
        return source, None
    if "FrameOfReferenceUID" in source and "PerFrameFunctionalGroupsSequence" in source:
        item = source.PerFrameFunctionalGroupsSequence[frame_number - 1]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        return source, [PlanePositionSequence("PATIENT", image_position=[float(v) for v in position])]
    # A shallow copy shares the source's elements: replace elements, never assign values.
    one_frame = Dataset()
    one_frame.update(source)
    one_frame[Tag("NumberOfFrames")] = DataElement(Tag("NumberOfFrames"), "IS", 1)
    if "SharedFunctionalGroupsSequence" not in one_frame:
        # highdicom reads the pixel measures of any multi-frame IOD from the shared functional
        # groups, which a classic multi-frame image (XA) does not have: an empty item stands in
        # and is removed from the SEG afterwards (_drop_empty_pixel_measures).
        shared = Dataset()
        shared.PixelMeasuresSequence = [Dataset()]
        one_frame.SharedFunctionalGroupsSequence = [shared]
    return one_frame, None


def _drop_empty_pixel_measures(seg: Segmentation) -> None:
    for shared in seg.get("SharedFunctionalGroupsSequence", []):
        measures = shared.get("PixelMeasuresSequence")
        if measures is not None and all(len(item) == 0 for item in measures):
            del shared.PixelMeasuresSequence


def _reference_frame(seg: Segmentation, frame_number: int) -> None:
    """Add Referenced Frame Number to the source image references (PS3.3 Table 10-3).

    The Common Instance Reference module (Referenced Series Sequence) names instances only.
    """
    items = list(seg.get("SourceImageSequence", []))
    for frame_item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame_item.get("DerivationImageSequence", []):
            items.extend(derivation.get("SourceImageSequence", []))
    for item in items:
        item.ReferencedFrameNumber = frame_number


def segmentation_type(shape: tuple[int, int]) -> dict[str, Any]:
    """The segmentation type arguments: BINARY, or FRACTIONAL when 1-bit frames would not align.

    BINARY frames are 1 bit per pixel, packed one after the other with no padding between frames
    (PS3.5 8.1.1), so when Rows x Columns is not a multiple of 8 every frame after the first starts
    inside a byte. OHIF's loader (``@cornerstonejs/adapters`` 5.14, ``getBitmapFramesFromDataset``)
    then takes the even-padded Pixel Data for byte-aligned frames and shifts every segment after
    the first by a few pixels; with one segment, Pixel Data padded to an even length matches none of
    the lengths it accepts and it refuses the SEG ("Unexpected 1-bit SEG PixelData length", seen on
    the WG04 chest CR, 1955 x 1841, with one region). Such a SEG is written FRACTIONAL instead (8 bits
    per pixel, OCCUPANCY, Maximum Fractional Value 1, so every pixel is 0 or 1): the same mask,
    byte-aligned.
    """
    rows, columns = shape
    if (rows * columns) % 8:
        return {
            "segmentation_type": SegmentationTypeValues.FRACTIONAL,
            "fractional_type": SegmentationFractionalTypeValues.OCCUPANCY,
            "max_fractional_value": 1,
        }
    return {"segmentation_type": SegmentationTypeValues.BINARY}


def compress_fractional(seg: Segmentation) -> None:
    """Encode a FRACTIONAL SEG's frames RLE Lossless; a BINARY SEG stays uncompressed.

    A FRACTIONAL frame spends a byte on each pixel of a 0/1 mask: 7.2 MB for the two segments of a
    1955 x 1841 chest film, ten times its source's JPEG 2000 file (0.68 MB), stored at the PACS and
    sent over the network with every study. RLE holds the same mask in 0.12 MB, and OHIF's loader
    decodes it (``@cornerstonejs/adapters`` decodes RLE SEGs of 8-bit frames, not of 1-bit ones, so a
    BINARY SEG, 1 bit a pixel already, is left as it is). A destination that does not accept RLE for
    the SEG class gets it decompressed (:func:`miemss_node.send.send_files`).
    """
    if seg.SegmentationType == SegmentationTypeValues.FRACTIONAL.value:
        compress_mask_frames(seg)


def _add_projection_plane(seg: Segmentation, source: Dataset) -> None:
    """Add the Frame of Reference and Plane Orientation (Patient) of a projection image's plane.

    Both are optional for a SEG with the Derivation Image functional group (PS3.3 Tables A.51-1 and
    A.51-2); highdicom leaves them out for a source without a Frame of Reference and refuses a
    plane orientation there, so they are added to what it built. OHIF's Cornerstone3D loader
    compares this orientation with the one it assumes for the source (``checkOrientation``).
    """
    seg.FrameOfReferenceUID = projection_frame_of_reference_uid(str(source.SOPInstanceUID))
    seg.PositionReferenceIndicator = ""
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = projection_plane_orientation()


def _segment_frames(seg: Segmentation) -> dict[int, int]:
    """Map each Segment Number to the first SEG frame holding it (PS3.3 C.8.20.3).

    highdicom puts the Segment Identification in the shared functional groups when there is a
    single segment, else in each frame's.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" in shared:
        return {int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber): 1}
    frames: dict[int, int] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames.setdefault(number, index)
    return frames


def build_segmentation(request: SegRequest) -> SegmentFrames | None:
    """Encode the SEG of one analysed image or frame.

    Parameters
    ----------
    request
        The repaired source header, its analysis, the template and the UIDs.

    Returns
    -------
    SegmentFrames or None
        The SEG and the frame of each segment; None when the image has no region.

    Raises
    ------
    EncodeError
        When the regions and the label image disagree, or highdicom rejects the input.
    """
    analysis = request.analysis
    regions = sorted(analysis.region_map.regions, key=lambda region: region.label)
    if not regions:
        return None
    source = request.source
    check_region_labels(analysis, (int(source.Rows), int(source.Columns)))
    frame_number = analysis.decoded.frame_number
    source_uid = str(source.SOPInstanceUID)
    algorithm = algorithm_identification(
        request.template.algorithm_name,
        request.template.algorithm_family,
        request.pipeline_version,
        source=request.template.algorithm_source,
        parameters=model_parameters(request.models),
    )
    descriptions = [
        segment_description(
            request.template,
            segment_number=region.label,
            algorithm=algorithm,
            tracking_uid=derive_uid(
                request.job_key, "SEG", "segment", source_uid, frame_number, region.label
            ),
        )
        for region in regions
    ]
    labels = analysis.region_map.labels
    stacked = np.stack([labels == region.label for region in regions], axis=-1)[np.newaxis].astype(np.float32)
    header, plane_positions = _frame_source(source, frame_number)
    equipment = request.equipment
    try:
        seg = Segmentation(
            source_images=[header],
            pixel_array=stacked,
            **segmentation_type(labels.shape),
            segment_descriptions=descriptions,
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=request.instance_number,
            **enhanced_equipment_arguments(equipment),
            content_label=request.template.content_label,
            content_description=request.template.content_description,
            series_description=request.template.series_description,
            plane_positions=plane_positions,
            contributing_equipment=[processing_equipment(equipment)],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"SEG of {source_uid} could not be built: {exc}") from exc
    compress_fractional(seg)
    if header is not source and frame_number is not None:
        _reference_frame(seg, frame_number)
        _drop_empty_pixel_measures(seg)
    if not has_frame_of_reference(source):
        # Type 2C in General Image when there is no Image Orientation/Position (PS3.3 C.7.6.1):
        # the projection radiographs we segment have none; highdicom leaves it out.
        seg.add_new("PatientOrientation", "CS", source.get("PatientOrientation", "") or "")
        _add_projection_plane(seg, source)
    logger.info(
        "SEG encoded for %s with %d segment(s)",
        source_uid,
        len(regions),
        extra={
            "action": "encode.seg",
            "sop_instance_uid": str(seg.SOPInstanceUID),
            "source_sop_instance_uid": source_uid,
            "frame_number": frame_number,
        },
    )
    return SegmentFrames(seg=seg, frame_of_segment=_segment_frames(seg))
