"""The study's report as an Encapsulated PDF, for PACS and viewers that show neither SR nor SEG.

PS3.3 A.45.1 Encapsulated PDF IOD: Patient, General Study, Encapsulated Document Series,
General Equipment, SC Equipment, Encapsulated Document and SOP Common modules. highdicom has no
class for it, so its base :class:`highdicom.SOPClass` builds the common modules (and copies the
patient and study from the source, as for every other result) and this module adds the document.

The PDF (:mod:`~miemss_node.encode.pdfwriter`) holds the report text, the findings, each region's
measurements, which models ran, the key image with its heatmap overlay, and says on top that it
is AI-generated, unverified and not for diagnosis. It names the study by its UID only: no patient
data is printed, so Burned In Annotation is NO unless the key image itself carries burned-in text.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from highdicom import SOPClass
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

import miemss_node
from miemss_node.encode.equipment import Equipment, processing_equipment, software_versions_value
from miemss_node.encode.ko import KeyImage, key_image_index
from miemss_node.encode.overlay import render_analysis_overlay
from miemss_node.encode.pdfwriter import Block, Paragraph, Picture, write_pdf
from miemss_node.encode.sr import models_statement
from miemss_node.encode.templates import CaptureTemplate, PdfReportTemplate, ReportTemplate
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, Report

logger = logging.getLogger(__name__)

#: Red of the warning line.
_WARNING_RGB = (0.75, 0.0, 0.0)
_GREY_RGB = (0.35, 0.35, 0.35)


@dataclass(frozen=True, kw_only=True)
class PdfRequest:
    """Everything needed to encode the study's Encapsulated PDF."""

    images: tuple[KeyImage, ...]
    report: Report
    template: PdfReportTemplate
    report_template: ReportTemplate
    capture_template: CaptureTemplate
    equipment: Equipment
    series_uid: str
    sop_instance_uid: str
    series_number: int
    #: When the document is made (Content Date and Time, and printed); None means now.
    created: datetime | None = None


def _image_label(image: KeyImage, index: int) -> str:
    frame = image.analysis.decoded.frame_number
    where = f", frame {frame}" if frame is not None else ""
    return f"Image {index}{where}"


def _region_blocks(images: Sequence[KeyImage]) -> list[Block]:
    """Per analysed image: its name and UID, then one line per region."""
    blocks: list[Block] = []
    for index, image in enumerate(images, start=1):
        regions = sorted(image.analysis.region_map.regions, key=lambda region: region.label)
        blocks.append(Paragraph(text=f"{_image_label(image, index)}: {image.source.SOPInstanceUID}", size=9, bold=True))
        if not regions:
            blocks.append(Paragraph(text="No anomalous region.", size=9, space_before=1))
        for region in regions:
            area = f"{region.area_mm2:.1f} mm²" if region.area_mm2 is not None else f"{region.area_px} pixels"
            blocks.append(
                Paragraph(
                    text=(
                        f"Region {region.label} ({region.location}): area {area}, anomaly score mean "
                        f"{region.mean_score:.3f}, maximum {region.max_score:.3f}."
                    ),
                    size=9,
                    space_before=1,
                )
            )
    return blocks


def _key_image_jpeg(analysis: ImageAnalysis, template: CaptureTemplate, max_side: int) -> tuple[bytes, int, int]:
    """The key image's overlay, downscaled to ``max_side``, as a baseline JPEG."""
    image = Image.fromarray(render_analysis_overlay(analysis, template))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), image.width, image.height


def report_pdf(request: PdfRequest, created: datetime) -> bytes:
    """Lay out the report and return the PDF file's bytes.

    Parameters
    ----------
    request
        The analysed images, the report and the templates.
    created
        The time printed as the report's creation time.

    Returns
    -------
    bytes
        A PDF 1.4 file.
    """
    headings = request.template.headings
    report = request.report
    study_uid = str(request.images[0].source.StudyInstanceUID)
    blocks: list[Block] = [
        Paragraph(text=headings["title"], size=18, bold=True, space_before=0),
        Paragraph(text=headings["warning"], size=11, bold=True, colour=_WARNING_RGB),
        Paragraph(
            text=(
                f"Study Instance UID {study_uid}. Made {created:%Y-%m-%d %H:%M} by "
                f"{request.equipment.model_name} {miemss_node.__version__}."
            ),
            size=8,
            colour=_GREY_RGB,
        ),
        Paragraph(text=headings["report"], size=13, bold=True, space_before=14),
        Paragraph(text=report.text.strip() or request.report_template.no_region_in_study),
    ]
    if report.caption and report.caption.strip():
        blocks.append(Paragraph(text=report.caption.strip()))
    if report.findings:
        blocks.append(Paragraph(text=headings["findings"], size=13, bold=True, space_before=14))
        blocks.extend(Paragraph(text=f"- {finding}") for finding in report.findings if finding.strip())
    blocks.append(Paragraph(text=headings["regions"], size=13, bold=True, space_before=14))
    blocks.extend(_region_blocks(request.images))
    blocks.append(Paragraph(text=headings["models"], size=13, bold=True, space_before=14))
    blocks.append(Paragraph(text=models_statement(request.report_template, report.models)))
    max_side = request.template.key_image_max_side
    if max_side:
        position = key_image_index([image.analysis for image in request.images])
        key = request.images[position]
        jpeg, width, height = _key_image_jpeg(key.analysis, request.capture_template, max_side)
        index = position + 1
        blocks.append(
            Paragraph(text=f"{headings['keyImage']}: {_image_label(key, index)}", size=13, bold=True, space_before=14)
        )
        blocks.append(Picture(jpeg=jpeg, width_px=width, height_px=height))
    blocks.append(Paragraph(text=request.report_template.disclaimer, bold=True, colour=_WARNING_RGB, space_before=14))
    return write_pdf(blocks, title=request.template.document_title, producer=f"MIEMSS node {miemss_node.__version__}")


def _source_instances(images: Sequence[KeyImage]) -> list[Dataset]:
    """Source Instance Sequence items (PS3.3 C.24.2): each analysed image, once."""
    items = []
    seen: set[str] = set()
    for image in images:
        uid = str(image.source.SOPInstanceUID)
        if uid in seen:
            continue
        seen.add(uid)
        item = Dataset()
        item.ReferencedSOPClassUID = image.source.SOPClassUID
        item.ReferencedSOPInstanceUID = uid
        purpose = Dataset()
        purpose.CodeValue = codes.DCM.SourceImageForImageProcessingOperation.value
        purpose.CodingSchemeDesignator = "DCM"
        purpose.CodeMeaning = codes.DCM.SourceImageForImageProcessingOperation.meaning
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return items


def build_encapsulated_pdf(request: PdfRequest) -> SOPClass:
    """Encode the study's report as an Encapsulated PDF.

    Parameters
    ----------
    request
        The analysed images (repaired headers), the report, the templates and the UIDs.

    Returns
    -------
    highdicom.SOPClass
        An Encapsulated PDF Storage instance in the sources' study, Explicit VR Little Endian.

    Raises
    ------
    EncodeError
        When there is no analysed image, or the object cannot be built.
    """
    if not request.images:
        raise EncodeError("an Encapsulated PDF report needs at least one analysed image")
    created = request.created or datetime.now()
    source = request.images[0].source
    equipment = request.equipment
    template = request.template
    try:
        document = report_pdf(request, created)
        pdf = SOPClass(
            study_instance_uid=source.StudyInstanceUID,
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            sop_class_uid=EncapsulatedPDFStorage,
            instance_number=1,
            modality="DOC",
            manufacturer=equipment.manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            patient_id=source.PatientID,
            patient_name=source.PatientName,
            patient_birth_date=source.PatientBirthDate,
            patient_sex=source.PatientSex,
            accession_number=source.AccessionNumber,
            study_id=source.StudyID,
            study_date=source.StudyDate,
            study_time=source.StudyTime,
            referring_physician_name=source.get("ReferringPhysicianName"),
            series_description=template.series_description,
            manufacturer_model_name=equipment.model_name,
            software_versions=software_versions_value(equipment),
            device_serial_number=equipment.device_serial_number,
            institution_name=equipment.institution_name,
            content_date=created.date(),
            content_time=created.time(),
            specific_character_set=source.get("SpecificCharacterSet"),
        )
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise EncodeError(f"Encapsulated PDF could not be built: {exc}") from exc
    pdf.copy_patient_and_study_information(source)
    pdf.ContributingEquipmentSequence = [processing_equipment(equipment)]
    # SC Equipment (PS3.3 C.8.6.1): the document was made by software from received images.
    pdf.ConversionType = template.conversion_type
    # Encapsulated Document (PS3.3 C.24.2).
    pdf.AcquisitionDateTime = None
    burned_in = any(image.source.get("BurnedInAnnotation") == "YES" for image in request.images)
    pdf.BurnedInAnnotation = "YES" if burned_in and template.key_image_max_side else "NO"
    pdf.DocumentTitle = template.document_title
    pdf.ConceptNameCodeSequence = [template.concept_name]
    pdf.VerificationFlag = "UNVERIFIED"
    pdf.SourceInstanceSequence = _source_instances(request.images)
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocumentLength = len(document)
    # OB values have an even length: one trailing NUL pads an odd document (C.24.2.1).
    pdf.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    logger.info(
        "Encapsulated PDF encoded (%d bytes)",
        len(document),
        extra={"action": "encode.pdf", "sop_instance_uid": str(pdf.SOPInstanceUID)},
    )
    return pdf


def pdf_bytes(dataset: Dataset) -> bytes:
    """The PDF file inside an Encapsulated PDF dataset, without its padding."""
    data = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length is not None else data.rstrip(b"\x00")
