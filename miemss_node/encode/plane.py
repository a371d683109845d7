"""The image plane of a projection radiograph in the objects we derive from it (SEG, Parametric Map).

A projection radiograph (CR, DX, an XA frame, a Secondary Capture) has no Frame of Reference: its
pixels are not placed in a patient coordinate system. Two of our objects still need a plane:

- The Parametric Map IOD requires the Frame of Reference module and the plane functional groups
  (PS3.3 A.75).
- OHIF's SEG loader (Cornerstone3D ``@cornerstonejs/adapters``, ``helpers/checkOrientation``)
  reads the SEG's Plane Orientation (Patient) functional group and fails without it. The SEG IOD
  allows that group, next to the Derivation Image functional group that ties each SEG pixel to a
  source pixel, only within a Frame of Reference (PS3.3 Table A.51-1: Frame of Reference "may be
  present otherwise"; Table A.51-2: Plane Orientation (Patient) "may be present otherwise if the
  Frame of Reference is defined in the patient-relative Reference Coordinate System").

Both therefore carry the same Frame of Reference, derived from the source's SOP Instance UID (not
from the job), so every object made from one image, in any job, agrees; and the same orientation:
rows along +x, columns along +y, the plane Cornerstone3D and OHIF assume for an image without
Image Orientation (Patient). It relates our objects to the source's pixel grid, not to the
patient: the patient's directions are the source's Patient Orientation, which the objects copy.
"""

from __future__ import annotations

from highdicom import UID, PlaneOrientationSequence
from pydicom import Dataset

from miemss_node.encode.uids import derive_uid

#: Image Orientation (Patient) of a projection image's plane: Cornerstone3D's and OHIF's default.
PROJECTION_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def has_frame_of_reference(source: Dataset) -> bool:
    """Whether the source places its pixels in a patient coordinate system (CT, MR, enhanced XA)."""
    return bool(source.get("FrameOfReferenceUID"))


def projection_frame_of_reference_uid(source_sop_instance_uid: str) -> UID:
    """The Frame of Reference UID of the plane of a source image without one.

    The same for every object derived from the image, in every job: the SEG and the Parametric
    Map of one image share it.
    """
    return derive_uid("projection-image-plane", source_sop_instance_uid)


def projection_plane_orientation() -> PlaneOrientationSequence:
    """The Plane Orientation Sequence (PS3.3 C.7.6.16.2.4) of a projection image's plane."""
    return PlaneOrientationSequence("PATIENT", image_orientation=PROJECTION_ORIENTATION)
