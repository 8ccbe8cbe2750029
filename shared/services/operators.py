"""Operators: people who run the service, outside every organization, and the audit log
of every action taken on their word (from /ops or from the command line)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.domain.errors import Conflict, Invalid
from shared.domain.tokens import hash_token, new_token
from shared.services.provisioning import EMAIL
from shared.services.views import take
from shared.store.db import UnitOfWork
from shared.store.models import Operator, OperatorAction

AUDIT_PAGE = 100


@dataclass(frozen=True)
class OperatorActor:
    id: int
    email: str

    @property
    def name(self) -> str:
        return f"operator:{self.email}"


def create_operator(uow: UnitOfWork, email: str) -> tuple[int, str]:
    """Return the operator's id and token; the token is stored only as a hash."""
    email = email.strip()
    if not EMAIL.match(email) or len(email) > 320:
        raise Invalid(f"{email!r} is not an email address", "invalid_email")
    token = new_token()
    with uow:
        taken = uow.session.scalar(
            select(Operator.id).where(func.lower(Operator.email) == email.lower())
        )
        if taken is not None:
            raise Conflict(f"{email} is already an operator", "email_taken")
        operator = Operator(email=email, token_hash=hash_token(token))
        uow.session.add(operator)
        try:
            uow.session.flush()
        except IntegrityError as error:
            raise Conflict(f"{email} is already an operator", "email_taken") from error
        uow.commit()
        return operator.id, token


def operator_for_token(session: Session, token: str) -> OperatorActor | None:
    operator = session.scalar(select(Operator).where(Operator.token_hash == hash_token(token)))
    return OperatorActor(operator.id, operator.email) if operator else None


def operator_by_id(session: Session, operator_id: int) -> OperatorActor | None:
    operator = session.get(Operator, operator_id)
    return OperatorActor(operator.id, operator.email) if operator else None


def operator_by_email(session: Session, email: str) -> OperatorActor | None:
    operator = session.scalar(
        select(Operator).where(func.lower(Operator.email) == email.strip().lower())
    )
    return OperatorActor(operator.id, operator.email) if operator else None


def record(
    uow: UnitOfWork,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
    operator_id: int | None = None,
) -> None:
    """Write one line of the audit log (its own transaction: it is kept even if the
    action failed, and says so)."""
    with uow:
        uow.session.add(
            OperatorAction(
                operator_id=operator_id,
                actor=actor,
                action=action,
                target=target,
                outcome=outcome[:500],
                detail=detail,
            )
        )
        uow.commit()


@dataclass(frozen=True)
class ActionRow:
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any] | None


def list_actions(
    uow: UnitOfWork, before: int | None = None, limit: int = AUDIT_PAGE
) -> tuple[list[ActionRow], int | None]:
    """The audit log, newest first, a page at a time: the rows, and the id to pass as
    `before` for the next page (None: this was the last)."""
    query = select(OperatorAction).order_by(OperatorAction.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(OperatorAction.id < before)
    with uow:
        found = list(uow.session.scalars(query))
        page = found[:limit]
        return [take(ActionRow, a) for a in page], (page[-1].id if len(found) > limit else None)


def actions_on(session: Session, target: str, limit: int = AUDIT_PAGE) -> list[ActionRow]:
    """What operators did to one thing (`purchase:12`, `event:evt_...`), newest first."""
    query = (
        select(OperatorAction)
        .where(OperatorAction.target == target)
        .order_by(OperatorAction.id.desc())
        .limit(limit)
    )
    return [take(ActionRow, a) for a in session.scalars(query)]
