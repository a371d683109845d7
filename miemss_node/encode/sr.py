"""The Structured Report of a study: TID 1500 Measurement Report of the anomalous regions.

Content tree (PS3.16 TID 1500), built with highdicom's templates:

- Observation Context (TID 1001): a device observer, the MIEMSS node (TID 1004).
- Procedure Reported, from the template.
- Imaging Measurements:
  - per SEG segment, a Measurement Group (TID 1501) with Area (mm² when the spacing is known, else
    pixels) INFERRED FROM the region's outline, a closed POLYLINE SCOORD on its source image that
    viewers draw, and from the SEG frame holding the segment (TID 300, TID 320); the mean and
    maximum anomaly score; and, on a frontal chest film whose region lies on one side, its Finding
    Site (lung, with laterality);
  - per analysed image, a Measurement Group (TID 1501) with the image's abnormality score (and,
    for an image without a region, its maximum anomaly score);
  - per output of a chest classifier (``[models] chest``), a Measurement Group (TID 1501) whose
    Finding is the pathology (SNOMED CT or DICOM code; else a 99TXRV code meaning the library's label)
    with one NUM, its Probability, and the classifier as Algorithm Identification;
  - one Measurement Group (TID 1501) with the study's abnormality score.
  Each group carries Algorithm Identification (TID 4019) with the pipeline version and the models
  that ran. Groups are SEPARATE containers, so dsr2html names each measurement.
- Qualitative Evaluations (TID 1500 rows 12-14): the report text, the caption, the findings, where
  each region is, which devices were seen, the abnormality scores, the "no anomalous region"
  statements, which models ran (or that none did) and a disclaimer, as TEXT.

The document is UNVERIFIED and PRELIMINARY, and COMPLETE (nothing of the analysis is left out).
A version a reviewer decided on (``SrRequest.verification``) is VERIFIED and FINAL: its Verifying
Observer Sequence names the reviewer, their organization and the time of the decision, and its
text says which findings were accepted and rejected; it holds only the accepted ones.
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
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from miemss_node.encode.context import Verification
from miemss_node.encode.equipment import (
    DEVICE_OBSERVER_UID,
    Equipment,
    processing_equipment,
    software_versions_value,
)
from miemss_node.encode.outline import region_outline
from miemss_node.encode.seg import SegmentFrames
from miemss_node.encode.templates import PathologiesTemplate, ReportTemplate
from miemss_node.encode.uids import derive_uid
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, ModelRun, Region, Report
from miemss_node.pipeline.score import study_abnormality_score

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
    #: How a chest classifier's output is coded; needed when an image has pathology probabilities.
    pathologies: PathologiesTemplate | None = None
    #: The review of a reviewed version; None for the AI's own (unverified) results.
    verification: Verification | None = None


def image_name(entry: ImageEntry) -> str:
    """How the SR text names an image: its SOP Instance UID, and frame when multi-frame."""
    frame = entry.analysis.decoded.frame_number
    uid = str(entry.source.SOPInstanceUID)
    return uid if frame is None else f"{uid} frame {frame}"


def models_statement(template: ReportTemplate, models: Sequence[ModelRun]) -> str:
    """Say which learned models ran (or that none did), then which normal references were used."""
    learned = [model for model in models if model.role != "reference"]
    references = [model for model in models if model.role == "reference"]
    if learned:
        text = template.models_ran.format(models=", ".join(model.describe() for model in learned))
    else:
        text = template.no_model
    if references:
        described = ", ".join(model.describe() for model in references)
        text += " " + template.references_used.format(references=described)
    return text


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


def _area(
    template: ReportTemplate,
    region: Region,
    outline: CoordinatesForMeasurement,
    segment: SourceImageForMeasurement,
) -> Measurement:
    """The region's Area, INFERRED FROM its outline and its SEG segment (TID 300, TID 320)."""
    if region.area_mm2 is not None:
        value, unit = round(float(region.area_mm2), AREA_DECIMALS), template.unit_mm2
    else:
        value, unit = float(region.area_px), template.unit_pixels
    return Measurement(
        name=template.area,
        value=value,
        unit=unit,
        referenced_coordinates=[outline],
        referenced_images=[segment],
    )


def _outline(entry: ImageEntry, region: Region) -> CoordinatesForMeasurement:
    """The region's outline: a closed POLYLINE on its source image (and frame)."""
    source = entry.source
    return CoordinatesForMeasurement(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=region_outline(entry.analysis.region_map.labels, region.label),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=_frame_numbers(entry),
        ),
    )


def _finding_sites(template: ReportTemplate, entry: ImageEntry, region: Region) -> list[FindingSite] | None:
    """The lung and its laterality, for a region in a lung zone of a frontal chest film."""
    anatomy = entry.analysis.anatomy
    if region.zone is None or region.side not in ("right", "left"):
        return None
    if anatomy is not None and not anatomy.chest_frontal:
        return None
    laterality = template.right if region.side == "right" else template.left
    return [FindingSite(anatomic_location=template.lung, laterality=laterality)]


def _separate(group: Sequence[Dataset]) -> None:
    """Make a measurement group a SEPARATE container (PS3.3 C.18.8 Continuity of Content).

    highdicom's templates make CONTINUOUS containers, which state that the items read as one
    running text; measurements are separate items, and dcmtk's dsr2html names each one only in a
    SEPARATE container.
    """
    group[0].ContinuityOfContent = "SEPARATE"


def _frame_numbers(entry: ImageEntry) -> list[int] | None:
    frame = entry.analysis.decoded.frame_number
    return None if frame is None else [frame]


def _segment_reference(entry: ImageEntry, region: Region) -> SourceImageForMeasurement:
    """The SEG frame that holds the region's segment (each of our SEG frames holds one segment)."""
    assert entry.segments is not None
    seg = entry.segments.seg
    return SourceImageForMeasurement(
        referenced_sop_class_uid=seg.SOPClassUID,
        referenced_sop_instance_uid=seg.SOPInstanceUID,
        referenced_frame_numbers=[entry.segments.frame_of_segment[region.label]],
    )


def _source_of_group(entry: ImageEntry) -> list[SourceImageForMeasurementGroup]:
    source = entry.source
    return [
        SourceImageForMeasurementGroup(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=_frame_numbers(entry),
        )
    ]


def _region_groups(
    request: SrRequest, entry: ImageEntry, index: int, algorithm: AlgorithmIdentification
) -> list[MeasurementsAndQualitativeEvaluations]:
    """One Measurement Group (TID 1501) per region.

    The Area is INFERRED FROM both the region's outline on the source image (a SCOORD viewers
    draw) and the SEG frame holding its segment (TID 300 rows 8-9, TID 320). TID 1410, whose ROI
    is either a segment or an image region but not both, and whose measurements may not carry
    coordinates, cannot hold the two side by side; and OHIF's SR loaders read a measurement's
    outline from the SCOORD its first NUM is inferred from.
    """
    if entry.segments is None:
        return []
    seg = entry.segments.seg
    source = entry.source
    frame = entry.analysis.decoded.frame_number
    template = request.template
    groups = []
    for region in sorted(entry.analysis.region_map.regions, key=lambda r: r.label):
        segment_item = seg.SegmentSequence[region.label - 1]
        tracking = TrackingIdentifier(
            uid=derive_uid(
                request.job_key, "SR", "tracking", str(source.SOPInstanceUID), frame, region.label
            ),
            identifier=f"Image {index} {segment_item.SegmentLabel}",
        )
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=template.finding_type,
            finding_category=template.finding_category,
            algorithm_id=algorithm,
            finding_sites=_finding_sites(template, entry, region),
            measurements=[
                _area(template, region, _outline(entry, region), _segment_reference(entry, region)),
                _score(template, region.mean_score, template.mean),
                _score(template, region.max_score, template.maximum),
            ],
            source_images=_source_of_group(entry),
        )
        _separate(group)
        groups.append(group)
    return groups


def _abnormality(template: ReportTemplate, value: float) -> Measurement:
    return Measurement(
        name=template.abnormality_score,
        value=round(float(value), SCORE_DECIMALS),
        unit=template.abnormality_unit,
    )


def _image_group(
    request: SrRequest, entry: ImageEntry, index: int, algorithm: AlgorithmIdentification
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of an image: its abnormality score, and without region its maximum anomaly score."""
    source = entry.source
    template = request.template
    measurements = [_abnormality(template, entry.analysis.abnormality_score)]
    if entry.segments is None:
        heatmap = entry.analysis.region_map.heatmap
        maximum = float(np.nanmax(heatmap)) if heatmap.size else 0.0
        measurements.append(_score(template, maximum, template.maximum))
    frame = entry.analysis.decoded.frame_number
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(request.job_key, "SR", "tracking", str(source.SOPInstanceUID), frame, "image"),
            identifier=template.abnormality_image_format.format(index=index),
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        source_images=_source_of_group(entry),
    )
    _separate(group)
    return group


def _study_group(request: SrRequest, algorithm: AlgorithmIdentification) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of the study: its abnormality score (``pipeline/score.py``)."""
    template = request.template
    score = study_abnormality_score([entry.analysis for entry in request.entries])
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(request.job_key, "SR", "tracking", "study"),
            identifier=template.abnormality_study_identifier,
        ),
        algorithm_id=algorithm,
        measurements=[_abnormality(template, score)],
    )
    _separate(group)
    return group


def _pathology_groups(
    request: SrRequest, entry: ImageEntry, index: int
) -> list[MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per classifier output: the pathology as Finding, its Probability as NUM."""
    pathologies = entry.analysis.pathologies
    if not pathologies:
        return []
    template = request.pathologies
    classifier = next((model for model in request.models if model.role == "chest"), None)
    if template is None or classifier is None:
        raise EncodeError("an image has pathology probabilities but the SR has no classifier or pathology template")
    algorithm = AlgorithmIdentification(
        name=classifier.name[:64], version=classifier.revision, family=request.template.algorithm_family
    )
    source = entry.source
    frame = entry.analysis.decoded.frame_number
    groups = []
    for pathology in pathologies:
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=derive_uid(request.job_key, "SR", "tracking", str(source.SOPInstanceUID), frame, "pathology", pathology.label),
                identifier=template.tracking_format.format(index=index, label=pathology.label),
            ),
            finding_type=template.code(pathology.label),
            algorithm_id=algorithm,
            measurements=[
                Measurement(
                    name=template.probability,
                    value=round(float(pathology.probability), SCORE_DECIMALS),
                    unit=template.unit,
                )
            ],
            source_images=_source_of_group(entry),
        )
        _separate(group)
        groups.append(group)
    return groups


def _model_statements(request: SrRequest) -> list[str]:
    """Per chest image, which anatomy outlined its lungs, and what the classifier reported."""
    template = request.pathologies
    if template is None:
        return []
    classifier = next((model for model in request.models if model.role == "chest"), None)
    statements = []
    for index, entry in enumerate(request.entries, start=1):
        analysis = entry.analysis
        if analysis.anatomy is not None and analysis.method == "chest":
            statements.append(template.anatomy_statement.format(index=index, method=analysis.anatomy.method))
        if analysis.pathologies and classifier is not None:
            reported = sorted((p for p in analysis.pathologies if p.reported), key=lambda p: -p.probability)
            words = ", ".join(f"{p.label} {p.probability:.2f} (threshold {p.threshold:.2f})" for p in reported)
            statements.append(
                template.pathologies_statement.format(
                    index=index,
                    model=f"{classifier.name}, {classifier.revision}",
                    reported=words or "no pathology reached its threshold",
                )
            )
    return statements


def _region_kind(region: Region) -> str:
    """The region's kind in words (a pathology region names its pathology)."""
    if region.pathology:
        return f"{region.kind}: {region.pathology}, where the chest classifier's attribution peaks"
    return region.kind


def _region_statements(request: SrRequest) -> list[str]:
    """Where each region is, in words, and which devices each image shows."""
    template = request.template
    statements = []
    for index, entry in enumerate(request.entries, start=1):
        for region in sorted(entry.analysis.region_map.regions, key=lambda r: r.label):
            statements.append(
                template.region_location.format(
                    label=region.label, index=index, location=region.location, kind=_region_kind(region)
                )
            )
        anatomy = entry.analysis.anatomy
        if anatomy is not None and anatomy.devices:
            statements.append(template.devices_seen.format(index=index, devices=", ".join(anatomy.devices)))
    return statements


def _scores_statement(request: SrRequest) -> str:
    analyses = [entry.analysis for entry in request.entries]
    images = "; ".join(
        f"image {index} {analysis.abnormality_score:.2f}" for index, analysis in enumerate(analyses, start=1)
    )
    return request.template.abnormality_scores.format(study=f"{study_abnormality_score(analyses):.2f}", images=images)


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
    texts.extend((template.finding, statement) for statement in _region_statements(request))
    texts.extend((template.finding, statement) for statement in _model_statements(request))
    texts.append((template.finding, _scores_statement(request)))
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
    if request.verification is None:
        texts.append((template.models, template.disclaimer))
    else:
        texts.append((template.models, template.reviewed_disclaimer))
    return texts


def _qualitative_evaluations(request: SrRequest) -> ContainerContentItem:
    container = ContainerContentItem(
        name=request.template.evaluations_container,
        relationship_type=RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
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
    groups: list[MeasurementsAndQualitativeEvaluations] = []
    for index, entry in enumerate(request.entries, start=1):
        groups.append(_image_group(request, entry, index, algorithm))
        groups.extend(_region_groups(request, entry, index, algorithm))
        groups.extend(_pathology_groups(request, entry, index))
    groups.append(_study_group(request, algorithm))
    template = request.template
    equipment = request.equipment
    evidence = [entry.source for entry in request.entries]
    evidence.extend(entry.segments.seg for entry in request.entries if entry.segments is not None)
    kwargs: dict[str, Any] = {}
    verification = request.verification
    if verification is not None:
        kwargs.update(verifying_observer_name=verification.observer_name, verifying_organization=verification.organization)
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
            # A verified report is the reviewer's final word on these findings (Preliminary Flag FINAL).
            is_final=verification is not None,
            is_verified=verification is not None,
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
    if verification is not None:
        # highdicom stamps the time of construction; the verification happened when the reviewer
        # decided, and a retried job must write the same value.
        sr.VerifyingObserverSequence[0].VerificationDateTime = verification.verified_at.strftime("%Y%m%d%H%M%S")
    logger.info(
        "SR encoded with %d measurement group(s)",
        len(groups),
        extra={"action": "encode.sr", "sop_instance_uid": str(sr.SOPInstanceUID)},
    )
    return sr
