"""One-time sign-in links for the customer pages (README "Customer pages") and for the
operator pages under /ops (README "Operator pages").

A link carries 256 random bits; only their SHA-256 is stored. It is valid for
`LINK_LIFETIME` and can be used once: the first opening marks it used in the
same statement that checks it, so two tabs racing on one link start one
session at most. A link signs in a user or an operator, never both: a customer's
link opened under /ops (or the other way round) is refused and stays unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import InstrumentedAttribute

from shared.domain.errors import Conflict, NotFound, Refused
from shared.domain.tokens import hash_token, new_login_token
from shared.services.access import Actor
from shared.services.operators import OperatorActor, operator_by_email
from shared.store.db import UnitOfWork
from shared.store.models import LoginLink, Operator, User

LINK_LIFETIME = timedelta(minutes=15)
LOGIN_PATH = "/login/"
OPS_LOGIN_PATH = "/ops/login/"


class LinkNotValid(Refused):
    """Unknown, used or expired: one answer for all three, so a link tells nothing."""

    code = "login_link_invalid"


@dataclass(frozen=True)
class IssuedLink:
    token: str
    user_id: int | None
    expires_at: datetime
    path: str = LOGIN_PATH
    operator_id: int | None = None

    def url(self, base_url: str) -> str:
        return base_url.rstrip("/") + self.path + self.token


def _moment(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment


def issue_link(
    uow: UnitOfWork, email: str, organization_id: int | None = None, now: datetime | None = None
) -> IssuedLink:
    """A link for the user with this email (in this organization when several share it)."""
    moment = _moment(now)
    token = new_login_token()
    with uow:
        query = select(User).where(func.lower(User.email) == email.strip().lower())
        if organization_id is not None:
            query = query.where(User.organization_id == organization_id)
        users = list(uow.session.scalars(query.order_by(User.id)))
        if not users:
            raise NotFound(f"no user {email.strip()}", "not_found")
        if len(users) > 1:
            organizations = ", ".join(str(user.organization_id) for user in users)
            raise Conflict(
                f"{email.strip()} is a user of several organizations ({organizations}): give --org",
                "organization_required",
            )
        link = LoginLink(
            user_id=users[0].id,
            token_hash=hash_token(token),
            created_at=moment,
            expires_at=moment + LINK_LIFETIME,
        )
        uow.session.add(link)
        uow.commit()
        return IssuedLink(token, users[0].id, link.expires_at)


def _use(
    uow: UnitOfWork, token: str, owner: InstrumentedAttribute[int | None], now: datetime | None
) -> int:
    """Mark the link used, in the statement that checks it, and return its owner's id
    (`owner`: the user or the operator column; a link of the other kind is left alone)."""
    moment = _moment(now)
    if not token or len(token) > 200:
        raise LinkNotValid("this sign-in link is not valid")
    found = uow.session.scalar(
        update(LoginLink)
        .where(
            LoginLink.token_hash == hash_token(token),
            LoginLink.used_at.is_(None),
            LoginLink.expires_at > moment,
            owner.is_not(None),
        )
        .values(used_at=moment)
        .returning(owner)
    )
    if found is None:
        raise LinkNotValid(
            "this sign-in link is not valid: it was already used, it is more than "
            "15 minutes old, or it was never issued. Ask for a new one."
        )
    return int(found)


def use_link(uow: UnitOfWork, token: str, now: datetime | None = None) -> Actor:
    """Mark the link used and say who it signs in; a second opening is refused."""
    with uow:
        user = uow.session.get_one(User, _use(uow, token, LoginLink.user_id, now))
        actor = Actor(user.id, user.organization_id, user.role)
        uow.commit()
        return actor


def issue_operator_link(uow: UnitOfWork, email: str, now: datetime | None = None) -> IssuedLink:
    """A link to the operator pages for the operator with this email."""
    moment = _moment(now)
    token = new_login_token()
    with uow:
        operator = operator_by_email(uow.session, email)
        if operator is None:
            raise NotFound(f"no operator {email.strip()}", "not_found")
        link = LoginLink(
            operator_id=operator.id,
            token_hash=hash_token(token),
            created_at=moment,
            expires_at=moment + LINK_LIFETIME,
        )
        uow.session.add(link)
        uow.commit()
        return IssuedLink(token, None, link.expires_at, OPS_LOGIN_PATH, operator.id)


def use_operator_link(uow: UnitOfWork, token: str, now: datetime | None = None) -> OperatorActor:
    """The operator a link signs in, once; a customer's link is not an operator's."""
    with uow:
        operator = uow.session.get_one(Operator, _use(uow, token, LoginLink.operator_id, now))
        actor = OperatorActor(operator.id, operator.email)
        uow.commit()
        return actor
