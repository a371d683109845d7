"""The review loop's parts on their own: reviewers in the config, tokens, decisions from flags, the
held deliveries in the database, the analyses of a reviewed version, the audit log and feedback."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import examples
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.config import Reviewer, load_config
from miemss_node.errors import ConfigError, EncodeError, ReviewError
from miemss_node.queue import repository
from miemss_node.queue.models import Delivery, DeliveryState, Job, JobState
from miemss_node.review.audit import AuditLog, read_audit_log
from miemss_node.review.decide import choices_from_flags, decide
from miemss_node.review.feedback import (
    DecidedFinding,
    band_of,
    precision_rows,
    propose_threshold,
    wilson_interval,
)
from miemss_node.review.findings import finding_records, keep_accepted, review_statement
from miemss_node.review.reviewers import hash_token, new_token, reviewer_for_token
from tests.support.analysis_factory import make_analysis
from tests.unit.test_queue import T0, claim, receive, sessions, settle  # noqa: F401 - sessions is a fixture

TOKEN = "a-reviewer-token-0123456789"
DESTINATIONS = (
    "[[destinations]]\nname='plain'\nae_title='PLAIN'\nhost='127.0.0.1'\nport=12001\n"
    "[[destinations]]\nname='held'\nae_title='HELD'\nhost='127.0.0.1'\nport=12002\nreview=true\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def reviewer_table(name: str = "jsmith", person: str = "Smith^Jane", digest: str | None = None) -> str:
    return f"[[reviewers]]\nname='{name}'\nperson_name='{person}'\ntoken_sha256='{digest or hash_token(TOKEN)}'\n"


def test_reviewers_and_review_destinations_load_from_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESTINATIONS + reviewer_table() + "[review]\naudit_log='logs/audit.jsonl'\n"))
    assert [(d.name, d.review, d.all_rejected) for d in config.destinations] == [
        ("plain", False, "report"),
        ("held", True, "report"),
    ]
    assert config.reviewers[0].person_name == "Smith^Jane"
    assert config.audit_log_path == tmp_path / "logs" / "audit.jsonl"
    assert load_config(write(tmp_path, DESTINATIONS + reviewer_table())).audit_log_path.name == "review-audit.jsonl"


def test_reviewer_and_review_problems_are_all_reported(tmp_path: Path) -> None:
    text = (
        DESTINATIONS.replace("review=true", "review=true\nall_rejected='maybe'")
        + reviewer_table("a", "NoCaret", "xyz")
        + reviewer_table("b")
        + reviewer_table("b")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    problems = "\n".join(caught.value.problems)
    for expected in ("all_rejected 'maybe'", "person_name 'NoCaret'", "token_sha256 must be 64 hex", "'b' is used twice", "share a token"):
        assert expected in problems, expected
    with pytest.raises(ConfigError, match="review = true need at least one"):
        load_config(write(tmp_path, DESTINATIONS))


def test_a_token_is_recognised_by_its_hash_only() -> None:
    config_reviewers = (
        replace_reviewer("jsmith", hash_token(TOKEN)),
        replace_reviewer("bjones", hash_token("another-token-0123456789")),
    )
    assert hash_token(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    found = reviewer_for_token(config_reviewers, TOKEN)
    assert found is not None and found.name == "jsmith"
    assert reviewer_for_token(config_reviewers, TOKEN + "x") is None
    assert reviewer_for_token(config_reviewers, "") is None
    assert len(new_token()) >= 40 and new_token() != new_token()


def replace_reviewer(name: str, digest: str) -> Reviewer:
    return Reviewer(name=name, person_name=f"{name}^", token_sha256=digest.upper())


def test_flags_become_a_decision_on_every_finding() -> None:
    assert choices_from_flags([1, 2, 3], accept=True, listed=[]) == {1: True, 2: True, 3: True}
    assert choices_from_flags([1, 2, 3], accept=True, listed=[2]) == {1: False, 2: True, 3: False}
    assert choices_from_flags([1, 2, 3], accept=False, listed=[1, 3]) == {1: False, 2: True, 3: False}
    with pytest.raises(ReviewError, match="no finding 7"):
        choices_from_flags([1, 2], accept=True, listed=[7])


def held_job(factory: sessionmaker[Session], study: str = "1.2.3") -> int:
    receive(factory, f"{study}.1.1", T0, study=study)
    settle(factory, datetime(2026, 1, 1, 12, 0, 11))
    job_id = claim(factory, "w1", datetime(2026, 1, 1, 12, 0, 12))
    assert job_id is not None
    findings = [
        repository.FindingRecord(
            number=number,
            sop_instance_uid=f"{study}.1.1",
            frame_number=None,
            label=number,
            kind="focal",
            pathology=None,
            location="right upper zone",
            area_px=100 * number,
            area_mm2=10.0 * number,
            mean_score=0.5,
            max_score=0.5 + 0.1 * number,
            bbox=f"0 0 {number} {number}",
        )
        for number in (1, 2)
    ]
    with factory.begin() as session:
        assert repository.finish_job_encoded(
            session,
            job_id=job_id,
            owner="w1",
            results=[],
            destinations=["plain"],
            held=["held"],
            findings=findings,
            now=T0,
        )
    return job_id


def test_held_deliveries_wait_for_a_decision_which_queues_the_reviewed_version(
    sessions: sessionmaker[Session],  # noqa: F811 - the fixture
) -> None:
    job_id = held_job(sessions)
    with sessions.begin() as session:
        # Neither the sender nor an operator's resend releases held results.
        assert [d.destination for d in repository.claim_due_deliveries(session, owner="s", lease_seconds=9, now=T0)] == ["plain"]
        assert repository.reset_deliveries(session, study_instance_uid="1.2.3", destination="held", now=T0) == 0
        assert repository.awaiting_review_count(session) == 1 and repository.oldest_review_since(session) == T0
    reviewer = Reviewer(name="jsmith", person_name="Smith^Jane", token_sha256=hash_token(TOKEN))
    with sessions.begin() as session:
        decision = decide(
            session, study_uid="1.2.3", reviewer=reviewer, accept=True, listed=[2], comment=" looks \n right ",
            via="cli", max_attempts=3,
        )  # fmt: skip
    assert (decision.accepted, decision.rejected, decision.commented) == ((2,), (1,), True)
    with sessions() as session:
        held = session.scalars(select(Delivery).where(Delivery.destination == "held")).one()
        assert held.state is DeliveryState.REVIEWED
        review_job = session.get_one(Job, decision.review_job_id)
        assert (review_job.state, review_job.version, review_job.reviewed_job_id) == (JobState.QUEUED, 2, job_id)
        plan = repository.review_plan(session, review_job)
        assert plan is not None and plan.destinations == ("held",) and plan.comment == "looks right"
        assert plan.decisions[("1.2.3.1.1", None, 1)] == (1, "0 0 1 1", False)
        assert [(f.kind, f.max_score, ok) for f, ok in repository.decided_findings(session)] == [
            ("focal", 0.6, False),
            ("focal", 0.7, True),
        ]
        assert repository.awaiting_review_count(session) == 0
    with sessions.begin() as session, pytest.raises(ReviewError, match="no results awaiting review"):
        decide(session, study_uid="1.2.3", reviewer=reviewer, accept=False, comment=None, via="cli", max_attempts=3)
    # A late instance gets its own job: the queued reviewed version covers only what was reviewed.
    receive(sessions, "1.2.3.1.2", datetime(2026, 1, 1, 12, 5, 0))
    assert settle(sessions, datetime(2026, 1, 1, 12, 5, 11)) == [3]
    statement = review_statement(plan, "Smith^Jane", "Radiology")
    assert "Reviewed by Smith Jane (Radiology)" in statement and "accepted: 2; rejected: 1" in statement


def test_a_reviewed_version_keeps_only_the_accepted_regions_renumbered() -> None:
    analysis = make_analysis(examples.ct, n_regions=2)
    records = finding_records([analysis])
    assert [(r.number, r.label) for r in records] == [(1, 1), (2, 2)]
    plan = repository.ReviewPlan(
        reviewer="jsmith",
        comment=None,
        decided_at=T0,
        decisions={(r.sop_instance_uid, r.frame_number, r.label): (r.number, r.bbox, r.number == 2) for r in records},
        destinations=("held",),
    )
    [kept] = keep_accepted([analysis], plan)
    second = analysis.region_map.regions[1]
    assert [(r.label, r.bbox, r.area_px) for r in kept.region_map.regions] == [(1, second.bbox, second.area_px)]
    assert int(kept.region_map.labels.max()) == 1
    assert int((kept.region_map.labels == 1).sum()) == int((analysis.region_map.labels == 2).sum())
    assert "1 region was flagged." in kept.findings
    changed = replace(plan, decisions={key: value for key, value in list(plan.decisions.items())[:1]})
    with pytest.raises(EncodeError, match="not the 1 finding"):
        keep_accepted([analysis], changed)


def test_audit_entries_are_json_lines_and_refuse_unknown_details(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "review.jsonl")
    log.write(action="view", study_uid="1.2.3", reviewer=None, via="dashboard")
    log.write(action="decision", study_uid="1.2.3", reviewer="jsmith", accepted=[1], rejected=[2], comment=True)
    with pytest.raises(ValueError, match="not allowed"):
        log.write(action="view", study_uid="1.2.3", reviewer=None, patient_name="Doe^John")
    entries = read_audit_log(log.path)
    assert [(e["action"], e["reviewer"]) for e in entries] == [("view", None), ("decision", "jsmith")]
    assert entries[1]["time"].endswith("Z") and json.dumps(entries).count("Doe") == 0
    assert (log.path.stat().st_mode & 0o777) == 0o600


def test_feedback_precision_per_type_and_band_and_a_proposed_threshold() -> None:
    decided = [DecidedFinding(kind="focal", score=s, accepted=a) for s, a in ((0.55, False), (0.58, False), (0.65, True), (0.72, False), (0.85, True), (0.95, True))]
    decided += [DecidedFinding(kind="zone", score=0.9, accepted=True)]
    rows = {(row.kind, row.band): row for row in precision_rows(decided)}
    assert rows[("all", "all")].precision == pytest.approx(4 / 7)
    assert rows[("focal", "0.50-0.60")].precision == 0.0 and rows[("focal", "0.50-0.60")].decided == 2
    assert rows[("focal", "0.90-1.00")].precision == 1.0 and rows[("zone", "all")].decided == 1
    assert band_of(1.0) == "0.90-1.00" and band_of(0.2) == "0.00-0.50"
    low, high = wilson_interval(4, 7)
    assert 0.2 < low < 4 / 7 < high < 0.9
    proposal = propose_threshold(decided, target_precision=0.75)
    # From 0.65 up: 4 kept of 5 (0.8); from 0.55 or 0.58 precision is below 0.75.
    assert proposal.threshold == 0.65 and proposal.precision == pytest.approx(0.8)
    assert proposal.accepted_kept == 1.0 and proposal.rejected_removed == pytest.approx(2 / 3)
    strict = propose_threshold(decided, target_precision=1.0)
    assert strict.threshold == 0.85 and strict.precision == 1.0
    assert propose_threshold([DecidedFinding(kind="focal", score=0.6, accepted=False)]).threshold is None


def test_the_retry_button_takes_a_reviewers_token(
    sessions: sessionmaker[Session],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    from miemss_node.config import HttpSettings
    from miemss_node.web.server import HttpServer

    held_job(sessions)
    with sessions.begin() as session:
        plain = session.scalars(select(Delivery).where(Delivery.destination == "plain")).one()
        repository.record_delivery_outcome(
            session, delivery_id=plain.id, delivered=False, retry_at=None, status=0xC000, error="refused", now=T0
        )
    reviewers = (replace_reviewer("jsmith", hash_token(TOKEN)),)
    server = HttpServer(HttpSettings(), sessions, tmp_path, receiver_problem=lambda: None, reviewers=reviewers)
    assert server.retry(plain.id, "wrong-token-0123456789")[0] == 403
    assert server.retry(plain.id, TOKEN)[:2] == (303, "delivery to plain queued again")
    without = HttpServer(HttpSettings(), sessions, tmp_path, receiver_problem=lambda: None)
    assert without.retry(plain.id, TOKEN)[0] == 403


def test_the_review_form_decides_per_finding_and_every_finding_needs_a_decision(
    sessions: sessionmaker[Session],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    from miemss_node.config import HttpSettings
    from miemss_node.web.server import HttpServer

    held_job(sessions)
    reviewers = (replace_reviewer("jsmith", hash_token(TOKEN)),)
    server = HttpServer(HttpSettings(), sessions, tmp_path, receiver_problem=lambda: None, reviewers=reviewers)
    partial = {"token": [TOKEN], "action": ["decide"], "finding-1": ["reject"]}
    status, message = server.review("1.2.3", partial)
    assert status == 409 and "missing [2]" in message
    status, message = server.review("1.2.3", {**partial, "finding-2": ["accept"], "comment": ["ok"]})
    assert status == 303 and "accepted 2; rejected 1" in message
    with sessions() as session:
        assert [(f.number, ok) for f, ok in repository.decided_findings(session)] == [(1, False), (2, True)]
    entries = read_audit_log(tmp_path / "review-audit.jsonl")
    assert [(e["action"], e["reviewer"]) for e in entries] == [("refused", "jsmith"), ("decision", "jsmith")]


def test_sign_in_sets_a_cookie_that_stands_in_for_the_token(
    sessions: sessionmaker[Session],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    from miemss_node.config import HttpSettings
    from miemss_node.web.server import REVIEWER_COOKIE, HttpServer, _cookie_token

    held_job(sessions)
    reviewers = (replace_reviewer("jsmith", hash_token(TOKEN)),)
    server = HttpServer(HttpSettings(), sessions, tmp_path, receiver_problem=lambda: None, reviewers=reviewers)
    status, _, _, headers = server.sign_in({"token": [TOKEN], "next": ["https://elsewhere.example/"]})
    assert status == 303 and headers["Location"] == "/"  # never sent off the dashboard
    assert headers["Set-Cookie"].startswith(f"{REVIEWER_COOKIE}={TOKEN};") and "HttpOnly" in headers["Set-Cookie"]
    assert "SameSite=Strict" in headers["Set-Cookie"]
    assert server.sign_in({"token": ["wrong-token-0123456789"], "next": ["/studies/1.2.3"]})[0] == 403
    assert _cookie_token({"HTTP_COOKIE": f"other=1; {REVIEWER_COOKIE}={TOKEN}"}) == TOKEN
    assert _cookie_token({"HTTP_COOKIE": 'bad"cookie'}) == ""
    status, message = server.review("1.2.3", {"action": ["accept_all"]}, cookie_token=TOKEN)
    assert status == 303 and "accepted 1, 2" in message
    actions = [(e["action"], e["reviewer"], e["study_uid"]) for e in read_audit_log(tmp_path / "review-audit.jsonl")]
    assert actions == [("signin", "jsmith", ""), ("refused", None, "1.2.3"), ("decision", "jsmith", "1.2.3")]
