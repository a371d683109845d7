"""The command line in a subprocess, as an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.dciodvfy import dciodvfy_errors
from tests.support.paths import shared_file, wg04_chest_cr
from tests.support.net import free_port, wait_for_port
from tests.support.peers import PacsScp, store_files

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


def test_process_refuses_a_non_image_with_a_reason(tmp_path: Path) -> None:
    source = shared_file("dicom/malformed/derived_png_named_dcm.dcm")
    done = subprocess.run([*CLI, "process", "--input", str(source), "--output", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "refused" in done.stdout


def test_dcmtk_storescu_to_serve_and_storescp_as_pacs(tmp_path: Path) -> None:
    if not shutil.which("storescu"):
        pytest.fail("dcmtk is not installed: apt-get install dcmtk")
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
    storescp = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(received), "--fork", str(pacs_port)], env=env)
    node = subprocess.Popen([*CLI, "serve", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=node)
        source = shared_file("dicom/xray/dx_thorax_canine_fuji_mono1_8bit.dcm")
        sent = subprocess.run(
            ["storescu", "-aet", "MODALITY", "-aec", "MIEMSS", "127.0.0.1", str(port), str(source)], env=env
        )
        assert sent.returncode == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(received.iterdir())) < 2:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        storescp.terminate()
        storescp.wait(timeout=10)
    files = sorted(received.iterdir())
    prefixes = {p.name[:2] for p in files}
    assert {"SR", "SC"} <= prefixes, files
    sr = next(p for p in files if p.name.startswith("SR"))
    html = subprocess.run(["dsr2html", str(sr)], capture_output=True, text=True, check=True).stdout
    assert "anomalous region" in html
