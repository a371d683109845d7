"""DICOM result encoders: SEG, SR and SC made with highdicom from the pipeline's analyses.

The entry point is :func:`encode_study`; coded concepts come from ``dicom_templates/``.
"""

from miemss_node.encode.context import EncodeContext, EncodedResult
from miemss_node.encode.repair import Repair, repair_source
from miemss_node.encode.study import encode_study
from miemss_node.encode.templates import Templates, load_templates

__all__ = [
    "EncodeContext",
    "EncodedResult",
    "Repair",
    "Templates",
    "encode_study",
    "load_templates",
    "repair_source",
]
