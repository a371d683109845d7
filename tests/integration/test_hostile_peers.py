"""A receiver no one can starve, fill or trick (issue 12): one test per attack, over loopback.

Each attack is made with real sockets against a running node (or its HTTP server); the disk-full
case runs on a small tmpfs. The race of two senders runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from miemss_node.cli import main
from miemss_node.config import Config, HttpSettings, TlsSettings
from miemss_node.node import Node
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.queue.models import Instance, ReceiveConflict, Study
from miemss_node.receive.handlers import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_CONFLICTING_INSTANCE,
    STATUS_CONFLICTING_PATIENT,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
)
from miemss_node.web.server import HttpServer
from tests.support.certificates import Certificates, make_certificates
from tests.support.databases import database_url
from tests.support.hostile import (
    CT_SMALL,
    closed_by_peer,
    connect,
    large_instance,
    rss_bytes,
    small_disk,
    store_each,
    variant,
)
from tests.support.peers import store_datasets

#: Short limits, so the attacks end within seconds.
FAST = {"network_timeout_seconds": 2.0, "acse_timeout_seconds": 2.0, "dimse_timeout_seconds": 10.0}


def start(config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], **node: object) -> Node:
    config = config_factory(node={**FAST, **node}, worker={"count": 0})
    return node_factory(config)


def echo(port: int, *, tls_args: tuple[ssl.SSLContext, str] | None = None, timeout: float = 5.0) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="MIEMSS", tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == STATUS_SUCCESS
    assoc.release()
    return bool(ok)


def stored_rows(node: Node) -> list[Instance]:
    with node.sessions() as session:
        return list(session.scalars(select(Instance)))


def incoming_files(node: Node) -> list[Path]:
    return [path for path in (node.config.node.storage_dir / ".incoming").rglob("*") if path.is_file()]


# -- 1. TCP connect to the TLS port, no handshake ---------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_silent_tls_connections_block_no_one_and_are_dropped(
    certs: Certificates, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    tls = TlsSettings(
        enabled=True, certificate=str(certs.server_cert), private_key=str(certs.server_key), ca_certificates=str(certs.ca)
    )
    config = config_factory(node=FAST, worker={"count": 0})
    node = node_factory(replace(config, tls=tls))
    client = ssl.create_default_context(cafile=str(certs.ca))
    idle = [connect(node.port) for _ in range(3)]  # connected, never a ClientHello
    try:
        started = time.monotonic()
        assert echo(node.port, tls_args=(client, "127.0.0.1"))
        assert time.monotonic() - started < 4.0  # not behind the silent handshakes
        assert all(closed_by_peer(sock, within=6.0) for sock in idle)  # handshake timeout: 2 s
    finally:
        for sock in idle:
            sock.close()


# -- 2. A-ASSOCIATE or P-DATA header, then silence -------------------------------------------


def test_half_sent_pdu_headers_are_dropped_after_the_network_timeout(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    node = start(config_factory, node_factory, max_associations=2)
    stalled = []
    for first_bytes in (b"\x01\x00\x00", b"\x04\x00\x00\x00\x01\x00", b"\x01"):
        sock = connect(node.port)
        sock.sendall(first_bytes)
        stalled.append(sock)
    try:
        assert all(closed_by_peer(sock, within=8.0) for sock in stalled)
        assert echo(node.port)  # every slot is free again
    finally:
        for sock in stalled:
            sock.close()


# -- 3. PDU header announcing 4 GiB, then data ------------------------------------------------


def test_pdu_longer_than_the_negotiated_maximum_aborts_with_memory_flat(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    node = start(config_factory, node_factory, max_pdu=16384)
    before = rss_bytes()
    sock = connect(node.port)
    chunk = b"\x00" * 2**20
    sent = 0
    answer = b""
    try:
        sock.sendall(struct.pack(">BBL", 0x04, 0, 2**32 - 1))
        while sent < 64 * 2**20:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the node stopped reading: what we want
    try:
        sock.settimeout(5)
        answer = sock.recv(10)
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    assert answer[:1] == b"\x07" and answer[-1:] == b"\x06"  # A-ABORT, invalid PDU parameter value
    assert sent < 32 * 2**20  # dropped long before the 64 MB were sent
    assert rss_bytes() - before < 16 * 2**20
    assert echo(node.port)


# -- 4. 20 MB instance, size limit and a nearly full disk -------------------------------------


def test_oversized_instance_is_refused_while_streaming_on_a_small_disk(
    tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    with small_disk(tmp_path / "disk", megabytes=8) as disk:
        config = config_factory(
            node={**FAST, "storage_dir": disk, "max_instance_mb": 3, "min_free_disk_mb": 1,
                  "database_url": f"sqlite:///{tmp_path / 'node.db'}"},
            worker={"count": 0},
        )
        node = node_factory(config)
        small = dcmread(CT_SMALL)
        too_large, fine = store_each([large_instance(20), small], node.port)
        assert too_large.Status == STATUS_TOO_LARGE and "max_instance_mb" in too_large.ErrorComment
        assert fine.Status == STATUS_SUCCESS  # the next instance, same association
        assert incoming_files(node) == []
        assert [row.sop_instance_uid for row in stored_rows(node)] == [small.SOPInstanceUID]


def test_full_disk_answers_out_of_resources_removes_the_partial_file_and_health_says_disk(
    tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    with small_disk(tmp_path / "disk", megabytes=8) as disk:
        http_port_config = HttpSettings(port=0)
        config = config_factory(
            node={**FAST, "storage_dir": disk, "max_instance_mb": 2048, "min_free_disk_mb": 1,
                  "database_url": f"sqlite:///{tmp_path / 'node.db'}"},
            worker={"count": 0},
        )
        node = node_factory(config)
        small = dcmread(CT_SMALL)
        full, fine = store_each([large_instance(20), small], node.port)
        assert full.Status == STATUS_OUT_OF_RESOURCES and "disk" in full.ErrorComment
        assert fine.Status == STATUS_SUCCESS
        assert incoming_files(node) == []
        config_path = tmp_path / "health.toml"
        config_path.write_text(
            f"[node]\nport = {node.port}\nstorage_dir = '{disk}'\nmin_free_disk_mb = 1\n"
            f"database_url = 'sqlite:///{tmp_path / 'node.db'}'\n",
            encoding="utf-8",
        )
        assert main(["healthcheck", "--config", str(config_path)]) == 0
        http = HttpServer(http_port_config, node.sessions, disk, lambda: None, disk_problem=node.disk_problem)
        http.start()
        try:
            assert http.health()[0] == 200
            filler = disk / "filler"
            with filler.open("wb") as handle:  # leave less than min_free_disk_mb
                try:
                    handle.write(b"\x00" * 8 * 2**20)
                except OSError:
                    pass
            status, body = http.health()
            assert status == 503 and body["disk"].startswith("disk:") and "min_free_disk_mb" in body["reason"]
            assert main(["healthcheck", "--config", str(config_path)]) == 1
            refused = store_each([variant(small, SOPInstanceUID=generate_uid())], node.port)[0]
            assert refused.Status == STATUS_OUT_OF_RESOURCES
        finally:
            http.stop()


# -- 5. Same SOP Instance UID, different content, two senders at once -------------------------


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_senders_of_one_uid_never_overwrite_each_other(
    kind: str, tmp_path: Path, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    with database_url(kind, tmp_path) as url:
        node = start(config_factory, node_factory, database_url=url, max_associations=4)
        base = dcmread(CT_SMALL)
        uids = [generate_uid() for _ in range(30)]
        versions = {
            sender: [variant(base, SOPInstanceUID=uid, PixelData=bytes([n]) * len(base.PixelData)) for uid in uids]
            for n, sender in ((1, "SENDER_A"), (2, "SENDER_B"))
        }
        for datasets in versions.values():
            for ds in datasets:
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        with ThreadPoolExecutor(max_workers=2) as pool:
            sent = pool.map(lambda s: store_datasets(versions[s], node.port, calling_aet=s), versions)
            results = dict(zip(versions, sent, strict=True))
        for index in range(len(uids)):
            answers = sorted(results[sender][index] for sender in versions)
            assert answers == [STATUS_SUCCESS, STATUS_CONFLICTING_INSTANCE]  # one winner per UID
        rows = stored_rows(node)
        assert len(rows) == len(uids)
        for row in rows:
            stored = dcmread(node.config.node.storage_dir / row.path)
            expected = 1 if row.calling_ae_title == "SENDER_A" else 2
            assert stored.PixelData[:1] == bytes([expected])  # the file is the row's sender's
        files = list((node.config.node.storage_dir / "instances").rglob("*.dcm"))
        assert len(files) == len(rows)  # no file without its row
        assert not list(node.config.node.storage_dir.rglob("*.part"))


# -- 6. The same SOP Instance UID again with other pixels, study or patient -------------------


@pytest.mark.parametrize(
    "change",
    [
        {"PixelData": b"\x07" * 32768},
        {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"},
        {"PatientID": "SOMEONE-ELSE"},
    ],
    ids=["pixels", "study", "patient"],
)
def test_a_different_copy_of_a_stored_instance_is_a_conflict(
    change: dict[str, object],
    config_factory: Callable[..., Config],
    node_factory: Callable[[Config], Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = start(config_factory, node_factory)
    original = dcmread(CT_SMALL)
    assert store_each([original, original], node.port)[1].Status == STATUS_SUCCESS  # a true duplicate
    stored_path = node.config.node.storage_dir / stored_rows(node)[0].path
    before = hashlib.sha256(stored_path.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="miemss_node"):
        answer = store_each([variant(original, **change)], node.port)[0]
    assert answer.Status == STATUS_CONFLICTING_INSTANCE and "other" in answer.ErrorComment
    assert hashlib.sha256(stored_path.read_bytes()).hexdigest() == before  # the stored copy is kept
    record = next(r for r in caplog.records if getattr(r, "action", "") == "receive.conflict")
    assert record.levelno == logging.WARNING
    assert record.sop_instance_uid == original.SOPInstanceUID  # type: ignore[attr-defined]
    assert str(original.PatientID) not in record.getMessage()
    with node.sessions() as session:
        assert session.scalars(select(ReceiveConflict.sop_instance_uid)).all() == [original.SOPInstanceUID]


# -- 7. One Study Instance UID, two Patient IDs ------------------------------------------------


def test_an_instance_of_another_patient_is_refused_from_the_study(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node], caplog: pytest.LogCaptureFixture
) -> None:
    config = config_factory(node=FAST, worker={"count": 0}, http={"port": 0})
    node = node_factory(config)
    first = dcmread(CT_SMALL)
    intruder = variant(first, SOPInstanceUID=generate_uid(), PatientID="OTHER-PATIENT")
    intruder.file_meta.MediaStorageSOPInstanceUID = intruder.SOPInstanceUID
    with caplog.at_level(logging.WARNING, logger="miemss_node"):
        answers = store_each([first, intruder], node.port)
    assert [a.Status for a in answers] == [STATUS_SUCCESS, STATUS_CONFLICTING_PATIENT]
    assert "Patient ID" in answers[1].ErrorComment
    assert [row.sop_instance_uid for row in stored_rows(node)] == [first.SOPInstanceUID]
    record = next(r for r in caplog.records if getattr(r, "action", "") == "receive.conflict")
    assert intruder.SOPInstanceUID in record.getMessage() and first.StudyInstanceUID in record.getMessage()
    assert "OTHER-PATIENT" not in record.getMessage()
    http = HttpServer(HttpSettings(port=0), node.sessions, node.config.node.storage_dir, lambda: None)
    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
        page = http.dashboard.study(session, study).decode()
        index = http.dashboard.index(session).decode()
    assert intruder.SOPInstanceUID in page and "Patient ID differs" in page
    assert "1 refused" in index


# -- 8. Study UID with a trailing newline -----------------------------------------------------


@pytest.mark.parametrize("raw_uid", [b"1.2.826.0.1.3680043.8.498.7\n", b"1.2.826.0.1.3680043.8.498.07", b"1.2 .3"])
def test_invalid_uids_are_refused_as_received(
    raw_uid: bytes, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    node = start(config_factory, node_factory)
    ds = dcmread(CT_SMALL)
    tag = Tag("StudyInstanceUID")
    padded = raw_uid + (b"\x00" if len(raw_uid) % 2 else b"")
    ds[tag] = RawDataElement(tag, "UI", len(padded), padded, 0, False, True)  # bytes as a sender wrote them
    answer = store_each([ds], node.port)[0]
    assert answer.Status == STATUS_CANNOT_UNDERSTAND and "StudyInstanceUID" in answer.ErrorComment
    assert stored_rows(node) == []


# -- 9. 50 slow HTTP connections --------------------------------------------------------------


def test_slow_http_clients_are_timed_out_capped_and_health_keeps_answering(tmp_path: Path) -> None:
    sessions = session_factory(create_database_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    server = HttpServer(
        HttpSettings(port=0, idle_timeout_seconds=2, max_connections=60), sessions, tmp_path, lambda: None
    )
    server.start()
    slow: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = connect(server.port)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the request never ends
            slow.append(sock)
        started = time.monotonic()
        assert http_get(server.port, "/healthz")[0] == 200
        assert time.monotonic() - started < 3.0
        assert all(closed_by_peer(sock, within=8.0) for sock in slow)  # idle timeout: 2 s
        big_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n"
        assert http_raw(server.port, big_header).split(b" ", 2)[1] == b"431"
        big_body = b"POST /deliveries/1/retry HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"t" * 100000
        assert http_raw(server.port, big_body).split(b" ", 2)[1] == b"413"
    finally:
        for sock in slow:
            sock.close()
        server.stop()


def test_http_connection_cap_holds_and_frees_after_the_idle_timeout(tmp_path: Path) -> None:
    sessions = session_factory(create_database_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    server = HttpServer(HttpSettings(port=0, idle_timeout_seconds=2, max_connections=5), sessions, tmp_path, lambda: None)
    server.start()
    idle = [connect(server.port) for _ in range(5)]
    try:
        time.sleep(0.5)
        answered: list[float] = []
        started = time.monotonic()
        thread = threading.Thread(target=lambda: answered.append(http_get(server.port, "/healthz", timeout=20)[0]))
        thread.start()
        thread.join(1.0)
        assert not answered  # the sixth connection waits: the cap holds
        thread.join(15.0)
        assert answered == [200] and time.monotonic() - started < 15.0  # served once the idle ones closed
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    reply = http_raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(), timeout)
    return int(reply.split(b" ", 2)[1]), reply


def http_raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with connect(port, timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
