"""Encode the results of one study: a SEG, an SC and a PM per analysed image (or frame); one SR,
one Encapsulated PDF, one KO and one GSPS. ``EncodeContext.kinds`` says which of them a job asks for.

All objects are in the sources' study, each kind in its own new series, with UIDs derived from the
job key (a retry reproduces them). Sources are repaired first (:mod:`~miemss_node.encode.repair`),
on a copy, so their defects are not copied into our objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import fields, replace

from pydicom import Dataset

from miemss_node.encode.context import EncodeContext, EncodedResult
from miemss_node.encode.equipment import Equipment, equipment_for
from miemss_node.encode.gsps import GspsRequest, build_presentation_state
from miemss_node.encode.ko import (
    KeyImage,
    KoRequest,
    build_key_object_selection,
    key_image_index,
)
from miemss_node.encode.pdf import PdfRequest, build_encapsulated_pdf
from miemss_node.encode.pm import PmRequest, build_parametric_map
from miemss_node.encode.repair import repair_source
from miemss_node.encode.sc import ScRequest, build_secondary_capture
from miemss_node.encode.seg import SegRequest, build_segmentation
from miemss_node.encode.sr import ImageEntry, SrRequest, build_report
from miemss_node.encode.templates import Templates, load_templates
from miemss_node.encode.uids import instance_uid, series_uid, study_level_uid
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, Report

logger = logging.getLogger(__name__)

__all__ = ["EncodeContext", "EncodedResult", "encode_study"]


def _index_sources(sources: Sequence[Dataset]) -> dict[str, Dataset]:
    if not sources:
        raise EncodeError("no source image to encode results for")
    by_uid: dict[str, Dataset] = {}
    for source in sources:
        uid = str(source.get("SOPInstanceUID", "") or "")
        if not uid:
            raise EncodeError("a source image has no SOP Instance UID")
        by_uid[uid] = source
    studies = {str(source.get("StudyInstanceUID", "") or "") for source in sources}
    if len(studies) != 1 or "" in studies:
        raise EncodeError(f"sources must be of one study with a Study Instance UID, got {sorted(studies)}")
    return by_uid


def _check_frame(source: Dataset, analysis: ImageAnalysis) -> None:
    frames = int(source.get("NumberOfFrames", 1) or 1)
    frame = analysis.decoded.frame_number
    uid = analysis.decoded.sop_instance_uid
    if frame is None and frames > 1:
        raise EncodeError(f"analysis of multi-frame {uid} has no frame number")
    if frame is not None and not 1 <= frame <= frames:
        raise EncodeError(f"analysis of {uid} names frame {frame}, the image has {frames}")


def encode_study(
    sources: Sequence[Dataset],
    analyses: Sequence[ImageAnalysis],
    report: Report,
    context: EncodeContext,
) -> list[EncodedResult]:
    """Encode the results of one study: those of the kinds ``context.kinds`` names.

    Parameters
    ----------
    sources
        The study's images as received (not modified; pixel data is not needed).
    analyses
        One per analysed image or frame; ``decoded.sop_instance_uid`` (and ``frame_number`` for a
        multi-frame image) names its source.
    report
        The study's report text.
    context
        Job key, kinds, series numbers, models that ran, templates folder.

    Returns
    -------
    list of EncodedResult
        In the order of ``analyses``: the image's SEG (only when it has a region), SC and PM;
        then the SR, the PDF, the KO and the GSPS (only when an image is grayscale). Only the kinds in ``context.kinds``; the SEGs are built
        for an SR (it references their segments) even when they are not returned.

    Raises
    ------
    EncodeError
        When an analysis names an unknown source or frame, an image is analysed twice, the
        sources span several studies, or an object cannot be built.
    TemplateError
        When a template in ``context.templates_dir`` is missing or invalid.
    """
    started = time.perf_counter()
    templates = versioned_templates(load_templates(context.templates_dir), context)
    if not analyses:
        raise EncodeError("no analysis to encode: the SR would have nothing to report")
    by_uid = _index_sources(sources)
    equipment = equipment_for(context.pipeline_version, context.institution_name)
    repaired: dict[str, Dataset] = {}
    seen: set[tuple[str, int | None]] = set()
    results: list[EncodedResult] = []
    entries: list[ImageEntry] = []
    kinds = context.kinds
    images: list[KeyImage] = []
    seg_series = series_uid(context.job_key, "SEG")
    sc_series = series_uid(context.job_key, "SC")
    pm_series = series_uid(context.job_key, "PM")
    for index, analysis in enumerate(analyses, start=1):
        uid = analysis.decoded.sop_instance_uid
        frame = analysis.decoded.frame_number
        if uid is None or uid not in by_uid:
            raise EncodeError(f"analysis {index} names source {uid!r}, which is not among the sources")
        if (uid, frame) in seen:
            raise EncodeError(f"{uid} (frame {frame}) is analysed twice")
        seen.add((uid, frame))
        if uid not in repaired:
            try:
                repaired[uid], _ = repair_source(by_uid[uid])
            except ValueError as exc:
                raise EncodeError(f"source {uid} cannot be encoded for: {exc}") from exc
        source = repaired[uid]
        _check_frame(source, analysis)
        images.append(KeyImage(source=source, analysis=analysis))
        segments = None
        if kinds & {"SEG", "SR"}:
            segments = build_segmentation(
                SegRequest(
                    source=source,
                    analysis=analysis,
                    template=templates.segment,
                    equipment=equipment,
                    job_key=context.job_key,
                    series_uid=seg_series,
                    sop_instance_uid=instance_uid(context.job_key, "SEG", uid, frame),
                    series_number=context.series_number("SEG"),
                    instance_number=sum(result.kind == "SEG" for result in results) + 1,
                    pipeline_version=context.pipeline_version,
                    models=context.models,
                )
            )
            if segments is not None and "SEG" in kinds:
                results.append(EncodedResult(kind="SEG", dataset=segments.seg, source_sop_instance_uids=(uid,)))
        _encode_image_extras(results, source, analysis, index, templates, equipment, context, sc_series, pm_series)
        entries.append(ImageEntry(source=source, analysis=analysis, segments=segments))
    analysed = tuple(dict.fromkeys(str(image.source.SOPInstanceUID) for image in images))
    if "SR" in kinds:
        results.append(_encode_sr(entries, report, templates, equipment, context, analysed))
    if "PDF" in kinds:
        pdf = build_encapsulated_pdf(
            PdfRequest(
                images=tuple(images),
                report=report,
                template=templates.pdf_report,
                report_template=templates.report,
                capture_template=templates.capture,
                equipment=equipment,
                series_uid=series_uid(context.job_key, "PDF"),
                sop_instance_uid=study_level_uid(context.job_key, "PDF", "document"),
                series_number=context.series_number("PDF"),
            )
        )
        results.append(EncodedResult(kind="PDF", dataset=pdf, source_sop_instance_uids=analysed))
    if "KO" in kinds:
        ko = build_key_object_selection(
            KoRequest(
                candidates=tuple(images),
                template=templates.key_objects,
                equipment=equipment,
                series_uid=series_uid(context.job_key, "KO"),
                sop_instance_uid=study_level_uid(context.job_key, "KO", "document"),
                series_number=context.series_number("KO"),
            )
        )
        key = images[key_image_index([image.analysis for image in images])]
        results.append(EncodedResult(kind="KO", dataset=ko, source_sop_instance_uids=(str(key.source.SOPInstanceUID),)))
    if "GSPS" in kinds:
        results.extend(_encode_gsps(images, templates, equipment, context))
    logger.info(
        "study encoded: %d object(s) in %.2f s",
        len(results),
        time.perf_counter() - started,
        extra={
            "action": "encode.study",
            "job_key": context.job_key,
            "study_instance_uid": str(images[0].source.StudyInstanceUID),
            "kinds": sorted(kinds),
        },
    )
    return results


def _encode_image_extras(
    results: list[EncodedResult],
    source: Dataset,
    analysis: ImageAnalysis,
    index: int,
    templates: Templates,
    equipment: Equipment,
    context: EncodeContext,
    sc_series: str,
    pm_series: str,
) -> None:
    """Append the SC and the Parametric Map of one analysed image, as far as ``context.kinds`` asks."""
    uid = str(source.SOPInstanceUID)
    frame = analysis.decoded.frame_number
    if "SC" in context.kinds:
        capture = build_secondary_capture(
            ScRequest(
                source=source,
                analysis=analysis,
                template=templates.capture,
                equipment=equipment,
                series_uid=sc_series,
                sop_instance_uid=instance_uid(context.job_key, "SC", uid, frame),
                series_number=context.series_number("SC"),
                instance_number=index,
            )
        )
        results.append(EncodedResult(kind="SC", dataset=capture, source_sop_instance_uids=(uid,)))
    if "PM" in context.kinds:
        heatmap = build_parametric_map(
            PmRequest(
                source=source,
                analysis=analysis,
                template=templates.parametric_map,
                equipment=equipment,
                series_uid=pm_series,
                sop_instance_uid=instance_uid(context.job_key, "PM", uid, frame),
                series_number=context.series_number("PM"),
                instance_number=index,
            )
        )
        results.append(EncodedResult(kind="PM", dataset=heatmap, source_sop_instance_uids=(uid,)))


def _encode_gsps(
    images: list[KeyImage], templates: Templates, equipment: Equipment, context: EncodeContext
) -> list[EncodedResult]:
    """One GSPS per image size in the study (a GSPS presents images of one size only; PS3.3 C.11.11).

    The first size's GSPS keeps the UID a study of one size has always had.
    """
    by_size: dict[tuple[int, int], list[KeyImage]] = {}
    for image in images:
        by_size.setdefault((int(image.source.Rows), int(image.source.Columns)), []).append(image)
    results = []
    for number, group in enumerate(by_size.values(), start=1):
        gsps = build_presentation_state(
            GspsRequest(
                images=tuple(group),
                template=templates.presentation_state,
                equipment=equipment,
                series_uid=series_uid(context.job_key, "GSPS"),
                sop_instance_uid=study_level_uid(context.job_key, "GSPS", "document" if number == 1 else f"document {number}"),
                series_number=context.series_number("GSPS"),
                instance_number=number,
            )
        )
        if gsps is None:
            continue
        referenced = tuple(
            str(item.ReferencedSOPInstanceUID)
            for series in gsps.ReferencedSeriesSequence
            for item in series.ReferencedImageSequence
        )
        results.append(EncodedResult(kind="GSPS", dataset=gsps, source_sop_instance_uids=referenced))
    return results


def _encode_sr(
    entries: list[ImageEntry],
    report: Report,
    templates: Templates,
    equipment: Equipment,
    context: EncodeContext,
    analysed: tuple[str, ...],
) -> EncodedResult:
    sr = build_report(
        SrRequest(
            entries=tuple(entries),
            report=report,
            template=templates.report,
            equipment=equipment,
            job_key=context.job_key,
            series_uid=series_uid(context.job_key, "SR"),
            sop_instance_uid=study_level_uid(context.job_key, "SR", "document"),
            series_number=context.series_number("SR"),
            pipeline_version=context.pipeline_version,
            models=context.models,
            predecessors=() if context.predecessor is None else (context.predecessor.as_dataset(),),
            pathologies=templates.pathologies,
            verification=context.verification,
        )
    )
    return EncodedResult(kind="SR", dataset=sr, source_sop_instance_uids=analysed)


def versioned_templates(templates: Templates, context: EncodeContext) -> Templates:
    """The templates with each Series Description saying which version of the results it holds."""
    changes = {
        item.name: replace(template, series_description=context.series_description(template.series_description))
        for item in fields(templates)
        if hasattr(template := getattr(templates, item.name), "series_description")
    }
    return replace(templates, **changes)
