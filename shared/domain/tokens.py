"""API tokens: random, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "seat_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 is enough: tokens carry 256 random bits, so no key stretching is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_login_token() -> str:
    """A one-time sign-in link's secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)
