"""Record a reviewer's decision on a study's held findings: the one path for the CLI and the dashboard.

A decision covers every finding of the job whose results are held (the study's latest such job):
each is accepted or rejected. It releases the held deliveries and queues the job that encodes the
reviewed version (VERIFIED SR, only the accepted findings), which the running node's workers take.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import Reviewer
from miemss_node.errors import ReviewError
from miemss_node.queue import repository
from miemss_node.review.audit import AuditLog

#: Longest comment kept (the SR's TEXT value is UT, but a comment is a note, not a report).
MAX_COMMENT_CHARS = 1000


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What a recorded decision did."""

    study_uid: str
    #: The job whose findings were decided on, and the job encoding the reviewed version.
    job_id: int
    review_job_id: int
    accepted: tuple[int, ...]
    rejected: tuple[int, ...]
    #: Whether the reviewer wrote a comment (the text goes into the SR, not into logs).
    commented: bool


def choices_from_flags(numbers: Collection[int], *, accept: bool, listed: Collection[int]) -> dict[int, bool]:
    """Per finding number, accepted or not, from ``--accept``/``--reject`` and ``--finding N ...``.

    Without ``listed`` the choice applies to every finding; with it, to the listed findings, and
    the others get the opposite (``--accept --finding 1`` accepts 1 and rejects the rest).

    Raises
    ------
    ReviewError
        When a listed number is not a finding of the study.
    """
    unknown = sorted(set(listed) - set(numbers))
    if unknown:
        known = ", ".join(str(n) for n in sorted(numbers)) or "none"
        raise ReviewError(f"no finding {', '.join(str(n) for n in unknown)} (the study's findings: {known})")
    if not listed:
        return dict.fromkeys(numbers, accept)
    return {number: accept if number in listed else not accept for number in numbers}


def decide(
    session: Session,
    *,
    study_uid: str,
    reviewer: Reviewer,
    choices: Mapping[int, bool] | None = None,
    accept: bool | None = None,
    listed: Collection[int] = (),
    comment: str | None,
    via: str,
    max_attempts: int,
) -> Decision:
    """Record a decision on the study's held findings and queue the reviewed version.

    Give either ``choices`` (finding number -> accepted, for every finding) or ``accept`` with
    optional ``listed`` numbers (see :func:`choices_from_flags`).

    Raises
    ------
    ReviewError
        When the study is unknown, has nothing awaiting review, a number is unknown or missing, or
        another decision came first.
    """
    study = repository.study_by_uid(session, study_uid)
    if study is None:
        raise ReviewError(f"no study {study_uid} on this node")
    job = repository.job_awaiting_review(session, study.id)
    if job is None:
        raise ReviewError(f"study {study_uid} has no results awaiting review")
    findings = repository.job_findings(session, job.id)
    numbers = [finding.number for finding in findings]
    if choices is None:
        if accept is None:
            raise ReviewError("say whether the findings are accepted or rejected")
        choices = choices_from_flags(numbers, accept=accept, listed=listed)
    if set(choices) != set(numbers):
        missing = sorted(set(numbers) - set(choices))
        extra = sorted(set(choices) - set(numbers))
        raise ReviewError(f"a decision is needed on every finding: missing {missing}, unknown {extra}")
    text = " ".join((comment or "").split())[:MAX_COMMENT_CHARS] or None
    review = repository.record_review(
        session,
        job_id=job.id,
        reviewer=reviewer.name,
        accepted={finding.id: choices[finding.number] for finding in findings},
        comment=text,
        via=via,
        max_attempts=max_attempts,
        now=utcnow(),
    )
    if review is None or review.review_job_id is None:
        raise ReviewError(f"study {study_uid}: another decision was recorded first")
    decision = Decision(
        study_uid=study_uid,
        job_id=job.id,
        review_job_id=review.review_job_id,
        accepted=tuple(sorted(n for n, ok in choices.items() if ok)),
        rejected=tuple(sorted(n for n, ok in choices.items() if not ok)),
        commented=text is not None,
    )
    return decision


def record_decision(
    sessions: sessionmaker[Session],
    audit: AuditLog,
    *,
    study_uid: str,
    reviewer: Reviewer,
    via: str,
    max_attempts: int,
    comment: str | None,
    choices: Mapping[int, bool] | None = None,
    accept: bool | None = None,
    listed: Collection[int] = (),
) -> Decision:
    """:func:`decide` in its own transaction, then the audit entry (only once the decision is committed).

    Raises
    ------
    ReviewError
        As :func:`decide`; the refusal is audited too.
    """
    try:
        with sessions.begin() as session:
            decision = decide(
                session,
                study_uid=study_uid,
                reviewer=reviewer,
                choices=choices,
                accept=accept,
                listed=listed,
                comment=comment,
                via=via,
                max_attempts=max_attempts,
            )
    except ReviewError as exc:
        audit.write(action="refused", study_uid=study_uid, reviewer=reviewer.name, via=via, reason=str(exc)[:300])
        raise
    audit.write(
        action="decision",
        study_uid=study_uid,
        reviewer=reviewer.name,
        via=via,
        accepted=list(decision.accepted),
        rejected=list(decision.rejected),
        comment=decision.commented,
        job_id=decision.job_id,
        review_job_id=decision.review_job_id,
    )
    return decision
