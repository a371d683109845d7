"""MIEMSS node: a DICOM node that enhances X-rays, flags anomalous regions and reports them."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
