"""``[logging] format = "json"``: ``serve`` and its worker processes write JSON lines only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.net import free_port, wait_for_port
from tests.support.paths import shared_file
from tests.support.peers import PacsScp, store_files

CLI = [sys.executable, "-m", "miemss_node"]


@pytest.mark.slow
def test_serve_and_its_workers_log_json_lines(tmp_path: Path) -> None:
    port = free_port()
    pacs = PacsScp(ae_title="PACS")
    config = tmp_path / "config.toml"
    config.write_text(
        f"[node]\nport={port}\nstorage_dir='store'\n[study]\nsettle_seconds=0.3\n"
        "[worker]\ncount=1\nprocesses=true\npoll_seconds=0.2\n[logging]\nformat='json'\n"
        f"[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport={pacs.port}\n",
        encoding="utf-8",
    )
    paths = sorted(shared_file("dicom/xray/study_cr_cspine_16x16").glob("*.dcm"))
    log_path = tmp_path / "serve.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen([*CLI, "serve", "--config", str(config)], stderr=log, text=True)
        try:
            wait_for_port(port, process=process)
            assert store_files(paths, port) == [0x0000] * 3
            deadline = time.monotonic() + 60
            # job.encoded is logged by the worker child process, receive.stored by the main one.
            while '"action": "job.encoded"' not in log_path.read_text(encoding="utf-8"):
                assert time.monotonic() < deadline, log_path.read_text(encoding="utf-8")[-2000:]
                assert process.poll() is None, "serve exited early"
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            pacs.stop()
    assert process.returncode == 0
    text = log_path.read_text(encoding="utf-8")
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert {"time", "level", "action", "logger", "message"} <= set(record), record
    by_action = {record["action"]: record for record in records}
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    assert by_action["receive.stored"]["study_uid"] == study_uid
    assert by_action["receive.stored"]["sop_instance_uid"] in {str(dcmread(p).SOPInstanceUID) for p in paths}
    encoded = by_action["job.encoded"]
    assert encoded["study_uid"] == study_uid and isinstance(encoded["job_id"], int)
    assert {"job.queued", "job.started", "node.stopped"} <= set(by_action)
    patient_name = str(dcmread(paths[0]).PatientName)
    assert patient_name and patient_name not in text
