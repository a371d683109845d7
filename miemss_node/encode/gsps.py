"""The Grayscale Softcopy Presentation State (GSPS) of a study: region outlines for any viewer.

PS3.3 A.33.1 Grayscale Softcopy Presentation State IOD, built with
:class:`highdicom.pr.GrayscaleSoftcopyPresentationState`. Many PACS viewers (and Weasis) display
a presentation state but neither a SEG nor the graphics of an SR. One GSPS per study references
every analysed grayscale source image and carries, per image (or frame):

- each region's outline (a closed POLYLINE in image pixels) with a text label "number: score";
- "AI-generated, not for diagnosis" and the image's abnormality score, in display coordinates.

Some renderers show a presentation state's overlays but not its graphic objects (dcmtk's
``dcmpstat``, used by ``dcmp2pgm``, hands the viewer each activated overlay as a bitmap). When the
GSPS presents a single single-frame image, the outlines are therefore also an Overlay Plane
(PS3.3 C.9.2) activated in the outline layer (Overlay Activation, C.11.7). With several images
this cannot be done: an overlay of a presentation state applies to every image it references.

The display window (Modality LUT and VOI LUT) is the source's: highdicom copies them from the
referenced images. MONOCHROME1 sources get an INVERSE Presentation LUT so that they keep their
polarity (PS3.3 C.11.6.1; a presentation state's output is P-values, where white is high).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom import (
    ModalityLUTTransformation,
    PresentationLUTShapeValues,
    PresentationLUTTransformation,
    ReferencedImageSequence,
)
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pack_bits
from pydicom.tag import Tag

from miemss_node.encode.equipment import (
    Equipment,
    processing_equipment,
    software_versions_value,
)
from miemss_node.encode.ko import KeyImage
from miemss_node.encode.outline import region_outline
from miemss_node.encode.overlay import outline_pixels
from miemss_node.encode.series_attributes import copy_laterality
from miemss_node.encode.templates import PresentationStateTemplate
from miemss_node.errors import EncodeError
from miemss_node.pipeline.base import ImageAnalysis, Region

logger = logging.getLogger(__name__)

#: Height of a region label as a fraction of the image's shorter side, and its width per character.
_LABEL_HEIGHT = 0.03
_CHAR_WIDTH = 0.6

#: Where the warning and the score are written, in DISPLAY units (0..1 of the displayed area).
_WARNING_BOX = (0.02, 0.02, 0.70, 0.06)
_SCORE_BOX = (0.02, 0.07, 0.55, 0.11)


@dataclass(frozen=True, kw_only=True)
class GspsRequest:
    """Everything needed to encode the study's GSPS."""

    images: tuple[KeyImage, ...]
    template: PresentationStateTemplate
    equipment: Equipment
    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1


def is_grayscale(source: Dataset) -> bool:
    """Whether a GSPS can present the image (one sample per pixel, MONOCHROME1/2)."""
    photometric = str(source.get("PhotometricInterpretation", ""))
    return int(source.get("SamplesPerPixel", 1) or 1) == 1 and photometric in ("MONOCHROME1", "MONOCHROME2")


def region_label(template: PresentationStateTemplate, region: Region) -> str:
    """The text beside a region's outline: its number and mean anomaly score."""
    return template.region_label_format.format(label=region.label, score=float(region.mean_score))


def _label_box(region: Region, text: str, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """A bounding box (left, top, right, bottom) in pixels just above the region, inside the image."""
    rows, cols = shape
    height = max(8.0, _LABEL_HEIGHT * min(rows, cols))
    width = min(float(cols), height * _CHAR_WIDTH * len(text))
    top_row, left_col = region.bbox[0], region.bbox[1]
    top = top_row - height if top_row - height >= 0 else min(float(region.bbox[2]), rows - height)
    left = min(float(left_col), cols - width)
    return (max(0.0, left), max(0.0, top), max(0.0, left) + width, max(0.0, top) + height)


def _image_annotations(
    template: PresentationStateTemplate,
    source: Dataset,
    analysis: ImageAnalysis,
    outlines: GraphicLayer,
    warnings: GraphicLayer,
) -> list[GraphicAnnotation]:
    frame = analysis.decoded.frame_number
    shape = (int(source.Rows), int(source.Columns))
    labels = analysis.region_map.labels
    regions = sorted(analysis.region_map.regions, key=lambda region: region.label)
    annotations = [
        GraphicAnnotation(
            referenced_images=[source],
            graphic_layer=warnings,
            referenced_frame_number=frame,
            text_objects=[
                TextObject(template.warning_text, AnnotationUnitsValues.DISPLAY, bounding_box=_WARNING_BOX),
                TextObject(
                    template.abnormality_score_format.format(score=float(analysis.abnormality_score)),
                    AnnotationUnitsValues.DISPLAY,
                    bounding_box=_SCORE_BOX,
                ),
            ],
        )
    ]
    if regions:
        annotations.append(
            GraphicAnnotation(
                referenced_images=[source],
                graphic_layer=outlines,
                referenced_frame_number=frame,
                graphic_objects=[
                    GraphicObject(
                        graphic_type=GraphicTypeValues.POLYLINE,
                        graphic_data=region_outline(labels, region.label),
                        units=AnnotationUnitsValues.PIXEL,
                    )
                    for region in regions
                ],
                text_objects=[
                    TextObject(
                        region_label(template, region),
                        AnnotationUnitsValues.PIXEL,
                        bounding_box=_label_box(region, region_label(template, region), shape),
                    )
                    for region in regions
                ],
            )
        )
    return annotations


def _is_classic_multiframe(source: Dataset) -> bool:
    """A multi-frame image without functional groups (XA, a multi-frame CR or SC)."""
    return int(source.get("NumberOfFrames", 1) or 1) > 1 and "SharedFunctionalGroupsSequence" not in source


def _first(value: object) -> float:
    """The first of a DS value that may be multi-valued (several windows)."""
    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0])
    return float(str(value))


def _display_arguments(sources: Sequence[Dataset]) -> dict[str, object]:
    """The source's Modality LUT and window, for a study with a classic multi-frame image.

    highdicom reads them itself from single-frame and enhanced multi-frame images, but not from
    classic multi-frame ones (it looks in their functional groups), nor from several images of
    which one is multi-frame. Then they are given explicitly: the Rescale Slope and Intercept (an
    identity without them) and each image's first window, else its stored range.
    """
    if not any(_is_classic_multiframe(source) for source in sources):
        return {}
    source = sources[0]
    if len(sources) == 1 and "RescaleSlope" in source:
        modality = ModalityLUTTransformation(
            rescale_slope=float(source.RescaleSlope),
            rescale_intercept=float(source.get("RescaleIntercept", 0.0)),
            rescale_type=str(source.get("RescaleType", "US") or "US"),
        )
    else:
        modality = ModalityLUTTransformation(rescale_slope=1.0, rescale_intercept=0.0, rescale_type="US")
    windows = []
    for item in sources:
        if "WindowCenter" in item and "WindowWidth" in item:
            center, width = _first(item.WindowCenter), _first(item.WindowWidth)
        else:
            bits = int(item.get("BitsStored", 8) or 8)
            center, width = 2.0 ** (bits - 1), 2.0**bits
        windows.append(
            SoftcopyVOILUTTransformation(
                window_center=center,
                window_width=width,
                referenced_images=ReferencedImageSequence(referenced_images=[item]) if len(sources) > 1 else None,
            )
        )
    return {"modality_lut_transformation": modality, "voi_lut_transformations": windows}


def _presentation_lut(sources: Sequence[Dataset]) -> PresentationLUTTransformation:
    inverse = all(str(source.PhotometricInterpretation) == "MONOCHROME1" for source in sources)
    shape = PresentationLUTShapeValues.INVERSE if inverse else PresentationLUTShapeValues.IDENTITY
    return PresentationLUTTransformation(presentation_lut_shape=shape)


@dataclass(frozen=True, kw_only=True)
class OutlineOverlay:
    """A one-bit overlay of the region outlines, shown in a graphic layer."""

    #: Boolean, the image's rows and columns: True on an outline.
    bitmap: np.ndarray
    layer: str
    description: str


#: Group of the Overlay Plane module our GSPS writes (the first of 6000-601E).
_OVERLAY_GROUP = 0x6000


class _PresentationStateWithOverlay(GrayscaleSoftcopyPresentationState):
    """highdicom's GSPS with an Overlay Plane (PS3.3 C.9.2) and its Overlay Activation (C.11.7).

    highdicom 0.28 writes neither; both modules are conditional in the GSPS IOD (PS3.3 A.33.1)
    and required once the presentation state holds an overlay.
    """

    def __init__(self, *args: object, overlay: OutlineOverlay | None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if overlay is not None:
            self._add_overlay(overlay)

    def _add_overlay(self, overlay: OutlineOverlay) -> None:
        rows, columns = overlay.bitmap.shape
        data = pack_bits(overlay.bitmap.astype(np.uint8))
        if len(data) % 2:
            data += b"\x00"

        def element(element_number: int, vr: str, value: object) -> None:
            self.add_new(Tag(_OVERLAY_GROUP, element_number), vr, value)

        element(0x0010, "US", rows)
        element(0x0011, "US", columns)
        element(0x0022, "LO", overlay.description)
        element(0x0040, "CS", "G")
        element(0x0050, "SS", [1, 1])
        element(0x0100, "US", 1)
        element(0x0102, "US", 0)
        element(0x1001, "CS", overlay.layer)
        element(0x3000, "OW", data)


def _outline_overlay(template: PresentationStateTemplate, images: Sequence[KeyImage]) -> OutlineOverlay | None:
    """The outline overlay, when the GSPS presents one single-frame image with regions."""
    if len(images) != 1 or images[0].analysis.decoded.frame_number is not None:
        return None
    labels = images[0].analysis.region_map.labels
    if not images[0].analysis.region_map.regions:
        return None
    return OutlineOverlay(
        bitmap=outline_pixels(labels), layer=template.graphic_layer, description=template.graphic_layer_description
    )


def build_presentation_state(request: GspsRequest) -> GrayscaleSoftcopyPresentationState | None:
    """Encode the study's GSPS.

    Parameters
    ----------
    request
        The analysed images with their repaired source headers, the template and the UIDs.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState or None
        None when no analysed image is grayscale (a colour image needs a Color Softcopy
        Presentation State, which we do not make).

    Raises
    ------
    EncodeError
        When highdicom rejects the content.
    """
    images = [image for image in request.images if is_grayscale(image.source)]
    if not images:
        logger.info("no grayscale image: no GSPS", extra={"action": "encode.gsps_skipped"})
        return None
    sources = list({str(image.source.SOPInstanceUID): image.source for image in images}.values())
    template = request.template
    outlines = GraphicLayer(
        layer_name=template.graphic_layer,
        order=1,
        description=template.graphic_layer_description,
        display_color=CIELabColor.from_rgb(*template.outline_rgb),
    )
    warnings = GraphicLayer(
        layer_name=template.warning_layer,
        order=2,
        description=template.warning_layer_description,
        display_color=CIELabColor.from_rgb(*template.warning_rgb),
    )
    equipment = request.equipment
    try:
        annotations = [
            annotation
            for image in images
            for annotation in _image_annotations(template, image.source, image.analysis, outlines, warnings)
        ]
        gsps = _PresentationStateWithOverlay(
            overlay=_outline_overlay(template, images),
            referenced_images=sources,
            series_instance_uid=request.series_uid,
            series_number=request.series_number,
            sop_instance_uid=request.sop_instance_uid,
            instance_number=request.instance_number,
            manufacturer=equipment.manufacturer,
            manufacturer_model_name=equipment.model_name,
            software_versions=software_versions_value(equipment),
            device_serial_number=equipment.device_serial_number,
            content_label=template.content_label,
            content_description=template.content_description,
            graphic_annotations=annotations,
            graphic_layers=[outlines, warnings],
            institution_name=equipment.institution_name,
            presentation_lut_transformation=_presentation_lut(sources),
            **_display_arguments(sources),
            contributing_equipment=[processing_equipment(equipment)],
            series_description=template.series_description,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"GSPS could not be built: {exc}") from exc
    copy_laterality(sources, gsps)
    logger.info(
        "GSPS encoded for %d image(s)",
        len(sources),
        extra={"action": "encode.gsps", "sop_instance_uid": str(gsps.SOPInstanceUID)},
    )
    return gsps
