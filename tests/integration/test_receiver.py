"""The Storage SCP over loopback: persisted before Success, idempotent, refusals with statuses."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.config import NodeSettings
from miemss_node.errors import StorageError
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.queue.models import Instance, Study
from miemss_node.receive.handlers import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
    InstanceStore,
    RejectedInstance,
)
from miemss_node.receive.scp import start_receiver
from tests.support.paths import shared_file
from tests.support.peers import store_datasets, store_files


@dataclass
class Receiver:
    port: int
    storage: Path
    sessions: sessionmaker[Session]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    storage = tmp_path / "storage"
    sessions = session_factory(create_database_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    server = start_receiver(NodeSettings(port=0, allowed_calling_aets=("MODALITY",)), InstanceStore(storage, sessions))
    yield Receiver(port=int(server.server_address[1]), storage=storage, sessions=sessions)
    server.shutdown()


def stored_uids(receiver: Receiver) -> list[str]:
    with receiver.sessions() as session:
        return list(session.scalars(select(Instance.sop_instance_uid)))


def test_echo_answers_success(receiver: Receiver) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MIEMSS")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == STATUS_SUCCESS
    assoc.release()


def test_instance_is_on_disk_byte_for_byte_and_recorded(receiver: Receiver) -> None:
    source = Path(get_testdata_file("JPEG2000.dcm"))  # stored as received: still JPEG 2000
    assert store_files([source], receiver.port) == [STATUS_SUCCESS]
    original = dcmread(source)
    with receiver.sessions() as session:
        instance = session.scalars(select(Instance)).one()
        study = session.scalars(select(Study)).one()
    assert instance.sop_instance_uid == original.SOPInstanceUID
    assert study.study_instance_uid == original.StudyInstanceUID and study.unsettled
    on_disk = dcmread(receiver.storage / instance.path)
    assert on_disk.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert on_disk.PixelData == original.PixelData
    assert not list(receiver.storage.rglob("*.part"))


def test_duplicate_is_idempotent(receiver: Receiver) -> None:
    source = Path(get_testdata_file("CT_small.dcm"))
    assert store_files([source, source], receiver.port) == [STATUS_SUCCESS, STATUS_SUCCESS]
    assert stored_uids(receiver) == [dcmread(source).SOPInstanceUID]


def test_study_of_three_series_is_one_study(receiver: Receiver) -> None:
    paths = sorted(shared_file("dicom/xray/study_cr_cspine_16x16").glob("*.dcm"))
    assert store_files(paths, receiver.port) == [STATUS_SUCCESS] * 3
    with receiver.sessions() as session:
        study = session.scalars(select(Study)).one()
        series = {instance.series_instance_uid for instance in study.instances}
    assert len(study.instances) == 3 and len(series) == 3


def test_missing_study_uid_is_refused_with_cannot_understand(receiver: Receiver) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    assert store_datasets([ds], receiver.port) == [STATUS_CANNOT_UNDERSTAND]
    assert stored_uids(receiver) == []


def test_hostile_uid_never_becomes_a_path(receiver: Receiver) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom rightly warns about the invalid UID
        ds.SeriesInstanceUID = "../../../../tmp/evil"
    assert store_datasets([ds], receiver.port) == [STATUS_CANNOT_UNDERSTAND]
    assert not list(receiver.storage.rglob("*.dcm"))


def test_dataset_not_matching_the_request_is_refused(receiver: Receiver) -> None:
    store = InstanceStore(receiver.storage, receiver.sessions)
    encoded = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    with pytest.raises(RejectedInstance, match="differ from the C-STORE request") as caught:
        store.persist_bytes(
            encoded,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid="1.2.3.4",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_aet="MODALITY",
        )
    assert caught.value.status == STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert stored_uids(receiver) == []


def test_unwritable_storage_answers_out_of_resources_and_records_nothing(receiver: Receiver) -> None:
    if os.geteuid() == 0:
        # root ignores permissions: make the study folder a file so mkdir fails instead.
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        receiver.storage.joinpath("instances").mkdir(parents=True)
        receiver.storage.joinpath("instances", ds.StudyInstanceUID).write_bytes(b"")
    else:
        receiver.storage.mkdir(parents=True)
        receiver.storage.chmod(0o500)
    assert store_files([Path(get_testdata_file("CT_small.dcm"))], receiver.port) == [STATUS_OUT_OF_RESOURCES]
    assert stored_uids(receiver) == []


def test_database_failure_answers_out_of_resources(receiver: Receiver, tmp_path: Path) -> None:
    with receiver.sessions.begin() as session:
        session.execute(Instance.__table__.delete())
    receiver.sessions.kw["bind"].dispose()
    (tmp_path / "node.db").unlink()
    (tmp_path / "node.db").mkdir()  # the database file is now a folder: every connection fails
    assert store_files([Path(get_testdata_file("CT_small.dcm"))], receiver.port) == [STATUS_OUT_OF_RESOURCES]


def test_unknown_calling_ae_is_rejected(receiver: Receiver) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MIEMSS")
    assert assoc.is_rejected


def persist_with_limits(receiver: Receiver, **limits: int) -> None:
    store = InstanceStore(receiver.storage, receiver.sessions, **limits)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    store.persist_bytes(
        Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        calling_aet="MODALITY",
    )


def test_low_free_disk_is_out_of_resources(receiver: Receiver) -> None:
    with pytest.raises(StorageError, match="storage disk full"):
        persist_with_limits(receiver, min_free_bytes=2**62)
    assert stored_uids(receiver) == []


def test_oversized_instance_is_refused_for_good(receiver: Receiver) -> None:
    with pytest.raises(RejectedInstance, match="exceeds max_instance_mb") as caught:
        persist_with_limits(receiver, max_instance_bytes=1000)
    assert caught.value.status == STATUS_TOO_LARGE
    assert stored_uids(receiver) == []


def test_failure_status_carries_an_error_comment(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    sessions = session_factory(create_database_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    server = start_receiver(NodeSettings(port=0), InstanceStore(storage, sessions, max_instance_bytes=1000))
    try:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", int(server.server_address[1]), ae_title="MIEMSS")
        response = assoc.send_c_store(ds)
        assoc.release()
    finally:
        server.shutdown()
    assert response.Status == STATUS_TOO_LARGE
    assert "exceeds max_instance_mb" in response.ErrorComment
