"""The one clock of the node: naive UTC datetimes, as every database column stores them."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (SQLite keeps no time zone; PostgreSQL columns are naive too)."""
    return datetime.now(UTC).replace(tzinfo=None)
