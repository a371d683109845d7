"""The sender against a real Storage SCP: delivered, retried while down, refused and kept."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import Association
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import DeliverySettings, Destination
from miemss_node.encode import EncodeContext, encode_study
from miemss_node.queue import repository
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.queue.models import Delivery, DeliveryState, Job, JobState
from miemss_node.send import Sender, SendOutcome, classify_status, refuse_unconfigured_deliveries, send_files
from tests.conftest import pacs_destination
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.net import free_port, wait_for_port
from tests.support.peers import PacsScp
from tests.support.tools import tool

FAST = DeliverySettings(max_attempts=3, backoff_seconds=0.0, poll_seconds=0.1, timeout_seconds=5.0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, SendOutcome.RETRY),
        (0x0000, SendOutcome.DELIVERED),
        (0xB007, SendOutcome.DELIVERED),
        (0xA700, SendOutcome.RETRY),
        (0xA7FF, SendOutcome.RETRY),
        (0xA900, SendOutcome.REFUSED),
        (0xC000, SendOutcome.REFUSED),
        (0x0122, SendOutcome.REFUSED),
    ],
)
def test_status_classification(status: int | None, outcome: SendOutcome) -> None:
    assert classify_status(status) is outcome




def encoded_job(tmp_path: Path, destination: str) -> tuple[sessionmaker[Session], int]:
    """A job in state ENCODED with two real DICOM files as its results."""
    sessions = session_factory(create_database_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    now = utcnow()
    record = repository.InstanceRecord(
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2", transfer_syntax_uid="1.2.840.10008.1.2.1", path="x", size_bytes=1, calling_ae_title="M",
    )
    results = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        target = tmp_path / "results" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(get_testdata_file(name), target)
        results.append(repository.ResultRecord(kind="SC", sop_class_uid="1.2", sop_instance_uid=name, path=f"results/{name}"))
    with sessions.begin() as session:
        repository.record_instance(session, record, now - timedelta(seconds=60))
        repository.settle_due_studies(session, now=now, settle_seconds=1, max_attempts=1, reprocess_late_instances=True)
        job = repository.claim_job(session, owner="w", lease_seconds=60, now=now)
        assert job is not None
        repository.finish_job_encoded(session, job_id=job.id, owner="w", results=results, destinations=[destination], now=now)
        return sessions, job.id


def job_and_delivery(sessions: sessionmaker[Session], job_id: int) -> tuple[Job, Delivery]:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        return job, job.deliveries[0]


def test_results_are_delivered(tmp_path: Path, pacs: PacsScp) -> None:
    sessions, job_id = encoded_job(tmp_path, "pacs")
    sender = Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS")
    assert sender.run_once() == 1
    job, delivery = job_and_delivery(sessions, job_id)
    assert job.state is JobState.DELIVERED and delivery.state is DeliveryState.DELIVERED
    assert sorted(ds.Modality for ds in pacs.received) == ["CT", "MR"]


def test_objects_are_sent_with_nagles_algorithm_off(pacs: PacsScp, monkeypatch: pytest.MonkeyPatch) -> None:
    """With it on, the last small PDU of each C-STORE waits for the peer's delayed ACK (up to 40 ms)."""
    seen: list[int] = []
    send_c_store = Association.send_c_store

    def recording(assoc: Association, *args: Any, **kwargs: Any) -> Any:
        seen.append(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return send_c_store(assoc, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", recording)
    paths = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    report = send_files(paths, pacs_destination(pacs), calling_aet="MIEMSS", timeout_seconds=5.0)
    assert report.outcome is SendOutcome.DELIVERED
    assert len(seen) == 2 and all(seen)


@pytest.fixture(scope="module")
def fractional_seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SEG as the node writes it for a film of 1955 x 1841 pixels (pydicom-data's chest CR), two regions:
    FRACTIONAL, since 1-bit frames would not fill whole bytes, and so RLE Lossless."""
    source = read_source(Path(get_testdata_file("RG1_J2KI.dcm")))
    analyses = [make_analysis(source, n_regions=2)]
    context = EncodeContext(job_key="send/fractional-seg", kinds=frozenset({"SEG"}))
    (seg,) = [r for r in encode_study([source], analyses, make_report(analyses), context) if r.kind == "SEG"]
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.dataset.save_as(path, enforce_file_format=True)
    return path


def test_dcmtks_rle_decoder_reads_the_fractional_seg_as_written(fractional_seg: Path, tmp_path: Path) -> None:
    """An RLE decoder that is not the one the node decompresses with: dcmtk's ``dcmdrle``."""
    decoded = tmp_path / "decoded.dcm"
    subprocess.run([tool("dcmdrle", "dcmtk"), str(fractional_seg), str(decoded)], check=True, timeout=60)
    written = dcmread(fractional_seg)
    assert dcmread(decoded).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(dcmread(decoded).pixel_array, written.pixel_array) and written.pixel_array.any()


def test_a_fractional_seg_is_sent_rle_compressed_to_a_destination_that_accepts_it(
    pacs: PacsScp, fractional_seg: Path
) -> None:
    written = dcmread(fractional_seg)
    assert written.file_meta.TransferSyntaxUID == RLELossless and written.SegmentationType == "FRACTIONAL"
    report = send_files([fractional_seg], pacs_destination(pacs), calling_aet="MIEMSS", timeout_seconds=10.0)
    assert report.outcome is SendOutcome.DELIVERED
    (stored,) = pacs.received
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(stored.pixel_array, written.pixel_array) and written.pixel_array.any()


def test_a_destination_set_to_take_nothing_compressed_gets_the_seg_decompressed(
    pacs: PacsScp, fractional_seg: Path
) -> None:
    """``send_compressed = false``: for a PACS that accepts RLE but whose viewers do not show it."""
    destination = replace(pacs_destination(pacs), send_compressed=False)
    report = send_files([fractional_seg], destination, calling_aet="MIEMSS", timeout_seconds=10.0)
    assert report.outcome is SendOutcome.DELIVERED
    (stored,) = pacs.received
    written = dcmread(fractional_seg)
    assert stored.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert stored.SOPInstanceUID == written.SOPInstanceUID
    assert np.array_equal(stored.pixel_array, written.pixel_array) and written.pixel_array.any()


def test_a_destination_that_takes_no_rle_gets_the_seg_decompressed(tmp_path: Path, fractional_seg: Path) -> None:
    """dcmtk's storescp accepts only uncompressed transfer syntaxes unless told otherwise."""
    storescp = tool("storescp", "dcmtk")
    port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen([storescp, "-aet", "PACS", "-od", str(received), str(port)])
    try:
        wait_for_port(port, process=pacs)
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
        report = send_files([fractional_seg], destination, calling_aet="MIEMSS", timeout_seconds=10.0)
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    assert report.outcome is SendOutcome.DELIVERED
    (stored_file,) = received.iterdir()
    stored = dcmread(stored_file)
    assert stored.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    written = dcmread(fractional_seg)
    assert np.array_equal(stored.pixel_array, written.pixel_array) and written.pixel_array.any()
    assert stored.SOPInstanceUID == written.SOPInstanceUID


def test_destination_down_is_retried_until_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    sessions, job_id = encoded_job(tmp_path, "pacs")
    down = Destination(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=port)
    settings = DeliverySettings(max_attempts=5, backoff_seconds=0.0, poll_seconds=0.1, timeout_seconds=2.0)
    sender = Sender(sessions, tmp_path, down, settings, "MIEMSS")
    assert sender.run_once() == 1
    job, delivery = job_and_delivery(sessions, job_id)
    assert job.state is JobState.ENCODED and delivery.state is DeliveryState.PENDING and delivery.attempts == 1
    assert "association not established" in (delivery.last_error or "")
    pacs = PacsScp()
    try:
        up = Sender(sessions, tmp_path, Destination(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=pacs.port), settings, "MIEMSS")
        assert up.run_once() == 1
        assert job_and_delivery(sessions, job_id)[0].state is JobState.DELIVERED
        assert len(pacs.received) == 2
    finally:
        pacs.stop()


def test_out_of_resources_retries_then_gives_up_and_keeps_the_files(tmp_path: Path) -> None:
    pacs = PacsScp(status_for=lambda _ds: 0xA700)
    try:
        sessions, job_id = encoded_job(tmp_path, "pacs")
        sender = Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS")
        for _ in range(3):
            assert sender.run_once() == 1
        assert sender.run_once() == 0
        job, delivery = job_and_delivery(sessions, job_id)
        assert (job.state, delivery.state, delivery.attempts, delivery.last_status) == (
            JobState.FAILED, DeliveryState.FAILED, 3, 0xA700,
        )
        assert (tmp_path / "results" / "CT_small.dcm").exists()
    finally:
        pacs.stop()


def test_refusal_fails_at_once_and_resend_delivers(tmp_path: Path) -> None:
    refusing = True
    pacs = PacsScp(status_for=lambda _ds: 0xC000 if refusing else 0x0000)
    try:
        sessions, job_id = encoded_job(tmp_path, "pacs")
        sender = Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS")
        assert sender.run_once() == 1
        job, delivery = job_and_delivery(sessions, job_id)
        assert (job.state, delivery.state, delivery.attempts) == (JobState.FAILED, DeliveryState.FAILED, 1)
        refusing = False
        with sessions.begin() as session:
            assert repository.reset_deliveries(session, study_instance_uid="1.2.3", destination=None, now=utcnow()) == 1
        assert sender.run_once() == 1
        assert job_and_delivery(sessions, job_id)[0].state is JobState.DELIVERED
        assert len(pacs.received) == 2
    finally:
        pacs.stop()


def test_delivery_gives_up_after_its_maximum_age(tmp_path: Path) -> None:
    sessions, job_id = encoded_job(tmp_path, "pacs")
    with sessions.begin() as session:
        delivery = session.get_one(Job, job_id).deliveries[0]
        delivery.created_at = utcnow() - timedelta(hours=2)
    down = Destination(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=free_port())
    settings = DeliverySettings(max_attempts=50, backoff_seconds=0.0, timeout_seconds=2.0, max_age_hours=1.0)
    assert Sender(sessions, tmp_path, down, settings, "MIEMSS").run_once() == 1
    job, delivery = job_and_delivery(sessions, job_id)
    assert (job.state, delivery.state, delivery.attempts) == (JobState.FAILED, DeliveryState.FAILED, 1)
    assert "gave up after 1 h" in (delivery.last_error or "")


def test_an_unreadable_result_fails_the_delivery_with_its_cause_and_counts_the_attempt(tmp_path: Path, pacs: PacsScp) -> None:
    """Issue 13 row 6: an unexpected error (InvalidDicomError) ends the attempt; it is not retried forever."""
    sessions, job_id = encoded_job(tmp_path, "pacs")
    (tmp_path / "results" / "MR_small.dcm").write_bytes(b"not DICOM at all" * 10)
    sender = Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS")
    assert sender.run_once() == 1
    job, delivery = job_and_delivery(sessions, job_id)
    assert (job.state, delivery.state, delivery.attempts) == (JobState.FAILED, DeliveryState.FAILED, 1)
    assert "InvalidDicomError" in (delivery.last_error or "")
    assert sender.run_once() == 0  # failed for good: kept on disk for `resend`, never retried by itself
    assert pacs.received == []


def test_a_retry_sends_only_what_the_destination_has_not_acknowledged(tmp_path: Path) -> None:
    answers = iter([0x0000, 0xA700])  # the first object is stored, then the PACS runs out of resources once
    pacs = PacsScp(status_for=lambda _ds: next(answers, 0x0000))
    try:
        sessions, job_id = encoded_job(tmp_path, "pacs")
        sender = Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS")
        assert sender.run_once() == 1
        assert job_and_delivery(sessions, job_id)[1].state is DeliveryState.PENDING
        assert sender.run_once() == 1
        assert job_and_delivery(sessions, job_id)[0].state is JobState.DELIVERED
        assert pacs.attempts == 3 and sorted(ds.Modality for ds in pacs.received) == ["CT", "MR"]
    finally:
        pacs.stop()


def test_deliveries_to_a_destination_no_longer_configured_fail_and_name_it(tmp_path: Path, pacs: PacsScp) -> None:
    sessions, job_id = encoded_job(tmp_path, "gone")
    assert Sender(sessions, tmp_path, pacs_destination(pacs), FAST, "MIEMSS").run_once() == 0  # not its delivery
    assert refuse_unconfigured_deliveries(sessions, (pacs_destination(pacs),)) == 1
    job, delivery = job_and_delivery(sessions, job_id)
    assert (job.state, delivery.state) == (JobState.FAILED, DeliveryState.FAILED)
    assert "'gone' not configured" in (delivery.last_error or "")
