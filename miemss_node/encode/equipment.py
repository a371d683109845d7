"""Who made our objects: General Equipment attributes and Contributing Equipment.

The SOP Common module's Contributing Equipment Sequence (PS3.3 C.12.1) records that our software
processed the source images; highdicom adds the source's acquisition equipment next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from highdicom import ContributingEquipment
from pydicom.sr.codedict import codes

import miemss_node
from miemss_node.encode.uids import derive_uid

#: Manufacturer (0008,0070) of every object we write.
MANUFACTURER = "MIEMSS"

#: Manufacturer's Model Name (0008,1090): the software, since there is no hardware.
MODEL_NAME = "MIEMSS node"

#: Device Serial Number (0018,1000), Type 1 in the Enhanced General Equipment module of SEG
#: (PS3.3 C.7.5.2). Software has no serial number, so this names the product, not an installation.
DEVICE_SERIAL_NUMBER = "MIEMSS-NODE"

#: Device Observer UID of the SR observation context (TID 1004): the same for every job.
DEVICE_OBSERVER_UID = derive_uid("miemss-node", "device-observer")


@dataclass(frozen=True, kw_only=True)
class Equipment:
    """General Equipment values of our objects."""

    manufacturer: str = MANUFACTURER
    model_name: str = MODEL_NAME
    device_serial_number: str = DEVICE_SERIAL_NUMBER
    #: Software Versions (0018,1020): the package version, then the pipeline's if it differs.
    software_versions: tuple[str, ...] = (miemss_node.__version__,)
    institution_name: str | None = None


def equipment_for(pipeline_version: str, institution_name: str | None) -> Equipment:
    """Return the equipment values for one job.

    Parameters
    ----------
    pipeline_version
        Version of the pipeline that produced the analyses (recorded in Software Versions).
    institution_name
        Institution Name (0008,0080) to record, or None.

    Returns
    -------
    Equipment
        The values every encoder uses.
    """
    versions: tuple[str, ...] = (miemss_node.__version__,)
    if pipeline_version and pipeline_version != miemss_node.__version__:
        versions = (miemss_node.__version__, pipeline_version)
    return Equipment(software_versions=versions, institution_name=institution_name)


def software_versions_value(equipment: Equipment) -> str | tuple[str]:
    """Software Versions in the form highdicom's constructors accept (str or a tuple)."""
    if len(equipment.software_versions) == 1:
        return equipment.software_versions[0]
    return equipment.software_versions  # type: ignore[return-value]


def enhanced_equipment_arguments(equipment: Equipment) -> dict[str, Any]:
    """The Enhanced General Equipment attributes (PS3.3 C.7.5.2) as highdicom's SEG and PM take them."""
    return {
        "manufacturer": equipment.manufacturer,
        "manufacturer_model_name": equipment.model_name,
        "software_versions": software_versions_value(equipment),
        "device_serial_number": equipment.device_serial_number,
    }


def processing_equipment(equipment: Equipment) -> ContributingEquipment:
    """Return our Contributing Equipment item (purpose: DCM 109103 "Processing Equipment").

    Parameters
    ----------
    equipment
        The equipment values of this job.

    Returns
    -------
    highdicom.ContributingEquipment
        An item of the Contributing Equipment Sequence (PS3.3 C.12.1.1.7).
    """
    return ContributingEquipment(
        manufacturer=equipment.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=equipment.model_name,
        software_versions=list(equipment.software_versions),
        device_serial_number=equipment.device_serial_number,
        institution_name=equipment.institution_name,
        contribution_description="AI anomaly detection (unverified, not for diagnosis)",
    )
