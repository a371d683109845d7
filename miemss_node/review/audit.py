"""The review audit log: one JSON object per line for every study page view and every decision.

Each line has ``time`` (UTC, ISO 8601), ``reviewer`` (the configured name, or null when no valid
token was given: a view by someone not signed in, a refused request), ``study_uid`` and ``action`` (``view``, ``signin``, ``decision``, ``refused``), plus details
that carry no patient data: finding numbers, counts, the channel (``dashboard`` or ``cli``) and why
a request was refused. A reviewer's comment is free text that may name the patient, so only
whether there was one is logged; the comment itself goes into the reviewed SR.

Lines are appended with one ``write`` to a file opened with ``O_APPEND``, so the node's HTTP threads
and a ``miemss-node review`` process can write to the same file without interleaving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from miemss_node.clock import utcnow

logger = logging.getLogger(__name__)

#: Keys an entry may carry besides time, reviewer, study_uid and action (nothing else is written).
DETAIL_KEYS = frozenset({"via", "accepted", "rejected", "comment", "reason", "job_id", "review_job_id", "path"})


class AuditLog:
    """Appends audit entries to a JSON-lines file (created with mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, *, action: str, study_uid: str, reviewer: str | None, **details: Any) -> None:
        """Append one entry; an unknown detail key is a programming error (it could leak data)."""
        unknown = set(details) - DETAIL_KEYS
        if unknown:
            raise ValueError(f"audit details {sorted(unknown)} are not allowed")
        entry = {
            "time": utcnow().isoformat(timespec="milliseconds") + "Z",
            "reviewer": reviewer,
            "study_uid": study_uid,
            "action": action,
            **details,
        }
        line = (json.dumps(entry, sort_keys=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        logger.info(
            "audit: %s of study %s by %s",
            action,
            study_uid,
            reviewer or "(no reviewer)",
            extra={"action": f"audit.{action}", "study_uid": study_uid, "reviewer": reviewer},
        )


def read_audit_log(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log, oldest first ([] when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
