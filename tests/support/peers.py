"""Real DICOM peers for tests: a pynetdicom Storage SCP playing the PACS, and a C-STORE SCU."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt


class PacsScp:
    """A Storage SCP on 127.0.0.1 and an ephemeral port that keeps what it receives.

    ``status_for`` decides the answer per dataset (default Success), so tests can play a PACS that
    refuses or is out of resources.
    """

    def __init__(
        self,
        ae_title: str = "TESTPACS",
        status_for: Callable[[Dataset], int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.status_for = status_for or (lambda _ds: 0x0000)
        self.received: list[Dataset] = []
        self.attempts = 0
        #: Connections open now: a sender still sending (or hanging) keeps one open.
        self.open_connections = 0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_CONN_OPEN, self._on_connection, [1]),
                (evt.EVT_CONN_CLOSE, self._on_connection, [-1]),
            ],
            ssl_context=ssl_context,
        )
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        status = self.status_for(ds)
        with self._lock:
            self.attempts += 1
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                self.received.append(ds)
        return status

    def _on_connection(self, _event: evt.Event, change: int) -> None:
        with self._lock:
            self.open_connections += change

    def wait_until_idle(self, timeout: float = 60.0) -> None:
        """Poll until no connection is open, so nothing more is on its way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.open_connections == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the PACS still had {self.open_connections} connection(s) open after {timeout} s")

    def wait_for(self, predicate: Callable[[list[Dataset]], bool], timeout: float = 60.0) -> list[Dataset]:
        """Poll until ``predicate(received)`` holds; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.received)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.1)
        raise AssertionError(f"PACS did not receive the expected objects in {timeout} s (got {len(snapshot)})")

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()


def store_files(paths: Iterable[Path], port: int, *, called_aet: str = "MIEMSS", calling_aet: str = "MODALITY") -> list[int]:
    """C-STORE files to 127.0.0.1:port in one association; return each response status (-1 = none)."""
    datasets = [dcmread(path, force=True) for path in paths]
    return store_datasets(datasets, port, called_aet=called_aet, calling_aet=calling_aet)


def store_datasets(
    datasets: list[Dataset], port: int, *, called_aet: str = "MIEMSS", calling_aet: str = "MODALITY"
) -> list[int]:
    """C-STORE datasets, each in its own transfer syntax (one presentation context per pair)."""
    ae = AE(ae_title=calling_aet)
    pairs = set()
    for ds in datasets:
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ImplicitVRLittleEndian)
        pairs.add((str(ds.SOPClassUID), syntax))
        pairs.add((str(ds.SOPClassUID), str(ExplicitVRLittleEndian)))
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    assert assoc.is_established, f"no association with 127.0.0.1:{port}"
    try:
        statuses = []
        for ds in datasets:
            response = assoc.send_c_store(ds)
            statuses.append(int(response.Status) if "Status" in response else -1)
        return statuses
    finally:
        assoc.release()
