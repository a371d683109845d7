"""Report stage: sentences made from the measured findings, plus the caption when a model made one.

Every number in the text comes from the :class:`~miemss_node.pipeline.base.Region` measurements, so
the text and the SR measurements always agree. The text says that it is machine-generated and not
verified, as the SR's verification flag does (UNVERIFIED).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from miemss_node.pipeline.base import ImageAnalysis, ModelRun, Region, Report

logger = logging.getLogger(__name__)

#: Closing sentence of every report.
DISCLAIMER = (
    "This report was generated automatically by a machine and has not been verified by a clinician; "
    "a flagged region is where the image differs from normal films (or, outside the chest analysis, from "
    "the rest of the image), not a diagnosis."
)

#: The findings of a frame without any flagged region.
NO_REGION = "No anomalous region was found."


def findings_sentences(analysis: ImageAnalysis) -> tuple[str, ...]:
    """Describe what one frame's analysis found in plain sentences.

    Parameters
    ----------
    analysis
        The frame's analysis. Areas are in mm² when its pixel spacing is known, else in pixels.

    Returns
    -------
    tuple of str
        Which analysis ran, the abnormality score, one sentence per region (for example
        ``"Region 1: right lower zone, denser than on normal films, 4120 mm², score 0.91."``), and the
        devices or objects that were seen and left out.
    """
    image = analysis.decoded
    regions = analysis.region_map.regions
    sentences = [_method_sentence(analysis), f"Abnormality score {analysis.abnormality_score:.2f}."]
    if not regions:
        sentences.append(NO_REGION)
    else:
        count = "1 region was flagged." if len(regions) == 1 else f"{len(regions)} regions were flagged."
        sentences.append(count)
        sentences += [_region_sentence(region, in_mm=image.pixel_spacing_mm is not None) for region in regions]
    if analysis.anatomy is not None and analysis.anatomy.devices:
        sentences.append(f"Seen and left out of the analysis: {'; '.join(analysis.anatomy.devices)}.")
    return tuple(sentences)


def _method_sentence(analysis: ImageAnalysis) -> str:
    if analysis.method == "chest":
        return (
            "Frontal chest film: each lung zone was compared with normal films and with the other side, "
            "and the lungs searched for round densities."
        )
    return "Generic analysis (not a frontal chest film): parts of the image that are unusual within it are flagged."


def build_report(
    analyses: Sequence[ImageAnalysis], caption: str | None = None, models: tuple[ModelRun, ...] = ()
) -> Report:
    """Assemble the report of a study (or of one file) from the analyses of its frames.

    Parameters
    ----------
    analyses
        One per analysed frame, in the order the images are numbered in the text.
    caption
        A BLIP caption of the study, when a BLIP model ran.
    models
        The models that contributed, named in the text. A reference model that scored a frame
        (``reference``) is added to them.

    Returns
    -------
    Report
        ``text`` holds the caption sentence (if any), the findings of each image prefixed with
        "Image k", the models, and the disclaimer; ``findings`` holds the prefixed findings.
    """
    scored_with = (a.reference for a in analyses if a.reference is not None)
    models = tuple(dict.fromkeys((*models, *scored_with)))
    findings = tuple(
        f"{_image_name(number, analysis)}: {sentence}"
        for number, analysis in enumerate(analyses, start=1)
        for sentence in analysis.findings
    )
    lines = []
    if caption and caption.strip():
        lines.append(f"Automatic caption: {_sentence(caption)}")
    lines.extend(_image_lines(analyses) or ["No image was analysed."])
    lines.append(_models_sentence(models))
    lines.append(DISCLAIMER)
    logger.debug("report of %d image(s)", len(analyses), extra={"action": "report.built"})
    return Report(text="\n".join(lines), caption=caption, findings=findings, models=models)


def _region_sentence(region: Region, *, in_mm: bool) -> str:
    if region.area_mm2 is None or not in_mm:
        area = f"{region.area_px} pixels (pixel spacing unknown)"
    else:
        area = f"{region.area_mm2:.0f} mm²" if region.area_mm2 >= 10 else f"{region.area_mm2:.1f} mm²"
    what = {
        "zone": "denser than on normal films",
        "focal": "a round density",
    }.get(region.kind, "unusual within the image")
    return f"Region {region.label}: {region.location}, {what}, {area}, score {region.mean_score:.2f} (max {region.max_score:.2f})."


def _image_lines(analyses: Sequence[ImageAnalysis]) -> list[str]:
    return [
        f"{_image_name(number, analysis)}: {' '.join(analysis.findings)}"
        for number, analysis in enumerate(analyses, start=1)
    ]


def _image_name(number: int, analysis: ImageAnalysis) -> str:
    frame = analysis.decoded.frame_number
    return f"Image {number}" if frame is None else f"Image {number} (frame {frame})"


def _models_sentence(models: tuple[ModelRun, ...]) -> str:
    if not models:
        return "No learned model was used: patch features are HOG and intensity statistics."
    named = ", ".join(model.describe() for model in models)
    return f"Models used: {named}."


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
