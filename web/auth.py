"""Bearer tokens: every API request says who it is before anything else happens."""

from __future__ import annotations

import threading
import time

from flask import g, request

from shared import log_lines
from shared.domain.tokens import hash_token
from shared.services.access import Actor, actor_for_token
from web.errors import Unauthorized
from web.extensions import runtime

TTL_SECONDS = 30.0
MAX_KNOWN = 10_000


class KnownTokens:
    """Who a token is, remembered for `TTL_SECONDS`: a buyer's add, checkout and polls
    cost one lookup (one statement, in autocommit), not one each. Only
    hashes are kept, and only of tokens that exist; a user's organization and role never
    change, so the only cost of the delay is nothing today."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known: dict[str, tuple[Actor, float]] = {}

    def get(self, digest: str) -> Actor | None:
        with self.lock:
            found = self.known.get(digest)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def keep(self, digest: str, actor: Actor) -> None:
        with self.lock:
            if len(self.known) >= MAX_KNOWN:
                self.known.clear()
            self.known[digest] = (actor, time.monotonic() + TTL_SECONDS)


known_tokens = KnownTokens()


def current_actor() -> Actor:
    actor: Actor | None = g.get("actor")
    if actor is not None:
        return actor
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        raise Unauthorized("send Authorization: Bearer <token>", "unauthorized")
    digest = hash_token(token)
    actor = known_tokens.get(digest)
    if actor is None:
        with runtime().uow().single() as uow:  # one statement: no BEGIN, no COMMIT
            actor = actor_for_token(uow.session, token)
        if actor is None:
            raise Unauthorized("this token is not valid", "unauthorized")
        known_tokens.keep(digest, actor)
    g.actor = actor
    log_lines.bind(organization_id=actor.organization_id, user_id=actor.user_id)
    return actor
