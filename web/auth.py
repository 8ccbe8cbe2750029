"""Bearer tokens: every API request says who it is before anything else happens."""

from __future__ import annotations

from flask import g, request

from shared import log_lines
from shared.services.access import Actor, actor_for_token
from web.errors import Unauthorized
from web.extensions import runtime


def current_actor() -> Actor:
    actor: Actor | None = g.get("actor")
    if actor is not None:
        return actor
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 200:
        raise Unauthorized("send Authorization: Bearer <token>", "unauthorized")
    with runtime().uow() as uow:
        actor = actor_for_token(uow.session, token.strip())
    if actor is None:
        raise Unauthorized("this token is not valid", "unauthorized")
    g.actor = actor
    log_lines.bind(organization_id=actor.organization_id, user_id=actor.user_id)
    return actor
