"""The node's HTTP server: a WSGI application served by waitress.

Routes:

- ``GET /metrics``: Prometheus text exposition (:mod:`miemss_node.metrics`).
- ``GET /healthz``: 200 ``{"status": "ok", ...}`` when the receiver, the database and the storage
  disk are fine, else 503 with ``"reason"`` (``"disk: ..."`` when the disk is below
  ``[node] min_free_disk_mb``).
- ``GET /``, ``GET /studies/<Study Instance UID>``, ``GET /thumbs/<job id>/<name>.png``: the
  dashboard (:mod:`miemss_node.web.dashboard`).
- ``POST /deliveries/<id>/retry`` with form field ``token``: make a failed delivery pending again;
  403 without a reviewer's token or the right ``[http] token`` (and always when neither is configured).
- ``POST /studies/<Study Instance UID>/review`` with form fields ``token`` (a reviewer's), ``action``
  (``decide``, ``accept_all`` or ``reject_all``), ``finding-N`` (``accept`` or ``reject``, for
  ``decide``) and ``comment``: record the decision (:mod:`miemss_node.review.decide`). 403 without
  a reviewer's token, 409 when nothing awaits review or the decision does not cover every finding.
  Every study page view and every review request, refused ones included, goes to the audit log.
- ``POST /signin`` with ``token`` and ``next`` (a dashboard path): a reviewer's token becomes the
  HttpOnly, SameSite=Strict cookie :data:`REVIEWER_COOKIE`, so their page views are audited in their
  name and their review form needs no token; ``POST /signout`` removes it.

waitress reads requests in one event loop and hands only complete requests to its threads, so
slow or idle clients cost a socket, not a thread; it closes connections idle for
``[http] idle_timeout_seconds``, accepts at most ``[http] max_connections`` at once, and refuses
headers and bodies over :data:`MAX_HEADER_BYTES` and :data:`MAX_BODY_BYTES` (431, 413). The
standard library's ``http.server`` has none of these (a thread per connection, blocking reads).

Plain HTTP: keep ``[http] host`` on loopback (the default) or put a TLS proxy in front, since the
token travels in the request body.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from html import escape
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.config import HttpSettings, Reviewer
from miemss_node.errors import ReviewError
from miemss_node.metrics import DASHBOARD_RETRIES, database_registry, exposition
from miemss_node.queue import repository
from miemss_node.queue.models import Job
from miemss_node.review.audit import AuditLog
from miemss_node.review.decide import record_decision
from miemss_node.review.reviewers import reviewer_for_token
from miemss_node.web.dashboard import Dashboard, page
from miemss_node.web.health import database_problem

logger = logging.getLogger(__name__)

_STUDY_PATH = re.compile(r"^/studies/([0-9.]{1,64})$")
_THUMB_PATH = re.compile(r"^/thumbs/([0-9]{1,12})/(image-[0-9]{1,6}-(?:overlay|heatmap)\.png)$")
_RETRY_PATH = re.compile(r"^/deliveries/([0-9]{1,12})/retry$")
_REVIEW_PATH = re.compile(r"^/studies/([0-9.]{1,64})/review$")
_FINDING_FIELD = re.compile(r"^finding-([0-9]{1,6})$")
#: Where sign-in and sign-out may send the browser back to: a dashboard page, nothing else.
_NEXT_PATH = re.compile(r"^/(?:studies/([0-9.]{1,64}))?$")

#: The cookie holding a signed-in reviewer's token (sent only to this server, never to scripts).
REVIEWER_COOKIE = "miemss_reviewer"

#: How long a sign-in lasts, in seconds (a working day).
SIGN_IN_SECONDS = 8 * 3600

#: Largest request body read (the retry form), in bytes.
MAX_BODY_BYTES = 4096

#: Largest request line plus headers, in bytes.
MAX_HEADER_BYTES = 16384

#: Threads answering complete requests.
HTTP_THREADS = 4

#: Headers of every response: no scripts, no framing, nothing fetched from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: A response: status, body, content type and extra headers.
Response = tuple[int, bytes, str, dict[str, str]]


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
    disk_problem
        Returns None when the storage disk has room, else why not (no check when omitted).
    reviewers
        ``[[reviewers]]``: whose tokens the review and retry forms accept.
    audit_log
        The review audit log's file (``Config.audit_log_path``); default ``<storage_dir>/review-audit.jsonl``.
    max_attempts
        ``[worker] max_attempts`` of the job a decision queues.
    """

    def __init__(
        self,
        settings: HttpSettings,
        sessions: sessionmaker[Session],
        storage_dir: Path,
        receiver_problem: Callable[[], str | None],
        disk_problem: Callable[[], str | None] | None = None,
        *,
        reviewers: tuple[Reviewer, ...] = (),
        audit_log: Path | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reviewers = reviewers
        self.audit = AuditLog(audit_log or storage_dir / "review-audit.jsonl")
        self.max_attempts = max_attempts
        self.dashboard = Dashboard(settings, storage_dir, reviewers=bool(reviewers))
        self.receiver_problem = receiver_problem
        self.disk_problem = disk_problem or (lambda: None)
        self.metrics_registry = database_registry(sessions)
        #: waitress's socket map: ours, so ``stop`` can close every connection.
        self._map: dict[int, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served (useful when an ephemeral one was asked for)."""
        if self._server is None:
            raise RuntimeError("the HTTP server is not running")
        return int(self._server.effective_port)

    def start(self) -> None:
        """Bind and serve in a background thread."""
        from waitress.server import create_server

        idle = max(1, round(self.settings.idle_timeout_seconds))
        self._server = create_server(
            self.wsgi,
            map=self._map,
            host=self.settings.host,
            port=self.settings.port,
            threads=HTTP_THREADS,
            connection_limit=self.settings.max_connections,
            channel_timeout=idle,
            cleanup_interval=max(1, idle // 2),
            max_request_header_size=MAX_HEADER_BYTES,
            max_request_body_size=MAX_BODY_BYTES,
            ident="MIEMSS",
            expose_tracebacks=False,
        )
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        logger.info(
            "HTTP server on %s:%d (metrics, health, dashboard)",
            self.settings.host,
            self.port,
            extra={"action": "http.listening", "port": self.port},
        )

    def stop(self) -> None:
        """Stop serving: close the listening socket and every connection, end the threads."""
        if self._server is None:
            return
        server, self._server = self._server, None

        def close_everything() -> None:
            # Runs in waitress's loop thread (closing sockets from another thread races its select):
            # with every channel closed, the listening socket and the trigger included, the loop ends.
            for channel in list(self._map.values()):
                channel.close()

        try:
            server.trigger.pull_trigger(close_everything)
        except OSError:
            # The loop has already ended and closed its trigger: nothing races us any more.
            close_everything()
        server.task_dispatcher.shutdown()
        if self._thread is not None:
            self._thread.join(10)
        logger.info("HTTP server stopped", extra={"action": "http.stopped"})

    def health(self) -> tuple[int, dict[str, str]]:
        """The /healthz status code and body."""
        problems = {
            "database": database_problem(self.sessions),
            "receiver": self.receiver_problem(),
            "disk": self.disk_problem(),
        }
        body = {part: problem or "ok" for part, problem in problems.items()}
        failing = [problem for problem in problems.values() if problem]
        if failing:
            body["status"] = "unavailable"
            body["reason"] = "; ".join(failing)
            return HTTPStatus.SERVICE_UNAVAILABLE, body
        body["status"] = "ok"
        return HTTPStatus.OK, body

    def retry(self, delivery_id: int, token: str) -> tuple[int, str, str]:
        """Check the token and retry a failed delivery: (status, message, study UID or "").

        A reviewer's token or ``[http] token`` (the operator's, without a name) is accepted.
        """
        expected = self.settings.token
        if not expected and not self.reviewers:
            return HTTPStatus.FORBIDDEN, "retries are disabled: set [http] token or [[reviewers]] in the config", ""
        operator = bool(expected) and hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))
        if not operator and reviewer_for_token(self.reviewers, token) is None:
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

    def review(self, study_uid: str, form: dict[str, list[str]], cookie_token: str = "") -> tuple[int, str]:
        """Check the reviewer's token (the form's, else the sign-in cookie's) and record their decision:
        (status, message).

        Every outcome is audited: a refusal (no or wrong token: 403; a decision that cannot be
        recorded: 409) with the reason, a decision with the finding numbers.
        """
        token = form.get("token", [""])[0] or cookie_token
        reviewer = reviewer_for_token(self.reviewers, token)
        if reviewer is None:
            reason = "no token given" if not token else "wrong token"
            if not self.reviewers:
                reason = "no reviewer configured"
            self.audit.write(action="refused", study_uid=study_uid, reviewer=None, via="dashboard", reason=reason)
            return HTTPStatus.FORBIDDEN, f"review refused: {reason}"
        action = form.get("action", ["decide"])[0]
        choices: dict[int, bool] | None = None
        accept: bool | None = None
        if action == "accept_all":
            accept = True
        elif action == "reject_all":
            accept = False
        elif action == "decide":
            choices = {}
            for name, values in form.items():
                if (match := _FINDING_FIELD.match(name)) and values[0] in ("accept", "reject"):
                    choices[int(match.group(1))] = values[0] == "accept"
        else:
            return HTTPStatus.BAD_REQUEST, f"unknown action {action[:20]!r}"
        try:
            decision = record_decision(
                self.sessions,
                self.audit,
                study_uid=study_uid,
                reviewer=reviewer,
                via="dashboard",
                max_attempts=self.max_attempts,
                comment=form.get("comment", [""])[0],
                choices=choices,
                accept=accept,
            )
        except ReviewError as exc:
            return HTTPStatus.CONFLICT, str(exc)
        accepted = ", ".join(str(n) for n in decision.accepted) or "none"
        rejected = ", ".join(str(n) for n in decision.rejected) or "none"
        return (
            HTTPStatus.SEE_OTHER,
            f"decision of {reviewer.name} recorded: accepted {accepted}; rejected {rejected}; "
            f"job {decision.review_job_id} encodes the reviewed version",
        )


    def sign_in(self, form: dict[str, list[str]]) -> Response:
        """A reviewer's token becomes the sign-in cookie; a wrong one is refused (403) and audited."""
        back = form.get("next", ["/"])[0]
        match = _NEXT_PATH.match(back)
        back, study_uid = (back, match.group(1) or "") if match else ("/", "")
        token = form.get("token", [""])[0]
        reviewer = reviewer_for_token(self.reviewers, token)
        if reviewer is None:
            reason = "sign-in: no token given" if not token else "sign-in: wrong token"
            self.audit.write(action="refused", study_uid=study_uid, reviewer=None, via="dashboard", reason=reason)
            return _error(HTTPStatus.FORBIDDEN, reason)
        self.audit.write(action="signin", study_uid=study_uid, reviewer=reviewer.name, via="dashboard")
        cookie = f"{REVIEWER_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SIGN_IN_SECONDS}"
        return HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": back, "Set-Cookie": cookie}

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application."""
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method in ("GET", "HEAD"):
            status, body, content_type, headers = self._get(path, environ.get("QUERY_STRING", ""), _cookie_token(environ))
        elif method == "POST":
            status, body, content_type, headers = self._post(path, environ)
        else:
            status, body, content_type, headers = _error(HTTPStatus.METHOD_NOT_ALLOWED, "Method not allowed.")
        reason = HTTPStatus(status).phrase
        response_headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        response_headers += list({**SECURITY_HEADERS, **headers}.items())
        start_response(f"{int(status)} {reason}", response_headers)
        return [b"" if method == "HEAD" else body]

    def _get(self, path: str, query: str, cookie_token: str = "") -> Response:
        try:
            if path == "/metrics":
                return HTTPStatus.OK, exposition(self.metrics_registry), CONTENT_TYPE_LATEST, {}
            if path == "/healthz":
                status, body = self.health()
                return status, json.dumps(body).encode("utf-8"), "application/json", {}
            if path == "/":
                with self.sessions() as session:
                    return _html(HTTPStatus.OK, self.dashboard.index(session))
            if match := _STUDY_PATH.match(path):
                notice = parse_qs(query).get("notice", [""])[0][:200]
                reviewer = reviewer_for_token(self.reviewers, cookie_token)
                name = None if reviewer is None else reviewer.name
                with self.sessions() as session:
                    study = repository.study_by_uid(session, match.group(1))
                    if study is None:
                        return _error(HTTPStatus.NOT_FOUND, "No such study.")
                    html = self.dashboard.study(session, study, notice=notice, reviewer=name)
                # The page is read without a token too: a view names its reviewer when one signed in.
                self.audit.write(action="view", study_uid=match.group(1), reviewer=name, via="dashboard")
                return _html(HTTPStatus.OK, html)
            if match := _THUMB_PATH.match(path):
                with self.sessions() as session:
                    found = self.dashboard.thumbnail_path(session, int(match.group(1)), match.group(2))
                if found is None or not found.is_file():
                    return _error(HTTPStatus.NOT_FOUND, "No such thumbnail.")
                return HTTPStatus.OK, found.read_bytes(), "image/png", {}
            return _error(HTTPStatus.NOT_FOUND, "Not found.")
        except SQLAlchemyError as exc:
            logger.warning(
                "http: database unavailable for %s (%s)", path, type(exc).__name__, extra={"action": "http.db_error"}
            )
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "The database did not answer.")
        except Exception:
            logger.exception("http: %s failed", path, extra={"action": "http.error"})
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "The page could not be made; see the node's log.")

    def _post(self, path: str, environ: dict[str, Any]) -> Response:
        match = _RETRY_PATH.match(path)
        review = _REVIEW_PATH.match(path)
        if match is None and review is None and path not in ("/signin", "/signout"):
            return _error(HTTPStatus.NOT_FOUND, "Not found.")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            return _error(HTTPStatus.BAD_REQUEST, "Bad request body.")
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", errors="replace"))
        if path == "/signin":
            return self.sign_in(form)
        if path == "/signout":
            back = form.get("next", ["/"])[0]
            location = back if _NEXT_PATH.match(back) else "/"
            cookie = f"{REVIEWER_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
            return HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": location, "Set-Cookie": cookie}
        if review is not None:
            study_uid = review.group(1)
            try:
                status, message = self.review(study_uid, form, _cookie_token(environ))
            except SQLAlchemyError:
                return _error(HTTPStatus.SERVICE_UNAVAILABLE, "The database did not answer.")
            if status == HTTPStatus.SEE_OTHER:
                return status, b"", "text/plain", {"Location": f"/studies/{study_uid}?notice={quote(message)}"}
            return _error(status, message)
        assert match is not None
        try:
            status, message, study_uid = self.retry(int(match.group(1)), form.get("token", [""])[0])
        except SQLAlchemyError:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "The database did not answer.")
        if status == HTTPStatus.SEE_OTHER:
            return status, b"", "text/plain", {"Location": f"/studies/{study_uid}?notice={quote(message)}"}
        return _error(status, message)


def _cookie_token(environ: dict[str, Any]) -> str:
    """The token of the sign-in cookie, or "" (also for a malformed Cookie header)."""
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return ""
    morsel = cookies.get(REVIEWER_COOKIE)
    return "" if morsel is None else morsel.value


def _html(status: int, body: bytes) -> Response:
    return status, body, "text/html; charset=utf-8", {}


def _error(status: int, message: str) -> Response:
    return _html(status, page(f"{status}", f"<h1>{int(status)}</h1><p>{escape(message)}</p>"))
