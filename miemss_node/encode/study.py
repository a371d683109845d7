"""Encode the results of one study: a SEG and an SC per analysed image (or frame), one SR.

All objects are in the sources' study, each kind in its own new series, with UIDs derived from the
job key (a retry reproduces them). Sources are repaired first (:mod:`~miemss_node.encode.repair`),
on a copy, so their defects are not copied into our objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pydicom import Dataset

from miemss_node.encode.context import EncodeContext, EncodedResult
from miemss_node.encode.equipment import equipment_for
from miemss_node.encode.repair import repair_source
from miemss_node.encode.sc import ScRequest, build_secondary_capture
from miemss_node.encode.seg import SegRequest, build_segmentation
from miemss_node.encode.sr import ImageEntry, SrRequest, build_report
from miemss_node.encode.templates import load_templates
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
    """Encode the SEG, SC and SR results of one study.

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
        Job key, series numbers, models that ran, templates folder.

    Returns
    -------
    list of EncodedResult
        In the order of ``analyses``: the image's SEG (only when it has a region) then its SC;
        the SR last.

    Raises
    ------
    EncodeError
        When an analysis names an unknown source or frame, an image is analysed twice, the
        sources span several studies, or an object cannot be built.
    TemplateError
        When a template in ``context.templates_dir`` is missing or invalid.
    """
    started = time.perf_counter()
    templates = load_templates(context.templates_dir)
    if not analyses:
        raise EncodeError("no analysis to encode: the SR would have nothing to report")
    by_uid = _index_sources(sources)
    equipment = equipment_for(context.pipeline_version, context.institution_name)
    repaired: dict[str, Dataset] = {}
    seen: set[tuple[str, int | None]] = set()
    results: list[EncodedResult] = []
    entries: list[ImageEntry] = []
    seg_series = series_uid(context.job_key, "SEG")
    sc_series = series_uid(context.job_key, "SC")
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
        segments = build_segmentation(
            SegRequest(
                source=source,
                analysis=analysis,
                template=templates.segment,
                equipment=equipment,
                job_key=context.job_key,
                series_uid=seg_series,
                sop_instance_uid=instance_uid(context.job_key, "SEG", uid, frame),
                series_number=context.seg_series_number,
                instance_number=sum(result.kind == "SEG" for result in results) + 1,
                pipeline_version=context.pipeline_version,
                models=context.models,
            )
        )
        if segments is not None:
            results.append(EncodedResult(kind="SEG", dataset=segments.seg, source_sop_instance_uids=(uid,)))
        capture = build_secondary_capture(
            ScRequest(
                source=source,
                analysis=analysis,
                template=templates.capture,
                equipment=equipment,
                series_uid=sc_series,
                sop_instance_uid=instance_uid(context.job_key, "SC", uid, frame),
                series_number=context.sc_series_number,
                instance_number=index,
            )
        )
        results.append(EncodedResult(kind="SC", dataset=capture, source_sop_instance_uids=(uid,)))
        entries.append(ImageEntry(source=source, analysis=analysis, segments=segments))
    sr = build_report(
        SrRequest(
            entries=tuple(entries),
            report=report,
            template=templates.report,
            equipment=equipment,
            job_key=context.job_key,
            series_uid=series_uid(context.job_key, "SR"),
            sop_instance_uid=study_level_uid(context.job_key, "SR", "document"),
            series_number=context.sr_series_number,
            pipeline_version=context.pipeline_version,
            models=context.models,
        )
    )
    analysed = tuple(dict.fromkeys(str(entry.source.SOPInstanceUID) for entry in entries))
    results.append(EncodedResult(kind="SR", dataset=sr, source_sop_instance_uids=analysed))
    logger.info(
        "study encoded: %d object(s) in %.2f s",
        len(results),
        time.perf_counter() - started,
        extra={
            "action": "study_encoded",
            "job_key": context.job_key,
            "study_instance_uid": str(sr.StudyInstanceUID),
        },
    )
    return results
