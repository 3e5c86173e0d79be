"""Rules for credentials that both the listener's settings and the outputs' configs check."""

from __future__ import annotations

__all__ = ["basic_auth_username"]


def basic_auth_username(value: str) -> str:
    """`value`, if it can be the user name of HTTP basic credentials.

    Raises:
        ValueError: it holds a ':'.
    """
    if ":" in value:
        # The credentials go as "user:password": the first ':' ends the user (RFC 7617 §2), so
        # a listener never sees this name, and a client cannot even send it.
        raise ValueError("a user name for HTTP basic auth cannot contain ':' (RFC 7617)")
    return value
