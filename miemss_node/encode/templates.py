"""Load and schema-check ``dicom_templates/`` and turn them into highdicom building blocks.

Coded concepts live in JSON templates, not in code (QIICR/dcmqi style: DICOM keywords verbatim,
camelCase for our own fields, full code triplets). Each template is checked against its JSON
Schema (``dicom_templates/schemas/``, ``$ref`` resolved from that folder only) before use, and any
problem raises :class:`~miemss_node.errors.TemplateError` naming the file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from highdicom import AlgorithmIdentificationSequence
from highdicom.color import CIELabColor
from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription
from highdicom.sr import CodedConcept

from miemss_node.errors import TemplateError

logger = logging.getLogger(__name__)

#: The package that ships the repository's ``dicom_templates/`` folder (mapped in ``setup.py``).
TEMPLATES_PACKAGE = "miemss_node.dicom_templates"

SEGMENT_TEMPLATE = "seg/anomaly_segment.json"
REPORT_TEMPLATE = "sr/measurement_report.json"
CAPTURE_TEMPLATE = "sc/secondary_capture.json"
PARAMETRIC_MAP_TEMPLATE = "pm/parametric_map.json"
KEY_OBJECTS_TEMPLATE = "ko/key_object_selection.json"
PDF_REPORT_TEMPLATE = "pdf/encapsulated_report.json"
PRESENTATION_STATE_TEMPLATE = "pr/presentation_state.json"
PATHOLOGIES_TEMPLATE = "sr/chest_pathologies.json"

#: Each template and the schema (in ``schemas/``) it must satisfy.
TEMPLATE_SCHEMAS: dict[str, str] = {
    SEGMENT_TEMPLATE: "anomaly_segment.schema.json",
    REPORT_TEMPLATE: "measurement_report.schema.json",
    CAPTURE_TEMPLATE: "secondary_capture.schema.json",
    PARAMETRIC_MAP_TEMPLATE: "parametric_map.schema.json",
    KEY_OBJECTS_TEMPLATE: "key_object_selection.schema.json",
    PDF_REPORT_TEMPLATE: "encapsulated_report.schema.json",
    PRESENTATION_STATE_TEMPLATE: "presentation_state.schema.json",
    PATHOLOGIES_TEMPLATE: "chest_pathologies.schema.json",
}

#: Schemas that others reference by ``$id`` (registered, never fetched).
SHARED_SCHEMAS = ("common.schema.json",)


@dataclass(frozen=True, kw_only=True)
class SegmentTemplate:
    """``seg/anomaly_segment.json``: how each anomaly region is described in the SEG."""

    series_description: str
    content_label: str
    content_description: str
    segment_label_format: str
    segment_description: str
    algorithm_type: SegmentAlgorithmTypeValues
    algorithm_name: str
    algorithm_family: CodedConcept
    algorithm_source: str | None
    category: CodedConcept
    property_type: CodedConcept
    display_rgb: tuple[int, int, int]


@dataclass(frozen=True, kw_only=True)
class ReportTemplate:
    """``sr/measurement_report.json``: concept names, units and statements of the SR."""

    series_description: str
    title: CodedConcept
    procedure_reported: CodedConcept
    finding_category: CodedConcept
    finding_type: CodedConcept
    area: CodedConcept
    unit_mm2: CodedConcept
    unit_pixels: CodedConcept
    score: CodedConcept
    score_unit: CodedConcept
    mean: CodedConcept
    maximum: CodedConcept
    #: The abnormality score NUM of an image and of the study, unitless in [0, 1].
    abnormality_score: CodedConcept
    abnormality_unit: CodedConcept
    #: Tracking Identifier of an image's score group; ``{index}`` is its position in the study.
    abnormality_image_format: str
    abnormality_study_identifier: str
    #: Finding Site of a region in a lung zone, and the two lateralities.
    lung: CodedConcept
    right: CodedConcept
    left: CodedConcept
    evaluations_container: CodedConcept
    report_text: CodedConcept
    finding: CodedConcept
    caption: CodedConcept
    models: CodedConcept
    algorithm_name: str
    algorithm_family: CodedConcept
    device_observer_name: str
    no_region_in_study: str
    no_region_in_image: str
    no_model: str
    models_ran: str
    references_used: str
    disclaimer: str
    #: Replaces ``disclaimer`` in a version a reviewer verified.
    reviewed_disclaimer: str
    region_location: str
    devices_seen: str
    abnormality_scores: str


@dataclass(frozen=True, kw_only=True)
class CaptureTemplate:
    """``sc/secondary_capture.json``: how the heatmap overlay is drawn and described."""

    series_description: str
    derivation_description: str
    conversion_type: str
    burned_in_text: tuple[str, ...]
    heatmap_opacity: float
    outline_rgb: tuple[int, int, int]
    text_rgb: tuple[int, int, int]
    #: Burned-in line with the image's abnormality score (``{score}`` is replaced).
    abnormality_score_format: str


@dataclass(frozen=True, kw_only=True)
class PresentationStateTemplate:
    """``pr/presentation_state.json``: what the GSPS draws and says."""

    series_description: str
    content_label: str
    content_description: str
    graphic_layer: str
    graphic_layer_description: str
    warning_layer: str
    warning_layer_description: str
    outline_rgb: tuple[int, int, int]
    warning_rgb: tuple[int, int, int]
    #: Text beside each outline (``{label}`` and ``{score}`` are replaced).
    region_label_format: str
    warning_text: str
    abnormality_score_format: str


@dataclass(frozen=True, kw_only=True)
class ParametricMapTemplate:
    """``pm/parametric_map.json``: how the heatmap is described in the Parametric Map."""

    series_description: str
    content_label: str
    content_description: str
    lut_label: str
    lut_explanation: str
    unit: CodedConcept
    quantity: CodedConcept
    frame_label: str
    window_center: float
    window_width: float


@dataclass(frozen=True, kw_only=True)
class KeyObjectsTemplate:
    """``ko/key_object_selection.json``: title and description of the key image selection."""

    series_description: str
    document_title: CodedConcept
    description_format: str
    device_observer_name: str


@dataclass(frozen=True, kw_only=True)
class PdfReportTemplate:
    """``pdf/encapsulated_report.json``: the Encapsulated PDF's attributes and printed headings."""

    series_description: str
    document_title: str
    concept_name: CodedConcept
    conversion_type: str
    headings: dict[str, str]
    key_image_max_side: int


@dataclass(frozen=True, kw_only=True)
class PathologiesTemplate:
    """``sr/chest_pathologies.json``: how a chest classifier's output is coded in the SR."""

    probability: CodedConcept
    unit: CodedConcept
    tracking_format: str
    local_scheme: str
    codes: dict[str, CodedConcept]
    anatomy_statement: str
    pathologies_statement: str

    def code(self, label: str) -> CodedConcept:
        """The pathology's code; a label without one gets a code of :attr:`local_scheme` meaning the label."""
        if label in self.codes:
            return self.codes[label]
        value = "".join(ch if ch.isalnum() else "_" for ch in label.upper())[:16]
        return CodedConcept(value=value, scheme_designator=self.local_scheme, meaning=label)


@dataclass(frozen=True, kw_only=True)
class Templates:
    """All templates of one ``dicom_templates`` folder, checked and converted."""

    segment: SegmentTemplate
    report: ReportTemplate
    capture: CaptureTemplate
    parametric_map: ParametricMapTemplate
    key_objects: KeyObjectsTemplate
    pdf_report: PdfReportTemplate
    presentation_state: PresentationStateTemplate
    pathologies: PathologiesTemplate


def package_templates() -> Traversable:
    """The templates folder installed with the package (package data, found by importlib.resources)."""
    return resources.files(TEMPLATES_PACKAGE)


def _read_json(path: Traversable) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{path}: not valid JSON: {exc}") from exc


def _schema_registry(schemas_dir: Traversable) -> Any:
    """Register the shared schemas by their ``$id`` so no ``$ref`` ever reaches the network."""
    from referencing import Registry, Resource

    registry: Registry = Registry()
    for name in SHARED_SCHEMAS:
        path = schemas_dir / name
        contents = _read_json(path)
        if not isinstance(contents, dict) or "$id" not in contents:
            raise TemplateError(f"{path}: a shared schema needs an '$id'")
        registry = registry.with_resource(contents["$id"], Resource.from_contents(contents))
    return registry


def load_template(templates_dir: Traversable, name: str) -> dict[str, Any]:
    """Read one template and check it against its schema.

    Parameters
    ----------
    templates_dir
        The ``dicom_templates`` folder.
    name
        The template's path relative to it, one of :data:`TEMPLATE_SCHEMAS`.

    Returns
    -------
    dict
        The template's JSON object.

    Raises
    ------
    TemplateError
        When the template or its schema is missing, is not JSON, or the template does not match
        the schema (every mismatch is listed, with its JSON path).
    """
    import jsonschema
    from referencing.exceptions import Unresolvable

    if name not in TEMPLATE_SCHEMAS:
        raise TemplateError(f"{templates_dir / name}: unknown template (known: {sorted(TEMPLATE_SCHEMAS)})")
    schemas_dir = templates_dir / "schemas"
    schema_path = schemas_dir / TEMPLATE_SCHEMAS[name]
    path = templates_dir / name
    schema = _read_json(schema_path)
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TemplateError(f"{schema_path}: not a valid JSON Schema: {exc.message}") from exc
    validator = validator_class(schema, registry=_schema_registry(schemas_dir))
    document = _read_json(path)
    try:
        errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    except Unresolvable as exc:
        raise TemplateError(f"{schema_path}: unresolvable $ref: {exc}") from exc
    if errors:
        problems = "; ".join(
            f"{'/'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
            for error in errors
        )
        raise TemplateError(f"{path}: does not match {schema_path.name}: {problems}")
    logger.debug("template loaded", extra={"action": "encode.template_loaded", "template": str(path)})
    return dict(document)


def coded_concept(triplet: dict[str, str]) -> CodedConcept:
    """Build a highdicom CodedConcept from a template's code triplet (PS3.3 Table 8.8-1)."""
    return CodedConcept(
        value=triplet["CodeValue"],
        scheme_designator=triplet["CodingSchemeDesignator"],
        meaning=triplet["CodeMeaning"],
    )


def _rgb(values: list[int]) -> tuple[int, int, int]:
    red, green, blue = values
    return (int(red), int(green), int(blue))


def _segment_template(document: dict[str, Any]) -> SegmentTemplate:
    algorithm = document["SegmentationAlgorithmIdentificationSequence"]
    return SegmentTemplate(
        series_description=document["SeriesDescription"],
        content_label=document["ContentLabel"],
        content_description=document["ContentDescription"],
        segment_label_format=document["segmentLabelFormat"],
        segment_description=document["SegmentDescription"],
        algorithm_type=SegmentAlgorithmTypeValues(document["SegmentAlgorithmType"]),
        algorithm_name=algorithm["AlgorithmName"],
        algorithm_family=coded_concept(algorithm["AlgorithmFamilyCodeSequence"]),
        algorithm_source=algorithm.get("AlgorithmSource"),
        category=coded_concept(document["SegmentedPropertyCategoryCodeSequence"]),
        property_type=coded_concept(document["SegmentedPropertyTypeCodeSequence"]),
        display_rgb=_rgb(document["recommendedDisplayRGBValue"]),
    )


def _report_template(document: dict[str, Any]) -> ReportTemplate:
    evaluations = document["qualitativeEvaluations"]
    statements = document["statements"]
    return ReportTemplate(
        series_description=document["SeriesDescription"],
        title=coded_concept(document["title"]),
        procedure_reported=coded_concept(document["procedureReported"]),
        finding_category=coded_concept(document["findingCategory"]),
        finding_type=coded_concept(document["findingType"]),
        area=coded_concept(document["area"]["name"]),
        unit_mm2=coded_concept(document["area"]["unitSquareMillimetre"]),
        unit_pixels=coded_concept(document["area"]["unitPixels"]),
        score=coded_concept(document["anomalyScore"]["name"]),
        score_unit=coded_concept(document["anomalyScore"]["unit"]),
        mean=coded_concept(document["anomalyScore"]["meanDerivation"]),
        maximum=coded_concept(document["anomalyScore"]["maximumDerivation"]),
        abnormality_score=coded_concept(document["abnormalityScore"]["name"]),
        abnormality_unit=coded_concept(document["abnormalityScore"]["unit"]),
        abnormality_image_format=document["abnormalityScore"]["imageTrackingFormat"],
        abnormality_study_identifier=document["abnormalityScore"]["studyTrackingIdentifier"],
        lung=coded_concept(document["findingSite"]["lung"]),
        right=coded_concept(document["findingSite"]["right"]),
        left=coded_concept(document["findingSite"]["left"]),
        evaluations_container=coded_concept(evaluations["container"]),
        report_text=coded_concept(evaluations["reportText"]),
        finding=coded_concept(evaluations["finding"]),
        caption=coded_concept(evaluations["caption"]),
        models=coded_concept(evaluations["models"]),
        algorithm_name=document["algorithm"]["AlgorithmName"],
        algorithm_family=coded_concept(document["algorithm"]["AlgorithmFamilyCodeSequence"]),
        device_observer_name=document["deviceObserverName"],
        no_region_in_study=statements["noRegionInStudy"],
        no_region_in_image=statements["noRegionInImage"],
        no_model=statements["noModel"],
        models_ran=statements["modelsRan"],
        references_used=statements["referencesUsed"],
        disclaimer=statements["disclaimer"],
        reviewed_disclaimer=statements["reviewedDisclaimer"],
        region_location=statements["regionLocation"],
        devices_seen=statements["devicesSeen"],
        abnormality_scores=statements["abnormalityScores"],
    )


def _capture_template(document: dict[str, Any]) -> CaptureTemplate:
    return CaptureTemplate(
        series_description=document["SeriesDescription"],
        derivation_description=document["DerivationDescription"],
        conversion_type=document["ConversionType"],
        burned_in_text=tuple(document["burnedInText"]),
        heatmap_opacity=float(document["heatmapOpacity"]),
        outline_rgb=_rgb(document["outlineRGBValue"]),
        text_rgb=_rgb(document["textRGBValue"]),
        abnormality_score_format=document["abnormalityScoreFormat"],
    )


def _presentation_state_template(document: dict[str, Any]) -> PresentationStateTemplate:
    return PresentationStateTemplate(
        series_description=document["SeriesDescription"],
        content_label=document["ContentLabel"],
        content_description=document["ContentDescription"],
        graphic_layer=document["GraphicLayer"],
        graphic_layer_description=document["GraphicLayerDescription"],
        warning_layer=document["warningLayer"],
        warning_layer_description=document["warningLayerDescription"],
        outline_rgb=_rgb(document["outlineRGBValue"]),
        warning_rgb=_rgb(document["warningRGBValue"]),
        region_label_format=document["regionLabelFormat"],
        warning_text=document["warningText"],
        abnormality_score_format=document["abnormalityScoreFormat"],
    )


def _parametric_map_template(document: dict[str, Any]) -> ParametricMapTemplate:
    mapping = document["RealWorldValueMappingSequence"]
    return ParametricMapTemplate(
        series_description=document["SeriesDescription"],
        content_label=document["ContentLabel"],
        content_description=document["ContentDescription"],
        lut_label=mapping["LUTLabel"],
        lut_explanation=mapping["LUTExplanation"],
        unit=coded_concept(mapping["MeasurementUnitsCodeSequence"]),
        quantity=coded_concept(mapping["QuantityDefinition"]),
        frame_label=document["frameLabel"],
        window_center=float(document["windowCenter"]),
        window_width=float(document["windowWidth"]),
    )


def _key_objects_template(document: dict[str, Any]) -> KeyObjectsTemplate:
    return KeyObjectsTemplate(
        series_description=document["SeriesDescription"],
        document_title=coded_concept(document["documentTitle"]),
        description_format=document["keyObjectDescriptionFormat"],
        device_observer_name=document["deviceObserverName"],
    )


def _pdf_report_template(document: dict[str, Any]) -> PdfReportTemplate:
    return PdfReportTemplate(
        series_description=document["SeriesDescription"],
        document_title=document["DocumentTitle"],
        concept_name=coded_concept(document["ConceptNameCodeSequence"]),
        conversion_type=document["ConversionType"],
        headings=dict(document["headings"]),
        key_image_max_side=int(document["keyImageMaxSide"]),
    )


def _pathologies_template(document: dict[str, Any]) -> PathologiesTemplate:
    return PathologiesTemplate(
        probability=coded_concept(document["probability"]),
        unit=coded_concept(document["unit"]),
        tracking_format=document["trackingFormat"],
        local_scheme=document["localScheme"],
        codes={label: coded_concept(code) for label, code in document["pathologies"].items()},
        anatomy_statement=document["statements"]["anatomy"],
        pathologies_statement=document["statements"]["pathologies"],
    )


def load_templates(templates_dir: Traversable | None = None) -> Templates:
    """Load, check and convert every template of a ``dicom_templates`` folder, once per folder.

    A process validates its templates once (``serve`` at start, ``check-config``); later calls
    return the same object.

    Parameters
    ----------
    templates_dir
        The folder holding ``seg/``, ``sr/``, ``sc/``, ``pm/``, ``ko/``, ``pdf/``, ``pr/`` and ``schemas/``;
        None means the templates installed with the package (:func:`package_templates`).

    Returns
    -------
    Templates
        The converted templates.

    Raises
    ------
    TemplateError
        When any template is missing or invalid; the message names the file.
    """
    folder = package_templates() if templates_dir is None else templates_dir
    return _load_templates(str(folder), folder)


#: Templates already checked in this process, by folder.
_CHECKED: dict[str, Templates] = {}


def _load_templates(key: str, templates_dir: Traversable) -> Templates:
    if key not in _CHECKED:
        _CHECKED[key] = _read_templates(templates_dir)
    return _CHECKED[key]


def _read_templates(templates_dir: Traversable) -> Templates:
    return Templates(
        segment=_segment_template(load_template(templates_dir, SEGMENT_TEMPLATE)),
        report=_report_template(load_template(templates_dir, REPORT_TEMPLATE)),
        capture=_capture_template(load_template(templates_dir, CAPTURE_TEMPLATE)),
        parametric_map=_parametric_map_template(load_template(templates_dir, PARAMETRIC_MAP_TEMPLATE)),
        key_objects=_key_objects_template(load_template(templates_dir, KEY_OBJECTS_TEMPLATE)),
        pdf_report=_pdf_report_template(load_template(templates_dir, PDF_REPORT_TEMPLATE)),
        presentation_state=_presentation_state_template(load_template(templates_dir, PRESENTATION_STATE_TEMPLATE)),
        pathologies=_pathologies_template(load_template(templates_dir, PATHOLOGIES_TEMPLATE)),
    )


def algorithm_identification(
    name: str,
    family: CodedConcept,
    version: str,
    *,
    source: str | None = None,
    parameters: dict[str, str] | None = None,
) -> AlgorithmIdentificationSequence:
    """Build the Algorithm Identification Sequence (PS3.3 Table 10-19) of a segment.

    Parameters
    ----------
    name
        Algorithm Name (LO).
    family
        Algorithm Family Code, from CID 7162 "Surface Processing Algorithm Families".
    version
        Algorithm Version (LO): the pipeline version.
    source
        Algorithm Source (LO), e.g. the manufacturer.
    parameters
        Algorithm Parameters, e.g. the models that ran.

    Returns
    -------
    highdicom.AlgorithmIdentificationSequence
        The sequence for a SegmentDescription.
    """
    return AlgorithmIdentificationSequence(
        name=name,
        family=family,
        version=version,
        source=source,
        parameters=parameters or None,
    )


def segment_description(
    template: SegmentTemplate,
    *,
    segment_number: int,
    algorithm: AlgorithmIdentificationSequence,
    tracking_uid: str,
) -> SegmentDescription:
    """Build the Segment Sequence item (PS3.3 C.8.20.2) of one anomaly region.

    Parameters
    ----------
    template
        The segment template.
    segment_number
        1-based Segment Number, equal to the region's label.
    algorithm
        From :func:`algorithm_identification`.
    tracking_uid
        Tracking UID of the segment (deterministic, from the job key).

    Returns
    -------
    highdicom.seg.SegmentDescription
        The item, with Segment Description (0062,0006) set from the template.
    """
    label = template.segment_label_format.format(label=segment_number)
    description = SegmentDescription(
        segment_number=segment_number,
        segment_label=label,
        segmented_property_category=template.category,
        segmented_property_type=template.property_type,
        algorithm_type=template.algorithm_type,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid,
        tracking_id=label,
        display_color=CIELabColor.from_rgb(*template.display_rgb),
    )
    description.SegmentDescription = template.segment_description
    return description
