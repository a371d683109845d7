"""The C-STORE statuses the receiver answers (PS3.4 Annex B.2.3, PS3.7 Annex C), one constant each."""

from __future__ import annotations

STATUS_SUCCESS = 0x0000
"""Stored and recorded, or a duplicate of an instance already recorded with the same content."""

STATUS_OUT_OF_RESOURCES = 0xA700
"""Disk full or database unavailable: the sender should retry later."""

STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""The dataset's SOP Class or Instance UID differs from the C-STORE request's."""

STATUS_CANNOT_UNDERSTAND = 0xC210
"""The dataset cannot be parsed, or a UID we file it by is missing or malformed."""

STATUS_TOO_LARGE = 0xC001
"""The instance exceeds ``max_instance_mb``: a permanent refusal (Cannot understand range, PS3.4 B.2.3)."""

STATUS_CONFLICTING_INSTANCE = 0xC011
"""The SOP Instance UID is already stored with other content (other bytes in the same transfer
syntax, or another study, series or patient): refused for good, the stored copy is kept."""

STATUS_CONFLICTING_PATIENT = 0xC012
"""The instance names another patient (Patient ID / Issuer) than the study's stored instances:
refused for good, so one result never mixes two patients. dcm4chee answers the same case with
0xA778 ("Patient ID differs from Patient ID in previous received object of Study"), in the
out-of-resources range, which makes senders retry."""
