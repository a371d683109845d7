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


#: Loggers whose messages can quote attribute values (a patient's name, birth date, ...).
REDACTED_LOGGERS = ("py.warnings", "pydicom", "highdicom")


class _RedactLibraryText(logging.Filter):
    """Replace the text of records from :data:`REDACTED_LOGGERS` with where they came from.

    pydicom and highdicom quote attribute values in warnings ("Invalid value for VR ...",
    "... unlikely to represent the intended person name"), and those values can be patient data.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(REDACTED_LOGGERS):
            return True
        origin = f"{record.name}"
        if record.name == "py.warnings":
            # warnings.formatwarning gives "path:line: Category: message\n  source line".
            path, _, rest = record.getMessage().partition(": ")
            origin = f"{rest.split(':', 1)[0] or 'Warning'} at {path}"
        record.msg = "%s (text withheld: it may quote patient data; run with -v to see it)"
        record.args = (origin,)
        record.action = "library.warning"
        return True


def configure_logging(level: str = "INFO", *, verbose: bool = False) -> None:
    """Log to stderr at ``level``; ``verbose`` turns on DEBUG for us and pynetdicom together."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ActionDefault())
    if not verbose:
        handler.addFilter(_RedactLibraryText())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(action)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("miemss_node")
    ours.setLevel("DEBUG" if verbose else level.upper())
    # pynetdicom logs dataset dumps at DEBUG/INFO (patient data): keep it at WARNING unless -v.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if verbose else logging.WARNING)
    logging.captureWarnings(True)
