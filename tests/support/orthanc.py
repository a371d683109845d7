"""A real Orthanc PACS for tests: its own JSON config, storage folder and loopback ports.

Orthanc (Debian package ``orthanc``) is started in the foreground as a child process and driven
through its REST API with :mod:`urllib` (no extra dependency). See the Orthanc Book, "REST API of
Orthanc" and "Configuration of Orthanc" (``OrthancServer/Resources/Configuration.json``).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.tools import find_tool

#: How long Orthanc may take to answer its REST API after starting, in seconds.
START_TIMEOUT_S = 30.0

def orthanc_binary() -> str | None:
    """Return the ``Orthanc`` executable, or None when Debian's ``orthanc`` is not installed."""
    return find_tool("Orthanc")  # Debian installs the server as /usr/sbin/Orthanc



@dataclass(frozen=True, kw_only=True)
class Modality:
    """A DICOM peer declared in Orthanc's ``DicomModalities``."""

    name: str
    ae_title: str
    port: int
    host: str = "127.0.0.1"


class OrthancError(AssertionError):
    """Orthanc did not start or answered a REST call with an error (the message has its log tail)."""


class Orthanc:
    """One Orthanc server on loopback, stopped by :meth:`stop`.

    Only stores from the declared modalities are accepted (``DicomAlwaysAllowStore: false`` and
    ``DicomCheckModalityHost: true``), as a hospital configures it; Orthanc's default accepts any.
    """

    def __init__(self, binary: str, folder: Path, modalities: tuple[Modality, ...], ae_title: str = "ORTHANC") -> None:
        self.binary = binary
        self.folder = folder
        self.ae_title = ae_title
        self.modalities = modalities
        self.http_port = 0
        self.dicom_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "orthanc.log"

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc runs with."""
        storage = str(self.folder / "storage")
        return {
            "Name": "MIEMSS test PACS",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True,
            "DicomModalities": {
                m.name: {"AET": m.ae_title, "Host": m.host, "Port": m.port} for m in self.modalities
            },
            "DicomScuTimeout": 30,
            "SaveJobs": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "Plugins": [],
            # Default is 60 s; "stable" events are not used here, but keep Orthanc quiet.
            "StableAge": 1,
        }

    def start(self, *, attempts: int = 3) -> None:
        """Start Orthanc and wait until its REST API answers; retry on new ports if one was taken.

        Raises
        ------
        OrthancError
            When Orthanc exits or does not answer within :data:`START_TIMEOUT_S`.
        """
        for attempt in range(1, attempts + 1):
            self.http_port, self.dicom_port = free_port(), free_port()
            path = self.folder / "orthanc.json"
            path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen([self.binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
            if self._wait_until_answering():
                return
            self.stop()
            if attempt == attempts:
                raise OrthancError(f"Orthanc did not start (tried {attempts} times):\n{self.log_tail()}")

    def _wait_until_answering(self) -> bool:
        """Poll ``GET /system`` until it answers; False when Orthanc exited (a port was taken)."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                if self.get("/system")["DicomPort"] == self.dicom_port:
                    return True
            except (OSError, OrthancError):
                pass
            time.sleep(0.05)
        raise OrthancError(f"Orthanc did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def request_stop(self) -> None:
        """Ask Orthanc to stop (SIGTERM) without waiting: it takes a few seconds to close its servers."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def stop(self) -> None:
        """Stop Orthanc and wait for it (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None:
            return
        self.request_stop()
        if self._process.poll() is None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None) -> bytes:
        """Call the REST API and return the raw answer.

        Raises
        ------
        OrthancError
            On an HTTP error status, with Orthanc's answer and log tail.
        """
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                content: bytes = answer.read()
                return content
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {detail}\n{self.log_tail()}") from exc

    def get(self, path: str) -> Any:
        """``GET`` a JSON resource."""
        return json.loads(self.request("GET", path))

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any]) -> Any:
        """``POST`` and decode the JSON answer."""
        return json.loads(self.request("POST", path, body))

    def upload(self, path: Path) -> dict[str, Any]:
        """Store a DICOM file through ``POST /instances``; returns Orthanc's answer (ID, ParentStudy...)."""
        answer: dict[str, Any] = self.post("/instances", path.read_bytes())
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload of {path.name} answered {answer}")
        return answer

    def study_id(self, study_instance_uid: str) -> str | None:
        """Orthanc's ID of a study, by Study Instance UID (``/tools/lookup``); None when absent."""
        found = self.post("/tools/lookup", study_instance_uid.encode())
        ids = [item["ID"] for item in found if item["Type"] == "Study"]
        return ids[0] if ids else None

    def study_instances(self, study_id: str) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance ID of every instance of a study."""
        instances = self.get(f"/studies/{study_id}/instances")
        return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in instances}

    def download(self, instance_id: str) -> bytes:
        """The DICOM file of an instance, as Orthanc stored it (``GET /instances/{id}/file``)."""
        return self.request("GET", f"/instances/{instance_id}/file")
