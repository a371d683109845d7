"""Send raw (possibly broken) DICOM bytes, and make broken variants of valid files."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def send_raw(path: Path, port: int, *, timeout: float = 30.0) -> int | None:
    """C-STORE a file's bytes without decoding them (needs ``_config.STORE_SEND_CHUNKED_DATASET``).

    Returns the status, -1 for no response, or None when even the SCU could not read the File Meta
    or gave up mid-way (a legitimate outcome for a broken file).
    """
    try:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except Exception:  # noqa: BLE001 - the SCU refusing to send is a legitimate outcome
        return None
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="MIEMSS")
    if not assoc.is_established:
        raise ConnectionError(f"no association with 127.0.0.1:{port}")
    try:
        response = assoc.send_c_store(path)
        return int(response.Status) if "Status" in response else -1
    except Exception:  # noqa: BLE001 - the SCU may give up mid-way on a broken file
        return None
    finally:
        if assoc.is_established:
            assoc.release()


def node_is_serving(port: int) -> bool:
    """True when the node answers C-ECHO with Success."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MIEMSS")
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    if assoc.is_established:
        assoc.release()
    return bool(ok)


def mutate(data: bytes, *, cut: int | None, flips: list[int]) -> bytes:
    """Flip bits (bit offsets) and truncate at ``cut``, leaving the File Meta readable."""
    mutated = bytearray(data)
    meta_end = 132 + 12 + int.from_bytes(mutated[140:144], "little")
    for bit in flips:
        if meta_end <= bit // 8 < len(mutated):
            mutated[bit // 8] ^= 1 << (bit % 8)
    if cut is not None:
        mutated = mutated[: max(cut, meta_end)]
    return bytes(mutated)
