"""The worker's error boundary: any exception ends the attempt with its cause; a retry policy decides
what comes next; a full disk waits without using up attempts (issue 13, rows 4, 5 and 12)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from miemss_node import worker as worker_module
from miemss_node.config import Config
from miemss_node.errors import EncodeError
from miemss_node.logconfig import configure_logging
from miemss_node.node import Node
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.queue.models import JobState
from miemss_node.storage import free_bytes
from miemss_node.worker import Worker
from tests.support.jobs import job_of, wait_for_job
from tests.support.peers import store_datasets
from tests.support.studies import copies_as_new_study


@pytest.fixture
def queued(config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]) -> tuple[Node, Config, int]:
    """A node that receives and settles (no worker of its own) and the id of one queued job."""
    config = config_factory()
    config = replace(config, worker=replace(config.worker, count=0, max_attempts=2, retry_backoff_seconds=0.0))
    node = node_factory(config)
    assert store_datasets(copies_as_new_study(Path(get_testdata_file("CT_small.dcm")), 1), node.port) == [0x0000]
    return node, config, wait_for_job(node)


def test_a_full_disk_waits_without_using_up_attempts_and_the_job_resumes(queued: tuple[Node, Config, int]) -> None:
    """Row 4: below min_free_disk_mb the job waits (more times than max_attempts), then runs."""
    node, config, job_id = queued
    free_mb = free_bytes(config.node.storage_dir) // 2**20
    full = Worker(node.sessions, replace(config, node=replace(config.node, min_free_disk_mb=free_mb + 10**6)))
    for _ in range(config.worker.max_attempts + 2):
        assert full.run_once() == 1
        job = job_of(node, job_id)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
        assert "OutOfSpaceError" in (job.last_error or "") and "min_free_disk_mb" in (job.last_error or "")
    assert Worker(node.sessions, config).run_once() == 1
    job = job_of(node, job_id)
    assert job.state is JobState.DELIVERED and job.results  # no destination: encoded and done


def test_enospc_while_writing_results_waits_and_the_job_is_not_lost(
    queued: tuple[Node, Config, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, config, job_id = queued
    written = worker_module.write_atomically
    failures = iter([OSError(errno.ENOSPC, "No space left on device")])

    def disk_fills_once(target: Path, data: bytes) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        written(target, data)

    monkeypatch.setattr(worker_module, "write_atomically", disk_fills_once)
    worker = Worker(node.sessions, config)
    assert worker.run_once() == 1
    job = job_of(node, job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)  # waiting for room does not use up an attempt
    assert "OutOfSpaceError" in (job.last_error or "") and "No space left" in (job.last_error or "")
    assert worker.run_once() == 1
    assert job_of(node, job_id).state is JobState.DELIVERED


def test_any_exception_ends_the_attempt_with_its_cause(
    queued: tuple[Node, Config, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 5: a TypeError outside a stage does not escape and leave the job RUNNING; a bug is not retried."""
    node, config, job_id = queued

    def broken(*_args: object, **_kwargs: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(worker_module, "build_report", broken)
    assert Worker(node.sessions, config).run_once() == 1
    job = job_of(node, job_id)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.last_error == "TypeError: unsupported operand type(s) for +: 'int' and 'str'"


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (EncodeError("SR could not be built: bad code"), JobState.FAILED),  # fails the same way every time
        (ConnectionResetError("database connection reset"), JobState.QUEUED),  # may pass next time
    ],
    ids=["permanent", "transient"],
)
def test_the_retry_policy_says_which_errors_are_retried(
    queued: tuple[Node, Config, int], monkeypatch: pytest.MonkeyPatch, error: Exception, state: JobState
) -> None:
    node, config, job_id = queued

    def failing(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(worker_module, "encode_study", failing)
    assert Worker(node.sessions, config).run_once() == 1
    job = job_of(node, job_id)
    assert (job.state, job.attempts) == (state, 1)
    assert job.last_error == f"{type(error).__name__}: {error}"


@pytest.fixture
def configured_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The node's logging (as a worker process sets it up), with pytest still capturing the records."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("INFO")
    root.addHandler(caplog.handler)
    yield caplog
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_decoder_fallback_is_not_an_error_but_an_image_nothing_decodes_is(
    configured_logging: pytest.LogCaptureFixture, config_factory: Callable[..., Config]
) -> None:
    """Row 12: GDCM cannot read 12-bit JPEG Extended and pylibjpeg then can: no ERROR. An image that
    no decoder reads is logged at ERROR by the worker, naming its UID."""
    extended = dcmread(get_testdata_file("JPGExtended.dcm"))
    broken = dcmread(get_testdata_file("JPEG-lossy.dcm"))
    config = config_factory()
    config.node.storage_dir.mkdir(parents=True, exist_ok=True)
    instances = []
    for name, ds in (("extended.dcm", extended), ("broken.dcm", broken)):
        ds.save_as(config.node.storage_dir / name)
        instances.append((str(ds.SOPInstanceUID), name))
    engine = create_database_engine(config.database_url)
    work = Worker(session_factory(engine), config)._analyse(instances)
    engine.dispose()
    assert [str(ds.SOPInstanceUID) for ds in work.sources] == [str(extended.SOPInstanceUID)]
    errors = [record for record in configured_logging.records if record.levelno >= logging.ERROR]
    assert [(record.action, record.sop_instance_uid) for record in errors] == [  # type: ignore[attr-defined]
        ("job.instance_skipped", str(broken.SOPInstanceUID))
    ]
