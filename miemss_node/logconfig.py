"""The only place that installs log handlers and formats.

Every record carries an ``action`` (``receive.stored``, ``job.encoded``, ``send.delivered``, ...);
the format prints it, so a log line can be grepped by what happened. Records identify work by
UIDs and job ids, never by patient data.
"""

from __future__ import annotations

import logging
import sys


class _ActionDefault(logging.Filter):
    """Give records from libraries an ``action`` so the format never fails."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "action"):
            record.action = record.name
        return True


def configure_logging(level: str = "INFO", *, verbose: bool = False) -> None:
    """Log to stderr at ``level``; ``verbose`` turns on DEBUG for us and pynetdicom together."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ActionDefault())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(action)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("miemss_node")
    ours.setLevel("DEBUG" if verbose else level.upper())
    # pynetdicom logs dataset dumps at DEBUG/INFO (patient data): keep it at WARNING unless -v.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if verbose else logging.WARNING)
