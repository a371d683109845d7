"""Whether the node's parts answer: the database (a query); the receiver's probe is ``miemss_node.probe``."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.queue import repository

logger = logging.getLogger(__name__)


def database_problem(sessions: sessionmaker[Session]) -> str | None:
    """None when the database answers a query, else why not (the exception's class, no details)."""
    try:
        with sessions() as session:
            repository.check_database(session)
    except SQLAlchemyError as exc:
        return f"database did not answer ({type(exc).__name__})"
    return None
