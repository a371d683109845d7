"""Findings as a reviewer sees them, and the analyses of a reviewed version.

A finding is one region of one analysed image. They are numbered 1.. across the study: the job's
analyses in order, then each image's regions by label (the order of the SR's measurement groups).
The reviewed version is encoded from the same analyses (the pipeline is deterministic: fixed seed,
same images) with the rejected regions removed and the rest renumbered 1.. per image, so its SEG
segments, SR groups and report sentences hold only the accepted findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, Region, Report
from miemss_node.pipeline.report import DISCLAIMER, findings_sentences
from miemss_node.queue.repository import FindingRecord, ReviewPlan


def bbox_text(region: Region) -> str:
    """A region's bounding box as the findings table stores it."""
    return " ".join(str(int(value)) for value in region.bbox)


def _ordered(analysis: ImageAnalysis) -> list[Region]:
    return sorted(analysis.region_map.regions, key=lambda region: region.label)


def finding_records(analyses: Sequence[ImageAnalysis]) -> list[FindingRecord]:
    """One record per region of every analysis, numbered across the study."""
    records: list[FindingRecord] = []
    for analysis in analyses:
        for region in _ordered(analysis):
            records.append(
                FindingRecord(
                    number=len(records) + 1,
                    sop_instance_uid=str(analysis.decoded.sop_instance_uid or ""),
                    frame_number=analysis.decoded.frame_number,
                    label=region.label,
                    kind=region.kind[:16],
                    pathology=region.pathology,
                    location=region.location[:256],
                    area_px=int(region.area_px),
                    area_mm2=None if region.area_mm2 is None else float(region.area_mm2),
                    mean_score=float(region.mean_score),
                    max_score=float(region.max_score),
                    bbox=bbox_text(region),
                )
            )
    return records


def keep_accepted(analyses: Sequence[ImageAnalysis], plan: ReviewPlan) -> list[ImageAnalysis]:
    """The analyses with only the findings the reviewer accepted, renumbered 1.. per image.

    Raises
    ------
    EncodeError
        When the analyses do not hold exactly the findings that were reviewed (the images or the
        pipeline changed since): encoding them would send findings nobody decided on.
    """
    found = {
        (str(a.decoded.sop_instance_uid or ""), a.decoded.frame_number, r.label): bbox_text(r)
        for a in analyses
        for r in a.region_map.regions
    }
    reviewed = {key: bbox for key, (_number, bbox, _accepted) in plan.decisions.items()}
    if found != reviewed:
        raise EncodeError(
            f"the study's analysis now finds {len(found)} region(s), not the {len(reviewed)} finding(s) that were "
            "reviewed (the images or the pipeline changed since); the reviewed version is not encoded"
        )
    kept = []
    for analysis in analyses:
        image = (str(analysis.decoded.sop_instance_uid or ""), analysis.decoded.frame_number)
        accepted = [r for r in _ordered(analysis) if plan.decisions[(*image, r.label)][2]]
        kept.append(_with_regions(analysis, accepted))
    return kept


def _with_regions(analysis: ImageAnalysis, regions: list[Region]) -> ImageAnalysis:
    """The analysis with only ``regions``, relabelled 1.., and its sentences rewritten to match."""
    old_labels = analysis.region_map.labels
    labels = np.zeros_like(old_labels)
    renumbered = []
    for new_label, region in enumerate(regions, start=1):
        labels[old_labels == region.label] = new_label
        renumbered.append(replace(region, label=new_label))
    region_map = replace(analysis.region_map, labels=labels, regions=tuple(renumbered))
    # Sentences after the measured ones (reference and classifier notes) are kept as they are.
    measured = findings_sentences(analysis)
    notes = analysis.findings[len(measured) :] if analysis.findings[: len(measured)] == measured else ()
    filtered = replace(analysis, region_map=region_map)
    return replace(filtered, findings=findings_sentences(filtered) + tuple(notes))


def decision_summary(plan: ReviewPlan) -> tuple[list[int], list[int]]:
    """The accepted and the rejected finding numbers, each in increasing order."""
    accepted = sorted(number for number, _bbox, ok in plan.decisions.values() if ok)
    rejected = sorted(number for number, _bbox, ok in plan.decisions.values() if not ok)
    return accepted, rejected


def all_rejected(plan: ReviewPlan) -> bool:
    """True when there were findings and the reviewer rejected every one."""
    accepted, rejected = decision_summary(plan)
    return bool(rejected) and not accepted


def _numbers(values: list[int]) -> str:
    return ", ".join(str(value) for value in values) or "none"


def review_statement(plan: ReviewPlan, person_name: str, organization: str) -> str:
    """What the reviewed version says about its review, in words (for the report and the SR)."""
    accepted, rejected = decision_summary(plan)
    who = person_name.replace("^", " ").strip()
    text = (
        f"Reviewed by {who} ({organization}) on {plan.decided_at:%Y-%m-%d %H:%M} UTC: "
        f"AI finding(s) accepted: {_numbers(accepted)}; rejected: {_numbers(rejected)}."
    )
    if rejected and not accepted:
        text += " Every AI finding was rejected: this version reports no finding."
    elif rejected:
        text += " Only the accepted findings are in this version, renumbered."
    if plan.comment:
        text += f" Reviewer's comment: {' '.join(plan.comment.split())}"
    return text


def reviewed_report(report: Report, statement: str) -> Report:
    """The report of a reviewed version: the review statement in place of the "not verified" sentence."""
    lines = [statement if line == DISCLAIMER else line for line in report.text.split("\n")]
    if statement not in lines:
        lines.append(statement)
    return replace(report, text="\n".join(lines))
