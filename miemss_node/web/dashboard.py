"""The dashboard's pages: studies awaiting review, recent studies, and per study its timeline,
thumbnails, findings, report and deliveries.

Read-only apart from two forms, each asking for a reviewer's token: a failed delivery's retry, and
the review of a study's held findings (accept or reject each finding, or all, with a comment).
Studies are named by their Study Instance UID. Patient names and IDs are shown only with
``[http] show_patient_data = true``; they are then read from the study's first stored instance.
An overlay thumbnail of a source that has burned-in annotation (text that may name the patient)
is hidden unless patient data is shown. Everything printed is HTML-escaped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from miemss_node.clock import utcnow
from miemss_node.config import HttpSettings
from miemss_node.queue import repository
from miemss_node.queue.models import (
    Delivery,
    DeliveryState,
    Finding,
    Job,
    JobState,
    ReceiveConflict,
    Result,
    Study,
)
from miemss_node.storage import StorageLayout
from miemss_node.thumbnails import Thumbnail, read_thumbnails

logger = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d232a; background: #f6f7f9; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
.warning { color: #a00; font-weight: 600; margin-bottom: 1rem; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: .85rem; }
th, td { border: 1px solid #d5d9de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #e9ecef; } code { font-size: .8rem; word-break: break-all; }
.state-delivered { color: #16702e; font-weight: 600; } .state-failed { color: #a00; font-weight: 600; }
.state-queued, .state-running, .state-encoded, .state-pending { color: #8a5a00; font-weight: 600; }
.thumbs { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; background: #fff; border: 1px solid #d5d9de; padding: .4rem; }
figcaption { font-size: .75rem; max-width: 256px; } img { display: block; }
.report { white-space: pre-wrap; background: #fff; border: 1px solid #d5d9de; padding: .6rem; }
form { display: inline; } .muted { color: #5f6b76; font-size: .8rem; }
.state-awaiting-review, .state-reviewed { color: #5a3fa0; font-weight: 600; }
form.review { background: #fff; border: 2px solid #5a3fa0; padding: .6rem; margin: .8rem 0; display: block; }
form.review textarea { width: 100%; max-width: 40rem; } form.review button { margin: .4rem .4rem 0 0; }
"""


def _time(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _state(value: str) -> str:
    return f'<span class="state-{escape(value.replace(" ", "-"))}">{escape(value)}</span>'


def _refused(count: int) -> str:
    return f' <span class="state-failed">({count} refused)</span>' if count else ""


def _conflicts_section(conflicts: list[ReceiveConflict]) -> str:
    """The instances refused because they conflict with the study's stored data (UIDs only)."""
    if not conflicts:
        return ""
    rows = "".join(
        f"<tr><td>{_time(c.at)}</td><td><code>{escape(c.sop_instance_uid)}</code></td>"
        f"<td>{escape(c.calling_ae_title)}</td><td>{escape(c.detail)}</td></tr>"
        for c in conflicts
    )
    return (
        '<h2 class="state-failed">Refused instances</h2><p class="muted">Instances this study did not '
        "take because they conflict with what is stored (never mixed into its results); the sender was "
        "answered with a failure status.</p><table><tr><th>When</th><th>SOP Instance UID</th>"
        f"<th>Calling AE</th><th>Why</th></tr>{rows}</table>"
    )


def page(title: str, body: str) -> bytes:
    """A whole HTML page."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        '<div class="warning">MIEMSS node: AI-generated results, unverified, NOT FOR DIAGNOSIS.</div>'
        f"{body}</body></html>"
    ).encode()


@dataclass(frozen=True, kw_only=True)
class Milestones:
    """When a job reached each step (None: not yet)."""

    settled: datetime | None
    processed: datetime | None
    delivered: datetime | None
    #: Destinations delivered to, out of the job's deliveries.
    destinations_done: int = 0
    destinations: int = 0

    def delivered_text(self) -> str:
        """The time every destination had the results, else how many have them so far."""
        if self.delivered is not None:
            return _time(self.delivered)
        if self.destinations:
            return f"{self.destinations_done} of {self.destinations} destinations"
        return ""


def milestones(session: Session, job: Job | None) -> Milestones:
    """Settled (the job was queued), processed (results encoded), delivered (every destination)."""
    if job is None:
        return Milestones(settled=None, processed=None, delivered=None)
    events = repository.job_events(session, job.id)
    processed = next((e.at for e in events if e.state in (JobState.ENCODED, JobState.DELIVERED)), None)
    deliveries = repository.job_deliveries(session, job.id)
    delivered = None
    if job.state is JobState.DELIVERED:
        times = [d.delivered_at for d in deliveries if d.delivered_at is not None]
        delivered = max(times) if times else processed
    return Milestones(
        settled=job.created_at,
        processed=processed,
        delivered=delivered,
        destinations_done=sum(d.state is DeliveryState.DELIVERED for d in deliveries),
        destinations=len(deliveries),
    )


def patient_of(storage_dir: Path, session: Session, study: Study) -> str:
    """ "Name (ID)" from the study's first stored instance; only called with show_patient_data."""
    instances = repository.study_instances(session, study.id)
    if not instances:
        return ""
    try:
        header = dcmread(
            storage_dir / instances[0].path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"]
        )
    except (OSError, InvalidDicomError, ValueError):
        return "(unreadable)"
    return f"{header.get('PatientName', '')} ({header.get('PatientID', '')})"


class Dashboard:
    """Renders the dashboard's pages from the database and the storage folder."""

    def __init__(self, settings: HttpSettings, storage_dir: Path, *, reviewers: bool = False) -> None:
        self.settings = settings
        self.storage_dir = storage_dir
        #: Whether any reviewer is configured (the review form needs one's token).
        self.reviewers = reviewers

    def _awaiting_section(self, session: Session) -> str:
        """The studies whose results are held for review, the longest waiting first."""
        waiting = repository.awaiting_review(session)
        if not waiting:
            return '<h1>Awaiting review</h1><p class="muted">No study is waiting for a reviewer.</p>'
        now = utcnow()
        rows = "".join(
            f'<tr><td><a href="/studies/{escape(item.study_instance_uid)}"><code>'
            f"{escape(item.study_instance_uid)}</code></a></td><td>{_time(item.since)}</td>"
            f"<td>{_duration((now - item.since).total_seconds())}</td><td>{item.findings}</td>"
            f"<td>{escape(', '.join(item.destinations))}</td></tr>"
            for item in waiting
        )
        return (
            f"<h1>Awaiting review ({len(waiting)})</h1>"
            '<p class="muted">Results held for destinations with review = true; the longest waiting first.</p>'
            "<table><tr><th>Study Instance UID</th><th>Held since</th><th>Waiting</th><th>Findings</th>"
            f"<th>Held for</th></tr>{rows}</table>"
        )

    def index(self, session: Session) -> bytes:
        """Studies awaiting review, then the recent studies, newest first, with their latest job's milestones."""
        show_patient = self.settings.show_patient_data
        rows = []
        summaries = repository.recent_studies(session, limit=self.settings.recent_studies)
        refused = repository.conflict_counts(session, [s.study.study_instance_uid for s in summaries])
        for summary in summaries:
            study, job = summary.study, summary.latest_job
            steps = milestones(session, job)
            uid = escape(study.study_instance_uid)
            thumbs = self._thumbnails(study.study_instance_uid, job)
            thumb = (
                f'<img src="/thumbs/{job.id}/{escape(thumbs[0].overlay)}" alt="overlay" width="64">'
                if job is not None and thumbs and self._may_show(thumbs[0])
                else ""
            )
            patient = f"<td>{escape(patient_of(self.storage_dir, session, study))}</td>" if show_patient else ""
            rows.append(
                f'<tr><td><a href="/studies/{uid}"><code>{uid}</code></a></td>{patient}'
                f"<td>{summary.instance_count}{_refused(refused.get(study.study_instance_uid, 0))}</td>"
                f"<td>{_time(study.last_received_at)}</td>"
                f"<td>{_time(steps.settled)}</td><td>{_time(steps.processed)}</td>"
                f"<td>{escape(steps.delivered_text())}</td>"
                f"<td>{_state(job.state.value) if job else _state('receiving')}</td><td>{thumb}</td></tr>"
            )
        patient_header = "<th>Patient</th>" if show_patient else ""
        body = self._awaiting_section(session) + (
            "<h1>Recent studies</h1>"
            f'<p class="muted">The {self.settings.recent_studies} studies that last received an instance; '
            'times in UTC. <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p>'
            f"<table><tr><th>Study Instance UID</th>{patient_header}<th>Instances</th><th>Received</th>"
            "<th>Settled</th><th>Processed</th><th>Delivered</th><th>State</th><th>Overlay</th></tr>"
            f"{''.join(rows) or '<tr><td colspan=9>No study received yet.</td></tr>'}</table>"
        )
        return page("MIEMSS node: recent studies", body)

    def study(self, session: Session, study: Study, *, notice: str = "", reviewer: str | None = None) -> bytes:
        """One study: timeline, and per job its thumbnails, report text, results and deliveries.

        ``reviewer`` is the signed-in reviewer's name (their review form then asks for no token).
        """
        uid = escape(study.study_instance_uid)
        jobs = repository.study_jobs(session, study.id)
        count = len(repository.study_instances(session, study.id))
        parts = [
            '<p><a href="/">&larr; recent studies</a></p>',
            f"<h1>Study <code>{uid}</code></h1>",
        ]
        if self.settings.show_patient_data:
            parts.append(f"<p>Patient: {escape(patient_of(self.storage_dir, session, study))}</p>")
        if notice:
            parts.append(f'<p class="muted">{escape(notice)}</p>')
        if self.reviewers:
            parts.append(_sign_in(study.study_instance_uid, reviewer))
        timeline = [
            (study.first_received_at, "received", f"first instance ({count} instance(s) in all)"),
            (study.last_received_at, "received", "last instance"),
        ]
        for job in jobs:
            timeline += [
                (event.at, f"job {job.id} {event.state.value}", event.detail or "")
                for event in repository.job_events(session, job.id)
            ]
            timeline += [
                (delivery.delivered_at, f"job {job.id} delivered", f"to {delivery.destination}")
                for delivery in repository.job_deliveries(session, job.id)
                if delivery.delivered_at is not None
            ]
        timeline.sort(key=lambda item: item[0])
        parts.append("<h2>Timeline (UTC)</h2><table><tr><th>When</th><th>What</th><th>Detail</th></tr>")
        parts += [
            f"<tr><td>{_time(at)}</td><td>{escape(what)}</td><td>{escape(detail)}</td></tr>"
            for at, what, detail in timeline
        ]
        parts.append("</table>")
        parts.append(_conflicts_section(repository.study_conflicts(session, study.study_instance_uid)))
        held = repository.job_awaiting_review(session, study.id)
        if held is not None:
            parts.append(self._review_form(session, study, held, signed_in=reviewer is not None))
        for job in jobs:
            parts.append(self._job_section(session, study, job))
        return page(f"MIEMSS node: study {study.study_instance_uid}", "".join(parts))

    def _may_show(self, thumbnail: Thumbnail) -> bool:
        return self.settings.show_patient_data or not thumbnail.burned_in_annotation

    def _thumbnails(self, study_uid: str, job: Job | None) -> list[Thumbnail]:
        if job is None:
            return []
        return read_thumbnails(StorageLayout(self.storage_dir).thumbnail_dir(study_uid, job.id))

    def thumbnail_path(self, session: Session, job_id: int, name: str) -> Path | None:
        """The file of a listed thumbnail that may be shown, else None."""
        job = session.get(Job, job_id)
        if job is None:
            return None
        study = repository.study_of_job(session, job)
        for thumbnail in self._thumbnails(study.study_instance_uid, job):
            if name == thumbnail.heatmap or (name == thumbnail.overlay and self._may_show(thumbnail)):
                return StorageLayout(self.storage_dir).thumbnail_dir(study.study_instance_uid, job.id) / name
        return None

    def _review_form(self, session: Session, study: Study, job: Job, *, signed_in: bool = False) -> str:
        """The findings of the job held for review, each with accept/reject, a comment, the token."""
        findings = repository.job_findings(session, job.id)
        uid = escape(study.study_instance_uid)
        images = {(t.sop_instance_uid, t.frame_number): t.image for t in self._thumbnails(study.study_instance_uid, job)}
        rows = "".join(
            f"<tr><td>{f.number}</td><td>{escape(_finding_place(f, images))}</td><td>{escape(f.location)}</td>"
            f"<td>{escape(_finding_kind(f))}</td><td>{escape(_finding_area(f))}</td><td>{f.max_score:.2f}</td>"
            f'<td><label><input type="radio" name="finding-{f.number}" value="accept" checked> accept</label> '
            f'<label><input type="radio" name="finding-{f.number}" value="reject"> reject</label></td></tr>'
            for f in findings
        )
        table = (
            "<table><tr><th>Finding</th><th>Image and region</th><th>Location</th><th>Kind</th><th>Size</th>"
            f"<th>Score (max)</th><th>Decision</th></tr>{rows}</table>"
            if findings
            else '<p class="muted">The AI flagged no finding in this study; accepting sends the verified report.</p>'
        )
        if not self.reviewers:
            controls = (
                '<button type="button" disabled>Submit decisions</button>'
                ' <span class="muted">(no [[reviewers]] configured)</span>'
            )
        else:
            controls = (
                '<p><label>Comment (optional, goes into the reviewed report)<br>'
                '<textarea name="comment" rows="2" maxlength="1000"></textarea></label></p>'
                + (
                    ""
                    if signed_in
                    else '<p><label>Reviewer token <input type="password" name="token" required '
                    'autocomplete="off"></label></p>'
                )
                + '<button type="submit" name="action" value="decide" id="review-decide">Submit decisions</button>'
                '<button type="submit" name="action" value="accept_all" id="review-accept-all">Accept all</button>'
                '<button type="submit" name="action" value="reject_all" id="review-reject-all">Reject all</button>'
            )
        return (
            f'<form class="review" method="post" action="/studies/{uid}/review">'
            f"<h2>Review: job {job.id} (version {job.version}) awaiting review</h2>"
            '<p class="muted">Its results are held for the destinations with review = true. Accept or reject '
            "each finding (see the overlay below: image N, region label); the node then sends a new version with "
            "only the accepted findings, verified in your name.</p>"
            f"{table}{controls}</form>"
        )

    def _review_line(self, session: Session, job: Job) -> str:
        """Who decided on a job's findings and how, or ""."""
        review = repository.job_review(session, job.id)
        if review is None:
            return ""
        decisions = repository.finding_decisions(session, job.id)
        accepted = ", ".join(str(n) for n, ok in sorted(decisions.items()) if ok) or "none"
        rejected = ", ".join(str(n) for n, ok in sorted(decisions.items()) if not ok) or "none"
        return (
            f'<p class="state-reviewed">Reviewed by {escape(review.reviewer)} at {_time(review.decided_at)} '
            f"({escape(review.via)}): findings accepted {accepted}; rejected {rejected}; "
            f"reviewed version: job {review.review_job_id}.</p>"
        )

    def _job_section(self, session: Session, study: Study, job: Job) -> str:
        results = repository.job_results(session, job.id)
        parts = [f"<h2>Job {job.id} (version {job.version}): {_state(job.state.value)}</h2>"]
        if job.reviewed_job_id is not None:
            parts.append(f'<p class="state-reviewed">Reviewed version of job {job.reviewed_job_id}.</p>')
        parts.append(self._review_line(session, job))
        if job.last_error:
            parts.append(f'<p class="muted">Last error: {escape(job.last_error)}</p>')
        figures = []
        for thumbnail in self._thumbnails(study.study_instance_uid, job):
            frame = f", frame {thumbnail.frame_number}" if thumbnail.frame_number is not None else ""
            caption = f"Image {thumbnail.image}{frame}: {thumbnail.regions} region(s)"
            overlay = (
                f'<img src="/thumbs/{job.id}/{escape(thumbnail.overlay)}" alt="overlay of image {thumbnail.image}">'
                if self._may_show(thumbnail)
                else '<p class="muted">Overlay hidden: the source has burned-in annotation.</p>'
            )
            heatmap = (
                f'<img src="/thumbs/{job.id}/{escape(thumbnail.heatmap)}" alt="heatmap of image {thumbnail.image}">'
            )
            figures.append(
                f"<figure>{overlay}<figcaption>{escape(caption)} (overlay)</figcaption></figure>"
                f"<figure>{heatmap}<figcaption><code>{escape(thumbnail.sop_instance_uid)}</code> (heatmap)"
                "</figcaption></figure>"
            )
        if figures:
            parts.append(f'<div class="thumbs">{"".join(figures)}</div>')
        parts.append("<h2>Report</h2>")
        parts.append(self._report(results))
        if results:
            parts.append("<h2>Results</h2><table><tr><th>Type</th><th>SOP Instance UID</th></tr>")
            parts += [
                f"<tr><td>{escape(r.kind)}</td><td><code>{escape(r.sop_instance_uid)}</code></td></tr>" for r in results
            ]
            parts.append("</table>")
        deliveries = repository.job_deliveries(session, job.id)
        if deliveries:
            parts.append(
                "<h2>Deliveries</h2><table><tr><th>Destination</th><th>State</th><th>Attempts</th>"
                "<th>Delivered</th><th>Last error</th><th></th></tr>"
            )
            parts += [self._delivery_row(delivery) for delivery in deliveries]
            parts.append("</table>")
        return "".join(parts)

    def _delivery_row(self, delivery: Delivery) -> str:
        action = ""
        if delivery.state is DeliveryState.FAILED:
            if self.settings.token:
                action = (
                    f'<form method="post" action="/deliveries/{delivery.id}/retry">'
                    '<input type="password" name="token" placeholder="token" required> '
                    '<button type="submit">Retry</button></form>'
                )
            else:
                action = (
                    '<button type="button" disabled title="set [http] token to enable">Retry</button>'
                    ' <span class="muted">(no [http] token configured)</span>'
                )
        return (
            f"<tr><td>{escape(delivery.destination)}</td><td>{_state(delivery.state.value)}</td>"
            f"<td>{delivery.attempts}</td><td>{_time(delivery.delivered_at)}</td>"
            f"<td>{escape(delivery.last_error or '')}</td><td>{action}</td></tr>"
        )

    def _report(self, results: list[Result]) -> str:
        sr = next((result for result in results if result.kind == "SR"), None)
        if sr is None:
            return '<p class="muted">No Structured Report among this job\'s results.</p>'
        try:
            dataset = dcmread(self.storage_dir / sr.path)
        except (OSError, InvalidDicomError, ValueError):
            return '<p class="muted">The Structured Report could not be read.</p>'
        lines = [f"{name}: {text}" for name, text in report_texts(dataset)]
        return f'<div class="report">{escape(chr(10).join(lines))}</div>'


def _sign_in(study_uid: str, reviewer: str | None) -> str:
    """Who is signed in (page views and decisions are audited in their name), or the sign-in form."""
    uid = escape(study_uid)
    if reviewer is not None:
        return (
            f'<form method="post" action="/signout"><input type="hidden" name="next" value="/studies/{uid}">'
            f'<span class="muted">Signed in as {escape(reviewer)}: views and decisions are audited in this '
            'name.</span> <button type="submit" id="sign-out">Sign out</button></form>'
        )
    return (
        f'<form method="post" action="/signin"><input type="hidden" name="next" value="/studies/{uid}">'
        '<span class="muted">Reviewers: sign in so that views are audited in your name.</span> '
        '<input type="password" name="token" placeholder="reviewer token" required autocomplete="off"> '
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )


def _duration(seconds: float) -> str:
    """A wait in words: "42 s", "17 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _finding_place(finding: Finding, images: dict[tuple[str, int | None], int]) -> str:
    """ "Image 2, region 1" as the overlays are captioned (the SOP Instance UID when no thumbnail names it)."""
    image = images.get((finding.sop_instance_uid, finding.frame_number))
    frame = f" frame {finding.frame_number}" if finding.frame_number is not None else ""
    where = f"image {image}" if image is not None else finding.sop_instance_uid
    return f"{where}{frame}, region {finding.label}"


def _finding_kind(finding: Finding) -> str:
    return f"{finding.kind}: {finding.pathology}" if finding.pathology else finding.kind


def _finding_area(finding: Finding) -> str:
    return f"{finding.area_mm2:.0f} mm²" if finding.area_mm2 is not None else f"{finding.area_px} px"


def report_texts(sr: Dataset) -> list[tuple[str, str]]:
    """The report's statements: every TEXT item an SR CONTAINS, depth first (concept name, text).

    Observation context and modifiers (observer names, tracking identifiers, algorithm names) are
    left out.
    """
    texts: list[tuple[str, str]] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT" and item.get("RelationshipType") == "CONTAINS":
                name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
                texts.append((str(name), str(item.TextValue)))
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.get("ContentSequence", [])))
    return texts
