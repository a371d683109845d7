"""Broken and hostile input: failure statuses or stored-and-skipped, never a crash or a hang."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pynetdicom import _config
from sqlalchemy import select

from miemss_node.config import Config
from miemss_node.node import Node
from miemss_node.queue.models import Instance, Job, JobEvent, JobState
from miemss_node.receive.handlers import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_CONFLICTING_INSTANCE,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_SUCCESS,
)
from tests.support.fuzzing import mutate, node_is_serving, send_raw
from tests.support.paths import SHARED_DATA
from tests.support.peers import store_files

#: What a receiver may answer to broken input: stored (then skipped by the worker) or refused; a
#: mutant of an instance already stored keeps its SOP Instance UID with other bytes: a conflict.
ACCEPTABLE = {
    STATUS_SUCCESS,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_CONFLICTING_INSTANCE,
}
#: pynetdicom's answer when our handler raised: a defect of ours.
STATUS_HANDLER_CRASHED = 0xC211


@pytest.fixture
def raw_sending(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Send files as their bytes, without decoding them first (as a broken modality would)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


def malformed_files() -> list[Path]:
    folder = SHARED_DATA / "dicom" / "malformed"
    return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


@pytest.mark.skipif(not malformed_files(), reason="shared test data not available")
def test_malformed_corpus_is_refused_or_stored_and_skipped(
    raw_sending: None, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    node = node_factory(config_factory(settle_seconds=0.3))
    outcomes = {path.name: send_raw(path, node.port) for path in malformed_files()}
    for name, status in outcomes.items():
        assert status is None or status in ACCEPTABLE, f"{name}: 0x{status:04X}"
    assert node_is_serving(node.port)
    assert store_files([Path(get_testdata_file("CT_small.dcm"))], node.port) == [STATUS_SUCCESS]
    stored = sum(status == STATUS_SUCCESS for status in outcomes.values())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with node.sessions() as session:
            jobs = session.scalars(select(Job)).all()
            states = [job.state for job in jobs]
        if len(jobs) >= 1 and all(state in (JobState.DELIVERED, JobState.FAILED) for state in states):
            break
        time.sleep(0.2)
    with node.sessions() as session:
        instances = session.scalar(select(Instance.id).order_by(Instance.id.desc()).limit(1))
        notes = " ".join(event.detail or "" for event in session.scalars(select(JobEvent)))
    assert instances is not None and stored >= 1
    assert all(state is JobState.DELIVERED for state in states), notes
    assert "not processed" in notes or "no processable image" in notes
    assert not list(node.config.node.storage_dir.rglob("*.part"))


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    from miemss_node.config import load_config

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "config.toml").write_text("[node]\nport = 0\nstorage_dir = 'storage'\n[worker]\ncount = 0\n")
    node = Node(load_config(folder / "config.toml", environ={}))
    node.start()
    yield node
    node.stop()


SOURCE = Path(get_testdata_file("CT_small.dcm"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.one_of(st.none(), st.integers(min_value=200, max_value=len(SOURCE.read_bytes()) - 1)),
    flips=st.lists(st.integers(min_value=200, max_value=len(SOURCE.read_bytes()) * 8 - 1), max_size=8),
)
def test_truncations_and_bit_flips_never_crash_the_receiver(
    fuzz_node: Node, raw_sending: None, tmp_path_factory: pytest.TempPathFactory, cut: int | None, flips: list[int]
) -> None:
    path = tmp_path_factory.mktemp("case") / "mutant.dcm"
    path.write_bytes(mutate(SOURCE.read_bytes(), cut=cut, flips=flips))
    status = send_raw(path, fuzz_node.port)
    assert status != STATUS_HANDLER_CRASHED
    assert status is None or status in ACCEPTABLE or status == -1
    assert node_is_serving(fuzz_node.port)
