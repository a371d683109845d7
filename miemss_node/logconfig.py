"""The only place that installs log handlers and formats.

Every record carries an ``action`` (``receive.stored``, ``job.encoded``, ``send.delivered``, ...);
the format prints it, so a log line can be grepped by what happened. Records identify work by
UIDs and job ids, never by patient data.

Two formats (``[logging] format``): ``text``, one line of time, level, action and message; and
``json``, one JSON object per line with ``time``, ``level``, ``action``, ``logger`` and ``message``
plus the record's extra fields (``job_id``, ``study_uid``, ``sop_instance_uid``, ...), for log
collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


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


#: The logger of pydicom's pixel decoding (``pydicom/pixels/decoders/base.py``), pydicom 3.
PIXEL_DECODER_LOGGER = "pydicom.pixels.decoders.base"


class _DecoderFallbackToDebug(logging.Filter):
    """Log a pixel decoder that failed before another one was tried at DEBUG, not ERROR.

    pydicom tries its decoding plugins in turn (GDCM first, which cannot read 12-bit JPEG Extended)
    and logs each failure with ``LOGGER.exception``, although the next plugin may well succeed.
    Whether the image could be decoded at all is our decode stage's to say (``DecodeError``): the
    worker logs an image that nothing decodes at ERROR, ``process`` names it and exits 2.
    """

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != "_decode_frame" or record.levelno < logging.ERROR:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.action = "decode.plugin_fallback"
        record.msg, record.args = "a pixel decoder failed; the next one is tried: %s", (record.msg,)
        return self.verbose


#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, action, logger, message, extras.

    The extra fields of a record (``extra={"job_id": ...}``) become keys of their own; they never
    replace the fixed keys. Values JSON cannot hold are written as ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "action": getattr(record, "action", record.name),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


#: Values of ``[logging] format``, and the formatter each one installs.
FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "text": lambda: logging.Formatter("%(asctime)s %(levelname)s %(action)s %(message)s"),
    "json": JsonLinesFormatter,
}


def configure_logging(level: str = "INFO", *, verbose: bool = False, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``).

    ``verbose`` turns on DEBUG for us and pynetdicom together, and shows library texts.

    Raises
    ------
    ValueError
        When ``log_format`` is not a key of :data:`FORMATTERS`.
    """
    if log_format not in FORMATTERS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATTERS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ActionDefault())
    if not verbose:
        handler.addFilter(_RedactLibraryText())
    handler.setFormatter(FORMATTERS[log_format]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("miemss_node")
    ours.setLevel("DEBUG" if verbose else level.upper())
    # pynetdicom logs dataset dumps at DEBUG/INFO (patient data): keep it at WARNING unless -v.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if verbose else logging.WARNING)
    pydicom_logger = logging.getLogger(PIXEL_DECODER_LOGGER)
    for old in [f for f in pydicom_logger.filters if isinstance(f, _DecoderFallbackToDebug)]:
        pydicom_logger.removeFilter(old)
    pydicom_logger.addFilter(_DecoderFallbackToDebug(verbose=verbose))
    logging.captureWarnings(True)
