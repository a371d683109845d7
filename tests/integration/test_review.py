"""The radiologist in the loop, on a running node: results held for review destinations, decisions
from the command line and from the dashboard (in headless Chromium), the reviewed version (VERIFIED
SR with only the accepted findings) delivered once, reject-all per destination, the audit log,
``evaluate --feedback`` and ``reference fit --add-rejected``.

Two studies, each two copies of one real DX film on which the pipeline flags one region, so each
study has two findings (one per image). Study A is decided with ``miemss-node review`` (finding 1
accepted, 2 rejected); study B on the dashboard (a wrong token, then "Reject all").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from sqlalchemy import select

from miemss_node.config import load_config
from miemss_node.node import Node
from miemss_node.queue.models import Delivery, DeliveryState, Job, Result, Review, Study
from miemss_node.review.audit import read_audit_log
from miemss_node.review.reviewers import hash_token
from miemss_node.web.dashboard import report_texts
from tests.integration.test_dashboard_metrics import get, metric_samples, post, wait_until
from tests.support.browser import HeadlessChromium
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.net import free_port
from tests.support.paths import REPO_ROOT, shared_file
from tests.support.peers import PacsScp, store_datasets
from tests.support.studies import copies_as_new_study
from tests.support.tools import tool

#: A DX film on which the generic analysis flags exactly one region.
SOURCE = "dicom/xray/dx_mono2_16bit_j2kr_1416x1420.dcm"
TOKEN = "reviewer-token-jsmith-0123456789"
OTHER_TOKEN = "reviewer-token-bjones-9876543210"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"

#: Where the review page's screenshot is also copied when set (for a person to look at).
SCREENSHOT_ENV = "MIEMSS_REVIEW_SCREENSHOT"


@dataclass
class Running:
    node: Node
    config_path: Path
    base_url: str
    plain: PacsScp
    reviewed: PacsScp
    silent: PacsScp
    study_a: list[Dataset]
    study_b: list[Dataset]


def deliveries_of(node: Node, study_uid: str) -> list[tuple[int, str, DeliveryState]]:
    """(job version, destination, state) of every delivery of a study."""
    with node.sessions() as session:
        rows = session.execute(
            select(Job.version, Delivery.destination, Delivery.state)
            .join(Job, Job.id == Delivery.job_id)
            .join(Study, Study.id == Job.study_id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(Job.version, Delivery.destination)
        ).all()
    return [(int(v), str(d), s) for v, d, s in rows]


def uid_of(study: list[Dataset]) -> str:
    return str(study[0].StudyInstanceUID)


def of_study(received: list[Dataset], study: list[Dataset], sop_class: str | None = None) -> list[Dataset]:
    return [
        ds
        for ds in received
        if ds.StudyInstanceUID == study[0].StudyInstanceUID and (sop_class is None or ds.SOPClassUID == sop_class)
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process (as a reviewer runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "miemss_node", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("review")
    source = dcmread(shared_file(SOURCE))
    plain, reviewed, silent = PacsScp("PLAIN"), PacsScp("REVIEWED"), PacsScp("SILENT")
    http_port = free_port()
    config_path = folder / "config.toml"
    config_path.write_text(
        f"""
[node]
port = 0
storage_dir = "storage"
[study]
settle_seconds = 0.5
[worker]
poll_seconds = 0.2
[delivery]
poll_seconds = 0.2
backoff_seconds = 0.5
timeout_seconds = 10.0
[http]
port = {http_port}

[[reviewers]]
name = "jsmith"
person_name = "Smith^Jane"
token_sha256 = "{hash_token(TOKEN)}"
organization = "Test Hospital Radiology"

[[reviewers]]
name = "bjones"
person_name = "Jones^Bob"
token_sha256 = "{hash_token(OTHER_TOKEN)}"

[[destinations]]
name = "plain"
ae_title = "PLAIN"
host = "127.0.0.1"
port = {plain.port}
result_types = ["SR"]

[[destinations]]
name = "reviewed"
ae_title = "REVIEWED"
host = "127.0.0.1"
port = {reviewed.port}
result_types = ["SEG", "SR", "SC"]
review = true
all_rejected = "report"

[[destinations]]
name = "silent"
ae_title = "SILENT"
host = "127.0.0.1"
port = {silent.port}
result_types = ["SR"]
review = true
all_rejected = "nothing"
""",
        encoding="utf-8",
    )
    node = Node(load_config(config_path))
    node.start()
    try:
        study_a, study_b = copies_as_new_study(source, 2), copies_as_new_study(source, 2)
        assert store_datasets(study_a + study_b, node.port) == [0x0000] * 4
        held = [
            (1, "plain", DeliveryState.DELIVERED),
            (1, "reviewed", DeliveryState.AWAITING_REVIEW),
            (1, "silent", DeliveryState.AWAITING_REVIEW),
        ]
        wait_until(lambda: all(deliveries_of(node, uid_of(s)) == held for s in (study_a, study_b)), timeout=300)
        yield Running(
            node=node,
            config_path=config_path,
            base_url=f"http://127.0.0.1:{http_port}",
            plain=plain,
            reviewed=reviewed,
            silent=silent,
            study_a=study_a,
            study_b=study_b,
        )
    finally:
        node.stop()
        for peer in (plain, reviewed, silent):
            peer.stop()


def v1_report_uid(node: Node, study: list[Dataset]) -> str:
    with node.sessions() as session:
        return str(
            session.scalars(
                select(Result.sop_instance_uid)
                .join(Job, Job.id == Result.job_id)
                .join(Study, Study.id == Job.study_id)
                .where(Study.study_instance_uid == uid_of(study), Job.version == 1, Result.kind == "SR")
            ).one()
        )


def test_results_for_review_destinations_are_held_and_listed(running: Running) -> None:
    for study in (running.study_a, running.study_b):
        assert len(of_study(running.plain.received, study, SR_CLASS)) == 1  # no review: sent as before
    assert running.reviewed.received == [] and running.silent.received == []
    assert running.reviewed.attempts == 0 and running.silent.attempts == 0
    status, _, body = get(f"{running.base_url}/")
    assert status == 200
    waiting = body.decode().split("<h1>Recent studies</h1>")[0]
    assert "Awaiting review (2)" in waiting
    assert uid_of(running.study_a) in waiting and uid_of(running.study_b) in waiting
    metrics = metric_samples(get(f"{running.base_url}/metrics")[2].decode())
    assert metrics[("miemss_review_awaiting", ())] == 2
    assert metrics[("miemss_review_oldest_wait_seconds", ())] > 0
    page = get(f"{running.base_url}/studies/{uid_of(running.study_a)}")[2].decode()
    assert 'action="/studies/' in page and 'name="finding-1"' in page and 'name="finding-2"' in page


def test_review_accepts_one_finding_and_the_reviewed_version_is_delivered_once(running: Running, tmp_path: Path) -> None:
    study = running.study_a
    uid = uid_of(study)
    original_sr = v1_report_uid(running.node, study)
    done = run_cli(
        "review", uid, "--accept", "--finding", "1", "--comment", "Finding 2 is the collimator edge.",
        "--reviewer", "jsmith", "--config", str(running.config_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "accepted 1; rejected 2" in done.stdout
    # The reviewed version (v2) goes to both review destinations, nothing more to the plain one.
    wait_until(
        lambda: deliveries_of(running.node, uid)
        == [
            (1, "plain", DeliveryState.DELIVERED),
            (1, "reviewed", DeliveryState.REVIEWED),
            (1, "silent", DeliveryState.REVIEWED),
            (2, "reviewed", DeliveryState.DELIVERED),
            (2, "silent", DeliveryState.DELIVERED),
        ],
        timeout=300,
    )
    running.reviewed.wait_until_idle()
    got = of_study(running.reviewed.received, study)
    uids = [str(ds.SOPInstanceUID) for ds in got]
    assert len(uids) == len(set(uids)), "an object was delivered twice"
    assert original_sr not in uids  # the unreviewed SR never reached the review destination
    assert sorted(str(ds.SOPClassUID) for ds in got) == sorted([SEG_CLASS, SR_CLASS, SC_CLASS, SC_CLASS])
    seg = of_study(got, study, SEG_CLASS)[0]
    assert len(seg.SegmentSequence) == 1  # only the accepted finding (image 1's region)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == study[0].SOPInstanceUID
    sr = of_study(got, study, SR_CLASS)[0]
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("VERIFIED", "COMPLETE", "FINAL")
    observer = sr.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName == "Smith^Jane"
    assert observer.VerifyingOrganization == "Test Hospital Radiology"
    with running.node.sessions() as session:
        decided_at = session.scalars(select(Review.decided_at).where(Review.reviewer == "jsmith")).one()
    assert observer.VerificationDateTime == decided_at.strftime("%Y%m%d%H%M%S")
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == original_sr
    texts = "\n".join(text for _name, text in report_texts(sr))
    assert "Reviewed by Smith Jane (Test Hospital Radiology)" in texts
    assert "accepted: 1; rejected: 2" in texts and "collimator edge" in texts
    assert "Region 1:" in texts and "AI-flagged region 1 of image 1" in texts
    assert "AI-flagged region 1 of image 2" not in texts  # the rejected finding is gone
    assert "has not been verified by a clinician" not in texts
    path = tmp_path / "reviewed_sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert [str(ds.SOPInstanceUID) for ds in of_study(running.silent.received, study)] == [str(sr.SOPInstanceUID)]
    again = run_cli("review", uid, "--reject", "--reviewer", "jsmith", "--config", str(running.config_path))
    assert again.returncode == 1 and "no results awaiting review" in again.stderr
    unknown = run_cli("review", uid, "--accept", "--reviewer", "nobody", "--config", str(running.config_path))
    assert unknown.returncode == 2 and "unknown reviewer 'nobody'" in unknown.stderr


def test_dashboard_review_needs_a_reviewer_token_and_reject_all_follows_each_destination(
    running: Running, tmp_path: Path
) -> None:
    study = running.study_b
    uid = uid_of(study)
    page_url = f"{running.base_url}/studies/{uid}"
    with HeadlessChromium(tool("chromium", "chromium", "chromium-browser"), height=1400) as browser:
        browser.goto(page_url)
        assert "Review: job" in browser.text() and "Reject all" in browser.text()
        shot = tmp_path / "review-page.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(shot, os.environ[SCREENSHOT_ENV])
        browser.type_into("form.review input[name=token]", "not-a-reviewer-token")
        browser.click("#review-reject-all", navigates=True)
        assert "403" in browser.text() and "wrong token" in browser.text()
        assert [state for _v, _d, state in deliveries_of(running.node, uid)].count(DeliveryState.AWAITING_REVIEW) == 2
        # Signed in, the reviewer's views are audited in their name and the form asks for no token.
        browser.goto(page_url)
        browser.type_into('form[action="/signin"] input[name=token]', OTHER_TOKEN)
        browser.click("#sign-in", navigates=True)
        assert browser.url() == page_url and "Signed in as bjones" in browser.text()
        assert browser.evaluate("document.querySelector('form.review input[name=token]') === null")
        browser.type_into("textarea[name=comment]", "Both are normal anatomy.")
        browser.click("#review-reject-all", navigates=True)
        assert browser.url().startswith(page_url)
        assert "decision of bjones recorded: accepted none; rejected 1, 2" in browser.text()
    assert post(f"{page_url}/review", {"action": "accept_all"})[0] == 403  # no token at all
    # "report": a short SR that says every finding was rejected; "nothing": no delivery at all.
    wait_until(lambda: (2, "reviewed", DeliveryState.DELIVERED) in deliveries_of(running.node, uid), timeout=300)
    assert [(v, d) for v, d, _s in deliveries_of(running.node, uid) if v == 2] == [(2, "reviewed")]
    running.reviewed.wait_until_idle()
    got = of_study(running.reviewed.received, study)
    assert [str(ds.SOPClassUID) for ds in got] == [SR_CLASS]
    sr = got[0]
    assert sr.VerificationFlag == "VERIFIED" and sr.VerifyingObserverSequence[0].VerifyingObserverName == "Jones^Bob"
    texts = "\n".join(text for _name, text in report_texts(sr))
    assert "Every AI finding was rejected" in texts and "No anomalous region was found." in texts
    assert "AI-flagged region" not in texts
    assert of_study(running.silent.received, study) == []
    entries = [e for e in read_audit_log(running.node.config.audit_log_path) if e["study_uid"] == uid]
    refused = [e for e in entries if e["action"] == "refused"]
    assert {e["reason"] for e in refused} >= {"wrong token", "no token given"}
    assert all(e["reviewer"] is None for e in refused)
    views = [e["reviewer"] for e in entries if e["action"] == "view"]
    assert None in views and "bjones" in views  # before and after signing in
    assert [e["reviewer"] for e in entries if e["action"] == "signin"] == ["bjones"]
    decision = [e for e in entries if e["action"] == "decision"]
    assert len(decision) == 1 and decision[0]["reviewer"] == "bjones" and decision[0]["rejected"] == [1, 2]
    assert decision[0]["comment"] is True and "normal anatomy" not in json.dumps(entries)


def test_audit_log_is_json_lines_without_patient_data(running: Running) -> None:
    text = running.node.config.audit_log_path.read_text(encoding="utf-8")
    entries = [json.loads(line) for line in text.splitlines()]
    assert entries and all({"time", "reviewer", "study_uid", "action"} <= set(entry) for entry in entries)
    assert {"view", "decision", "refused"} <= {entry["action"] for entry in entries}
    source = running.study_a[0]
    for value in (str(source.get("PatientName", "")), str(source.get("PatientID", ""))):
        if value:
            assert value not in text


def test_evaluate_feedback_prints_precision_and_a_threshold(running: Running, tmp_path: Path) -> None:
    done = run_cli("evaluate", "--feedback", "--config", str(running.config_path), "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Reviewers' decisions: 4 finding(s), 1 accepted." in done.stdout
    assert "patch" in done.stdout and "0.25" in done.stdout  # precision of the one finding type: 1 of 4
    assert "Proposed threshold: " in done.stdout
    saved = json.loads((tmp_path / "feedback.json").read_text())
    assert saved["decided"] == 4 and saved["precision"][0]["precision"] == pytest.approx(0.25)
    assert saved["proposal"]["threshold"] is not None


def test_reference_fit_takes_the_films_whose_findings_were_all_rejected(running: Running, tmp_path: Path) -> None:
    normals = tmp_path / "normals"
    normals.mkdir()
    running.study_a[0].save_as(normals / "a1.dcm", enforce_file_format=True)
    output = tmp_path / "reference.joblib"
    done = run_cli(
        "reference", "fit", str(normals), "--add-rejected", "--output", str(output), "--config", str(running.config_path)
    )
    assert done.returncode == 0, done.stderr
    # Study A's image 2 (its finding rejected) and both of study B's images: 3 films besides a1.
    assert "3 stored film(s) whose every finding a reviewer rejected" in done.stdout
    assert f"{output}: 4 image(s)" in done.stdout
