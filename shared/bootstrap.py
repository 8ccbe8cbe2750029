"""The composition root shared by web, worker and command line."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import LOCALSTRIPE_KEY, Settings
from shared.payments.gateway import PaymentGateway
from shared.payments.stripe_adapter import StripeGateway
from shared.store.db import UnitOfWork, make_engine, make_session_factory


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    gateway: PaymentGateway

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.sessions)


class ConfigurationError(Exception):
    """A setting production cannot run without; the message names the variable."""


def require_database(settings: Settings) -> str:
    """Production entry points never start an embedded server: no URL, no start.

    Only `seats up` and the `seats` commands fill in an embedded database (see
    README "Configuration").
    """
    if not settings.database_url:
        raise ConfigurationError(
            "DATABASE_URL is not set: point it at PostgreSQL (postgresql://user@host/db). "
            "Only `seats up` and the `seats` commands start an embedded database."
        )
    return settings.database_url


def build(settings: Settings | None = None, pool_size: int = 5) -> Runtime:
    settings = settings or Settings.from_env()
    engine = make_engine(require_database(settings), pool_size=pool_size)
    gateway = StripeGateway(settings.stripe_api_key or LOCALSTRIPE_KEY, settings.stripe_api_base)
    return Runtime(settings, engine, make_session_factory(engine), gateway)
