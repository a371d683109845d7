"""The Structured Report of a study: TID 1500 Measurement Report of the anomalous regions.

Content tree (PS3.16 TID 1500), built with highdicom's templates:

- Observation Context (TID 1001): a device observer, the MIEMSS node (TID 1004).
- Procedure Reported, from the template.
- Imaging Measurements: per SEG segment, a Planar ROI group (TID 1410) referencing the segment
  (Referenced Segmentation Frame), with Area (mm² when the spacing is known, else pixels) and the
  mean and maximum anomaly score; per analysed image without a region, a Measurement Group
  (TID 1501) with the image's maximum score. Each group carries Algorithm Identification (TID 4019)
  with the pipeline version and the models that ran.
- Qualitative Evaluations (TID 1500 rows 12-14): the report text, the caption, the findings, the
  "no anomalous region" statements, which models ran (or that none did) and a disclaimer, as TEXT.

The document is UNVERIFIED and PRELIMINARY, and COMPLETE (nothing of the analysis is left out).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    ReferencedSegmentationFrame,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForSegmentation,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from miemss_node.encode.equipment import (
    DEVICE_OBSERVER_UID,
    Equipment,
    processing_equipment,
    software_versions_value,
)
from miemss_node.encode.seg import SegmentFrames
from miemss_node.encode.templates import ReportTemplate
from miemss_node.encode.uids import derive_uid
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, ModelRun, Region, Report

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ImageEntry:
    """One analysed image or frame, with its SEG when it has regions."""

    source: Dataset
    analysis: ImageAnalysis
    segments: SegmentFrames | None


@dataclass(frozen=True, kw_only=True)
class SrRequest:
    """Everything needed to encode the study's SR."""

    entries: tuple[ImageEntry, ...]
    report: Report
    template: ReportTemplate
    equipment: Equipment
    job_key: str
    series_uid: str
    sop_instance_uid: str
    series_number: int
    pipeline_version: str
    models: tuple[ModelRun, ...]
    #: The previous versions of this SR (StudyInstanceUID, SeriesInstanceUID, SOPClassUID and
    #: SOPInstanceUID each), for its Predecessor Documents Sequence.
    predecessors: tuple[Dataset, ...] = ()


def image_name(entry: ImageEntry) -> str:
    """How the SR text names an image: its SOP Instance UID, and frame when multi-frame."""
    frame = entry.analysis.decoded.frame_number
    uid = str(entry.source.SOPInstanceUID)
    return uid if frame is None else f"{uid} frame {frame}"


def models_statement(template: ReportTemplate, models: Sequence[ModelRun]) -> str:
    """Say which models ran, or that none did."""
    if not models:
        return template.no_model
    described = ", ".join(model.describe() for model in models)
    return template.models_ran.format(models=described)


def caption_statement(models: Sequence[ModelRun]) -> str:
    """Say that the caption is machine-generated, and by which model and settings."""
    blip = next((model for model in models if model.role == "blip"), None)
    by = f" by {blip.describe()}" if blip is not None else ""
    return f"The caption is machine-generated{by}; it is not a finding and has not been verified."


def attention_statement(entry: ImageEntry) -> str | None:
    """Where the ViT looked in an image (attention rollout), or None when no ViT ran."""
    attention = entry.analysis.attention
    if attention is None:
        return None
    return (
        f"ViT attention rollout of image {image_name(entry)} peaks in the {attention.peak_location}; "
        "the Secondary Capture outlines where it is in the upper half of its range (explains the features, "
        "not a finding)."
    )


def _algorithm(request: SrRequest) -> AlgorithmIdentification:
    parameters = [f"{model.role}={model.name}@{model.revision}" for model in request.models]
    return AlgorithmIdentification(
        name=request.template.algorithm_name,
        version=request.pipeline_version,
        parameters=parameters or None,
        family=request.template.algorithm_family,
    )


#: Decimals kept of a score in [0, 1] and of an area in mm²: float32 noise is not information.
SCORE_DECIMALS = 4
AREA_DECIMALS = 2


def _score(template: ReportTemplate, value: float, derivation: CodedConcept) -> Measurement:
    return Measurement(
        name=template.score,
        value=round(float(value), SCORE_DECIMALS),
        unit=template.score_unit,
        derivation=derivation,
    )


def _area(template: ReportTemplate, region: Region) -> Measurement:
    if region.area_mm2 is not None:
        area = round(float(region.area_mm2), AREA_DECIMALS)
        return Measurement(name=template.area, value=area, unit=template.unit_mm2)
    return Measurement(name=template.area, value=float(region.area_px), unit=template.unit_pixels)


def _frame_numbers(entry: ImageEntry) -> list[int] | None:
    frame = entry.analysis.decoded.frame_number
    return None if frame is None else [frame]


def _drop_segment_number(reference: ReferencedSegmentationFrame) -> None:
    """Keep only the frame in the reference to the SEG (PS3.3 Table 10-3).

    Referenced Segment Number is Type 1C "required if ... Referenced Frame Number is not present",
    and may not be sent with it; highdicom writes both. Each SEG frame holds one segment, so the
    frame alone identifies the segment.
    """
    for item in reference:
        for sop_item in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in sop_item and "ReferencedSegmentNumber" in sop_item:
                del sop_item.ReferencedSegmentNumber


def _region_groups(
    request: SrRequest, entry: ImageEntry, index: int, algorithm: AlgorithmIdentification
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    if entry.segments is None:
        return []
    seg = entry.segments.seg
    source = entry.source
    frame = entry.analysis.decoded.frame_number
    template = request.template
    groups = []
    for region in sorted(entry.analysis.region_map.regions, key=lambda r: r.label):
        segment_item = seg.SegmentSequence[region.label - 1]
        reference = ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=entry.segments.frame_of_segment[region.label],
            segment_number=region.label,
            source_image=SourceImageForSegmentation(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=_frame_numbers(entry),
            ),
        )
        _drop_segment_number(reference)
        tracking = TrackingIdentifier(
            uid=derive_uid(
                request.job_key, "SR", "tracking", str(source.SOPInstanceUID), frame, region.label
            ),
            identifier=f"Image {index} {segment_item.SegmentLabel}",
        )
        groups.append(
            PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=reference,
                finding_type=template.finding_type,
                finding_category=template.finding_category,
                algorithm_id=algorithm,
                measurements=[
                    _area(template, region),
                    _score(template, region.mean_score, template.mean),
                    _score(template, region.max_score, template.maximum),
                ],
            )
        )
    return groups


def _image_group(
    request: SrRequest, entry: ImageEntry, index: int, algorithm: AlgorithmIdentification
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of an image without region: its maximum anomaly score."""
    source = entry.source
    heatmap = entry.analysis.region_map.heatmap
    maximum = float(np.nanmax(heatmap)) if heatmap.size else 0.0
    frame = entry.analysis.decoded.frame_number
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(request.job_key, "SR", "tracking", str(source.SOPInstanceUID), frame, "image"),
            identifier=f"Image {index} (no anomalous region)",
        ),
        algorithm_id=algorithm,
        measurements=[_score(request.template, maximum, request.template.maximum)],
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=_frame_numbers(entry),
            )
        ],
    )


def _texts(request: SrRequest) -> list[tuple[CodedConcept, str]]:
    template = request.template
    report = request.report
    texts: list[tuple[CodedConcept, str]] = []
    if report.text.strip():
        texts.append((template.report_text, report.text.strip()))
    if report.caption and report.caption.strip():
        texts.append((template.caption, report.caption.strip()))
        texts.append((template.caption, caption_statement(request.models)))
    texts.extend((template.finding, finding) for finding in report.findings if finding.strip())
    without = [entry for entry in request.entries if entry.segments is None]
    if len(without) == len(request.entries):
        if template.no_region_in_study not in report.findings:  # the pipeline may have said it already
            texts.append((template.finding, template.no_region_in_study))
    else:
        texts.extend(
            (template.finding, template.no_region_in_image.format(image=image_name(entry)))
            for entry in without
        )
    texts.append((template.models, models_statement(template, request.models)))
    texts.extend((template.models, text) for entry in request.entries if (text := attention_statement(entry)))
    texts.append((template.models, template.disclaimer))
    return texts


def _qualitative_evaluations(request: SrRequest) -> ContainerContentItem:
    container = ContainerContentItem(
        name=request.template.evaluations_container,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = ContentSequence(
        [
            TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)
            for name, value in _texts(request)
        ]
    )
    return container


def _observation_context(template: ReportTemplate, equipment: Equipment) -> ObservationContext:
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=DEVICE_OBSERVER_UID,
                name=template.device_observer_name,
                manufacturer_name=equipment.manufacturer,
                model_name=equipment.model_name,
            ),
        )
    )


def _character_set(request: SrRequest) -> str | None:
    """None keeps the source's character set; our own non-ASCII text needs UTF-8 (ISO_IR 192)."""
    if all(text.isascii() for _, text in _texts(request)):
        return None
    logger.debug("SR text is not ASCII: UTF-8 declared", extra={"action": "encode.sr_charset_utf8"})
    return "ISO_IR 192"


def build_report(request: SrRequest) -> Comprehensive3DSR:
    """Encode the study's TID 1500 Measurement Report.

    Parameters
    ----------
    request
        The analysed images with their SEGs, the report and the template.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        UNVERIFIED, PRELIMINARY, COMPLETE; in the sources' study.

    Raises
    ------
    EncodeError
        When there is no analysed image, or highdicom rejects the content.
    """
    if not request.entries:
        raise EncodeError("an SR needs at least one analysed image")
    algorithm = _algorithm(request)
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = []
    for index, entry in enumerate(request.entries, start=1):
        if entry.segments is None:
            groups.append(_image_group(request, entry, index, algorithm))
        else:
            groups.extend(_region_groups(request, entry, index, algorithm))
    template = request.template
    equipment = request.equipment
    evidence = [entry.source for entry in request.entries]
    evidence.extend(entry.segments.seg for entry in request.entries if entry.segments is not None)
    kwargs: dict[str, Any] = {}
    charset = _character_set(request)
    if charset is not None:
        kwargs["specific_character_set"] = charset
    try:
        content = MeasurementReport(
            observation_context=_observation_context(template, equipment),
            procedure_reported=template.procedure_reported,
            imaging_measurements=groups,
            title=template.title,
        )
        content[0].ContentSequence.append(_qualitative_evaluations(request))
        sr = Comprehensive3DSR(
            evidence=evidence,
            content=content[0],
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=1,
            manufacturer=equipment.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=equipment.institution_name,
            series_description=template.series_description,
            manufacturer_model_name=equipment.model_name,
            software_versions=software_versions_value(equipment),
            device_serial_number=equipment.device_serial_number,
            contributing_equipment=[processing_equipment(equipment)],
            previous_versions=list(request.predecessors) or None,
            **kwargs,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"SR could not be built: {exc}") from exc
    logger.info(
        "SR encoded with %d measurement group(s)",
        len(groups),
        extra={"action": "encode.sr", "sop_instance_uid": str(sr.SOPInstanceUID)},
    )
    return sr
