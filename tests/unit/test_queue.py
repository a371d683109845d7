"""The job queue on a real SQLite database: settling, claiming, leases, retries, deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.queue import repository
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.queue.models import DeliveryState, Job, JobState
from miemss_node.queue.retry import RetryDecision, RetryPolicy
from tests.support.databases import database_url

T0 = datetime(2026, 1, 1, 12, 0, 0)
NO_JITTER = RetryPolicy(max_attempts=3, backoff_seconds=10, jitter=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_url(request.param, tmp_path) as url:
        engine = create_database_engine(url)
        yield session_factory(engine)
        engine.dispose()


def receive(sessions: sessionmaker[Session], sop: str, at: datetime, study: str = "1.2.3") -> None:
    record = repository.InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"instances/{sop}.dcm",
        size_bytes=10,
        calling_ae_title="MOD",
    )
    with sessions.begin() as session:
        repository.record_instance(session, record, at)


def settle(sessions: sessionmaker[Session], at: datetime, reprocess: bool = True) -> list[int]:
    with sessions.begin() as session:
        jobs = repository.settle_due_studies(
            session, now=at, settle_seconds=10, max_attempts=3, reprocess_late_instances=reprocess
        )
        return [job.version for job in jobs]


def claim(sessions: sessionmaker[Session], owner: str, at: datetime, lease: float = 30) -> int | None:
    with sessions.begin() as session:
        job = repository.claim_job(session, owner=owner, lease_seconds=lease, now=at)
        return None if job is None else job.id


def test_study_settles_once_after_quiet_period(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    receive(sessions, "1.2.3.1.2", T0 + timedelta(seconds=5))
    assert settle(sessions, T0 + timedelta(seconds=12)) == []
    assert settle(sessions, T0 + timedelta(seconds=15)) == [1]
    assert settle(sessions, T0 + timedelta(seconds=60)) == []


def test_late_instance_joins_the_queued_job(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    assert settle(sessions, T0 + timedelta(seconds=11)) == [1]
    receive(sessions, "1.2.3.1.2", T0 + timedelta(seconds=20))
    assert settle(sessions, T0 + timedelta(seconds=31)) == []


def test_late_instance_after_the_job_ran_starts_a_new_version(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    assert claim(sessions, "w1", T0 + timedelta(seconds=12)) is not None
    receive(sessions, "1.2.3.1.2", T0 + timedelta(seconds=20))
    assert settle(sessions, T0 + timedelta(seconds=31)) == [2]


def test_late_instance_is_not_reprocessed_when_disabled(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11), reprocess=False)
    claim(sessions, "w1", T0 + timedelta(seconds=12))
    receive(sessions, "1.2.3.1.2", T0 + timedelta(seconds=20))
    assert settle(sessions, T0 + timedelta(seconds=31), reprocess=False) == []


def test_a_job_is_claimed_by_one_worker_only(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    first = claim(sessions, "w1", T0 + timedelta(seconds=12))
    assert first is not None
    assert claim(sessions, "w2", T0 + timedelta(seconds=12)) is None


def test_expired_lease_runs_the_job_again_then_fails_it(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    at = T0 + timedelta(seconds=12)
    for attempt in range(1, 4):
        job_id = claim(sessions, f"w{attempt}", at)
        assert job_id is not None
        at += timedelta(seconds=31)
        with sessions.begin() as session:
            reclaimed = repository.reclaim_expired_leases(session, now=at)
            assert [job.attempts for job in reclaimed] == [attempt]
            expected = JobState.FAILED if attempt == 3 else JobState.QUEUED
            assert reclaimed[0].state == expected
    assert claim(sessions, "w4", at) is None


def test_lease_renewal_keeps_the_job(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    job_id = claim(sessions, "w1", T0 + timedelta(seconds=12))
    assert job_id is not None
    with sessions.begin() as session:
        assert repository.renew_lease(session, job_id=job_id, owner="w1", lease_seconds=30, now=T0 + timedelta(seconds=40))
        assert not repository.renew_lease(session, job_id=job_id, owner="w2", lease_seconds=30, now=T0 + timedelta(seconds=40))
    with sessions.begin() as session:
        assert repository.reclaim_expired_leases(session, now=T0 + timedelta(seconds=50)) == []


def test_failure_backs_off_then_fails_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    at = T0 + timedelta(seconds=12)
    states = []
    for _ in range(3):
        job_id = claim(sessions, "w1", at)
        assert job_id is not None
        with sessions.begin() as session:
            state = repository.fail_job(
                session, job_id=job_id, owner="w1", error="boom", decision=RetryDecision.RETRY, delay_seconds=10, now=at
            )
        states.append(state)
        assert claim(sessions, "w1", at + timedelta(seconds=1)) is None  # backoff holds it
        at += timedelta(seconds=100)
    assert states == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    with sessions() as session:
        job, _study = repository.list_jobs(session)[0]
        assert job.last_error == "boom"
    with sessions.begin() as session:
        assert repository.requeue_job(session, job_id=job.id, now=at) is not None
    assert claim(sessions, "w1", at) == job.id


def encoded_job(sessions: sessionmaker[Session], destinations: list[str]) -> int:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    job_id = claim(sessions, "w1", T0 + timedelta(seconds=12))
    assert job_id is not None
    result = repository.ResultRecord(kind="SR", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", sop_instance_uid="2.25.1", path="r/sr.dcm")
    with sessions.begin() as session:
        assert repository.finish_job_encoded(
            session, job_id=job_id, owner="w1", results=[result], destinations=destinations, now=T0 + timedelta(seconds=13)
        )
    return job_id


def test_deliveries_decide_the_job_state(sessions: sessionmaker[Session]) -> None:
    job_id = encoded_job(sessions, ["a", "b"])
    at = T0 + timedelta(seconds=20)
    with sessions.begin() as session:
        due = repository.claim_due_deliveries(session, owner="s1", lease_seconds=60, now=at)
        ids = {d.destination: d.id for d in due}
    with sessions.begin() as session:
        assert repository.claim_due_deliveries(session, owner="s2", lease_seconds=60, now=at) == []  # held while sending
    with sessions.begin() as session:
        repository.record_delivery_outcome(session, delivery_id=ids["a"], delivered=True, retry_at=None, status=0, error=None, now=at)
        state = repository.record_delivery_outcome(
            session, delivery_id=ids["b"], delivered=False, retry_at=at + timedelta(seconds=5), status=None, error="down", now=at
        )
        assert state == DeliveryState.PENDING
    with sessions() as session:
        assert session.get_one(Job, job_id).state == JobState.ENCODED
    with sessions.begin() as session:
        due = repository.claim_due_deliveries(session, owner="s1", lease_seconds=60, now=at + timedelta(seconds=6))
        assert [d.destination for d in due] == ["b"]
        repository.record_delivery_outcome(session, delivery_id=ids["b"], delivered=False, retry_at=None, status=0xC000, error="refused", now=at)
    with sessions() as session:
        assert session.get_one(Job, job_id).state == JobState.FAILED
    with sessions.begin() as session:
        assert repository.reset_deliveries(session, study_instance_uid="1.2.3", destination="b", now=at) == 1
    with sessions.begin() as session:
        due = repository.claim_due_deliveries(session, owner="s1", lease_seconds=60, now=at)
        repository.record_delivery_outcome(session, delivery_id=due[0].id, delivered=True, retry_at=None, status=0, error=None, now=at)
    with sessions() as session:
        assert session.get_one(Job, job_id).state == JobState.DELIVERED


def test_waiting_for_a_resource_does_not_use_up_attempts(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "1.2.3.1.1", T0)
    settle(sessions, T0 + timedelta(seconds=11))
    at = T0 + timedelta(seconds=12)
    for _ in range(5):  # more waits than max_attempts (3)
        job_id = claim(sessions, "w1", at)
        assert job_id is not None
        with sessions.begin() as session:
            state = repository.fail_job(
                session, job_id=job_id, owner="w1", error="disk full", decision=RetryDecision.WAIT, delay_seconds=10, now=at
            )
        assert state is JobState.QUEUED
        assert claim(sessions, "w1", at + timedelta(seconds=1)) is None  # backoff holds it
        at += timedelta(seconds=11)
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.attempts, job.last_error) == (JobState.QUEUED, 0, "disk full")
    job_id = claim(sessions, "w1", at)
    with sessions.begin() as session:  # a permanent error gives up at once, attempts left or not
        state = repository.fail_job(
            session, job_id=job_id, owner="w1", error="EncodeError", decision=RetryDecision.GIVE_UP, delay_seconds=10, now=at
        )
    assert state is JobState.FAILED


def test_a_delivery_lease_is_renewed_while_sending_and_progress_is_kept(sessions: sessionmaker[Session]) -> None:
    job_id = encoded_job(sessions, ["a"])
    at = T0 + timedelta(seconds=20)
    with sessions.begin() as session:
        (delivery,) = repository.claim_due_deliveries(session, owner="s1", lease_seconds=10, now=at, destination="a")
        (result,) = repository.unsent_results(session, delivery)
    for seconds in (8, 16, 24):  # renewed every 8 s: never free for another sender, long after 10 s
        with sessions.begin() as session:
            assert repository.renew_delivery_lease(
                session, delivery_id=delivery.id, owner="s1", lease_seconds=10, now=at + timedelta(seconds=seconds)
            )
            assert repository.claim_due_deliveries(
                session, owner="s2", lease_seconds=10, now=at + timedelta(seconds=seconds + 1)
            ) == []
    with sessions.begin() as session:
        assert repository.record_object_sent(session, delivery_id=delivery.id, result_id=result.id, owner="s1", now=at)
        assert not repository.record_object_sent(session, delivery_id=delivery.id, result_id=result.id, owner="s2", now=at)
    later = at + timedelta(seconds=60)  # s1 died: its lease expired; s2 takes over and skips what was sent
    with sessions.begin() as session:
        (taken,) = repository.claim_due_deliveries(session, owner="s2", lease_seconds=10, now=later)
        assert repository.unsent_results(session, taken) == []
        assert not repository.renew_delivery_lease(session, delivery_id=delivery.id, owner="s1", lease_seconds=10, now=later)
        assert repository.record_delivery_outcome(
            session, delivery_id=delivery.id, delivered=True, retry_at=None, status=0, error=None, now=later, owner="s1"
        ) is None  # the old owner records nothing
        assert repository.record_delivery_outcome(
            session, delivery_id=delivery.id, delivered=True, retry_at=None, status=0, error=None, now=later, owner="s2"
        ) is DeliveryState.DELIVERED
    with sessions.begin() as session:  # an operator's resend sends everything again
        assert repository.reset_deliveries(session, study_instance_uid="1.2.3", destination=None, now=later) == 1
        (again,) = repository.claim_due_deliveries(session, owner="s3", lease_seconds=10, now=later)
        assert [r.id for r in repository.unsent_results(session, again)] == [result.id]
    with sessions() as session:
        assert session.get_one(Job, job_id).state == JobState.ENCODED


def test_retry_policy_classifies_errors() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_seconds=1, permanent=(KeyError,), waiting=(MemoryError,))
    assert policy.decide(OSError("down"), 1) is RetryDecision.RETRY
    assert policy.decide(OSError("down"), 3) is RetryDecision.GIVE_UP
    assert policy.decide(KeyError("x"), 1) is RetryDecision.GIVE_UP
    assert policy.decide(MemoryError(), 99) is RetryDecision.WAIT


def test_retry_policy_backs_off_exponentially_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_seconds=10, max_backoff_seconds=35)
    assert [NO_JITTER.delay(n) for n in (1, 2, 3)] == [10, 20, 40]
    for attempts, ceiling in ((1, 10), (2, 20), (3, 35), (4, 35)):
        assert ceiling / 2 <= policy.delay(attempts) <= ceiling
    assert policy.should_retry(3) and not policy.should_retry(4)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0, backoff_seconds=1)


def test_migrations_match_the_models(sessions: sessionmaker[Session]) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from miemss_node.queue.models import Base

    engine = sessions.kw["bind"]
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_retention_deletes_only_delivered_studies(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    from miemss_node.retention import Janitor

    old = datetime(2020, 1, 1)
    for study in ("1.2.3", "1.2.4"):
        receive(sessions, f"{study}.1.1", old, study=study)
        (tmp_path / "instances" / study).mkdir(parents=True)
    settle(sessions, old + timedelta(seconds=11))
    delivered = claim(sessions, "w1", old + timedelta(seconds=12))
    with sessions.begin() as session:
        repository.finish_job_encoded(session, job_id=delivered, owner="w1", results=[], destinations=[], now=old)
    janitor = Janitor(sessions, tmp_path, retention_days=30)
    assert janitor.run_once() == 1  # the other study's job is still queued: kept
    assert not (tmp_path / "instances" / "1.2.3").exists() and (tmp_path / "instances" / "1.2.4").exists()
    with sessions() as session:
        assert [uid for _job, uid in repository.list_jobs(session)] == ["1.2.4"]
    assert Janitor(sessions, tmp_path, retention_days=0).run_once() == 0


def test_the_settler_pauses_until_the_next_study_is_due(sessions: sessionmaker[Session]) -> None:
    from miemss_node.clock import utcnow
    from miemss_node.config import StudySettings, WorkerSettings
    from miemss_node.settle import MIN_PAUSE_SECONDS, Settler

    settler = Settler(sessions, StudySettings(settle_seconds=2.0), WorkerSettings())
    assert settler.poll_seconds == 0.5
    assert settler.idle_seconds() == 0.5  # nothing received: the usual poll
    receive(sessions, "1.2.3.1.1", utcnow() - timedelta(seconds=1.8))
    assert 0.05 < settler.idle_seconds() <= 0.2  # due in 0.2 s: no later than that
    receive(sessions, "1.2.4.1.1", utcnow() - timedelta(seconds=30), study="1.2.4")
    assert settler.idle_seconds() == MIN_PAUSE_SECONDS  # overdue: the next pass takes it
    assert settler.run_once() == 1  # the overdue one; the other is not due yet
    assert MIN_PAUSE_SECONDS <= settler.idle_seconds() <= 0.2
