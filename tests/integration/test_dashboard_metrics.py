"""A running node with its HTTP server: per-destination result types, /metrics, /healthz and the
dashboard (read over HTTP, screenshotted in headless Chromium, retry button with its token).

One node processes one real study (a canine DX whose Patient's Name must never show) for the
whole module; its worker runs in a child process, so the stage durations on /metrics crossed a
process boundary (through the database).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset, dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from miemss_node.config import Destination, HttpSettings, load_config
from miemss_node.node import Node
from miemss_node.queue.models import Delivery, DeliveryState, Result
from miemss_node.web.server import HttpServer
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.net import free_port
from tests.support.paths import shared_file
from tests.support.peers import PacsScp, store_files
from tests.support.tools import tool

SOURCE = "dicom/xray/dx_thorax_canine_fuji_mono1_8bit.dcm"
TOKEN = "test-token-0123456789abcdef"

#: SOP classes of each result type.
KIND_OF_CLASS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
}

#: Where a screenshot is also copied when set (for a person to look at).
SCREENSHOT_ENV = "MIEMSS_DASHBOARD_SCREENSHOT"


@dataclass
class Running:
    """The module's node, its peers and what they saw."""

    node: Node
    base_url: str
    source: Dataset
    modern: PacsScp
    older: PacsScp
    refuser: PacsScp
    accept: list[bool]


def kinds(received: list[Dataset]) -> list[str]:
    return sorted(KIND_OF_CLASS.get(str(ds.SOPClassUID), str(ds.SOPClassUID)) for ds in received)


def wait_until(predicate: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout} s")


def delivery_states(node: Node) -> dict[str, DeliveryState]:
    with node.sessions() as session:
        return {d.destination: d.state for d in session.scalars(select(Delivery))}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("dashboard")
    http_port = free_port()
    (folder / "config.toml").write_text(
        "[node]\nport = 0\nstorage_dir = 'storage'\n[study]\nsettle_seconds = 0.5\n"
        "[worker]\npoll_seconds = 0.2\n[delivery]\npoll_seconds = 0.2\nbackoff_seconds = 0.5\ntimeout_seconds = 10.0\n"
        f"[http]\nport = {http_port}\n",
        encoding="utf-8",
    )
    config = load_config(folder / "config.toml", environ={"MIEMSS_HTTP_TOKEN": TOKEN})
    accept = [False]
    modern, older = PacsScp("MODERN"), PacsScp("OLDER")
    refuser = PacsScp("REFUSER", status_for=lambda _ds: 0x0000 if accept[0] else 0xC000)
    config = replace(
        config,
        destinations=(
            Destination(
                name="modern",
                ae_title="MODERN",
                host="127.0.0.1",
                port=modern.port,
                result_types=("SEG", "SR", "PM", "KO"),
            ),
            Destination(name="older", ae_title="OLDER", host="127.0.0.1", port=older.port, result_types=("SC", "PDF")),
            Destination(name="refuser", ae_title="REFUSER", host="127.0.0.1", port=refuser.port, result_types=("SR",)),
        ),
    )
    node = Node(config)
    node.start()
    try:
        source_path = shared_file(SOURCE)
        assert store_files([source_path], node.port) == [0x0000]
        wait_until(
            lambda: (
                delivery_states(node)
                == {
                    "modern": DeliveryState.DELIVERED,
                    "older": DeliveryState.DELIVERED,
                    "refuser": DeliveryState.FAILED,
                }
                # The worker draws the dashboard's thumbnails once the results are recorded.
                and any(config.node.storage_dir.glob("results/*/job-*/thumbs/index.json"))
            )
        )
        yield Running(
            node=node,
            base_url=f"http://127.0.0.1:{http_port}",
            source=dcmread(source_path),
            modern=modern,
            older=older,
            refuser=refuser,
            accept=accept,
        )
    finally:
        node.stop()
        for peer in (modern, older, refuser):
            peer.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def post(url: str, fields: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers.get("Location", "")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Location", "") or ""


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_each_destination_gets_only_its_result_types(running: Running, tmp_path: Path) -> None:
    with running.node.sessions() as session:
        produced = set(session.scalars(select(Result.kind)))
    # A SEG exists only when the pipeline flagged a region; every other type always exists.
    assert produced - {"SEG"} == {"SR", "SC", "PM", "PDF", "KO"}
    assert kinds(running.modern.received) == sorted(produced & {"SEG", "SR", "PM", "KO"})
    assert kinds(running.older.received) == ["PDF", "SC"]
    assert running.refuser.received == [] and running.refuser.attempts == 1
    for result in running.modern.received + running.older.received:
        assert result.StudyInstanceUID == running.source.StudyInstanceUID
        path = tmp_path / f"{result.SOPInstanceUID}.dcm"
        result.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], KIND_OF_CLASS[str(result.SOPClassUID)]


def test_metrics_count_what_happened_including_the_worker_process(running: Running) -> None:
    status, content_type, body = get(f"{running.base_url}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = metric_samples(body.decode())
    assert samples[("miemss_instances_received_total", (("outcome", "stored"),))] >= 1
    assert samples[("miemss_received_bytes_total", ())] >= running.source.Rows * running.source.Columns
    assert samples[("miemss_associations_total", (("event", "established"),))] >= 1
    assert samples[("miemss_associations_total", (("event", "released"),))] >= 1
    assert samples[("miemss_deliveries_total", (("destination", "modern"), ("outcome", "delivered")))] >= 1
    assert samples[("miemss_deliveries_total", (("destination", "refuser"), ("outcome", "failed")))] >= 1
    assert samples[("miemss_database_up", ())] == 1
    assert samples[("miemss_jobs", (("state", "failed"),))] + samples[("miemss_jobs", (("state", "encoded"),))] >= 1
    assert samples[("miemss_queue_depth", (("queue", "jobs"),))] == 0
    assert samples[("miemss_delivery_states", (("state", "delivered"),))] == 2
    # Recorded by the worker in its child process, read here from the database.
    for stage in ("decode", "enhance", "features", "anomaly", "regions", "encode"):
        assert samples[("miemss_stage_duration_seconds_count", (("stage", stage),))] >= 1, stage
        assert samples[("miemss_stage_duration_seconds_bucket", (("le", "+Inf"), ("stage", stage)))] >= 1


def test_healthz_is_ok_when_receiver_and_database_answer(running: Running) -> None:
    status, content_type, body = get(f"{running.base_url}/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "database": "ok", "receiver": "ok", "disk": "ok"}


def test_healthz_is_503_with_a_reason_when_a_part_does_not_answer(tmp_path: Path) -> None:
    broken = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'missing' / 'folder' / 'x.db'}"))
    server = HttpServer(HttpSettings(port=0), broken, tmp_path, receiver_problem=lambda: "receiver not running")
    server.start()
    try:
        status, _, body = get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()
        broken.kw["bind"].dispose()
    reply = json.loads(body)
    assert status == 503 and reply["status"] == "unavailable"
    assert "database did not answer (OperationalError)" in reply["reason"] and "receiver not running" in reply["reason"]


def test_dashboard_lists_the_study_by_uid_and_no_patient_data(running: Running) -> None:
    status, content_type, body = get(f"{running.base_url}/")
    page = body.decode()
    uid = str(running.source.StudyInstanceUID)
    assert status == 200 and content_type.startswith("text/html")
    assert uid in page
    _, _, study_page = get(f"{running.base_url}/studies/{uid}")
    for html in (page, study_page.decode()):
        assert "AVeryGood" not in html and str(running.source.PatientID) not in html
    study_html = study_page.decode()
    for expected in ("received", "queued", "running", "encoded", "delivered", "Narrative Summary", "anomalous region"):
        assert expected in study_html, expected
    assert 'action="/deliveries/' in study_html and 'name="token"' in study_html
    thumbs = [part.split('"')[0] for part in study_html.split('src="')[1:]]
    assert any(t.endswith("-overlay.png") for t in thumbs) and any(t.endswith("-heatmap.png") for t in thumbs)
    for thumb in thumbs:
        status, content_type, png = get(f"{running.base_url}{thumb}")
        assert (status, content_type, png[:8]) == (200, "image/png", b"\x89PNG\r\n\x1a\n")


def test_dashboard_screenshot_in_headless_chromium(running: Running, tmp_path: Path) -> None:
    chromium = tool("chromium", "chromium", "chromium-browser")
    uid = str(running.source.StudyInstanceUID)
    for name, url in (("index", f"{running.base_url}/"), ("study", f"{running.base_url}/studies/{uid}")):
        shot = tmp_path / f"{name}.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                "--window-size=1280,900",
                url,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        with Image.open(shot) as image:
            assert image.size == (1280, 900)
            pixels = np.asarray(image.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{name} screenshot looks blank"
        assert pixels.std() > 10
        if name == "study" and os.environ.get(SCREENSHOT_ENV):
            shutil.copy(shot, os.environ[SCREENSHOT_ENV])


def test_retry_button_needs_the_token_then_delivers(running: Running) -> None:
    with running.node.sessions() as session:
        failed = session.scalars(select(Delivery).where(Delivery.destination == "refuser")).one()
    url = f"{running.base_url}/deliveries/{failed.id}/retry"
    assert post(url, {"token": "not-the-token-at-all"})[0] == 403
    assert delivery_states(running.node)["refuser"] is DeliveryState.FAILED
    running.accept[0] = True
    status, location = post(url, {"token": TOKEN})
    assert status == 303 and location.startswith(f"/studies/{running.source.StudyInstanceUID}")
    running.refuser.wait_for(lambda got: kinds(got) == ["SR"], timeout=60)
    wait_until(lambda: delivery_states(running.node)["refuser"] is DeliveryState.DELIVERED, timeout=30)
    assert post(url, {"token": TOKEN})[0] == 409  # nothing to retry any more
    samples = metric_samples(get(f"{running.base_url}/metrics")[2].decode())
    assert samples[("miemss_dashboard_retries_total", ())] >= 1


def test_without_a_token_the_button_is_disabled_and_patient_data_only_when_enabled(running: Running) -> None:
    storage = running.node.config.node.storage_dir
    plain = HttpServer(HttpSettings(port=0), running.node.sessions, storage, receiver_problem=lambda: None)
    revealing = HttpServer(
        HttpSettings(port=0, show_patient_data=True), running.node.sessions, storage, receiver_problem=lambda: None
    )
    plain.start()
    revealing.start()
    try:
        with running.node.sessions() as session:
            delivery = session.scalars(select(Delivery).where(Delivery.destination == "older")).one()
        status, _ = post(f"http://127.0.0.1:{plain.port}/deliveries/{delivery.id}/retry", {"token": ""})
        assert status == 403
        shown = get(f"http://127.0.0.1:{revealing.port}/")[2].decode()
        hidden = get(f"http://127.0.0.1:{plain.port}/")[2].decode()
    finally:
        plain.stop()
        revealing.stop()
    assert "AVeryGood" in shown and "AVeryGood" not in hidden


def test_unknown_paths_and_bad_uids_are_404(running: Running) -> None:
    for path in (
        "/nope",
        "/studies/1.2.3",
        "/studies/../../etc/passwd",
        "/thumbs/1/../../miemss.db",
        "/thumbs/999/image-1-overlay.png",
    ):
        assert get(f"{running.base_url}{path}")[0] == 404, path


def test_retry_button_is_disabled_without_a_token(tmp_path: Path) -> None:
    from miemss_node.web.dashboard import Dashboard

    failed = Delivery(id=7, destination="pacs", state=DeliveryState.FAILED, attempts=3, last_error="refused")
    without = Dashboard(HttpSettings(), tmp_path)._delivery_row(failed)
    with_token = Dashboard(HttpSettings(token=TOKEN), tmp_path)._delivery_row(failed)
    assert "disabled" in without and "<form" not in without
    assert 'action="/deliveries/7/retry"' in with_token and TOKEN not in with_token
