"""The command line in a subprocess, as an operator runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.dciodvfy import dciodvfy_errors
from tests.support.net import free_port, wait_for_port
from tests.support.paths import shared_file, wg04_chest_cr
from tests.support.peers import PacsScp, store_files
from tests.support.tools import tool

CLI = [sys.executable, "-m", "miemss_node"]






def test_version() -> None:
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("miemss-node ")


@pytest.mark.slow
def test_serve_receives_processes_sends_and_stops_on_sigterm(tmp_path: Path) -> None:
    pacs = PacsScp(ae_title="PACS")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"[node]\nae_title='MIEMSS'\nport={port}\nstorage_dir='store'\n[study]\nsettle_seconds=0.5\n"
        f"[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport={pacs.port}\n",
        encoding="utf-8",
    )
    source = shared_file("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm")
    process = subprocess.Popen([*CLI, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process=process)
        health = subprocess.run([*CLI, "healthcheck", "--config", str(config)], capture_output=True, text=True)
        assert health.returncode == 0 and "healthy" in health.stdout
        assert store_files([source], port) == [0x0000]
        pacs.wait_for(lambda got: len(got) >= 2, timeout=120)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        pacs.stop()
    assert process.returncode == 0
    for action in ("receive.stored", "job.queued", "job.encoded", "send.delivered", "node.stopped"):
        assert action in stderr
    patient_name = str(dcmread(source).PatientName)
    assert patient_name and patient_name not in stderr
    jobs = subprocess.run([*CLI, "jobs", "--config", str(config)], capture_output=True, text=True, check=True)
    assert "delivered" in jobs.stdout


@pytest.mark.slow
def test_process_writes_images_report_findings_and_valid_dicom(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, "process", "--input", str(wg04_chest_cr()), "--output", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for name in ("enhanced.png", "heatmap.png", "overlay.png", "mask.png", "report.txt", "findings.json"):
        assert (out / name).stat().st_size > 0
    findings = json.loads((out / "findings.json").read_text())
    (image,) = findings["images"]
    assert image["rows"] == 1955 and image["columns"] == 1841
    assert 0.0 <= image["abnormality_score"] <= 1.0
    assert findings["abnormality_score"] == image["abnormality_score"]  # the study's: its highest image's
    dicoms = sorted(out.glob("*.dcm"))
    # Every result type by default (a SEG only when the film has a region).
    kinds = {p.name.split("_")[0] for p in dicoms}
    assert kinds - {"SEG"} == {"SR", "SC", "PM", "PDF", "KO", "GSPS"}
    assert ("SEG" in kinds) == bool(image["regions"])
    for path in dicoms:
        assert dciodvfy_errors(path) == []


def test_process_writes_only_the_result_types_asked_for(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    source = str(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, "process", "--input", source, "--output", str(out), "--result-types", "sr,GSPS"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name.split("_")[0] for p in out.glob("*.dcm")) == ["GSPS", "SR"]
    refused = subprocess.run(
        [*CLI, "process", "--input", source, "--output", str(out), "--result-types", "SR,JPEG"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "unknown result type(s) JPEG" in refused.stderr


def test_process_png_needs_no_dicom(tmp_path: Path) -> None:
    source = shared_file("images/nih_00000001_000_512_txv.png")
    out = tmp_path / "out"
    done = subprocess.run([*CLI, "process", "--input", str(source), "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "overlay.png").exists() and "region" in (out / "report.txt").read_text()
    assert not list(out.glob("*.dcm"))


def not_log_records(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not log records (those start with their date)."""
    return [line for line in stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]


def big_endian_with_undefined_length(path: Path) -> Path:
    """Explicit VR Big Endian whose Pixel Data (OW) has an undefined length: no delimiter can end it."""
    def element(group: int, elem: int, vr: bytes, value: bytes, *, order: str, length: int | None = None) -> bytes:
        size = len(value) if length is None else length
        if vr in (b"OB", b"OW", b"SQ", b"UN"):
            return struct.pack(f"{order}HH", group, elem) + vr + b"\0\0" + struct.pack(f"{order}I", size) + value
        return struct.pack(f"{order}HH", group, elem) + vr + struct.pack(f"{order}H", size) + value

    sc, uid = b"1.2.840.10008.5.1.4.1.1.7\0", b"1.2.3.4\0"
    meta = b"".join(
        element(2, e, vr, v, order="<")
        for e, vr, v in ((1, b"OB", b"\0\1"), (2, b"UI", sc), (3, b"UI", uid), (0x10, b"UI", b"1.2.840.10008.1.2.2\0"))
    )
    body = b"".join(
        element(g, e, vr, v, order=">")
        for g, e, vr, v in ((8, 0x16, b"UI", sc), (8, 0x18, b"UI", uid), (0x28, 0x10, b"US", b"\0\4"), (0x28, 0x11, b"US", b"\0\4"))
    )
    body += element(0x7FE0, 0x10, b"OW", b"\0\1" * 8, order=">", length=0xFFFFFFFF)
    header = element(2, 0, b"UL", struct.pack("<I", len(meta)), order="<")
    path.write_bytes(b"\0" * 128 + b"DICM" + header + meta + body)
    return path


def with_bad_marker(source: Path, path: Path, marker: bytes, *, after: bytes = b"\xff\xd8") -> Path:
    """``source`` with its first ``marker`` after ``after`` replaced by the reserved JPEG marker 0xFF02."""
    data = source.read_bytes()
    at = data.index(marker, data.index(after))
    path.write_bytes(data[:at] + b"\xff\x02" + data[at + 2 :])
    return path


#: Malformed inputs, each made in a folder: (file name, how to make it).
MALFORMED: dict[str, Callable[[Path], Path]] = {
    "big-endian": lambda folder: big_endian_with_undefined_length(folder / "be_undefined.dcm"),
    "jpeg-picture": lambda folder: with_bad_marker(
        shared_file("images/derived_cr_chest_rg1_windowed_8bit.jpg"), folder / "bad_marker.jpg", b"\xff\xc0"
    ),
    "jpeg-in-dicom": lambda folder: with_bad_marker(
        shared_file("dicom/xray/cr_chest_pa_siim_mono2_8bit_jpegbaseline.dcm"), folder / "bad_sof.dcm", b"\xff\xc0"
    ),
    "png-named-dcm": lambda folder: shutil.copy(
        shared_file("dicom/malformed/derived_png_named_dcm.dcm"), folder / "png_named.dcm"
    ),
}


def refusals(stderr: str) -> list[str]:
    """The lines in which ``process`` names a file it refused."""
    # (GDCM's bundled libjpeg may print its own line straight to the file descriptor, as "Unsupported
    # marker type 0x02": not ours to word.)
    return [line for line in not_log_records(stderr) if line.startswith("miemss-node:")]


def test_process_names_a_malformed_file_and_its_reason_on_one_line_and_exits_2(tmp_path: Path) -> None:
    """Issue 13 row 10: no traceback, and no exit 0 with nothing written; a file, then a folder of them."""
    single = MALFORMED["big-endian"](tmp_path)
    done = subprocess.run([*CLI, "process", "--input", str(single), "--output", str(tmp_path / "one")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    (line,) = refusals(done.stderr)
    assert line.startswith(f"miemss-node: {single}: ") and "no readable dataset" in line
    assert "Traceback" not in done.stderr and done.stdout == ""

    folder = tmp_path / "in"
    folder.mkdir()
    made = [Path(make(folder)) for make in MALFORMED.values()]
    out = tmp_path / "out"
    done = subprocess.run([*CLI, "process", "--input", str(folder), "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = refusals(done.stderr)
    assert sorted(line.split(": ", 2)[1] for line in lines) == sorted(str(path) for path in made), done.stderr
    assert all(len(line.split(": ", 2)[2]) > 10 for line in lines)  # each with its reason
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not list(out.rglob("*.dcm"))


def test_process_of_a_folder_exits_0_when_something_was_processed(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_file("images/nih_00000001_000_512_txv.png"), folder / "good.png")
    bad = big_endian_with_undefined_length(folder / "bad.dcm")
    done = subprocess.run([*CLI, "process", "--input", str(folder), "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = refusals(done.stderr)
    assert line.startswith(f"miemss-node: {bad}: ")
    assert "good.png: " in done.stdout and (tmp_path / "out" / "good" / "overlay.png").exists()


def test_dcmtk_storescu_to_serve_and_storescp_as_pacs(tmp_path: Path) -> None:
    storescu, storescp, dsr2html = (tool(name, "dcmtk") for name in ("storescu", "storescp", "dsr2html"))
    pacs_port, port = free_port(), free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        f"[node]\nport={port}\nstorage_dir='store'\n[study]\nsettle_seconds=0.5\n"
        f"[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport={pacs_port}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "TCP_NODELAY": "1"}
    pacs = subprocess.Popen([storescp, "-aet", "PACS", "-od", str(received), "--fork", str(pacs_port)], env=env)
    node = subprocess.Popen([*CLI, "serve", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=node)
        source = shared_file("dicom/xray/dx_thorax_canine_fuji_mono1_8bit.dcm")
        sent = subprocess.run(
            [storescu, "-aet", "MODALITY", "-aec", "MIEMSS", "127.0.0.1", str(port), str(source)], env=env
        )
        assert sent.returncode == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(received.iterdir())) < 2:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        pacs.terminate()
        pacs.wait(timeout=10)
    files = sorted(received.iterdir())
    prefixes = {p.name[:2] for p in files}
    assert {"SR", "SC"} <= prefixes, files
    sr = next(p for p in files if p.name.startswith("SR"))
    html = subprocess.run([dsr2html, str(sr)], capture_output=True, text=True, check=True).stdout
    assert "anomalous region" in html


def test_check_config_lists_an_unusable_storage_folder_and_no_destinations_and_serve_stops_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Issue 13 row 8: both problems reported at once by check-config; serve exits 2 with the same list."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[node]\nport = {port}\nstorage_dir = '/proc/nope'\n", encoding="utf-8")
    for command in ("check-config", "serve"):
        done = subprocess.run([*CLI, command, "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "ok" not in done.stdout
        assert "invalid configuration (2 problem(s))" in done.stderr
        assert "[node] storage_dir /proc/nope: cannot write in /proc" in done.stderr
        assert "no [[destinations]]" in done.stderr


def test_serve_on_a_port_in_use_says_so_without_a_traceback(tmp_path: Path) -> None:
    pacs = PacsScp()
    config = tmp_path / "config.toml"
    config.write_text(
        f"[node]\nport = {pacs.port}\nstorage_dir = 'store'\n[worker]\ncount = 0\n"
        f"[[destinations]]\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = {pacs.port}\n",
        encoding="utf-8",
    )
    try:
        done = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    finally:
        pacs.stop()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"[node] cannot listen on 127.0.0.1:{pacs.port} (Address already in use)" in done.stderr


def test_read_only_commands_create_and_migrate_nothing(tmp_path: Path) -> None:
    """``jobs`` and ``conformance`` only read: no database appears, and an old schema stays as it is."""
    config = tmp_path / "config.toml"
    config.write_text("[node]\nstorage_dir = 'store'\n", encoding="utf-8")
    jobs = subprocess.run([*CLI, "jobs", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert jobs.returncode == 1 and "no database at" in jobs.stderr and "serve" in jobs.stderr
    conformance = subprocess.run([*CLI, "conformance", "--config", str(config)], capture_output=True, text=True)
    assert conformance.returncode == 0 and "Conformance" in conformance.stdout
    assert not (tmp_path / "store").exists()

    from alembic import command
    from sqlalchemy import create_engine, text

    from miemss_node.queue.migrate import alembic_config

    (tmp_path / "store").mkdir()
    engine = create_engine(f"sqlite:///{tmp_path / 'store' / 'miemss.db'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
    jobs = subprocess.run([*CLI, "jobs", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert jobs.returncode == 1 and "schema is at revision 0001" in jobs.stderr
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
    engine.dispose()
