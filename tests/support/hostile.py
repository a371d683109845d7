"""Hostile and unlucky peers for the receiver: raw sockets, huge instances, a small disk."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A raw TCP connection to 127.0.0.1:port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the peer closes (or resets) the connection within ``within`` seconds; what it sent
    before closing is read and dropped."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def large_instance(megabytes: int, *, seed: int = 0) -> Dataset:
    """CT_small with ``megabytes`` MB of random 16-bit pixels under new UIDs (Explicit VR LE)."""
    ds = dcmread(CT_SMALL)
    side = int((megabytes * 2**20 / 2) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(side, side), dtype=np.uint16)
    ds.Rows = ds.Columns = side
    ds.PixelData = pixels.tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def variant(ds: Dataset, **changes: object) -> Dataset:
    """A deep copy of ``ds`` with attributes changed (the same SOP Instance UID unless changed)."""
    copied = copy.deepcopy(ds)
    for keyword, value in changes.items():
        setattr(copied, keyword, value)
    return copied


def store_each(datasets: list[Dataset], port: int, *, calling_aet: str = "MODALITY") -> list[Dataset]:
    """C-STORE datasets in one association; return each response (with its Error Comment)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="MIEMSS")
    assert assoc.is_established, f"no association with 127.0.0.1:{port}"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        if assoc.is_established:
            assoc.release()


@contextmanager
def small_disk(folder: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` MB mounted on ``folder`` (needs root, as in CI)."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()[:120]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
