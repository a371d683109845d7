"""The node's HTTP server (standard library ``http.server``, one thread per request).

Routes:

- ``GET /metrics``: Prometheus text exposition (:mod:`miemss_node.metrics`).
- ``GET /healthz``: 200 ``{"status": "ok", ...}`` when the receiver and the database answer,
  else 503 with ``"reason"``.
- ``GET /``, ``GET /studies/<Study Instance UID>``, ``GET /thumbs/<job id>/<name>.png``: the
  dashboard (:mod:`miemss_node.web.dashboard`).
- ``POST /deliveries/<id>/retry`` with form field ``token``: make a failed delivery pending again;
  403 without the right ``[http] token`` (and always when none is configured).

Plain HTTP: keep ``[http] host`` on loopback (the default) or put a TLS proxy in front, since the
token travels in the request body.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import HttpSettings
from miemss_node.metrics import DASHBOARD_RETRIES, database_registry, exposition
from miemss_node.queue import repository
from miemss_node.queue.models import Job
from miemss_node.web.dashboard import Dashboard, page
from miemss_node.web.health import database_problem

logger = logging.getLogger(__name__)

_STUDY_PATH = re.compile(r"^/studies/([0-9.]{1,64})$")
_THUMB_PATH = re.compile(r"^/thumbs/([0-9]{1,12})/(image-[0-9]{1,6}-(?:overlay|heatmap)\.png)$")
_RETRY_PATH = re.compile(r"^/deliveries/([0-9]{1,12})/retry$")

#: Largest request body read (the retry form), in bytes.
MAX_BODY_BYTES = 4096

#: Headers of every response: no scripts, no framing, nothing fetched from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class HttpServer:
    """Serves metrics, health and the dashboard in a background thread.

    Parameters
    ----------
    settings
        ``[http]``; ``port`` 0 here binds an ephemeral port (the node itself starts no server then).
    sessions
        The node's database sessions.
    storage_dir
        Where results and thumbnails are.
    receiver_problem
        Returns None when the receiver answers, else why not.
    """

    def __init__(
        self,
        settings: HttpSettings,
        sessions: sessionmaker[Session],
        storage_dir: Path,
        receiver_problem: Callable[[], str | None],
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dashboard = Dashboard(settings, storage_dir)
        self.receiver_problem = receiver_problem
        self.metrics_registry = database_registry(sessions)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (useful when an ephemeral one was asked for)."""
        if self._server is None:
            raise RuntimeError("the HTTP server is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread."""
        server = ThreadingHTTPServer((self.settings.host, self.settings.port), _Handler)
        server.daemon_threads = True
        server.app = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        self._thread.start()
        logger.info(
            "HTTP server on %s:%d (metrics, health, dashboard)",
            self.settings.host,
            self.port,
            extra={"action": "http.listening", "port": self.port},
        )

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        logger.info("HTTP server stopped", extra={"action": "http.stopped"})

    def health(self) -> tuple[int, dict[str, str]]:
        """The /healthz status code and body."""
        problems = {"database": database_problem(self.sessions), "receiver": self.receiver_problem()}
        body = {part: problem or "ok" for part, problem in problems.items()}
        failing = [problem for problem in problems.values() if problem]
        if failing:
            body["status"] = "unavailable"
            body["reason"] = "; ".join(failing)
            return HTTPStatus.SERVICE_UNAVAILABLE, body
        body["status"] = "ok"
        return HTTPStatus.OK, body

    def retry(self, delivery_id: int, token: str) -> tuple[int, str, str]:
        """Check the token and retry a failed delivery: (status, message, study UID or "")."""
        expected = self.settings.token
        if not expected:
            return HTTPStatus.FORBIDDEN, "retries are disabled: set [http] token in the config", ""
        if not hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8")):
            logger.warning(
                "dashboard retry of delivery %d refused: wrong token",
                delivery_id,
                extra={"action": "dashboard.retry_refused", "delivery_id": delivery_id},
            )
            return HTTPStatus.FORBIDDEN, "wrong token", ""
        with self.sessions.begin() as session:
            delivery = repository.retry_delivery(session, delivery_id=delivery_id, now=utcnow())
            if delivery is None:
                return HTTPStatus.CONFLICT, f"delivery {delivery_id} does not exist or has not failed", ""
            job = session.get_one(Job, delivery.job_id)
            study_uid = repository.study_of_job(session, job).study_instance_uid
            destination, job_id = delivery.destination, delivery.job_id
        logger.info(
            "delivery %d of job %d to %s queued again from the dashboard",
            delivery_id,
            job_id,
            destination,
            extra={
                "action": "dashboard.retry",
                "delivery_id": delivery_id,
                "job_id": job_id,
                "destination": destination,
            },
        )
        DASHBOARD_RETRIES.inc()
        return HTTPStatus.SEE_OTHER, f"delivery to {destination} queued again", study_uid


class _Handler(BaseHTTPRequestHandler):
    """One request; the application is ``self.server.app``."""

    server_version = "MIEMSS"
    sys_version = ""

    @property
    def app(self) -> HttpServer:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:
        """Requests go to our logger at DEBUG, never to stderr."""
        logger.debug("http: " + format, *args, extra={"action": "http.request"})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, body: bytes) -> None:
        self._send(status, body, "text/html; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._html(status, page(f"{status}", f"<h1>{int(status)}</h1><p>{escape(message)}</p>"))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                self._send(HTTPStatus.OK, exposition(self.app.metrics_registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz":
                status, body = self.app.health()
                self._send(status, json.dumps(body).encode("utf-8"), "application/json")
            elif url.path == "/":
                with self.app.sessions() as session:
                    self._html(HTTPStatus.OK, self.app.dashboard.index(session))
            elif match := _STUDY_PATH.match(url.path):
                notice = parse_qs(url.query).get("notice", [""])[0][:200]
                with self.app.sessions() as session:
                    study = repository.study_by_uid(session, match.group(1))
                    if study is None:
                        self._error(HTTPStatus.NOT_FOUND, "No such study.")
                        return
                    self._html(HTTPStatus.OK, self.app.dashboard.study(session, study, notice=notice))
            elif match := _THUMB_PATH.match(url.path):
                with self.app.sessions() as session:
                    path = self.app.dashboard.thumbnail_path(session, int(match.group(1)), match.group(2))
                if path is None or not path.is_file():
                    self._error(HTTPStatus.NOT_FOUND, "No such thumbnail.")
                    return
                self._send(HTTPStatus.OK, path.read_bytes(), "image/png")
            else:
                self._error(HTTPStatus.NOT_FOUND, "Not found.")
        except SQLAlchemyError as exc:
            logger.warning(
                "http: database unavailable for %s (%s)",
                url.path,
                type(exc).__name__,
                extra={"action": "http.db_error"},
            )
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "The database did not answer.")
        except Exception:  # noqa: BLE001 - a page's bug answers 500 and is logged, never kills the server
            logger.exception("http: %s failed", url.path, extra={"action": "http.error"})
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "The page could not be made; see the node's log.")

    def do_POST(self) -> None:
        match = _RETRY_PATH.match(urlsplit(self.path).path)
        if match is None:
            self._error(HTTPStatus.NOT_FOUND, "Not found.")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, "Bad request body.")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", errors="replace"))
        try:
            status, message, study_uid = self.app.retry(int(match.group(1)), form.get("token", [""])[0])
        except SQLAlchemyError:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "The database did not answer.")
            return
        if status == HTTPStatus.SEE_OTHER:
            location = f"/studies/{study_uid}?notice={quote(message)}"
            self._send(status, b"", "text/plain", {"Location": location})
            return
        self._error(status, message)
