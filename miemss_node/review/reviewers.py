"""Reviewers' tokens: made at random, stored only as a SHA-256, recognised in constant time.

A token is 32 random bytes (URL-safe text), so an unsalted SHA-256 cannot be reversed by guessing;
a slow password hash would only slow every request down. The config holds the hash only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from miemss_node.config import Reviewer

#: Random bytes in a new token.
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as ``[[reviewers]] token_sha256`` stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token for a reviewer."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def reviewer_for_token(reviewers: Iterable[Reviewer], token: str) -> Reviewer | None:
    """The reviewer whose token this is, or None (an empty token never matches).

    Every reviewer's hash is compared, in constant time, so the answer's timing does not say which
    reviewer came close.
    """
    if not token:
        return None
    presented = hash_token(token).encode("ascii")
    found = None
    for reviewer in reviewers:
        if hmac.compare_digest(presented, reviewer.token_sha256.lower().encode("ascii")):
            found = reviewer
    return found


def reviewer_named(reviewers: Iterable[Reviewer], name: str) -> Reviewer | None:
    """The configured reviewer of this name, or None."""
    return next((reviewer for reviewer in reviewers if reviewer.name == name), None)


def reviewer_table(name: str, person_name: str, token: str) -> str:
    """The ``[[reviewers]]`` TOML table for a new reviewer (the token's hash, not the token)."""
    return (
        "[[reviewers]]\n"
        f'name = "{name}"\n'
        f'person_name = "{person_name}"\n'
        f'token_sha256 = "{hash_token(token)}"\n'
    )
