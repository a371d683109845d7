"""Whether the node's parts answer: the database (a query) and the receiver (a C-ECHO)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.queue import repository

logger = logging.getLogger(__name__)

#: Calling AE title of the health probe's C-ECHO.
HEALTH_AET = "MIEMSS-HEALTH"


def database_problem(sessions: sessionmaker[Session]) -> str | None:
    """None when the database answers a query, else why not (the exception's class, no details)."""
    try:
        with sessions() as session:
            repository.check_database(session)
    except SQLAlchemyError as exc:
        return f"database did not answer ({type(exc).__name__})"
    return None


def echo_problem(host: str, port: int, called_aet: str, *, timeout_seconds: float = 5.0) -> str | None:
    """None when the receiver at ``host:port`` answers an association, else why not.

    A C-ECHO answered with Success is healthy; so is an association the receiver rejects (an
    allow-list of calling AE titles that leaves out the probe's): either way the receiver answered.

    Parameters
    ----------
    host, port, called_aet
        The receiver.
    timeout_seconds
        ACSE, DIMSE and network timeout of the probe.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=HEALTH_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    ae.add_requested_context(Verification)
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    assoc = ae.associate(probe_host, port, ae_title=called_aet)
    if assoc.is_rejected:
        return None
    if not assoc.is_established:
        return f"receiver {called_aet}@{probe_host}:{port} did not answer an association"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" in status and int(status.Status) == 0:
        return None
    return f"receiver {called_aet}@{probe_host}:{port} did not answer C-ECHO with Success"
