"""The anatomy model's lungs, heart and mediastinum as the chest analysis's :class:`Anatomy`.

MIEMSS segmented the image with a U-Net before looking for anomalies; with ``[models] anatomy`` that
step is TorchXRayVision's PSPNet. Its two lungs become the hemithoraces (1 = the lung on the image's
left, 2 = the one on the image's right, whatever the model calls them) and its heart and mediastinum the
mediastinum. Everything else stays classical: the body, what is not anatomy (markers, text, lines,
metal, collimation), the devices and the orientation; the midline is the classical one when the
classical estimate found a chest, else the middle between the two lungs.

When the model does not find two lungs of a lung's size (each :data:`MIN_LUNG_FRACTION` to
:data:`MAX_LUNG_FRACTION` of the frame, one on either side of its centre), the classical estimate
stands in and the frame says so (``Anatomy.method`` stays "classical").
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from miemss_node.pipeline.anatomy import right_on_image_left
from miemss_node.pipeline.base import Anatomy, DecodedImage
from miemss_node.pipeline.field_of_view import field_mask
from miemss_node.pipeline.objects import FoundObjects
from miemss_node.pipeline.xrv import model_method
from miemss_node.pipeline.xrv_models import AnatomyMasks

__all__ = ["MIN_LUNG_FRACTION", "anatomy_from_model", "model_method"]

logger = logging.getLogger(__name__)

#: Each lung must cover at least this fraction of the frame for the model's masks to be used ...
MIN_LUNG_FRACTION = 0.01
#: ... and at most this fraction (a lung is about a tenth of a chest film; half the frame is not a lung).
MAX_LUNG_FRACTION = 0.35


def anatomy_from_model(
    masks: AnatomyMasks,
    *,
    method: str,
    classical: Anatomy | None,
    work: np.ndarray,
    objects: FoundObjects,
    image: DecodedImage,
) -> Anatomy | None:
    """The frame's anatomy with the model's lungs and mediastinum (see the module docstring).

    Parameters
    ----------
    masks
        From the anatomy model, at ``work``'s shape.
    method
        How the model is named in ``Anatomy.method`` (:func:`model_method`).
    classical
        The classical estimate of the same frame (None when it found no chest).
    work
        The working image the masks and the classical estimate share.
    objects
        What is not anatomy, found on the working image.
    image
        The decoded frame (its shape, view and orientation).

    Returns
    -------
    Anatomy or None
        The classical estimate (possibly None) when the model found no two lungs.
    """
    lungs = [_largest(mask) for mask in masks.lungs]
    sizes = [float(lung.mean()) for lung in lungs]
    centres = [float(np.nonzero(lung)[1].mean()) if lung.any() else 0.0 for lung in lungs]
    middle = work.shape[1] / 2
    if not (
        all(MIN_LUNG_FRACTION <= size <= MAX_LUNG_FRACTION for size in sizes)
        and min(centres) < middle < max(centres)
    ):
        logger.info(
            "anatomy model found no two lungs (sizes %.2f, %.2f of the frame); the classical estimate stands in",
            *sizes,
            extra={"action": "anatomy.model_no_lungs", "sop_instance_uid": image.sop_instance_uid},
        )
        return classical
    image_left, image_right = (lungs[0], lungs[1]) if centres[0] <= centres[1] else (lungs[1], lungs[0])
    hemithoraces = np.zeros(work.shape, dtype=np.uint8)
    hemithoraces[image_left] = 1
    hemithoraces[image_right & (hemithoraces == 0)] = 2
    if classical is not None:
        body, not_anatomy, devices = classical.body, classical.not_anatomy, classical.devices
        midline = classical.midline_col
    else:
        body = field_mask(work)
        not_anatomy, devices = objects.mask | ~body, tuple(sorted(objects.kinds))
        midline = None
    if midline is None:
        midline = 0.5 * (float(np.nonzero(image_left)[1].max()) + float(np.nonzero(image_right)[1].min()))
    view = image.view_position.strip().upper()
    return Anatomy(
        shape=(int(work.shape[0]), int(work.shape[1])),
        source_shape=(int(image.pixels.shape[0]), int(image.pixels.shape[1])),
        view=view,
        chest_frontal=True,
        body=body,
        hemithoraces=hemithoraces,
        mediastinum=masks.mediastinum & (hemithoraces == 0),
        midline_col=float(midline),
        not_anatomy=not_anatomy,
        devices=devices,
        patient_right_on_image_left=right_on_image_left(image.patient_orientation or None),
        method=method,
    )


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected part of a mask, holes filled."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(sizes.argmax()))
